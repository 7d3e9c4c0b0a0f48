"""Sweeps: a real launcher sweep, collect over every kind of run directory, the figure scripts,
power-law fits and the SLURM launcher's composed config."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ntklab import results
from ntklab.collect import collect, read_table, write_table
from ntklab.scaling import fit_power_law, fit_with_bootstrap
from ntklab.train import run
from tests.test_cli import ntklab
from tests.test_train import compose_train

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
    assert [p.name for p, _ in skipped] == ["truncated"]
    assert str(sweep / "truncated" / results.SUMMARY) in report.getvalue()
    failed = table[table["status"] == "failed"].iloc[0]
    assert "boom" in failed["error"] and failed["final.step"] == 0     # it failed measuring step 1
    unfinished = table[table["status"] == "unfinished"].iloc[0]
    # stopped at step 5: its last log step (schedule 0, 1, 2, 4, 9, ...) is what the table knows
    assert unfinished["steps_done"] == 4 and unfinished["final.step"] == 4
    written = write_table(table, tmp_path / "tables" / "results.csv")
    assert pd.read_csv(written[0]).shape[0] == 4
    assert sorted(read_table(written[0])["run_dir"]) == sorted(table["run_dir"])   # absolute again


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


@pytest.mark.parametrize("script", ["fig_scaling", "fig_init_error", "fig_training_curves", "fig_outputs",
                                    "fig_circle", "fig_regimes"])
def test_figure_script_draws_from_a_small_sweep(small_sweep, script, tmp_path):
    table = small_sweep["circle" if script == "fig_circle" else "sweep"] / "results.csv"
    stem = tmp_path / script
    extra = ["--alpha", str(small_sweep["alpha"] / "results.csv")] if script == "fig_regimes" else []
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), str(table),
                           "--out", str(stem), *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    png = stem.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000      # an empty axes alone is ~5 kB
    assert stem.with_suffix(".pdf").stat().st_size > 1000


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
