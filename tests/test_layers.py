"""Layers that carry their limit: the MLP path unchanged by the redesign, the three empirical-NTK
methods on CNNs, Monte Carlo of CNNs against the analytic CNTK with a fitted exponent, memory,
seeds, and the errors a user meets (float64 unless a test says otherwise).

The analytic CNTK against an independent full-covariance recursion is in test_cntk.py.
"""

import importlib
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from ntklab import ArchSpec, analytic_kernels, build_mlp, build_net, empirical_ntk
from ntklab import layers as nl
from ntklab.kernels import quadrature_dual
from ntklab.scaling import fit_power_law
from ntklab.spec import layer_scales
from tests.helpers import monte_carlo_kernel_errors


# ----------------------------------------------------------------------------- the MLP path, pinned

def _mlp_recursion_before_layers(spec, x1, x2, method):
    """The dense recursion as ntklab computed it before the layers existed (its analytic.py
    ``_propagate``, one formula per layer with the constants of ``layer_scales``), kept here as the
    reference the redesign must reproduce: the diagonal run gives the variances, the block run the kernel."""
    act = spec.act
    dual = quadrature_dual(act) if method == "quadrature" or act.dual is None else act.dual
    scales = layer_scales(spec, x1.shape[1])

    def propagate(input_dot, rows=None, cols=None):
        first = scales[0]
        nngp = first.weight_variance * input_dot + first.bias_variance
        ntk = (first.weight_ntk_factor * first.fan_in) * input_dot + first.bias_ntk_factor
        variances = []
        for layer, scale in enumerate(scales[1:]):
            variances.append(nngp)
            q1 = nngp if rows is None else rows[layer]
            q2 = nngp if cols is None else cols[layer]
            e_phi, e_dphi = dual(q1, q2, nngp)
            ntk = ntk.mul_(e_dphi).mul_(scale.weight_variance)
            ntk = ntk.add_(e_phi, alpha=scale.weight_ntk_factor * scale.fan_in).add_(scale.bias_ntk_factor)
            nngp = scale.weight_variance * e_phi + scale.bias_variance
        return nngp, ntk, variances

    d = x1.shape[1]
    diag1 = propagate((x1 * x1).sum(1) / d)
    diag2 = propagate((x2 * x2).sum(1) / d)
    nngp, ntk, _ = propagate(x1 @ x2.T / d, [v.unsqueeze(1) for v in diag1[2]], [v.unsqueeze(0) for v in diag2[2]])
    return nngp, ntk


@pytest.mark.parametrize("spec, method", [
    (ArchSpec(depth=3, width=64, activation="relu", sigma_w=1.5, sigma_b=0.1), "closed_form"),
    (ArchSpec(depth=2, width=(16, 32), activation="erf", sigma_w=1.3, sigma_b=0.2, parametrization="standard"),
     "closed_form"),
    (ArchSpec(depth=2, width=128, activation="abs", sigma_b=0.3, parametrization="mup"), "closed_form"),
    (ArchSpec(depth=1, width=256, activation="relu", sigma_b=0.5, parametrization="meanfield"), "closed_form"),
    (ArchSpec(depth=2, width=32, activation="tanh", sigma_w=1.2, sigma_b=0.1), "quadrature"),
    (ArchSpec(depth=0, width=8, out_dim=3), "closed_form"),
])
def test_mlp_kernels_are_those_of_before_the_layers(spec, method, rng):
    x1 = torch.randn(7, 5, generator=rng, dtype=torch.float64)
    x2 = torch.randn(4, 5, generator=rng, dtype=torch.float64)
    expected_nngp, expected_ntk = _mlp_recursion_before_layers(spec, x1, x2, method)
    kernels = analytic_kernels(spec, x1, x2, method=method)
    # The layers run the same floating-point operations in the same order, so the numbers are equal;
    # 1e-14 (a few ulps) is the pin the redesign promised.
    assert torch.allclose(kernels.nngp, expected_nngp, rtol=1e-14, atol=0)
    assert torch.allclose(kernels.ntk, expected_ntk, rtol=1e-14, atol=0)


def _structured_before_layers(net, x1, x2):
    """The MLP's structured NTK as computed before the layers (hand-written backward pass), mean mode."""
    def features(x):
        inputs, pre = net.hidden(x)
        layers, deltas, delta = net.layers, [None] * len(net.layers), None
        for l in range(len(layers) - 2, -1, -1):
            upstream = layers[l + 1]
            back = ((upstream.weight * upstream.weight_mult).unsqueeze(0) if delta is None
                    else torch.matmul(delta, upstream.weight) * upstream.weight_mult)
            delta = back * net.activation.derivative(pre[l]).unsqueeze(1)
            deltas[l] = delta
        return list(zip(inputs, deltas))

    k, total = net.out_dim, 0
    with torch.no_grad():
        for layer, (a1, d1), (a2, d2) in zip(net.layers, features(x1), features(x2)):
            gram = (a1 @ a2.T) * layer.scale.weight_ntk_factor + layer.scale.bias_ntk_factor
            delta = (torch.full_like(gram, float(k)) if d1 is None
                     else d1.reshape(d1.shape[0], -1) @ d2.reshape(d2.shape[0], -1).T)
            total = total + gram * delta / k
    return total


@pytest.mark.parametrize("spec", [ArchSpec(depth=2, width=48, activation="tanh", sigma_b=0.2, out_dim=3),
                                  ArchSpec(depth=3, width=32, activation="relu", parametrization="standard"),
                                  ArchSpec(depth=2, width=64, activation="gelu", parametrization="mup", out_dim=2)])
def test_mlp_structured_ntk_is_that_of_before_the_layers(spec, rng):
    x1, x2 = torch.randn(6, 4, generator=rng, dtype=torch.float64), torch.randn(5, 4, generator=rng, dtype=torch.float64)
    net = build_mlp(spec, 4, seed=3, dtype=torch.float64)
    # autograd's backward and the hand-written one multiply the same numbers in a different order:
    # a few ulps per entry of sums of ~100 terms, 1e-14 relative to the largest entry
    expected = _structured_before_layers(net, x1, x2)
    got = empirical_ntk(net, x1, x2, method="structured")
    assert (got - expected).abs().max() <= 1e-14 * expected.abs().max()


# ----------------------------------------------------------------------------- CNN empirical NTK methods

CNNS = {
    "transpose_upsampling": lambda c: nl.serial(
        nl.conv(c, 3, stride=2, sigma_b=0.2), nl.activation("relu"),
        nl.conv_transpose(c, 3, stride=2, sigma_w=1.3, sigma_b=0.3), nl.activation("tanh"),
        nl.conv_transpose(c, (4, 1), stride=(2, 3), padding="valid", parametrization="standard"),
        nl.flatten(), nl.dense(2)),
    "stride_same_valid_gap": lambda c: nl.serial(
        nl.conv(c, 3, sigma_w=1.4, sigma_b=0.1), nl.activation("relu"),
        nl.conv(c, (3, 2), stride=2, padding="valid", sigma_w=1.4, sigma_b=0.1), nl.activation("erf"),
        nl.global_avg_pool(), nl.dense(3, sigma_w=1.2, sigma_b=0.2)),
    "pool_residual_flatten": lambda c: nl.serial(
        nl.conv(c, 3, sigma_b=0.2), nl.avg_pool(2),
        nl.residual(nl.serial(nl.activation("relu"), nl.conv(c, 3, sigma_w=1.3), nl.activation("tanh"), nl.conv(c, 1))),
        nl.layer_norm(), nl.activation("relu"), nl.flatten(), nl.dense(2)),
    "standard_stride": lambda c: nl.serial(
        nl.conv(c, 2, stride=2, padding="same", parametrization="standard", sigma_b=0.3), nl.activation("gelu"),
        nl.conv(c, 3, parametrization="standard", bias=False), nl.activation("relu"), nl.avg_pool(2, stride=1),
        nl.flatten(), nl.dense(2, parametrization="standard")),
}


@pytest.mark.parametrize("name", list(CNNS))
def test_structured_jacobian_and_ntvp_agree_on_cnns(name, rng):
    x1 = torch.randn(4, 2, 7, 6, generator=rng, dtype=torch.float64)
    x2 = torch.randn(3, 2, 7, 6, generator=rng, dtype=torch.float64)
    net = build_net(CNNS[name](5), in_shape=(2, 7, 6), seed=1, dtype=torch.float64)
    for outputs in ("full", "mean", "trace"):
        structured = empirical_ntk(net, x1, x2, method="structured", outputs=outputs)
        jacobian = empirical_ntk(net, x1, x2, method="jacobian", outputs=outputs)
        ntvp = empirical_ntk(net, x1, x2, method="ntvp", outputs=outputs)
        scale = jacobian.abs().max()
        # three routes to the same float64 sums of a few thousand products: rounding ~1e-15 of the
        # largest entry; 1e-10 relative leaves a wide margin and catches any missing term (≥ 1e-3)
        assert (structured - jacobian).abs().max() <= 1e-10 * scale
        assert (ntvp - jacobian).abs().max() <= 1e-10 * scale
    # the symmetric call (x2 = None) mirrors blocks: equal to the explicit x2 = x1
    assert torch.allclose(empirical_ntk(net, x1), empirical_ntk(net, x1, x1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["transpose_upsampling", "stride_same_valid_gap"])
def test_cnn_features_computed_in_pieces_change_nothing(name, rng, monkeypatch):
    """A conv keeps its per-input weight gradients, not δ, so a block of rows can be larger than the
    piece whose δ are formed at once: every split of the rows into blocks and pieces gives the kernel
    of one pass over all inputs (to rounding: the same sums, grouped differently)."""
    from ntklab.ntk import empirical as empirical_module

    net = build_net(CNNS[name](5), in_shape=(2, 7, 6), seed=1, dtype=torch.float64)
    x1 = torch.randn(9, 2, 7, 6, generator=rng, dtype=torch.float64)
    x2 = torch.randn(6, 2, 7, 6, generator=rng, dtype=torch.float64)
    whole = empirical_ntk(net, x1, x2, method="structured", outputs="full")
    calls = []          # (inputs, piece size) of each features call: pieces concatenate when inputs > piece
    original = empirical_module._structured_features
    monkeypatch.setattr(empirical_module, "_structured_features",
                        lambda model, x, full, chunk: calls.append((x.shape[0], chunk)) or original(model, x, full, chunk))
    for budget in (1, 20_000, 60_000, 200_000):
        chunked = empirical_ntk(net, x1, x2, method="structured", outputs="full", memory_budget=budget)
        assert ((chunked - whole).norm() / whole.norm()).item() < 1e-13, budget
        symmetric = empirical_ntk(net, x1, method="structured", memory_budget=budget)
        torch.testing.assert_close(symmetric, empirical_ntk(net, x1, x1, method="structured"), rtol=1e-13, atol=0)
    assert any(inputs > piece for inputs, piece in calls)      # some budget split a block's features into pieces
    assert any(inputs > 1 for inputs, _ in calls)


@pytest.mark.parametrize("name", sorted(CNNS) + ["mlp"])
def test_the_first_layer_skips_the_zero_input_ntk_and_changes_nothing(name, rng, monkeypatch):
    """The input's NTK is 0, so the first dense or conv layer writes σ-scaled copies of its NNGP sum
    into the NTK instead of summing zeros (strided, "valid", transposed and dense first layers here):
    the same numbers to the last bit as the recursion that carries the zeros through."""
    from ntklab.kernels import analytic as analytic_module

    arch = ArchSpec(depth=3, width=8, activation="relu", sigma_b=0.3) if name == "mlp" else CNNS[name](4)
    shape = (5,) if name == "mlp" else (2, 7, 6)
    x1, x2 = (torch.randn((n,) + shape, generator=rng, dtype=torch.float64) for n in (5, 4))
    skipped = [analytic_kernels(arch, x1, x2), analytic_kernels(arch, x1)]
    original = analytic_module.input_state

    def carried_zeros(*args, **kwargs):
        state = original(*args, **kwargs)
        for _, part in state.parts():
            part.ntk_is_zero = False
        return state

    monkeypatch.setattr(analytic_module, "input_state", carried_zeros)
    carried = [analytic_kernels(arch, x1, x2), analytic_kernels(arch, x1)]
    for fast, slow in zip(skipped, carried):
        assert torch.equal(fast.ntk, slow.ntk) and torch.equal(fast.nngp, slow.nngp)
        assert fast.ntk.abs().min() > 0          # a real kernel, not zeros on both sides


def test_conv_structured_routes_agree(rng, monkeypatch):
    """The conv layer's Gram rule has two exact routes (position pairs, per-input gradients): force each."""
    dense_module = importlib.import_module("ntklab.layers.dense")     # ntklab.layers.dense is also a function

    net = build_net(CNNS["stride_same_valid_gap"](4), in_shape=(2, 7, 6), seed=0, dtype=torch.float64)
    x = torch.randn(5, 2, 7, 6, generator=rng, dtype=torch.float64)
    results = []
    for route in ("pairs", "gradients"):
        monkeypatch.setattr(dense_module, "_PREFER", route)
        results.append(empirical_ntk(net, x, method="structured", outputs="full"))
    # rounding of two different summation orders over ~100 terms
    assert torch.allclose(results[0], results[1], rtol=1e-12, atol=1e-14 * results[1].abs().max().item())


def test_conv_full_kernel_of_several_outputs_by_position_pairs(rng, monkeypatch):
    """The full kernel (k outputs, Θ (N, N, k, k)) on the position-pairs route: equal to jacobian's,
    and computed one pair of outputs at a time, so no array exceeds (b1, b2, S, S), the size the
    mean kernel's route needs too; all pairs at once would be k² = 9 times that."""
    dense_module = importlib.import_module("ntklab.layers.dense")     # ntklab.layers.dense is also a function

    arch = nl.serial(nl.conv(4, 3, sigma_b=0.2), nl.activation("relu"), nl.conv(4, 3, stride=2, padding="valid"),
                     nl.activation("relu"), nl.flatten(), nl.dense(3))
    net = build_net(arch, in_shape=(2, 7, 7), seed=0, dtype=torch.float64)
    x = torch.randn(5, 2, 7, 7, generator=rng, dtype=torch.float64)
    reference = empirical_ntk(net, x, method="jacobian", outputs="full")
    largest, einsum = [0], torch.einsum

    def recording_einsum(*args):
        out = einsum(*args)
        largest[0] = max(largest[0], out.numel())
        return out

    monkeypatch.setattr(dense_module, "_PREFER", "pairs")
    monkeypatch.setattr(torch, "einsum", recording_einsum)
    structured = empirical_ntk(net, x, method="structured", outputs="full")
    # rounding of two summation orders over ~100 terms
    assert torch.allclose(structured, reference, rtol=1e-12, atol=1e-14 * reference.abs().max().item())
    positions = 7 * 7                                       # the first conv's output ("same")
    assert largest[0] == 5 * 5 * positions ** 2


def test_conv_routes_count_a_full_kernels_output_pairs():
    """The route rule's costs: 256 channels of 3×3 convs on 8×8 digits, 10 outputs. Full kernel:
    position pairs S²·(F + k²·C) = 64²·(2304 + 25,600) ≈ 1.1e8 per pair of inputs against the
    gradients' k²·C·F = 5.9e7, so gradients; the mean kernel: 64²·(2304 + 2560) ≈ 2.0e7 against
    5.9e6, gradients too. A 2×2 "valid" conv on 2×2 inputs has one position: pairs, either way."""
    net = build_net(nl.serial(nl.conv(256, 3), nl.activation("relu"), nl.conv(256, 3), nl.activation("relu"),
                              nl.flatten(), nl.dense(10)), in_shape=(1, 8, 8), seed=0)
    second = net.parametrized_modules()[1]
    assert second.layer._gram_sizes(second.node) == (256, 64, 2304)
    assert second.layer._gradient_route(second.node, 10, full=True)
    assert second.layer._gradient_route(second.node, 10, full=False)
    small = build_net(nl.serial(nl.conv(8, 2, padding="valid"), nl.activation("relu"), nl.flatten(), nl.dense(10)),
                      in_shape=(3, 2, 2), seed=0)
    conv = small.parametrized_modules()[0]
    assert conv.layer._gram_sizes(conv.node) == (8, 1, 12)
    assert not conv.layer._gradient_route(conv.node, 10, full=True)
    assert not conv.layer._gradient_route(conv.node, 10, full=False)


# ----------------------------------------------------------------------------- Monte Carlo of CNNs

@pytest.mark.slow
@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_monte_carlo_cnn_kernels_converge_like_channels_to_the_minus_half(readout):
    """The average of M empirical kernels of nets with c channels misses the analytic one by a
    fluctuation of size O(1/√(cM)) plus an O(1/c) bias, so the relative Frobenius error falls like
    c^(−1/2) from 16 to 512 channels."""
    pool = nl.global_avg_pool() if readout == "gap" else nl.flatten()
    arch_of = lambda c: nl.serial(nl.conv(c, 3, sigma_w=1.5, sigma_b=0.1), nl.activation("relu"),
                                  nl.conv(c, 3, stride=2, padding="valid", sigma_w=1.5, sigma_b=0.1),
                                  nl.activation("relu"), pool, nl.dense(1, sigma_w=1.5, sigma_b=0.1))
    x = torch.randn(6, 1, 7, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    channels = [16, 32, 64, 128, 256, 512]
    rms, of_average = monte_carlo_kernel_errors(arch_of, x, channels, samples=16)
    for kind, values in rms.items():
        slope = fit_power_law(channels, values).exponent
        # the theory says −1/2; measured with 24 seeds per width on two input draws: −0.43 … −0.51
        # (NTK and NNGP, both readouts), the few kernel entries making each RMS noisy at ~±0.05.
        # [−0.7, −0.3] holds with margin and excludes both no convergence (0) and a 1/c law (−1).
        assert -0.7 <= slope <= -0.3, (kind, slope, values)
        # averaging 16 independent nets divides the fluctuation by 4 (measured ratios 0.36-0.55 with 6
        # seeds): the average is closer still
        assert of_average[kind][-1] < 0.6 * values[-1], (kind, of_average[kind], values)


# ----------------------------------------------------------------------------- nets and seeds

def test_same_seed_same_cnn_on_every_dtype(rng):
    arch = CNNS["pool_residual_flatten"](6)
    x = torch.randn(3, 2, 7, 6, generator=rng, dtype=torch.float64)
    net64 = build_net(arch, in_shape=(2, 7, 6), seed=7, dtype=torch.float64)
    net32 = build_net(arch, in_shape=(2, 7, 6), seed=7, dtype=torch.float32)
    other = build_net(arch, in_shape=(2, 7, 6), seed=8, dtype=torch.float64)
    with torch.no_grad():
        f64, f32, f_other = net64(x), net32(x.float()).double(), other(x)
    # parameters drawn in float64 from one generator, then cast: float32 rounding (~1e-7) through
    # a few layers leaves < 1e-5 relative, while another seed differs at O(1)
    assert (f64 - f32).abs().max() < 1e-5 * f64.abs().max()
    assert (f64 - f_other).abs().max() > 0.1 * f64.abs().max()


def test_conv_forward_is_the_formula(rng):
    """z = σ_w/√(C_in·k_h·k_w) (W ⋆ x) + σ_b b with TensorFlow's 'same' padding (smaller half left)."""
    arch = nl.serial(nl.conv(3, (2, 3), stride=2, sigma_w=1.7, sigma_b=0.4), nl.flatten(), nl.dense(1))
    net = build_net(arch, in_shape=(2, 5, 6), seed=0, dtype=torch.float64)
    conv = net.parametrized_modules()[0]
    x = torch.randn(1, 2, 5, 6, generator=rng, dtype=torch.float64)
    # 'same', stride 2: output ⌈5/2⌉ × ⌈6/2⌉ = 3 × 3; padding rows (3−1)·2 + 2 − 5 = 1 → (0, 1),
    # columns (3−1)·2 + 3 − 6 = 1 → (0, 1)
    padded = torch.zeros(1, 2, 6, 7, dtype=torch.float64)
    padded[:, :, :5, :6] = x
    expected = torch.empty(3, 3, 3, dtype=torch.float64)
    for o in range(3):
        for i in range(3):
            for j in range(3):
                patch = padded[0, :, 2 * i: 2 * i + 2, 2 * j: 2 * j + 3]
                expected[o, i, j] = 1.7 / math.sqrt(2 * 6) * (conv.weight[o] * patch).sum() + 0.4 * conv.bias[o]
    with torch.no_grad():
        assert torch.allclose(conv(x)[0], expected, rtol=1e-13, atol=1e-14)     # float64 rounding of 12-term sums


# ----------------------------------------------------------------------------- errors name the layer

class _NoRule(nl.Layer):
    name = "custom"

    def forward(self, module, x):
        return x * 2.0


@pytest.mark.parametrize("make, message", [
    (lambda: nl.conv(0, 3), "conv: out_channels (channels) must be an integer >= 1"),
    (lambda: nl.conv(4, 3, padding="full"), "conv: padding must be one of same, valid"),
    (lambda: nl.dense(3, sigma_w=-1.0), "dense: sigma_w must be a finite number > 0"),
    (lambda: nl.avg_pool(0), "avg_pool: window must be an integer >= 1"),
    (lambda: nl.serial(nl.conv(4, 3), "relu"), "serial: item 1 is not an ntklab.layers Layer"),
    (lambda: nl.activation("swish"), "activation: unknown name 'swish'"),
])
def test_bad_layer_arguments_say_what_was_wrong(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)
    layer_name = message.split(":")[0]
    assert f"{layer_name}: {layer_name}:" not in str(err.value)       # the layer's name said once


@pytest.mark.parametrize("arch, x, message", [
    (nl.serial(nl.conv(4, 5, padding="valid"), nl.flatten(), nl.dense(1)), torch.zeros(2, 1, 4, 4),
     "layer 0 (conv(4, 5x5, valid"),
    (nl.serial(nl.conv(4, 5, padding="valid"), nl.flatten(), nl.dense(1)), torch.zeros(2, 1, 4, 4),
     "5x5 kernel is larger than the 4x4 input"),
    (nl.serial(nl.dense(4), nl.activation("relu"), nl.dense(1)), torch.zeros(2, 1, 4, 4),
     "layer 0 (dense(4, sigma_w=1, sigma_b=0)): dense takes vectors, got inputs of shape (1, 4, 4)"),
    (nl.serial(nl.conv(4, 3), nl.dense(1)), torch.zeros(2, 1, 4, 4), "put flatten() or global_avg_pool() before it"),
    (nl.serial(nl.global_avg_pool(), nl.dense(1)), torch.zeros(2, 5), "layer 0 (global_avg_pool): global_avg_pool takes images"),
    (nl.serial(nl.dense(4), _NoRule(), nl.dense(1)), torch.zeros(2, 5), "layer 1 (custom) has no infinite-width rule"),
    (nl.serial(nl.conv(2, 3), nl.activation("relu"), nl.layer_norm(), nl.flatten(), nl.dense(1)),
     torch.zeros(2, 1, 4, 4), "layer 2 (layer_norm): its input does not have zero mean"),
    (nl.serial(nl.conv(2, 3), nl.residual(nl.activation("relu")), nl.flatten(), nl.dense(1)), torch.zeros(2, 1, 4, 4),
     "layer 1 (residual(relu))"),
    (nl.serial(nl.conv(2, 3), nl.residual(nl.conv(3, 3)), nl.flatten(), nl.dense(1)), torch.zeros(2, 1, 4, 4),
     "the branch maps (2, 4, 4) to (3, 4, 4)"),
    (nl.serial(nl.conv(2, 3), nl.activation("relu")), torch.zeros(2, 1, 4, 4), "end with vectors"),
])
def test_analytic_kernels_of_bad_compositions_name_the_layer(arch, x, message):
    with pytest.raises(ValueError) as err:
        analytic_kernels(arch, x.double())
    assert message in str(err.value)


def test_images_given_to_a_net_built_for_vectors():
    net = build_mlp(ArchSpec(depth=1, width=8), 16, seed=0)
    with pytest.raises(ValueError, match=r"inputs have shape \(1, 4, 4\) .* in_dim=16"):
        empirical_ntk(net, torch.zeros(2, 1, 4, 4))
    cnn = build_net(nl.serial(nl.conv(2, 3), nl.flatten(), nl.dense(1)), in_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"built for images of shape \(1, 4, 4\)"):
        empirical_ntk(cnn, torch.zeros(2, 16))


def test_a_layer_without_a_gram_rule_falls_back_to_the_jacobian(rng):
    class Doubling(_NoRule):
        has_structured_ntk = False

    net = build_net(nl.serial(nl.dense(6), Doubling(), nl.activation("tanh"), nl.dense(2)), in_shape=(3,), seed=0,
                    dtype=torch.float64)
    x = torch.randn(4, 3, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match="layer 1 \\(custom\\) has no structured NTK rule"):
        empirical_ntk(net, x, method="structured")
    assert torch.allclose(empirical_ntk(net, x), empirical_ntk(net, x, method="ntvp"), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- memory

@pytest.mark.slow
def test_gap_cntk_of_many_images_stays_within_its_memory_budget(tmp_path):
    """A global-average-pool CNTK keeps the full (H·W)² covariance of every pair, 8·4096 bytes per pair
    of 8×8 images: all 2000² pairs at once would take 131 GB. Blocks bound the working memory to
    about 14·8·block_elements bytes (the docstring's budget) whatever N."""
    script = textwrap.dedent("""
        import resource, sys, torch
        from ntklab import layers as nl, analytic_kernels
        torch.manual_seed(0)
        x = torch.randn(2000, 1, 8, 8, dtype=torch.float64)
        arch = nl.serial(nl.conv(8, 3), nl.activation("relu"), nl.global_avg_pool(), nl.dense(1))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        k = analytic_kernels(arch, x, x[:16], block_elements=2 ** 20)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        print(grown, float(k.ntk.abs().max()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    grown_mib, largest = float(out[0]), float(out[1])
    # budget 14 · 8 B · 2^20 = 112 MiB of working arrays; the (2000, 16) outputs are 0.5 MiB. Peak
    # resident memory may also hold allocator slack: 2× the budget is the bound, far below the
    # 131 GB (or 1 GB for these 16 columns) an unblocked computation would need.
    assert grown_mib < 2 * 112
    assert math.isfinite(largest) and largest > 0


@pytest.mark.cuda
def test_cnn_kernels_and_nets_on_cuda_match_the_cpu(rng):
    arch = CNNS["stride_same_valid_gap"](16)
    x = torch.randn(5, 2, 7, 6, generator=rng, dtype=torch.float64)
    cpu = analytic_kernels(arch, x)
    gpu = analytic_kernels(arch, x.cuda())
    # the same float64 operations on another device: libm differences of a few ulps per layer
    assert torch.allclose(gpu.ntk.cpu(), cpu.ntk, rtol=1e-12, atol=0)
    assert torch.allclose(gpu.nngp.cpu(), cpu.nngp, rtol=1e-12, atol=0)
    net_cpu = build_net(arch, in_shape=(2, 7, 6), seed=4, dtype=torch.float64)
    net_gpu = build_net(arch, in_shape=(2, 7, 6), seed=4, dtype=torch.float64, device="cuda")
    theta_cpu = empirical_ntk(net_cpu, x)
    theta_gpu = empirical_ntk(net_gpu, x.cuda()).cpu()
    # same parameters (drawn on the CPU, then moved); float64 sums in another order: ~1e-15
    assert torch.allclose(theta_gpu, theta_cpu, rtol=1e-10, atol=1e-12 * theta_cpu.abs().max().item())
