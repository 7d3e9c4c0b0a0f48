"""Input normalisations and target centring, fitted on the train split only.

For inputs x ∈ R^d:

    "none":         x
    "unit":         x / ‖x‖                       (‖x‖ = 1, as Arora et al. 2019)
    "sqrt_dim":     √d · x / ‖x‖                  (‖x‖ = √d, so the NTK-parametrization input
                                                   kernel x·x'/d is 1 on the diagonal)
    "standardize":  (x − μ) / s per feature, μ and s the train mean and population standard
                    deviation; a feature constant on the train split is only centred.

Statistics come from the train split so the test split sees exactly the map the train split
did, as it would for data arriving after training.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from ntklab.errors import ConfigError

NORMALIZATIONS = ("default", "none", "unit", "sqrt_dim", "standardize")


def normalize_inputs(x_train: Tensor, x_test: Tensor, mode: str) -> Tuple[Tensor, Tensor]:
    """Apply ``mode`` (any of ``NORMALIZATIONS`` but "default") to (N, d) and (M, d) inputs."""
    if mode == "none":
        return x_train, x_test
    if mode in ("unit", "sqrt_dim"):
        radius = 1.0 if mode == "unit" else math.sqrt(x_train.shape[1])
        return _to_radius(x_train, radius, "train", mode), _to_radius(x_test, radius, "test", mode)
    if mode == "standardize":
        mean = x_train.mean(dim=0)
        std = x_train.std(dim=0, correction=0)
        # Decide constancy exactly (max == min), not by a small std: a float sum of equal values
        # can leave a spurious std of 1e-17, and dividing by it would blow the feature up.
        constant = x_train.amax(dim=0) == x_train.amin(dim=0)
        std = torch.where(constant, torch.ones_like(std), std)
        return (x_train - mean) / std, (x_test - mean) / std
    raise ConfigError("data.normalize", f"unknown normalisation {mode!r}", allowed=NORMALIZATIONS)


def _to_radius(x: Tensor, radius: float, split: str, mode: str) -> Tensor:
    norms = x.norm(dim=1, keepdim=True)
    zero = (norms == 0).flatten().nonzero()
    if zero.numel():
        raise ConfigError("data.normalize",
                          f"{mode!r} rescales every point to a fixed norm, but point {int(zero[0])} of the "
                          f"{split} split is zero; choose another normalisation")
    return x * (radius / norms)


def center_targets(y_train: Tensor, y_test: Tensor) -> Tuple[Tensor, Tensor]:
    """Subtract the train mean of each target column from both splits."""
    mean = y_train.mean(dim=0)
    return y_train - mean, y_test - mean
