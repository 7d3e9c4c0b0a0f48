"""Real classification data sets: scikit-learn's digits, MNIST and CIFAR-10.

Inputs are pixel intensities scaled to [0, 1] (digits: /16, 64 features; MNIST: /255, 784;
CIFAR-10: /255, 3072), float64. ``classes`` (default all of 0..9) keeps only those labels, and
the targets are, for selected classes c_0, ..., c_{k−1}:

    "onehot":  y ∈ {0, 1}^k with y_j = 1 iff label = c_j (columns in the order given);
    "scalar":  y ∈ {±1}: +1 for c_0 and −1 for c_1 when exactly two classes are selected,
               otherwise +1 for even and −1 for odd labels.

Digits (1797 images) is shuffled once and split: the first n_train points train, the next n_test
test. MNIST and CIFAR-10 draw n_train points from their train split and n_test from their test
split, without replacement.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ntklab.data import readers, seeding
from ntklab.data.dataset import Dataset
from ntklab.errors import ConfigError

CLASSIFICATION_NAMES = ("digits", "mnist", "cifar10")
ALL_CLASSES = tuple(range(10))
_FILES = {"mnist": ("MNIST", readers.locate_mnist, readers.read_mnist),
          "cifar10": ("CIFAR-10", readers.locate_cifar10, readers.read_cifar10)}


def make_real(name: str, *, n_train: int, n_test: int, targets: str,
              classes: Optional[Sequence[int]], root: Optional[str], seed: int) -> Dataset:
    """The raw (un-normalised) data set ``name``; arguments already validated."""
    classes = ALL_CLASSES if classes is None else tuple(classes)
    if name == "digits":
        x_train, labels_train, x_test, labels_test = _digits(n_train, n_test, classes, seed)
    else:
        title, locate, read = _FILES[name]
        paths = locate(root)  # checks that every file is there before reading any
        x_train, labels_train = _sample(*read(paths, "train"), classes, n_train,
                                        seeding.stream_rng(seed, seeding.TRAIN), "data.n_train", f"{title} train")
        x_test, labels_test = _sample(*read(paths, "test"), classes, n_test,
                                      seeding.stream_rng(seed, seeding.TEST), "data.n_test", f"{title} test")
    x_train, x_test, labels_train, labels_test = (
        torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, x_test, labels_train, labels_test))
    return Dataset(name, x_train, class_targets(labels_train, classes, targets),
                   x_test, class_targets(labels_test, classes, targets),
                   labels_train=labels_train, labels_test=labels_test, extras={"classes": classes})


def class_targets(labels: Tensor, classes: Tuple[int, ...], targets: str) -> Tensor:
    """Targets of int64 ``labels`` (N,): one-hot (N, len(classes)) or scalar ±1 (N, 1)."""
    if targets == "onehot":
        return (labels[:, None] == torch.tensor(classes)[None, :]).to(torch.float64)
    positive = labels == classes[0] if len(classes) == 2 else labels % 2 == 0
    return torch.where(positive, 1.0, -1.0).to(torch.float64)[:, None]


def _digits(n_train: int, n_test: int, classes: Tuple[int, ...], seed: int):
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    digits = load_digits()
    x, labels = digits.data / 16.0, digits.target.astype(np.int64)
    keep = np.flatnonzero(np.isin(labels, classes))
    if n_train + n_test > keep.size:
        raise ConfigError("data.n_train", f"n_train + n_test = {n_train + n_test}, but digits has only "
                                          f"{keep.size} images of classes {list(classes)}")
    order = keep[seeding.stream_rng(seed, seeding.SPLIT).permutation(keep.size)]
    train, test = order[:n_train], order[n_train:n_train + n_test]
    return x[train], labels[train], x[test], labels[test]


def _sample(images: np.ndarray, labels: np.ndarray, classes: Tuple[int, ...], n: int,
            rng: np.random.Generator, field: str, split: str):
    """n rows of the selected classes, without replacement: float64 pixels / 255 and labels."""
    keep = np.flatnonzero(np.isin(labels, classes))
    if n > keep.size:
        raise ConfigError(field, f"asks for {n} points, but the {split} split has only {keep.size} "
                                 f"images of classes {list(classes)}")
    chosen = keep[rng.permutation(keep.size)[:n]]
    return images[chosen].astype(np.float64) / 255.0, labels[chosen]
