"""scripts/bench_vs_neural_tangents.py: its ntklab side on tiny sizes, without neural-tangents."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ntklab import ArchSpec, analytic_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "bench_vs_neural_tangents.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_vs_neural_tangents as bench  # noqa: E402


def test_ntklab_side_prints_every_row_and_the_set_up_hint(tmp_path):
    out_json = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, SCRIPT, "--quick-test-sizes", "--json", str(out_json)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "| cell | ntklab s | neural-tangents s | ratio (nt / ntklab) | max rel. difference |" in lines
    table = [line for line in lines if line.startswith("| ") and "not run" in line]
    expected = ([f"empirical {m}, width 16, N = 8" for m in ("structured", "jacobian", "ntvp")]
                + ["analytic relu, N = 12", "analytic erf, N = 12", "analytic tanh (quadrature), N = 3",
                   "CNTK global avg pool, 1 × 1 images (1 entries)", "CNTK flatten, 2 × 2 images (4 entries)"])
    assert [line.split(" | ")[0][2:] for line in table] == expected
    # the set-up hint: the exact pip line
    assert bench.NT_PIP in done.stdout
    assert '"neural-tangents==0.6.5" "jax[cpu]==0.4.25" "jaxlib==0.4.25" "numpy<2"' in bench.NT_PIP
    # the printed seconds are the measured ones (4 significant digits), positive and finite
    rows = json.loads(out_json.read_text())["rows"]
    assert [row["cell"] for row in rows] == expected
    for line, row in zip(table, rows):
        printed = float(line.split(" | ")[1])
        assert row["ntklab_s"] > 0 and math.isfinite(row["ntklab_s"])
        assert printed == pytest.approx(row["ntklab_s"], rel=1e-3)
        assert row["nt_s"] is None and row["ratio"] is None


def _cell(**fields):
    cell = {"id": "t0", "dtype": "float64", "variants": [""], **fields}
    cell["name"] = "test"
    return cell


def test_the_analytic_kernel_it_times_is_analytic_kernels(tmp_path):
    cell = _cell(kind="analytic", activation="erf", n=7)
    result = bench.ntklab_cell(cell, str(tmp_path), long_seconds=2.0, seed=3)
    assert result["seconds"] > 0 and result["kernels"] == ["nngp", "ntk"]
    # recompute from the inputs it hands to neural-tangents, independently of the script
    x = torch.from_numpy(np.load(tmp_path / "t0_x.npy"))
    assert x.shape == (7, bench.IN_DIM) and x.dtype == torch.float64
    direct = analytic_kernels(ArchSpec(depth=3, width=512, activation="erf", sigma_w=1.4, sigma_b=0.1), x)
    np.testing.assert_allclose(np.load(tmp_path / "t0_ours_nngp.npy"), direct.nngp.numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / "t0_ours_ntk.npy"), direct.ntk.numpy(), rtol=1e-12)


def test_the_weights_it_hands_over_give_the_kernel_it_timed(tmp_path):
    """The (in, out) weights written for neural-tangents, in its NTK parametrization
    z = σ_w/√fan_in · a W + σ_b · b, give the empirical NTK ntklab timed (by torch.func, independently)."""
    cell = _cell(kind="empirical", method="structured", width=6, n=5, dtype="float32")
    bench.ntklab_cell(cell, str(tmp_path), long_seconds=2.0, seed=1)
    x = torch.from_numpy(np.load(tmp_path / "t0_x.npy")).double()
    saved = np.load(tmp_path / "t0_params.npz")
    params = {key: torch.from_numpy(saved[key]).double() for key in saved.files}
    assert params["w0"].shape == (bench.IN_DIM, 6) and params["w3"].shape == (6, 1)

    def f(p, xi):
        a = xi
        for layer in range(4):
            w = p[f"w{layer}"]
            z = bench.SIGMA_W / math.sqrt(w.shape[0]) * a @ w + bench.SIGMA_B * p[f"b{layer}"]
            a = torch.relu(z) if layer < 3 else z
        return a.sum()

    jac = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0))(params, x)
    flat = torch.cat([jac[key].reshape(5, -1) for key in sorted(jac)], dim=1)
    np.testing.assert_allclose(np.load(tmp_path / "t0_ours_ntk.npy"), (flat @ flat.T).numpy(), rtol=2e-5, atol=1e-6)


def test_max_rel_diff_and_skips():
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 2.0], [3.0, 4.4]])
    assert bench.max_rel_diff([(a, b)]) == pytest.approx(0.4 / 4.4)
    args = bench.argparse.Namespace(quick=True, widths=[4096], n=[1024], methods=["ntvp"], analytic_n=[10],
                                    tanh_n=[1000], nt_tanh_deg=[25], n_gap=1, n_flatten=1, cntk_depth=2,
                                    cntk_size=4, max_seconds=60.0)
    skipped = {cell["name"] for cell in bench.make_cells(args) if "skip" in cell}
    assert skipped == {"empirical ntvp, width 4096, N = 1024", "analytic tanh (quadrature), N = 1000"}


def test_bench_regress_quick_run_prints_consistent_throughput():
    """scripts/bench_regress.py --quick: every table row present, entries/s = n(n+1)/2 / seconds."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_regress.py"), "--device", "cpu",
                           "--quick"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| gap") or
            line.startswith("| flatten")]
    assert [row[0][2:] for row in rows] == ["gap", "flatten"]
    for row in rows:
        n, seconds, rate = int(row[1]), float(row[3]), float(row[4].rstrip(" |").replace(",", ""))
        # seconds are printed to 1e-3 and the rate to a unit: recomputed, it agrees to those roundings
        assert rate == pytest.approx(n * (n + 1) / 2 / seconds, rel=0.6e-3 / seconds, abs=0.5)
    assert "| 50 |" in done.stdout
