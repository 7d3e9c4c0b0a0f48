"""Freeze and chaos: how the infinite-width kernels behave as depth grows.

Mean-field maps (Poole et al. 2016, eqs. 3-5; Schoenholz et al. 2017, §2), for the pre-activation
variance q of one input and the correlation c of two, in a deep net of weight variance σ_w² and
bias variance σ_b² (the recursion of docs/design.md, Σ^l = σ_w² E[φ(u)φ(v)] + σ_b², read on the diagonal):

    length map        q ↦ σ_w² E[φ(√q z)²] + σ_b²,   z ~ N(0, 1),   fixed point q*
    correlation map   c ↦ (σ_w² E[φ(u)φ(v)] + σ_b²) / q*,   (u, v) ~ N(0, q* [[1, c], [c, 1]])
    χ_c = σ_w² E[φ'(u)φ'(v)]    (the correlation map's slope at c, by Price's theorem),
    χ_1 = σ_w² E[φ'(√q* z)²]   (its slope at c = 1).

c = 1 is always a fixed point. For χ_1 < 1 it is stable: the ordered phase, where any two inputs
become perfectly correlated with depth. For χ_1 > 1 it is unstable and correlations converge to
a c* < 1: the chaotic phase. χ_1 = 1 is the edge of chaos (relu at σ_w² = 2, σ_b = 0).

The NTK (Jacot et al. 2019, "Freeze and chaos for DNNs", §3) obeys Θ^l = Σ^l + χ Θ^{l-1}, with χ_1
on the diagonal and χ_{c*} < χ_1 off it (Cauchy–Schwarz). So as depth grows the normalised NTK
Θ(x, x')/√(Θ(x, x) Θ(x', x')) tends to 1 in the ordered phase (the kernel freezes to a constant
matrix, whose condition number explodes) and to 0 in the chaotic phase, like (max(1, χ_{c*})/χ_1)^l
(the diagonal grows like χ_1^l, the off-diagonal like χ_{c*}^l or tends to a constant when χ_{c*} < 1;
the kernel becomes diagonal, with condition number near 1). :func:`depth_profile` measures both, with
the analytic kernels of every depth from one pass (:func:`kernels_by_depth`).

Gaussian expectations come from the activation's closed-form dual where it has one; otherwise
the diagonal ones (length map, χ_1) use a 1-D composite Gauss–Legendre rule (:func:`gaussian_moments`)
and the off-diagonal ones :func:`ntklab.kernels.quadrature_dual`. Everything is float64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ntklab.activations import Activation, ActivationLike, Dual, get_activation
from ntklab.tensor_checks import check_inputs
from ntklab.kernels import Kernels, quadrature_dual
from ntklab.kernels.analytic import input_state, mlp_kernels_by_depth
from ntklab.layers.core import KernelOptions
from ntklab.spec import ArchSpec

DIVERGED = 1e100
"""A length-map iterate above this is taken as diverging (q* = inf)."""

_PANELS = 10            # the 1-D rule covers |z| <= 10 (the normal density there is < 2e-22)
_PER_PANEL = 24         # Gauss–Legendre nodes per unit panel
_EPS = torch.finfo(torch.float64).eps


# ----------------------------------------------------------------------------- Gaussian expectations

def gaussian_moments(activation: ActivationLike, q) -> Tuple[Tensor, Tensor]:
    """(E[φ(u)²], E[φ'(u)²]) for u ~ N(0, q), elementwise over the tensor q (float64).

    The closed-form dual at (q, q, q) where there is one; otherwise Σ_i w_i φ(√q z_i)² with a
    composite Gauss–Legendre rule on unit panels of z ∈ [−10, 10] (24 nodes each), kinks at z = 0
    falling on a panel boundary. Tests check the rule against the closed forms of relu and erf.
    """
    act = get_activation(activation)
    q = torch.as_tensor(q, dtype=torch.float64)
    if act.dual is not None:
        e_phi, e_dphi = act.dual(q, q, q)
        return torch.as_tensor(e_phi).expand_as(q).clone(), torch.as_tensor(e_dphi).expand_as(q).clone()
    z, w = _normal_rule()
    u = torch.sqrt(q).unsqueeze(-1) * z                     # (..., nodes)
    return (w * act.fn(u) ** 2).sum(-1), (w * act.derivative(u) ** 2).sum(-1)


@functools.lru_cache(maxsize=1)
def _normal_rule() -> Tuple[Tensor, Tensor]:
    """Nodes z and weights w with Σ w f(z) ≈ E f(z), z ~ N(0, 1)."""
    t, w = np.polynomial.legendre.leggauss(_PER_PANEL)
    left = np.arange(-_PANELS, _PANELS, dtype=np.float64)[:, None]
    z = (left + (t + 1.0) / 2.0).reshape(-1)
    weights = np.tile(w / 2.0, 2 * _PANELS) * np.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)
    return torch.from_numpy(z), torch.from_numpy(weights)


def _dual(act: Activation) -> Dual:
    return act.dual if act.dual is not None else quadrature_dual(act)


# ----------------------------------------------------------------------------- fixed point and χ_1

@dataclass(frozen=True)
class MeanField:
    """The length map's fixed point and χ_1, elementwise over broadcast (σ_w², σ_b²).

    sigma_w2, sigma_b2: the broadcast inputs (float64).
    q_star: the fixed point the depth recursion reaches from q^1; inf where it diverges (relu-like φ
        with σ_w² ≥ 2 and σ_b > 0, identity with σ_w² ≥ 1); 0 (to ~1e-30) where the variance dies
        out (erf at σ_b = 0, σ_w² ≤ π/4).
    chi_1: σ_w² E[φ'(√q* z)²]; where q diverges, its value at q = 1e100 (σ_w²/2 for relu, whose χ_1
        does not depend on q).
    """

    sigma_w2: Tensor
    sigma_b2: Tensor
    q_star: Tensor
    chi_1: Tensor


def mean_field(activation: ActivationLike, sigma_w2, sigma_b2, *, q0=None, warmup: int = 20,
               bisections: int = 110) -> MeanField:
    """The fixed point q* of the length map M(q) = σ_w² E[φ(√q z)²] + σ_b², and χ_1 there.

    Args:
        sigma_w2, sigma_b2: weight and bias variances, floats or tensors that broadcast.
        q0: the first layer's variance q^1; default σ_w² + σ_b², that of inputs with x·x/n_0 = 1
            (Σ^0 = σ_w² x·x/n_0 + σ_b², docs/design.md).

    Method: ``warmup`` iterations of M from q0 (the depth recursion itself), then a bracket of
    M(q) − q: [q_l, U] with U grown 16-fold until M(U) < U when the iterates rise, [0, q_l] when they fall
    (M(0) ≥ 0), then bisection down to rounding width (at most ``bisections`` halvings, which
    leaves q* = 0 at ~1e-33 · q_l). Plain iteration alone needs ~1/|1 − M'(q*)| steps, unbounded at
    the edge of chaos where M'(q*) → 1; bisection costs ~55 steps everywhere. For an
    increasing M with one fixed point between q0 and its limit (erf, tanh, relu, ...) this is the
    limit of the depth recursion.
    """
    act = get_activation(activation)
    sigma_w2, sigma_b2 = torch.broadcast_tensors(torch.as_tensor(sigma_w2, dtype=torch.float64),
                                                 torch.as_tensor(sigma_b2, dtype=torch.float64))
    if bool((sigma_w2 <= 0).any()) or bool((sigma_b2 < 0).any()):
        raise ValueError("sigma_w2 must be > 0 and sigma_b2 >= 0")
    length_map = lambda q: sigma_w2 * gaussian_moments(act, q)[0] + sigma_b2
    q = (sigma_w2 + sigma_b2) if q0 is None else torch.as_tensor(q0, dtype=torch.float64).expand_as(sigma_w2)
    for _ in range(warmup):
        q = length_map(q).clamp(max=DIVERGED)
    gap = length_map(q) - q
    rising = gap > 0
    lo = torch.where(rising, q, torch.zeros_like(q))
    hi = q.clone()
    open_ = rising.clone()
    for _ in range(100):                    # 16^100 > DIVERGED: every rising bracket closes or diverges
        # M(U) − U within rounding of 0 is no evidence of a crossing: relu at σ_w² = 2 with a bias
        # gains σ_b² per layer forever, which float64 cannot see once q ≈ 1e16 σ_b².
        u = hi[open_]
        still = (sigma_w2[open_] * gaussian_moments(act, u)[0] + sigma_b2[open_] - u >= -4 * _EPS * u) & (u < DIVERGED)
        open_[open_.clone()] = still
        if not bool(open_.any()):
            break
        lo[open_] = hi[open_]
        hi[open_] = 16.0 * hi[open_] + 1.0
    diverged = rising & ~(hi < DIVERGED)
    active = ~diverged & (gap != 0)
    for _ in range(bisections):
        # stop at rounding width; brackets at q* = 0 go on, down to ~q·2^-bisections
        active &= (hi - lo) > 4 * _EPS * hi
        if not bool(active.any()):
            break
        mid = (lo[active] + hi[active]) / 2.0
        sw2, sb2 = sigma_w2[active], sigma_b2[active]
        up = sw2 * gaussian_moments(act, mid)[0] + sb2 - mid > 0
        lo[active] = torch.where(up, mid, lo[active])
        hi[active] = torch.where(up, hi[active], mid)
    q_star = torch.where(gap == 0, q, (lo + hi) / 2.0)
    at = torch.where(diverged, torch.full_like(q, DIVERGED), q_star)
    chi_1 = sigma_w2 * gaussian_moments(act, at)[1]
    return MeanField(sigma_w2, sigma_b2, torch.where(diverged, torch.full_like(q, math.inf), q_star), chi_1)


def chi_1(activation: ActivationLike, sigma_w2, sigma_b2) -> Tensor:
    """χ_1 = σ_w² E[φ'(√q* z)²] at the length map's fixed point (see :func:`mean_field`)."""
    return mean_field(activation, sigma_w2, sigma_b2).chi_1


# ----------------------------------------------------------------------------- correlation map

def correlation_map(activation: ActivationLike, sigma_w2: float, sigma_b2: float, c, *,
                    q_star: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """The correlation map c ↦ (σ_w² E[φ(u)φ(v)] + σ_b²)/q* and χ_c = σ_w² E[φ'(u)φ'(v)] at c.

    Args:
        c: (C,) correlations in [−1, 1].
        q_star: the fixed point (default: from :func:`mean_field`); must be finite and > 0.

    Returns:
        (next correlation (C,), χ_c (C,)), float64.
    """
    act = get_activation(activation)
    if q_star is None:
        q_star = mean_field(act, sigma_w2, sigma_b2).q_star.item()
    if not (math.isfinite(q_star) and q_star > 0):
        raise ValueError(f"the correlation map needs a finite fixed point q* > 0, got {q_star!r}")
    c = torch.as_tensor(c, dtype=torch.float64)
    q = torch.full_like(c, q_star)
    e_phi, e_dphi = _dual(act)(q, q, c * q_star)
    return (sigma_w2 * e_phi + sigma_b2) / q_star, sigma_w2 * e_dphi


def correlation_fixed_point(activation: ActivationLike, sigma_w2: float, sigma_b2: float, *, c0: float = 0.0,
                            tol: float = 1e-13, max_iter: int = 20_000) -> Tuple[float, float]:
    """(c*, χ_{c*}): the correlation map iterated from c0 (< 1) to its fixed point.

    In the ordered phase c* = 1 (reached like χ_1^l); in the chaotic phase the stable c* < 1.
    """
    act = get_activation(activation)
    q_star = mean_field(act, sigma_w2, sigma_b2).q_star.item()
    c = torch.tensor([float(c0)], dtype=torch.float64)
    for _ in range(max_iter):
        new, _ = correlation_map(act, sigma_w2, sigma_b2, c, q_star=q_star)
        new = new.clamp(-1.0, 1.0)
        if (new - c).abs().item() <= tol:
            c = new
            break
        c = new
    return c.item(), correlation_map(act, sigma_w2, sigma_b2, c, q_star=q_star)[1].item()


# ----------------------------------------------------------------------------- phase diagram

@dataclass(frozen=True)
class PhaseDiagram:
    """χ_1 over a grid of (σ_w², σ_b²) and the χ_1 = 1 line.

    sigma_w2: (W,), sigma_b2: (B,) the grid axes.
    q_star, chi_1: (B, W) float64 (see :class:`MeanField`).
    critical_sigma_w2: (B,) σ_w² with χ_1 = 1 at each σ_b² (NaN where χ_1 − 1 keeps one sign
        along the row), the first crossing refined by bisection.
    """

    sigma_w2: Tensor
    sigma_b2: Tensor
    q_star: Tensor
    chi_1: Tensor
    critical_sigma_w2: Tensor


def phase_diagram(activation: ActivationLike, sigma_w2: Sequence[float], sigma_b2: Sequence[float]) -> PhaseDiagram:
    """χ_1 on the grid σ_b2 × sigma_w2 and the edge of chaos (see :class:`PhaseDiagram`)."""
    act = get_activation(activation)
    w_axis = torch.as_tensor(sigma_w2, dtype=torch.float64).reshape(-1)
    b_axis = torch.as_tensor(sigma_b2, dtype=torch.float64).reshape(-1)
    grid_b, grid_w = torch.meshgrid(b_axis, w_axis, indexing="ij")      # (B, W)
    field = mean_field(act, grid_w, grid_b)
    return PhaseDiagram(w_axis, b_axis, field.q_star, field.chi_1,
                        critical_line(act, b_axis, w_axis, field.chi_1))


def critical_line(activation: ActivationLike, sigma_b2, sigma_w2_grid, chi_1_grid: Optional[Tensor] = None, *,
                  steps: int = 45) -> Tensor:
    """σ_w² on the χ_1 = 1 line for each σ_b² (B,), searched within the sorted ``sigma_w2_grid`` (W,).

    The first sign change of χ_1 − 1 along each row brackets the crossing; ``steps`` bisection
    steps (all rows at once) shrink the bracket to (grid spacing)/2^steps. NaN where no crossing.
    ``chi_1_grid`` (B, W) reuses χ_1 already computed on the grid.
    """
    act = get_activation(activation)
    b = torch.as_tensor(sigma_b2, dtype=torch.float64).reshape(-1)
    w = torch.as_tensor(sigma_w2_grid, dtype=torch.float64).reshape(-1)
    if chi_1_grid is None:
        grid_b, grid_w = torch.meshgrid(b, w, indexing="ij")
        chi_1_grid = mean_field(act, grid_w, grid_b).chi_1
    above = chi_1_grid > 1.0                                            # (B, W)
    change = above[:, 1:] != above[:, :-1]                               # (B, W−1)
    found = change.any(dim=1)
    first = change.to(torch.int64).argmax(dim=1)
    lo, hi = w[first].clone(), w[first + 1].clone()
    lo_above = above[torch.arange(b.numel()), first]
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        mid_above = mean_field(act, mid, b).chi_1 > 1.0
        move_lo = mid_above == lo_above
        lo, hi = torch.where(move_lo, mid, lo), torch.where(move_lo, hi, mid)
    return torch.where(found, (lo + hi) / 2.0, torch.full_like(lo, math.nan))


def condition_number(kernel: Tensor) -> float:
    """λ_max/λ_min of a symmetric (N, N) kernel; inf once λ_min ≤ N·eps·λ_max, where rounding of the
    entries decides it (:func:`depth_profile` uses it)."""
    eigenvalues = torch.linalg.eigvalsh(kernel.to(torch.float64))
    if not eigenvalues[0] > kernel.shape[0] * _EPS * eigenvalues[-1]:
        return math.inf
    return (eigenvalues[-1] / eigenvalues[0]).item()


def normalised_kernel(kernel: Tensor) -> Tensor:
    """K_ij/√(K_ii K_jj) of a (N1, N2) kernel on inputs whose diagonal entries it holds (a square
    kernel of one set of inputs), in float64: the cosine of the angle between two inputs' features,
    1 on the diagonal; 1 off it for a frozen kernel, 0 for a chaotic one. A zero diagonal entry (an
    input whose output is exactly 0, whose direction is undefined) gives nan in its row and column."""
    kernel = torch.as_tensor(kernel).to(torch.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"normalised_kernel needs a square (N, N) kernel, got shape {tuple(kernel.shape)}")
    scale = kernel.diagonal().sqrt()
    return kernel / scale[:, None] / scale[None, :]


def critical_sigma_b2(activation: str, sigma_w2: float, upper: float = 100.0, steps: int = 60) -> Optional[float]:
    """σ_b² with χ_1 = 1 at this σ_w² (bisection on [0, upper] of :func:`mean_field`'s χ_1,
    which a bias variance lowers for saturating φ); None when χ_1 − 1 has one sign on the interval or is 0
    on all of it (relu: χ_1 = σ_w²/2 whatever σ_b²)."""
    chi = lambda b2: mean_field(activation, sigma_w2, b2).chi_1.item() - 1.0
    lo, hi = 0.0, upper
    f_lo, f_hi = chi(lo), chi(hi)
    if f_lo == 0.0:
        return None if f_hi == 0.0 else 0.0          # relu at σ_w² = 2: χ_1 = 1 for every σ_b², no one crossing
    if f_lo * f_hi > 0 or not (math.isfinite(f_lo) and math.isfinite(f_hi)):
        return None
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        if (chi(mid) > 0) == (f_lo > 0):
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0




def layer_norm_chi_1(activation: str, sigma_w2: float, sigma_b2: float, position: str = "pre") -> Optional[float]:
    """χ_1 of the net with layer_norm in every block, in the limit: the slope at c = 1 of its correlation map.

    pre  (dense, layer_norm, φ): layer_norm pins the activation's input variance to 1, so with
         q_pre = σ_w² E[φ(z)²] + σ_b² (z ~ N(0, 1)) the map is c ↦ (σ_w² E[φ(u)φ(v)] + σ_b²)/q_pre and
             χ_1 = σ_w² E[φ'(z)²] / (σ_w² E[φ(z)²] + σ_b²);
    post (dense, φ, layer_norm): the activations are scaled to unit second moment, so the pre-activation
         variance is q = σ_w² + σ_b² at every layer and, for an odd φ (zero channel mean),
             χ_1 = σ_w² E[φ'(√q z)²] / E[φ(√q z)²];
         None for other φ (layer_norm then also removes the channel mean E[φ], not computed here).
    The moments are :func:`gaussian_moments`'."""
    if position == "pre":
        e_phi, e_dphi = gaussian_moments(activation, 1.0)
        return (sigma_w2 * e_dphi / (sigma_w2 * e_phi + sigma_b2)).item()
    from ntklab.layers import activation as activation_layer

    if not activation_layer(activation).odd:
        return None
    e_phi, e_dphi = gaussian_moments(activation, sigma_w2 + sigma_b2)
    return (sigma_w2 * e_dphi / e_phi).item()


# ----------------------------------------------------------------------------- kernels against depth

@dataclass(frozen=True)
class DepthProfile:
    """The analytic kernels of one architecture at depths 1..L.

    depths: (L,) 1..max_depth.
    normalised_ntk, normalised_nngp: (L,) K(x, x')/√(K(x, x) K(x', x')) for the pair (x, x').
    condition_number: (L,) λ_max/λ_min of the NTK on all the inputs; inf once λ_min is below
        N·eps·λ_max, where float64 rounding of the entries decides it (a frozen kernel is
        numerically rank one from condition numbers of ~1e14).
    """

    depths: Tuple[int, ...]
    normalised_ntk: Tensor
    normalised_nngp: Tensor
    condition_number: Tensor


def depth_profile(spec: ArchSpec, max_depth: int, *, correlation: float = 0.5, n_inputs: int = 8,
                  dim: int = 10, seed: int = 0) -> DepthProfile:
    """Normalised NTK/NNGP of two inputs and the NTK's condition number for depths 1..max_depth.

    Inputs lie on the sphere x·x/dim = 1: x and x' with x·x'/dim = ``correlation``, then
    n_inputs − 2 uniform random points (seeded) for the condition number. ``spec``'s own depth is
    ignored; the kernels of every depth come from :func:`kernels_by_depth`.
    """
    if not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must lie in [-1, 1], got {correlation!r}")
    if not isinstance(n_inputs, int) or n_inputs < 2 or not isinstance(dim, int) or dim < 2:
        raise ValueError("n_inputs and dim must be integers >= 2")
    x = sphere_pair_and_points(correlation, n_inputs, dim, seed)
    ntk, nngp, condition = [], [], []
    for kernels in kernels_by_depth(spec, x, max_depth):
        for kernel, out in ((kernels.ntk, ntk), (kernels.nngp, nngp)):
            out.append(normalised_kernel(kernel)[0, 1].item())
        condition.append(condition_number(kernels.ntk))
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)
    return DepthProfile(tuple(range(1, max_depth + 1)), as_tensor(ntk), as_tensor(nngp), as_tensor(condition))


def kernels_by_depth(spec: ArchSpec, x, max_depth: int) -> List[Kernels]:
    """The analytic kernels of ``spec`` at depths 1..max_depth on the rows of x (N, d): one pass.

    :func:`ntklab.analytic_kernels` per depth would cost O(max_depth²) layers, minutes at depth 100
    for an activation integrated by quadrature. This runs the same layer rules once through the
    hidden layers (:func:`ntklab.kernels.analytic.mlp_kernels_by_depth`), applying each depth's
    readout to the state after its last hidden layer; tests check every depth against
    :func:`ntklab.analytic_kernels`. Returns max_depth :class:`ntklab.Kernels` of (N, N) float64.
    """
    if not isinstance(max_depth, int) or isinstance(max_depth, bool) or max_depth < 1:
        raise ValueError(f"max_depth must be an integer >= 1, got {max_depth!r}")
    if isinstance(spec.width, tuple):
        raise ValueError("kernels by depth need one width for every layer, not a tuple of widths")
    x, _ = check_inputs(x, dtype=torch.float64)
    out = []
    state = input_state(x, x, False, KernelOptions())
    for _, final in mlp_kernels_by_depth(spec, x.shape[1], range(1, max_depth + 1), state):
        nngp, ntk = final.block.nngp, final.block.ntk
        # as in analytic_kernels: the diagonal from the self pairs, whose ρ = 1 exactly
        nngp.diagonal().copy_(final.diag1.nngp)
        ntk.diagonal().copy_(final.diag1.ntk)
        out.append(Kernels(nngp, ntk))
    return out


def sphere_pair_and_points(correlation: float, n: int, dim: int, seed: int = 0) -> Tensor:
    """(n, dim) float64 inputs with x·x/dim = 1: rows 0, 1 at x·x'/dim = correlation, the rest uniform."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    x[0] = 0.0
    x[0, 0] = 1.0
    x[1] = 0.0
    x[1, 0], x[1, 1] = correlation, math.sqrt(max(0.0, 1.0 - correlation ** 2))
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(dim)


def spec_from_variances(activation: ActivationLike, sigma_w2: float, sigma_b2: float, **kwargs) -> ArchSpec:
    """An :class:`ArchSpec` with σ_w = √sigma_w2, σ_b = √sigma_b2 (``kwargs`` as ArchSpec's)."""
    return ArchSpec(activation=activation, sigma_w=math.sqrt(sigma_w2), sigma_b=math.sqrt(sigma_b2), **kwargs)


__all__ = ["gaussian_moments", "MeanField", "mean_field", "chi_1", "condition_number", "critical_sigma_b2",
           "layer_norm_chi_1", "correlation_map", "correlation_fixed_point",
           "PhaseDiagram", "phase_diagram", "critical_line", "DepthProfile", "depth_profile", "normalised_kernel",
           "kernels_by_depth",
           "sphere_pair_and_points", "spec_from_variances", "DIVERGED"]
