"""Sweeps through SLURM: the request check against sinfo (fake sinfo output, no cluster needed), and,
marked ``slurm``, sweeps on a real scheduler: a sweep collected ok, a preempted task and a timed-out
one resuming byte-identically, failed and diverged jobs in the table, a request no node can run.

The ``slurm`` tests need the single-node cluster of ``scripts/local_slurm.sh start`` (``.ci/run``
starts it) and skip, saying why, when no cluster answers or when the one that answers is another
(they requeue and time out jobs; ``NTKLAB_SLURM_TESTS=any`` runs them there anyway). Every wait
polls with a deadline, no test sleeps a fixed time, and none depends on this machine's speed: a
run the scheduler must catch mid-way is paused (SIGSTOP) after its first checkpoint until SLURM has
signalled it. What the waits amount to, measured on the local cluster (2 CPUs): a task is training
~3.5 s after SLURM starts it; a requeued task is held for the cluster's credential lifetime (10 s)
and starts again 11-21 s after the requeue; slurmctld looks at time limits every 30 s and sends
the timeout warning at the first look within ``signal_delay_s`` + 30 s of the limit.
"""

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ntklab import results, slurm
from ntklab.train import run
from tests import helpers
from tests.helpers import compose_train, ntklab

# ----------------------------------------------------------------------------- 1. the request check (no cluster)

# sinfo --noheader --Node --format=%P|%N|%c|%m|%G|%l on a cluster with a default CPU partition of two
# nodes, a GPU partition of one and a short debug partition
SINFO = """cpu*|c1|64|257000|(null)|2-00:00:00
cpu*|c2|32|128000|(null)|2-00:00:00
gpu|g1|16|192000|gpu:a100:4(S:0-1)|1-00:00:00
debug|c1|64|257000|(null)|30:00
"""
PRESET = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
          "partition": None, "timeout_min": 60, "gpus_per_node": 1, "tasks_per_node": 1, "cpus_per_task": 8,
          "mem_gb": 32, "nodes": 1}      # configs/hydra/launcher/slurm.yaml's request


def refusal(sinfo=SINFO, **fields):
    return slurm.unrunnable({**PRESET, **fields}, slurm.read_partitions(sinfo))


def test_sinfo_is_read_node_by_node():
    partitions = slurm.read_partitions(SINFO)
    assert list(partitions) == ["cpu", "gpu", "debug"]
    assert [p.default for p in partitions.values()] == [True, False, False]
    assert partitions["gpu"].nodes == [slurm.Node("g1", cpus=16, memory_mb=192000, gpus=4)]
    assert [p.time_limit_min for p in partitions.values()] == [2880, 1440, 30]
    assert slurm.gpu_count("gpu:a100:2(S:0),gpu:v100:1,shard:8") == 3 and slurm.gpu_count("(null)") == 0
    for text, minutes in [("infinite", None), ("45", 45), ("30:00", 30), ("2:00:00", 120), ("1-12", 2160),
                          ("1-00:30:30", 1470.5)]:
        assert slurm.time_limit_minutes(text) == minutes, text
    assert [slurm.memory_mb(v) for v in ("4096", "4096M", "4G", "1T", "512K", None)] == [4096, 4096, 4096,
                                                                                      1024 ** 2, 0.5, None]


def test_a_request_some_node_can_run_passes():
    assert refusal(gpus_per_node=0) is None                             # 8 CPUs, 32 GB on the default partition
    assert refusal(partition="gpu", gpus_per_node=4, cpus_per_task=16) is None
    assert refusal(gpus_per_node=0, nodes=2, cpus_per_task=32) is None   # both nodes have 32 CPUs
    assert refusal(partition="cpu,gpu", gpus_per_node=2) is None         # a list: any of them may run it


def test_the_preset_on_a_small_node_names_every_field_to_override():
    small = "local*|vm|2|24105|(null)|infinite\n"
    line = refusal(sinfo=small)
    assert "\n" not in line
    for asked in ("cpus_per_task=8 (its nodes have at most 2 CPUs)", "mem_gb=32 (at most 23.5 GB)",
                  "gpus_per_node=1 (no GPUs)"):
        assert f"hydra.launcher.{asked}" in line, line
    assert line.endswith("override them, e.g. hydra.launcher.cpus_per_task=2 hydra.launcher.mem_gb=23 "
                         "hydra.launcher.gpus_per_node=0")
    assert "partition 'local'" in line


@pytest.mark.parametrize("fields, expected", [
    ({"gpus_per_node": 0, "cpus_per_task": 65}, "hydra.launcher.cpus_per_task=65 (its nodes have at most 64 CPUs)"),
    ({"gpus_per_node": 0, "cpus_per_task": 20, "tasks_per_node": 4},
     "hydra.launcher.cpus_per_task=20 × tasks_per_node=4 (its nodes have at most 64 CPUs); override it, "
     "e.g. hydra.launcher.cpus_per_task=16"),
    ({"gpus_per_node": 0, "mem_gb": None, "mem_per_cpu": "40G"},
     "hydra.launcher.mem_per_cpu=40G × 8 CPUs (at most 251.0 GB); override it, e.g. hydra.launcher.mem_per_cpu=32125M"),
    ({"partition": "gpu", "gpus_per_node": 4, "cpus_per_task": None, "cpus_per_gpu": 8},
     "hydra.launcher.cpus_per_gpu=8 × 4 GPUs (its nodes have at most 16 CPUs); override it, "
     "e.g. hydra.launcher.cpus_per_gpu=4"),
    ({"partition": "gpu", "gpus_per_node": 8}, "hydra.launcher.gpus_per_node=8 (at most 4 GPUs)"),
    ({"partition": "gpu", "gpus_per_node": None, "gres": "gpu:8"}, "hydra.launcher.gres=gpu:8 (at most 4 GPUs)"),
    ({"partition": "gpu", "gpus_per_node": None, "gpus_per_task": 2, "tasks_per_node": 4, "cpus_per_task": 1},
     "hydra.launcher.gpus_per_task=2 × tasks_per_node=4 (at most 4 GPUs); override it, "
     "e.g. hydra.launcher.gpus_per_task=1"),
    ({"gpus_per_node": 0, "nodes": 3}, "hydra.launcher.nodes=3 (2 of its 2 nodes could run one node's share)"),
    ({"gpus_per_node": 0, "nodes": 2, "cpus_per_task": 48}, "hydra.launcher.nodes=2 (1 of its 2 nodes"),
    ({"partition": "debug", "gpus_per_node": 0}, "hydra.launcher.timeout_min=60 (its time limit is 30 minutes)"),
    ({"partition": "tpu"},
     "hydra.launcher.partition=tpu: no partition 'tpu' on this cluster (partitions: cpu, debug, gpu)"),
])
def test_each_field_no_node_can_satisfy_is_named(fields, expected):
    line = refusal(**fields)
    assert line is not None and expected in line, line


def test_resources_no_single_node_has_together_are_refused():
    # the GPU node has the GPUs, the CPU nodes have the CPUs: each field fits some node, none fits all
    mixed = "all*|c1|64|257000|(null)|infinite\nall*|g1|16|192000|gpu:4|infinite\n"
    line = refusal(sinfo=mixed, cpus_per_task=32, gpus_per_node=1)
    assert "hydra.launcher.cpus_per_task=32, hydra.launcher.mem_gb=32, hydra.launcher.gpus_per_node=1 " \
           "(no node has all of these at once)" in line, line


def test_no_partition_and_no_default_one_is_refused():
    line = refusal(sinfo="a|n1|4|1000|(null)|infinite\nb|n2|4|1000|(null)|infinite\n", gpus_per_node=0)
    assert line == "hydra.launcher.partition is not set and this cluster has no default partition (partitions: a, b)"


def with_hydra_config(overrides):
    """The train config with its ``hydra`` node, as a sweep's callbacks receive it."""
    from hydra import compose, initialize_config_module

    from ntklab.config import register_configs

    register_configs()
    with initialize_config_module(config_module="ntklab.configs", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_without_sinfo_the_sweep_goes_ahead_and_says_why(monkeypatch, caplog):
    from ntklab import sweeps

    monkeypatch.setattr(slurm, "SINFO_COMMAND", ("ntklab-no-such-sinfo",))
    assert slurm.check_launcher(PRESET) == (None, "sinfo is not installed")
    assert slurm.check_launcher({**PRESET, "mem_gb": None, "mem_per_cpu": "lots"}, sinfo_text=SINFO)[1] \
        .startswith("cannot read 'lots' as a memory size")
    # the hook every sweep runs first: no exit, one warning (and nothing at all for another launcher)
    for launcher in ("slurm", "local"):
        sweeps.refuse_unrunnable_slurm_request(with_hydra_config([f"hydra/launcher={launcher}"]))
    assert [r.getMessage() for r in caplog.records] == [
        "the SLURM request was not checked against the partition's nodes: sinfo is not installed"]


def fake_sinfo(folder, output):
    """A ``sinfo`` on PATH that prints ``output``: the cluster the command line sees."""
    folder.mkdir()
    script = folder / "sinfo"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


TINY = ["device=cpu", "data.n_train=16", "data.n_test=16", "data.dim=4", "optim.steps=30", "track.log_steps=6",
        "track.probe_size=8", "track.progress=false", "track.plots=false"]


def test_a_sweep_no_node_can_run_stops_before_submitting_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_sinfo(tmp_path / "bin", "local*|vm|2|24105|(null)|infinite\n"))
    sweep = tmp_path / "sweep"
    out, err, code = ntklab("train", "-m", "hydra/launcher=slurm", "width=16,32", *TINY, f"hydra.sweep.dir={sweep}",
                            cwd=tmp_path)
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("ntklab train: no node of SLURM partition "
                                                                        "'local' could ever run a task asking "), err
    assert "hydra.launcher.cpus_per_task=8" in err and "hydra.launcher.gpus_per_node=0" in err
    assert not sweep.exists()           # nothing created, nothing submitted


# ----------------------------------------------------------------------------- 2. on a real scheduler

LOCAL_CLUSTER = "ntklab-local"      # the ClusterName scripts/local_slurm.sh writes


def why_no_cluster():
    """None when the tests may use the SLURM cluster that answers here, else the reason to skip."""
    text, why = slurm.query_sinfo(timeout_s=15)
    start = "`scripts/local_slurm.sh start` starts a local one (Debian, as root)"
    if text is None:
        return f"no SLURM cluster answers ({why}); {start}"
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15).stdout
    name = re.search(r"^ClusterName\s*=\s*(\S+)", config, flags=re.MULTILINE)
    name = name.group(1) if name else "unknown"
    if name != LOCAL_CLUSTER and os.environ.get("NTKLAB_SLURM_TESTS") != "any":
        return (f"the SLURM cluster here is {name!r}, not the local test cluster ({start}); these tests requeue "
                "and time out jobs, so they run on another cluster only with NTKLAB_SLURM_TESTS=any")
    states = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=15).stdout
    if not re.search(r"^(idle|mixed|allocated|completing)", states, flags=re.MULTILINE):
        return f"no node of the SLURM cluster takes jobs (states: {' '.join(states.split())})"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = why_no_cluster()
    if reason:
        pytest.skip(reason)


# what every task asks: one CPU, 1 GB, no GPU (the preset's 8 CPUs, 32 GB and a GPU fit no small node)
FITS = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
        "hydra.launcher.gpus_per_node=0"]
# the run the preemption and timeout tests interrupt; its steps are set from the measured time per step
LONG = ["device=cpu", "width=16", "data.n_train=16", "data.n_test=16", "data.dim=4", "track=minimal",
        "track.probe_size=8", "track.progress=false"]
RESUMED = re.compile(r"resuming from the checkpoint at step (\d+)")


class Sweep:
    """``python -m ntklab train -m ARGS`` running in the background, its output in files (a pipe
    could fill while the test waits); its SLURM jobs are cancelled and the process killed at the
    end of the test if they are still there."""

    def __init__(self, folder: Path, *args):
        self.folder, self.dir = folder, folder / "sweep"
        self.out, self.err = folder / "sweep.out", folder / "sweep.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "ntklab", "train", "-m", *args,
                                             f"hydra.sweep.dir={self.dir}"], cwd=folder, stdout=out, stderr=err,
                                            env={**os.environ, "HYDRA_FULL_ERROR": "0"})

    def job_id(self, timeout_s=60):
        """The SLURM id of the sweep's job (its array's id): submitit's folder .submitit/<id>/."""
        found = lambda: [p.name for p in (self.dir / ".submitit").glob("*") if p.name.isdigit()]
        wait_until(lambda: found() or self.process.poll() is not None, timeout_s, "the sweep's submission")
        assert found(), self.stderr()
        return found()[0]

    def wait(self, timeout_s):
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not end within {timeout_s} s:\n{self.stderr()}\n{squeue()}")
        return self.process.returncode

    def stderr(self):
        return self.err.read_text()

    def close(self):
        jobs = [p.name for p in (self.dir / ".submitit").glob("*") if p.name.isdigit()]
        if jobs:
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def sweeps(tmp_path):
    started = []

    def start(name, *args):
        folder = tmp_path / name
        folder.mkdir()
        started.append(Sweep(folder, *args))
        return started[-1]
    yield start
    for sweep in started:
        sweep.close()


def wait_until(condition, timeout_s, what, every_s=0.2):
    helpers.wait_until(condition, timeout_s, what, every_s, details=squeue)


def squeue():
    return subprocess.run(["squeue", "--states=all"], capture_output=True, text=True, timeout=30).stdout


def submitit_log(sweep):
    return "".join(p.read_text() for p in sorted((sweep.dir / ".submitit").rglob("*_log.out")))


def collected(sweep):
    out, err, code = ntklab("collect", str(sweep.dir), cwd=sweep.folder)
    assert code == 0, err
    return pd.read_csv(sweep.dir / "results.csv", dtype={"run_dir": str}).set_index("run_dir")


@pytest.mark.slurm
def test_a_sweep_through_slurm_is_collected_with_every_run_ok(cluster, sweeps):
    sweep = sweeps("sweep", "width=16,32", *TINY, *FITS, "hydra.launcher.timeout_min=5")
    assert sweep.wait(timeout_s=240) == 0, sweep.stderr()
    job = sweep.job_id()
    for task in (0, 1):     # one array task per run, each with its submitit log
        assert (sweep.dir / ".submitit" / f"{job}_{task}" / f"{job}_{task}_0_log.out").exists()
    table = collected(sweep)
    assert dict(table["status"]) == {"0": "ok", "1": "ok"}
    assert sorted(table["model.width"]) == [16, 32]


@pytest.mark.slurm
def test_failed_and_diverged_jobs_keep_their_status_in_the_table(cluster, sweeps):
    # a learning rate that is fine, one 10^4 times eta_max (diverges at step 1), one refused (-1)
    sweep = sweeps("sweep", "width=16", "optim.lr=0.5,1e4,-1", *TINY, *FITS, "hydra.launcher.timeout_min=5")
    assert sweep.wait(timeout_s=240) == 1, sweep.stderr()         # one job failed
    assert "1 of 3 jobs failed" in sweep.stderr() and "optim.lr" in sweep.stderr()
    table = collected(sweep)
    assert dict(table["status"]) == {"0": "ok", "1": "diverged", "2": "failed"}
    assert "optim.lr: must be a finite number > 0" in table.loc["2", "error"]


@pytest.fixture(scope="module")
def seconds_per_step(tmp_path_factory):
    """The time one step of LONG takes on this machine (the fastest of three 1500-step runs), so
    that the runs below last about as long on a fast machine as on a slow one."""
    folder = tmp_path_factory.mktemp("calibration")
    return min(run(compose_train(LONG + ["optim.steps=1500", "track.checkpoint_every=0"]), folder / str(i))
               ["timing"]["per_step_s"] for i in range(3))


def wait_for_first_checkpoint(sweep, run_dir):
    """Wait until the run in ``run_dir`` has written its first checkpoint; the pid of the process
    running it (the one its .lock names)."""
    wait_until(lambda: (run_dir / results.CHECKPOINT).exists() or sweep.process.poll() is not None, 120,
               f"the first checkpoint in {run_dir}", every_s=0.05)
    assert sweep.process.poll() is None, sweep.stderr()
    return int((run_dir / results.LOCK).read_text())


def process_state(pid):
    """The state letter of process ``pid`` in /proc (R, S, T for stopped, ...); None once it has ended."""
    try:
        return re.search(r"^State:\s*(\w)", Path(f"/proc/{pid}/status").read_text(), flags=re.MULTILINE).group(1)
    except OSError:
        return None


def signal_pending(pid, signum):
    """Whether ``signum`` waits to be delivered to process ``pid`` (SigPnd or ShdPnd in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = re.findall(r"^(?:SigPnd|ShdPnd):\s*(\w+)", status, flags=re.MULTILINE)
    return any(int(mask, 16) >> (signum - 1) & 1 for mask in masks)


@contextlib.contextmanager
def paused(pid):
    """Process ``pid`` stopped (SIGSTOP) for the block and continued (SIGCONT) after it, if it is
    still there: a run held mid-way, whatever this machine's speed. SLURM continues a stopped task
    itself when it signals it (a requeue, a timeout warning)."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        pytest.fail(f"process {pid} ended before the test could pause it: its run was too short")
    wait_until(lambda: process_state(pid) in ("T", None), 30, f"process {pid} to stop", every_s=0.01)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def resumed_steps(run_dir):
    """The steps the run in ``run_dir`` resumed from, in order (its train.log)."""
    return [int(step) for step in RESUMED.findall((run_dir / "train.log").read_text())]


@pytest.mark.slurm
def test_a_preempted_array_task_resumes_byte_identically(cluster, sweeps, seconds_per_step):
    # Two array tasks computing the same run, on one CPU each: task 0 checkpoints every 1/20 of its
    # ~12 s of steps and is requeued while paused after its first checkpoint (SLURM continues it,
    # sends SIGTERM, which submitit ignores, and SIGKILL 2 s later: KillWait); task 1 never
    # checkpoints and runs through, the uninterrupted reference (how often a run checkpoints changes
    # none of its numbers).
    steps = math.ceil(12 / seconds_per_step)
    sweep = sweeps("sweep", f"track.checkpoint_every={steps // 20},0", f"optim.steps={steps}", *LONG, *FITS,
                   "hydra.launcher.timeout_min=5")
    job = sweep.job_id()
    run_dir, reference = sweep.dir / "0", sweep.dir / "1"
    task = wait_for_first_checkpoint(sweep, run_dir)
    with paused(task):
        requeue = subprocess.run(["scontrol", "requeue", f"{job}_0"], capture_output=True, text=True, timeout=30)
        assert requeue.returncode == 0, requeue.stderr
        wait_until(lambda: process_state(task) is None, 60, "SLURM to end the requeued task")
    assert sweep.wait(timeout_s=300) == 0, sweep.stderr()
    resumed = resumed_steps(run_dir)
    assert len(resumed) == 1 and 0 < resumed[0] < steps, resumed    # it came back mid-way, from its checkpoint
    assert not resumed_steps(reference)
    assert (run_dir / results.METRICS).read_bytes() == (reference / results.METRICS).read_bytes()
    assert dict(collected(sweep)["status"]) == {"0": "ok", "1": "ok"}


@pytest.mark.slurm
def test_a_timed_out_task_is_requeued_by_submitit_and_resumes_byte_identically(cluster, sweeps, seconds_per_step,
                                                                             tmp_path):
    # timeout_min=1 (SLURM's smallest) and signal_delay_s=10: slurmctld looks at time limits every
    # 30 s and sends submitit's SIGUSR2 at the first look within 10 + 30 s of the limit, 20-50 s
    # into an attempt. The task is paused once its first checkpoint is on disk, so that the signal
    # finds it mid-way, as it finds a run longer than its limit (SLURM continues it to deliver the
    # signal; the test continues it once the signal is there, should SLURM not). The ~10 s of steps
    # left fit in the next attempt (its signal comes 20 s in or later, its training starts ~3.5 s
    # in); should they not, max_num_timeout=6 lets submitit requeue it again.
    steps = math.ceil(10 / seconds_per_step)
    common = [f"optim.steps={steps}", *LONG]
    sweep = sweeps("sweep", "seed=0", f"track.checkpoint_every={steps // 20}", *common, *FITS,
                   "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10",
                   "hydra.launcher.max_num_timeout=6")
    reference = tmp_path / "reference"        # the same run on this machine, uninterrupted, meanwhile
    alone = ntklab("train", *common, "track.checkpoint_every=0", f"hydra.run.dir={reference}", cwd=tmp_path,
                   wait=False)
    run_dir = sweep.dir / "0"
    task = wait_for_first_checkpoint(sweep, run_dir)
    with paused(task):
        wait_until(lambda: process_state(task) != "T" or signal_pending(task, signal.SIGUSR2), 120,
                   "SLURM's timeout signal")
    assert sweep.wait(timeout_s=300) == 0, sweep.stderr()
    out, err = alone.communicate(timeout=300)
    assert alone.returncode == 0, err
    log = submitit_log(sweep)
    assert "this job is timed-out" in log and re.search(r"Requeued job \d+ \(\d remaining timeouts\)", log), log
    resumed = resumed_steps(run_dir)
    assert resumed and all(0 < step < steps for step in resumed), resumed
    assert (run_dir / results.METRICS).read_bytes() == (reference / results.METRICS).read_bytes()
    assert dict(collected(sweep)["status"]) == {"0": "ok"}


@pytest.mark.slurm
def test_the_cluster_sized_preset_is_refused_on_the_local_node(cluster, tmp_path):
    # the preset asks a GPU per task; the local cluster's node has none
    sweep = tmp_path / "sweep"
    out, err, code = ntklab("train", "-m", "hydra/launcher=slurm", "width=16,32", *TINY, f"hydra.sweep.dir={sweep}",
                            cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "hydra.launcher.gpus_per_node=1 (no GPUs)" in err and "hydra.launcher.gpus_per_node=0" in err
    assert not sweep.exists()
