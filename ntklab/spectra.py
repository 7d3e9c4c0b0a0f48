"""Spectra of the infinite-width kernels: by degree on the boolean cube and the sphere, and on data.

Dot-product kernels. When every input has x·x/n_0 = 1 (docs/design.md: the first layer reads
Σ^0 = σ_w² x·x'/n_0 + σ_b²), every layer's NNGP and NTK between x and x' is one function

    K(x, x') = Φ(t),   t = x·x'/d   (d = n_0),

of t alone (the pre-activation variances are the same for all inputs). This holds on the boolean
cube {±1}^d and on the sphere of radius √d in R^d; :func:`kernel_profile` evaluates Φ in float64
with :func:`ntklab.analytic_kernels`. Eigenvalues below are those of the kernel's integral operator
(Tf)(x) = E_{x'}[K(x, x') f(x')] under the uniform probability measure; they do not depend on a
sample size, and Σ_k m_k μ_k = Φ(1) (the trace is K(x, x)) with m_k the multiplicities.

Boolean cube (Yang & Salman 2019, "A fine-grained spectral perspective on neural networks", §3).
The monomials χ_S(x) = Π_{i∈S} x_i are the eigenfunctions; the eigenvalue depends on |S| = k only,
with multiplicity C(d, k):

    μ_k = E_x[Φ(x·1/d) χ_S(x)] = 2^{-d} Σ_{b=0}^{d-k} C(d−k, b) (Δ^k F)(b),
    F(m) = Φ(1 − 2m/d),   (Δ^k F)(b) = Σ_a C(k, a) (−1)^a F(a + b)

(split x by the number a of −1s inside S and b outside). A k-th finite difference of values of
size Φ(1) cancels down to μ_k ≲ Φ(1)/C(d, k) ≈ 2^{-d} Φ(1) at k ≈ d/2, so float64 loses every digit
from d ≈ 50. Here F is evaluated in mpmath at P = d + 53 + extra_bits bits, rounded to integers
F(m)·2^P/Φ(1), and the differences and binomial sums are exact integer arithmetic. Since the
weights 2^{-d} C(d−k, b) C(k, a) sum to 1, each μ_k is off by at most the rounding of F:
|error| ≤ 2^{-P} Φ(1) ≈ 2^{-(d+117)} Φ(1) by default, far below the μ_k of the cube's kernels (relu's
smallest at d = 1000 is ~1e-304 ≈ 2^{-1009} Φ(1)). Values within that bound of 0 are returned
as 0. High precision needs the activation's dual in closed form (relu, abs, leaky_relu, erf, gelu,
identity, sin; ``Activation.precise_dual``): other activations raise ValueError, because their
float64 quadrature is accurate to ~1e-12 only, which the differences would amplify beyond use.

Sphere (spherical harmonics; Smola et al. 2001, Bach 2017 §D). For x uniform on the sphere of
radius √d in R^d (so t = x·x'/d is the cosine of the angle), the harmonics of degree k are the
eigenfunctions, with multiplicity N(d, k) = C(k+d−1, d−1) − C(k+d−3, d−1) and eigenvalue

    λ_k = (ω_{d−2}/ω_{d−1}) ∫_{−1}^{1} Φ(t) P_k(t) (1 − t²)^{(d−3)/2} dt
        = Γ(d/2)/(√π Γ((d−1)/2)) ∫_0^π Φ(cos θ) P_k(cos θ) sin^{d−2} θ dθ,

P_k the Gegenbauer polynomial C_k^{(d−2)/2} normalised to P_k(1) = 1 (Legendre for d = 3,
Chebyshev for d = 2). The θ form is integrated by Gauss–Legendre: relu's Φ has √(1 − t) terms
at t = ±1, which cost a Gauss–Jacobi rule in t algebraic convergence (~1e-9 at 400 nodes for
d = 3), but are analytic in θ, where the rule reaches rounding error with ~50 nodes. The sum
cancels down to λ_k like the cube's differences, but here in float64: λ_k within rounding of the
sum of its terms' magnitudes are returned as 0 (:func:`sphere_eigenvalues`).

Data (:func:`analytic_spectrum`, :func:`empirical_spectrum`): eigenvalues (descending) and top
eigenvectors of a kernel matrix on given inputs; η_max = 2Nk/λ_max is
:func:`ntklab.dynamics.max_learning_rate`, which the trainer uses for ``optim.lr_unit=eta_max``.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ntklab.activations import get_activation
from ntklab.kernels import Kernels, analytic_kernels
from ntklab.ntk import empirical_nngp, empirical_ntk
from ntklab.spec import ArchSpec

KINDS = ("nngp", "ntk")
DOMAINS = ("boolean_cube", "sphere")
DEFAULT_EXTRA_BITS = 64
"""Bits beyond d + 53 for the boolean cube's exact differences (see the module docstring)."""


# ----------------------------------------------------------------------------- dot-product profile

def kernel_profile(spec: ArchSpec, t, d: int) -> Kernels:
    """Φ(t) of the NNGP and NTK of ``spec`` for inputs with x·x/d = 1 and x·x'/d = t, in float64.

    Args:
        t: (T,) values in [−1, 1].
        d: the input dimension n_0 (it enters the "standard" parametrization's NTK).

    Returns:
        :class:`Kernels` with two (T,) float64 tensors, from :func:`ntklab.analytic_kernels` on
        x = √d e_1 and x' = √d (t e_1 + √(1 − t²) e_2).
    """
    d = _check_dim(d, minimum=2)
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    if bool(((t < -1) | (t > 1)).any()):
        raise ValueError("t must lie in [-1, 1]")
    x = torch.zeros(1, d, dtype=torch.float64)
    x[0, 0] = math.sqrt(d)
    x_other = torch.zeros(t.numel(), d, dtype=torch.float64)
    x_other[:, 0] = math.sqrt(d) * t
    x_other[:, 1] = math.sqrt(d) * torch.sqrt((1.0 - t * t).clamp_min(0.0))
    kernels = analytic_kernels(spec, x, x_other)
    return Kernels(kernels.nngp[0], kernels.ntk[0])


# ----------------------------------------------------------------------------- boolean cube

def boolean_cube_eigenvalues(spec: ArchSpec, d: int, kind: str = "ntk", *,
                             extra_bits: int = DEFAULT_EXTRA_BITS, log: bool = False) -> Tensor:
    """The d+1 distinct eigenvalues μ_0..μ_d of the NNGP or NTK of ``spec`` on {±1}^d.

    μ_k belongs to the C(d, k) monomials of degree k, as an eigenvalue of the integral operator
    under the uniform measure on the cube (= an eigenvalue of the 2^d × 2^d matrix K / 2^d).

    Args:
        kind: "nngp" (Σ) or "ntk" (Θ).
        extra_bits: precision beyond d + 53 bits (module docstring); results at two values agree
            to float64 rounding when the arithmetic is sound, which tests/test_spectra.py checks.
        log: return ln μ_k (−inf where μ_k is 0 to working precision): beyond d ≈ 1050 the
            high-degree μ_k can fall below float64's smallest number (relu's do from k ≈ 400 at
            d = 1100), and are then 0 without ``log``.

    Returns:
        (d+1,) float64 tensor, index k = degree.
    """
    _check_kind(kind)
    return boolean_cube_eigenvalues_by_depth(spec, d, [spec.depth], kind, extra_bits=extra_bits, log=log)[0]


def boolean_cube_eigenvalues_by_depth(spec: ArchSpec, d: int, depths: Sequence[int], kind: str = "ntk", *,
                                      extra_bits: int = DEFAULT_EXTRA_BITS, log: bool = False) -> Tensor:
    """μ_k of ``spec`` with its depth replaced by each of ``depths``: (len(depths), d+1) float64.

    One high-precision pass through the hidden layers serves every depth (:func:`_precise_profiles`).
    """
    _check_kind(kind)
    return _cube_by_depth(spec, d, depths, [kind], extra_bits, log)[kind]


def _cube_by_depth(spec: ArchSpec, d: int, depths: Sequence[int], kinds: Sequence[str], extra_bits: int,
                   log: bool) -> Dict[str, Tensor]:
    """{kind: (len(depths), d+1)} from one high-precision recursion for all kinds and depths."""
    d = _check_dim(d, minimum=1)
    depths = _check_depths(depths)
    if not isinstance(extra_bits, int) or isinstance(extra_bits, bool) or extra_bits < 0:
        raise ValueError(f"extra_bits must be an integer >= 0, got {extra_bits!r}")
    bits = d + 53 + extra_bits
    profiles = _precise_profiles(spec, d, depths, working_bits=bits + 64)
    return {kind: torch.tensor([_cube_transform(profiles[depth][KINDS.index(kind)], d, bits, log) for depth in depths],
                               dtype=torch.float64)
            for kind in kinds}


def boolean_cube_supported(activation) -> bool:
    """Whether :func:`boolean_cube_eigenvalues` can compute ``activation``'s spectra (a closed-form dual
    with a high-precision twin, ``Activation.precise_dual``: relu, abs, leaky_relu, erf, identity, sin)."""
    return get_activation(activation).precise_dual is not None


def _cube_transform(phi, d: int, bits: int, log: bool) -> List[float]:
    """μ_k (or ln μ_k) from Φ at t = 1 − 2m/d (mpf, m = 0..d) by exact integer differences."""
    import mpmath

    scale = phi[0]                                  # Φ(1) = max |Φ| for a positive semi-definite kernel
    if not scale > 0:
        raise ValueError(f"the kernel's diagonal Φ(1) = {float(scale):.3g} is not positive")
    with mpmath.workprec(bits + 64):
        values = [int(mpmath.nint(mpmath.ldexp(v / scale, bits))) for v in phi]     # F(m)·2^P/Φ(1)
    binomials = [math.comb(d, b) for b in range(d + 1)]                             # C(d−k, ·), k = 0
    differences = values                                                            # (Δ^k F)(b), k = 0
    numerators = []
    for _ in range(d + 1):
        numerators.append(sum(map(operator.mul, binomials, differences)))
        differences = [a - b for a, b in zip(differences, differences[1:])]
        # C(n−1, b) = C(n, b) − C(n−1, b−1): the next row from this one, by subtraction only
        binomials = list(itertools.accumulate(binomials[:-1], lambda previous, c: c - previous))
    # The rounding of each F(m) is at most 1/2 unit and the weights sum to 2^d units: anything
    # within 2^d units of zero cannot be told apart from it.
    resolution = 1 << d
    out = []
    with mpmath.workprec(bits + 64):
        for numerator in numerators:
            if abs(numerator) <= resolution:
                out.append(-math.inf if log else 0.0)
                continue
            value = mpmath.ldexp(mpmath.mpf(numerator) * scale, -(d + bits))
            if log:
                out.append(float(mpmath.log(value)) if value > 0 else math.nan)
            else:
                out.append(float(value))
    return out


def fractional_variance(mu, multiplicity=None, *, total: Optional[float] = None, log: bool = False) -> Tensor:
    """The share of the kernel's trace in each degree: m_k μ_k / Σ_i m_i μ_i.

    Args:
        mu: (K+1,) eigenvalues by degree (or ln μ_k with ``log=True``).
        multiplicity: (K+1,) multiplicities m_k; default C(d, k) with d = K, the boolean cube's.
        total: divide by this instead of Σ_i m_i μ_i, e.g. Φ(1) = the full trace when ``mu`` is a
            truncated sphere expansion (then the shares sum to less than 1).
        log: ``mu`` holds logarithms.

    Returns:
        (K+1,) float64; computed in log space, so C(d, k) ≈ 1e299 at d = 1000 neither overflows
        nor loses the shares of μ_k below float64's range (pass ``log=True`` values for those).
    """
    mu = torch.as_tensor(mu, dtype=torch.float64).reshape(-1)
    if log:
        log_abs, sign = mu, torch.ones_like(mu)
    else:
        log_abs, sign = torch.log(mu.abs()), torch.sign(mu)
    if multiplicity is None:
        n = mu.numel() - 1
        k = torch.arange(n + 1, dtype=torch.float64)
        log_mult = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    else:
        multiplicity = torch.as_tensor(multiplicity, dtype=torch.float64).reshape(-1)
        if multiplicity.numel() != mu.numel() or bool((multiplicity < 0).any()):
            raise ValueError("multiplicity must hold one non-negative number per eigenvalue")
        log_mult = torch.log(multiplicity)
    log_weight = log_mult + log_abs
    finite = torch.isfinite(log_weight)
    if not bool(finite.any()):
        raise ValueError("every eigenvalue is zero: the fractional variance is undefined")
    shift = log_weight[finite].max()
    weight = torch.where(finite, sign * torch.exp(log_weight - shift), torch.zeros_like(mu))
    if total is None:
        return weight / weight.sum()
    if not total > 0:
        raise ValueError(f"total must be > 0, got {total!r}")
    return weight * torch.exp(shift - math.log(total))


# ----------------------------------------------------------------------------- sphere

def sphere_multiplicity(d: int, k: int) -> int:
    """N(d, k): the dimension of the degree-k spherical harmonics on S^{d−1} ⊂ R^d."""
    d = _check_dim(d, minimum=2)
    if k == 0:
        return 1
    if k == 1:
        return d
    return math.comb(k + d - 1, d - 1) - math.comb(k + d - 3, d - 1)


def sphere_eigenvalues(spec: ArchSpec, d: int, max_degree: int = 20, kind: str = "ntk", *,
                       nodes: Optional[int] = None) -> Tensor:
    """λ_0..λ_K (K = max_degree) of the NNGP or NTK of ``spec`` for inputs uniform on the sphere of
    radius √d in R^d (module docstring), each of multiplicity :func:`sphere_multiplicity`.

    Args:
        nodes: Gauss–Legendre nodes in θ ∈ [0, π]; default max(64, d + 2K + 32), enough for the
            trigonometric polynomial sin^{d−2} θ · P_k(cos θ) with a margin for Φ (tests quadruple it).

    Returns:
        (K+1,) float64; λ_k are eigenvalues of the operator under the uniform probability measure,
        so the Gram matrix K(X, X)/n of n uniform points has N(d, k) eigenvalues near λ_k.
        The quadrature sum Σ_i w_i Φ(t_i) P_k(t_i) cancels down to λ_k, so its rounding error is
        relative to Σ_i |w_i Φ(t_i) P_k(t_i)|, not to λ_k: a λ_k within :data:`SPHERE_RESOLUTION`
        times that of 0 (an odd kernel's even degrees; high degrees at small d) is returned as 0.
    """
    _check_kind(kind)
    return _sphere_by_depth(spec, d, [spec.depth], [kind], max_degree, nodes)[0][kind][0]


SPHERE_RESOLUTION = 1e-13
"""λ_k with |λ_k| below this times Σ_i |w_i Φ(t_i) P_k(t_i)| are rounding noise (default nodes against
four times as many differ by at most 5e-14 of that sum, over relu/erf/tanh, d = 3..1000)."""


def _sphere_by_depth(spec: ArchSpec, d: int, depths: Sequence[int], kinds: Sequence[str], max_degree: int,
                     nodes: Optional[int]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """({kind: (D, K+1) λ_k}, {kind: (D,) Φ(1)}): one kernel profile per depth serves every kind."""
    d = _check_dim(d, minimum=2)
    depths = _check_depths(depths)
    if not isinstance(max_degree, int) or isinstance(max_degree, bool) or max_degree < 0:
        raise ValueError(f"max_degree must be an integer >= 0, got {max_degree!r}")
    nodes = max(64, d + 2 * max_degree + 32) if nodes is None else nodes
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 2:
        raise ValueError(f"nodes must be an integer >= 2, got {nodes!r}")
    x, w = np.polynomial.legendre.leggauss(nodes)
    theta = (x + 1.0) * (math.pi / 2.0)
    # ω_{d−2}/ω_{d−1} = Γ(d/2)/(√π Γ((d−1)/2)); sin^{d−2} in log form so large d cannot overflow.
    log_const = math.lgamma(d / 2.0) - math.lgamma((d - 1) / 2.0) - 0.5 * math.log(math.pi)
    sin = np.sin(theta)
    weights = w * (math.pi / 2.0) * np.exp(log_const + (d - 2) * np.log(np.where(sin > 0, sin, 1.0)))
    t = np.append(np.cos(theta), 1.0)                      # the nodes, and t = 1 for Φ(1)
    legendre_weights = torch.from_numpy(sphere_legendre(max_degree, d, t[:-1]) * weights)   # (K+1, nodes)
    eigenvalues = {kind: [] for kind in kinds}
    totals = {kind: [] for kind in kinds}
    for depth in depths:
        profile = kernel_profile(_with_depth(spec, depth), torch.from_numpy(t), d)
        for kind in kinds:
            phi = getattr(profile, kind)
            lam = legendre_weights @ phi[:-1]
            resolution = SPHERE_RESOLUTION * (legendre_weights.abs() @ phi[:-1].abs())
            eigenvalues[kind].append(torch.where(lam.abs() <= resolution, torch.zeros_like(lam), lam))
            totals[kind].append(phi[-1])
    return ({kind: torch.stack(rows) for kind, rows in eigenvalues.items()},
            {kind: torch.stack(rows) for kind, rows in totals.items()})


def sphere_legendre(max_degree: int, d: int, t) -> np.ndarray:
    """P_k(t) for k = 0..K: Gegenbauer C_k^{(d−2)/2} normalised to P_k(1) = 1, shape (K+1, T).

    Three-term recurrence P_{k+1} = ((2k + d − 2) t P_k − k P_{k−1}) / (k + d − 2), stable on [−1, 1]
    where |P_k| ≤ 1.
    """
    t = np.asarray(t, dtype=np.float64)
    out = np.empty((max_degree + 1,) + t.shape)
    out[0] = 1.0
    if max_degree >= 1:
        out[1] = t
    for k in range(1, max_degree):
        out[k + 1] = ((2 * k + d - 2) * t * out[k] - k * out[k - 1]) / (k + d - 2)
    return out


# ----------------------------------------------------------------------------- depth sweep

@dataclass(frozen=True)
class DepthSweep:
    """Fractional variance by degree for a range of depths.

    depths: (D,) the depths swept.
    eigenvalues: (D, K+1) float64, μ_k (cube) or λ_k (sphere) at each depth.
    fractional_variance: (D, K+1) float64, each row the shares m_k μ_k / Φ(1).
    best_depth: (K+1,) the depth maximising each degree's share (the first such, on ties; None for a
        degree whose share is 0 at every depth, as an odd kernel's even degrees).
    """

    depths: Tuple[int, ...]
    eigenvalues: Tensor
    fractional_variance: Tensor
    best_depth: Tuple[Optional[int], ...]


def fractional_variance_by_depth(spec: ArchSpec, d: int, depths: Sequence[int], kind: str = "ntk", *,
                                 domain: str = "boolean_cube", max_degree: Optional[int] = None) -> DepthSweep:
    """Sweep ``spec`` over ``depths`` and find, for each degree, the depth maximising its share.

    On the cube the shares are over all d+1 degrees (they sum to 1); on the sphere over degrees
    0..max_degree (default 20) divided by Φ(1), so they sum to the part of the trace below
    max_degree.
    """
    _check_kind(kind)
    return depth_sweeps(spec, d, depths, [kind], domain=domain, max_degree=max_degree)[kind]


def depth_sweeps(spec: ArchSpec, d: int, depths: Sequence[int], kinds: Sequence[str] = KINDS, *,
                 domain: str = "boolean_cube", max_degree: Optional[int] = None) -> Dict[str, DepthSweep]:
    """:func:`fractional_variance_by_depth` for several kinds at the cost of one (the recursion or
    kernel profile gives the NNGP and the NTK together)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    for kind in kinds:
        _check_kind(kind)
    depths = _check_depths(depths)
    if domain == "boolean_cube":
        if max_degree is not None:
            raise ValueError("max_degree applies to the sphere; the cube has degrees 0..d")
        log_mu = _cube_by_depth(spec, d, depths, kinds, DEFAULT_EXTRA_BITS, log=True)
        eigenvalues = {kind: torch.exp(rows) for kind, rows in log_mu.items()}
        shares = {kind: torch.stack([fractional_variance(row, log=True) for row in rows])
                  for kind, rows in log_mu.items()}
    else:
        max_degree = 20 if max_degree is None else max_degree
        multiplicity = [float(sphere_multiplicity(d, k)) for k in range(max_degree + 1)]
        eigenvalues, totals = _sphere_by_depth(spec, d, depths, kinds, max_degree, None)
        shares = {kind: torch.stack([fractional_variance(row, multiplicity, total=total.item())
                                     for row, total in zip(eigenvalues[kind], totals[kind])])
                  for kind in kinds}
    out = {}
    for kind in kinds:
        best = tuple(depths[i] if top > 0 else None
                     for i, top in zip(shares[kind].argmax(dim=0).tolist(), shares[kind].max(dim=0).values.tolist()))
        out[kind] = DepthSweep(tuple(depths), eigenvalues[kind], shares[kind], best)
    return out


# ----------------------------------------------------------------------------- spectra on data

@dataclass(frozen=True)
class Spectrum:
    """Eigendecomposition of a symmetric (N, N) kernel matrix K.

    eigenvalues: (N,) float64, descending.
    eigenvectors: (N, top) float64, unit columns, K v_i = λ_i v_i; each column's sign is fixed so
        that its largest-magnitude entry is positive (eigh's sign is arbitrary).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor

    def eta_max(self, out_dim: int = 1) -> float:
        """η_max = 2Nk/λ_max (docs/design.md; :func:`ntklab.dynamics.max_learning_rate`)."""
        return 2.0 * self.eigenvalues.numel() * out_dim / self.eigenvalues[0].item()


def kernel_spectrum(kernel: Tensor, top: int = 5) -> Spectrum:
    """Eigenvalues (descending) and the ``top`` leading eigenvectors of a symmetric kernel (N, N)."""
    kernel = torch.as_tensor(kernel).to(torch.float64)
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be a square (N, N) matrix, got shape {tuple(kernel.shape)}")
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise ValueError(f"top must be an integer >= 0, got {top!r}")
    values, vectors = torch.linalg.eigh(kernel)
    values, vectors = values.flip(0), vectors.flip(1)[:, :top]
    if vectors.numel():
        pivot = vectors.abs().argmax(dim=0)
        vectors = vectors * torch.sign(vectors[pivot, torch.arange(vectors.shape[1])])
    return Spectrum(values, vectors)


def analytic_spectrum(spec: ArchSpec, x, kind: str = "ntk", top: int = 5) -> Spectrum:
    """:func:`kernel_spectrum` of the analytic NNGP or NTK of ``spec`` on the rows of x (N, d)."""
    _check_kind(kind)
    return kernel_spectrum(getattr(analytic_kernels(spec, x), kind), top)


def empirical_spectrum(model: nn.Module, x, kind: str = "ntk", top: int = 5) -> Spectrum:
    """:func:`kernel_spectrum` of a network's empirical NTK (or NNGP) on the rows of x (N, d).

    Per output ("mean" over outputs), the kernel the analytic one predicts; the NNGP is the readout
    expectation Σ̂ = (σ_w²/n_L) a^L·a^L' + σ_b² for ntklab MLPs and f(x)·f(x') otherwise.
    """
    _check_kind(kind)
    if kind == "ntk":
        kernel = empirical_ntk(model, x)
    else:
        from ntklab.nets import MLP

        kernel = empirical_nngp(model, x, method="readout" if isinstance(model, MLP) else "outputs")
    return kernel_spectrum(kernel, top)


# ----------------------------------------------------------------------------- high precision

def _precise_profiles(spec: ArchSpec, d: int, depths: Sequence[int], working_bits: int):
    """{depth: (Σ, Θ)} of ``spec`` at each of ``depths``, each two lists of mpf: Φ at t_m = 1 − 2m/d, m = 0..d.

    The layer rules of :mod:`ntklab.layers` (the one recursion of :func:`ntklab.analytic_kernels`) on numpy
    object arrays of mpmath numbers at ``working_bits`` bits, with the activation's high-precision dual
    (``Activation.precise_dual``), for inputs with x·x/d = 1: the self pair's kernel starts at 1 and the
    pair's at t. Tests check it against :func:`kernel_profile` to float64 rounding. One pass through the
    hidden layers serves every depth (:func:`ntklab.kernels.analytic.mlp_kernels_by_depth`).
    """
    import mpmath

    from ntklab.kernels.analytic import mlp_kernels_by_depth
    from ntklab.layers.core import KernelOptions, KernelState, Part

    if spec.act.precise_dual is None:
        raise ValueError(f"activation {spec.act.name!r} has no closed-form dual with a high-precision twin; "
                         "boolean-cube spectra support relu, abs, leaky_relu, erf, identity and sin")
    out = {}
    with mpmath.workprec(working_bits):
        objects = lambda values, shape: np.array(values, dtype=object).reshape(shape)
        t = [mpmath.mpf(d - 2 * m) / d for m in range(d + 1)]
        self_pair = lambda: Part(objects([mpmath.mpf(1)], (1,)), objects([mpmath.mpf(0)], (1,)))
        state = KernelState(Part(objects(t, (1, d + 1)), objects([mpmath.mpf(0)] * (d + 1), (1, d + 1))),
                            self_pair(), self_pair(), (), False, KernelOptions(precise=True))
        for depth, final in mlp_kernels_by_depth(spec, d, depths, state):
            out[depth] = (list(final.block.nngp[0]), list(final.block.ntk[0]))
    return out


# ----------------------------------------------------------------------------- checks

def _with_depth(spec: ArchSpec, depth: int) -> ArchSpec:
    if depth == spec.depth:
        return spec
    if isinstance(spec.width, tuple):
        raise ValueError("a depth sweep needs one width for every layer, not a tuple of widths")
    return replace(spec, depth=depth)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _check_dim(d, minimum: int) -> int:
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < minimum:
        raise ValueError(f"d must be an integer >= {minimum}, got {d!r}")
    return int(d)


def _check_depths(depths) -> List[int]:
    depths = list(depths)
    if not depths or not all(isinstance(l, (int, np.integer)) and not isinstance(l, bool) and l >= 0
                             for l in depths):
        raise ValueError(f"depths must be a non-empty sequence of integers >= 0, got {depths!r}")
    return [int(l) for l in depths]


__all__ = ["boolean_cube_eigenvalues", "boolean_cube_eigenvalues_by_depth", "boolean_cube_supported", "fractional_variance",
           "sphere_eigenvalues", "sphere_multiplicity", "sphere_legendre", "kernel_profile",
           "fractional_variance_by_depth", "depth_sweeps", "DepthSweep", "SPHERE_RESOLUTION", "Spectrum", "kernel_spectrum", "analytic_spectrum",
           "empirical_spectrum", "KINDS", "DOMAINS"]
