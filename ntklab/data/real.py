"""Real classification sets: scikit-learn's digits, MNIST, Fashion-MNIST and CIFAR-10.

Inputs are images in torch's layout (N, C, H, W), float64 pixel intensities scaled to [0, 1]:

    digits          1 × 8 × 8     intensities 0..16, divided by 16
    mnist           1 × 28 × 28   bytes / 255 (IDX files or the classic mnist.pkl.gz)
    fashion_mnist   1 × 28 × 28   bytes / 255 (IDX files)
    cifar10         3 × 32 × 32   bytes / 255; a row's 1024 R, 1024 G, 1024 B values, row-major,
                                  reshaped to (3, 32, 32), so channel 0 is red

(``IMAGE_SHAPES``; :func:`ntklab.data.load_dataset` flattens them to (N, C·H·W) unless asked for
images). ``classes`` (default all of 0..9) keeps only those labels, and the targets are, for
selected classes c_0, ..., c_{k−1}:

    "onehot":  y ∈ {0, 1}^k with y_j = 1 iff label = c_j (columns in the order given);
    "scalar":  y ∈ {±1}: +1 for c_0 and −1 for c_1 when exactly two classes are selected,
               otherwise +1 for even and −1 for odd labels.

Subsets. Every split is first put in a seeded random order (:mod:`ntklab.data.seeding`): MNIST,
Fashion-MNIST and CIFAR-10 order their train split by the stream TRAIN and their test split by
TEST; digits (1797 images, one pool) is ordered once by SPLIT, and its test points come from what
the train points left. From that order a split of n points takes

    balanced (default):  the first n_j images of each class c_j in the order, with
                         n_j = ⌊n/k⌋ + (1 if j < n mod k else 0): the remainder n mod k goes one
                         each to the first classes in ``classes`` order (n = 500 over ten classes:
                         50 each; n = 502: 51 of c_0 and c_1, 50 of the others). The chosen
                         points keep their random order, and a larger n adds points to a smaller
                         n's subset, never swaps them.
    not balanced:        the first n images of the order (class proportions as in the split).

A split with too few images of some class for its share raises ``ConfigError("data.n_train" or
"data.n_test", ...)`` with the numbers.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ntklab.data import readers, seeding
from ntklab.data.dataset import Dataset
from ntklab.errors import ConfigError

CLASSIFICATION_NAMES = ("digits", "mnist", "fashion_mnist", "cifar10")
ALL_CLASSES = tuple(range(10))
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
PIXEL_MAX = {"digits": 16.0, "mnist": 255.0, "fashion_mnist": 255.0, "cifar10": 255.0}
_FILES = {"mnist": ("MNIST", readers.locate_mnist, readers.read_mnist),
          "fashion_mnist": ("Fashion-MNIST", readers.locate_fashion_mnist, readers.read_idx_splits),
          "cifar10": ("CIFAR-10", readers.locate_cifar10, readers.read_cifar10)}


def make_real(name: str, *, n_train: int, n_test: int, targets: str, classes: Optional[Sequence[int]],
              balanced: bool, root: Optional[str], seed: int) -> Dataset:
    """The raw (un-normalised) data set ``name`` with images x of shape (N, C, H, W); arguments
    already validated."""
    classes = ALL_CLASSES if classes is None else tuple(classes)
    if name == "digits":
        splits = _digits(n_train, n_test, classes, balanced, seed)
    else:
        splits = _from_files(name, n_train, n_test, classes, balanced, root, seed)
    (x_train, labels_train), (x_test, labels_test) = (
        (_images(pixels, name), torch.from_numpy(np.ascontiguousarray(labels))) for pixels, labels in splits)
    return Dataset(name, x_train, class_targets(labels_train, classes, targets),
                   x_test, class_targets(labels_test, classes, targets),
                   labels_train=labels_train, labels_test=labels_test, extras={"classes": classes})


def class_targets(labels: Tensor, classes: Tuple[int, ...], targets: str) -> Tensor:
    """Targets of int64 ``labels`` (N,): one-hot (N, len(classes)) or scalar ±1 (N, 1)."""
    if targets == "onehot":
        return (labels[:, None] == torch.tensor(classes)[None, :]).to(torch.float64)
    positive = labels == classes[0] if len(classes) == 2 else labels % 2 == 0
    return torch.where(positive, 1.0, -1.0).to(torch.float64)[:, None]


def class_counts(n: int, n_classes: int) -> List[int]:
    """Points per class of a balanced subset of n: ⌊n/k⌋ each, one more for the first n mod k."""
    share, remainder = divmod(n, n_classes)
    return [share + (1 if j < remainder else 0) for j in range(n_classes)]


def take_subset(order: np.ndarray, labels: np.ndarray, classes: Tuple[int, ...], n: int, balanced: bool,
                field: str, source: str) -> np.ndarray:
    """n indices from ``order`` (indices into ``labels``, of the selected classes, in random order),
    balanced over ``classes`` or not (module docstring), in the order they appear in ``order``.
    ``field`` and ``source`` (e.g. "the MNIST test split") name the request and the pool in errors."""
    if not balanced:
        if n > order.size:
            raise ConfigError(field, f"asks for {n} points, but {source} has only {order.size} "
                                     f"images of classes {list(classes)}")
        return order[:n]
    ordered_labels = labels[order]
    picked, short = [], []
    for c, count in zip(classes, class_counts(n, len(classes))):
        positions = np.flatnonzero(ordered_labels == c)
        if positions.size < count:
            short.append(f"class {c} needs {count} and has {positions.size}")
        picked.append(positions[:count])
    if short:
        raise ConfigError(field, f"asks for {n} points balanced over classes {list(classes)}, but {source} "
                                 f"has too few images: {'; '.join(short)} (lower {field}, or set "
                                 "data.balanced=false)")
    return order[np.sort(np.concatenate(picked))]


def _images(pixels: np.ndarray, name: str) -> Tensor:
    """Raw pixels (n, C·H·W) → float64 images (n, C, H, W) in [0, 1]; each row is C·H·W values in C order."""
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float64)) / PIXEL_MAX[name]
    return x.reshape(-1, *IMAGE_SHAPES[name])


def _digits(n_train: int, n_test: int, classes: Tuple[int, ...], balanced: bool, seed: int):
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    pixels, labels = digits.data, digits.target.astype(np.int64)
    keep = np.flatnonzero(np.isin(labels, classes))
    if n_train + n_test > keep.size:
        raise ConfigError("data.n_train", f"n_train + n_test = {n_train + n_test}, but digits has only "
                                          f"{keep.size} images of classes {list(classes)}")
    order = keep[seeding.stream_rng(seed, seeding.SPLIT).permutation(keep.size)]
    train = take_subset(order, labels, classes, n_train, balanced, "data.n_train", "digits")
    rest = order[~np.isin(order, train)]   # the order without the train points, still in order
    test = take_subset(rest, labels, classes, n_test, balanced, "data.n_test",
                       "the digits images the train points leave")
    return (pixels[train], labels[train]), (pixels[test], labels[test])


def _from_files(name: str, n_train: int, n_test: int, classes: Tuple[int, ...], balanced: bool,
                root: Optional[str], seed: int):
    title, locate, read = _FILES[name]
    splits: Dict[str, readers.Arrays] = read(locate(root))  # locate checks every file is there first
    chosen = []
    for split, n, stream in (("train", n_train, seeding.TRAIN), ("test", n_test, seeding.TEST)):
        pixels, labels = splits[split]
        keep = np.flatnonzero(np.isin(labels, classes))
        order = keep[seeding.stream_rng(seed, stream).permutation(keep.size)]
        rows = take_subset(order, labels, classes, n, balanced, f"data.n_{split}", f"the {title} {split} split")
        chosen.append((pixels[rows], labels[rows]))
    return chosen
