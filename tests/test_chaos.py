"""Freeze and chaos in finite nets (``python -m ntklab chaos``): the limit against the mean-field rates of
:mod:`ntklab.phases`, width-1024 nets against the limit, what layer_norm and batch_norm do to a deep net,
the steps gradient descent needs, and the command's files against independent computations.

Every number is seeded and deterministic (float64 nets from fixed seeds); each tolerance says where it
comes from. The default erf setting: σ_w² = 2.5, the χ_1 = 1 line at σ_b² = 0.752, so σ_b² = 0.05 and 0.5
are chaotic (χ_1 = 1.257, 1.068) and σ_b² = 2 ordered (χ_1 = 0.799).
"""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ntklab import ArchSpec, analytic_kernels, build_mlp, empirical_ntk
from ntklab.commands.chaos import (chaos_layers, finite_net, limit_curves, normalised_pairs, predicted_steps,
                                   probe_inputs, regression_targets, validate)
from ntklab.dynamics import max_learning_rate
from ntklab.errors import ConfigError
from ntklab.layers.net import build_net
from ntklab.phases import (condition_number, correlation_fixed_point, critical_sigma_b2, layer_norm_chi_1, mean_field,
                           sphere_pair_and_points, spec_from_variances)
from tests.helpers import compose_config, start_ntklab, stop_all

CHAOTIC, NEAR, ORDERED = 0.05, 0.5, 2.0


@pytest.fixture(scope="module")
def setup():
    cfg = compose_config("chaos", ["train.archs=[]"])
    correlations = list(cfg.correlations)
    x = probe_inputs((cfg.dim,), correlations, cfg.n_random, cfg.data_seed)
    return cfg, correlations, x, regression_targets(x.shape[0], cfg.data_seed)


def _finite(cfg, x, y, norm, sigma_b2, depth, seeds, position="pre", width=None):
    """(seeds, C) normalised NTKs of finite MLPs."""
    if width is not None or position != "pre":
        cfg = compose_config("chaos", ["train.archs=[]", f"norm_position={position}",
                                       f"width={width or cfg.width}"])
    records = [finite_net(cfg, "mlp", norm, sigma_b2, depth, seed, x, y, torch.float64, len(cfg.correlations),
                          False, {"finite_ntk": 0.0}) for seed in seeds]
    return torch.tensor([r["normalised_ntk"] for r in records], dtype=torch.float64)


def test_probe_inputs_have_the_asked_correlations():
    for shape in ((16,), (1, 6, 6)):
        x = probe_inputs(shape, [0.9, 0.5, 0.0, -0.5], 3, seed=4).flatten(1)
        dim = x.shape[1]
        assert x.shape[0] == 8
        torch.testing.assert_close((x * x).sum(1) / dim, torch.ones(8, dtype=torch.float64), rtol=1e-14, atol=0)
        torch.testing.assert_close(x[0] @ x[1:5].T / dim, torch.tensor([0.9, 0.5, 0.0, -0.5], dtype=torch.float64),
                                   rtol=0, atol=1e-14)
    # a plain MLP's limit depends on the inner products only: the same pair built on coordinate axes
    # (ntklab.phases.sphere_pair_and_points) gives the same normalised NTK to rounding
    x = probe_inputs((10,), [0.5], 0, seed=1)
    spec = spec_from_variances("erf", 2.5, 0.5, depth=3)
    ours = normalised_pairs(analytic_kernels(spec, x).ntk, 1)[0]
    theirs = normalised_pairs(analytic_kernels(spec, sphere_pair_and_points(0.5, 2, 10)).ntk, 1)[0]
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_settings_straddle_the_critical_line():
    critical = critical_sigma_b2("erf", 2.5)
    # bisection to ~100/2^60: χ_1 there is 1 to float64 resolution of the mean-field solver
    assert mean_field("erf", 2.5, critical).chi_1.item() == pytest.approx(1.0, abs=1e-9)
    assert 0.5 < critical < 2.0
    assert critical_sigma_b2("relu", 2.5) is None          # relu's χ_1 = σ_w²/2 whatever σ_b²


def test_limit_freezes_in_the_ordered_phase_and_decays_at_the_mean_field_rate(setup):
    cfg, correlations, x, _ = setup
    ordered = limit_curves(cfg, "mlp", "none", ORDERED, x, len(correlations))
    # χ_1 = 0.80: 1 − ρ shrinks by ~χ_1 per layer; measured 1 − ρ(50) ≤ 2.8e-4 for every pair (c = −0.5 too)
    assert all(column[49] > 0.999 for column in ordered["normalised_ntk"])
    assert ordered["condition_number"][49] > 1e5           # a frozen (near rank-one) kernel: measured 1.36e5
    for sigma_b2 in (CHAOTIC, NEAR):
        chaotic = limit_curves(cfg, "mlp", "none", sigma_b2, x, len(correlations))
        field = mean_field("erf", 2.5, sigma_b2)
        _, chi_c = correlation_fixed_point("erf", 2.5, sigma_b2)
        predicted = max(1.0, chi_c) / field.chi_1.item()      # (ntklab.phases) 0.795 and 0.936 per layer
        for column in chaotic["normalised_ntk"]:
            assert 0 < column[49] < 0.05
            # the per-layer ratio at depth 50 against the asymptotic rate: measured within 1.0% (the
            # subleading terms of Θ^l = Σ^l + χΘ^{l−1} decay like (χ_{c*}/χ_1)^l), so 1.5% allowed
            assert column[49] / column[48] == pytest.approx(predicted, rel=0.015)
        assert chaotic["condition_number"][49] < 1.5          # near a multiple of the identity: measured 1.00005, 1.37


def test_layer_norm_limit_follows_its_own_chi_1(setup):
    # layer_norm pins the variances, so its net has its own χ_1 (layer_norm_chi_1); where the LN net is
    # chaotic its normalised NTK decays like 1/χ_1^LN per layer (the off-diagonal slope is < 1 here).
    cfg, correlations, x, _ = setup
    for position, sigma_b2 in (("pre", CHAOTIC), ("post", CHAOTIC), ("post", NEAR)):
        cfg_p = compose_config("chaos", [f"norm_position={position}"])
        chi = layer_norm_chi_1("erf", 2.5, sigma_b2, position)
        curve = limit_curves(cfg_p, "mlp", "layer_norm", sigma_b2, x, len(correlations))
        # measured ratios at depth 50: pre 0.833–0.856 (1/χ = 0.851), post 0.661–0.663 (0.663), 0.742 (0.743)
        for column in curve["normalised_ntk"]:
            assert column[49] / column[48] == pytest.approx(1.0 / chi, rel=0.025)
    # pre-activation layer_norm at σ_b² = 0.5: χ_1^LN = 0.857 < 1 although the plain net is chaotic (1.068)
    assert layer_norm_chi_1("erf", 2.5, NEAR, "pre") < 1.0 < mean_field("erf", 2.5, NEAR).chi_1.item()
    frozen = limit_curves(cfg, "mlp", "layer_norm", NEAR, x, len(correlations))
    assert min(column[49] for column in frozen["normalised_ntk"]) > 0.99     # measured 0.9943


def test_width_1024_nets_track_the_limit(setup):
    # Measured over seeds 0–4 (width 1024, float64): |finite − limit| at most 0.027 (depth 1) and 0.059 (depth 4)
    # for every pair and σ_b² ∈ {0.05, 2}; the spread over seeds (std) at most 0.015 and 0.033. Allowed: 0.08
    # for each of seeds 0–2 (≈ 2.5 std at depth 4) and 0.05 for their mean.
    cfg, correlations, x, y = setup
    for sigma_b2 in (CHAOTIC, ORDERED):
        limit = limit_curves(cfg, "mlp", "none", sigma_b2, x, len(correlations))
        for depth in (1, 4):
            expected = torch.tensor([column[depth - 1] for column in limit["normalised_ntk"]], dtype=torch.float64)
            values = _finite(cfg, x, y, "none", sigma_b2, depth, range(3), width=1024)
            assert (values - expected).abs().max().item() < 0.08
            assert (values.mean(0) - expected).abs().max().item() < 0.05


@pytest.mark.slow
def test_width_1024_nets_track_the_limit_at_depth_16(setup):
    # Measured over seeds 0–4: |finite − limit| at most 0.10 (chaotic σ_b² = 0.05, c = 0.9, std 0.054; the
    # fluctuations grow like √(depth/width)) and 0.035 (ordered); allowed 0.15 and 0.06.
    cfg, correlations, x, y = setup
    for sigma_b2, tolerance in ((CHAOTIC, 0.15), (ORDERED, 0.06)):
        limit = limit_curves(cfg, "mlp", "none", sigma_b2, x, len(correlations))
        expected = torch.tensor([column[15] for column in limit["normalised_ntk"]], dtype=torch.float64)
        values = _finite(cfg, x, y, "none", sigma_b2, 16, range(3), width=1024)
        assert (values - expected).abs().max().item() < tolerance


def test_layer_norm_after_the_activation_moves_a_deep_net_toward_chaos(setup):
    # The claim (Jacot et al. 2019): normalisation pushes toward chaos. With layer_norm after φ (post) it holds,
    # in the limit and in finite nets (width 256, seeds 0–2), at depth 32, for every σ_b², the ordered one too.
    cfg, correlations, x, y = setup
    cfg_post = compose_config("chaos", ["norm_position=post"])
    for sigma_b2 in (CHAOTIC, NEAR, ORDERED):
        plain = limit_curves(cfg, "mlp", "none", sigma_b2, x, len(correlations))
        normed = limit_curves(cfg_post, "mlp", "layer_norm", sigma_b2, x, len(correlations))
        for a, b in zip(plain["normalised_ntk"], normed["normalised_ntk"]):
            assert abs(b[31]) < abs(a[31])
    # finite, ordered σ_b² = 2, c = 0.5, seeds 0–2: measured without 0.987–0.991, with layer_norm 0.11, 0.32, 0.21
    j = correlations.index(0.5)
    without = _finite(cfg, x, y, "none", ORDERED, 32, range(3))[:, j]
    with_ln = _finite(cfg, x, y, "layer_norm", ORDERED, 32, range(3), position="post")[:, j]
    assert without.min() > 0.9 and with_ln.max() < 0.5


def test_layer_norm_before_the_activation_can_move_a_deep_net_toward_freeze(setup):
    # Where it does not reproduce: layer_norm between dense and φ (pre, the place ntklab's layer_norm has a limit
    # for any φ) pins the pre-activation variance to 1 < q*, and χ_1^LN = 0.45 < χ_1 = 0.80 at σ_b² = 2: the
    # deep net freezes harder. Measured at depth 32, c = 0.5: without 0.993 (limit), 0.987–0.991 (width 256),
    # with 1.000 (both). At σ_b² = 0.5 the plain net is chaotic (χ_1 = 1.07) but the LN net ordered (0.86):
    # depth 50, limit, without 0.030, with 0.996.
    cfg, correlations, x, y = setup
    j = correlations.index(0.5)
    plain = limit_curves(cfg, "mlp", "none", ORDERED, x, len(correlations))["normalised_ntk"][j][31]
    normed = limit_curves(cfg, "mlp", "layer_norm", ORDERED, x, len(correlations))["normalised_ntk"][j][31]
    assert plain < normed and normed > 0.9999
    plain = limit_curves(cfg, "mlp", "none", NEAR, x, len(correlations))["normalised_ntk"][j][49]
    normed = limit_curves(cfg, "mlp", "layer_norm", NEAR, x, len(correlations))["normalised_ntk"][j][49]
    assert plain < 0.05 and normed > 0.99
    finite = _finite(cfg, x, y, "layer_norm", ORDERED, 32, range(2))[:, j]
    assert finite.min() > 0.999


def test_batch_norm_moves_a_deep_ordered_net_toward_chaos(setup):
    # batch_norm (before φ) subtracts the batch mean of every pre-activation, the mode the bias shares across
    # inputs (so σ_b² acts only through the readout's bias), and the ordered net no longer freezes. Measured at
    # depth 32, c = 0.5, width 256, seeds 0–2: without 0.987–0.991; with batch_norm −0.23, −0.39, 0.04 (the same
    # to 3 digits at σ_b² = 0.05 and 0.5). No limit exists; 0.5 allowed: the seeds' spread (std 0.22) above 0.39.
    cfg, correlations, x, y = setup
    j = correlations.index(0.5)
    without = _finite(cfg, x, y, "none", ORDERED, 32, range(3))[:, j]
    with_bn = _finite(cfg, x, y, "batch_norm", ORDERED, 32, range(3))[:, j]
    assert without.min() > 0.9 and with_bn.abs().max() < 0.5


def test_an_ordered_net_needs_more_steps_than_a_chaotic_one(setup):
    # Full-batch GD on the 12 probe inputs with y ~ N(0, 1), η = η_max/2 of each net's own NTK, target 1% of L_0,
    # cap 200 steps (width 256, seed 0). Measured (the default run, seeds 0 and 1): ordered σ_b² = 2 needs 30–74
    # steps up to depth 8, 35–102 at depth 16 and does not reach the target by depth 32 (condition number
    # 3e3–1e4; the loss is still at 1–6% of L_0), the kernel prediction saying the same; the chaotic σ_b² = 0.05
    # needs 4–6 steps at depth 8 (condition number 2.5–2.8).
    shallow, chaotic = _trained(setup, ORDERED, 4), _trained(setup, CHAOTIC, 8)
    assert 20 <= shallow["steps_to_loss"] <= 60                          # measured 34
    # the kernel regime predicts a shallow net's steps: measured 32 against 34
    assert shallow["steps_predicted"] == pytest.approx(shallow["steps_to_loss"], rel=0.2)
    assert chaotic["steps_to_loss"] <= 10 and chaotic["condition_number"] < 10      # measured 4 steps, 2.5


@pytest.mark.slow
def test_a_deep_ordered_net_does_not_reach_the_loss(setup):
    # depth 32, σ_b² = 2 (see above): 200 steps of a 32-layer net, ~10 s on a loaded core
    deep = _trained(setup, ORDERED, 32)
    assert deep["steps_to_loss"] is None and deep["steps_predicted"] is None
    assert 0.01 < deep["final_loss_ratio"] < 0.2                         # measured 0.059
    assert deep["condition_number"] > 1e3                                # measured 3.1e3


def _trained(setup, sigma_b2, depth):
    cfg, correlations, x, y = setup
    return finite_net(cfg, "mlp", "none", sigma_b2, depth, 0, x, y, torch.float64, len(correlations), True,
                      {"finite_ntk": 0.0, "training": 0.0})


def test_predicted_steps_follow_the_linear_recursion():
    # the kernel regime's steps against the recursion r ← (I − ηΘ/N) r it solves in closed form
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    ntk = a @ a.T + 0.05 * torch.eye(6, dtype=torch.float64)
    f0 = torch.randn(6, 1, generator=generator, dtype=torch.float64)
    y = torch.randn(6, 1, generator=generator, dtype=torch.float64)
    lr = max_learning_rate(ntk, 1, 0.5)
    residual, step = f0 - y, 0
    start = (residual ** 2).sum()
    while (residual ** 2).sum() > 0.01 * start:
        residual = residual - lr / 6 * ntk @ residual
        step += 1
    assert predicted_steps(ntk, f0, y, lr, 0.01, 10_000) == step
    assert predicted_steps(ntk, f0, y, lr, 0.01, step - 1) is None


def test_condition_number_and_its_rounding_rule():
    kernel = torch.diag(torch.tensor([1.0, 2.0, 8.0], dtype=torch.float64))
    assert condition_number(kernel) == pytest.approx(8.0, rel=1e-14)
    assert condition_number(torch.ones(3, 3, dtype=torch.float64)) == math.inf     # rank one: λ_min is rounding


def test_chaos_layers_without_norm_are_the_mlp_of_the_spec():
    # the same layers in the same order, so the same seed draws the same parameters as build_mlp
    spec = spec_from_variances("erf", 2.5, 0.5, depth=3, width=32)
    x = probe_inputs((8,), [0.5], 2, seed=0)
    ours = empirical_ntk(build_net(chaos_layers("mlp", 3, 32, "erf", 2.5, 0.5), (8,), seed=5, dtype=torch.float64), x)
    theirs = empirical_ntk(build_mlp(spec, 8, seed=5, dtype=torch.float64), x)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=0)


def test_chaos_config_values_are_checked():
    from omegaconf import OmegaConf

    cfg = compose_config("chaos")
    validate(cfg)
    cases = {"activation": "foo", "sigma_w2": 0.0, "sigma_b2": [-1.0], "archs": ["rnn"], "norms": [],
             "norm_position": "middle", "depths": [4, 2], "width": 0, "correlations": [1.0], "dim": 8,
             "plot_correlation": 0.3, "train.seeds": 4, "train.max_steps": 0, "train.loss_fraction": 1.0,
             "train.lr_fraction": 1.5, "train.archs": ["foo"], "dtype": "float16", "memory_budget_gb": 0.0,
             "image_size": 1}
    for field, value in cases.items():       # one composed config, each bad value set on a copy (Hydra is slow)
        bad = cfg.copy()
        OmegaConf.update(bad, field, value, merge=False)
        with pytest.raises(ConfigError, match=f"^{field}:"):
            validate(bad)


@pytest.fixture(scope="module")
def command_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chaos")
    runs = {"ok": start_ntklab("chaos", "archs=[mlp,cnn]", "norms=[none,batch_norm]", "sigma_b2=[0.05,2]",
                               "depths=[1,3]", "seeds=2", "width=32", "cnn_channels=4", "image_size=4",
                               "train.max_steps=20", "train.seeds=1", "progress=false",
                               f"hydra.run.dir={tmp / 'run'}", cwd=tmp),
            "bad": start_ntklab("chaos", "depths=[3,1]", f"hydra.run.dir={tmp / 'bad'}", cwd=tmp)}
    yield tmp, runs
    stop_all(list(runs.values()))


def test_chaos_command_writes_its_files(command_run):
    tmp, runs = command_run
    run_dir = tmp / "run"
    out, err = runs["ok"].communicate(timeout=300)
    assert runs["ok"].returncode == 0, err
    summary = json.loads((run_dir / "chaos.json").read_text())
    assert [s["phase"] for s in summary["settings"]] == ["chaotic", "ordered"]
    bn = [c for c in summary["curves"] if c["norm"] == "batch_norm"]
    assert len(bn) == 4 and all(c["limit"] is None and "batch_norm" in c["no_limit"] for c in bn)
    with open(run_dir / "normalised_ntk.csv") as f:
        rows = list(csv.DictReader(f))
    # the limit of the plain MLP at depth 3, c = 0.5, σ_b² = 2, recomputed from an ArchSpec on the axes pair
    row = next(r for r in rows if r["arch"] == "mlp" and r["norm"] == "none" and r["source"] == "limit"
               and r["depth"] == "3" and float(r["sigma_b2"]) == 2.0 and float(r["correlation"]) == 0.5)
    kernel = analytic_kernels(spec_from_variances("erf", 2.5, 2.0, depth=3), sphere_pair_and_points(0.5, 2, 16)).ntk
    assert float(row["normalised_ntk"]) == pytest.approx((kernel[0, 1] / kernel.diagonal().prod().sqrt()).item(),
                                                         rel=1e-10)
    # a finite net's number: seed 1, depth 1, from build_mlp of the same ArchSpec and numpy
    x = probe_inputs((16,), [0.9, 0.5, 0.0, -0.5], 7, 0)
    net = build_mlp(ArchSpec(depth=1, width=32, activation="erf", sigma_w=math.sqrt(2.5), sigma_b=math.sqrt(0.05)),
                    16, seed=1, dtype=torch.float64)
    theta = empirical_ntk(net, x, method="jacobian").numpy()
    row = next(r for r in rows if r["arch"] == "mlp" and r["norm"] == "none" and r["source"] == "finite"
               and r["depth"] == "1" and r["seed"] == "1" and float(r["sigma_b2"]) == 0.05
               and float(r["correlation"]) == -0.5)
    assert float(row["normalised_ntk"]) == pytest.approx(theta[0, 4] / math.sqrt(theta[0, 0] * theta[4, 4]), rel=1e-9)
    with open(run_dir / "nets.csv") as f:
        nets = list(csv.DictReader(f))
    row = next(r for r in nets if r["arch"] == "mlp" and r["norm"] == "none" and r["source"] == "finite"
               and r["depth"] == "1" and r["seed"] == "1" and float(r["sigma_b2"]) == 0.05)
    assert float(row["condition_number"]) == pytest.approx(np.linalg.cond(theta), rel=1e-8)
    assert row["steps_to_loss"] == "" and "not trained" in row["note"]          # train.seeds=1: seed 0 only
    trained = [r for r in nets if r["arch"] == "mlp" and r["source"] == "finite" and r["seed"] == "0"]
    assert trained and all(r["steps_to_loss"] != "" for r in trained)
    assert all(r["steps_to_loss"] == "" for r in nets if r["arch"] == "cnn")     # train.archs=[mlp]
    for name in ("chaos_normalised_ntk.png", "chaos_condition_number.png", "chaos_steps.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure script redraws from chaos.json and writes the deepest depth's numbers
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "scripts" / "fig_chaos.py"), str(run_dir),
                           "--out", str(tmp / "fig" / "chaos"), "--dpi", "40"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    numbers = json.loads((tmp / "fig" / "chaos.json").read_text())
    row = next(r for r in numbers["deepest"] if r["arch"] == "mlp" and r["norm"] == "none" and r["sigma_b2"] == 2.0)
    curve = next(c for c in summary["curves"] if c["arch"] == "mlp" and c["norm"] == "none" and c["sigma_b2"] == 2.0)
    assert row["depth"] == 3 and row["finite_mean"] == curve["finite"][-1]["normalised_ntk"]["0.5"]["mean"]
    assert (tmp / "fig" / "chaos_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out, err = runs["bad"].communicate(timeout=300)
    assert runs["bad"].returncode == 2 and "depths" in err and "Traceback" not in err
