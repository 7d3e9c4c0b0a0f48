"""Synthetic data sets: inputs drawn from a known distribution, targets from a known function.

Inputs (all float64):

    circle:    x = (cos γ, sin γ) ∈ R²; train γ ~ U[0, 2π), test γ_j = 2πj/M (j = 0..M−1),
               target y = x_1 x_2 = cos γ sin γ (Jacot et al. 2018, Fig. 1).
    sphere:    x uniform on the sphere of radius √d in R^d (so x·x/d = 1).
    gaussian:  x ~ N(0, I_d).
    parity:    x uniform on {±1}^d, target y = Π_{i<b} x_i over the first b = parity_bits coordinates.

Targets of sphere and gaussian:

    "teacher":     y = f(x), f a random MLP under the NTK parametrization (σ_w = 1, σ_b = 0)
                   initialised from seed + TEACHER_SEED_OFFSET.
    "polynomial":  y = He_k(β·x) / √(k!), β a random unit vector and He_k the probabilists' Hermite
                   polynomial of degree k. For gaussian inputs β·x ~ N(0, 1), so E y = 0 and
                   E y² = 1 for k ≥ 1 (E He_j He_k = k! δ_jk). On the sphere β·x has mean 0 and
                   variance 1 but is only Gaussian as d → ∞, so the moments hold approximately
                   (exactly: mean 0 for odd k and for k = 2, variance 1 for k = 1).

Train and test points come from independent streams (:mod:`ntklab.data.seeding`).
"""

from __future__ import annotations

import math
import numpy as np
import torch
from numpy.polynomial import hermite_e
from torch import Tensor

from ntklab.data import seeding
from ntklab.data.dataset import Dataset
from ntklab.nets import build_mlp
from ntklab.spec import ArchSpec

SYNTHETIC_NAMES = ("circle", "sphere", "gaussian", "parity")
TARGETS = ("teacher", "polynomial")
TEACHER_SEED_OFFSET = 1_000_003
"""The teacher net is built from ``seed + TEACHER_SEED_OFFSET``: derived from the data seed, but not
equal to it, so a student initialised from the same seed is not the teacher."""


def make_synthetic(name: str, *, n_train: int, n_test: int, dim: int, target: str, degree: int,
                   parity_bits: int, teacher_spec: ArchSpec, seed: int) -> Dataset:
    """The raw (un-normalised, noise-free) synthetic data set ``name``; arguments already validated."""
    if name == "circle":
        return circle(n_train, n_test, seed)
    if name == "parity":
        x_train, x_test = (_hypercube(n, dim, seeding.stream_rng(seed, stream))
                           for n, stream in ((n_train, seeding.TRAIN), (n_test, seeding.TEST)))
        return Dataset(name, x_train, parity_targets(x_train, parity_bits),
                       x_test, parity_targets(x_test, parity_bits))
    draw = _sphere if name == "sphere" else _gaussian
    x_train = draw(n_train, dim, seeding.stream_rng(seed, seeding.TRAIN))
    x_test = draw(n_test, dim, seeding.stream_rng(seed, seeding.TEST))
    if target == "teacher":
        teacher = build_mlp(teacher_spec, in_dim=dim, seed=seed + TEACHER_SEED_OFFSET, dtype=torch.float64)
        with torch.no_grad():
            y_train, y_test = teacher(x_train), teacher(x_test)
    else:  # "polynomial"
        beta = random_unit_vector(dim, seeding.stream_rng(seed, seeding.BETA))
        y_train, y_test = polynomial_targets(x_train, beta, degree), polynomial_targets(x_test, beta, degree)
    return Dataset(name, x_train, y_train, x_test, y_test)


def circle(n_train: int, n_test: int, seed: int) -> Dataset:
    """The unit circle with target x_1 x_2; angles in ``extras["gamma_train"/"gamma_test"]``."""
    rng = seeding.stream_rng(seed, seeding.TRAIN)
    gamma_train = torch.from_numpy(rng.random(n_train)) * (2 * math.pi)
    # Equally spaced test angles, so a plot over γ draws the prediction as a curve.
    gamma_test = torch.arange(n_test, dtype=torch.float64) * (2 * math.pi / n_test)
    x_train, x_test = _on_circle(gamma_train), _on_circle(gamma_test)
    return Dataset("circle", x_train, x_train.prod(dim=1, keepdim=True),
                   x_test, x_test.prod(dim=1, keepdim=True),
                   extras={"gamma_train": gamma_train, "gamma_test": gamma_test})


def parity_targets(x: Tensor, bits: int) -> Tensor:
    """y = Π_{i<bits} x_i: (N, d) → (N, 1)."""
    return x[:, :bits].prod(dim=1, keepdim=True)


def polynomial_targets(x: Tensor, beta: Tensor, degree: int) -> Tensor:
    """y = He_degree(x·β) / √(degree!): (N, d), (d,) → (N, 1)."""
    coefficients = np.zeros(degree + 1)
    coefficients[degree] = 1.0
    projection = (x @ beta).numpy()
    y = hermite_e.hermeval(projection, coefficients) / math.sqrt(math.factorial(degree))
    return torch.from_numpy(np.asarray(y, dtype=np.float64)).reshape(-1, 1)


def random_unit_vector(dim: int, rng: np.random.Generator) -> Tensor:
    """β uniform on the unit sphere S^{d−1}: a normalised standard Gaussian vector."""
    g = rng.standard_normal(dim)
    return torch.from_numpy(g / np.linalg.norm(g))


def _on_circle(gamma: Tensor) -> Tensor:
    return torch.stack([torch.cos(gamma), torch.sin(gamma)], dim=1)


def _gaussian(n: int, dim: int, rng: np.random.Generator) -> Tensor:
    return torch.from_numpy(rng.standard_normal((n, dim)))


def _sphere(n: int, dim: int, rng: np.random.Generator) -> Tensor:
    # A standard Gaussian is rotation invariant, so its direction is uniform on the sphere.
    g = _gaussian(n, dim, rng)
    return g * (math.sqrt(dim) / g.norm(dim=1, keepdim=True))


def _hypercube(n: int, dim: int, rng: np.random.Generator) -> Tensor:
    return torch.from_numpy(2.0 * rng.integers(0, 2, size=(n, dim)) - 1.0)


__all__ = ["SYNTHETIC_NAMES", "TARGETS", "TEACHER_SEED_OFFSET", "make_synthetic", "circle",
           "parity_targets", "polynomial_targets", "random_unit_vector"]
