"""Analytic NNGP/NTK: closed forms, quadrature, identities and structural properties (float64)."""

import math

import pytest
import torch

from ntklab import ArchSpec, analytic_kernels
from ntklab.activations import get_activation, leaky_relu, sqrt_normal_, support_box
from ntklab.kernels import quadrature_dual
from tests.helpers import random_inputs

CLOSED_FORMS = ["relu", "erf", "abs", "leaky_relu", "sin", "identity"]


def _rel_max(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("activation", CLOSED_FORMS + ["gelu"])
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_closed_form_equals_quadrature(activation, parametrization, rng):
    # Two independent routes through the same recursion: the closed-form duals and the quadrature
    # (Mehler/Hermite series per distinct variance with exact collinear pairs, ntklab.kernels.hermite).
    # Measured over 21 input draws, both parametrizations, the largest entry error relative to the
    # largest entry: identity 1e-15, relu/abs/leaky_relu 2–3e-13, gelu 4e-13, sin 7e-13, erf 1.1e-12.
    # 1e-10 leaves ~100× margin and is far below what a wrong formula gives (a missing term or
    # constant changes entries by percents).
    x = random_inputs(10, 5, rng)
    spec = ArchSpec(depth=3, width=(16, 32, 8), activation=activation, sigma_w=1.5, sigma_b=0.1,
                    parametrization=parametrization)
    closed = analytic_kernels(spec, x, method="closed_form")
    quad = analytic_kernels(spec, x, method="quadrature")
    assert _rel_max(quad.nngp, closed.nngp) < 1e-10
    assert _rel_max(quad.ntk, closed.ntk) < 1e-10


@pytest.mark.parametrize("name", ["relu", "erf", "tanh", "gelu", "softplus"])
def test_dual_against_sampled_gaussian_pairs(name):
    # Independent check of both the closed forms and the quadrature: sample (u, v) directly.
    # 400k pairs give a standard error ~1e-3 of the value; we allow 5 standard errors, which a
    # correct formula exceeds with probability < 1e-6 (and the seed is fixed).
    act = get_activation(name)
    q1, q2, cov = 1.3, 0.7, 0.55
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(400_000, 2, generator=gen, dtype=torch.float64)
    chol = torch.linalg.cholesky(torch.tensor([[q1, cov], [cov, q2]], dtype=torch.float64))
    u, v = (z @ chol.T).unbind(1)
    dual = act.dual or quadrature_dual(act)
    expected_phi, expected_dphi = dual(*(torch.tensor(a, dtype=torch.float64) for a in (q1, q2, cov)))
    for samples, expected in [(act.fn(u) * act.fn(v), expected_phi),
                              (act.derivative(u) * act.derivative(v), expected_dphi)]:
        standard_error = samples.std() / math.sqrt(samples.numel())
        assert abs(samples.mean() - expected) < 5 * standard_error


def test_leaky_relu_family_contains_relu_and_abs(rng):
    # An identity between closed forms: slope 0 is relu, slope -1 is abs.
    x = random_inputs(8, 4, rng)
    for slope, name in [(0.0, "relu"), (-1.0, "abs")]:
        general = analytic_kernels(ArchSpec(depth=2, width=8, activation=leaky_relu(slope), sigma_b=0.2), x)
        special = analytic_kernels(ArchSpec(depth=2, width=8, activation=name, sigma_b=0.2), x)
        assert torch.allclose(general.ntk, special.ntk, rtol=1e-14, atol=0)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_linear_network_closed_forms(depth, rng):
    # With φ = identity and no bias the recursion collapses:
    #   ntk:       Σ = σ_w^{2(L+1)} x·x'/n0,  Θ = (L+1) σ_w^{2(L+1)} x·x'/n0
    #   standard:  Θ = σ_w^{2L} x·x' (1 + Σ_l n_l / n0)      (each layer's weights add n_l·Σ_in)
    x, x2 = random_inputs(6, 4, rng), random_inputs(5, 4, rng)
    widths = (3, 40, 7)[:depth]
    dot = x @ x2.T / 4
    sw = 1.3
    ntk_spec = ArchSpec(depth=depth, width=widths, activation="identity", sigma_w=sw, bias=False)
    k = analytic_kernels(ntk_spec, x, x2)
    assert torch.allclose(k.nngp, sw ** (2 * (depth + 1)) * dot, rtol=1e-13, atol=0)
    assert torch.allclose(k.ntk, (depth + 1) * sw ** (2 * (depth + 1)) * dot, rtol=1e-13, atol=0)
    std = analytic_kernels(ArchSpec(depth=depth, width=widths, activation="identity", sigma_w=sw,
                                    bias=False, parametrization="standard"), x, x2)
    assert torch.allclose(std.nngp, k.nngp, rtol=1e-13, atol=0)
    expected = sw ** (2 * depth) * (x @ x2.T) * (1 + sum(widths) / 4)
    assert torch.allclose(std.ntk, expected, rtol=1e-13, atol=0)


def test_standard_bias_adds_one_per_layer_even_at_sigma_b_zero(rng):
    x = random_inputs(5, 3, rng)
    spec = dict(depth=2, width=9, activation="identity", sigma_w=1.0, sigma_b=0.0, parametrization="standard")
    with_bias = analytic_kernels(ArchSpec(bias=True, **spec), x)
    without = analytic_kernels(ArchSpec(bias=False, **spec), x)
    # The first two layers' bias terms are multiplied by the downstream σ_w² E[φ'φ'] = 1.
    assert torch.allclose(with_bias.ntk - without.ntk, torch.full_like(x[:, :1] @ x[:, :1].T, 3.0),
                          rtol=0, atol=1e-12)
    assert torch.equal(with_bias.nngp, without.nngp)


def test_relu_single_layer_matches_hand_formula(rng):
    # Depth 1, ntk: Θ = Σ¹ + σ_w² (π−θ)/(2π) Σ⁰ with the arc-cosine Σ¹ written out here.
    x = random_inputs(4, 3, rng)
    sw, sb = 1.4, 0.3
    s0 = sw ** 2 * (x @ x.T) / 3 + sb ** 2
    q = s0.diagonal()
    norm = torch.sqrt(q[:, None] * q[None, :])
    theta = torch.arccos((s0 / norm).clamp(-1, 1))
    s1 = sw ** 2 * norm / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) + sb ** 2
    ntk = s1 + sw ** 2 * (math.pi - theta) / (2 * math.pi) * s0
    k = analytic_kernels(ArchSpec(depth=1, width=5, sigma_w=sw, sigma_b=sb), x)
    assert torch.allclose(k.nngp, s1, rtol=1e-12, atol=0)
    assert torch.allclose(k.ntk, ntk, rtol=1e-12, atol=0)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_symmetric_psd_and_diagonal(activation, parametrization, rng):
    x = random_inputs(24, 6, rng)
    spec = ArchSpec(depth=2, width=64, activation=activation, sigma_w=1.2, sigma_b=0.1,
                    parametrization=parametrization)
    k = analytic_kernels(spec, x)
    diag = analytic_kernels(spec, x, diagonal=True)
    for full, d in [(k.nngp, diag.nngp), (k.ntk, diag.ntk)]:
        assert full.dtype == torch.float64 and full.shape == (24, 24) and d.shape == (24,)
        assert torch.equal(full, full.T)
        eigenvalues = torch.linalg.eigvalsh(full)
        # PSD up to float64 rounding of a matrix whose entries are O(max|K|).
        assert eigenvalues.min() > -1e-12 * eigenvalues.max()
        assert torch.allclose(full.diagonal(), d, rtol=1e-12, atol=0)


def test_cross_kernel_is_a_block_of_the_joint_kernel_and_blocking_changes_nothing(rng):
    x1, x2 = random_inputs(9, 4, rng), random_inputs(13, 4, rng)
    spec = ArchSpec(depth=3, width=16, activation="erf", sigma_w=1.6, sigma_b=0.2)
    joint = analytic_kernels(spec, torch.cat([x1, x2]))
    cross = analytic_kernels(spec, x1, x2)
    tiny_blocks = analytic_kernels(spec, x1, x2, block_elements=5)
    assert cross.ntk.shape == (9, 13)
    assert torch.allclose(cross.ntk, joint.ntk[:9, 9:], rtol=1e-13, atol=0)
    assert torch.allclose(cross.nngp, joint.nngp[:9, 9:], rtol=1e-13, atol=0)
    assert torch.allclose(tiny_blocks.ntk, cross.ntk, rtol=1e-14, atol=0)  # rounding only
    tiny_symmetric = analytic_kernels(spec, x1, block_elements=5)
    assert torch.allclose(tiny_symmetric.ntk, joint.ntk[:9, :9], rtol=1e-13, atol=0)


def test_block_elements_default_by_device(monkeypatch):
    from types import SimpleNamespace

    from ntklab.kernels.analytic import WORKING_ARRAYS, default_block_elements

    assert default_block_elements("cpu") == 2 ** 20
    # a GPU's share is a quarter of its total memory over 14 arrays, between 2^20 and 2^26 entries
    for total, dtype, expected in [(80 * 10 ** 9, torch.float32, 2 ** 26), (80 * 10 ** 9, torch.float64, 2 ** 26),
                                   (8 * 10 ** 9, torch.float64, 8 * 10 ** 9 // 4 // (WORKING_ARRAYS * 8)),
                                   (2 ** 28, torch.float64, 2 ** 20)]:
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total))
        chosen = default_block_elements("cuda", dtype)
        assert chosen == expected, (total, dtype, chosen)
        if chosen > 2 ** 20:      # the working memory it implies fits the quarter
            assert WORKING_ARRAYS * chosen * torch.empty((), dtype=dtype).element_size() <= total / 4
    with pytest.raises(ValueError, match="block_elements must be an integer >= 1, got 0"):
        analytic_kernels(ArchSpec(depth=1, width=4), torch.ones(2, 3), block_elements=0)


def test_ntk_parametrization_kernel_does_not_depend_on_width(rng):
    x = random_inputs(5, 3, rng)
    narrow = analytic_kernels(ArchSpec(depth=2, width=4, activation="erf"), x)
    wide = analytic_kernels(ArchSpec(depth=2, width=(4096, 7), activation="erf"), x)
    assert torch.allclose(narrow.ntk, wide.ntk, rtol=1e-14, atol=0)


def test_numpy_inputs_and_callable_activation(rng):
    x = random_inputs(6, 3, rng)
    by_name = analytic_kernels(ArchSpec(depth=2, width=8, activation="tanh"), x)
    by_callable = analytic_kernels(ArchSpec(depth=2, width=8, activation=torch.tanh), x.numpy())
    # The callable's derivative comes from autograd instead of 1 - tanh², equal to rounding.
    assert torch.allclose(by_callable.ntk, by_name.ntk, rtol=1e-13, atol=0)


@pytest.mark.parametrize("bad, message", [
    (dict(x1=torch.zeros(0, 3)), "empty batch"),
    (dict(x1=torch.zeros(4)), "shape (N, d)"),
    (dict(x1=torch.tensor([[0.0, float("nan")]])), "NaN"),
    (dict(x1=torch.zeros(2, 3), x2=torch.zeros(2, 4)), "different feature dims"),
    (dict(x1=torch.zeros(2, 3), method="exact"), "method must be one of auto, closed_form, quadrature"),
    (dict(x1=torch.zeros(2, 3), x2=torch.zeros(2, 3), diagonal=True), "diagonal=True"),
])
def test_bad_inputs_say_what_was_wrong(bad, message):
    with pytest.raises(ValueError) as err:
        analytic_kernels(ArchSpec(depth=1, width=4), **bad)
    assert message in str(err.value)


def test_closed_form_request_without_one_is_an_error():
    with pytest.raises(ValueError, match="no closed-form kernel"):
        analytic_kernels(ArchSpec(activation="tanh"), torch.ones(2, 2), method="closed_form")


def test_zero_input_without_bias_is_finite():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    k = analytic_kernels(ArchSpec(depth=2, width=4, sigma_b=0.0), x)
    assert torch.isfinite(k.ntk).all() and k.ntk[0, 0] == 0 and k.ntk[0, 1] == 0


def test_sin_kernel_stays_finite_at_large_variances():
    """E[sin u sin v] = e^{−(q1+q2)/2} sinh(cov) overflows as inf·0 once cov passes ~710; the dual must not."""
    import mpmath

    act = get_activation("sin")
    for q1, q2, rho in [(900.0, 900.0, 1.0), (900.0, 1100.0, 0.999), (800.0, 1000.0, -0.95), (2e4, 3e4, 0.5)]:
        cov = rho * math.sqrt(q1 * q2)
        e_phi, e_dphi = act.dual(*(torch.tensor(a, dtype=torch.float64) for a in (q1, q2, cov)))
        with mpmath.workprec(200):          # the textbook formula, in arithmetic that cannot overflow
            m = -(mpmath.mpf(q1) + q2) / 2
            expected = (mpmath.exp(m) * mpmath.sinh(cov), mpmath.exp(m) * mpmath.cosh(cov))
        for ours, reference in zip((e_phi, e_dphi), expected):
            # both are one or two exponentials of float64 arguments of size ~1e3-1e4, whose rounding
            # (~1e-13 absolute in the exponent) is the whole error
            assert math.isfinite(ours.item())
            assert ours.item() == pytest.approx(float(reference), rel=1e-11, abs=1e-300)
    # and through a whole net: |x|²/d = 900 gave NaN before
    x = 30.0 * torch.nn.functional.normalize(random_inputs(6, 4, torch.Generator().manual_seed(3)), dim=1) * 2.0
    kernels = analytic_kernels(ArchSpec(depth=1, width=8, activation="sin", sigma_w=1.2), x)
    assert torch.isfinite(kernels.nngp).all() and torch.isfinite(kernels.ntk).all()
    # diagonal: σ_w² E[sin² u] = σ_w² (1 − e^{−2q})/2 = 1.44/2 to float64 at q = 1.44 · 900
    assert kernels.nngp.diagonal().allclose(torch.full((6,), 1.44 * 0.5, dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "abs", "leaky_relu"])
@pytest.mark.parametrize("parametrization, bias", [("standard", True), ("ntk", False), ("standard", False)])
def test_zero_input_without_bias_agrees_with_finite_nets_and_quadrature(activation, parametrization, bias):
    """x = 0 with σ_b = 0: every pre-activation is 0, so u = 0 almost surely and E[φ'(u)φ'(v)] = φ'(0)E[φ'(v)].

    Under "standard" the biases stay trainable (they add 1 each to the NTK), so for relu only the
    readout bias is seen through φ'(0) = 0: Θ(0, ·) = 1 exactly, in every finite net. The closed forms
    once took ρ = 0 there and gave 1.676.
    """
    from ntklab import build_mlp, empirical_ntk

    gen = torch.Generator().manual_seed(11)
    x = torch.cat([torch.zeros(1, 5, dtype=torch.float64), random_inputs(3, 5, gen)])
    spec = ArchSpec(depth=2, width=64, activation=activation, sigma_w=1.3, sigma_b=0.0, bias=bias,
                    parametrization=parametrization)
    closed = analytic_kernels(spec, x, method="closed_form")
    quadrature = analytic_kernels(spec, x, method="quadrature")
    # quadrature evaluates φ'(0) itself. Its error elsewhere (the other input's variance enters the
    # leaky relu's E[φ'(v)]) is ~1e-13 for these piecewise-linear φ (test_closed_form_equals_quadrature), so 1e-9.
    assert torch.allclose(closed.ntk[0], quadrature.ntk[0], rtol=1e-9, atol=1e-12)
    assert torch.allclose(closed.nngp[0], quadrature.nngp[0], rtol=1e-9, atol=1e-12)
    # For relu and abs (φ'(0) = 0) the zero input's entry is deterministic in a finite net too: no
    # hidden unit passes a gradient, so a single net of any width gives it exactly, not up to O(1/√n).
    # The leaky relu passes slope 0.01 of it: its random part is slope² = 1e-4 times an O(1/√64)
    # fluctuation of a Gram sum, measured < 2e-5 relative; 1e-3 keeps a wide margin.
    tolerance = 1e-12 if activation in ("relu", "abs") else 1e-3
    for seed in (0, 1):
        net = build_mlp(spec, 5, seed=seed, dtype=torch.float64)
        empirical = empirical_ntk(net, x[:1])[0, 0]
        assert torch.allclose(empirical, closed.ntk[0, 0], rtol=tolerance, atol=1e-14)
    if activation == "relu" and parametrization == "standard" and bias:     # only the readout bias counts
        assert closed.ntk[0, 0].item() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sqrt_normal_is_sqrt_on_normal_numbers_and_zero_below(dtype):
    """The relu dual's square root: torch.sqrt bit for bit above the smallest normal number tiny, 0 on
    zeros, subnormals and tiny itself (whose true roots are at most √tiny: 1.1e-19 in float32, 1.5e-154
    in float64)."""
    tiny = torch.finfo(dtype).tiny
    generator = torch.Generator().manual_seed(0)
    normal = torch.cat([torch.tensor([2 * tiny, 1.0, torch.finfo(dtype).max], dtype=dtype),
                        10 ** torch.empty(1000, dtype=torch.float64).uniform_(-30, 30, generator=generator).to(dtype)])
    below = torch.tensor([0.0, tiny / 2, tiny / 1024, tiny], dtype=dtype)
    assert bool((below[1:3] < tiny).all()) and bool((below[1:] > 0).all())      # subnormals, not flushed
    assert torch.equal(sqrt_normal_(normal.clone()), torch.sqrt(normal))
    assert torch.equal(sqrt_normal_(below.clone()), torch.zeros_like(below))
    assert bool((torch.sqrt(below) <= torch.sqrt(torch.tensor(tiny, dtype=dtype))).all())


def _blank_margin_variances(generator):
    """Per-position variances of two image sets as the relu dual meets them in a GAP CNTK's pair
    block: q1 (5, 6, 1, 1, 3, 1) and q2 (1, 1, 5, 6, 1, 4), 0 on blank margins and on a hole, so the
    positive ones fill a box that is not all of it, and not every entry inside that box."""
    q1 = torch.rand(5, 6, 1, 1, 3, 1, generator=generator, dtype=torch.float64) + 0.5
    q1[0], q1[:, 5], q1[2, 2] = 0.0, 0.0, 0.0
    q2 = torch.rand(1, 1, 5, 6, 1, 4, generator=generator, dtype=torch.float64) + 0.5
    q2[:, :, 4], q2[:, :, :, :2], q2[..., 3] = 0.0, 0.0, 0.0     # one image blank all over
    return q1, q2


def test_support_box_is_the_smallest_box_holding_every_pair_of_positive_variances_of_two_images():
    q1, q2 = _blank_margin_variances(torch.Generator().manual_seed(5))
    shape = torch.broadcast_shapes(q1.shape, q2.shape)
    positive = ((q1 > 0) & (q2 > 0)).expand(shape)
    box = support_box(q1, q2, shape)
    # by hand: the first and last index of a positive pair along each axis
    expected = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in positive.nonzero().unbind(1))
    assert box == expected and box[:4] == (slice(1, 5), slice(0, 5), slice(0, 4), slice(2, 6))
    assert positive.sum() == positive[box].sum() and not bool(positive[box].all())
    assert support_box(q1 + 1.0, q2 + 1.0, shape) is None                       # nothing to leave out
    assert all(part.start == part.stop for part in support_box(q1, q2 * 0.0, shape))     # all degenerate


# (activation, slope a, φ'(0)): the leaky relu family as its duals see it; slope −1 with φ'(0) = −1
# (where(x > 0, 1, a)) is the one member whose E[φ'] = (1 + a)/2 vanishes while φ'(0) does not;
# at −0.97 a scaling of (1 + a)²/4 by 4a/(1 + a)² would round differently from a(1 + a)/2
RELU_FAMILY = [("relu", 0.0, 0.0), ("abs", -1.0, 0.0), ("leaky_relu", 0.01, 0.01), (leaky_relu(-1.0), -1.0, -1.0),
               (leaky_relu(-0.97), -0.97, -0.97)]


@pytest.mark.parametrize("activation, slope, derivative_at_zero", RELU_FAMILY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dual_on_blank_margins_equals_the_dual_entry_by_entry(activation, slope, derivative_at_zero, dtype):
    """The relu-family dual runs its formulas only on the box of positive variances and writes the
    known zero-variance values around it (E[φφ] = 0, E[φ'φ'] = φ'(0)·E[φ'(v)] or φ'(0)²). Each entry
    alone, a 0-d call, takes the plain path through the same formulas: both must give the same numbers."""
    generator = torch.Generator().manual_seed(6)
    q1, q2 = _blank_margin_variances(generator)
    shape = torch.broadcast_shapes(q1.shape, q2.shape)
    # a valid covariance: ρ in (−1, 1) times √(q1 q2), so exactly 0 where a variance is 0
    cov = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * (q1 * q2).sqrt()
    q1, q2, cov = q1.to(dtype), q2.to(dtype), cov.to(dtype)
    dual = get_activation(activation).dual
    e_phi, e_dphi = dual(q1, q2, cov)
    # a seeded draw of 1500 of the 10,800 entries, each a 0-d call (about 0.1 ms apiece)
    entries = torch.randperm(cov.numel(), generator=generator)[:1500]
    by_entry = [dual(q1.expand(shape).flatten()[i], q2.expand(shape).flatten()[i], cov.flatten()[i]) for i in entries]
    # the same operations on the same numbers; only a vector and a scalar loop of one libm function
    # (arcsin, sqrt) may round differently: 1 ulp, well inside 4 ulps relative to the largest entry
    for got, expected in ((e_phi, torch.stack([pair[0] for pair in by_entry])),
                          (e_dphi, torch.stack([pair[1] for pair in by_entry]))):
        scale = 4 * torch.finfo(dtype).eps * expected.abs().max()
        assert torch.allclose(got.flatten()[entries], expected, rtol=0, atol=scale.item())
    # and the zero-variance entries are the closed forms of the docstring
    mean = lambda q: torch.where(q == 0, torch.tensor(derivative_at_zero, dtype=torch.float64),
                                 torch.tensor((1 + slope) / 2, dtype=torch.float64))     # E[φ'(u)]
    degenerate = ((q1 == 0) | (q2 == 0)).expand(shape)
    assert bool((e_phi[degenerate] == 0).all())
    expected_dphi = (mean(q1) * mean(q2)).expand(shape)[degenerate]
    assert torch.allclose(e_dphi[degenerate].double(), expected_dphi, rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("activation", ["relu", "abs", "leaky_relu"])
def test_cnn_kernels_of_images_with_blank_margins_equal_quadrature(activation):
    """Images blank but for a rectangle each, at different places (MNIST-like), through two 'same'
    convs and a global average pool: the closed form (which skips the blank pairs of positions)
    against quadrature (which evaluates every entry, with φ'(0) from φ' itself). Standard
    parametrization with σ_b = 0: the biases' NTK term (1 per layer) reaches the blank positions, so
    E[φ'(u)φ'(v)] there enters the NTK (without biases the NTK is 0 there whatever it is)."""
    from ntklab import layers as nl

    generator = torch.Generator().manual_seed(8)
    x = torch.zeros(4, 1, 9, 9, dtype=torch.float64)
    for image, (top, left, height, width) in enumerate([(1, 2, 4, 5), (3, 0, 5, 3), (2, 2, 5, 5), (0, 5, 3, 4)]):
        x[image, 0, top:top + height, left:left + width] = torch.randn(height, width, generator=generator,
                                                                      dtype=torch.float64)
    arch = nl.serial(nl.conv(8, 3, sigma_w=1.4, parametrization="standard"), nl.activation(activation),
                     nl.conv(8, 3, sigma_w=1.4, parametrization="standard"), nl.activation(activation),
                     nl.global_avg_pool(), nl.dense(1, sigma_w=1.2))
    closed = analytic_kernels(arch, x, method="closed_form")
    quadrature = analytic_kernels(arch, x, method="quadrature")
    # quadrature's error on these piecewise-linear duals is ~1e-13 of the largest entry
    # (test_closed_form_equals_quadrature); a wrong value at the skipped entries (φ'(0) taken as
    # E[φ'] there, as the dual once did) moves the kernels by percents
    assert _rel_max(closed.nngp, quadrature.nngp) < 1e-10
    assert _rel_max(closed.ntk, quadrature.ntk) < 1e-10
