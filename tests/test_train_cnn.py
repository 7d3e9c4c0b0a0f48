"""Convolutional nets in the trainer (``model=cnn``): every tracked quantity measured against an
independent computation (the net rebuilt from the layers and trained by hand, its NTK by the
jacobian method, the analytic CNTK), the kernel_to_limit scaling with channels, a net without an
analytic rule, and the errors of configs that do not fit.
"""

import math

import numpy as np
import pytest
import torch
from ntklab import analytic_kernels, empirical_ntk, results
from ntklab import layers as nl
from ntklab.dynamics import mse_loss
from ntklab.errors import ConfigError
from ntklab.layers import Layer
from ntklab.nets import build_net, cnn_layers
from ntklab.train import run
from ntklab.train.trainer import load_data
from tests.helpers import compose_train, gradient_descent, metrics, ntklab

STEPS = 12
CNN = ["model=cnn", "data=digits", "device=cpu", "dtype=float64", "width=6", "depth=2", "data.n_train=20",
       "data.n_test=10", f"optim.steps={STEPS}", "track.log_steps=4", "track.probe_size=8", "track.progress=false",
       "track.plots=false", "model.pool_after=[1]", "model.sigma_b=0.1"]


def _arch(cfg, out_dim):
    model = cfg.model
    return cnn_layers(model.depth, model.width, out_dim, kernel_size=model.kernel_size, pool_after=list(model.pool_after),
                      readout=model.readout, activation=model.activation, sigma_w=model.sigma_w,
                      sigma_b=model.sigma_b)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cnn")
    cfg = compose_train(CNN)
    return cfg, run_dir, run(cfg, run_dir)


def test_a_cnn_run_measures_every_quantity_against_an_independent_computation(cnn_run):
    cfg, run_dir, summary = cnn_run
    records = metrics(run_dir)
    assert summary["status"] == "ok" and summary["in_shape"] == [1, 8, 8]
    assert summary["analytic_limit"] == {"available": True}
    for name in (results.CONFIG, results.METRICS, results.SUMMARY, results.KERNELS, results.PREDICTIONS):
        assert (run_dir / name).exists(), name
    for field in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "pred_train_loss_analytic",
                  "pred_train_loss_linear", "param_drift", "param_drift_layers", "kernel_change", "kernel_to_limit",
                  "pred_gap_analytic", "pred_gap_linear"):
        assert field in records[-1], field
    # three parametrized layers: two convs and the readout
    assert set(records[-1]["param_drift_layers"]) == {"layer_1", "layer_2", "layer_3"}

    # The same net built from the layers and trained by hand, plain full-batch GD at the run's η.
    data = load_data(cfg.data, images=True)
    assert data.x_train.shape == (20, 1, 8, 8)
    arch = _arch(cfg, data.out_dim)
    net0 = build_net(arch, data.x_train.shape[1:], seed=0, dtype=torch.float64)
    net = build_net(arch, data.x_train.shape[1:], seed=0, dtype=torch.float64)
    gradient_descent(net, data.x_train, data.y_train, summary["learning_rate"], steps=STEPS)
    with torch.no_grad():
        # float64 GD replayed in the same order of operations: agreement to rounding
        assert records[-1]["train_loss"] == pytest.approx(mse_loss(net(data.x_train), data.y_train).item(), rel=1e-10)
        drift = math.sqrt(sum((p - p0).pow(2).sum() for p, p0 in zip(net.parameters(), net0.parameters()))
                          / sum(p0.pow(2).sum() for p0 in net0.parameters()))
    assert records[-1]["param_drift"] == pytest.approx(drift, rel=1e-9)

    # kernel_to_limit at θ_0: the jacobian-method NTK (not the structured one the tracker uses) against
    # the analytic CNTK on the probe set; η = half of 2Nk/λ_max of the analytic train kernel.
    probe = data.x_train[:8]
    theta_hat = empirical_ntk(net0, probe, method="jacobian")
    limit = analytic_kernels(arch, probe).ntk
    assert records[0]["kernel_to_limit"] == pytest.approx(((theta_hat - limit).norm() / limit.norm()).item(), rel=1e-9)
    train_kernel = analytic_kernels(arch, data.x_train).ntk
    eta_max = 2 * data.n_train * data.out_dim / torch.linalg.eigvalsh(train_kernel)[-1].item()
    assert summary["learning_rate"] == pytest.approx(0.5 * eta_max, rel=1e-10)
    assert summary["lr_over_eta_max"] == pytest.approx(0.5, rel=1e-12)


@pytest.mark.slow
def test_kernel_to_limit_at_init_falls_with_channels_as_one_over_root_width(cnn_run):
    """kernel_to_limit at θ_0, ‖Θ̂_0 − Θ‖_F/‖Θ‖_F on the probe set (as the tracker measures it, which the
    test above checks), falls like channels^(−1/2): the empirical CNTK's fluctuations (Arora et al. 2019).

    The error of one net is far from Gaussian: across seeds its log has a standard deviation of
    0.9–1.0 at every width (192 seeds each at 16, 64 and 256 channels), so the fit uses the mean log
    error of 64 seeds per width. Subsampling those 192 gave fitted slopes of −0.50 ± 0.05, with 99.9%
    of them in [−0.65, −0.35]: [−0.7, −0.3] keeps that margin and still excludes no convergence (0)
    and a 1/c law (−1). Float32 nets: their rounding (1e-6) is far below the smallest error (~1e-2).
    """
    cfg, _, _ = cnn_run
    data = load_data(cfg.data, images=True)
    probe = data.x_train[:8]
    widths, seeds = (16, 64, 256), range(64)
    mean_log_errors = []
    for width in widths:
        arch = cnn_layers(2, width, data.out_dim, pool_after=[1], sigma_w=cfg.model.sigma_w, sigma_b=cfg.model.sigma_b)
        limit = analytic_kernels(arch, probe).ntk
        errors = [((empirical_ntk(build_net(arch, probe.shape[1:], seed=seed), probe.float()).double() - limit).norm()
                   / limit.norm()).item() for seed in seeds]
        mean_log_errors.append(np.mean(np.log(errors)))
    slope = np.polyfit(np.log(widths), mean_log_errors, 1)[0]
    assert -0.7 <= slope <= -0.3, (slope, mean_log_errors)


class _Doubler(Layer):
    """A pointwise layer with a forward pass and no infinite-width rule."""

    name = "doubler"

    def forward(self, module, x):
        return 2 * x

    def ntk_gram(self, module, features1, features2, full):
        raise NotImplementedError


def test_a_net_without_an_analytic_rule_trains_without_the_limit_quantities(tmp_path, monkeypatch):
    import ntklab.train.trainer as trainer

    def with_doubler(model_cfg, in_shape, out_dim):
        return nl.serial(nl.conv(4, 3), nl.activation("relu"), _Doubler(), nl.flatten(), nl.dense(out_dim)), None

    monkeypatch.setattr(trainer, "build_arch", with_doubler)
    summary = run(compose_train(CNN + ["optim.lr_unit=eta_max_empirical"]), tmp_path / "run")
    assert summary["status"] == "ok"
    assert summary["analytic_limit"]["available"] is False
    assert "layer 2 (doubler) has no infinite-width rule" in summary["analytic_limit"]["reason"]
    final = metrics(tmp_path / "run")[-1]
    assert "kernel_to_limit" not in final and "pred_gap_analytic" not in final
    assert final["kernel_change"] > 0 and "pred_gap_linear" in final
    # η_max of the analytic kernel cannot exist: refused, naming the field and the way out
    with pytest.raises(ConfigError, match="optim.lr_unit.*eta_max_empirical"):
        run(compose_train(CNN), tmp_path / "refused")


@pytest.mark.parametrize("overrides, message", [
    (["data=sphere"], "model=cnn takes images"),
    (["model.kernel_size=9", "model.padding=valid"], "9x9 kernel is larger than the 8x8 input"),
    (["model.readout=max"], "model.readout: must be one of gap, flatten"),
    (["model.strides=[1]"], "model.strides: must give one stride per conv block (2)"),
    (["+model.hidden=3"], "model.hidden: is not a config field"),
])
def test_cnn_configs_that_do_not_fit_are_refused_naming_the_field(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        run(compose_train(CNN + overrides), tmp_path / "run")
    assert message in str(err.value)


def test_the_command_line_trains_a_cnn_and_refuses_vectors_with_exit_code_2(tmp_path, cnn_run):
    out, err, code = ntklab("train", *CNN, "optim.steps=3", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 0, err
    records = metrics(tmp_path / "run")
    assert records[-1]["step"] == 3
    # the same net at θ_0 as the in-process run above (same config and seed, another process): every
    # tracked field there, with the same values at step 0
    first = metrics(cnn_run[1])[0]
    assert records[0]["step"] == first["step"] == 0
    assert set(records[0]) == set(first)
    for field in ("train_loss", "test_loss", "kernel_to_limit", "pred_gap_analytic", "pred_gap_linear"):
        # float64 throughout; 1e-9 leaves room for two processes' threaded reductions to round apart
        assert records[0][field] == pytest.approx(first[field], rel=1e-9), field
    out, err, code = ntklab("train", "model=cnn", "data=sphere", "hydra.run.dir=bad", cwd=tmp_path)
    assert code == 2 and "model=cnn takes images" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- chunked steps

def test_the_automatic_chunk_keeps_each_layer_output_within_chunk_bytes():
    """optim.chunk_size=null: on the CPU the most rows whose largest layer output (here the first conv's
    C×H×W, for all members) fits CHUNK_BYTES; on CUDA and for batch_norm nets the whole batch. The
    run's memory estimate counts one pass's layer outputs: a 1024-channel CNN on 3000 MNIST images
    holds 3000 × 1024 × 28 × 28 floats (9.4 GB) per layer output in one pass, 26 images' in a chunk."""
    from ntklab.resources import CHUNK_BYTES, chunk_rows, run_bytes

    root = build_net(cnn_layers(1, 256, 10, readout="flatten"), (1, 28, 28)).root
    per_row = 256 * 28 * 28 * 4           # the conv's (and the relu's, and flatten's) float32 output
    assert chunk_rows(root, 1000, "cpu", 4) == CHUNK_BYTES // per_row == 20
    assert chunk_rows(root, 1000, "cpu", 8, members=3) == CHUNK_BYTES // (6 * per_row) == 3
    assert chunk_rows(root, 10, "cpu", 4) == 10
    assert chunk_rows(root, 1000, "cuda", 4) == 1000
    assert chunk_rows(root, 1000, "cpu", 4, chunk_size=64) == 64
    normed = build_net(nl.serial(nl.conv(4, 3), nl.batch_norm(), nl.activation("relu"), nl.flatten(), nl.dense(2)),
                       (1, 8, 8)).root
    assert chunk_rows(normed, 1000, "cpu", 4) == 1000
    with pytest.raises(ConfigError, match="optim.chunk_size: 10 splits the batch of 1000 rows.*batch_norm"):
        chunk_rows(normed, 1000, "cpu", 4, chunk_size=10)

    big = ["model=cnn", "data=mnist", "depth=1", "model.readout=flatten", "width=1024", "data.n_train=3000",
           "data.n_test=1000", "data.targets=onehot", "device=cpu"]
    whole, chunked = (run_bytes(compose_train(big + [f"optim.chunk_size={c}"])) for c in (3000, "null"))
    features = 1024 * 28 * 28 + 10          # the conv's and the readout's outputs per image
    assert whole - chunked == 4 * (3000 - CHUNK_BYTES // (1024 * 28 * 28 * 4)) * features * 4


@pytest.mark.parametrize("extra", [
    [],                                                              # full batch, one net
    ["model.alpha=1", "seeds=2"],                                    # f − f_0 with each seed's own f_0, stacked
    ["optim=sgd", "optim.batch_size=13", "optim.momentum=0.9", "model.alpha=1"],   # mini-batches of 13
], ids=["full_batch", "alpha_seeds", "sgd_alpha"])
def test_a_step_in_chunks_is_the_step_of_the_whole_batch(tmp_path, monkeypatch, extra, cnn_run):
    """optim.chunk_size=6 on 20 train images (chunks of 6, 6, 6, 2; mini-batches of 13 as 6, 6, 1):
    the gradient summed over the chunks is the batch's, so a float64 run gives the same metrics as
    the unchunked run to rounding (rel 1e-9 after 12 steps; chunk sums differ at ~1e-15). The
    unchunked full-batch run is the one checked against hand-written GD above."""
    def final_records(run_dir):
        if "seeds=2" in extra:
            return [metrics(run_dir / f"seed_{seed}")[-1] for seed in (0, 1)]
        return [metrics(run_dir)[-1]]

    from ntklab import resources

    chosen = []
    chunk_rows = resources.chunk_rows
    monkeypatch.setattr(resources, "chunk_rows", lambda *args, **kw: chosen.append(chunk_rows(*args, **kw)) or chosen[-1])
    batch = 13 if any("batch_size" in o for o in extra) else 20
    run(compose_train(CNN + extra + [f"optim.chunk_size={batch}"]), tmp_path / "whole")
    assert chosen and set(chosen) == {batch}      # the step's passes, and the measurements', took what was asked
    chosen.clear()
    run(compose_train(CNN + extra + ["optim.chunk_size=6"]), tmp_path / "chunks")
    assert chosen and set(chosen) == {6}
    for whole_record, chunked in zip(final_records(tmp_path / "whole"), final_records(tmp_path / "chunks")):
        assert chunked["step"] == STEPS
        for field in ("train_loss", "test_loss", "param_drift", "kernel_change", "pred_gap_analytic"):
            assert chunked[field] == pytest.approx(whole_record[field], rel=1e-9), field
        # and the step moved the net: the comparison is not between two untrained nets
        assert whole_record["param_drift"] > 1e-3
    if not extra:       # the unchunked run is the fixture's, tested against hand-written GD
        assert final_records(tmp_path / "whole")[0]["train_loss"] == pytest.approx(
            metrics(cnn_run[1])[-1]["train_loss"], rel=1e-12)


def test_a_cnn_run_tracks_the_spectral_quantities(tmp_path):
    """The opt-in spectral quantities on a CNN (3 channels, GAP readout: 34 parameters, so the loss
    Hessian can be formed densely): at θ_0 the run's top two eigenvalues of Θ̂ on the 8-image spectrum
    set are those of the jacobian-method NTK, and its sharpness, at a tight
    Lanczos tolerance, the top eigenvalue of the dense Hessian of L on those images. Float64
    throughout: rel 1e-8 leaves room for Lanczos' and eigh's rounding only."""
    from ntklab.hessian import LossHessian

    overrides = CNN + ["depth=1", "width=3", "model.pool_after=[]", "model.readout=gap", "track.spectrum_points=8",
                       "track.quantities=[kernel_change,ntk_top_eigenvalues,sharpness,gauss_newton_share]",
                       "track.top_eigenvalues=2", "track.lanczos_steps=34", "track.lanczos_tol=1e-12"]
    cfg = compose_train(overrides)
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "ok"
    records = metrics(tmp_path / "run")
    first, last = records[0], records[-1]
    assert "ntk_top_eigenvalues" in last and "sharpness" in last and "gauss_newton_share" in last
    data = load_data(cfg.data, images=True)
    net = build_net(cnn_layers(1, 3, data.out_dim, readout="gap", sigma_w=cfg.model.sigma_w, sigma_b=cfg.model.sigma_b),
                    data.x_train.shape[1:], seed=0, dtype=torch.float64)
    assert sum(p.numel() for p in net.parameters()) == summary["n_params"] == 34
    x, y = data.x_train[:8], data.y_train[:8]
    assert data.out_dim == 1        # the scalar targets of CNN's digits config: Θ̂ is 8 × 8
    ntk = empirical_ntk(net, x, method="jacobian")
    assert first["ntk_top_eigenvalues"] == pytest.approx(torch.linalg.eigvalsh(ntk).flip(0)[:2].tolist(), rel=1e-8)
    hessian = torch.linalg.eigvalsh(LossHessian(net, x, y).dense()).flip(0)
    assert first["sharpness"] == pytest.approx(hessian[0].item(), rel=1e-8)
    assert first["hessian_top_eigenvalues"] == pytest.approx(hessian[:2].tolist(), rel=1e-8)


def test_a_stopped_cnn_run_with_several_outputs_resumes_to_the_identical_metrics(tmp_path):
    """One-hot targets (10 outputs; 20·10 ≤ full_kernel_limit, so the full empirical kernels), flatten
    readout: stopped at step 5 (a checkpoint at 4) and resumed, the metrics are those of the run
    that went through, byte for byte, and the full kernel's predictions are among them."""
    overrides = CNN + ["data.targets=onehot", "model.readout=flatten", "track.checkpoint_every=4"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run(compose_train(overrides + ["stop_after=5"]), parts)["status"] == "stopped"
    resumed = run(compose_train(overrides), parts)
    reference = run(compose_train(overrides), whole)
    assert (parts / results.METRICS).read_bytes() == (whole / results.METRICS).read_bytes()
    assert resumed["final"] == reference["final"] and resumed["linear_kernel"] == "full"
    assert math.isfinite(resumed["final"]["pred_gap_linear"]) and resumed["final"]["pred_gap_linear"] > 0
