"""Finite MLPs: the forward formulas of docs/design.md (section 1), seeding, dtype and device."""

import math

import pytest
import torch

from ntklab import ArchSpec, build_mlp
from tests.helpers import random_inputs


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_forward_is_the_design_formula(parametrization, rng):
    sw, sb = 1.3, 0.2
    spec = ArchSpec(depth=2, width=(7, 5), activation="tanh", sigma_w=sw, sigma_b=sb,
                    parametrization=parametrization, out_dim=3)
    net = build_mlp(spec, in_dim=4, seed=3, dtype=torch.float64)
    x = random_inputs(6, 4, rng)
    h = x
    for i, layer in enumerate(net.layers):
        W, b = layer.weight, layer.bias
        n_in = W.shape[1]
        if parametrization == "ntk":    # z = σ_w/√n W h + σ_b b,  W, b ~ N(0, 1)
            z = sw / math.sqrt(n_in) * h @ W.T + sb * b
        else:                           # z = W h + b,  W ~ N(0, σ_w²/n), b ~ N(0, σ_b²)
            z = h @ W.T + b
        h = torch.tanh(z) if i < len(net.layers) - 1 else z
    # The net multiplies by weight_mult after the matmul, this formula before: the two differ by
    # float64 rounding of sums of ≤ 7 terms, a few ε = 1.1e-16 of the O(1) intermediates per layer
    # (measured ≤ 2.2e-16). That error is absolute, so outputs near 0 (the smallest is 3e-4) need
    # atol 1e-15; rtol 1e-14 (~100 ε) covers the rest. A wrong constant would be off by percents.
    assert torch.allclose(net(x), h, rtol=1e-14, atol=1e-15)


def test_initial_weight_statistics_follow_the_parametrization():
    # 256·512 draws: the sample std is within ~0.2% of its target; 2% is > 10 standard errors.
    for parametrization, expected_std in [("ntk", 1.0), ("standard", 1.5 / math.sqrt(256))]:
        net = build_mlp(ArchSpec(depth=2, width=(256, 512), sigma_w=1.5, parametrization=parametrization),
                        in_dim=3, seed=0, dtype=torch.float64)
        assert net.layers[1].weight.std().item() == pytest.approx(expected_std, rel=0.02)


def test_both_parametrizations_compute_the_same_function_at_init(rng):
    x = random_inputs(5, 4, rng)
    outs = [build_mlp(ArchSpec(depth=3, width=32, sigma_w=1.4, sigma_b=0.3, parametrization=p), 4,
                      seed=11, dtype=torch.float64)(x) for p in ("ntk", "standard")]
    # Same draws, scaled at different places (standard rounds σ_w/√n · W once at initialisation,
    # ntk multiplies after each sum): rounding of 4 layers of sums over 32 terms, typically
    # √32 · ε ≈ 6e-16 per layer; measured ≤ 5e-16 on outputs of size 1e-3 to 3.3. atol 1e-14 covers
    # the outputs near 0, rtol 1e-12 the rest with a wide margin; a parametrization that computed
    # another function would differ by O(1).
    assert torch.allclose(outs[0], outs[1], rtol=1e-12, atol=1e-14)


def test_seed_determines_the_network_across_dtypes(rng):
    spec = ArchSpec(depth=2, width=16)
    x = random_inputs(4, 3, rng)
    a = build_mlp(spec, 3, seed=5, dtype=torch.float64)(x)
    b = build_mlp(spec, 3, seed=5, dtype=torch.float32)(x.float())
    c = build_mlp(spec, 3, seed=6, dtype=torch.float64)(x)
    # Both nets are drawn in float64 and the float32 one is rounded once (relative 6e-8 = 2^-24
    # per weight), then computes in float32: 3 layers of sums over ≤ 16 terms give a few 1e-7
    # relative (measured ≤ 3.2e-7, 2.3e-8 absolute on outputs of 0.07-0.14). rtol 1e-5 + atol 1e-6
    # is ~70× that; another seed moves the outputs by 0.29.
    assert torch.allclose(a, b.double(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, c)


def test_hidden_returns_layer_inputs_and_preactivations(rng):
    net = build_mlp(ArchSpec(depth=2, width=(6, 4), activation="relu"), 3, seed=0, dtype=torch.float64)
    x = random_inputs(5, 3, rng)
    inputs, pre = net.hidden(x)
    assert [t.shape[1] for t in inputs] == [3, 6, 4] and [t.shape[1] for t in pre] == [6, 4]
    # Exact equality: hidden() runs the same operations on the same tensors in the same order as
    # forward(), so the results are bit for bit identical (tolerance 0).
    assert torch.equal(inputs[1], torch.relu(pre[0]))
    assert torch.allclose(net.layers[-1](inputs[-1]), net(x), rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_network_matches_cpu(rng):
    spec = ArchSpec(depth=2, width=64, activation="erf")
    x = random_inputs(8, 3, rng)
    cpu = build_mlp(spec, 3, seed=1, dtype=torch.float64)(x)
    gpu = build_mlp(spec, 3, seed=1, dtype=torch.float64, device="cuda")(x.cuda())
    # Same float64 weights (drawn on the CPU); cuBLAS and the CPU sum the 64-term products in
    # different orders and their erf may differ by an ulp, so the outputs differ by rounding:
    # ~√64 · ε ≈ 1e-15 per layer on O(1) values. 1e-12 is ~1000× that, and far below what
    # different weights on the two devices would give (O(1) differences).
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)
