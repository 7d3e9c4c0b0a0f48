"""Input normalisations and target centring, fitted on the train split only.

Inputs are flat, x ∈ R^d, or images x ∈ R^{C×H×W} with d = C·H·W entries x_{c,s} (channel c,
position s = (h, w)). Every mode but "channel_standardize" treats an image as its d entries, so an
image and its flattened vector get the same numbers:

    "none":                 x
    "unit":                 x / ‖x‖                       (‖x‖ = 1, as Arora et al. 2019)
    "sqrt_dim":             √d · x / ‖x‖                  (‖x‖ = √d, so the NTK-parametrization input
                                                           kernel x·x'/d is 1 on the diagonal)
    "standardize":          (x_i − μ_i) / s_i per entry i (pixel and channel), μ_i and s_i the
                            train mean and population standard deviation
    "per_image":            x̃ = x − m(x), m(x) = (1/d) Σ_i x_i the image's own mean over all
                            pixels and channels; then √d · x̃ / ‖x̃‖. So ‖x̃‖² = d, and the CNTK's
                            input kernel Σ_c x_{c,s} x_{c,s}/C (docs/design.md) has mean 1 over
                            the positions s, as "sqrt_dim" gives for vectors.
    "channel_standardize":  (x_{c,s} − μ_c) / s_c, μ_c and s_c the mean and population standard
                            deviation of channel c over every pixel of every train image (the usual
                            CIFAR preprocessing); images only.

A feature or channel constant on the train split is only centred (its s is taken as 1).
Statistics come from the train split so the test split sees exactly the map the train split
did, as it would for data arriving after training. A point that a fixed-norm mode cannot scale
(zero, or for "per_image" constant) is a ``ConfigError``.

Targets: :func:`center_targets` subtracts the train mean of each column. For one-hot targets of k
classes balanced in the train split (n_j = N/k points each, :mod:`ntklab.data.real`) each column's
mean is exactly 1/k, so the targets become 1 − 1/k for the true class and −1/k for the others:
0.9 and −0.1 for ten classes, the targets Arora et al. (2019) regress on. (In float64 they are the
doubles nearest 0.9 and −0.1: (N/k)/N rounds to the double nearest 1/10 and 1 minus it rounds to
the double nearest 0.9.)
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from ntklab.data.real import CLASSIFICATION_NAMES
from ntklab.errors import ConfigError

NORMALIZATIONS = ("default", "none", "unit", "sqrt_dim", "standardize", "per_image", "channel_standardize")


def normalize_inputs(x_train: Tensor, x_test: Tensor, mode: str) -> Tuple[Tensor, Tensor]:
    """Apply ``mode`` (any of ``NORMALIZATIONS`` but "default") to (N, d) and (M, d) inputs or to
    (N, C, H, W) and (M, C, H, W) images; the shapes are kept."""
    if mode == "channel_standardize":
        return _channel_standardize(x_train, x_test)
    if mode not in _FLAT_MODES:
        raise ConfigError("data.normalize", f"unknown normalisation {mode!r}", allowed=NORMALIZATIONS)
    flat_train, flat_test = _FLAT_MODES[mode](x_train.flatten(1), x_test.flatten(1), mode)
    return flat_train.reshape(x_train.shape), flat_test.reshape(x_test.shape)


def center_targets(y_train: Tensor, y_test: Tensor) -> Tuple[Tensor, Tensor]:
    """Subtract the train mean of each target column from both splits."""
    mean = y_train.mean(dim=0)
    return y_train - mean, y_test - mean


def _none(x_train: Tensor, x_test: Tensor, mode: str) -> Tuple[Tensor, Tensor]:
    return x_train, x_test


def _fixed_norm(x_train: Tensor, x_test: Tensor, mode: str) -> Tuple[Tensor, Tensor]:
    radius = 1.0 if mode == "unit" else math.sqrt(x_train.shape[1])
    return _to_radius(x_train, radius, "train", mode), _to_radius(x_test, radius, "test", mode)


def _standardize(x_train: Tensor, x_test: Tensor, mode: str) -> Tuple[Tensor, Tensor]:
    mean, std = _mean_and_std(x_train, dims=(0,))
    return (x_train - mean) / std, (x_test - mean) / std


def _per_image(x_train: Tensor, x_test: Tensor, mode: str) -> Tuple[Tensor, Tensor]:
    radius = math.sqrt(x_train.shape[1])
    return (_to_radius(_centre_each(x_train), radius, "train", mode),
            _to_radius(_centre_each(x_test), radius, "test", mode))


def _centre_each(x: Tensor) -> Tensor:
    """(N, d): each point minus the mean of its d entries, a constant point (:func:`_constant`) exactly
    0: the float mean of d equal values can miss them by a rounding, and the leftover would be scaled
    up to ±1 everywhere instead of being refused."""
    return torch.where(_constant(x, dims=(1,)), torch.zeros_like(x), x - x.mean(dim=1, keepdim=True))


# The modes that see a point as its d entries, on (N, d).
_FLAT_MODES = {"none": _none, "unit": _fixed_norm, "sqrt_dim": _fixed_norm, "standardize": _standardize,
               "per_image": _per_image}


def _channel_standardize(x_train: Tensor, x_test: Tensor) -> Tuple[Tensor, Tensor]:
    if x_train.dim() != 4:
        raise ConfigError("data.normalize", f"'channel_standardize' standardises each channel of images "
                                            f"(N, C, H, W), which only {', '.join(CLASSIFICATION_NAMES)} have; "
                                            "for flat inputs use 'standardize'")
    mean, std = _mean_and_std(x_train, dims=(0, 2, 3))   # (1, C, 1, 1): over images and positions
    return (x_train - mean) / std, (x_test - mean) / std


def _mean_and_std(x: Tensor, dims: Tuple[int, ...]) -> Tuple[Tensor, Tensor]:
    """Mean and population std of x over ``dims`` (kept), the std replaced by 1 where x is constant."""
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, correction=0, keepdim=True)
    return mean, torch.where(_constant(x, dims), torch.ones_like(std), std)


def _constant(x: Tensor, dims: Tuple[int, ...]) -> Tensor:
    """Where x is constant over ``dims`` (kept), decided exactly (max == min), not by a small std or
    a centred value: a float sum of equal values can leave a spurious 1e-17, which a division or a
    rescaling would blow up."""
    return x.amax(dim=dims, keepdim=True) == x.amin(dim=dims, keepdim=True)


def _to_radius(x: Tensor, radius: float, split: str, mode: str) -> Tensor:
    norms = x.norm(dim=1, keepdim=True)
    zero = (norms == 0).flatten().nonzero()
    if zero.numel():
        what = "constant (zero once its mean is subtracted)" if mode == "per_image" else "zero"
        raise ConfigError("data.normalize",
                          f"{mode!r} rescales every point to a fixed norm, but point {int(zero[0])} of the "
                          f"{split} split is {what}; choose another normalisation")
    return x * (radius / norms)
