"""``load_dataset``: validate the arguments, build the raw set, then add noise, normalise, centre.

The order matters and is fixed: targets are computed on the raw inputs (the teacher, the
polynomial and the circle's x_1 x_2 see the inputs as drawn), label noise goes on the train
targets, the normalisation then rescales the inputs, and centring subtracts the (noisy) train
mean of the targets. The real sets are built and normalised as images (N, C, H, W) and
flattened to (N, C·H·W) at the very end unless ``images=True``, so both layouts hold the same
numbers.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import replace
from typing import Optional, Sequence

import torch

from ntklab.data import seeding, transforms
from ntklab.data.dataset import Dataset
from ntklab.data.real import ALL_CLASSES, CLASSIFICATION_NAMES, make_real
from ntklab.data.synthetic import SYNTHETIC_NAMES, TARGETS, make_synthetic
from ntklab.data.transforms import NORMALIZATIONS
from ntklab.errors import ConfigError, check_choice, check_seed
from ntklab.spec import ArchSpec

DATASET_NAMES = SYNTHETIC_NAMES + CLASSIFICATION_NAMES
TARGET_KINDS = ("scalar", "onehot")
DEFAULT_NORMALIZATION = {"circle": "none", "sphere": "none", "gaussian": "none", "parity": "none",
                         "digits": "sqrt_dim", "mnist": "sqrt_dim", "fashion_mnist": "sqrt_dim",
                         "cifar10": "sqrt_dim"}


def load_dataset(name: str, *, n_train: int = 256, n_test: int = 256, dim: int = 10,
                 target: str = "teacher", degree: int = 3, parity_bits: int = 2,
                 teacher_depth: int = 1, teacher_width: int = 256, teacher_activation: str = "erf",
                 noise: float = 0.0, normalize: str = "default", center_targets: bool = False,
                 targets: str = "scalar", classes: Optional[Sequence[int]] = None,
                 balanced: bool = True, images: bool = False, root: Optional[str] = None,
                 seed: int = 0) -> Dataset:
    """Load data set ``name`` (one of ``DATASET_NAMES``) as float64 CPU tensors.

    Args:
        n_train, n_test: number of train points N and test points M (>= 1).
        dim: input dimension d of sphere, gaussian and parity (circle has d = 2, the real sets
            their pixel count).
        target: "teacher" or "polynomial", the target function of sphere and gaussian.
        degree: degree k of the polynomial target He_k(β·x)/√(k!).
        parity_bits: the parity target multiplies the first ``parity_bits`` coordinates (1..dim).
        teacher_depth, teacher_width, teacher_activation: the teacher MLP (NTK parametrization,
            σ_w = 1, σ_b = 0), built from seed + ``synthetic.TEACHER_SEED_OFFSET``.
        noise: standard deviation of Gaussian noise added to the train targets (all sets); the test
            targets stay clean. Train accuracies (the tracker's, and the ridge chosen on ``regress``'s
            held-out split) score against the noisy targets, as one who has only them would.
        normalize: one of ``NORMALIZATIONS`` (formulas in :mod:`ntklab.data.transforms`); "default"
            is "none" for the synthetic sets and "sqrt_dim" for the real ones. "channel_standardize"
            needs a real (image) set.
        center_targets: subtract the train mean of each target column from both splits (one-hot
            targets of ten balanced classes, n_train a multiple of ten, become exactly 0.9 for the
            true class and −0.1 for the others).
        targets: "scalar" (y of shape (N, 1)) or, for the real sets only, "onehot".
        classes: labels to keep for the real sets (distinct ints in 0..9, at least two; None keeps
            all ten). Scalar targets are +1 for the first of two classes, and for more than two the
            label's parity: points that all get one sign are refused (ConfigError).
        balanced: real sets only (the synthetic ones ignore it): draw each split balanced over
            ``classes``, ⌊n/k⌋ points per class and one more for each of the first n mod k classes
            in ``classes`` order (:mod:`ntklab.data.real`); False draws n points regardless of class.
        images: real sets only: x of shape (N, C, H, W) (digits 1×8×8, mnist and fashion_mnist
            1×28×28, cifar10 3×32×32) instead of (N, C·H·W); the same numbers either way.
        root: directory holding the MNIST, Fashion-MNIST or CIFAR-10 files (see
            :mod:`ntklab.data.readers`).
        seed: integer in [0, 2**62 - 1] (:func:`ntklab.errors.check_seed`, the rule of every seed); the
            same arguments give the same tensors on every machine.

    Every invalid argument raises ``ConfigError("data.<argument>", ...)``.
    """
    if not isinstance(name, str) or name not in DATASET_NAMES:
        raise ConfigError("data.name", f"unknown data set {name!r}", allowed=DATASET_NAMES)
    n_train = _integer(n_train, "n_train", 1)
    n_test = _integer(n_test, "n_test", 1)
    dim = _integer(dim, "dim", 1)
    degree = _integer(degree, "degree", 0)
    parity_bits = _integer(parity_bits, "parity_bits", 1)
    seed = check_seed("data.seed", seed)
    check_choice("data.target", target, TARGETS)
    check_choice("data.targets", targets, TARGET_KINDS)
    check_choice("data.normalize", normalize, NORMALIZATIONS)
    if not isinstance(noise, numbers.Real) or isinstance(noise, bool) or not math.isfinite(noise) or noise < 0:
        raise ConfigError("data.noise", f"must be a finite number >= 0, got {noise!r}")
    for argument, value in (("center_targets", center_targets), ("balanced", balanced), ("images", images)):
        if not isinstance(value, bool):
            raise ConfigError(f"data.{argument}", f"must be true or false, got {value!r}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ConfigError("data.root", f"must be a directory path, got {root!r}")
    teacher_spec = _teacher_spec(teacher_depth, teacher_width, teacher_activation)
    classes = _classes(classes)

    if name in SYNTHETIC_NAMES:
        if targets != "scalar":
            raise ConfigError("data.targets", f"{targets!r} needs class labels, which only "
                                              f"{', '.join(CLASSIFICATION_NAMES)} have; {name!r} takes 'scalar'",
                              allowed=("scalar",))
        if classes is not None:
            raise ConfigError("data.classes", f"only {', '.join(CLASSIFICATION_NAMES)} have classes; "
                                              f"leave it unset for {name!r}")
        if images:
            raise ConfigError("data.name", f"{name!r} has flat inputs; images=true needs an image data set",
                              allowed=CLASSIFICATION_NAMES)
        if name == "parity" and parity_bits > dim:
            raise ConfigError("data.parity_bits", f"must be between 1 and dim = {dim}, got {parity_bits}")
        data = make_synthetic(name, n_train=n_train, n_test=n_test, dim=dim, target=target, degree=degree,
                              parity_bits=parity_bits, teacher_spec=teacher_spec, seed=seed)
    else:
        data = make_real(name, n_train=n_train, n_test=n_test, targets=targets, classes=classes,
                         balanced=balanced, root=root, seed=seed)
        if data.y_train.shape[1] == 1 and torch.cat([data.y_train, data.y_test]).unique().numel() < 2:
            # scalar targets ±1 by parity (more than two classes) or by the first class (two): one sign
            # for every point leaves nothing to classify, and no threshold between classes to score at
            raise ConfigError("data.classes", f"the {n_train + n_test} points drawn of classes "
                                              f"{list(data.extras['classes'])} all have the scalar target "
                                              f"{data.y_train[0, 0].item():+g}: with more than two classes the "
                                              "sign is the label's parity, so give classes of both parities "
                                              "(or two classes, or data.targets=onehot)")

    y_train, y_test = data.y_train, data.y_test
    if noise > 0:
        draw = seeding.stream_rng(seed, seeding.NOISE).standard_normal(tuple(y_train.shape))
        y_train = y_train + float(noise) * torch.from_numpy(draw)
    mode = DEFAULT_NORMALIZATION[name] if normalize == "default" else normalize
    x_train, x_test = transforms.normalize_inputs(data.x_train, data.x_test, mode)
    if center_targets:
        y_train, y_test = transforms.center_targets(y_train, y_test)
    data = replace(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return data if images else data.flattened()


def _integer(value, argument: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"data.{argument}", f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _teacher_spec(depth, width, activation) -> ArchSpec:
    depth = _integer(depth, "teacher_depth", 0)
    width = _integer(width, "teacher_width", 1)
    try:
        return ArchSpec(depth=depth, width=width, activation=activation, sigma_w=1.0, sigma_b=0.0,
                        parametrization="ntk")
    except ValueError as err:  # depth and width are checked above, so the activation is at fault
        raise ConfigError("data.teacher_activation", str(err)) from None


def _classes(classes) -> Optional[tuple]:
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ConfigError("data.classes", f"must be a list of labels in 0..9, got {classes!r}")
    if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c <= 9 for c in classes):
        raise ConfigError("data.classes", f"labels must be integers in 0..9, got {list(classes)!r}",
                          allowed=ALL_CLASSES)
    chosen = tuple(int(c) for c in classes)
    if len(set(chosen)) != len(chosen):
        raise ConfigError("data.classes", f"labels must be distinct, got {list(chosen)}")
    if len(chosen) < 2:
        raise ConfigError("data.classes", f"need at least two classes, got {list(chosen)}")
    return chosen
