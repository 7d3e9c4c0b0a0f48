"""The layers of a generator and of a normalised net: conv_transpose (forward formula, geometry,
the checkerboard in its infinite-width variances, Monte Carlo convergence with a fitted exponent)
and batch_norm (its NTK on a batch by two methods and by plain autograd, and why it is a batch NTK).

conv_transpose's analytic kernel against an independent joint-covariance recursion and Monte Carlo
of a plain-torch net is in test_cntk.py (mix "conv_transpose_relu"); structured = jacobian = ntvp
for it in test_layers.py (CNNS["transpose_upsampling"]).
"""

import math

import pytest
import torch
from torch import nn

from ntklab import analytic_kernels, build_net, empirical_nngp, empirical_ntk
from ntklab import layers as nl
from ntklab.kernels import pixel_kernels
from ntklab.layers.transpose import transpose_padding
from ntklab.scaling import fit_power_law
from tests.helpers import monte_carlo_kernel_errors


# ----------------------------------------------------------------------------- conv_transpose

@pytest.mark.parametrize("size, window, stride, padding, expected", [
    # (a, b, out) worked by hand from jax's rule (module docstring of ntklab.layers.transpose):
    (3, 4, 2, "same", (2, 2, 6)),     # a = ⌈(4+2−2)/2⌉ = 2, b = 4 − 2; out = 5 + 4 − 4 + 1 = 6 = 3·2
    (3, 3, 2, "same", (2, 1, 6)),     # a = ⌈3/2⌉ = 2, b = 1; out 6
    (3, 2, 2, "same", (1, 1, 6)),     # stride > k − 1: a = k − 1 = 1, b = 1
    (3, 1, 2, "same", (0, 1, 6)),     # a = 0, b = 1: one position past the full output (5 long)
    (3, 3, 1, "same", (1, 1, 3)),     # stride 1: a plain "same" conv's size
    (3, 3, 2, "valid", (2, 2, 7)),    # the full output (3 − 1)·2 + 3 = 7
    (3, 2, 3, "valid", (1, 2, 9)),    # k < stride: out n·s = 9, one past the full 8
])
def test_transpose_padding_is_jax_s(size, window, stride, padding, expected):
    assert transpose_padding(size, window, stride, padding) == expected


def test_conv_transpose_forward_is_the_formula(rng):
    """z[t] = σ_w/√(C_in·k_h·k_w) Σ_{i, o: 2i + o = t + crop} W[:, :, o]ᵀ x[i] + σ_b b, crop worked by hand."""
    arch = nl.serial(nl.conv_transpose(3, (4, 3), stride=2, sigma_w=1.7, sigma_b=0.4), nl.flatten(), nl.dense(1))
    net = build_net(arch, in_shape=(2, 3, 2), seed=0, dtype=torch.float64)
    layer = net.parametrized_modules()[0]
    x = torch.randn(1, 2, 3, 2, generator=rng, dtype=torch.float64)
    # rows: n = 3, k = 4, s = 2 "same": out 6, a = 2, crop = k − 1 − a = 1;
    # columns: n = 2, k = 3, s = 2: out 4, a = ⌈3/2⌉ = 2, crop 0
    expected = torch.zeros(3, 6, 4, dtype=torch.float64)
    for t in range(6):
        for u in range(4):
            for i in range(3):
                for j in range(2):
                    oh, ow = t + 1 - 2 * i, u - 2 * j
                    if 0 <= oh < 4 and 0 <= ow < 3:
                        expected[:, t, u] += layer.weight[:, :, oh, ow].T @ x[0, :, i, j]
    expected = 1.7 / math.sqrt(2 * 12) * expected + 0.4 * layer.bias[:, None, None]
    with torch.no_grad():
        got = layer(x)[0]
    assert got.shape == (3, 6, 4)
    assert torch.allclose(got, expected, rtol=1e-13, atol=1e-14)          # float64 sums of ≤ 12 terms


def test_transposed_conv_variances_are_a_checkerboard():
    """A 3×3 stride-2 transposed conv reaches output row t from 2 filter offsets when t is even (and
    inside), from 1 when odd: after relu(conv 1×1) of unit-variance pixels (E relu² = 1/2),
    Σ(t, u) = σ_w²/9 · n(t) n(u) · 1/2 + σ_b², n = (1, 1, 2, 1, 2, 1) on 3 → 6 positions."""
    arch = nl.serial(nl.conv(4, 1), nl.activation("relu"), nl.conv_transpose(4, 3, stride=2, sigma_w=1.5, sigma_b=0.2))
    x = torch.ones(2, 1, 3, 3, dtype=torch.float64)
    kernels = pixel_kernels(arch, x)
    counts = torch.tensor([1.0, 1, 2, 1, 2, 1], dtype=torch.float64)
    expected = 1.5 ** 2 / 9 * torch.outer(counts, counts) * 0.5 + 0.2 ** 2
    assert kernels.nngp.shape == (2, 6, 6)
    assert torch.allclose(kernels.nngp[0], expected, rtol=1e-14, atol=0)
    # the NTK adds each layer's NNGP share: Θ = Σ_out + σ_w²/9 · n n · E[relu'²]·Θ_in, Θ_in = Σ_in = 1
    expected_ntk = expected + 1.5 ** 2 / 9 * torch.outer(counts, counts) * 0.5 * 1.0
    assert torch.allclose(kernels.ntk[1], expected_ntk, rtol=1e-14, atol=0)
    # a 4×4 filter is a multiple of the stride: every pixel away from the border (crop 1 of the 8-long
    # full output) is reached twice per axis, no checkerboard
    flat = pixel_kernels(nl.serial(nl.conv(4, 1), nl.activation("relu"), nl.conv_transpose(4, 4, stride=2)), x)
    inner = flat.nngp[0, 1:-1, 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 4 / 16 * 0.5), rtol=1e-14)


def test_pixel_kernels_of_a_net_with_pooling_read_the_diagonal(rng):
    """Pooling ahead makes the recursion carry all position pairs; the pixel variances are still their
    diagonal, equal to what a flatten readout averages (flatten's rule is the mean of that diagonal)."""
    x = torch.randn(3, 2, 4, 4, generator=rng, dtype=torch.float64)
    body = [nl.conv(5, 3, sigma_b=0.1), nl.activation("erf"), nl.avg_pool(2, stride=1, padding="same"),
            nl.conv_transpose(5, 3, stride=2)]
    pixels = pixel_kernels(nl.serial(*body), x)
    flat = analytic_kernels(nl.serial(*body, nl.flatten(), nl.dense(1, sigma_w=1.0)), x, diagonal=True)
    # dense(σ_w = 1, no σ_b) after flatten: Σ = mean over pixels; Θ = that + mean of pixel Θ
    assert torch.allclose(flat.nngp, pixels.nngp.mean(dim=(1, 2)), rtol=1e-13)
    assert torch.allclose(flat.ntk, pixels.nngp.mean(dim=(1, 2)) + pixels.ntk.mean(dim=(1, 2)), rtol=1e-13)


def test_pixel_kernels_refuse_nets_that_end_with_vectors():
    with pytest.raises(ValueError, match="needs a net that ends with images"):
        pixel_kernels(nl.serial(nl.conv(2, 3), nl.flatten(), nl.dense(1)), torch.ones(1, 1, 3, 3))


@pytest.mark.slow
def test_monte_carlo_transposed_conv_kernels_converge_like_channels_to_the_minus_half():
    """As for convs (test_layers.py): the relative Frobenius error of the empirical NTK and readout NNGP
    of a net with two transposed convs falls like c^(−1/2) from 16 to 512 channels."""
    arch_of = lambda c: nl.serial(nl.conv(c, 3, stride=2, sigma_w=1.5, sigma_b=0.1), nl.activation("relu"),
                                  nl.conv_transpose(c, 3, stride=2, sigma_w=1.5, sigma_b=0.1), nl.activation("relu"),
                                  nl.conv_transpose(c, 4, stride=2, sigma_w=1.5), nl.activation("relu"),
                                  nl.flatten(), nl.dense(1, sigma_w=1.5, sigma_b=0.1))
    x = torch.randn(6, 1, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    channels = [16, 32, 64, 128, 256, 512]
    rms, _ = monte_carlo_kernel_errors(arch_of, x, channels, samples=16)
    for kind, values in rms.items():
        slope = fit_power_law(channels, values).exponent
        # theory −1/2; measured with 16 seeds per width on three input draws (generator seeds 5, 6, 7):
        # NTK −0.50 … −0.53, NNGP −0.46 … −0.50. [−0.7, −0.3] holds with margin and excludes both no
        # convergence (0) and a 1/c law (−1)
        assert -0.7 <= slope <= -0.3, (kind, slope, values)


# ----------------------------------------------------------------------------- batch_norm

def _bn_net(seed=0):
    arch = nl.serial(nl.dense(12, sigma_b=0.3), nl.batch_norm(), nl.activation("tanh"), nl.dense(8),
                     nl.batch_norm(), nl.activation("relu"), nl.dense(2, sigma_b=0.1))
    return build_net(arch, in_shape=(5,), seed=seed, dtype=torch.float64)


def test_batch_norm_normalises_each_channel_over_the_batch_and_positions(rng):
    x = 3.0 + 2.0 * torch.randn(6, 4, 3, 5, generator=rng, dtype=torch.float64)
    layer = build_net(nl.serial(nl.conv(4, 1), nl.batch_norm(eps=0.0), nl.flatten(), nl.dense(1)), (4, 3, 5), seed=0,
                      dtype=torch.float64).body.children_modules[1]
    with torch.no_grad():
        y = layer(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(y.pow(2).mean(dim=(0, 2, 3)), torch.ones(4, dtype=torch.float64), rtol=1e-13)


def test_batch_norm_ntk_on_a_batch_jacobian_equals_ntvp_equals_autograd(rng):
    net = _bn_net()
    x = torch.randn(7, 5, generator=rng, dtype=torch.float64)
    jacobian = empirical_ntk(net, x, method="jacobian", outputs="full")
    ntvp = empirical_ntk(net, x, method="ntvp", outputs="full")
    # plain autograd: the Jacobian of the whole batch's outputs F(X) (7·2 numbers) in every parameter
    params = [p for p in net.parameters()]
    outputs = net(x).reshape(-1)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(outputs[r], params, retain_graph=True)])
            for r in range(outputs.numel())]
    J = torch.stack(rows)
    autograd = (J @ J.T).reshape(7, 2, 7, 2).permute(0, 2, 1, 3)
    scale = autograd.abs().max()
    # three routes to the same float64 sums: rounding only (1e-10 leaves a wide margin)
    assert (jacobian - autograd).abs().max() <= 1e-10 * scale
    assert (ntvp - autograd).abs().max() <= 1e-10 * scale
    assert torch.allclose(empirical_ntk(net, x), jacobian.diagonal(dim1=-2, dim2=-1).mean(-1), rtol=1e-12)
    # the batch couples the inputs: the kernel of the first 4 inputs as a batch of their own is not
    # the block of the 7-input kernel (the normaliser changed), by far more than rounding
    sub = empirical_ntk(net, x[:4], outputs="full")
    assert (sub - jacobian[:4, :4]).abs().max() > 1e-3 * scale


def test_batch_norm_ntk_refuses_what_it_cannot_define(rng):
    net = _bn_net()
    x = torch.randn(4, 5, generator=rng, dtype=torch.float64)
    with pytest.raises(ValueError, match="defined on one batch: pass the batch as x1 with x2=None"):
        empirical_ntk(net, x, x)
    with pytest.raises(ValueError, match="defined on one batch: pass the batch as x1 with x2=None"):
        empirical_nngp(net, x, x)
    with pytest.raises(ValueError, match="method='structured' needs per-input gradients"):
        empirical_ntk(net, x, method="structured")
    with pytest.raises(ValueError, match="memory_budget"):
        empirical_ntk(net, x, memory_budget=1000)
    with pytest.raises(ValueError, match="batch_norm needs a batch of at least 2 vectors"):
        net(x[:1])
    with pytest.raises(ValueError, match="no infinite-width rule"):
        analytic_kernels(net.arch, x)


def test_torch_batch_norm_modules_in_training_mode_are_batch_ntks(rng):
    """Any nn.Module with a BatchNorm in training mode gets the batch NTK; in eval mode (running
    statistics) it is a per-input function again and the usual chunked kernel applies."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1)).double()
    x = torch.randn(6, 5, generator=rng, dtype=torch.float64)
    running_mean = model[1].running_mean.clone()
    batch = empirical_ntk(model, x, method="jacobian")
    assert torch.allclose(batch, empirical_ntk(model, x, method="ntvp"), rtol=1e-10, atol=1e-12)
    assert torch.equal(model[1].running_mean, running_mean) and model[1].track_running_stats   # left as it was
    with torch.no_grad():
        model(x)           # one training-mode forward: running statistics move away from (0, 1)
    model.eval()
    per_input = empirical_ntk(model, x, method="jacobian")
    assert torch.allclose(per_input, empirical_ntk(model, x, method="ntvp"), rtol=1e-10, atol=1e-12)
    assert (per_input - batch).abs().max() > 1e-3 * batch.abs().max()
    # the NNGP by outputs is f(x)·f(x') on the batch, and leaves the running statistics alone too
    model.train()
    running_mean = model[1].running_mean.clone()
    with torch.no_grad():
        outputs = model[3](model[2](torch.nn.functional.batch_norm(
            model[0](x), None, None, model[1].weight, model[1].bias, training=True)))
    assert torch.allclose(empirical_nngp(model, x), outputs @ outputs.T, rtol=1e-12)
    assert torch.equal(model[1].running_mean, running_mean)


# ----------------------------------------------------------------------------- unflatten: a generator's first layer

def _generator(c, out_channels=1, sigma_b=0.1):
    # Aligned offsets keep a pair's position difference through convs and double it through a stride-2
    # transposed conv, and a pool reads differences up to its window − 1: the 3×3 pool after the first
    # upsampling reads the unflattened image's neighbouring pairs, so their covariance (0 in the limit)
    # matters here. After both upsamplings a 2×2 pool would not see them.
    return nl.serial(nl.dense(c * 9, sigma_w=1.2, sigma_b=sigma_b), nl.unflatten(c, 3, 3),
                     nl.conv_transpose(c, 3, stride=2, sigma_w=1.4, sigma_b=sigma_b), nl.activation("relu"),
                     nl.avg_pool(3, stride=1, padding="same"),
                     nl.conv_transpose(c, 4, stride=2, sigma_w=1.4), nl.activation("tanh"),
                     nl.conv(out_channels, 3, sigma_w=1.3))


def test_unflatten_kernel_is_the_vector_kernel_at_each_position(rng):
    """After dense → unflatten, Σ(s, s') = δ_{ss'} Σ_dense and so on through the image layers: the
    generator's kernel on latent vectors equals that of the same image layers on an 'image' input whose
    pixels are independent copies — checked against Monte Carlo of finite generators."""
    from ntklab import monte_carlo_kernels

    z = torch.randn(3, 6, generator=rng, dtype=torch.float64)
    # the generator's one-channel image: its pixel kernels' mean is what a flatten readout's diagonal reads
    pixels = pixel_kernels(_generator(8), z)
    flat = analytic_kernels(nl.serial(_generator(8), nl.flatten(), nl.dense(1)), z)
    assert pixels.nngp.shape == (3, 12, 12)
    assert torch.allclose(flat.nngp.diagonal(), pixels.nngp.mean(dim=(1, 2)), rtol=1e-13)
    # Monte Carlo needs every layer wide, so here the last conv keeps c channels
    arch = lambda c: nl.serial(_generator(c, out_channels=c), nl.flatten(), nl.dense(1))
    analytic = analytic_kernels(arch(8), z)
    mc = monte_carlo_kernels(arch(128), z, n_samples=16, seed=3)
    # 16 nets of 128 channels, seeds 3–6: NNGP errors 0.033–0.039 (mostly finite-width bias: 0.048, 0.035,
    # 0.020 at 64, 128, 256 channels), NTK 0.006–0.011. An unflatten rule without the δ (every pair of
    # positions correlated like a position with itself) is off by 0.15 (NNGP) and 0.24 (NTK) against the
    # same Monte Carlo, so these bounds separate the two.
    for kind, bound in (("nngp", 0.065), ("ntk", 0.03)):
        err = ((getattr(mc, kind) - getattr(analytic, kind)).norm() / getattr(analytic, kind).norm()).item()
        assert err < bound, (kind, err)


def test_unflatten_refuses_an_uncentred_input():
    arch = nl.serial(nl.dense(18), nl.activation("relu"), nl.unflatten(2, 3, 3), nl.flatten(), nl.dense(1))
    with pytest.raises(ValueError, match="layer 2 \\(unflatten\\(2, 3, 3\\)\\): its input does not have zero mean"):
        analytic_kernels(arch, torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unflatten to \\(2, 3, 3\\) takes vectors of 18 features"):
        build_net(nl.serial(nl.dense(17), nl.unflatten(2, 3, 3), nl.flatten(), nl.dense(1)), (4,))
