"""Gaussian expectations E[φ(u)φ(v)], E[φ'(u)φ'(v)] of any elementwise φ by quadrature.

With (z1, z2) standard normal in polar form z = r (cos α, sin α) and θ = arccos ρ,

    u = √q1 · r cos α,   v = √q2 · r cos(α − θ),

    E[F(u, v)] = 1/(2π) ∫_0^π dα ∫_{−R}^{R} |r| e^{−r²/2} F(u, v) dr        (R = 9: e^{−R²/2} < 3e-18).

Angles: Gauss–Legendre with ``degree`` nodes on each of the three pieces of [0, π) cut at the
lines u = 0 (α = π/2) and v = 0 (α = θ + π/2 mod π). Radii: composite Gauss–Legendre on unit
panels of [0, R], mirrored to [−R, 0]. Kinks of φ at 0 (relu, abs, leaky relu) fall on piece
and panel boundaries, so relu-like φ are integrated to rounding error; smooth saturating φ
(erf, tanh) converge geometrically in ``degree``. A tensor-product Gauss–Hermite rule does
neither: it converges algebraically across a kink, and slowly for erf/tanh once the
pre-activation variance exceeds 1/2 (their growth off the real axis outpaces e^{−r²/2}).

Accuracy against the closed forms (depth 3, σ_w = 1.5, see tests/test_kernels.py): at the
default degree 20 relu is exact to ~1e-10 and erf to ~1e-11 (NNGP) / ~3e-9 (NTK).
Cost: 3·degree angles × 2·9·(degree // 2) radii evaluations of φ and φ' per kernel entry and layer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ntklab.activations import Activation, Dual, safe_correlation

DEFAULT_QUADRATURE_DEGREE = 20
"""Gauss–Legendre nodes per angular piece (radial panels get degree // 2); see the module docstring."""

RADIAL_CUTOFF = 9
"""R: the radial rule covers |r| <= R in unit panels."""


def quadrature_dual(activation: Activation, degree: int = DEFAULT_QUADRATURE_DEGREE,
                    max_elements: int = 2 ** 22) -> Dual:
    """A dual function (same signature as ``Activation.dual``) computed by polar Gauss quadrature.

    Args:
        activation: supplies φ (``fn``) and φ' (``derivative``), applied elementwise.
        degree: Gauss–Legendre nodes per angular piece (3·degree angles) and, halved, per unit
            radial panel (2·R·(degree // 2) radii).
        max_elements: bound on the entries of one (pairs, angles, radii) work tensor.
    """
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 2:
        raise ValueError(f"quadrature degree must be an integer >= 2, got {degree!r}")
    radii_np, radial_weights_np = _radial_rule(degree // 2)
    t, w_t = np.polynomial.legendre.leggauss(degree)
    fn, derivative = activation.fn, activation.derivative
    points_per_pair = 3 * degree * radii_np.size

    def dual(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
        shape = torch.broadcast_shapes(q1.shape, q2.shape, cov.shape)
        q1, q2, cov = (a.expand(shape).reshape(-1) for a in (q1, q2, cov))
        kw = dict(dtype=cov.dtype, device=cov.device)
        radii = torch.as_tensor(radii_np, **kw)
        radial_weights = torch.as_tensor(radial_weights_np, **kw)
        nodes01 = torch.as_tensor((t + 1.0) / 2.0, **kw)       # Legendre nodes mapped to [0, 1]
        half_weights = torch.as_tensor(w_t / 2.0, **kw)
        e_phi = torch.empty(cov.numel(), **kw)
        e_dphi = torch.empty(cov.numel(), **kw)
        chunk = max(1, max_elements // points_per_pair)
        for start in range(0, cov.numel(), chunk):
            sl = slice(start, start + chunk)
            e_phi[sl], e_dphi[sl] = _polar_expectations(
                fn, derivative, q1[sl], q2[sl], cov[sl], radii, radial_weights, nodes01, half_weights)
        return e_phi.reshape(shape), e_dphi.reshape(shape)

    return dual


def _radial_rule(per_panel: int) -> "tuple[np.ndarray, np.ndarray]":
    """Nodes r and weights w with Σ w F(r) ≈ ∫_{−R}^{R} |r| e^{−r²/2} F(r) dr (composite Gauss–Legendre)."""
    t, w = np.polynomial.legendre.leggauss(per_panel)
    left = np.arange(RADIAL_CUTOFF, dtype=np.float64)[:, None]
    r = (left + (t + 1.0) / 2.0).reshape(-1)                      # unit panels [j, j+1]
    weights = np.tile(w / 2.0, RADIAL_CUTOFF) * r * np.exp(-r * r / 2.0)
    return np.concatenate([r, -r]), np.concatenate([weights, weights])


def _polar_expectations(fn, derivative, q1, q2, cov, radii, radial_weights, nodes01, half_weights):
    """The rule of the module docstring for M pairs: inputs (M,), outputs two (M,) tensors."""
    _, rho = safe_correlation(q1, q2, cov)
    theta = torch.arccos(rho)                                           # (M,)
    zero_v = torch.where(theta <= math.pi / 2, theta + math.pi / 2, theta - math.pi / 2)
    half_pi = torch.full_like(theta, math.pi / 2)
    edges = torch.stack([torch.zeros_like(theta), torch.minimum(zero_v, half_pi),
                         torch.maximum(zero_v, half_pi), torch.full_like(theta, math.pi)], dim=1)
    lengths = (edges[:, 1:] - edges[:, :-1]).unsqueeze(-1)            # (M, 3, 1)
    alpha = (edges[:, :-1].unsqueeze(-1) + lengths * nodes01).flatten(1)   # (M, 3D)
    angle_weights = (lengths * half_weights).flatten(1)                # (M, 3D)
    u = (torch.sqrt(q1)[:, None] * torch.cos(alpha)).unsqueeze(-1) * radii          # (M, 3D, 2D)
    v = (torch.sqrt(q2)[:, None] * torch.cos(alpha - theta[:, None])).unsqueeze(-1) * radii
    weights = angle_weights.unsqueeze(-1) * radial_weights / (2.0 * math.pi)       # (M, 3D, 2D)
    e_phi = (weights * fn(u) * fn(v)).sum(dim=(1, 2))
    e_dphi = (weights * derivative(u) * derivative(v)).sum(dim=(1, 2))
    return e_phi, e_dphi
