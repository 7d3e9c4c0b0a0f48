"""Gaussian expectations E[φ(u)φ(v)], E[φ'(u)φ'(v)] of any elementwise φ, accurate at any variances.

Three routes, each pair taking the cheapest one that is accurate to about 1e-12 of the entry's
Cauchy–Schwarz scale √(E[φ(u)²] E[φ(v)²]) (and the same for φ'):

1. Mehler's series (:mod:`ntklab.kernels.hermite`): Σ_k a_k(q1) a_k(q2) ρ^k with Hermite
   coefficients computed once per distinct variance, and a truncation bound each pair checks.
   This is where the speed comes from: N² pairs cost N² · K multiply-adds (K ≈ 20-250 for the
   usual activations at moderate variance) instead of N² · (quadrature nodes).
2. Collinear pairs (|ρ| = 1 up to rounding: the self pairs (x, x), duplicate inputs), which the
   series may not certify: v = ±√(q2/q1) u, and the expectation is one-dimensional,
   E[φ(√q1 z) φ(±√q2 z)], on the graded rule :func:`~ntklab.kernels.hermite.normal_rule`.
3. Every other pair the series leaves (|ρ| near 1 at larger variance, kinked φ): the polar rule below.

Polar rule. With (z1, z2) standard normal in polar form z = r (cos α, sin α) and θ = arccos ρ,

    u = √q1 · r cos α,   v = √q2 · r cos(α − θ),

    E[F(u, v)] = 1/(2π) ∫_{π/2}^{3π/2} dα ∫_{−R}^{R} |r| e^{−r²/2} F(u, v) dr      (R = 9: e^{−R²/2} < 3e-18).

Angles: the half-turn [π/2, 3π/2) starts on the line u = 0 and is cut where v = 0 (α = π/2 + θ),
so each of its two pieces lies between a line where u = 0 and one where v = 0; each piece is split
into panels graded geometrically towards both ends (widths L/2, L/4, …, L·2^−(levels+1) of a piece of
length L). Radii: panels [0, 2^−levels], …, [1/2, 1], [1, 2], [2, 3], [3, 4], [4, 5.5], [5.5, 7],
[7, 9], mirrored to [−R, 0]. Every panel carries ``degree // 2`` Gauss–Legendre nodes. Kinks of φ at
0 (relu, abs, leaky relu) fall on piece and panel boundaries, so they are integrated to rounding
error. The grading follows the variance (``levels`` = ceil(log2 √q) + 2 for q = max(q1, q2), at
least 2): at large q, φ(√q r cos α) turns from one side of its range to the other within 1/√q of
r = 0 and of the cuts, and the graded panels resolve that at any q. (The rule this replaced, 20
ungraded nodes per piece, was off by 5e-4 in the NTK of a depth-6 gelu net with σ_w = 4, whose
variances reach 1e6.) Cost: 2 · (2·levels + 2) · (degree // 2) angles × 2 · (levels + 7) · (degree // 2)
radii: 2.2·10⁴ points per pair at q ≤ 1, 3.2·10⁴ at q ≤ 4, 2·10⁵ at q = 1e6 (default degree 20).

Measured accuracy at the default degree, against erf's and relu's closed forms for q from 0.3 to 1e5
and ρ from 0 to 1: ≤ 1e-13 of the scale, except erf's E[φ'φ'] at q = 1e5 and 1 − ρ < 1e-5 (1e-11:
a bump of width 1/√q, and the rounding of cov alone moves it by 1e-11 there).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from ntklab.activations import Activation, Dual, safe_correlation
from ntklab.kernels.hermite import composite_legendre, grading_levels, mehler_expectations, normal_rule, rule_nodes

DEFAULT_QUADRATURE_DEGREE = 20
"""Twice the Gauss–Legendre nodes per panel of the polar rule (see the module docstring)."""

SERIES_TOLERANCE = 1e-12
"""Truncation bound the series must certify, relative to √(E[φ(u)²] E[φ(v)²]); errors compound over
layers to ~1e-11 of the kernel, well inside the 1e-9 the tests ask."""

RADIAL_OUTER_BREAKS = (1.0, 2.0, 3.0, 4.0, 5.5, 7.0, 9.0)
"""Radial panel boundaries from 1 to R = 9 (finer panels below 1 come from the grading)."""

COLLINEAR_ULPS = 4
"""|ρ| ≥ 1 − 4ε (ε of the dtype) is collinear: the rounding of cov decides nothing finer than a few ulps."""

_WORK_ENTRIES = 2 ** 18
"""Points (pairs × nodes) evaluated together by the one- and two-dimensional rules."""


def quadrature_dual(activation: Activation, degree: int = DEFAULT_QUADRATURE_DEGREE) -> Dual:
    """A dual function (same signature as ``Activation.dual``) by the three routes of the module docstring.

    Args:
        activation: supplies φ (``fn``) and φ' (``derivative``), applied elementwise.
        degree: the polar rule puts ``degree // 2`` Gauss–Legendre nodes on each panel.

    The returned function takes float tensors q1, q2, cov of any shapes that broadcast together
    (an (R, 1), (1, C), (R, C) block; (N,) self pairs; (B, H, W, 1, 1), (B, 1, 1, H, W),
    (B, H, W, H, W) image blocks) and returns (E[φ(u)φ(v)], E[φ'(u)φ'(v)]) of the broadcast shape.
    Its results may differ between calls that chunk the same pairs differently by up to the
    series' tolerance (each chunk picks its own number of terms).
    """
    fns, nodes = (activation.fn, activation.derivative), _panel_nodes(degree)

    def dual(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
        shape = np.broadcast_shapes(q1.shape, q2.shape, cov.shape)      # numpy: torch's imports sympy on first use
        q1, q2 = (_with_dims(q, len(shape)) for q in (q1, q2))
        _, rho = safe_correlation(q1, q2, cov)
        rho = rho.expand(shape)
        collinear = rho.abs() >= 1.0 - COLLINEAR_ULPS * torch.finfo(rho.dtype).eps
        e_phi, e_dphi = torch.empty(shape, dtype=rho.dtype, device=rho.device), torch.empty_like(rho)
        if bool(collinear.all()):
            left = collinear
        else:
            # collinear pairs take route 2 whatever the series says: kept out of its choice of K
            left = mehler_expectations(fns, q1, q2, rho.masked_fill(collinear, 0.0), (e_phi, e_dphi),
                                       _series_tolerance(rho.dtype))
            left |= collinear
        if bool(left.any()):
            pair_q1, pair_q2, pair_rho = q1.expand(shape)[left], q2.expand(shape)[left], rho[left]
            on_line = collinear[left]
            phi, dphi = torch.empty_like(pair_rho), torch.empty_like(pair_rho)
            if bool(on_line.any()):
                phi[on_line], dphi[on_line] = _collinear_expectations(
                    fns, pair_q1[on_line], pair_q2[on_line], torch.sign(pair_rho[on_line]))
            off_line = ~on_line
            if bool(off_line.any()):
                phi[off_line], dphi[off_line] = _polar_expectations(
                    fns, pair_q1[off_line], pair_q2[off_line], pair_rho[off_line], nodes)
            e_phi[left], e_dphi[left] = phi, dphi
        return e_phi, e_dphi

    return dual


def polar_dual(activation: Activation, degree: int = DEFAULT_QUADRATURE_DEGREE) -> Dual:
    """The polar rule alone for every pair: no series, no smoothness of φ assumed. Slow (2-3·10⁴ points
    per pair at q ≤ 4 and the default degree); the reference the fast routes are tested against."""
    fns, nodes = (activation.fn, activation.derivative), _panel_nodes(degree)

    def dual(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
        shape = np.broadcast_shapes(q1.shape, q2.shape, cov.shape)
        q1, q2, cov = (a.expand(shape).reshape(-1) for a in (q1, q2, cov))
        e_phi, e_dphi = _polar_expectations(fns, q1, q2, safe_correlation(q1, q2, cov)[1], nodes)
        return e_phi.reshape(shape), e_dphi.reshape(shape)

    return dual


def _panel_nodes(degree: int) -> int:
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 2:
        raise ValueError(f"quadrature degree must be an integer >= 2, got {degree!r}")
    return degree // 2


def _series_tolerance(dtype: torch.dtype) -> float:
    """:data:`SERIES_TOLERANCE`, or 64 ulps of a coarser dtype (float32 kernels), whose tails cannot go lower."""
    return max(SERIES_TOLERANCE, 64 * torch.finfo(dtype).eps)


def _with_dims(q: Tensor, dims: int) -> Tensor:
    """q viewed with ``dims`` axes (leading size-1 axes added), as broadcasting aligns it."""
    return q.reshape((1,) * (dims - q.dim()) + tuple(q.shape))


def _collinear_expectations(fns, q1: Tensor, q2: Tensor, sign: Tensor) -> "tuple[Tensor, Tensor]":
    """E[f(√q1 z) f(s √q2 z)] for each f in fns (φ, φ'), pairs (M,) with s = ±1 (ρ = s), on the graded
    one-dimensional rule of the Hermite coefficients (its coarsest, 12 nodes per panel: within 1e-14
    of the scale for tanh, gelu, softplus, relu and erf at q from 0.3 to 1e5)."""
    z, w = (torch.as_tensor(a, dtype=q1.dtype, device=q1.device)
            for a in normal_rule(int(grading_levels(torch.maximum(q1, q2).max())), rule_nodes(0)))
    chunk = max(1, _WORK_ENTRIES // z.numel())
    out = [torch.empty_like(q1) for _ in fns]
    for start in range(0, q1.numel(), chunk):
        sl = slice(start, start + chunk)
        u = torch.sqrt(q1[sl]).unsqueeze(1) * z                                   # (m, M)
        # self pairs (x, x) have v = u: one evaluation of each f instead of two
        same = torch.equal(q1[sl], q2[sl]) and bool((sign[sl] > 0).all())
        v = u if same else (sign[sl] * torch.sqrt(q2[sl])).unsqueeze(1) * z
        for fn, result in zip(fns, out):
            fu = fn(u)
            result[sl] = torch.mul(fu, fu if same else fn(v)) @ w
    return out[0], out[1]


def _polar_expectations(fns, q1: Tensor, q2: Tensor, rho: Tensor, nodes: int) -> "tuple[Tensor, Tensor]":
    """The polar rule of the module docstring for pairs (M,), grouped by their grading level."""
    levels = grading_levels(torch.maximum(q1, q2))
    out = [torch.empty_like(q1) for _ in fns]
    for level in torch.unique(levels).tolist():
        group = levels == level
        alpha01, angle_w01, radii, radial_w = (torch.as_tensor(a, dtype=q1.dtype, device=q1.device)
                                                for a in _polar_rule(int(level), nodes))
        g1, g2, theta = q1[group], q2[group], torch.arccos(rho[group])
        # the two pieces [π/2, π/2 + θ] (u, v of opposite signs) and [π/2 + θ, 3π/2], each between cuts
        starts = torch.stack([torch.full_like(theta, math.pi / 2), theta + math.pi / 2], dim=1)       # (G, 2)
        lengths = torch.stack([theta, math.pi - theta], dim=1).unsqueeze(-1)                            # (G, 2, 1)
        alpha = (starts.unsqueeze(-1) + lengths * alpha01).flatten(1)                                  # (G, A)
        angle_w = (lengths * angle_w01).flatten(1) / (2.0 * math.pi)                                   # (G, A)
        results = [torch.empty_like(g1) for _ in fns]
        chunk = max(1, _WORK_ENTRIES // (alpha.shape[1] * radii.numel()))
        for start in range(0, g1.numel(), chunk):
            sl = slice(start, start + chunk)
            u = (torch.sqrt(g1[sl]).unsqueeze(1) * torch.cos(alpha[sl])).unsqueeze(-1) * radii     # (m, A, R)
            v = (torch.sqrt(g2[sl]).unsqueeze(1) * torch.cos(alpha[sl] - theta[sl, None])).unsqueeze(-1) * radii
            for fn, result in zip(fns, results):
                # Σ over radii by a matrix-vector product, then over angles
                result[sl] = ((torch.mul(fn(u), fn(v)) @ radial_w) * angle_w[sl]).sum(dim=1)
        for result, group_result in zip(out, results):
            result[group] = group_result
    return out[0], out[1]


@functools.lru_cache(maxsize=64)
def _polar_rule(levels: int, nodes: int):
    """(α nodes on [0, 1] (P,), their weights (P,), radii (2Q,), radial weights (2Q,) including |r| e^{−r²/2})."""
    ends = [2.0 ** -j for j in range(levels + 1, 1, -1)]                  # 2^−(levels+1) … 1/4
    alpha, angle_w = composite_legendre(np.array([0.0] + ends + [0.5] + [1.0 - e for e in reversed(ends)] + [1.0]),
                                        nodes)
    r, radial_w = composite_legendre(np.array([0.0] + [2.0 ** -j for j in range(levels, 0, -1)]
                                              + list(RADIAL_OUTER_BREAKS)), nodes)
    radial_w = radial_w * r * np.exp(-r * r / 2.0)
    return alpha, angle_w, np.concatenate([r, -r]), np.concatenate([radial_w, radial_w])
