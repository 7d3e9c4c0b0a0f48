"""Gaussian expectations of activations without a closed form (Mehler's series, the collinear and polar
rules of ntklab.kernels.quadrature) against an independent reference, closed forms and each other."""

import math

import numpy as np
import pytest
import torch
from scipy import special

from ntklab import ArchSpec, analytic_kernels
from ntklab.activations import Activation, from_callable, get_activation
from ntklab.kernels import quadrature_dual
from ntklab.kernels.hermite import MAX_TERMS, HermiteCoefficients
from ntklab.kernels.quadrature import polar_dual

def _normal_pdf(x):
    return np.exp(-x * x / 2.0) / math.sqrt(2.0 * math.pi)


def _mish_derivative(x):
    t = np.tanh(np.logaddexp(0.0, x))
    return t + x * special.expit(x) * (1.0 - t * t)


# φ and φ' in numpy for the reference, beside the torch activation they check
_NUMPY = {
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "sigmoid": (special.expit, lambda x: special.expit(x) * special.expit(-x)),
    "softplus": (lambda x: np.logaddexp(0.0, x), special.expit),
    "silu": (lambda x: x * special.expit(x), lambda x: special.expit(x) * (1.0 + x * special.expit(-x))),
    "gelu": (lambda x: x * special.ndtr(x), lambda x: special.ndtr(x) + x * _normal_pdf(x)),
    "erf": (special.erf, lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x)),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    # mish, x·tanh(softplus(x)): an activation ntklab knows only as a callable (φ' by autograd)
    "mish": (lambda x: x * np.tanh(np.logaddexp(0.0, x)), _mish_derivative),
}
SMOOTH = ["tanh", "sigmoid", "softplus", "silu", "gelu", "mish"]


def _activation(name) -> Activation:
    if name == "mish":
        return from_callable(lambda x: x * torch.tanh(torch.nn.functional.softplus(x)), name="mish")
    return get_activation(name)


def _inputs_of_distinct_norms(n, d, generator, smallest, largest):
    """n Gaussian inputs scaled to norms spread from smallest to largest (× √d): every variance differs."""
    scales = torch.linspace(smallest, largest, n, dtype=torch.float64)[:, None]
    return torch.randn(n, d, generator=generator, dtype=torch.float64) * scales


def _panels(breaks, nodes=12):
    t, w = np.polynomial.legendre.leggauss(nodes)
    left, right = breaks[..., :-1, None], breaks[..., 1:, None]
    x = left + (right - left) * (t + 1.0) / 2.0
    return x.reshape(*breaks.shape[:-1], -1), ((right - left) / 2.0 * w).reshape(*breaks.shape[:-1], -1)


def _breaks_around(centre, width):
    """Integers in [−12, 12] and centre ± width·2^j (j = −4 … 13), clipped to [−12, 12] and sorted."""
    steps = 2.0 ** np.arange(-4, 14)
    offsets = np.concatenate([-steps[::-1], [0.0], steps])
    near = np.clip(centre[..., None] + width * offsets, -12.0, 12.0)
    grid = np.broadcast_to(np.arange(-12.0, 13.0), centre.shape + (25,))
    return np.sort(np.concatenate([near, grid], axis=-1), axis=-1)


def reference(f, q1, q2, rho):
    """E[f(√q1 z1) f(√q2 z2)] at correlation ρ in Cartesian coordinates, z1 = z, z2 = ρ z + √(1 − ρ²) t:
    a tensor-product Gauss–Legendre rule (12 nodes per panel) graded around z = 0 and, for each z, around
    the t where f's argument crosses 0. A different route from the polar rule and from the series; on
    the points below it agrees with scipy's nested adaptive quad (epsabs 1e-15) and with itself at 16
    nodes per panel to ~4e-16 of the scale (checked once by hand), and with the closed forms below."""
    s = math.sqrt(max(1.0 - rho * rho, 0.0))
    a1, a2 = math.sqrt(q1), math.sqrt(q2)
    z, wz = _panels(_breaks_around(np.zeros(()), 1.0 / max(a1, 1.0)))
    wz = wz * np.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)
    if s == 0.0:
        return float((f(a1 * z) * f(a2 * rho * z) * wz).sum())
    t, wt = _panels(_breaks_around(-rho * z / s, 1.0 / max(a2 * s, 1.0)))
    wt = wt * np.exp(-t * t / 2.0) / math.sqrt(2.0 * math.pi)
    inner = (f(a2 * (rho * z[:, None] + s * t)) * wt).sum(axis=1)
    return float((f(a1 * z) * inner * wz).sum())


def _errors(dual, name, q1, q2, rho):
    """|dual − reference| / √(E[f(u)²] E[f(v)²]) for f = φ and φ' (the Cauchy–Schwarz scale of the entry)."""
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    e_phi, e_dphi = dual(t(q1), t(q2), t(rho * math.sqrt(q1 * q2)))
    errors = []
    for f, ours in zip(_NUMPY[name], (e_phi.item(), e_dphi.item())):
        scale = math.sqrt(reference(f, q1, q1, 1.0) * reference(f, q2, q2, 1.0))
        errors.append(abs(ours - reference(f, q1, q2, rho)) / scale)
    return errors


@pytest.mark.parametrize("name", ["erf", "relu"])
def test_reference_agrees_with_closed_forms(name):
    act = get_activation(name)
    for q1, q2, rho in [(0.7, 1.9, 0.35), (3.0, 5.5, -0.995), (2e4, 1.1e5, 0.6), (9e4, 1.2e5, 0.99999)]:
        # The reference is ~1e-16 of the scale (relu's kink at 0 lies on a panel boundary), but at the last
        # point the inputs themselves are ill-conditioned: cov = ρ√(q1 q2) rounded to 1 ulp moves 1 − ρ² by
        # 1e-11 relative, and erf's E[φ'φ'] (a bump of width 1/√q) with it (measured 2.4e-12). 1e-11.
        assert max(_errors(act.dual, name, q1, q2, rho)) < 1e-11


# Distinct variances from 0.4 to 1.2e5 and correlations up to |ρ| = 1: the series (small and moderate
# ρ at any q), the collinear rule (ρ = ±1) and the polar rule (ρ = 0.9999 at q ≈ 20 is beyond the series'
# 1024 terms for tanh and mish) all answer some of them.
POINTS = [(0.7, 1.9, 0.35), (2.3, 0.4, -0.8), (3.0, 5.5, 0.995), (14.0, 22.0, 0.9999), (2e4, 1.1e5, 0.6),
          (9e4, 1.2e5, -0.99999), (1.5, 2.5, 1.0)]


@pytest.mark.parametrize("name", SMOOTH)
def test_dual_matches_reference_at_distinct_variances(name):
    dual = quadrature_dual(_activation(name))
    for q1, q2, rho in POINTS:
        # Each route is built for 1e-12 of the scale (the series' certified truncation bound, panels
        # that reach rounding); measured at most 1e-12 here, and 2e-12 at (9e4, 1.2e5, −0.99999), where
        # the rounding of cov alone moves the value that much (see the closed-form test above). 1e-10
        # leaves room and is still 10× below the 1e-9 the kernels must meet after several layers.
        assert max(_errors(dual, name, q1, q2, rho)) < 1e-10, (q1, q2, rho)


@pytest.mark.parametrize("name", ["tanh", "softplus", "relu"])
def test_polar_rule_matches_reference(name):
    dual = polar_dual(_activation(name))
    for q1, q2, rho in [(0.7, 1.9, 0.35), (3.0, 5.5, 0.999), (9e4, 1.2e5, -0.99999)]:
        # the graded panels reach rounding (~1e-15) at moderate q; at q ≈ 1e5 and ρ → 1 tanh' is a bump of
        # width 1/√q, measured 2e-12 (conditioning, as above; erf's closed form shows up to 1e-11 there)
        assert max(_errors(dual, name, q1, q2, rho)) < 1e-10, (q1, q2, rho)


@pytest.mark.parametrize("name", ["relu", "erf"])
def test_kernels_by_quadrature_equal_the_closed_forms(name, rng):
    # relu's pairs go mostly to the polar rule (its tails shrink like K^(−3/2)), erf's to the series
    x = _inputs_of_distinct_norms(12, 5, rng, 0.3, 3.0)
    spec = ArchSpec(depth=3, width=64, activation=name, sigma_w=1.5, sigma_b=0.1)
    closed = analytic_kernels(spec, x, method="closed_form")
    quad = analytic_kernels(spec, x, method="quadrature")
    for a, b in [(quad.nngp, closed.nngp), (quad.ntk, closed.ntk)]:
        # 1e-12 per dual compounds over 3 layers to ~1e-11 at worst (measured 3e-14 relu, 6e-14 erf)
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-10


def _against_polar_rule(name, n, rng):
    """max relative difference of depth-3 kernels on n inputs of distinct norms (every variance different):
    the fast routes against every pair through the polar rule with 16 nodes per panel (default 10)."""
    x = _inputs_of_distinct_norms(n, 6, rng, 0.4, 2.5)
    act = _activation(name)
    reference_act = Activation(f"{name} (polar)", act.fn, act.derivative, dual=polar_dual(act, degree=32))
    fast = analytic_kernels(ArchSpec(depth=3, width=64, activation=act, sigma_w=1.4, sigma_b=0.1), x)
    slow = analytic_kernels(ArchSpec(depth=3, width=64, activation=reference_act, sigma_w=1.4, sigma_b=0.1), x)
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in [(fast.nngp, slow.nngp), (fast.ntk, slow.ntk)])


def test_depth_3_tanh_kernels_match_the_polar_rule(rng):
    # target 1e-9 relative; measured 1.4e-13 (the slow test below: ≤ 2e-13 for every activation)
    assert _against_polar_rule("tanh", 5, rng) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOOTH)
def test_depth_3_kernels_match_the_polar_rule(name, rng):
    # every activation, more inputs (the polar rule costs ~10 ms per pair and layer); same bound as above
    assert _against_polar_rule(name, 10, rng) < 1e-10


def test_gelu_closed_form_at_large_variance_depth_6():
    """σ_w = 4, depth 6: gelu's pre-activation variances grow to ~1e6. The quadrature route against
    the closed form (the polar rule of 20 nodes per angular piece it replaced was off by 5e-4 in the NTK)."""
    x = _inputs_of_distinct_norms(6, 8, torch.Generator().manual_seed(5), 0.5, 2.0)
    spec = ArchSpec(depth=6, width=64, activation="gelu", sigma_w=4.0, sigma_b=0.1)
    closed = analytic_kernels(spec, x)
    quad = analytic_kernels(spec, x, method="quadrature")
    assert closed.nngp.diagonal().min() > 1e5
    for a, b in [(quad.nngp, closed.nngp), (quad.ntk, closed.ntk)]:
        # measured 6e-14 for both
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-9


def test_gelu_closed_form_equals_reference():
    import mpmath

    act = get_activation("gelu")
    for q1, q2, rho in [(1.3, 0.7, 0.55), (2.0, 3.1, -0.93), (1e5, 1.2e5, 1.0), (1e-8, 3.0, 0.3)]:
        # the closed form is float64 rounding away from the reference (measured ≤ 4e-16)
        assert max(_errors(act.dual, "gelu", q1, q2, rho)) < 1e-13
        # and its mpmath twin (the boolean-cube spectra's) is the same formula: equal to float64 rounding
        cov = rho * math.sqrt(q1 * q2)
        with mpmath.workprec(100):
            precise = act.precise_dual(mpmath.mpf(q1), mpmath.mpf(q2), mpmath.mpf(cov))
        ours = act.dual(*(torch.tensor(a, dtype=torch.float64) for a in (q1, q2, cov)))
        for a, b in zip(ours, precise):
            assert a.item() == pytest.approx(float(b), rel=1e-13, abs=1e-300)


def test_series_tails():
    # E[f²] = Σ_k a_k² (Parseval): the normalised tails fall to rounding for tanh at q = 1, stay large
    # for a step of width 1/√q at q = 1e3, and the series at ρ = 1 gives back E[f(√q z)²]
    q = torch.tensor([0.0, 1.0, 1e3], dtype=torch.float64)
    coefficients = HermiteCoefficients(torch.tanh, q)
    coefficients.extend(MAX_TERMS)
    tails = coefficients.tails
    assert bool((tails[1:] <= tails[:-1] + 1e-16).all())
    assert tails[:, 0].max() == 0.0                            # tanh(0) = 0: nothing to expand
    assert tails[100, 1] < 1e-12                              # measured: from K = 93 at q = 1
    assert tails[-1, 2] > 1e-4                                # not even at K = 1024 for tanh(√1000 z)
    at_one = (coefficients.coefficients[:, 1] ** 2).sum()
    assert at_one.item() == pytest.approx(coefficients.second_moment[1].item(), rel=1e-14)


def test_any_broadcast_shape_gives_the_pairs_values(rng):
    # the CNTK hands (B, H, W, 1, 1), (B, 1, 1, H, W), (B, H, W, H, W) blocks and scalars; every shape
    # must give each pair's value. Different shapes chunk differently and each chunk picks its own K,
    # so equal to the series' 1e-12 tolerance, not bitwise.
    dual = quadrature_dual(get_activation("tanh"))
    q1 = 0.3 + 3 * torch.rand(2, 3, 4, 1, 1, generator=rng, dtype=torch.float64)
    q2 = 0.3 + 3 * torch.rand(2, 1, 1, 3, 4, generator=rng, dtype=torch.float64)
    rho = 2 * torch.rand(2, 3, 4, 3, 4, generator=rng, dtype=torch.float64) - 1
    rho[0, 1, 2, 1, 2] = 1.0
    cov = rho * torch.sqrt(q1 * q2)
    e_phi, e_dphi = dual(q1, q2, cov)
    flat = [a.expand(cov.shape).reshape(-1) for a in (q1, q2, cov)]
    flat_phi, flat_dphi = dual(*flat)
    assert e_phi.shape == cov.shape
    torch.testing.assert_close(e_phi.reshape(-1), flat_phi, rtol=0, atol=1e-11)
    torch.testing.assert_close(e_dphi.reshape(-1), flat_dphi, rtol=0, atol=1e-11)
    one = dual(*(a.reshape(-1)[7] for a in (q1.expand(cov.shape), q2.expand(cov.shape), cov)))
    assert one[0].shape == () and one[0].item() == pytest.approx(flat_phi[7].item(), abs=1e-11)


def test_float32_kernels_stay_close_to_float64(rng):
    # float32 tails cannot go below its rounding, so its series stops at 64 ulps of float32 (7.6e-6 of the
    # scale) instead of 1e-12; measured 5e-7 from the float64 kernels over 3 layers
    x = torch.randn(20, 4, generator=rng, dtype=torch.float64)
    spec = ArchSpec(depth=3, width=16, activation="tanh", sigma_w=1.4, sigma_b=0.1)
    double = analytic_kernels(spec, x)
    single = analytic_kernels(spec, x, dtype=torch.float32)
    assert single.ntk.dtype == torch.float32
    assert ((single.ntk.double() - double.ntk).abs().max() / double.ntk.abs().max()).item() < 1e-5
