"""Plain functions that several test modules share: ``from tests.helpers import ...``.

Fixtures and collection hooks live in conftest.py; no test module imports from another one.
"""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_inputs(n, d, generator, dtype=torch.float64):
    return torch.randn(n, d, generator=generator, dtype=dtype)


def gradient_descent(model, x, y, learning_rate, steps, params=None):
    """θ ← θ − η ∇L for ``steps`` full-batch steps, L = 1/(2Nk) Σ‖f(x) − y‖² (docs/design.md, section 3)."""
    from ntklab.dynamics import mse_loss

    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    for _ in range(steps):
        grads = torch.autograd.grad(mse_loss(model(x), y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(learning_rate * g)
    return model


# ----------------------------------------------------------------------------- configs and runs

def compose_config(config_name, overrides=()):
    """The config ``python -m ntklab <config_name> OVERRIDES`` would run, composed in-process with
    Hydra's compose API from the same YAML."""
    from hydra import compose, initialize_config_module

    from ntklab.config import register_configs

    register_configs()
    with initialize_config_module(config_module="ntklab.configs", version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def compose_train(overrides):
    return compose_config("train", overrides)


def metrics(run_dir):
    """The records of a run directory's metrics.jsonl."""
    from ntklab import results

    return results.read_metrics(run_dir / results.METRICS)


# (relative, absolute) tolerances of two runs' numbers that should agree to rounding: float64 runs
# (seeds at once against separate runs, compiled against eager) agree to ~1e-14 relative (measured),
# float32 ones to ~1e-6
RECORD_TOLERANCE = {"float64": (1e-9, 1e-12), "float32": (1e-4, 1e-6)}


def assert_records_close(a, b, name="", tolerance=RECORD_TOLERANCE["float64"]):
    """Records (nested dicts, lists, numbers) equal up to float rounding; strings and None exactly."""
    if isinstance(a, dict):
        assert set(a) == set(b), name
        for key in a:
            assert_records_close(a[key], b[key], f"{name}.{key}", tolerance)
    elif isinstance(a, list):
        assert len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b)):
            assert_records_close(x, y, f"{name}[{i}]", tolerance)
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=tolerance[0], abs=tolerance[1]), name
    else:
        assert a == b, name


def assert_same_run(first, second, dtype="float64", differing=()):
    """Two run directories hold the same run to rounding (``RECORD_TOLERANCE[dtype]``): config.yaml,
    metrics, summary (but timing) and the saved tensors; the top-level config keys ``differing``
    (say "compile") may differ, in config.yaml and in the summary's copy of the config."""
    from ntklab import results

    tolerance = RECORD_TOLERANCE[dtype]
    kept = lambda lines: [line for line in lines if line.split(":")[0] not in differing]
    assert kept((second / results.CONFIG).read_text().splitlines()) == \
        kept((first / results.CONFIG).read_text().splitlines())
    assert_records_close(metrics(first), metrics(second), "metrics", tolerance)
    summaries = [json.loads((d / results.SUMMARY).read_text()) for d in (first, second)]
    for summary in summaries:
        summary.pop("timing")
        for key in differing:
            summary["config"].pop(key)
    assert_records_close(summaries[0], summaries[1], "summary", tolerance)
    for name in (results.PREDICTIONS, results.KERNELS):
        assert (first / name).exists() == (second / name).exists(), name
        if not (first / name).exists():
            continue
        a, b = torch.load(first / name), torch.load(second / name)
        for key in a:
            if torch.is_tensor(a[key]):
                torch.testing.assert_close(b[key], a[key], rtol=tolerance[0], atol=tolerance[1], msg=f"{name} {key}")


# ----------------------------------------------------------------------------- the command line

def start_ntklab(*args, cwd):
    """Start `python -m ntklab ARGS` in ``cwd`` without waiting: a Popen with text stdout/stderr."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, "-m", "ntklab", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def ntklab(*args, cwd, wait=True):
    """Run `python -m ntklab ARGS`: (stdout, stderr, exit code), or the running process if not ``wait``."""
    process = start_ntklab(*args, cwd=cwd)
    return process.communicate(timeout=300) + (process.returncode,) if wait else process


def wait_until(condition, timeout_s, what, every_s=0.2, details=lambda: ""):
    """Poll ``condition()`` every ``every_s`` until it is true; fail the test after ``timeout_s``, naming
    ``what`` was awaited and appending ``details()`` (e.g. the queue's state)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s} s for {what}\n{details()}")
        time.sleep(every_s)


def stop_all(processes):
    """Kill what is still running (a test failed before waiting for it) and reap everything."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


# ----------------------------------------------------------------------------- figure scripts

def draw(script, table, out_dir, *extra):
    """Run scripts/SCRIPT.py on ``table``; check the PNG and PDF and return the numbers it saved
    with them (STEM.json)."""
    stem = out_dir / script
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", f"{script}.py"), str(table),
                           "--out", str(stem), *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    png = stem.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000      # an empty axes alone is ~5 kB
    assert stem.with_suffix(".pdf").stat().st_size > 1000
    return json.loads(stem.with_suffix(".json").read_text())


def monte_carlo_kernel_errors(arch_of, x, channels, samples):
    """Per width: the root mean square over seeds of each net's relative Frobenius error
    ‖K̂ − K‖/‖K‖ (NTK and readout NNGP), and the error of the seeds' average kernel.

    arch_of(c): the ntklab.layers arch with c channels; x: (N, C, H, W) float64 images; seeds
    1000·c + 0..samples−1. Returns ({"ntk": [...], "nngp": [...]} RMS errors by width, the same for
    the average kernel)."""
    from ntklab import analytic_kernels, build_net, empirical_nngp, empirical_ntk

    analytic = analytic_kernels(arch_of(8), x)
    rms = {"ntk": [], "nngp": []}
    of_average = {"ntk": [], "nngp": []}
    for c in channels:
        sums = {"ntk": 0.0, "nngp": 0.0}
        squares = {"ntk": 0.0, "nngp": 0.0}
        for seed in range(samples):
            net = build_net(arch_of(c), in_shape=x.shape[1:], seed=1000 * c + seed, dtype=torch.float64)
            for kind, kernel in (("ntk", empirical_ntk(net, x, method="structured")),
                                 ("nngp", empirical_nngp(net, x, method="readout"))):
                reference = getattr(analytic, kind)
                sums[kind] = sums[kind] + kernel
                squares[kind] += (((kernel - reference).norm() / reference.norm()).item()) ** 2
        for kind in rms:
            reference = getattr(analytic, kind)
            rms[kind].append(math.sqrt(squares[kind] / samples))
            of_average[kind].append(((sums[kind] / samples - reference).norm() / reference.norm()).item())
    return rms, of_average


def mcnemar_by_hand(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value as the binomial sum written out (integers, no scipy):
    2 Σ_{i ≤ min(b, c)} C(b + c, i) / 2^(b + c), at most 1; 1 when b + c = 0."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** discordant)
