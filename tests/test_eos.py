"""Where the kernel picture breaks: runs above η_max catapult, runs below stay lazy (the summary's
regime classification, ntklab.train.stability), the spectral quantities are opt-in and leave every
other number as it was, resumes stay exact with them, the +sweep=eos preset, and the three figures
(fig_eos, fig_catapult, fig_hessian_ntk) against the tables and metrics they draw."""

import json
import math
from pathlib import Path

import pytest
import yaml

from ntklab import results
from ntklab.collect import collect, read_table, write_table
from ntklab.config import TrackConfig
from ntklab.errors import ConfigError
from ntklab.quantities import DEFAULT, SPECTRAL, SPECTRAL_FIELDS
from ntklab.train import run
from ntklab.train.stability import THRESHOLDS, classify
from tests.helpers import compose_train, draw, metrics, ntklab

ROOT = Path(__file__).resolve().parents[1]
SPECTRAL_TRACKING = "track.quantities=[param_drift,kernel_change,ntk_top_eigenvalues,sharpness,gauss_newton_share]"
# a depth-2 relu net of width 512 on 32 points: wide enough that at η_max/2 its kernel moves ~3%,
# small enough for a second of CPU per run
STEP_SIZE = ["device=cpu", "width=512", "depth=2", "data.n_train=32", "data.n_test=8", "data.dim=5",
             "dtype=float64", "optim.steps=200", "optim.lr_unit=eta_max_empirical", "track.log_steps=20",
             "track.probe_size=32", "track.progress=false", "track.plots=false", "track.save_kernels=false",
             SPECTRAL_TRACKING]


@pytest.fixture(scope="module")
def step_size_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("step_size")
    return {lr: (run(compose_train(STEP_SIZE + [f"optim.lr={lr}"]), folder / str(lr)), folder / str(lr))
            for lr in (0.5, 1.5)}


def test_a_run_above_eta_max_catapults(step_size_runs):
    """η = 1.5 η_max (seed 0): the loss spikes above its initial value, the kernel's top eigenvalue
    falls below 2Nk/η (Lewkowycz et al. 2020), and training converges there."""
    summary, run_dir = step_size_runs[1.5]
    records = metrics(run_dir)
    entries, lr = summary["spectrum"]["entries"], summary["learning_rate"]
    assert summary["spectrum"] == {"points": 32, "kernel": "mean", "entries": 32}
    assert records[0]["eta_ntk"] == pytest.approx(3.0, rel=1e-9)         # 1.5 η_max of the same kernel
    assert summary["regime"]["label"] == "catapult", summary["regime"]
    assert summary["peak_train_loss"] > (1 + THRESHOLDS.spike) * records[0]["train_loss"]
    final = records[-1]
    assert final["ntk_max_eigenvalue"] < 2 * entries / lr                # λ_max(Θ̂_T) < 2Nk/η
    assert final["ntk_max_eigenvalue"] < 0.75 * records[0]["ntk_max_eigenvalue"]
    assert final["train_loss"] < 1e-3 * records[0]["train_loss"]
    # after the catapult the sharpness sits below the edge too, and the Hessian's top is the
    # Gauss–Newton part's (the share measured ≈ 1.000 at the end)
    assert final["eta_sharpness"] < 2 and final["gauss_newton_share"] == pytest.approx(1.0, abs=0.05)


def test_a_run_at_half_eta_max_is_lazy(step_size_runs):
    summary, run_dir = step_size_runs[0.5]
    records = metrics(run_dir)
    assert summary["regime"]["label"] == "lazy", summary["regime"]
    losses = [r["train_loss"] for r in records]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert max(r["kernel_change"] for r in records) <= THRESHOLDS.lazy_kernel_change
    assert summary["peak_train_loss"] == losses[0]
    # η·λ_max stays near 1 = 2·(1/2): the kernel and the sharpness barely move (measured 1.00 → 1.02)
    assert all(0.9 < r["eta_ntk"] < 1.1 and 0.9 < r["eta_sharpness"] < 1.1 for r in records)


def test_spectral_quantities_are_opt_in():
    assert TrackConfig().quantities == list(DEFAULT) == ["param_drift", "kernel_change", "kernel_to_limit",
                                                         "pred_gap_analytic", "pred_gap_linear"]
    for name in ("default", "minimal"):
        cfg = compose_train([f"track={name}"])
        assert not set(cfg.track.quantities) & set(SPECTRAL), name


@pytest.mark.parametrize("override, field", [
    ("track.quantities=[sharpnes]", "track.quantities"), ("track.spectrum_points=0", "track.spectrum_points"),
    ("track.top_eigenvalues=0", "track.top_eigenvalues"), ("track.lanczos_tol=0", "track.lanczos_tol"),
    ("track.lanczos_steps=2", "track.lanczos_steps")])
def test_spectral_settings_are_validated(override, field):
    from ntklab.config import validate
    from ntklab.errors import ConfigError

    cfg = compose_train(["track.top_eigenvalues=3", override] if field != "track.top_eigenvalues" else [override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.field == field


SMALL = ["device=cpu", "width=32", "data.n_train=16", "data.n_test=8", "data.dim=4", "optim.steps=30",
         "track.log_steps=8", "track.probe_size=8", "track.progress=false", "track.plots=false",
         "track.save_kernels=false"]


def test_more_top_eigenvalues_than_the_spectrum_set_has_are_refused(tmp_path):
    # 3 points of a scalar target: Θ̂ on the spectrum set is 3 × 3, with 3 eigenvalues, not 4
    cfg = compose_train(SMALL + ["track.quantities=[ntk_top_eigenvalues]", "track.spectrum_points=3",
                                 "track.top_eigenvalues=4"])
    with pytest.raises(ConfigError) as err:
        run(cfg, tmp_path / "run")
    assert str(err.value) == ("track.top_eigenvalues: is 4, but Θ̂ on the spectrum set (3 points) has 3 eigenvalues: "
                              "ask for at most that many, or raise track.spectrum_points")
    # all 3 is allowed, and records them in descending order
    summary = run(compose_train(SMALL + ["track.quantities=[ntk_top_eigenvalues]", "track.spectrum_points=3",
                                         "track.top_eigenvalues=3", "optim.steps=1"]), tmp_path / "three")
    records = results.read_metrics(tmp_path / "three" / results.METRICS)
    values = records[0]["ntk_top_eigenvalues"]
    assert summary["status"] == "ok" and len(values) == 3 and values == sorted(values, reverse=True)



def test_spectral_quantities_leave_every_other_number_alone(tmp_path):
    """A run with the spectral quantities records, besides them, exactly what the same run without
    them records (the tracker draws from no global generator and moves no parameter); stopped and
    resumed, its metrics are byte-identical to an uninterrupted run's."""
    plain = run(compose_train(SMALL), tmp_path / "plain")
    spectral = SMALL + [f"track.quantities=[{','.join(DEFAULT + SPECTRAL)}]", "track.top_eigenvalues=2",
                        "track.checkpoint_every=10"]
    run(compose_train(spectral), tmp_path / "whole")
    added = {"ntk_top_eigenvalues", "hessian_top_eigenvalues", "lanczos_steps"} | {
        f for name in SPECTRAL for f in SPECTRAL_FIELDS[name]}
    for before, after in zip(metrics(tmp_path / "plain"), metrics(tmp_path / "whole"), strict=True):
        assert set(after) - set(before) == added
        assert {k: v for k, v in after.items() if k not in added} == before
        assert len(after["ntk_top_eigenvalues"]) == len(after["hessian_top_eigenvalues"]) == 2
    assert "sharpness" not in plain["max"]
    assert run(compose_train(spectral + ["stop_after=15"]), tmp_path / "parts")["status"] == "stopped"
    run(compose_train(spectral), tmp_path / "parts")
    assert (tmp_path / "parts" / results.METRICS).read_bytes() == (tmp_path / "whole" / results.METRICS).read_bytes()


def _records(losses, eta_sharpness=None, eta_ntk=None, kernel_change=None):
    out = []
    for i, loss in enumerate(losses):
        record = {"step": 10 * i, "train_loss": loss}
        for name, values in (("eta_sharpness", eta_sharpness), ("eta_ntk", eta_ntk), ("kernel_change", kernel_change)):
            if values is not None:
                record[name] = values[i]
        out.append(record)
    return out


def test_the_regime_rules_on_made_up_records():
    """Each rule of ntklab.train.stability on records built to meet it (or to miss it by one threshold)."""
    label = lambda records, **kw: classify(records, status=kw.pop("status", "ok"), **kw)["label"]
    falling = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02]
    small = [0.0, 0.01, 0.02, 0.03, 0.03, 0.03]
    assert label(_records(falling, kernel_change=small)) == "lazy"
    assert label(_records(falling, kernel_change=[0, 0.05, 0.2, 0.3, 0.3, 0.3])) == "other"     # kernel moved
    assert label(_records([1.0, 0.5, 0.51, 0.1, 0.05, 0.02], kernel_change=small)) == "other"   # loss rose
    assert label(_records(falling, kernel_change=small), status="diverged") == "diverged"
    spike = [1.0, 3.0, 0.5, 0.1, 0.01, 0.001]
    assert label(_records(spike, eta_ntk=[3.0, 2.5, 1.2, 1.1, 1.1, 1.1])) == "catapult"
    assert label(_records(falling, eta_ntk=[3.0, 2.5, 1.2, 1.1, 1.1, 1.1]), loss_peak=1.5) == "catapult"  # between log steps
    assert label(_records(spike, eta_ntk=[3.0, 2.5, 2.2, 2.1, 2.05, 2.01])) == "other"        # still above the edge
    assert label(_records([1.0, 3.0, 0.9, 0.8, 0.9, 0.9], eta_ntk=[3, 1, 1, 1, 1, 1.0])) == "other"    # did not learn
    # a spike that starts below the edge is not a catapult (the linearised net converges there)
    assert label(_records(spike, eta_ntk=[1.9, 2.5, 1.2, 1.1, 1.1, 1.1])) == "other"
    at_eta_max = [2 * (1 - 1e-9), 2.5, 1.2, 1.1, 1.1, 1.1]       # η = η_max, its product rounded down
    assert label(_records(spike, eta_ntk=at_eta_max)) == "catapult"
    # a rise above L_0 between log steps (the trainer's per-step peak) is not lazy
    assert label(_records(falling, kernel_change=small), loss_peak=1.01) == "other"
    assert label(_records(falling, kernel_change=small), loss_peak=1.0) == "lazy"
    hovering = [4.0, 1.2, 1.6, 1.95, 2.05, 1.98]      # the last three log steps are the late half
    assert label(_records(spike, eta_sharpness=hovering, eta_ntk=[3, 1, 1.6, 1.9, 2.0, 2.0])) == "edge_of_stability"
    below = [4.0, 1.2, 1.6, 1.85, 1.9, 1.95]          # in the band but never at the edge: converging under it
    assert label(_records(spike, eta_sharpness=below, eta_ntk=[3, 1, 1.6, 1.8, 1.9, 1.95])) == "catapult"
    momentum = classify(_records(spike, eta_sharpness=[x * 1.9 for x in hovering]), status="ok", momentum=0.9)
    assert momentum["label"] == "edge_of_stability" and momentum["evidence"]["stability_edge"] == pytest.approx(3.8)
    untracked = classify(_records(falling), status="ok")
    assert untracked["label"] == "other" and untracked["missing"] == ["sharpness", "ntk_top_eigenvalues",
                                                                      "kernel_change"]
    json.dumps(untracked, allow_nan=False)


def test_eos_preset_composes(tmp_path):
    out, err, code = ntklab("train", "+sweep=eos", "--cfg", "all", cwd=tmp_path)
    assert code == 0, err
    composed = yaml.safe_load(out)
    params = composed["hydra"]["sweeper"]["params"]
    assert [float(v) for v in params["optim.lr"].split(",")] == [0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 3.5, 4]
    assert params["width"] == "64,128,256,512,1024,2048,4096"
    assert composed["optim"]["lr_unit"] == "eta_max_empirical" and composed["optim"]["batch_size"] is None
    assert set(SPECTRAL) <= set(composed["track"]["quantities"])
    assert composed["hydra"]["sweep"]["dir"] == "outputs/sweep/eos"


TINY = ["device=cpu", "data.n_train=16", "data.n_test=8", "data.dim=4", "optim.steps=40", "track.log_steps=10",
        "track.probe_size=8", "track.progress=false", "track.plots=false", "track.save_kernels=false",
        "optim.lr_unit=eta_max_empirical", "track.top_eigenvalues=2", SPECTRAL_TRACKING]


@pytest.fixture(scope="module")
def eos_table(tmp_path_factory):
    """Widths 16 and 32 × η/η_max 0.5, 1.5, 3 × seed 0, as +sweep=eos runs them, collected."""
    folder = tmp_path_factory.mktemp("eos")
    for width in (16, 32):
        for lr in (0.5, 1.5, 3):
            run(compose_train(TINY + [f"width={width}", f"optim.lr={lr}"]), folder / f"{width}-{lr}")
    write_table(collect([folder])[0], folder / "results.csv")
    return folder / "results.csv"


def test_eos_figure_shows_each_runs_sharpness(eos_table, tmp_path):
    numbers = draw("fig_eos", eos_table, tmp_path)
    assert numbers["width"] == 16 and numbers["seed"] == 0
    assert [c["lr_over_eta_max"] for c in numbers["curves"]] == pytest.approx([0.5, 1.5, 3.0], rel=1e-9)
    for curve in numbers["curves"]:
        summary = json.loads((Path(curve["run_dir"]) / results.SUMMARY).read_text())
        assert curve["edge"] == pytest.approx(2 / summary["learning_rate"], rel=1e-12)
        assert curve["regime"] == summary["regime"]["label"]
        records = [r for r in metrics(Path(curve["run_dir"])) if "sharpness" in r]
        assert curve["step"] == [r["step"] for r in records]
        assert curve["sharpness"] == [r["sharpness"] for r in records]
        assert curve["train_loss"] == [r["train_loss"] for r in records]


def test_catapult_figure_shows_each_runs_kernel(eos_table, tmp_path):
    numbers = draw("fig_catapult", eos_table, tmp_path)
    table = read_table(eos_table)
    assert len(numbers["runs"]) == len(table) == 6
    assert sum(numbers["regimes"].values()) == 6
    for row in numbers["runs"]:
        summary = json.loads(next(Path(r) / results.SUMMARY for r, w, lr in
                                  zip(table["run_dir"], table["model.width"], table["optim.lr"])
                                  if w == row["width"] and math.isclose(lr, row["lr_over_eta_max"], rel_tol=1e-9))
                             .read_text())
        assert row["regime"] == summary["regime"]["label"] and row["status"] == summary["status"]
        assert row["kernel_change"] == pytest.approx(summary["final"]["kernel_change"], rel=1e-12)
        assert row["ntk_ratio"] == pytest.approx(summary["final"]["ntk_max_eigenvalue"]
                                                 / summary["initial"]["ntk_max_eigenvalue"], rel=1e-12)


def test_hessian_ntk_figure_shows_the_initial_spectra(eos_table, tmp_path):
    numbers = draw("fig_hessian_ntk", eos_table, tmp_path)
    assert [(p["width"], p["seed"]) for p in numbers["points"]] == [(16, 0), (32, 0)]
    table = read_table(eos_table)
    for point in numbers["points"]:
        run_dir = table.loc[table["model.width"] == point["width"], "run_dir"].iloc[0]
        first = metrics(Path(run_dir))[0]
        assert point["entries"] == 16
        assert point["ntk_over_nk"] == pytest.approx([v / 16 for v in first["ntk_top_eigenvalues"]], rel=1e-12)
        assert point["hessian"] == pytest.approx(first["hessian_top_eigenvalues"], rel=1e-12)
        assert point["relative_gap"] == pytest.approx(abs(point["hessian"][0] - point["ntk_over_nk"][0])
                                                      / point["ntk_over_nk"][0], rel=1e-9)
    assert numbers["gap_fit"]["n_points"] == 2


def test_bench_spectra_prints_a_row_per_combination():
    """scripts/bench_spectra.py at a tiny width: the default row and one per spectral combination,
    each cost a positive number of seconds and gradient steps."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_spectra.py"), "--device", "cpu",
                           "--widths", "32", "--steps", "20", "--rounds", "1", "--no-run"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| 32 |")]
    assert [r[1].strip() for r in rows] == ["default", "default + ntk_top_eigenvalues",
                                            "default + ntk_top_eigenvalues, sharpness",
                                            "default + ntk_top_eigenvalues, sharpness, gauss_newton_share"]
    for row in rows:
        seconds, steps, share = (float(v) for v in row[2:5])
        # printed to 0.1 gradient steps and 0.1%: at width 32 a measurement can round to 0.0 of either
        # (a slow step on a loaded machine), so only the seconds must be positive; no timing is asserted
        assert seconds > 0 and steps >= 0 and 0 <= share < 100
