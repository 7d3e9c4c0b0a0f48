"""Seeds at once (``seeds=M``, ntklab/train/ensemble.py) against M separate runs with seed=s: the same
files with the same numbers (to float rounding: the batched step sums in another order), a seed
that diverges while the others go on, stop and resume, collect's one row per seed, and bad values.
"""

import json

import pandas as pd
import pytest

from ntklab import results
from ntklab.collect import collect
from ntklab.errors import ConfigError
from ntklab.train import run
from tests.helpers import assert_same_run, compose_train, metrics

TINY = ["device=cpu", "width=32", "data.n_train=16", "data.n_test=8", "data.dim=4", "optim.steps=30",
        "track.log_steps=6", "track.probe_size=8", "track.progress=false", "track.plots=false"]
# the default tracked quantities plus the opt-in spectral ones (measured per seed at the log steps)
SPECTRAL = ["track.quantities=[param_drift,kernel_change,kernel_to_limit,pred_gap_analytic,pred_gap_linear,"
            "ntk_top_eigenvalues,sharpness]"]


@pytest.mark.parametrize("extra", [["dtype=float64"] + SPECTRAL,
                                   ["optim=sgd", "optim.batch_size=6", "optim.steps=30", "model.alpha=2",
                                    "dtype=float64", "optim.lr_unit=eta_max_empirical"],
                                   ["model=cnn", "data=digits", "width=8", "dtype=float64"],
                                   []],
                         ids=["gd_spectral", "sgd_momentum_alpha_empirical_lr", "cnn", "float32_default_tracking"])
def test_seeds_at_once_equal_separate_runs(tmp_path, extra):
    overrides = TINY + extra
    dtype = "float64" if "dtype=float64" in extra else "float32"
    summary = run(compose_train(overrides + ["seed=3", "seeds=3"]), tmp_path / "group")
    assert summary == {"status": "ok", "runs": {"seed_3": "ok", "seed_4": "ok", "seed_5": "ok"}}
    index = json.loads((tmp_path / "group" / results.SEEDS).read_text())
    assert index == {"seeds": [3, 4, 5], "run_dirs": ["seed_3", "seed_4", "seed_5"]}
    learning_rates = set()
    for seed in (3, 4, 5):
        run(compose_train(overrides + [f"seed={seed}"]), tmp_path / f"alone_{seed}")
        assert_same_run(tmp_path / f"alone_{seed}", tmp_path / "group" / f"seed_{seed}", dtype)
        learning_rates.add(json.loads((tmp_path / f"alone_{seed}" / results.SUMMARY).read_text())["learning_rate"])
    # the nets differ (each its own θ_0): the same numbers are not a copy of one seed's
    finals = {metrics(tmp_path / "group" / f"seed_{s}")[-1]["train_loss"] for s in (3, 4, 5)}
    assert len(finals) == 3
    if "optim.lr_unit=eta_max_empirical" in extra:     # each seed's η from its own Θ̂_0
        assert len(learning_rates) == 3


def test_a_diverging_seed_stops_and_the_others_go_on(tmp_path):
    # at 1.2 η_max a width-1024 depth-1 net's loss rises above 3× its initial value for five of these six
    # seeds, at steps 2 to 11, mostly between log steps (the losses are read every 4 steps and the
    # diverged step recovered from them); seed 0 catapults back and converges
    overrides = TINY + ["width=1024", "depth=1", "optim.lr=1.2", "optim.divergence_factor=3",
                        "optim.divergence_check_every=4", "dtype=float64", "optim.steps=60", "track.log_steps=3"]
    summary = run(compose_train(overrides + ["seeds=6"]), tmp_path / "group")
    assert summary["status"] == "diverged"
    steps = {}
    for seed in range(6):
        run(compose_train(overrides + [f"seed={seed}"]), tmp_path / f"alone_{seed}")
        alone = json.loads((tmp_path / f"alone_{seed}" / results.SUMMARY).read_text())
        assert alone["status"] == summary["runs"][f"seed_{seed}"]
        steps[seed] = alone["diverged_at_step"]
        # the same diverged step and loss, and the files of θ at that step (predictions, kernels)
        assert_same_run(tmp_path / f"alone_{seed}", tmp_path / "group" / f"seed_{seed}")
    assert steps == {0: None, 1: 9, 2: 11, 3: 3, 4: 2, 5: 3}


def test_seeds_stop_resume_and_collect(tmp_path):
    # mini-batches and momentum: the batch generators and momentum buffers go through each seed's checkpoint
    overrides = TINY + ["seeds=2", "track.checkpoint_every=10", "optim=sgd", "optim.batch_size=8", "optim.steps=30"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(compose_train(overrides), whole)
    assert run(compose_train(overrides + ["stop_after=14"]), parts) == {
        "status": "stopped", "runs": {"seed_0": "stopped", "seed_1": "stopped"}}
    for seed in (0, 1):     # each seed's reference kernels are saved for the resume, and go at the end
        assert (parts / f"seed_{seed}" / results.CHECKPOINT).exists()
        assert (parts / f"seed_{seed}" / results.REFERENCE).exists()
    table, skipped = collect([parts])
    assert list(table["status"]) == ["unfinished", "unfinished"] and not skipped
    run(compose_train(overrides), parts)
    for seed in (0, 1):     # resumed: the same bytes as the uninterrupted group
        assert (parts / f"seed_{seed}" / results.METRICS).read_bytes() == \
            (whole / f"seed_{seed}" / results.METRICS).read_bytes()
        assert not (parts / f"seed_{seed}" / results.REFERENCE).exists()
    assert run(compose_train(overrides), parts)["runs"] == {"seed_0": "ok", "seed_1": "ok"}   # finished: as is
    (tmp_path / "multirun.yaml").write_text("{}\n")     # as if whole/ and parts/ were a sweep's job folders
    table, skipped = collect([tmp_path])
    assert not skipped and len(table) == 4 and set(table["status"]) == {"ok"}
    assert sorted(table["seed"]) == [0, 0, 1, 1] and set(table["seeds"]) == {1}
    assert sorted(pd.Series(table["run_dir"]).map(lambda p: p.split("/")[-1])) == ["seed_0", "seed_0", "seed_1",
                                                                                     "seed_1"]


def test_bad_seeds_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^seeds: must be an integer >= 1, got 0"):
        run(compose_train(TINY + ["seeds=0"]), tmp_path / "zero")
    assert json.loads((tmp_path / "zero" / results.SUMMARY).read_text())["status"] == "failed"
    with pytest.raises(ConfigError, match=r"^seeds: seed \+ seeds - 1 must be at most 2\*\*62 - 1"):
        run(compose_train(TINY + [f"seed={2 ** 62 - 2}", "seeds=3"]), tmp_path / "past")
    run(compose_train(TINY + ["optim.steps=2"]), tmp_path / "single")
    with pytest.raises(ConfigError, match="holds a single run"):
        run(compose_train(TINY + ["optim.steps=2", "seeds=2"]), tmp_path / "single")
    run(compose_train(TINY + ["optim.steps=2", "seeds=2"]), tmp_path / "group")
    with pytest.raises(ConfigError, match="holds seeds trained at once"):
        run(compose_train(TINY + ["optim.steps=2"]), tmp_path / "group")
    with pytest.raises(ConfigError, match="different config"):
        run(compose_train(TINY + ["optim.steps=3", "seeds=2"]), tmp_path / "group")
    assert not (tmp_path / "group" / results.SUMMARY).exists()      # the group's folder is no run
