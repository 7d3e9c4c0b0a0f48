"""``compile=MODE``: the training step's forward and backward through ``torch.compile``. A compiled
run must be the same run as an eager one up to rounding (fused elementwise code may round in another
order), for one net and for seeds at once (the vmapped loss compiled), with mini-batches and the
lazy scale α; a mode torch does not have is refused before anything runs.

Each compile takes ~10-20 s on 2 CPU cores (inductor generates and builds C++), hence ``slow``.
"""

import json

import pytest

from ntklab import results
from ntklab.errors import ConfigError
from ntklab.train import run
from tests.helpers import assert_same_run, compose_train, metrics

TINY = ["device=cpu", "width=32", "data.n_train=16", "data.n_test=8", "data.dim=4", "optim.steps=30",
        "track.log_steps=6", "track.probe_size=8", "track.progress=false", "track.plots=false", "dtype=float64"]


@pytest.mark.slow
def test_compiled_run_is_the_eager_run(tmp_path):
    # full-batch GD with momentum: the compiled forward and backward, the optimizer eager
    extra = ["optim.momentum=0.5"]
    run(compose_train(TINY + extra), tmp_path / "eager")
    run(compose_train(TINY + extra + ["compile=default"]), tmp_path / "compiled")
    assert "compile: default" in (tmp_path / "compiled" / results.CONFIG).read_text()
    assert_same_run(tmp_path / "eager", tmp_path / "compiled", differing=("compile",))
    # the run trained: the loss fell by orders of magnitude, so agreement is not that of two idle runs
    records = metrics(tmp_path / "compiled")
    assert records[-1]["train_loss"] < 0.1 * records[0]["train_loss"]
    # the compilation happens in the first step, which the summary times on its own: it is longer
    # than any later step (seconds against ~1 ms) and part of the steps' time
    timing = json.loads((tmp_path / "compiled" / results.SUMMARY).read_text())["timing"]
    later = (timing["steps_s"] - timing["first_step_s"]) / 29
    assert later < timing["first_step_s"] <= timing["steps_s"]


@pytest.mark.slow
def test_compiled_seeds_at_once_are_the_eager_ones(tmp_path):
    # the vmapped loss of two members compiled, each drawing its own mini-batches, trained as α(f − f_0);
    # reduce-overhead, whose CUDA graphs the CPU skips, for the step marking around its calls
    extra = ["seeds=2", "optim=sgd", "optim.batch_size=6", "model.alpha=2"]
    run(compose_train(TINY + extra), tmp_path / "eager")
    run(compose_train(TINY + extra + ["compile=reduce-overhead"]), tmp_path / "compiled")
    for seed in (0, 1):
        assert_same_run(tmp_path / "eager" / f"seed_{seed}", tmp_path / "compiled" / f"seed_{seed}",
                        differing=("compile",))


def test_unknown_compile_mode_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^compile: unknown value 'fast'.*reduce-overhead"):
        run(compose_train(TINY + ["compile=fast"]), tmp_path / "bad")
    assert json.loads((tmp_path / "bad" / results.SUMMARY).read_text())["status"] == "failed"


@pytest.mark.cuda
def test_cuda_graphs_run_is_the_eager_run(tmp_path):
    # reduce-overhead: the compiled step replayed as a CUDA graph; float32 on the device
    extra = ["device=cuda", "dtype=float32", "width=256", "optim.steps=40"]
    run(compose_train(TINY + extra), tmp_path / "eager")
    run(compose_train(TINY + extra + ["compile=reduce-overhead"]), tmp_path / "compiled")
    assert_same_run(tmp_path / "eager", tmp_path / "compiled", dtype="float32", differing=("compile",))
