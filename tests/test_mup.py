"""The maximal-update figures and preset: +sweep=regimes gives each parametrization its own step
size (configs/regime/), fig_mup.py shows the numbers of its runs' summaries and predictions, and
fig_coord_check.py the coordinate sizes an independent loop measures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ntklab import ArchSpec, analytic_kernels, build_mlp, results
from ntklab.collect import collect, write_table
from ntklab.data import load_dataset
from ntklab.dynamics import max_learning_rate
from ntklab.train import run
from tests.helpers import compose_train, draw, gradient_descent, ntklab

ROOT = Path(__file__).resolve().parents[1]


def test_regimes_preset_gives_each_parametrization_its_step_size(tmp_path):
    out, err, code = ntklab("train", "+sweep=regimes", "--cfg", "hydra", cwd=tmp_path)
    assert code == 0, err
    params = yaml.safe_load(out)["hydra"]["sweeper"]["params"]
    assert params["+regime"] == "ntk,standard,mup" and params["seed"] == "0,1,2,3"
    steps = {}
    for regime in ("ntk", "standard", "mup"):
        cfg = compose_train(["+sweep=regimes", f"+regime={regime}"])
        assert cfg.parametrization == regime and cfg.optim.lr_unit == "eta_max"
        steps[regime] = cfg.optim.lr
    assert steps == {"ntk": 0.5, "standard": 0.5, "mup": 0.05}


TINY = ["device=cpu", "data.n_train=16", "data.n_test=8", "data.dim=4", "optim.steps=30", "track.log_steps=6",
        "track.probe_size=8", "track.progress=false", "track.plots=false", "track.save_kernels=false"]


def test_a_float32_mup_run_on_few_points_trains(tmp_path):
    """The structured NTK of a float32 net on 8 points is symmetric only to an ulp (max|K − Kᵀ| =
    1.49e-8 here, 2e-8 of max|K|): the run keeps its empirical kernels in float32 so that η_max and the
    linear prediction check their symmetry at float32's rounding, not float64's, and it trains."""
    # the default data (S^9), as `python -m ntklab train +regime=mup dtype=float32 width=128 data.n_train=8`
    # failed before (data.dim=4 happens to give an exactly symmetric kernel)
    summary = run(compose_train(["device=cpu", "+regime=mup", "dtype=float32", "width=128", "data.n_train=8",
                                 "data.n_test=4", "optim.steps=5", "track.log_steps=2", "track.progress=false",
                                 "track.plots=false", "track.save_kernels=false"]), tmp_path)
    assert summary["status"] == "ok" and summary["final"]["train_loss"] < summary["initial"]["train_loss"]
    assert summary["eta_max"]["empirical"] > 0 and summary["final"]["pred_gap_linear"] >= 0


@pytest.fixture(scope="module")
def regimes_table(tmp_path_factory):
    """ntk and mup (their +regime step sizes) × widths 16, 32, 64 × seeds 0, 1, collected."""
    folder = tmp_path_factory.mktemp("regimes")
    for regime in ("ntk", "mup"):
        for width in (16, 32, 64):
            for seed in (0, 1):
                run(compose_train(TINY + [f"+regime={regime}", f"width={width}", f"seed={seed}"]),
                    folder / f"{regime}-{width}-{seed}")
    write_table(collect([folder])[0], folder / "results.csv")
    return folder


def test_mup_figure_shows_the_runs_kernel_change_and_functions(regimes_table, tmp_path):
    numbers = draw("fig_mup", regimes_table / "results.csv", tmp_path)
    for regime in ("ntk", "mup"):
        changes, outputs = {}, {}
        for width in (16, 32, 64):
            runs = [regimes_table / f"{regime}-{width}-{seed}" for seed in (0, 1)]
            changes[width] = [json.loads((r / results.SUMMARY).read_text())["final"]["kernel_change"] for r in runs]
            outputs[width] = np.stack([torch.load(r / results.PREDICTIONS, weights_only=True)["f_final"].numpy()
                                       for r in runs])
        kernel = numbers["kernel_change"][regime]
        assert kernel["width"] == [16, 32, 64]
        assert kernel["mean"] == pytest.approx([np.mean(changes[w]) for w in (16, 32, 64)], rel=1e-12)
        assert kernel["relative_spread"] == pytest.approx(
            [np.std(changes[w], ddof=1) / np.mean(changes[w]) for w in (16, 32, 64)], rel=1e-9)
        assert kernel["fit"]["n_points"] == 6 and kernel["fit"]["n_groups"] == 2
        function = numbers["function"][regime]
        spread = [np.sqrt((outputs[w].std(axis=0, ddof=1) ** 2).mean()) for w in (16, 32, 64)]
        assert function["seed_spread"] == pytest.approx(spread, rel=1e-9)
        widest = outputs[64].mean(axis=0)
        distance = [np.sqrt(((outputs[w].mean(axis=0) - widest) ** 2).mean()) for w in (16, 32)]
        assert function["distance_to_widest"][:2] == pytest.approx(distance, rel=1e-9)
        assert function["distance_to_widest"][2] is None


def test_coordinate_check_figure_shows_independently_measured_sizes(tmp_path):
    stem = tmp_path / "coord"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fig_coord_check.py"), "--out", str(stem),
                           "--widths", "32", "128", "--steps", "2", "--seeds", "1", "--parametrizations", "ntk", "mup"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert stem.with_suffix(".png").stat().st_size > 10_000 and stem.with_suffix(".pdf").exists()
    numbers = json.loads(stem.with_suffix(".json").read_text())
    assert numbers["widths"] == [32, 128] and numbers["layers"] == ["z1", "z2", "f"]
    data = load_dataset("sphere", n_train=64, n_test=1, dim=10)
    x, y = data.x_train.double(), data.y_train.double()
    spec = lambda p, n: ArchSpec(depth=2, width=n, activation="relu", sigma_w=2 ** 0.5, parametrization=p)
    for parametrization in ("ntk", "mup"):
        result = numbers["parametrizations"][parametrization]
        lr = max_learning_rate(analytic_kernels(spec(parametrization, 32), x).ntk, fraction=0.5)
        assert result["learning_rate"] == pytest.approx(lr, rel=1e-12)
        # width 128, seed 0: the hidden pre-activation z^2 and the output after two plain GD steps
        net = build_mlp(spec(parametrization, 128), in_dim=10, seed=0, dtype=torch.float64)
        with torch.no_grad():
            z2, f = net.hidden(x)[1][1], net(x)
        gradient_descent(net, x, y, lr, steps=2)
        with torch.no_grad():
            z2_t, f_t = net.hidden(x)[1][1], net(x)
        rms = lambda t: t.pow(2).mean().sqrt().item()
        assert result["size"]["z2"][1] == pytest.approx(rms(z2), rel=1e-12)
        assert result["change"]["z2"][1][1] == pytest.approx(rms(z2_t - z2), rel=1e-9)
        assert result["change"]["f"][1][1] == pytest.approx(rms(f_t - f), rel=1e-9)
