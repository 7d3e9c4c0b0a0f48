import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A seeded CPU generator, so every test draws the same inputs on every run."""
    return torch.Generator().manual_seed(20261122)


def random_inputs(n, d, generator, dtype=torch.float64):
    return torch.randn(n, d, generator=generator, dtype=dtype)


def gradient_descent(model, x, y, learning_rate, steps, params=None):
    """θ ← θ − η ∇L for ``steps`` full-batch steps, L = 1/(2Nk) Σ‖f(x) − y‖² (DESIGN.md)."""
    from ntklab.dynamics import mse_loss

    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    for _ in range(steps):
        grads = torch.autograd.grad(mse_loss(model(x), y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(learning_rate * g)
    return model


def start_ntklab(*args, cwd):
    """Start `python -m ntklab ARGS` in ``cwd`` without waiting: a Popen with text stdout/stderr."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, "-m", "ntklab", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop_all(processes):
    """Kill what is still running (a test failed before waiting for it) and reap everything."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()
