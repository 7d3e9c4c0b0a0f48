"""``python -m ntklab regress``: kernel regression with the analytic NNGP and NTK, checked against the
same solve done directly (analytic_kernels and torch.linalg.solve), ridge selection on a held-out
split checked by hand, and a killed job that resumes to the identical result.
"""

import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from ntklab import analytic_kernels, resources, results
from ntklab.collect import collect, read_table
from ntklab.commands import regress
from ntklab.compare import CompareError, compare_runs
from ntklab.compare import main as compare_main
from ntklab.errors import ConfigError
from ntklab.nets import cnn_layers
from ntklab.train.trainer import load_data
from tests.helpers import (ROOT, compose_config, draw, mcnemar_by_hand, ntklab, start_ntklab, stop_all,
                           wait_until)

# flatten readout: its kernel needs only the spatial diagonal, so these stay fast (GAP is tested in test_cntk.py)
SMALL = ["data.n_train=40", "data.n_test=30", "width=4", "depth=1", "model.readout=flatten", "device=cpu",
         "block_size=16", "progress=false"]


def _small_arch(cfg, data):
    """The SMALL configs' net, built here from its layers: 4 channels, flatten readout, depth 1 (or
    the config's)."""
    return cnn_layers(cfg.model.depth, 4, data.out_dim, readout="flatten", sigma_w=cfg.model.sigma_w,
                      sigma_b=cfg.model.sigma_b)


def _direct(cfg, ridge=0.0):
    """The kernels and the solve written out: (K + σ²I) α = Y by LU, f* = K* α, per kernel."""
    data = load_data(cfg.data, images=True)
    arch = _small_arch(cfg, data)
    train = analytic_kernels(arch, data.x_train)
    test = analytic_kernels(arch, data.x_test, data.x_train)
    out = {}
    for kind in ("nngp", "ntk"):
        k_train, k_test = getattr(train, kind), getattr(test, kind)
        k_train = k_train + ridge * k_train.diagonal().mean() * torch.eye(len(k_train), dtype=torch.float64)
        predicted = k_test @ torch.linalg.solve(k_train, data.y_train)
        eigenvalues = torch.linalg.eigvalsh(k_train)
        out[kind] = {"predicted": predicted,
                     "accuracy": (predicted.argmax(1) == data.labels_test).double().mean().item(),
                     "mse": (predicted - data.y_test).pow(2).mean().item(),
                     "condition_number": (eigenvalues[-1] / eigenvalues[0]).item()}
    return data, out


def test_regress_matches_the_solve_done_directly(tmp_path):
    cfg = compose_config("regress", SMALL)
    summary = regress.run(cfg, tmp_path / "run")
    assert summary == json.loads((tmp_path / "run" / regress.REGRESSION_JSON).read_text())
    data, direct = _direct(cfg)
    # balanced one-hot targets centred by the train mean: 0.9 for the class, −0.1 elsewhere
    assert torch.allclose(data.y_train.unique(), torch.tensor([-0.1, 0.9], dtype=torch.float64), atol=1e-15)
    for kind in ("nngp", "ntk"):
        result = summary["kernels"][kind]
        # the command's eigendecomposition and LU agree to rounding on a well-conditioned kernel:
        # the MSE to 1e-8 relative; accuracies are counts over 30 points and must match exactly
        assert result["test_accuracy"] == direct[kind]["accuracy"]
        assert result["test_mse"] == pytest.approx(direct[kind]["mse"], rel=1e-8)
        assert 0.5 < result["test_accuracy"] <= 1.0          # a CNTK on digits is far above chance (0.1)
        # float64 kernels of 40 distinct images: every direction fitted; the condition number that of
        # the same matrix's eigenvalues from eigvalsh (two LAPACK calls: rounding of λ_min, ~1e-10 here)
        assert result["unfitted_directions"] == 0
        assert result["condition_number"] == pytest.approx(direct[kind]["condition_number"], rel=1e-6)
    entries = 40 * 41 // 2 + 30 * 40
    assert summary["timings"]["kernel_entries"] == entries


def test_the_cholesky_solver_gives_the_direct_solve_and_auto_takes_it_above_its_size(tmp_path, monkeypatch):
    cfg = compose_config("regress", SMALL + ["ridge=1e-3", "solver=cholesky"])
    summary = regress.run(cfg, tmp_path / "cholesky")
    eigh = regress.run(compose_config("regress", SMALL + ["ridge=1e-3", "solver=eigh"]), tmp_path / "cholesky")
    _, direct = _direct(cfg, ridge=1e-3)
    predicted = torch.load(tmp_path / "cholesky" / results.PREDICTIONS, weights_only=True)   # eigh's, the last run
    for kind in ("nngp", "ntk"):
        result = summary["kernels"][kind]
        assert result["solver"] == "cholesky" and result["condition_number"] is None
        # LU and Cholesky of the same well-conditioned (ridge 1e-3) system: rounding apart
        assert result["test_accuracy"] == direct[kind]["accuracy"] == eigh["kernels"][kind]["test_accuracy"]
        assert result["test_mse"] == pytest.approx(direct[kind]["mse"], rel=1e-8)
        assert eigh["kernels"][kind]["solver"] == "eigh"
        torch.testing.assert_close(predicted[kind], direct[kind]["predicted"], rtol=1e-7, atol=1e-9)
    # auto: an eigendecomposition up to EIGH_MAX_N train points, the factorisation above
    assert regress.solver_for(compose_config("regress", SMALL), 20_000) == "eigh"
    assert regress.solver_for(compose_config("regress", SMALL), 20_001) == "cholesky"
    monkeypatch.setattr(regress, "EIGH_MAX_N", 39)
    auto = regress.run(compose_config("regress", SMALL + ["ridge=1e-3"]), tmp_path / "auto")
    assert all(auto["kernels"][kind]["solver"] == "cholesky" for kind in ("nngp", "ntk"))
    assert auto["kernels"]["ntk"]["test_mse"] == pytest.approx(summary["kernels"]["ntk"]["test_mse"], rel=1e-12)


def test_cholesky_passes_over_ridges_that_leave_the_kernel_singular_and_says_which(tmp_path, monkeypatch):
    cfg = compose_config("regress", SMALL + ["solver=cholesky", "ridges=[0,1e-2]"])
    data = load_data(cfg.data, images=True)
    generator = torch.Generator().manual_seed(0)
    # rank 5 of 40, nudged below 0: no factorisation without a ridge, one with 1e-2 of the mean diagonal
    factor = torch.randn(data.n_train, 5, generator=generator, dtype=torch.float64)
    k_train = factor @ factor.T - 1e-9 * torch.eye(data.n_train, dtype=torch.float64)
    k_test = torch.randn(data.n_test, 5, generator=generator, dtype=torch.float64) @ factor.T
    diagonal = k_train.diagonal().clone()
    summary, _ = regress.solve(k_train, k_test, data, cfg)
    assert summary["ridge"] == 1e-2
    refused, chosen = summary["held_out"]
    assert refused["ridge"] == 0 and "not positive definite" in refused["error"] and "accuracy" in chosen
    with pytest.raises(ConfigError, match=r"ridge: .*not positive definite.*eps·‖K‖_F / mean diag K = "):
        regress.solve(k_train, k_test, data, compose_config("regress", SMALL + ["solver=cholesky"]))
    with pytest.raises(regress.NotPositiveDefinite):
        regress.predict_cholesky(k_train, k_test, data.y_train, 0.0)
    # a ridge that factorises the fit part but not all 40 points gives way to the next larger that scored
    wider = compose_config("regress", SMALL + ["solver=cholesky", "ridges=[0,1e-2,1e-1]"])
    original = regress.predict_cholesky

    def refuse_all_points_below(limit):
        def predict(k, k_star, y, ridge, overwrite=False):
            if len(k) == data.n_train and ridge < limit:
                raise regress.NotPositiveDefinite("refused")
            return original(k, k_star, y, ridge, overwrite=overwrite)
        return predict

    monkeypatch.setattr(regress, "predict_cholesky", refuse_all_points_below(1e-1))
    fallen_back, _ = regress.solve(k_train, k_test, data, wider)
    scored = [t for t in fallen_back["held_out"] if "error" not in t]
    best = min(scored, key=lambda t: -t["accuracy"])["ridge"]         # the held-out choice, ties to the smallest
    assert fallen_back["ridge"] == 1e-1
    assert fallen_back["refused_on_all_points"] == ([1e-2] if best == 1e-2 else None)
    monkeypatch.setattr(regress, "predict_cholesky", refuse_all_points_below(1.0))
    with pytest.raises(ConfigError, match=r"^ridges: refused: give a ridge above"):
        regress.solve(k_train, k_test, data, wider)
    monkeypatch.undo()
    # overwrite=True factorises in K's place (the held-out loop's own copies): the same prediction
    kept = regress.predict_cholesky(k_train, k_test, data.y_train, 1e-2)
    own = k_train.clone()
    # the same up to rounding: the LAPACK kernels that factorise a column-major K in place and a copy
    # differ by CPU (bitwise equal on an Intel Xeon, 1e-13 apart on an AMD EPYC, outputs of order 0.5)
    torch.testing.assert_close(regress.predict_cholesky(own, k_test, data.y_train, 1e-2, overwrite=True), kept,
                               rtol=1e-10, atol=1e-12)
    factor = own.mT.tril()         # the factor in K's storage, column-major: L's transpose row-major
    torch.testing.assert_close(factor @ factor.T, k_train + 1e-2 * diagonal.mean() * torch.eye(len(own),
                               dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(k_train.diagonal(), diagonal)      # K's diagonal put back exactly, after every attempt


def test_ridges_are_chosen_on_a_held_out_split_and_the_blocks_are_reused(tmp_path):
    run_dir = tmp_path / "run"
    regress.run(compose_config("regress", SMALL), run_dir)
    blocks = sorted((run_dir / regress.BLOCKS).iterdir())
    stamps = [p.stat().st_mtime_ns for p in blocks]
    ridges = [0.0, 0.1, 10.0]
    # given unsorted and one twice: each tried once, in increasing order
    cfg = compose_config("regress", SMALL + ["ridges=[10.0,0.0,0.1,0.0]", "validation_fraction=0.25"])
    summary = regress.run(cfg, run_dir)         # other ridges: same kernels, solved again
    assert [p.stat().st_mtime_ns for p in sorted((run_dir / regress.BLOCKS).iterdir())] == stamps
    data = load_data(cfg.data, images=True)
    fit, held_out = regress._held_out_split(40, 0.25, 0)
    assert len(held_out) == 10 and sorted(torch.cat([fit, held_out]).tolist()) == list(range(40))
    arch = _small_arch(cfg, data)
    kernels = analytic_kernels(arch, data.x_train)
    for kind in ("nngp", "ntk"):
        k = getattr(kernels, kind)
        k_fit = k[fit][:, fit]
        scores = []
        for ridge in ridges:
            system = k_fit + ridge * k_fit.diagonal().mean() * torch.eye(len(fit), dtype=torch.float64)
            predicted = k[held_out][:, fit] @ torch.linalg.solve(system, data.y_train[fit])
            scores.append((predicted.argmax(1) == data.labels_train[held_out]).double().mean().item())
        tried = summary["kernels"][kind]["held_out"]
        assert [t["accuracy"] for t in tried] == scores
        best = max(scores)
        assert summary["kernels"][kind]["ridge"] == ridges[scores.index(best)]     # first of the best
        _, direct = _direct(cfg, ridge=summary["kernels"][kind]["ridge"])
        assert summary["kernels"][kind]["test_accuracy"] == direct[kind]["accuracy"]


def test_float32_kernels_are_stored_as_computed_and_solved_in_float64(tmp_path):
    cfg = compose_config("regress", SMALL + ["dtype=float32"])
    summary = regress.run(cfg, tmp_path / "run")
    data = load_data(cfg.data, images=True)
    arch = _small_arch(cfg, data)
    grid = regress.BlockGrid(40, 30, 16)
    chunks = grid.chunks(40)
    for split, r, c in grid.blocks:
        saved = torch.load(tmp_path / "run" / regress.BLOCKS / grid.file_name((split, r, c)), weights_only=True)
        rows = (data.x_train if split == "train" else data.x_test)[grid.chunks(40 if split == "train" else 30)[r]]
        # each block as float32 arithmetic gave it (half a float64 block's bytes), bit for bit
        direct = (analytic_kernels(arch, rows, dtype=torch.float32) if (split == "train" and r == c)
                  else analytic_kernels(arch, rows, data.x_train[chunks[c]], dtype=torch.float32))
        for kind in ("nngp", "ntk"):
            assert saved[kind].dtype == torch.float32
            assert torch.equal(saved[kind], getattr(direct, kind))
    # the solve: the whole float32 kernels, widened, against LU in float64. The kernels agree with the
    # blocks to float32 rounding (~1e-7 relative: blocks and whole matrix batch the arithmetic
    # differently), amplified by condition numbers < 1e4 (4.5e3 and 7.7e2 here): the predictions
    # differed by 2e-6 and 4e-7 relative, the MSEs by 1e-7; the MSE is held to 1e-4, and the 30
    # test classes must match
    predicted = torch.load(tmp_path / "run" / results.PREDICTIONS, weights_only=True)
    train = analytic_kernels(arch, data.x_train, dtype=torch.float32)
    test = analytic_kernels(arch, data.x_test, data.x_train, dtype=torch.float32)
    for kind in ("nngp", "ntk"):
        k_train, k_test = getattr(train, kind).double(), getattr(test, kind).double()
        direct = k_test @ torch.linalg.solve(k_train, data.y_train)
        result = summary["kernels"][kind]
        assert predicted[kind].dtype == torch.float64
        assert result["condition_number"] < 1e4 and result["unfitted_directions"] == 0
        assert result["test_mse"] == pytest.approx((direct - data.y_test).pow(2).mean().item(), rel=1e-4)
        assert torch.equal(predicted[kind].argmax(1), direct.argmax(1))
        assert result["test_accuracy"] == (direct.argmax(1) == data.labels_test).double().mean().item()
    # blocks that earlier versions saved widened to float64 narrow back exactly: the same solve
    for path in (tmp_path / "run" / regress.BLOCKS).glob("*.pt"):
        saved = torch.load(path, weights_only=True)
        results.save_torch(path, {**saved, "nngp": saved["nngp"].double(), "ntk": saved["ntk"].double()})
    assert regress.run(cfg, tmp_path / "run")["kernels"] == summary["kernels"]


def test_held_out_ridges_score_scalar_targets_at_the_midpoint_of_both_classes(tmp_path):
    # two classes as centred ±1 scalars; a held-out part of 2 images may hold one class only, and is
    # scored at the threshold between the two classes' target values, as the test set is
    overrides = SMALL + ["data.classes=[3,8]", "data.targets=scalar", "data.center_targets=true",
                         "ridges=[0,0.1,10]", "validation_fraction=0.05"]
    cfg = compose_config("regress", overrides)
    summary = regress.run(cfg, tmp_path / "run")
    data = load_data(cfg.data, images=True)
    midpoint = (data.y_train.max() + data.y_train.min()).item() / 2
    fit, held_out = regress._held_out_split(40, 0.05, 0)
    assert len(held_out) == 2
    arch = _small_arch(cfg, data)
    kernels = analytic_kernels(arch, data.x_train)
    for kind in ("nngp", "ntk"):
        k = getattr(kernels, kind)
        for tried, ridge in zip(summary["kernels"][kind]["held_out"], (0.0, 0.1, 10.0)):
            k_fit = k[fit][:, fit]
            system = k_fit + ridge * k_fit.diagonal().mean() * torch.eye(len(fit), dtype=torch.float64)
            predicted = k[held_out][:, fit] @ torch.linalg.solve(system, data.y_train[fit])
            right = (predicted > midpoint) == (data.y_train[held_out] > midpoint)
            assert tried["accuracy"] == right.double().mean().item()


def test_partial_saves_of_a_killed_worker_are_removed(tmp_path):
    run_dir = tmp_path / "run"
    assert regress.run(compose_config("regress", SMALL + ["stop_after_blocks=1"]), run_dir)["status"] == "stopped"
    grid = regress.BlockGrid(40, 30, 16)
    missing = run_dir / regress.BLOCKS / grid.file_name(grid.blocks[-1])
    # what a worker killed while saving leaves: the atomic write's temporary files
    leftovers = [missing.with_name(f".{missing.name}.tmp"), run_dir / f".{results.REGRESSION}.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")
    assert regress.run(compose_config("regress", SMALL), run_dir)["status"] == "ok"
    assert missing.exists() and not any(path.exists() for path in leftovers)


def test_a_block_that_cannot_be_read_is_named_with_what_to_do(tmp_path):
    regress.run(compose_config("regress", SMALL), tmp_path / "run")
    grid = regress.BlockGrid(40, 30, 16)
    broken = tmp_path / "run" / regress.BLOCKS / grid.file_name(grid.blocks[1])
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(results.RunDirCorrupt) as err:
        regress.run(compose_config("regress", SMALL + ["ridge=0.1"]), tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"{broken}: cannot be read") and "delete it and run again" in message
    assert results.CHECKPOINT not in message            # a training run's remedy, not this one's
    broken.unlink()
    assert regress.run(compose_config("regress", SMALL + ["ridge=0.1"]), tmp_path / "run")["status"] == "ok"
    assert broken.exists()

def test_a_block_of_another_shape_is_named_with_what_to_do(tmp_path):
    regress.run(compose_config("regress", SMALL), tmp_path / "run")
    grid = regress.BlockGrid(40, 30, 16)
    # the last train block is 8 × 8 (rows and columns 32…39); one of 16 × 16 cannot come from this run
    wrong = tmp_path / "run" / regress.BLOCKS / grid.file_name(("train", 2, 2))
    saved = torch.load(wrong, weights_only=True)
    torch.save({**saved, "ntk": torch.zeros(16, 16, dtype=saved["ntk"].dtype)}, wrong)
    with pytest.raises(results.RunDirCorrupt) as err:
        regress.run(compose_config("regress", SMALL), tmp_path / "run")
    assert str(err.value).startswith(f"{wrong}: holds kernels of shapes {{'nngp': (8, 8), 'ntk': (16, 16)}}, "
                                     "not (8, 8)") and "delete it and run again" in str(err.value)


def test_a_refused_worker_leaves_the_runs_directory_as_it_is(tmp_path):
    run_dir = tmp_path / "run"
    assert regress.run(compose_config("regress", SMALL + ["stop_after_blocks=2"]), run_dir)["status"] == "stopped"
    # another config, or a bad one, started on a run that is still going: refused, and the run's
    # directory gets no failed regression.json that collect would show as the run's status
    for overrides, message in ((["data.n_train=20"], "holds a run with a different config"),
                               (["model.readout=max"], "model.readout: must be one of")):
        with pytest.raises(ConfigError, match=message):
            regress.run(compose_config("regress", SMALL + overrides), run_dir)
        assert not (run_dir / regress.REGRESSION_JSON).exists()
    # a directory holding another run's config (a training run's, say) gets no kernel_blocks/ either
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(run_dir / results.CONFIG, other / results.CONFIG)
    with pytest.raises(ConfigError, match="holds a run with a different config"):
        regress.run(compose_config("regress", SMALL + ["data.n_train=20"]), other)
    # (only the empty lock files the workers of any directory take)
    assert sorted(path.name for path in other.iterdir() if not path.name.endswith(".lock")) == [results.CONFIG]
    # the run itself then finishes, and a failure of its own is recorded (a block it cannot read)
    assert regress.run(compose_config("regress", SMALL), run_dir)["status"] == "ok"
    shutil.rmtree(run_dir / regress.BLOCKS)
    (run_dir / regress.REGRESSION_JSON).unlink()
    (run_dir / regress.BLOCKS).mkdir()
    grid = regress.BlockGrid(40, 30, 16)
    (run_dir / regress.BLOCKS / grid.file_name(grid.blocks[0])).write_bytes(b"partial")
    with pytest.raises(results.RunDirCorrupt):
        regress.run(compose_config("regress", SMALL), run_dir)
    summary = json.loads((run_dir / regress.REGRESSION_JSON).read_text())
    assert summary["status"] == "failed" and "cannot be read" in summary["error"]


def test_a_worker_that_arrives_during_the_solve_returns_its_result(tmp_path, monkeypatch):
    run_dir, cfg = tmp_path / "run", compose_config("regress", SMALL)
    solves, real_solve, real_stamp = [], regress.solve, regress._file_stamp
    late_worker, late_result, late_started = [], [], threading.Event()

    def stamp(path):
        if threading.current_thread() in late_worker:
            late_started.set()
        return real_stamp(path)

    def solve_while_a_worker_arrives(*args):
        if not late_worker:
            # a job-array task that starts while this worker solves: it waits for the solve to end
            # (the directory's exclusive lock, held here), then finds every block computed
            late_worker.append(threading.Thread(target=lambda: late_result.append(regress.run(cfg, run_dir))))
            late_worker[0].start()
            assert late_started.wait(timeout=60)
        solves.append(1)
        return real_solve(*args)

    monkeypatch.setattr(regress, "_file_stamp", stamp)
    monkeypatch.setattr(regress, "solve", solve_while_a_worker_arrives)
    summary = regress.run(cfg, run_dir)
    late_worker[0].join(timeout=120)
    # one solve per kernel, not two: the late worker returns the result written while it waited
    assert len(solves) == 2 and late_result == [summary]


@pytest.mark.cuda
def test_regress_on_cuda_matches_the_cpu_run(tmp_path):
    # kernels and solve on the GPU (with ridges, so the held-out split indexes device tensors too)
    ridges = ["ridges=[0,0.1]", "validation_fraction=0.25"]
    on_cpu = regress.run(compose_config("regress", SMALL + ridges), tmp_path / "cpu")
    on_device = [o if o != "device=cpu" else "device=cuda" for o in SMALL]
    on_cuda = regress.run(compose_config("regress", on_device + ridges), tmp_path / "cuda")
    for kind in ("nngp", "ntk"):
        cpu, cuda = on_cpu["kernels"][kind], on_cuda["kernels"][kind]
        # float64 kernels and eigendecompositions on two devices differ by rounding, ~1e-13 relative in
        # the entries; the 30 test points' classes and the chosen ridge cannot move at that size
        assert (cuda["ridge"], cuda["test_accuracy"]) == (cpu["ridge"], cpu["test_accuracy"])
        assert cuda["test_mse"] == pytest.approx(cpu["test_mse"], rel=1e-8)
    cpu_predicted = torch.load(tmp_path / "cpu" / results.PREDICTIONS, weights_only=True)
    cuda_predicted = torch.load(tmp_path / "cuda" / results.PREDICTIONS, weights_only=True)
    for kind in ("nngp", "ntk"):
        assert cuda_predicted[kind].device.type == "cpu"
        torch.testing.assert_close(cuda_predicted[kind], cpu_predicted[kind], rtol=1e-8, atol=1e-10)


def test_a_killed_regress_resumes_to_the_identical_result(tmp_path):
    # a GAP readout (the full spatial covariance) makes each block slow enough to be caught mid-run
    overrides = ["data.n_train=30", "data.n_test=12", "width=4", "depth=1", "device=cpu", "block_size=6",
                 "progress=false"]
    total = len(regress.BlockGrid(30, 12, 6).blocks)            # 15 train + 10 test blocks
    blocks_dir = tmp_path / "killed" / regress.BLOCKS
    process = start_ntklab("regress", *overrides, "hydra.run.dir=killed", cwd=tmp_path)
    try:
        wait_until(lambda: process.poll() is not None or len(list(blocks_dir.glob("*.pt"))) >= 3, 120,
                   "three saved blocks", every_s=0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    finally:
        stop_all([process])
    saved = len(list(blocks_dir.glob("*.pt")))
    assert 3 <= saved < total, saved            # killed part-way
    resumed = regress.run(compose_config("regress", overrides), tmp_path / "killed")
    whole = regress.run(compose_config("regress", overrides), tmp_path / "whole")
    assert resumed["kernels"] == whole["kernels"]
    assert len(list(blocks_dir.glob("*.pt"))) == total


def test_block_elements_changes_only_the_grouping_and_a_rerun_with_another_reuses_the_blocks(tmp_path):
    # GAP on digits: each pair carries its full (8·8)² = 4096-entry covariance, so block_elements=4096
    # runs one pair per pass where the default (2^20) runs a whole 8 × 8 block in one
    overrides = ["data.n_train=24", "data.n_test=8", "width=4", "depth=1", "device=cpu", "block_size=8",
                 "progress=false"]
    one_pair = regress.run(compose_config("regress", overrides + ["block_elements=4096"]), tmp_path / "one")
    whole = regress.run(compose_config("regress", overrides), tmp_path / "whole")
    blocks = sorted((tmp_path / "one" / regress.BLOCKS).glob("*.pt"))
    assert len(blocks) == len(regress.BlockGrid(24, 8, 8).blocks)
    for block in blocks:
        first, second = (torch.load(run / regress.BLOCKS / block.name, weights_only=True)
                         for run in (tmp_path / "one", tmp_path / "whole"))
        for kind in regress.KINDS:
            # the same entries, grouped otherwise: the global-average-pool sums add in another order
            # (2e-16 measured; 1e-13 leaves room for longer sums, far below any effect on the solve)
            torch.testing.assert_close(first[kind], second[kind], rtol=1e-13, atol=0)
    for kind in regress.KINDS:
        assert one_pair["kernels"][kind]["test_accuracy"] == whole["kernels"][kind]["test_accuracy"]
    stamps = [block.stat().st_mtime_ns for block in blocks]
    rerun = regress.run(compose_config("regress", overrides + ["block_elements=8192"]), tmp_path / "one")
    assert [block.stat().st_mtime_ns for block in blocks] == stamps         # not one block recomputed
    assert rerun["kernels"] == one_pair["kernels"]


@pytest.mark.parametrize("holder_saves", [True, False], ids=["holder saves it", "holder dies"])
def test_a_worker_leaves_a_held_block_to_its_holder_and_takes_it_over_if_the_holder_dies(tmp_path, holder_saves):
    # The test process is the other worker: it holds one block's lock while regress runs in a thread.
    cfg = compose_config("regress", SMALL)
    whole = regress.run(cfg, tmp_path / "whole")
    grid = regress.BlockGrid(40, 30, 16)
    held, name = grid.blocks[0], grid.file_name(grid.blocks[0])
    blocks_dir = tmp_path / "shared" / regress.BLOCKS
    blocks_dir.mkdir(parents=True)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(regress.run(cfg, tmp_path / "shared")))
    with results.file_lock(blocks_dir / f".{name}.lock", wait=False) as got:
        assert got
        worker.start()
        others = [blocks_dir / grid.file_name(b) for b in grid.blocks if b != held]
        wait_until(lambda: all(path.exists() for path in others), 120, "the blocks nobody holds", every_s=0.02)
        time.sleep(0.5)             # the worker now waits on the held block: it must neither compute it nor end
        assert not (blocks_dir / name).exists() and worker.is_alive()
        if holder_saves:
            shutil.copy2(tmp_path / "whole" / regress.BLOCKS / name, blocks_dir / name)
            saved_stamp = (blocks_dir / name).stat().st_mtime_ns
    worker.join(timeout=120)
    assert not worker.is_alive() and outcome, "the worker did not finish"
    if holder_saves:        # not computed again
        assert (blocks_dir / name).stat().st_mtime_ns == saved_stamp
    # the same blocks (float64, computed the same way) give the identical solve
    assert outcome[0]["kernels"] == whole["kernels"]
    assert json.loads((tmp_path / "shared" / regress.REGRESSION_JSON).read_text())["kernels"] == whole["kernels"]


def test_two_regress_processes_fill_one_run_directory_together(tmp_path):
    overrides = SMALL + ["hydra.run.dir=shared"]
    processes = [start_ntklab("regress", *overrides, cwd=tmp_path) for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        stop_all(processes)
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]
    grid = regress.BlockGrid(40, 30, 16)
    blocks_dir = tmp_path / "shared" / regress.BLOCKS
    assert sorted(p.name for p in blocks_dir.glob("*.pt")) == sorted(grid.file_name(b) for b in grid.blocks)
    assert not list(blocks_dir.glob(".*.lock"))           # each claim removed with its block
    whole = regress.run(compose_config("regress", SMALL), tmp_path / "whole")
    assert json.loads((tmp_path / "shared" / regress.REGRESSION_JSON).read_text())["kernels"] == whole["kernels"]


def test_without_a_progress_bar_the_log_counts_the_blocks(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(regress, "PROGRESS_LOG_SECONDS", 0.0)        # a line after every block
    grid = regress.BlockGrid(40, 30, 16)
    with caplog.at_level("INFO", logger=regress.log.name):
        regress.run(compose_config("regress", SMALL + ["stop_after_blocks=1"]), tmp_path / "run")
        regress.run(compose_config("regress", SMALL), tmp_path / "run")      # resumes with the rest
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kernel blocks:")]
    n = len(grid.blocks)        # 3·4/2 train blocks on and above the diagonal, 2·3 test ones
    assert n == 12
    # the pairs each block holds, in the order they are computed: train rows of 16, 16 and 8 images,
    # so the diagonal blocks hold 16·17/2, 16·17/2 and 8·9/2 pairs, the others rows × columns
    sizes = {0: 16, 1: 16, 2: 8}
    pairs = [sizes[r] * (sizes[r] + 1) // 2 if split == "train" and r == c else
             (sizes[r] if split == "train" else [16, 14][r]) * sizes[c] for split, r, c in grid.blocks]
    assert sum(pairs) == 40 * 41 // 2 + 30 * 40
    parsed = [re.fullmatch(r"kernel blocks: (\d+) of (\d+) done \((\d+) by this worker\), (\d+) of (\d+) entries "
                           r"\(([\d.]+)%\)(, about [\d:]+ left)?", line) for line in lines]
    assert all(parsed), lines
    # done counts every block in the directory, "by this worker" only this invocation's
    assert [tuple(int(m[i]) for i in (1, 2, 3)) for m in parsed] == [(1, n, 1)] + [(k, n, k - 1) for k in range(2, n + 1)]
    assert [int(m[4]) for m in parsed] == list(itertools.accumulate(pairs))
    assert {int(m[5]) for m in parsed} == {sum(pairs)}
    # the time left appears once the call has saved entries to measure a rate by, and not once all are in
    assert [m[7] is not None for m in parsed] == [True] * (n - 1) + [False]


def test_workers_of_one_directory_solve_once_and_a_rerun_solves_again(tmp_path, monkeypatch):
    run_dir, cfg = tmp_path / "run", compose_config("regress", SMALL)
    solves, real_solve, compute_blocks = [], regress.solve, regress.compute_blocks
    monkeypatch.setattr(regress, "solve", lambda *args: solves.append(1) or real_solve(*args))

    def coworker_finishes_first(*args, **kwargs):
        done = compute_blocks(*args, **kwargs)
        if not coworker:
            # a second worker (progress shown) reaches the solve first, while this one still computes;
            # the place is taken first because the co-worker's own compute_blocks comes back here
            coworker.append(None)
            coworker[0] = regress.run(compose_config("regress", SMALL[:-1] + ["progress=true"]), run_dir)
        return done

    coworker = []
    monkeypatch.setattr(regress, "compute_blocks", coworker_finishes_first)
    summary = regress.run(cfg, run_dir)
    # two workers, one solve per kernel: the first's result, file and all, is the second's
    assert len(solves) == 2 and summary == coworker[0]
    assert summary == json.loads((run_dir / regress.REGRESSION_JSON).read_text())
    monkeypatch.setattr(regress, "compute_blocks", compute_blocks)
    regress.run(cfg, run_dir)                   # a rerun of a finished directory solves again
    assert len(solves) == 4
    # a worker that joins with other ridges solves for them itself, the blocks shared
    coworker.clear()
    shutil.rmtree(run_dir)
    monkeypatch.setattr(regress, "compute_blocks", coworker_finishes_first)
    other = regress.run(compose_config("regress", SMALL + ["ridges=[0,1]"]), run_dir)
    assert len(solves) == 4 + 2 + 2 and other["kernels"]["ntk"]["held_out"] is not None
    assert coworker[0]["kernels"]["ntk"]["held_out"] is None


@pytest.fixture(scope="module")
def regress_sweep(tmp_path_factory):
    """`regress -m` over n_train and readout, collected: the table of +sweep=cntk in miniature."""
    root = tmp_path_factory.mktemp("regress_sweep")
    out, err, code = ntklab("regress", "-m", "data.n_train=20,30", "model.readout=flatten,gap", "data.n_test=10",
                            "width=4", "depth=1", "device=cpu", "progress=false", "hydra.sweep.dir=sweep", cwd=root)
    assert code == 0, err
    out, err, code = ntklab("collect", "sweep", cwd=root)
    assert code == 0, err
    return root / "sweep" / "results.csv"


def test_a_regress_sweep_collects_into_one_table(regress_sweep):
    """One ok row per job, each with the test accuracy of both kernels its regression.json says."""
    table = read_table(regress_sweep)
    assert sorted(zip(table["data.n_train"], table["model.readout"])) == [
        (20, "flatten"), (20, "gap"), (30, "flatten"), (30, "gap")]
    assert (table["status"] == "ok").all() and (table["command"] == "regress").all()
    for _, row in table.iterrows():
        summary = json.loads((Path(row["run_dir"]) / regress.REGRESSION_JSON).read_text())
        for kind in ("nngp", "ntk"):
            assert row[f"kernels.{kind}.test_accuracy"] == summary["kernels"][kind]["test_accuracy"]


def test_collect_tells_unfinished_regress_and_train_runs_apart(tmp_path):
    """A stopped regress run (config.yaml and kernel blocks, no summary) is regress; a run that left
    only its config.yaml is what Hydra's record of it says, and nothing where there is none."""
    regress.run(compose_config("regress", SMALL + ["stop_after_blocks=1"]), tmp_path / "stopped")
    for name, job in (("hydra_train", "train"), ("bare", None)):
        (tmp_path / name).mkdir()
        shutil.copy(tmp_path / "stopped" / results.CONFIG, tmp_path / name / results.CONFIG)
        if job:
            (tmp_path / name / ".hydra").mkdir()
            (tmp_path / name / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"name": job}}}))
    table, _ = collect([tmp_path])
    commands = {Path(r).name: c for r, c in zip(table["run_dir"], table["command"])}
    assert commands["stopped"] == "regress" and commands["hydra_train"] == "train" and pd.isna(commands["bare"])
    assert set(table["status"]) == {"unfinished"}


def test_a_regress_sweep_over_depth_gives_each_depths_direct_solve(tmp_path):
    """`regress -m depth=1,2`: one job per depth, each with the test accuracy and MSE of the solve done
    directly with that depth's analytic kernels (counts over 30 images: equal; MSE to 1e-8, as above).
    The two depths' kernels differ, so their MSEs differ well beyond that tolerance."""
    out, err, code = ntklab("regress", "-m", "depth=1,2", *[o for o in SMALL if not o.startswith("depth=")],
                            "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert code == 0, err
    assert ntklab("collect", "sweep", cwd=tmp_path)[2] == 0
    table = read_table(tmp_path / "sweep" / "results.csv")
    assert sorted(table["model.depth"]) == [1, 2] and (table["status"] == "ok").all()
    mse = {}
    for depth in (1, 2):
        row = table[table["model.depth"] == depth]
        _, direct = _direct(compose_config("regress", SMALL + [f"depth={depth}"]))
        for kind in ("nngp", "ntk"):
            assert row[f"kernels.{kind}.test_accuracy"].item() == direct[kind]["accuracy"]
            assert row[f"kernels.{kind}.test_mse"].item() == pytest.approx(direct[kind]["mse"], rel=1e-8)
        mse[depth] = direct["ntk"]["mse"]
    assert abs(mse[1] - mse[2]) > 1e-4 * mse[1]


def test_the_cntk_figure_shows_the_accuracies_and_the_fitted_gap(regress_sweep, tmp_path):
    """scripts/fig_cntk.py: each method's accuracy by n as the regress jobs measured it, and for each
    n the trained CNNs' accuracy by channels, their own CNTK's accuracy (the regress row of the same
    depth, readout and n) and their prediction gap's power law, refitted here by hand."""
    out, err, code = ntklab("train", "-m", "model=cnn", "data=digits", "width=4,16", "seed=0,1", "depth=1",
                            "model.readout=flatten", "data.n_train=20,30", "data.n_test=10", "optim.steps=20",
                            "data.targets=onehot", "data.center_targets=true",     # as regress's targets
                            "track.log_steps=3", "track.probe_size=8", "track.progress=false", "track.plots=false",
                            "track.save_kernels=false", "device=cpu", "hydra.sweep.dir=trained", cwd=tmp_path)
    assert code == 0, err
    assert ntklab("collect", "trained", cwd=tmp_path)[2] == 0
    numbers = draw("fig_cntk", regress_sweep, tmp_path, "--trained", str(tmp_path / "trained" / "results.csv"))
    table = read_table(regress_sweep)
    for readout, kind, method in (("gap", "ntk", "CNTK-GAP"), ("flatten", "nngp", "NNGP-V")):
        for n in (20, 30):
            row = table[(table["model.readout"] == readout) & (table["data.n_train"] == n)]
            assert numbers["kernel"][method][str(n)] == row[f"kernels.{kind}.test_accuracy"].item()
    trained = read_table(tmp_path / "trained" / "results.csv")
    assert sorted(numbers["trained"]) == ["20", "30"]
    for n in (20, 30):
        runs = trained[trained["data.n_train"] == n]
        for width in (4, 16):
            assert numbers["trained"][str(n)]["accuracy"][str(width)] == pytest.approx(
                runs.loc[runs["model.width"] == width, "final.test_accuracy"].mean(), rel=1e-12)
        # the dashed line: the depth-1 flatten CNTK's accuracy at t = ∞ on the same n and test images
        own = table[(table["model.readout"] == "flatten") & (table["data.n_train"] == n)]
        assert numbers["trained"][str(n)]["cntk_accuracy"] == own["kernels.ntk.test_accuracy"].item()
        # the fitted exponent of the gap: least squares on log-log over the four runs (two seeds a width)
        slope = np.polyfit(np.log(runs["model.width"]), np.log(runs["final.pred_gap_analytic"]), 1)[0]
        assert numbers["trained"][str(n)]["pred_gap_fit"]["exponent"] == pytest.approx(slope, rel=1e-9)

    # one table of both sweeps (one collect) gives the same figure: each side takes its own rows
    both = tmp_path / "both.csv"
    pd.concat([table, trained]).to_csv(both, index=False)
    assert draw("fig_cntk", both, tmp_path / "both", "--trained", str(both)) == numbers
    # the nets' CNTK is the kernel row of their own targets: scalar-target nets have none in the table
    # (in process, as are the refusals below: a figure each would only cost time)
    sys.path.insert(0, str(Path(ROOT) / "scripts"))
    import fig_cntk

    assert fig_cntk.own_cntk_accuracy(table, trained[trained["data.n_train"] == 20]) == numbers["trained"]["20"][
        "cntk_accuracy"]
    assert fig_cntk.own_cntk_accuracy(table, trained[trained["data.n_train"] == 20].assign(
        **{"data.targets": "scalar"})) is None
    # runs of another data set in either table are refused, naming the setting, instead of averaged in
    with pytest.raises(SystemExit, match=r"differ in data.name \(digits, mnist\)"):
        fig_cntk.kernel_accuracies(pd.concat([table, table.assign(**{"data.name": "mnist"})]))
    with pytest.raises(SystemExit, match=r"a trained-CNN line would pool runs that differ in data.name \(digits, mnist\)"):
        fig_cntk.require_one_setting(pd.concat([trained, trained.assign(**{"data.name": "mnist"})]),
                                     fig_cntk.TRAINED_FREE, "a trained-CNN line")


def test_a_failed_regress_says_why_in_regression_json(tmp_path):
    with pytest.raises(ConfigError):
        regress.run(compose_config("regress", SMALL + ["model.readout=max"]), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / regress.REGRESSION_JSON).read_text())
    assert summary["status"] == "failed" and "model.readout: must be one of gap, flatten" in summary["error"]
    # and collect lists it (a refused run has no config.yaml, only this file), with the config as given
    table, skipped = collect([tmp_path])
    assert not skipped and table[["status", "command", "model.readout"]].values.tolist() == [["failed", "regress", "max"]]


def test_a_solve_the_memory_cannot_hold_is_refused_and_its_blocks_serve_a_later_one(tmp_path, monkeypatch, caplog):
    cfg = compose_config("regress", SMALL + ["solver=cholesky"])
    n, m = 40, 30
    # float64 kernels solved on the CPU: the two kernels and one Cholesky factor, no widened copy
    need = 2 * (n + m) * n * 8 + n * n * 8
    monkeypatch.setattr(resources, "available_bytes", lambda device: need - 1)
    with caplog.at_level("WARNING", logger="ntklab.commands.regress"), pytest.raises(ConfigError) as err:
        regress.run(cfg, tmp_path / "run")
    message = str(err.value)
    assert message.startswith("data.n_train: kernel regression on 40 train points (float64 kernels, the cholesky "
                              f"solve in float64) needs at least {resources.gigabytes(need)} of memory on the host")
    assert str(tmp_path / "run" / regress.BLOCKS) in message and "solver=cholesky" not in message
    assert "the kernel blocks are computed and saved here" in caplog.text     # said before computing them
    saved = sorted((tmp_path / "run" / regress.BLOCKS).glob("*.pt"))
    assert len(saved) == len(regress.BlockGrid(n, m, 16).blocks)
    assert json.loads((tmp_path / "run" / regress.REGRESSION_JSON).read_text())["status"] == "failed"
    # with the memory there, the same directory solves with the saved blocks and gives the direct
    # solve, also on another device (device=auto: a GPU's blocks solve on the host and the reverse)
    monkeypatch.setattr(resources, "available_bytes", lambda device: need)
    stamps = [path.stat().st_mtime_ns for path in saved]
    summary = regress.run(compose_config("regress", SMALL + ["solver=cholesky", "device=auto"]), tmp_path / "run")
    assert [path.stat().st_mtime_ns for path in saved] == stamps
    _, direct = _direct(cfg)
    assert summary["kernels"]["ntk"]["test_accuracy"] == direct["ntk"]["accuracy"]
    # eigh needs five n × n arrays beside K, not one: the message points to the Cholesky solve
    with pytest.raises(ConfigError, match="or use solver=cholesky"):
        regress.run(compose_config("regress", SMALL + ["solver=eigh"]), tmp_path / "run")


MEASURE_SOLVE = """
import sys, torch
from types import SimpleNamespace
from ntklab.commands import regress
torch.set_num_threads(1)
n, m, dtype, solver = 3000, 200, getattr(torch, sys.argv[1]), sys.argv[2]
g = torch.Generator().manual_seed(0)
a, b = torch.randn(n, 40, generator=g, dtype=dtype), torch.randn(m, 40, generator=g, dtype=dtype)
def kernel(rows):          # written into its own array: no temporary raises the peak before the solve
    out = torch.empty(len(rows), n, dtype=dtype)
    return torch.matmul(rows, a.T, out=out)
k_train, k_test = kernel(a), kernel(b)
k_train.diagonal().add_(1.0)
labels = torch.arange(n + m) % 10
y = torch.nn.functional.one_hot(labels).double() - 0.1
data = SimpleNamespace(y_train=y[:n], y_test=y[n:], labels_test=labels[n:], n_train=n)
cfg = SimpleNamespace(dtype=sys.argv[1], solver=solver, ridge=1e-3, ridges=[], validation_fraction=0.2, seed=0)
def status(field):         # this process's memory now (VmRSS) and at its peak (VmHWM), in bytes
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024
resident, peak = (lambda: status("VmRSS")), (lambda: status("VmHWM"))
before, peak_before = resident(), peak()
regress.solve(k_train.double(), k_test.double(), data, cfg)
print(before, peak_before, peak())
"""


# VmHWM, not getrusage's ru_maxrss: a child forked from pytest inherits the parent's peak in the latter
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from Linux's /proc")
def test_the_solves_memory_estimate_is_a_close_lower_bound_of_its_peak():
    """One kernel's solve, as _solve_and_write runs it, in a fresh process each (float32 kernels by
    eigh: a widened copy and eigh's arrays; float64 ones by Cholesky: the factor alone): the peak
    resident memory grows by at least the estimate's solving part and by at most 30% more (measured
    here: 2-7% more at n = 3000, the most for float64 Cholesky, whose n² estimate is the smallest;
    the part not counted is the n × 10 targets, the predictions, the saved diagonal and the
    allocator's slack)."""
    # one thread for OpenMP and MKL, whose per-thread scratch (~60 MB more here without these) does not grow with n
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cases = [("float32", "eigh"), ("float64", "cholesky")]
    processes = [subprocess.Popen([sys.executable, "-c", MEASURE_SOLVE, dtype, solver], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) for dtype, solver in cases]
    for (dtype, solver), process in zip(cases, processes):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        before, peak_before, peak = map(int, out.split())
        assert peak_before < before + 2 ** 20          # the kernels were built without a higher peak
        itemsize = 4 if dtype == "float32" else 8
        host, gpu = resources.regression_bytes(3000, 200, itemsize, solver, on_gpu=False)
        kernels = 2 * 3200 * 3000 * itemsize        # held by the host before the solve, in the baseline
        assert gpu == 0
        assert host - kernels <= peak - before <= 1.3 * (host - kernels), (solver, (peak - before) / (host - kernels))


@pytest.mark.parametrize("overrides, message", [
    (["ridge=-1"], "ridge: must be finite numbers >= 0"),
    (["validation_fraction=1.0"], "validation_fraction: must lie in (0, 1)"),
    (["block_elements=0"], "block_elements: must be an integer >= 1 or null"),
    (["solver=lu"], "solver: unknown value 'lu' (allowed: auto, eigh, cholesky)"),
    (["data=sphere", "data.targets=scalar"], "model=cnn takes images"),
])
def test_bad_regress_configs_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        regress.run(compose_config("regress", SMALL + overrides), tmp_path / "run")
    assert message in str(err.value)


@pytest.fixture
def compare(tmp_path, monkeypatch, capsys):
    """`python -m ntklab compare ARGS` as the command line runs it, in this process, from ``tmp_path``:
    (stdout, stderr, exit code)."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        code = compare_main(list(args))
        captured = capsys.readouterr()
        return captured.out, captured.err, code

    return run


def test_compare_pairs_two_kernels_on_the_same_test_images(tmp_path):
    """predictions.pt holds the solve done directly, and `compare` counts its 2×2 table and McNemar's
    p as they are counted here by hand. 20 train and 200 test digits: the NNGP and the NTK then
    disagree on a dozen or more images (at 40 train images both make 0–1 errors in 30)."""
    overrides = SMALL + ["data.n_train=20", "data.n_test=200", "hydra.run.dir=run"]
    out, err, code = ntklab("regress", *overrides, cwd=tmp_path)
    assert code == 0, err
    data, direct = _direct(compose_config("regress", SMALL + ["data.n_train=20", "data.n_test=200"]))
    saved = torch.load(tmp_path / "run" / results.PREDICTIONS, weights_only=True)
    right = {}
    for kind in ("nngp", "ntk"):
        # eigendecomposition against LU on a well-conditioned float64 kernel: rounding only
        assert torch.allclose(saved[kind], direct[kind]["predicted"], rtol=1e-8, atol=1e-10)
        right[kind] = direct[kind]["predicted"].argmax(1) == data.labels_test
    assert torch.equal(saved["labels_test"], data.labels_test) and torch.equal(saved["y_test"], data.y_test)
    only_nngp = int((right["nngp"] & ~right["ntk"]).sum())
    only_ntk = int((~right["nngp"] & right["ntk"]).sum())
    both, neither = int((right["nngp"] & right["ntk"]).sum()), int((~right["nngp"] & ~right["ntk"]).sum())
    assert only_nngp + only_ntk >= 10            # a table worth testing, not 0 against 0

    out, err, code = ntklab("compare", "run:nngp", "run", cwd=tmp_path)      # B's kind defaults to ntk
    assert code == 0, err
    assert f"images right       both {both}, only A {only_nngp}, only B {only_ntk}, neither {neither}" in out
    accuracy = {kind: right[kind].double().mean().item() for kind in right}
    assert f"accuracy           A {accuracy['nngp']:.4f}   B {accuracy['ntk']:.4f}" in out
    # the paired standard error is the population standard deviation of d_i over √M
    differences = right["ntk"].double() - right["nngp"].double()
    se = differences.std(unbiased=False).item() / math.sqrt(200)
    assert f"B − A              {differences.mean().item():+.4f} ± {se:.4f}" in out
    assert f"McNemar exact p    {mcnemar_by_hand(only_nngp, only_ntk):.4g}" in out


def test_compare_refuses_runs_it_cannot_pair(tmp_path, compare):
    """Another test draw, a kernel that is not there, a directory without predictions: exit code 2 and why."""
    for name, extra in (("a", []), ("b", ["data.seed=1"]), ("c", ["data.n_test=20"])):
        regress.run(compose_config("regress", SMALL + extra), tmp_path / name)
    out, err, code = ntklab("compare", "a", "b", cwd=tmp_path)         # once as a process
    assert code == 2 and "were tested on different images" in err, err
    # targets of another shape (fewer test images) fail the same way, not as a broadcasting error
    out, err, code = compare("a", "c")
    assert code == 2 and "were tested on different images" in err, err
    out, err, code = compare("a:nngp", "a:cntk")
    assert code == 2 and "has no output 'cntk'; it has nngp, ntk" in err, err

    def edited_copy(name, **changes):
        shutil.copytree(tmp_path / "a", tmp_path / name)
        saved = torch.load(tmp_path / name / results.PREDICTIONS, weights_only=True)
        torch.save({**saved, **changes}, tmp_path / name / results.PREDICTIONS)
        return tmp_path / name

    # a diverged run's outputs: argmax of a NaN row would count as a guess, so no accuracy is paired
    outputs = torch.load(tmp_path / "a" / results.PREDICTIONS, weights_only=True)["ntk"].clone()
    outputs[[3, 7]] = float("nan")
    with pytest.raises(CompareError, match="output 'ntk' is not finite on 2 of its 30 test images"):
        compare_runs(tmp_path / "a", None, edited_copy("diverged", ntk=outputs), None)
    # scalar targets all of one class: no threshold between the classes to score by
    one_class = dict(y_test=torch.full((30, 1), -0.5, dtype=torch.float64), ntk=outputs[:, :1].nan_to_num())
    with pytest.raises(CompareError, match="the test targets are scalar and all of one class"):
        compare_runs(edited_copy("scalar_a", **one_class), None, edited_copy("scalar_b", **one_class), None)
    # a run directory whose name holds a colon is a run, not RUN:KIND
    shutil.copytree(tmp_path / "a", tmp_path / "seed:1")
    out, err, code = compare("a", "seed:1")
    assert code == 0 and "only A 0, only B 0" in out, err
    # a run that failed says so, not that its solve should be rerun
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / results.REGRESSION).write_text(json.dumps({"status": "failed", "error": "ConfigError: data.root: none"}))
    with pytest.raises(CompareError, match=r"the run's status is 'failed' \(ConfigError: data.root: none\)"):
        compare_runs(tmp_path / "a", None, failed, None)
    (tmp_path / "a" / results.PREDICTIONS).unlink()
    out, err, code = compare("a", "b")
    assert code == 2 and "run the same `python -m ntklab regress` command in it again" in err, err
    # a run still in progress (its lock names a live process) says so; one whose process has ended,
    # or that this process ran itself (the lock names this pid now), reads as unfinished, as before
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "a" / results.LOCK).write_text(f"{live.pid}\n")
        out, err, code = compare("b", "a")
        assert code == 2 and f"a is still running (process {live.pid} holds it)" in err, err
    finally:
        live.kill()
        live.wait()
    for pid in (live.pid, os.getpid()):
        (tmp_path / "a" / results.LOCK).write_text(f"{pid}\n")
        out, err, code = compare("b", "a")
        assert code == 2 and "still running" not in err and "run the same" in err, err


def test_compare_tabulates_several_runs_against_one_and_each_against_its_own_kind(tmp_path, compare):
    """`compare A B C ...`: a row per B, each counted here by hand from the predictions.pt files; a B on
    another test set is named on stderr and left out (exit code 2); `:KIND` pairs each B with its own
    output of that kind; --csv writes the same rows."""
    for name, extra in (("a", ["data.n_test=200"]), ("other", ["data.n_test=200", "data.seed=1"])):
        regress.run(compose_config("regress", SMALL + ["data.n_train=20"] + extra), tmp_path / name)
    saved = torch.load(tmp_path / "a" / results.PREDICTIONS, weights_only=True)
    labels = saved["labels_test"]
    # b: a's predictions with the first 12 images a's NTK gets right turned wrong and 5 it gets wrong
    # turned right, so both B's rows have images only A and only B classify right
    ntk = saved["ntk"].clone()
    right = ntk.argmax(1) == labels
    to_wrong, to_right = torch.nonzero(right).flatten()[:12], torch.nonzero(~right).flatten()[:5]
    assert len(to_right) == 5
    ntk[to_wrong] = torch.nn.functional.one_hot((labels[to_wrong] + 1) % 10, 10).double()
    ntk[to_right] = torch.nn.functional.one_hot(labels[to_right], 10).double()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    torch.save({**saved, "ntk": ntk}, tmp_path / "b" / results.PREDICTIONS)

    def by_hand(outputs_a, outputs_b):
        right_a, right_b = outputs_a.argmax(1) == labels, outputs_b.argmax(1) == labels
        return int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())

    out, err, code = compare("a", "b", "b:nngp", "other", "--csv", "table.csv")
    assert code == 2 and "other were tested on different images" in err, err
    assert out.startswith("A = a ntk\n") and len(out.strip().splitlines()) == 4, out     # heading, header, 2 rows
    table = pd.read_csv(tmp_path / "table.csv")
    assert list(table["run_b"]) == ["b", "b"] and list(table["kind_b"]) == ["ntk", "nngp"]
    for row, outputs_b in zip(table.itertuples(), (ntk, saved["nngp"])):
        only_a, only_b = by_hand(saved["ntk"], outputs_b)
        assert (row.run_a, row.kind_a, row.images, row.only_a, row.only_b) == ("a", "ntk", 200, only_a, only_b)
        assert row.p_value == pytest.approx(mcnemar_by_hand(only_a, only_b), rel=1e-12)
        assert row.accuracy_b == pytest.approx(float((outputs_b.argmax(1) == labels).double().mean()), abs=1e-12)
    assert (table["only_a"].iloc[0], table["only_b"].iloc[0]) == (12, 5)       # the edit, counted back
    # each run's own NNGP against its own NTK
    out, err, code = compare(":nngp", "a", "b")
    assert code == 0, err
    assert out.startswith("A = each B run's own nngp\n"), out
    for name, outputs in (("a", saved["ntk"]), ("b", ntk)):
        only_a, only_b = by_hand(saved["nngp"], outputs)
        line = next(line for line in out.splitlines() if line.split()[0] == name)
        assert line.split()[5:7] == [str(only_a), str(only_b)], line
    # one B: the two-run report, as before
    out, err, code = compare(":nngp", "a")
    assert code == 0 and "A = a nngp\nB = a ntk\n" in out, out


def test_label_noise_moves_neither_the_class_threshold_nor_the_pairing(tmp_path, compare):
    """data.noise goes on the train targets only: the scalar classes' threshold comes from the clean
    test targets (the noisy train targets' extremes would move it), and compare pairs a noisy run with
    a clean one on the same images although centring by the noisy train mean shifted its targets."""
    scalar = SMALL + ["data.classes=[3,5]", "data.targets=scalar"]
    clean = regress.run(compose_config("regress", scalar), tmp_path / "clean")
    noisy = regress.run(compose_config("regress", scalar + ["data.noise=1.0"]), tmp_path / "noisy")
    saved = torch.load(tmp_path / "noisy" / results.PREDICTIONS, weights_only=True)
    low, high = saved["y_test"].unique().tolist()          # the two classes' (centred) values, no noise
    midpoint = (low + high) / 2
    y_train = load_data(compose_config("regress", scalar + ["data.noise=1.0"]).data, images=True).y_train
    assert y_train.unique().numel() == 40                  # noisy: the extremes are not the classes'
    assert abs((y_train.min() + y_train.max()).item() / 2 - midpoint) > 0.02
    for kind in ("ntk", "nngp"):
        by_hand = ((saved[kind] > midpoint) == (saved["y_test"] > midpoint)).double().mean().item()
        assert noisy["kernels"][kind]["test_accuracy"] == by_hand
    # the same images and classes, other target values: paired, each run scored against its own targets
    out, err, code = compare("clean", "noisy")
    assert code == 0, err
    assert (f"accuracy           A {clean['kernels']['ntk']['test_accuracy']:.4f}   "
            f"B {noisy['kernels']['ntk']['test_accuracy']:.4f}") in out
    # other classes on the same images are refused, counting them
    regress.run(compose_config("regress", SMALL + ["data.classes=[5,3]", "data.targets=scalar"]), tmp_path / "swapped")
    out, err, code = compare("clean", "swapped")
    assert code == 2 and "the same images with different classes on" in err, err


def test_compare_pairs_an_mlp_with_a_cnn_on_the_same_images(tmp_path):
    """An MLP's test images are the CNN's flattened: the two pair, and a regress run that stored its
    digest the earlier way (one, of the (M, C, H, W) tensor) still pairs with a CNN's run."""
    regress.run(compose_config("regress", SMALL), tmp_path / "cnn")
    mlp = [o for o in SMALL if o not in ("width=4", "depth=1", "model.readout=flatten")] + ["model=mlp"]
    regress.run(compose_config("regress", mlp), tmp_path / "mlp")
    saved = {name: torch.load(tmp_path / name / results.PREDICTIONS, weights_only=True) for name in ("cnn", "mlp")}
    comparison, kind_a, kind_b = compare_runs(tmp_path / "mlp", None, tmp_path / "cnn", "nngp")
    assert (kind_a, kind_b) == ("ntk", "nngp")
    right_mlp = saved["mlp"]["ntk"].argmax(1) == saved["mlp"]["labels_test"]
    right_cnn = saved["cnn"]["nngp"].argmax(1) == saved["cnn"]["labels_test"]
    assert (comparison.only_a, comparison.only_b) == (int((right_mlp & ~right_cnn).sum()),
                                                      int((~right_mlp & right_cnn).sum()))
    assert comparison.both_right == int((right_mlp & right_cnn).sum()) > 0
    # the earlier single digest: that of the images as the CNN took them
    x_cnn = load_data(compose_config("regress", SMALL).data, images=True).x_test
    legacy = {**saved["cnn"], "test_inputs_sha256": results.content_digest(x_cnn.float())}
    (tmp_path / "legacy").mkdir()
    results.save_torch(tmp_path / "legacy" / results.PREDICTIONS, legacy)
    assert compare_runs(tmp_path / "legacy", None, tmp_path / "cnn", None)[0].only_a == 0
    with pytest.raises(CompareError, match="different images"):      # that digest cannot see the MLP's layout
        compare_runs(tmp_path / "legacy", None, tmp_path / "mlp", None)


def test_compare_pairs_a_trained_cnn_with_kernel_regression_on_its_test_images(tmp_path, compare):
    """A float32 training run and a float64 regress run on the same digits pair (their test inputs
    agree once rounded to float32); the trained net's and its kernel's right and wrong images are
    counted from the two predictions.pt files by hand."""
    data_settings = ["data=digits", "data.n_train=20", "data.n_test=60", "data.targets=onehot",
                     "data.center_targets=true"]
    # the two commands at once, as processes; the comparisons in this process
    processes = [ntklab("train", "model=cnn", "width=8", "depth=1", "model.readout=flatten", *data_settings,
                        "optim.steps=30", "track.log_steps=3", "track.probe_size=8", "track.progress=false",
                        "track.plots=false", "track.save_kernels=false", "device=cpu", "dtype=float32",
                        "hydra.run.dir=trained", cwd=tmp_path, wait=False),
                 ntklab("regress", "width=8", "depth=1", "model.readout=flatten", *data_settings, "device=cpu",
                        "progress=false", "hydra.run.dir=kernel", cwd=tmp_path, wait=False)]
    try:
        for process in processes:
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err
    finally:
        stop_all(processes)
    trained = torch.load(tmp_path / "trained" / results.PREDICTIONS, weights_only=True)
    kernel = torch.load(tmp_path / "kernel" / results.PREDICTIONS, weights_only=True)
    # the trained run's inputs were float32 (saved widened to float64), the regress run's float64
    assert torch.equal(trained["x_test"].float().double(), trained["x_test"])
    assert not torch.equal(load_data(compose_config("regress", data_settings).data, images=True).x_test,
                           trained["x_test"])
    net_right = trained["f_final"].argmax(1) == kernel["labels_test"]
    for kind in ("ntk", "nngp"):
        kernel_right = kernel[kind].argmax(1) == kernel["labels_test"]
        out, err, code = compare("trained", f"kernel:{kind}")     # A's kind defaults to net
        assert code == 0, err
        counts = (int((net_right & kernel_right).sum()), int((net_right & ~kernel_right).sum()),
                  int((~net_right & kernel_right).sum()), int((~net_right & ~kernel_right).sum()))
        assert "A = trained net\n" in out
        assert "images right       both {}, only A {}, only B {}, neither {}".format(*counts) in out
    analytic_right = trained["f_pred_analytic"].argmax(1) == kernel["labels_test"]
    out, err, code = compare("trained:analytic", "trained:net")
    assert code == 0, err
    assert f"accuracy           A {analytic_right.double().mean().item():.4f}" in out


def test_regress_without_its_data_files_says_which_in_one_line_and_exits_2(tmp_path):
    # the same wrapper as train's (tests/test_cli.py), reached through regress's own data loading
    out, err, code = ntklab("regress", "data=mnist", f"data.root={tmp_path / 'no-data-here'}", "data.n_train=20",
                            "data.n_test=20", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in ("data.root", "train-images-idx3-ubyte", "mnist.pkl.gz"):
        assert text in err, (text, err)
    assert not (tmp_path / "run" / regress.BLOCKS).exists()       # refused before any kernel work


def test_the_cnn_presets_regress_and_train_the_same_net(tmp_path):
    """+sweep=cntk (kernels by n and readout) and +sweep=cnn_width (the net trained by channels) compose,
    and the trained net is the one whose flatten CNTK the kernel sweep regresses with."""
    params = {}
    for command, preset in (("regress", "cntk"), ("train", "cnn_width")):
        out, err, code = ntklab(command, f"+sweep={preset}", "data=mnist", "--cfg", "hydra", cwd=tmp_path)
        assert code == 0, err
        params[preset] = yaml.safe_load(out)["hydra"]["sweeper"]["params"]
    assert set(params["cntk"]["model.readout"].split(",")) == {"gap", "flatten"}
    assert len(params["cnn_width"]["seed"].split(",")) >= 2          # several seeds, as the issue asks
    widths = [int(w) for w in params["cnn_width"]["width"].split(",")]
    assert min(widths) == 64 and max(widths) == 1024
    trained = compose_config("train", ["+sweep=cnn_width", "data=mnist"])
    kernel = compose_config("regress", ["+sweep=cntk", "data=mnist", "model.readout=flatten"])
    assert trained.model.name == kernel.model.name == "cnn"
    net_fields = lambda cfg: {key: value for key, value in OmegaConf.to_container(cfg.model, resolve=True).items()
                              if key not in ("alpha", "width")}       # alpha: f − f_0 in training only
    assert net_fields(trained) == net_fields(kernel)
    assert trained.data.n_train in [int(n) for n in params["cntk"]["data.n_train"].split(",")]
    assert trained.data.n_test == kernel.data.n_test
