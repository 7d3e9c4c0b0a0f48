"""Sweeps: a real launcher sweep, collect over every kind of run directory, the figure scripts (the
numbers each saves with its figure, against independent fits and recomputed kernels, and the known
exponents of a synthetic sweep), power-law fits and the SLURM launcher's composed config."""

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ntklab import ArchSpec, analytic_kernels, build_mlp, empirical_ntk, results
from ntklab.collect import collect, read_table, write_table
from ntklab.scaling import can_fit, fit_power_law, fit_with_bootstrap
from ntklab.train import run
from ntklab.train.trainer import load_data
from tests.helpers import ROOT, compose_train, draw, metrics, ntklab

ROOT = Path(__file__).resolve().parents[1]
TINY = ["device=cpu", "data.n_train=16", "data.n_test=16", "data.dim=4", "optim.steps=30", "track.log_steps=6",
        "track.probe_size=8", "track.progress=false", "track.plots=false"]


def test_local_launcher_sweep_then_collect(tmp_path):
    sweep = tmp_path / "sweep"
    out, err, code = ntklab("train", "-m", "hydra/launcher=local", "width=16,32", *TINY,
                            f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, err
    assert (sweep / ".submitit").is_dir()            # the runs went through submitit's executor
    out, err, code = ntklab("collect", str(sweep), cwd=tmp_path)
    assert code == 0, err
    table = pd.read_csv(sweep / "results.csv", dtype={"run_dir": str})
    assert len(table) == 2 and set(table["status"]) == {"ok"}
    assert sorted(table["model.width"]) == [16, 32]
    for column in ("run_dir", "seed", "optim.lr", "final.kernel_change", "initial.kernel_to_limit",
                   "fitted.kernel_change_step_exponent", "timing.per_step_s", "learning_rate"):
        assert column in table.columns, column
    for _, row in table.iterrows():       # each row carries its own run's numbers
        assert row["run_dir"] in ("0", "1")     # relative to the table
        summary = json.loads((sweep / row["run_dir"] / results.SUMMARY).read_text())
        assert row["final.kernel_change"] == pytest.approx(summary["final"]["kernel_change"], rel=1e-12)


def test_collect_keeps_every_status_and_skips_corrupt_files(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    run(compose_train(TINY + ["width=16"]), sweep / "ok")
    run(compose_train(TINY + ["width=16", "optim.lr_unit=absolute", "optim.lr=1e4"]), sweep / "diverged")
    run(compose_train(TINY + ["width=16", "stop_after=5"]), sweep / "unfinished")
    run(compose_train(TINY + ["width=32"]), sweep / "truncated")
    summary = (sweep / "truncated" / results.SUMMARY).read_text()
    (sweep / "truncated" / results.SUMMARY).write_text(summary[: len(summary) // 2])
    (sweep / "unknown").mkdir()         # a summary whose status is none of results.STATUSES
    (sweep / "unknown" / results.CONFIG).write_bytes((sweep / "ok" / results.CONFIG).read_bytes())
    (sweep / "unknown" / results.SUMMARY).write_text(json.dumps({"status": "done", "final": {"step": 30}}))
    from ntklab.train import tracking
    measure = tracking.Tracker.measure

    def fails_after_step_0(self, model, step):
        if step > 0:
            raise RuntimeError("boom")
        return measure(self, model, step)
    monkeypatch.setattr(tracking.Tracker, "measure", fails_after_step_0)
    with pytest.raises(RuntimeError):
        run(compose_train(TINY + ["width=16"]), sweep / "failed")
    report = io.StringIO()
    table, skipped = collect([sweep], report=report)
    by_dir = {Path(r).name: s for r, s in zip(table["run_dir"], table["status"])}
    assert by_dir == {"ok": "ok", "diverged": "diverged", "unfinished": "unfinished", "failed": "failed"}
    assert [p.name for p, _ in skipped] == ["truncated", "unknown"]
    assert "status 'done' is not one of ok, diverged, failed" in skipped[1][1]
    assert str(sweep / "truncated" / results.SUMMARY) in report.getvalue()
    failed = table[table["status"] == "failed"].iloc[0]
    assert "boom" in failed["error"] and failed["final.step"] == 0     # it failed measuring step 1
    unfinished = table[table["status"] == "unfinished"].iloc[0]
    # stopped at step 5: its last log step (schedule 0, 1, 2, 4, 9, ...) is what the table knows
    assert unfinished["steps_done"] == 4 and unfinished["final.step"] == 4
    written = write_table(table, tmp_path / "tables" / "results.csv")
    assert pd.read_csv(written[0]).shape[0] == 4
    assert sorted(read_table(written[0])["run_dir"]) == sorted(table["run_dir"])   # absolute again


def test_bootstrap_interval_needs_two_seeds_with_a_slope_each():
    """Seed 0 at three widths and seed 1 at one: the fit uses all four points, but only one seed has a
    slope of its own, so there is no interval; a second point for seed 1 gives one, and it spans the
    two seeds' own exponents (with two seeds the resamples are each alone or both together)."""
    rows = pd.DataFrame({"width": [64, 256, 1024, 256], "seed": [0, 0, 0, 1], "y": [1.0, 0.5, 0.25, 0.6]})
    single = fit_with_bootstrap(rows, "width", "y")
    assert single.exponent == pytest.approx(fit_power_law(rows["width"], rows["y"]).exponent, rel=1e-12)
    assert np.isnan(single.low) and np.isnan(single.high) and single.n_groups == 2
    rows.loc[4] = {"width": 1024, "seed": 1, "y": 0.2}
    both = fit_with_bootstrap(rows, "width", "y")
    own = [fit_power_law(rows.loc[rows["seed"] == s, "width"], rows.loc[rows["seed"] == s, "y"]).exponent for s in (0, 1)]
    assert both.low == pytest.approx(min(own), rel=1e-12) and both.high == pytest.approx(max(own), rel=1e-12)


def test_values_a_log_cannot_take_are_refused_by_the_fit_and_left_out_of_the_table_fit():
    """inf (a diverged run's quantity), NaN, 0: fit_power_law names them; fit_with_bootstrap fits the
    rest, the exponent that of the finite positive rows alone; can_fit says when fewer than two
    widths remain, which fit_with_bootstrap would refuse."""
    with pytest.raises(ValueError, match="finite positive x and y, got y = inf"):
        fit_power_law([64, 256, 1024], [1.0, np.inf, 0.25])
    rows = pd.DataFrame({"width": [64, 256, 1024, 4096, 64, 256], "seed": [0, 0, 0, 0, 1, 1],
                         "y": [1.0, 0.5, np.inf, 0.2, np.nan, 0.0]})
    fit = fit_with_bootstrap(rows, "width", "y")
    assert fit.n_points == 3 and fit.exponent == pytest.approx(np.polyfit(np.log([64, 256, 4096]),
                                                                          np.log([1.0, 0.5, 0.2]), 1)[0], rel=1e-12)
    assert can_fit(rows, "width", "y")
    two_left = rows[rows["width"] <= 256]          # finite positive y at 64 and 256, from one seed
    one_left = rows[rows["width"].isin([256, 1024])]
    assert can_fit(two_left, "width", "y") and not can_fit(one_left, "width", "y")
    with pytest.raises(ValueError, match="at least two distinct x"):
        fit_with_bootstrap(one_left, "width", "y")


def test_power_law_fit_recovers_a_known_exponent():
    widths = np.array([64, 128, 256, 512, 1024, 2048, 4096, 8192], dtype=float)
    exact = fit_power_law(widths, 3.0 * widths ** -0.5)
    assert exact.exponent == pytest.approx(-0.5, abs=1e-12) and exact.prefactor == pytest.approx(3.0, rel=1e-12)
    rng = np.random.default_rng(0)
    rows = [{"width": w, "seed": s, "y": 3.0 * w ** -0.5 * np.exp(0.05 * rng.standard_normal())}
            for s in range(5) for w in widths]
    fit = fit_with_bootstrap(pd.DataFrame(rows), "width", "y", group="seed")
    # log-noise 0.05 over 40 points with ln-width sd ≈ 1.6: the slope's standard error is ≈ 0.005,
    # so ±0.03 is six of them; the 95% bootstrap interval must cover the truth and be that narrow
    assert fit.exponent == pytest.approx(-0.5, abs=0.03)
    assert fit.low < -0.5 < fit.high and fit.high - fit.low < 0.06
    assert fit.n_groups == 5 and fit.n_points == 40


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """Three tables: 2 parametrizations × 2 widths × 2 seeds on the sphere; 2 widths on the
    circle; 2 lazy scales × 2 seeds."""
    sweep = tmp_path_factory.mktemp("sweep")
    for parametrization in ("ntk", "standard"):
        for width in (16, 64):
            for seed in (0, 1):
                run(compose_train(TINY + [f"parametrization={parametrization}", f"width={width}", f"seed={seed}"]),
                    sweep / f"{parametrization}-{width}-{seed}")
    circle = tmp_path_factory.mktemp("circle")
    for width in (16, 64):
        run(compose_train(TINY + ["data=circle", "data.n_test=32", f"width={width}"]), circle / f"{width}")
    lazy = tmp_path_factory.mktemp("alpha")
    for alpha in (1, 4):
        for seed in (0, 1):
            run(compose_train(TINY + ["width=32", f"model.alpha={alpha}", f"seed={seed}"]), lazy / f"{alpha}-{seed}")
    for folder in (sweep, circle, lazy):
        write_table(collect([folder])[0], folder / "results.csv")
    return {"sweep": sweep, "circle": circle, "alpha": lazy}


def least_squares(x, y):
    """The log-log fit y ≈ C·x^p by its closed form: p = Σ dx·dy / Σ dx², C = exp(mean ln y − p mean ln x)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    dx = lx - lx.mean()
    slope = float(dx @ (ly - ly.mean()) / (dx @ dx))
    return slope, float(np.exp(ly.mean() - slope * lx.mean()))


def assert_fit_is(fit, x, y, n_groups):
    slope, prefactor = least_squares(x, y)
    assert fit["exponent"] == pytest.approx(slope, rel=1e-9, abs=1e-12)
    assert fit["prefactor"] == pytest.approx(prefactor, rel=1e-9)
    assert fit["n_points"] == len(x) and fit["n_groups"] == n_groups
    assert fit["low"] <= fit["exponent"] <= fit["high"]


def ok_runs(table_path):
    table = read_table(table_path)
    return table[table["status"] == "ok"]


@pytest.mark.parametrize("script, quantities", [
    ("fig_scaling", ["final.kernel_change", "final.param_drift", "final.kernel_to_limit"]),
    ("fig_init_error", ["initial.kernel_to_limit"])])
def test_width_figures_show_the_fits_of_the_table(small_sweep, script, quantities, tmp_path):
    table = small_sweep["sweep"] / "results.csv"
    numbers = draw(script, table, tmp_path)
    runs = ok_runs(table)
    assert set(numbers["fits"]) == set(quantities)
    for quantity in quantities:
        assert set(numbers["fits"][quantity]) == {"ntk", "standard"}
        for parametrization, fit in numbers["fits"][quantity].items():
            rows = runs[runs["model.parametrization"] == parametrization]
            assert_fit_is(fit, rows["model.width"], rows[quantity], n_groups=2)      # widths 16, 64 × seeds 0, 1


def test_collect_reports_the_same_run_twice(small_sweep, tmp_path):
    # seed=0,1 with seeds=2 trains seed 1 in both jobs: two folders of one run, which a mean counts twice
    shutil.copytree(small_sweep["sweep"] / "ntk-16-1", tmp_path / "job0" / "seed_1")
    shutil.copytree(small_sweep["sweep"] / "ntk-16-1", tmp_path / "job1" / "seed_1")
    shutil.copytree(small_sweep["sweep"] / "ntk-16-0", tmp_path / "job0" / "seed_0")
    report = io.StringIO()
    table, _ = collect([tmp_path], report=report)
    assert len(table) == 3
    lines = report.getvalue().splitlines()
    assert lines == [f"ntklab collect: {tmp_path / 'job0' / 'seed_1'}, {tmp_path / 'job1' / 'seed_1'} are the same run "
                     "(equal config and numbers; seed 1): a mean over the table counts it 2 times"]


def test_settings_compare_as_a_table_writes_them():
    # the same setting read back from CSV (text, a column with gaps as floats) and from parquet (arrays)
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from figure_common import setting_text

    from_csv = pd.Series(["[1, 2]", 64.0, math.nan, None, "relu"])
    from_parquet = pd.Series([np.array([1, 2]), 64, pd.NA, math.nan, "relu"], dtype=object)
    assert setting_text(from_csv).tolist() == setting_text(from_parquet).tolist() == ["[1, 2]", "64", "null", "null",
                                                                                      "relu"]
    assert setting_text(pd.Series([0.5, [], (3,)], dtype=object)).tolist() == ["0.5", "[]", "[3]"]


def test_a_width_fit_refuses_runs_of_two_experiments(small_sweep, tmp_path):
    # one fit over runs of two data sets (here: seed 1's rows relabelled) would be no exponent of either
    runs = read_table(small_sweep["sweep"] / "results.csv")
    runs.loc[runs["seed"] == 1, "data.name"] = "circle"
    runs.to_csv(tmp_path / "mixed.csv", index=False)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fig_scaling.py"), str(tmp_path / "mixed.csv"),
                           "--out", str(tmp_path / "mixed")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "the ntk fit of final.kernel_change against width would pool runs that differ in data.name" in done.stderr
    assert not (tmp_path / "mixed.png").exists()


def test_regimes_figure_shows_the_fits_of_both_tables(small_sweep, tmp_path):
    alpha_table = small_sweep["alpha"] / "results.csv"
    numbers = draw("fig_regimes", small_sweep["sweep"] / "results.csv", tmp_path, "--alpha", str(alpha_table))
    runs, lazy = ok_runs(small_sweep["sweep"] / "results.csv"), ok_runs(alpha_table)
    for parametrization, fit in numbers["width_fits"].items():
        rows = runs[runs["model.parametrization"] == parametrization]
        assert_fit_is(fit, rows["model.width"], rows["final.kernel_change"], n_groups=2)
    for name in ("final.kernel_change", "final.pred_gap_linear"):
        assert_fit_is(numbers["alpha_fits"][name], lazy["model.alpha"], lazy[name], n_groups=2)    # α = 1, 4
        means = numbers["alpha_means"][name]
        assert means["alpha"] == [1.0, 4.0]
        assert means["mean"] == pytest.approx([lazy.loc[lazy["model.alpha"] == a, name].mean() for a in (1, 4)],
                                              rel=1e-12)


def test_training_curves_figure_shows_each_width_of_one_seed(small_sweep, tmp_path):
    numbers = draw("fig_training_curves", small_sweep["sweep"] / "results.csv", tmp_path)
    assert numbers["parametrization"] == "ntk" and numbers["seed"] == 0
    assert [c["width"] for c in numbers["curves"]] == [16, 64]
    for curve in numbers["curves"]:
        run_dir = Path(curve["run_dir"])
        config = yaml.safe_load((run_dir / results.CONFIG).read_text())
        assert (config["model"]["width"], config["seed"], config["parametrization"]) == (curve["width"], 0, "ntk")
        records = [r for r in metrics(run_dir) if r["step"] >= 1]
        assert curve["step"] == [r["step"] for r in records]
        for name in ("train_loss", "test_loss", "pred_train_loss_analytic", "pred_test_loss_analytic"):
            assert curve[name] == [r[name] for r in records], name


def test_outputs_figure_shows_the_gap_the_run_measured(small_sweep, tmp_path):
    numbers = draw("fig_outputs", small_sweep["sweep"] / "results.csv", tmp_path)
    assert [(p["width"], p["parametrization"], p["seed"]) for p in numbers["panels"]] == [(16, "ntk", 0), (64, "ntk", 0)]
    for panel in numbers["panels"]:
        # the script's RMS gap from predictions.pt; the run's pred_gap_analytic from its tracker, in memory
        final = json.loads((Path(panel["run_dir"]) / results.SUMMARY).read_text())["final"]
        assert panel["rms_gap"] == pytest.approx(final["pred_gap_analytic"], rel=1e-9)
        assert panel["n_points"] == 16


def test_circle_figure_shows_the_kernel_rows_and_their_limit(small_sweep, tmp_path):
    numbers = draw("fig_circle", small_sweep["circle"] / "results.csv", tmp_path)
    n_test = 32
    assert numbers["gamma"] == pytest.approx([2 * math.pi * j / n_test for j in range(n_test)], rel=1e-15)
    assert [c["width"] for c in numbers["curves"]] == [16, 64]
    cfg = compose_train(TINY + ["data=circle", f"data.n_test={n_test}", "width=16"])
    data = load_data(cfg.data)
    spec = ArchSpec(depth=2, width=16, activation="relu")
    # the limit Θ(x_0, x(γ)) recomputed from the data set (the analytic NTK does not depend on width);
    # the run took it in float64 from its float32 copy of the inputs, hence agreement to ~1e-7, not 1e-15
    limit = analytic_kernels(spec, data.x_test[:1], data.x_test).ntk[0]
    assert numbers["limit"] == pytest.approx(limit.tolist(), rel=1e-6)
    for curve in numbers["curves"]:
        # the initial row: the seed's float32 net rebuilt here, its kernel by the Jacobian contraction
        net = build_mlp(ArchSpec(depth=2, width=curve["width"], activation="relu"), in_dim=2, seed=curve["seed"])
        x = data.x_test.float()
        expected = empirical_ntk(net, x[:1], x, method="jacobian")[0].double()
        torch.testing.assert_close(torch.tensor(curve["init"], dtype=torch.float64), expected, rtol=1e-5, atol=1e-6)
        assert curve["final"] != curve["init"]          # trained: the row moved


KNOWN = {"ntk": -0.5, "standard": -0.3}     # exponents of the synthetic sweep against width
LAZY = {"final.kernel_change": -1.0, "final.pred_gap_linear": -2.0}     # and against α ≥ 1


def synthetic_tables(folder):
    """A width sweep and an α sweep whose quantities follow known power laws (log-normal noise of
    0.05, seeded): 2 parametrizations × 7 widths × 4 seeds, and α in {0.25, 0.5, 1, ..., 16} × 4
    seeds at width 32, flat below α = 1 so that a fit including α < 1 would miss the exponent."""
    rng = np.random.default_rng(11)
    noise = lambda: float(np.exp(0.05 * rng.standard_normal()))
    rows = [{"run_dir": f"{p}-{w}-{s}", "status": "ok", "model.parametrization": p, "model.width": int(w), "seed": s,
             **{q: c * float(w) ** exponent * noise() for q, c in (("final.kernel_change", 2.0), ("final.param_drift", 0.5),
                                                                   ("final.kernel_to_limit", 1.0),
                                                                   ("initial.kernel_to_limit", 1.5))}}
            for p, exponent in KNOWN.items() for s in range(4) for w in 16 * 2 ** np.arange(7)]
    lazy = [{"run_dir": f"alpha-{a}-{s}", "status": "ok", "model.parametrization": "ntk", "model.width": 32, "seed": s,
             "model.alpha": a, **{q: 0.3 * max(a, 1.0) ** exponent * noise() for q, exponent in LAZY.items()}}
            for a in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0) for s in range(4)]
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "sweep.csv", index=False)
    pd.DataFrame(lazy).to_csv(folder / "alpha.csv", index=False)
    return folder / "sweep.csv", folder / "alpha.csv"


def test_fitting_figures_recover_the_exponents_of_a_synthetic_sweep(tmp_path):
    sweep, alpha = synthetic_tables(tmp_path / "tables")
    scaling = draw("fig_scaling", sweep, tmp_path)
    init_error = draw("fig_init_error", sweep, tmp_path)
    regimes = draw("fig_regimes", sweep, tmp_path, "--alpha", str(alpha))
    # 28 points per fit with ln-width spread 1.4 and noise 0.05: the slope's standard error is ≈ 0.007,
    # so 0.03 is four of them; the bootstrap over 4 seeds must cover the truth
    fits = [(fit, KNOWN[p]) for table in (scaling["fits"], init_error["fits"], {"": regimes["width_fits"]})
            for by_parametrization in table.values() for p, fit in by_parametrization.items()]
    fits += [(regimes["alpha_fits"][name], exponent) for name, exponent in LAZY.items()]
    assert len(fits) == 3 * 2 + 2 + 2 + 2
    for fit, exponent in fits:
        assert fit["exponent"] == pytest.approx(exponent, abs=0.03)
        assert fit["low"] < exponent < fit["high"] and fit["high"] - fit["low"] < 0.1
    assert regimes["alpha_fits"]["final.kernel_change"]["n_points"] == 5 * 4       # α ≥ 1 only


def test_slurm_launcher_config_composes(tmp_path):
    out, err, code = ntklab("train", "+sweep=width", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                            "hydra.launcher.timeout_min=30", "hydra.launcher.array_parallelism=8", "--cfg", "hydra",
                            cwd=tmp_path)
    assert code == 0, err
    hydra = yaml.safe_load(out)["hydra"]
    launcher = hydra["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["timeout_min"], launcher["array_parallelism"]) == ("gpu", 30, 8)
    assert launcher["gpus_per_node"] == 1 and launcher["max_num_timeout"] == 3
    assert hydra["sweeper"]["params"]["width"] == "64,128,256,512,1024,2048,4096,8192"
    assert hydra["sweep"]["dir"] == "outputs/sweep/width"
