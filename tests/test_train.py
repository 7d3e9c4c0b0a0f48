"""The trainer against independent computations: plain GD replayed by hand, the kernel
recurrence iterated step by step, a linearised network trained by GD, kernels recomputed by
another method; and checkpoint/resume giving byte-identical metrics.

Runs are composed with Hydra's compose API from the same YAML the command line uses and run
in-process (the command line itself is exercised in test_cli.py).
"""

import json
import logging
import math

import pytest
import torch
from ntklab import ArchSpec, analytic_kernels, build_mlp, empirical_ntk
from ntklab import results
from ntklab.dynamics import linearize, mse_loss
from ntklab.errors import ConfigError
from ntklab.train import log_schedule, run
from ntklab.train.trainer import load_data
from tests.helpers import compose_train, gradient_descent, metrics

SMALL = ["device=cpu", "width=64", "data.n_train=32", "data.n_test=16", "data.dim=5", "optim.steps=40",
         "track.log_steps=8", "track.probe_size=16", "track.progress=false", "track.plots=false"]


def test_log_schedule_is_log_spaced_and_bounded():
    schedule = log_schedule(1000, 40)
    assert schedule[0] == 0 and schedule[-1] == 1000 and schedule == sorted(set(schedule))
    assert len(schedule) <= 41
    # geometric spacing: above the rounding-dominated start, successive ratios stay near 1000^(1/39)
    ratios = [b / a for a, b in zip(schedule, schedule[1:]) if a >= 20]
    assert max(ratios) < 1.25 and min(ratios) > 1.1
    assert log_schedule(5, 40) == [0, 1, 2, 3, 4, 5]
    assert log_schedule(7, 1) == [0, 7]


@pytest.fixture(scope="module")
def float64_run(tmp_path_factory):
    """One small float64 run, shared by the tests that check its numbers."""
    run_dir = tmp_path_factory.mktemp("run64")
    cfg = compose_train(SMALL + ["dtype=float64", "track.save_kernels=true"])
    summary = run(cfg, run_dir)
    return cfg, run_dir, summary


def test_run_writes_every_file_with_its_fields(float64_run):
    cfg, run_dir, summary = float64_run
    for name in (results.CONFIG, results.METRICS, results.SUMMARY, results.KERNELS):
        assert (run_dir / name).exists(), name
    assert not (run_dir / results.CHECKPOINT).exists()        # removed once the run is finished
    records = metrics(run_dir)
    assert [r["step"] for r in records] == log_schedule(40, 8)
    for field in ("train_loss", "test_loss", "pred_train_loss_analytic", "pred_test_loss_analytic",
                  "pred_train_loss_linear", "pred_test_loss_linear", "param_drift", "param_drift_layers",
                  "kernel_change", "kernel_to_limit", "pred_gap_analytic", "pred_gap_linear"):
        assert field in records[-1], field
    assert set(records[-1]["param_drift_layers"]) == {"layer_1", "layer_2", "layer_3"}
    on_disk = json.loads((run_dir / results.SUMMARY).read_text())
    assert on_disk["status"] == "ok" and on_disk["steps_done"] == 40
    assert on_disk["final"] == records[-1]
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["config"]["model"]["width"] == 64
    assert on_disk["max"]["kernel_change"] == max(r["kernel_change"] for r in records)
    # at θ_0 the network and both predictions coincide and nothing has moved
    first = records[0]
    assert first["param_drift"] == 0 and first["kernel_change"] == 0
    assert first["pred_gap_analytic"] == 0 and first["pred_gap_linear"] == 0


def _replay(cfg, summary):
    """The run redone by hand: data, net at θ_0 and at θ_T after plain GD at the run's η."""
    data = load_data(cfg.data)
    spec = ArchSpec(depth=2, width=64, activation="relu", sigma_w=1.0, sigma_b=0.0, parametrization="ntk")
    net0 = build_mlp(spec, in_dim=data.in_dim, seed=0, dtype=torch.float64)
    net = build_mlp(spec, in_dim=data.in_dim, seed=0, dtype=torch.float64)
    gradient_descent(net, data.x_train, data.y_train, summary["learning_rate"], steps=40)
    return data, spec, net0, net


def test_training_is_plain_gradient_descent_at_half_eta_max(float64_run):
    cfg, run_dir, summary = float64_run
    data, spec, net0, net = _replay(cfg, summary)
    # η = 0.5 · 2N/λ_max(Θ) with Θ the analytic NTK on the train set
    top = torch.linalg.eigvalsh(analytic_kernels(spec, data.x_train).ntk)[-1].item()
    assert summary["learning_rate"] == pytest.approx(0.5 * 2 * data.n_train / top, rel=1e-12)
    last = metrics(run_dir)[-1]
    with torch.no_grad():
        # float64, same operations up to the order of one multiply-add per step: 1e-9 has margin
        assert last["train_loss"] == pytest.approx(mse_loss(net(data.x_train), data.y_train).item(), rel=1e-9)
        assert last["test_loss"] == pytest.approx(mse_loss(net(data.x_test), data.y_test).item(), rel=1e-9)
        theta0 = torch.cat([p.flatten() for p in net0.parameters()])
        theta = torch.cat([p.flatten() for p in net.parameters()])
        assert last["param_drift"] == pytest.approx(((theta - theta0).norm() / theta0.norm()).item(), rel=1e-8)
        layer = torch.cat([p.flatten() for p in net.layers[2].parameters()])
        layer0 = torch.cat([p.flatten() for p in net0.layers[2].parameters()])
        assert last["param_drift_layers"]["layer_3"] == pytest.approx(
            ((layer - layer0).norm() / layer0.norm()).item(), rel=1e-8)


def test_analytic_prediction_equals_the_iterated_kernel_recurrence(float64_run):
    cfg, run_dir, summary = float64_run
    data, spec, net0, net = _replay(cfg, summary)
    theta_train = analytic_kernels(spec, data.x_train).ntk
    theta_test = analytic_kernels(spec, data.x_test, data.x_train).ntk
    rate = summary["learning_rate"] / data.n_train          # η/(Nk), k = 1
    with torch.no_grad():
        f_train, f_test = net0(data.x_train), net0(data.x_test)
        for _ in range(40):     # f ← f − (η/N) Θ(·, X)(f(X) − y), train and test together
            residual = f_train - data.y_train
            f_train, f_test = f_train - rate * theta_train @ residual, f_test - rate * theta_test @ residual
        net_test = net(data.x_test)
    last = metrics(run_dir)[-1]
    # the run uses one eigendecomposition, the test 40 matrix products: agreement to rounding
    assert last["pred_train_loss_analytic"] == pytest.approx(mse_loss(f_train, data.y_train).item(), rel=1e-8)
    assert last["pred_test_loss_analytic"] == pytest.approx(mse_loss(f_test, data.y_test).item(), rel=1e-8)
    assert last["pred_gap_analytic"] == pytest.approx((net_test - f_test).pow(2).mean().sqrt().item(), rel=1e-7)
    saved = torch.load(run_dir / results.PREDICTIONS)
    assert saved["step"] == 40 and torch.equal(saved["y_test"], data.y_test)
    torch.testing.assert_close(saved["f_pred_analytic"], f_test, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(saved["f_final"], net_test, rtol=1e-9, atol=1e-12)


def test_linear_prediction_equals_a_linearised_network_trained_by_gd(float64_run):
    cfg, run_dir, summary = float64_run
    data, spec, net0, net = _replay(cfg, summary)
    linear = linearize(net0)
    gradient_descent(linear, data.x_train, data.y_train, summary["learning_rate"], steps=40)
    with torch.no_grad():
        f_lin_test, net_test = linear(data.x_test), net(data.x_test)
        lin_loss = mse_loss(f_lin_test, data.y_test).item()
    last = metrics(run_dir)[-1]
    assert last["pred_test_loss_linear"] == pytest.approx(lin_loss, rel=1e-8)
    assert last["pred_gap_linear"] == pytest.approx((net_test - f_lin_test).pow(2).mean().sqrt().item(), rel=1e-7)


def test_kernels_file_matches_independent_kernels(float64_run):
    cfg, run_dir, summary = float64_run
    data, spec, net0, net = _replay(cfg, summary)
    kernels = torch.load(run_dir / results.KERNELS)
    probe = data.x_train[:16]
    assert torch.equal(kernels["probe_x"], probe)
    # structured (the run) against the Jacobian contraction (here): float64 rounding only
    torch.testing.assert_close(kernels["ntk_empirical_init"], empirical_ntk(net0, probe, method="jacobian"),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kernels["ntk_empirical_final"], empirical_ntk(net, probe, method="jacobian"),
                               rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(kernels["ntk_analytic"], analytic_kernels(spec, probe).ntk, rtol=1e-12, atol=0)
    # the test-kernel row at the first test point (the circle figure's curve), at init, end and limit
    for key, reference in (("ntk_test_row_empirical_init", empirical_ntk(net0, data.x_test[:1], data.x_test, method="jacobian")),
                           ("ntk_test_row_empirical_final", empirical_ntk(net, data.x_test[:1], data.x_test, method="jacobian")),
                           ("ntk_test_row_analytic", analytic_kernels(spec, data.x_test[:1], data.x_test).ntk)):
        torch.testing.assert_close(kernels[key], reference[0], rtol=1e-8, atol=1e-10)
    records = metrics(run_dir)
    init, final, limit = kernels["ntk_empirical_init"], kernels["ntk_empirical_final"], kernels["ntk_analytic"]
    assert records[-1]["kernel_change"] == pytest.approx(((final - init).norm() / init.norm()).item(), rel=1e-9)
    assert records[0]["kernel_to_limit"] == pytest.approx(((init - limit).norm() / limit.norm()).item(), rel=1e-9)


def test_finished_run_directory_is_not_rerun(float64_run, tmp_path):
    cfg, run_dir, summary = float64_run
    before = (run_dir / results.METRICS).read_bytes()
    again = run(cfg, run_dir)
    assert again["status"] == "ok" and (run_dir / results.METRICS).read_bytes() == before


def test_resuming_with_another_config_is_refused(tmp_path):
    run(compose_train(SMALL + ["optim.steps=10", "track.save_kernels=false"]), tmp_path)
    with pytest.raises(ConfigError, match="optim.steps"):
        run(compose_train(SMALL + ["optim.steps=20", "track.save_kernels=false"]), tmp_path)


@pytest.mark.parametrize("optim", ["gd", "sgd"])
def test_interrupted_and_resumed_run_has_identical_metrics(tmp_path, optim):
    # sgd: mini-batches from a generator and momentum buffers, both restored from the checkpoint
    overrides = SMALL + [f"optim={optim}", "optim.steps=60", "track.checkpoint_every=10", "track.log_steps=15"]
    if optim == "sgd":
        overrides += ["optim.batch_size=8"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # stop after 25 steps (a checkpoint at 20 and the stop's own at 25), then 3 more, then finish;
    # the stop's checkpoint holds the time spent so far
    setup_so_far = []
    for stop_after in (25, 3):
        assert run(compose_train(overrides + [f"stop_after={stop_after}"]), parts)["status"] == "stopped"
        setup_so_far.append(torch.load(parts / results.CHECKPOINT, weights_only=True)["timing"]["setup"])
    resumed = run(compose_train(overrides), parts)
    reference = run(compose_train(overrides), whole)
    assert (parts / results.METRICS).read_bytes() == (whole / results.METRICS).read_bytes()
    assert resumed["final"] == reference["final"]
    assert resumed["timing"]["steps_s"] > 0
    # each invocation sets up (the net, the reference kernels it reads back) and adds its setup time to
    # the earlier ones': the total grows strictly from one invocation to the next (compared within one
    # run directory, so how loaded the machine is cannot reorder it, as it could a comparison with
    # the uninterrupted run)
    assert 0 < setup_so_far[0] < setup_so_far[1] < resumed["timing"]["setup_s"]


@pytest.mark.parametrize("damage", [None, "value", "truncated"])
def test_a_resumed_run_reads_its_reference_kernels_back(tmp_path, monkeypatch, caplog, damage):
    """The kernels and outputs at θ_0 are saved at setup (reference.pt) and a resumed run reads them
    instead of computing them again; a damaged file (a value changed behind its checksum, or cut
    short) is computed anew with a warning. Either way the metrics are the uninterrupted run's, byte
    for byte, and the file goes with the checkpoint at the end."""
    from ntklab.train import trainer

    overrides = SMALL + ["optim.steps=40", "track.checkpoint_every=10", "track.log_steps=10"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(compose_train(overrides), whole)
    assert not (whole / results.REFERENCE).exists() and not (whole / results.CHECKPOINT).exists()
    assert run(compose_train(overrides + ["stop_after=15"]), parts)["status"] == "stopped"
    path = parts / results.REFERENCE
    saved = torch.load(path, weights_only=True)
    assert saved["analytic_train"].dtype == torch.float64 and saved["empirical_train"] is not None
    computed = []
    original = trainer.reference_kernels
    monkeypatch.setattr(trainer, "reference_kernels", lambda *a, **k: computed.append(1) or original(*a, **k))
    if damage == "value":
        saved["analytic_train"][0, 0] += 1e-3          # the checksum stored with it no longer matches
        torch.save(saved, path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="ntklab.train.trainer"):
        run(compose_train(overrides), parts)
    assert (parts / results.METRICS).read_bytes() == (whole / results.METRICS).read_bytes()
    assert computed == ([] if damage is None else [1])
    assert ("computing the reference kernels again" in caplog.text) == (damage is not None)
    assert not path.exists() and not (parts / results.CHECKPOINT).exists()


def test_resume_from_a_periodic_checkpoint_after_a_crash(tmp_path):
    """A crash between checkpoints: the metrics written after the last checkpoint are dropped and
    recomputed, so the result is the same as an uninterrupted run."""
    overrides = SMALL + ["optim.steps=60", "track.checkpoint_every=10", "track.log_steps=15"]
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    run(compose_train(overrides), whole)
    run(compose_train(overrides + ["stop_after=27"]), crashed)
    # make the directory look like a crash at step 27 after the checkpoint of step 20: roll the
    # checkpoint back to step 20's state by re-running to 20 in a scratch directory
    scratch = tmp_path / "scratch"
    run(compose_train(overrides + ["stop_after=20"]), scratch)
    (crashed / results.CHECKPOINT).write_bytes((scratch / results.CHECKPOINT).read_bytes())
    with open(crashed / results.METRICS, "a") as f:
        f.write('{"step": 999, "train_lo')          # a line cut short by the crash
    run(compose_train(overrides), crashed)
    assert (crashed / results.METRICS).read_bytes() == (whole / results.METRICS).read_bytes()


def test_divergence_ends_the_run_with_status_diverged(tmp_path):
    cfg = compose_train(SMALL + ["optim.lr_unit=absolute", "optim.lr=1000"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "diverged"
    assert 0 < summary["diverged_at_step"] < 40
    last = metrics(tmp_path)[-1]
    assert last["diverged"] is True and last["step"] == summary["diverged_at_step"]
    loss = last["train_loss"]
    assert loss is None or loss > 1e6 * metrics(tmp_path)[0]["train_loss"]
    json.loads((tmp_path / results.SUMMARY).read_text())      # strict JSON even with inf/NaN losses
    # the summary's final record is the last full measurement, not the short divergence line
    assert summary["final"] == [r for r in metrics(tmp_path) if not r.get("diverged")][-1]
    assert "kernel_change" in summary["final"] and summary["diverged_loss"] == loss


def test_eta_max_is_the_edge_of_stability(tmp_path):
    """Below η_max = 2Nk/λ_max of the network's own kernel GD converges without the loss ever rising;
    above it the top eigenmode grows, so the loss first rises above its initial value. (A finite
    net then catapults, Lewkowycz et al. 2020: the kernel shrinks and training converges anyway,
    which is why this checks the rise and not a divergence.)"""
    base = ["width=2048", "depth=1", "data.n_train=16", "data.n_test=4", "data.dim=3", "dtype=float64",
            "optim.lr_unit=eta_max_empirical", "optim.steps=400", "track.progress=false", "track.plots=false",
            "track.save_kernels=false", "track.quantities=[param_drift]", "track.log_steps=30"]
    run(compose_train(base + ["optim.lr=0.9"]), tmp_path / "stable")
    run(compose_train(base + ["optim.lr=1.1"]), tmp_path / "unstable")
    stable = [r["train_loss"] for r in metrics(tmp_path / "stable")]
    unstable = [r["train_loss"] for r in metrics(tmp_path / "unstable")]
    assert max(stable[1:]) < stable[0] and stable[-1] < 1e-2 * stable[0]
    assert max(unstable) > 1.2 * unstable[0]


def test_a_crash_is_recorded_as_failed(tmp_path, monkeypatch):
    from ntklab.train import tracking

    def broken(self, model, step):
        if step > 0:
            raise RuntimeError("simulated failure")
        return original(self, model, step)
    original = tracking.Tracker.measure
    monkeypatch.setattr(tracking.Tracker, "measure", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        run(compose_train(SMALL), tmp_path)
    summary = json.loads((tmp_path / results.SUMMARY).read_text())
    assert summary["status"] == "failed" and "simulated failure" in summary["error"]
    assert math.isfinite(metrics(tmp_path)[0]["train_loss"])
    # a retry that is stopped before the end no longer claims the old failure
    monkeypatch.setattr(tracking.Tracker, "measure", original)
    assert run(compose_train(SMALL + ["stop_after=5"]), tmp_path)["status"] == "stopped"
    assert not (tmp_path / results.SUMMARY).exists()


@pytest.mark.cuda
def test_cuda_run_matches_cpu(tmp_path):
    overrides = SMALL + ["dtype=float64", "track.save_kernels=false"]
    metrics_of = {}
    for device in ("cpu", "cuda"):
        run(compose_train(overrides + [f"device={device}"]), tmp_path / device)
        metrics_of[device] = metrics(tmp_path / device)
    assert [r["step"] for r in metrics_of["cpu"]] == [r["step"] for r in metrics_of["cuda"]]
    for on_cpu, on_gpu in zip(metrics_of["cpu"], metrics_of["cuda"]):
        for name in ("train_loss", "test_loss", "pred_test_loss_analytic", "param_drift", "kernel_change",
                     "kernel_to_limit", "pred_gap_analytic", "pred_gap_linear"):
            # float64 on both; different summation orders in 40 steps leave ~1e-13, zeros stay zeros
            assert on_gpu[name] == pytest.approx(on_cpu[name], rel=1e-8, abs=1e-12), (name, on_cpu["step"])



@pytest.mark.cuda
def test_cuda_run_resumes_with_identical_metrics(tmp_path):
    # momentum, mini-batches and the CUDA RNG state all go through the checkpoint
    overrides = SMALL[1:] + ["device=cuda", "optim=sgd", "optim.batch_size=8", "optim.steps=60",
                             "track.checkpoint_every=10", "track.log_steps=15"]
    run(compose_train(overrides), tmp_path / "whole")
    assert run(compose_train(overrides + ["stop_after=25"]), tmp_path / "parts")["status"] == "stopped"
    run(compose_train(overrides), tmp_path / "parts")
    assert (tmp_path / "parts" / results.METRICS).read_bytes() == (tmp_path / "whole" / results.METRICS).read_bytes()


@pytest.mark.parametrize("value", [0.0, math.inf, math.nan])
def test_a_kernel_that_gives_no_eta_max_names_sigma_w(value):
    # an all-zero kernel (σ_w so small that Θ underflows) or one that overflowed has no 2Nk/λ_max
    from ntklab.train.tracking import ReferenceKernels

    reference = ReferenceKernels(torch.zeros(3, 1), torch.zeros(2, 1), torch.eye(3), torch.zeros(2),
                                 analytic_train=torch.full((3, 3), value, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"^model.sigma_w: the analytic NTK of the train set gives no η_max \(k_train"):
        reference.eta_max("eta_max")
