"""Elementwise activations, each carrying its forward map and its kernel rule side by side.

An :class:`Activation` holds φ, its derivative φ' and, where one exists, the closed-form
*dual*: for a centred Gaussian pair (u, v) with Var u = q1, Var v = q2, Cov(u, v) = cov,

    dual(q1, q2, cov) = (E[φ(u) φ(v)], E[φ'(u) φ'(v)]).

The finite network (:mod:`ntklab.nets`) applies ``fn``; the analytic kernels
(:mod:`ntklab.kernels`) apply ``dual`` or, without one, Gaussian quadrature of ``fn`` and
``derivative``. Keeping the three on one object is what stops the net and its limit from
drifting apart (the idea of neural-tangents' ``stax``).

All dual arguments are float64 tensors that broadcast against each other: (N1, 1), (1, N2),
(N1, N2) for a full kernel block, or three (N,) vectors (q1 = q2 = cov) for its diagonal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

Dual = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, Tensor]"]


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity φ with its derivative and (optionally) its closed-form dual.

    ``fn`` and ``derivative`` map a tensor to a tensor of the same shape, elementwise.
    ``dual`` is None when no closed form is known; kernels then use quadrature.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    dual: Optional[Dual] = None
    precise_dual: Optional[Callable] = None
    """The same closed form in mpmath: (q1, q2, cov) mpf numbers → (E[φ(u)φ(v)], E[φ'(u)φ'(v)]) at the
    working precision of the caller's ``mpmath.workprec``; used by the boolean-cube spectra, whose
    finite differences cancel ~d digits. None where ``dual`` is None."""

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


def sqrt_normal_(x: Tensor) -> Tensor:
    """√x in place for x ≥ 0, with 0 where x is at most the dtype's smallest normal number ``tiny``
    (where √x would be at most √tiny: 1.1e-19 in float32, 1.5e-154 in float64).

    Torch's CPU sqrt takes several times longer on zeros and subnormal numbers than on normal ones
    (7× over an array of 80% zeros, measured on a 2-core Xeon with AVX-512, float32 and float64), and a
    kernel on images with blank margins, such as MNIST's, meets zeros in most entries: every pair of
    positions where one image's receptive field is blank. Raising them to ``tiny`` first and setting
    the results back to 0 after costs two fast passes instead (on MNIST's 28×28 images the depth-2
    GAP CNTK, float32, went from 16.5–17.5 to 12.8–13.3 ms per pair on one thread, with identical entries).
    """
    tiny = torch.finfo(x.dtype).tiny
    root_tiny = torch.tensor(tiny, dtype=x.dtype).sqrt().item()    # √tiny as the dtype rounds it
    return torch.nn.functional.threshold_(x.clamp_min_(tiny).sqrt_(), root_tiny, 0.0)


def safe_correlation(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
    """Return (sqrt(q1 q2), ρ = cov / sqrt(q1 q2) clipped to [-1, 1]); ρ = 0 where a variance is 0.

    A zero variance (the input x = 0 of a net without biases) makes u = 0 almost surely, so ρ is
    undefined there. Terms multiplied by ``norm`` vanish whatever ρ, but E[φ'(u)φ'(v)] does not:
    it is φ'(0)·E[φ'(v)], which a dual must handle itself (see :func:`_leaky_relu_dual`); the
    ρ = 0 returned here only keeps the arithmetic finite.
    """
    norm = torch.sqrt(q1 * q2)
    rho = (cov / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp_(-1.0, 1.0)
    return norm, rho


def _leaky_relu_dual(slope: float, derivative_at_zero: float) -> Dual:
    r"""Dual of φ(x) = max(x, a x) (a = ``slope``): relu at a = 0, abs at a = −1.

    Writing φ(x) = (1+a)/2 · x + (1−a)/2 · |x| and θ = arccos ρ (Cho & Saul 2009, arc-cosine
    kernels of degree 0 and 1):

        E[φ(u)φ(v)]   = ((1+a)/2)² cov + ((1−a)/2)² · (2/π) √(q1 q2) (sin θ + (π/2 − θ) cos θ)
        E[φ'(u)φ'(v)] = a + (1−a)² (π − θ) / (2π)

    For a = 0 the first line is √(q1 q2)/(2π) (sin θ + (π − θ) cos θ), the relu formula of docs/design.md.
    With √(q1 q2) cos θ = cov and π/2 − θ = arcsin ρ they regroup into what the code evaluates, one
    arcsin and no arccos or sin:

        E[φ'(u)φ'(v)] = ((1+a)/2)² + (1−a)² arcsin(ρ) / (2π)
        E[φ(u)φ(v)]   = c √(q1 q2) sin θ + cov · E[φ'(u)φ'(v)],   c = ((1−a)/2)² · 2/π

    Where a variance is 0 (q1 = 0: u = 0 almost surely, as for the input x = 0 of a net without
    biases) E[φ(u)φ(v)] = φ(0)E[φ(v)] = 0, and E[φ'(u)φ'(v)] = φ'(0) E[φ'(v)] with
    E[φ'(v)] = (1 + a)/2 for q2 > 0 and φ'(0) for q2 = 0. φ'(0) is ``derivative_at_zero``, the
    value the finite net's derivative takes (torch's relu and sign give 0 there, the leaky relu
    ``where(x > 0, 1, a)`` gives a), so the limit agrees with every finite net and with quadrature.
    """
    sin_scale = ((1.0 - slope) / 2.0) ** 2 * 2.0 / math.pi       # c above
    dphi_at_zero = ((1.0 + slope) / 2.0) ** 2                     # E[φ'(u)φ'(v)] at ρ = 0
    dphi_slope = (1.0 - slope) ** 2 / (2.0 * math.pi)
    mean_dphi = (1.0 + slope) / 2.0                               # E[φ'(v)] for Var v > 0
    # Where a variance is 0 the formulas give ρ = 0 and E[φ'(u)φ'(v)] = mean_dphi², where the entry is
    # φ'(0)·mean_dphi (one variance 0) or φ'(0)² (both). With φ'(0) = 0 that is 0: relu's comes from
    # multiplying by a 0/1 mask per variance, exactly; abs's mean_dphi is 0 already. Any other member
    # takes the products themselves, rounded as around the box in `dual` (and independent of cov there).
    zero_variance_rule = ("mask" if derivative_at_zero == 0.0 and mean_dphi != 0.0
                          else "none" if derivative_at_zero == 0.0 else "products")

    def dual_into(q1: Tensor, q2: Tensor, cov: Tensor, e_phi: Tensor, e_dphi: Tensor, degenerate: bool) -> None:
        # Every step in place on the two output arrays: the CNTK calls this on blocks of millions of
        # entries, where each operation is a pass through memory and each allocation costs page
        # faults besides.
        # √(q1 q2) in one rounding, not √q1·√q2: for a self pair (q1 = q2 = cov) it makes ρ = 1
        # exactly, where arccos would turn a 1-ulp error into ~1e-8 (tests/test_kernels.py sees it)
        # A zero variance (or q1 q2 below the dtype's smallest normal number, tiny) leaves cov = 0 there
        # and √(q1 q2) is raised to √tiny: ρ = 0 (see safe_correlation). Then both roots below would
        # take many zeros, on which sqrt is slow: they go through sqrt_normal_, whose two extra passes
        # only such inputs (images with blank margins) repay.
        rho = torch.mul(q1, q2, out=e_dphi)
        rho = rho.clamp_min_(torch.finfo(cov.dtype).tiny).sqrt_() if degenerate else rho.sqrt_()
        rho = torch.div(cov, rho, out=rho).clamp_(-1.0, 1.0)
        # c √(q1 q2) sin θ = √(c² q1 q2 (1 − ρ)(1 + ρ)): exactly 0 at ρ = ±1 however the products round
        torch.mul(q1 * (sin_scale * sin_scale), q2, out=e_phi)
        e_phi.addcmul_(e_phi, rho, value=-1.0).addcmul_(e_phi, rho)
        sqrt_normal_(e_phi) if degenerate else e_phi.sqrt_()
        torch.add(cov.new_full((), dphi_at_zero), rho.arcsin_(), alpha=dphi_slope, out=e_dphi)
        e_phi.addcmul_(cov, e_dphi)
        if degenerate and zero_variance_rule == "mask":
            for q in (q1, q2):
                e_dphi.mul_(_by_variance(q, 0.0, 1.0))
        elif degenerate and zero_variance_rule == "products":
            torch.where((q1 == 0) | (q2 == 0), zero_variance_dphi(q1, q2), e_dphi, out=e_dphi)

    def zero_variance_dphi(q1: Tensor, q2: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """φ'(0)·mean_dphi, mean_dphi·φ'(0), φ'(0)² or mean_dphi² by which variances are 0 (broadcast)."""
        return torch.mul(_by_variance(q1, derivative_at_zero, mean_dphi), _by_variance(q2, derivative_at_zero, mean_dphi),
                         out=out)

    def dual(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
        shape = torch.broadcast_shapes(q1.shape, q2.shape, cov.shape)
        e_phi, e_dphi = cov.new_empty(shape), cov.new_empty(shape)
        degenerate = math.prod(shape) > 0 and bool(q1.amin() * q2.amin() == 0)
        box = support_box(q1, q2, shape) if degenerate else None
        if box is None:
            dual_into(q1, q2, cov, e_phi, e_dphi, degenerate)
            return e_phi, e_dphi
        # Images with blank margins (MNIST's) leave most pairs of positions with a variance 0, where
        # the entries are known without arithmetic: E[φ(u)φ(v)] = 0 (cov = 0 there too) and the
        # zero-variance E[φ'(u)φ'(v)] above. The formulas run only on the box that holds every pair
        # of positive variances (support_box); they give the same numbers there as on the whole array.
        e_phi.zero_()
        zero_variance_dphi(q1, q2, out=e_dphi)
        if box[0].stop > box[0].start:
            box_shape = [part.stop - part.start for part in box]
            # on contiguous arrays of the box's size, copied in after: elementwise loops over a strided
            # view of the whole array run several times slower (sqrt and arcsin lose their vector code).
            # At most two arrays of the whole's size, as the zero-variance fix-up on the whole array took
            # before (a 20 × 20 block of 28×28 MNIST-like pairs peaked at 70 MiB against 79 MiB then)
            box_phi, box_dphi = cov.new_empty(box_shape), cov.new_empty(box_shape)
            dual_into(_restrict(q1, box), _restrict(q2, box), _restrict(cov, box), box_phi, box_dphi, True)
            e_phi[box], e_dphi[box] = box_phi, box_dphi
        return e_phi, e_dphi

    return dual


def _by_variance(q: Tensor, at_zero: float, positive: float) -> Tensor:
    """``at_zero`` where q = 0, ``positive`` elsewhere, in q's dtype (python numbers alone would make
    torch.where's result float32, rounding them in a float64 kernel)."""
    return torch.where(q == 0, q.new_tensor(at_zero), q.new_tensor(positive))


def support_box(q1: Tensor, q2: Tensor, shape) -> "Optional[tuple[slice, ...]]":
    """A box of ``shape`` (one slice per axis) outside which q1 = 0 or q2 = 0 (broadcast); None where
    it is the whole array; all slices empty where every entry has a variance 0.

    On axis k the box spans the indices where some entry of q1 is nonzero, intersected with the same
    for q2 (a tensor of size 1 there spans everything): outside it one of the two is 0 everywhere.
    Where q1 and q2 vary along different axes (the two images of a CNTK block) it is the smallest
    such box; where they share one (the pair axis of a diagonal) it may hold entries it need not.
    """
    # on the CPU in numpy: the variances are small (one number per position and image), and a dozen
    # torch reductions over them cost more than the box saves on a pair of 28×28 images
    box = [(0, size) for size in shape]
    for q in (q1, q2):
        positive = (q != 0).cpu().numpy()
        lead = len(shape) - positive.ndim
        for q_axis, q_size in enumerate(positive.shape):
            if q_size == 1:
                continue
            others = tuple(k for k in range(positive.ndim) if k != q_axis)
            indices = np.flatnonzero(positive.any(axis=others))
            if indices.size == 0:
                return tuple(slice(0, 0) for _ in shape)
            start, stop = box[lead + q_axis]
            box[lead + q_axis] = (max(start, int(indices[0])), min(stop, int(indices[-1]) + 1))
    if any(stop <= start for start, stop in box):
        return tuple(slice(0, 0) for _ in shape)
    if all(start == 0 and stop == size for (start, stop), size in zip(box, shape)):
        return None
    return tuple(slice(start, stop) for start, stop in box)


def _restrict(q: Tensor, box) -> Tensor:
    """``q`` (broadcasting against the box's array) cut to the box: its axes of size 1 stay whole."""
    lead = len(box) - q.dim()
    return q[tuple(part if q.shape[k] > 1 else slice(None) for k, part in enumerate(box[lead:]))]


def _erf_dual(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
    r"""Dual of φ = erf (Williams 1997):

        E[erf(u) erf(v)] = (2/π) arcsin(2 cov / √((1 + 2 q1)(1 + 2 q2)))
        E[φ'(u)φ'(v)]    = (4/π) / √((1 + 2 q1)(1 + 2 q2) − 4 cov²)      (φ'(x) = 2/√π · e^{−x²})
    """
    a = (1.0 + 2.0 * q1) * (1.0 + 2.0 * q2)
    # in place on two fresh arrays (see _leaky_relu_dual)
    e_phi = torch.mul(cov, 2.0).div_(torch.sqrt(a)).clamp_(-1.0, 1.0).arcsin_().mul_(2.0 / math.pi)
    e_dphi = torch.mul(cov, cov).mul_(-4.0).add_(a).rsqrt_().mul_(4.0 / math.pi)
    return e_phi, e_dphi


def _gelu_dual(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
    r"""Dual of φ(x) = gelu(x) = x Φ(x), Φ the standard normal distribution function:

        E[φ(u)φ(v)]   = cov/4 + cov/(2π) · arctan(cov/s) + (q1 q2 s² + cov²) / (2π P s)
        E[φ'(u)φ'(v)] = 1/4 + arctan(cov/s)/(2π) + cov (P + s² (2 + q1 + q2)) / (2π P s³)

    with P = (1 + q1)(1 + q2) and s = √(P − cov²) ≥ √(1 + q1 + q2). Derivation: Φ(u) = P(ξ ≤ u) for
    an independent ξ ~ N(0, 1), so E[φ(u)φ(v)] = E[u v 1{u − ξ1 ≥ 0} 1{v − ξ2 ≥ 0}], a Gaussian
    orthant moment of (u, v, u − ξ1, v − ξ2) (arctan(cov/s) = arcsin(cov/√P)); the second line is its
    derivative in cov (Price's theorem). At cov = 0 they give E[φ(u)]E[φ(v)] = q1 q2 / (2π √P) and
    E[φ'(u)]E[φ'(v)] = 1/4. s never vanishes, so unlike relu's the formulas stay smooth at ρ = ±1.
    """
    # in place on five fresh arrays of the block's size (see _leaky_relu_dual)
    q12 = torch.mul(q1, q2)
    # P − cov² = 1 + q1 + q2 + (q1 q2 − cov²): the bracket is ≥ 0 (Cauchy–Schwarz) up to rounding
    s2 = torch.mul(cov, cov).neg_().add_(q12).clamp_(min=0.0).add_(q1).add_(q2).add_(1.0)
    s = torch.sqrt(s2)
    quarter_plus_angle = torch.atan2(cov, s).div_(2.0 * math.pi).add_(0.25)      # 1/4 + arctan(cov/s)/(2π)
    p = torch.mul(q1 + 1.0, q2 + 1.0)
    two_pi_p_s = s.mul_(p).mul_(2.0 * math.pi)
    e_dphi = torch.mul(s2, torch.add(q1, q2).add_(2.0)).add_(p).mul_(cov).div_(two_pi_p_s).div_(s2)
    e_dphi.add_(quarter_plus_angle)
    e_phi = s2.mul_(q12).addcmul_(cov, cov).div_(two_pi_p_s).addcmul_(cov, quarter_plus_angle)
    return e_phi, e_dphi


def _identity_dual(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
    """Dual of φ(x) = x: (cov, 1)."""
    return cov, torch.ones_like(cov)


def _sin_dual(q1: Tensor, q2: Tensor, cov: Tensor) -> "tuple[Tensor, Tensor]":
    r"""Dual of φ = sin:  E[sin u sin v] = e^{−(q1+q2)/2} sinh(cov),  E[cos u cos v] = e^{−(q1+q2)/2} cosh(cov).

    Written as (e^{cov − m} ∓ e^{−cov − m})/2 with m = (q1 + q2)/2: since |cov| ≤ √(q1 q2) ≤ m both
    exponents are ≤ 0, so nothing overflows (e^{−m}·sinh(cov) overflows to inf·0 = NaN once cov
    passes ~710, e.g. for inputs with |x|²/d ≈ 900).
    """
    mean_variance = (q1 + q2) / 2.0
    plus, minus = torch.exp(cov - mean_variance), torch.exp(-cov - mean_variance)
    return (plus - minus) / 2.0, (plus + minus) / 2.0


def _precise_leaky_relu_dual(slope: float, derivative_at_zero: float) -> Callable:
    """:func:`_leaky_relu_dual` in mpmath (same formulas, same zero-variance convention)."""
    def dual(q1, q2, cov):
        import mpmath

        a = mpmath.mpf(slope)
        if q1 == 0 or q2 == 0:
            mean_derivative = lambda q: mpmath.mpf(derivative_at_zero) if q == 0 else (1 + a) / 2
            return mpmath.mpf(0), mean_derivative(q1) * mean_derivative(q2)
        norm = mpmath.sqrt(q1 * q2)
        rho = min(max(cov / norm, mpmath.mpf(-1)), mpmath.mpf(1))
        theta = mpmath.acos(rho)
        abs_abs = 2 / mpmath.pi * norm * (mpmath.sqrt(1 - rho * rho) + (mpmath.pi / 2 - theta) * rho)
        return (((1 + a) / 2) ** 2 * cov + ((1 - a) / 2) ** 2 * abs_abs,
                a + (1 - a) ** 2 * (mpmath.pi - theta) / (2 * mpmath.pi))

    return dual


def _precise_erf_dual(q1, q2, cov):
    import mpmath

    a = (1 + 2 * q1) * (1 + 2 * q2)
    return 2 / mpmath.pi * mpmath.asin(2 * cov / mpmath.sqrt(a)), 4 / mpmath.pi / mpmath.sqrt(a - 4 * cov * cov)


def _precise_gelu_dual(q1, q2, cov):
    """:func:`_gelu_dual` in mpmath."""
    import mpmath

    p = (1 + q1) * (1 + q2)
    s2 = p - cov * cov
    s = mpmath.sqrt(s2)
    angle = mpmath.atan2(cov, s)
    return (cov / 4 + cov * angle / (2 * mpmath.pi) + (q1 * q2 * s2 + cov * cov) / (2 * mpmath.pi * p * s),
            mpmath.mpf(1) / 4 + angle / (2 * mpmath.pi) + cov * (p + s2 * (2 + q1 + q2)) / (2 * mpmath.pi * p * s2 * s))


def _precise_identity_dual(q1, q2, cov):
    import mpmath

    return cov, mpmath.mpf(1)


def _precise_sin_dual(q1, q2, cov):
    import mpmath

    damping = mpmath.exp(-(q1 + q2) / 2)
    return damping * mpmath.sinh(cov), damping * mpmath.cosh(cov)


def _relu_derivative(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


def leaky_relu(slope: float = 0.01) -> Activation:
    """φ(x) = max(x, slope·x) for slope ≤ 1, with its closed-form dual (slope 0 is relu, −1 is abs)."""
    if not isinstance(slope, (int, float)) or not math.isfinite(slope) or slope > 1:
        raise ValueError(f"leaky_relu slope must be a finite number <= 1, got {slope!r}")
    slope = float(slope)
    return Activation(
        name="leaky_relu" if slope == 0.01 else f"leaky_relu({slope:g})",
        fn=lambda x: torch.where(x > 0, x, slope * x),
        derivative=lambda x: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope)),
        dual=_leaky_relu_dual(slope, derivative_at_zero=slope),
        precise_dual=_precise_leaky_relu_dual(slope, derivative_at_zero=slope),
    )


def _autograd_derivative(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """φ' of an elementwise φ by reverse-mode autograd: d/dx Σ φ(x) = φ'(x) elementwise."""

    def derivative(x: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(x).sum(), x)
        return grad

    return derivative


def from_callable(fn: Callable[[Tensor], Tensor], name: Optional[str] = None,
                  derivative: Optional[Callable[[Tensor], Tensor]] = None) -> Activation:
    """Wrap a user's elementwise torch function; its kernels are computed by quadrature.

    Without ``derivative``, φ' comes from autograd, which is only correct for elementwise φ.
    """
    if not callable(fn):
        raise ValueError(f"activation must be a name, an Activation or a callable, got {fn!r}")
    return Activation(
        name=name or getattr(fn, "__name__", "custom"),
        fn=fn,
        derivative=derivative or _autograd_derivative(fn),
        dual=None,
    )


def _sigmoid_derivative(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _gelu_derivative(x: Tensor) -> Tensor:
    # gelu(x) = x Φ(x), so gelu'(x) = Φ(x) + x φ_N(x) with φ_N the standard normal density.
    cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


def _silu_derivative(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


_REGISTRY: "dict[str, Callable[[], Activation]]" = {
    "relu": lambda: Activation("relu", torch.relu, _relu_derivative, _leaky_relu_dual(0.0, derivative_at_zero=0.0),
                               _precise_leaky_relu_dual(0.0, derivative_at_zero=0.0)),
    "leaky_relu": lambda: leaky_relu(0.01),
    "abs": lambda: Activation("abs", torch.abs, torch.sign, _leaky_relu_dual(-1.0, derivative_at_zero=0.0),
                              _precise_leaky_relu_dual(-1.0, derivative_at_zero=0.0)),
    "erf": lambda: Activation(
        "erf", torch.erf, lambda x: (2.0 / math.sqrt(math.pi)) * torch.exp(-x * x), _erf_dual, _precise_erf_dual),
    "identity": lambda: Activation("identity", lambda x: x, torch.ones_like, _identity_dual, _precise_identity_dual),
    "sin": lambda: Activation("sin", torch.sin, torch.cos, _sin_dual, _precise_sin_dual),
    "tanh": lambda: Activation("tanh", torch.tanh, lambda x: 1.0 - torch.tanh(x) ** 2),
    "sigmoid": lambda: Activation("sigmoid", torch.sigmoid, _sigmoid_derivative),
    "softplus": lambda: Activation("softplus", torch.nn.functional.softplus, torch.sigmoid),
    "gelu": lambda: Activation("gelu", torch.nn.functional.gelu, _gelu_derivative, _gelu_dual, _precise_gelu_dual),
    "silu": lambda: Activation("silu", torch.nn.functional.silu, _silu_derivative),
}

ACTIVATION_NAMES = tuple(sorted(_REGISTRY))
"""Names accepted by :func:`get_activation` (and by ``ArchSpec.activation``)."""

ActivationLike = Union[str, Activation, Callable[[Tensor], Tensor]]


def get_activation(activation: ActivationLike) -> Activation:
    """Resolve a name, an :class:`Activation` or an elementwise callable to an :class:`Activation`."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        key = activation.strip().lower()
        if key == "linear":
            key = "identity"
        if key not in _REGISTRY:
            raise ValueError(
                f"activation: unknown name {activation!r}; allowed: {', '.join(ACTIVATION_NAMES)}, "
                "an ntklab.activations.Activation, or an elementwise callable")
        return _REGISTRY[key]()
    return from_callable(activation)
