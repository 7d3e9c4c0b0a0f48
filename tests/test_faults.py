"""Faults injected around the crash/resume core: two processes in one run directory, sweeps with a
failing job, checkpoints and metrics altered on disk, files left cut short or behind, a full
disk, and values that must be refused or classified rather than crash."""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pandas as pd
import pytest

from ntklab import results
from ntklab.errors import ConfigError
from ntklab.train import run
from tests.helpers import compose_train, ntklab

TINY = ["device=cpu", "width=16", "data.n_train=16", "data.n_test=8", "data.dim=4", "optim.steps=20",
        "track.log_steps=5", "track.probe_size=8", "track.progress=false", "track.plots=false"]

NO_WIDTH = [a for a in TINY if not a.startswith("width=")]
_HOLD = ("import sys, time; from ntklab import results\n"
         "with results.locked(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)\n")


# ----------------------------------------------------------------------------- 1. one process per run directory

def test_a_second_process_in_a_run_directory_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(results.RunDirBusy, match=f"process {holder.pid}"):
            run(compose_train(TINY), tmp_path)
        assert not (tmp_path / results.CONFIG).exists()     # refused before touching anything
        out, err, code = ntklab("train", *TINY, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"process {holder.pid}" in err, err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    # the OS released the dead holder's lock: the run goes ahead in the same directory
    assert run(compose_train(TINY), tmp_path)["status"] == "ok"



def test_the_shared_lock_of_regress_workers_admits_more_workers_and_refuses_a_training_run(tmp_path):
    # flock locks belong to open files, so two holders in this process stand for two processes
    with results.locked(tmp_path, shared=True), results.locked(tmp_path, shared=True):
        with pytest.raises(results.RunDirBusy, match=f"process {os.getpid()}"):
            run(compose_train(TINY), tmp_path)
    with results.locked(tmp_path):
        with pytest.raises(results.RunDirBusy):
            with results.locked(tmp_path, shared=True):
                pass


def test_a_refusal_names_a_live_worker_not_one_that_has_ended(tmp_path):
    hold_shared = _HOLD.replace("results.locked(sys.argv[1])", "results.locked(sys.argv[1], shared=True)")
    worker = subprocess.Popen([sys.executable, "-c", hold_shared, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "locked"
        with results.locked(tmp_path, shared=True):     # a second worker joins while the first lives
            with pytest.raises(results.RunDirBusy, match=f"process {worker.pid}"):
                run(compose_train(TINY), tmp_path)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    assert (tmp_path / results.LOCK).read_text().strip() == str(worker.pid)    # a dead worker's pid stays...
    with results.locked(tmp_path, shared=True):        # ...until the next worker takes the lock
        with pytest.raises(results.RunDirBusy, match=f"process {os.getpid()}"):
            run(compose_train(TINY), tmp_path)


# ----------------------------------------------------------------------------- 2. sweeps keep every job

@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_a_sweep_runs_every_job_and_reports_the_failed_one(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "data=mnist,sphere", f"data.root={tmp_path / 'no-data'}", *TINY, f"hydra.sweep.dir={sweep}"]
    if launcher == "local":
        args.append("hydra/launcher=local")
    out, err, code = ntklab(*args, cwd=tmp_path)
    assert code == 1, err                                   # one job failed
    assert "Traceback" not in err, err
    failed = json.loads((sweep / "0" / results.SUMMARY).read_text())
    assert failed["status"] == "failed" and "data.root" in failed["error"] and failed["config"]["data"]["name"] == "mnist"
    assert json.loads((sweep / "1" / results.SUMMARY).read_text())["status"] == "ok"     # the sweep went on
    assert "1 of 2 jobs failed" in err and "data.root" in err
    (sweep / "2").mkdir()           # a job that never started
    out, err, code = ntklab("collect", str(sweep), cwd=tmp_path)
    assert code == 0, err
    table = pd.read_csv(sweep / "results.csv", dtype={"run_dir": str}).set_index("run_dir")
    assert dict(table["status"]) == {"0": "failed", "1": "ok", "2": "missing"}
    assert table.loc["0", "data.name"] == "mnist" and "data.root" in table.loc["0", "error"]
    # the command that made each: from its summary.json, or for the job that left nothing the sweep's record
    assert dict(table["command"]) == {"0": "train", "1": "train", "2": "train"}
    # a job whose folder was never made (an interrupted sweep's later jobs) is missing too, with its
    # overrides from multirun.yaml; a folder beside the jobs that is no job (figures) is no run
    shutil.rmtree(sweep / "0")
    for other in ("figures", "²", "01"):      # no job numbers: "²" is a digit to str.isdigit, not to int
        (sweep / other).mkdir()
    out, err, code = ntklab("collect", str(sweep), cwd=tmp_path)
    assert code == 0, err
    table = pd.read_csv(sweep / "results.csv", dtype={"run_dir": str}).set_index("run_dir")
    assert dict(table["status"]) == {"0": "missing", "1": "ok", "2": "missing"}
    # as Hydra's sweeper hands them to the job (it writes booleans as True/False)
    assert table.loc["0", "overrides"].lower() == f"data=mnist data.root={tmp_path / 'no-data'} {' '.join(TINY)}".lower()


# ----------------------------------------------------------------------------- 3. local launcher parallelism

def test_local_launcher_runs_one_job_at_a_time_when_asked(tmp_path):
    sweep = tmp_path / "sweep"
    out, err, code = ntklab("train", "-m", "hydra/launcher=local", "hydra.launcher.array_parallelism=1",
                            "width=16,32", *NO_WIDTH, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, err
    # job 1 wrote its first file (config.yaml) after job 0 wrote its last (summary.json)
    assert (sweep / "1" / results.CONFIG).stat().st_mtime_ns >= (sweep / "0" / results.SUMMARY).stat().st_mtime_ns


def test_default_parallelism_is_what_cores_and_memory_allow(monkeypatch):
    from ntklab import resources

    monkeypatch.setattr(resources, "cpu_count", lambda: 2)
    gb = 2 ** 30
    monkeypatch.setattr(resources, "available_bytes", lambda device: 64 * gb)
    assert resources.default_parallelism(10 * 2 ** 20) == 2                 # small jobs: one per core
    assert resources.default_parallelism(10 * 2 ** 20, cpus_per_task=2) == 1
    assert resources.default_parallelism(40 * gb) == 1                      # memory for one only
    # a width-4096 run of the default config needs more than a width-64 one, and some GB at width 100000
    small, large = (resources.run_bytes(compose_train([f"width={w}"])) for w in (64, 100000))
    assert small < 2 ** 28 and large > 40 * gb
    # checking the loss every k > 1 steps keeps the window start: θ and the optimizer state once more,
    # 2 · P · 4 bytes in float32 (P = 10·64 + 64 + 64·64 + 64 + 64 + 1 for the default depth-2 net on 10-dim data)
    every_step = resources.run_bytes(compose_train(["width=64", "optim.divergence_check_every=1"]))
    params = 10 * 64 + 64 + 64 * 64 + 64 + 64 + 1
    assert small - every_step == 2 * params * 4


def _write_cgroup(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_a_cgroup_limit_caps_the_available_memory(tmp_path):
    """A SLURM job's limit sits on the job's cgroup, an ancestor of the task's; a container's on the
    mount's root, where the host path in /proc/self/cgroup does not exist. available = limit −
    (usage − inactive file cache), the smallest over the cgroups that set one."""
    from ntklab import resources

    mb = 2 ** 20
    v2 = tmp_path / "v2"
    proc = tmp_path / "cgroup_v2"
    proc.write_text("0::/system.slice/job_17/step_0/task_0\n")
    _write_cgroup(v2 / "system.slice", {"memory.max": "max\n", "memory.current": f"{900 * mb}\n"})
    _write_cgroup(v2 / "system.slice/job_17", {"memory.max": f"{1000 * mb}\n",
                                               "memory.current": f"{700 * mb}\n",
                                               "memory.stat": f"anon 1\ninactive_file {200 * mb}\n"})
    _write_cgroup(v2 / "system.slice/job_17/step_0/task_0", {"memory.max": "max\n",
                                                            "memory.current": f"{300 * mb}\n"})
    # the job's: 1000 − (700 − 200) MB
    assert resources.cgroup_available_bytes(str(v2), str(proc)) == 500 * mb

    # a tighter limit further down counts instead
    _write_cgroup(v2 / "system.slice/job_17/step_0", {"memory.max": f"{400 * mb}\n",
                                                     "memory.current": f"{350 * mb}\n"})
    assert resources.cgroup_available_bytes(str(v2), str(proc)) == 50 * mb
    # memory.high (the throttling limit) counts where it is below memory.max: 380 − 350 MB
    (v2 / "system.slice/job_17/step_0/memory.high").write_text(f"{380 * mb}\n")
    assert resources.cgroup_available_bytes(str(v2), str(proc)) == 30 * mb
    # and alone, without memory.max: 360 − 350 MB
    (v2 / "system.slice/job_17/step_0/memory.max").unlink()
    (v2 / "system.slice/job_17/step_0/memory.high").write_text(f"{360 * mb}\n")
    assert resources.cgroup_available_bytes(str(v2), str(proc)) == 10 * mb

    v1 = tmp_path / "v1"
    proc.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    _write_cgroup(v1 / "memory", {"memory.limit_in_bytes": f"{2048 * mb}\n",
                                  "memory.usage_in_bytes": f"{1024 * mb}\n",
                                  "memory.stat": f"cache 5\ntotal_inactive_file {24 * mb}\n"})
    assert resources.cgroup_available_bytes(str(v1), str(proc)) == 1048 * mb
    # v1's "no limit" is 2**63 − 1 rounded to a page; no cgroup file at all is no limit either
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert resources.cgroup_available_bytes(str(v1), str(proc)) is None
    assert resources.cgroup_available_bytes(str(tmp_path / "none"), str(proc)) is None
    assert resources.cgroup_available_bytes(str(v1), str(tmp_path / "missing")) is None


def test_the_cpu_memory_a_run_may_use_is_the_smaller_of_the_machines_and_its_cgroups(monkeypatch):
    from ntklab import resources

    # without a cgroup limit: MemAvailable (measured so, since this test may itself run under one)
    monkeypatch.setattr(resources, "cgroup_available_bytes", lambda: None)
    machine = resources.available_bytes("cpu")
    with open("/proc/meminfo") as f:
        mem_available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert abs(machine - mem_available) < 2 ** 30     # MemAvailable moves a little between the two reads
    monkeypatch.setattr(resources, "cgroup_available_bytes", lambda: 123 * 2 ** 20)
    assert resources.available_bytes("cpu") == min(machine, 123 * 2 ** 20) == 123 * 2 ** 20


@pytest.mark.parametrize("targets, full", [("scalar", False), ("onehot", True)])
def test_the_run_estimate_counts_the_empirical_ntks_kept_features(targets, full, monkeypatch):
    """The features empirical_ntk keeps per input (a conv's weight gradient on the gradient route),
    measured on the arrays it computes for the built net, times the larger set's 40 inputs: what
    run_bytes adds over an estimate without them (a memory budget of 0 keeps none). One-hot targets
    (10 outputs, 40·10 ≤ full_kernel_limit) take the full kernel's features."""
    import torch

    from ntklab import build_net, resources
    from ntklab.config import build_arch
    from ntklab.ntk import empirical as empirical_module

    overrides = ["model=cnn", "data=digits", "width=8", "depth=2", f"data.targets={targets}", "data.n_train=40",
                 "data.n_test=30", "dtype=float32"]
    cfg = compose_train(overrides)
    out_dim = 10 if targets == "onehot" else 1
    arch, _ = build_arch(cfg.model, (1, 8, 8), out_dim)
    net = build_net(arch, in_shape=(1, 8, 8), seed=0, dtype=torch.float32)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))      # sizes only: any values
    features = empirical_module._structured_features(net, x, full=full, chunk=3)
    per_input = sum(t.numel() * t.element_size() for of_layer in features for t in of_layer) // 3
    with_features = resources.run_bytes(cfg)
    monkeypatch.setattr(empirical_module, "DEFAULT_MEMORY_BUDGET", 0)
    assert with_features - resources.run_bytes(cfg) == 40 * per_input
    # where they do not fit, the budget empirical_ntk keeps at least (1 GiB): a 1024-channel CNN on MNIST
    monkeypatch.setattr(empirical_module, "DEFAULT_MEMORY_BUDGET", 2 ** 30)
    wide = compose_train(["model=cnn", "data=mnist", "width=1024", "depth=2", "data.n_train=1000"])
    assert resources.run_bytes(wide) > 2 ** 30


# ----------------------------------------------------------------------------- 4. checkpoints that lie

def _flip_a_bit_in_the_largest_tensor(path):
    """Flip one bit in the middle of the largest tensor's stored bytes (torch.save stores them
    uncompressed inside its zip archive)."""
    import zipfile

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        data = archive.read(member)
    at = raw.find(data)
    assert at >= 0 and raw.find(data, at + 1) < 0          # found once: the flip lands in that tensor
    raw[at + len(data) // 2] ^= 0x04
    path.write_bytes(raw)


STOPPED = TINY + ["track.checkpoint_every=5"]


def test_a_bit_flipped_in_the_checkpoint_is_refused_with_one_line(tmp_path):
    assert run(compose_train(STOPPED + ["stop_after=12"]), tmp_path)["status"] == "stopped"
    _flip_a_bit_in_the_largest_tensor(tmp_path / results.CHECKPOINT)
    with pytest.raises(results.RunDirCorrupt, match="checksum"):
        run(compose_train(STOPPED), tmp_path)
    out, err, code = ntklab("train", *STOPPED, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(tmp_path / results.CHECKPOINT) in err and "delete" in err
    assert json.loads((tmp_path / results.SUMMARY).read_text())["status"] == "failed"


def test_metrics_altered_before_the_checkpoint_are_refused_at_resume(tmp_path):
    run(compose_train(STOPPED + ["stop_after=12"]), tmp_path)
    path = tmp_path / results.METRICS
    lines = path.read_bytes().split(b"\n")[:-1]
    # the last line is step 9's (log steps 0 1 2 4 9 20), written before the checkpoint at step 12
    lines[-1] = b"x" * len(lines[-1])               # same-length garbage, the file's length unchanged
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(results.RunDirCorrupt, match="metrics.jsonl.*SHA-256"):
        run(compose_train(STOPPED), tmp_path)


def test_an_untouched_checkpoint_resumes_byte_identically(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(compose_train(STOPPED), whole)
    run(compose_train(STOPPED + ["stop_after=12"]), parts)
    run(compose_train(STOPPED), parts)
    assert (parts / results.METRICS).read_bytes() == (whole / results.METRICS).read_bytes()


def test_a_run_begun_before_an_option_existed_resumes_at_its_default_and_not_otherwise(tmp_path):
    """A config.yaml written before ntklab gained an option (here: track.lanczos_tol and track.lanczos_steps
    removed from it) resumes when the option is at its default, which keeps the old behaviour, to the same
    bytes as an uninterrupted run; set otherwise it is a different run."""
    import yaml

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(compose_train(STOPPED), whole)
    run(compose_train(STOPPED + ["stop_after=12"]), parts)
    saved = yaml.safe_load((parts / results.CONFIG).read_text())
    del saved["track"]["lanczos_tol"], saved["track"]["lanczos_steps"]
    (parts / results.CONFIG).write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="differs in track.lanczos_tol"):
        run(compose_train(STOPPED + ["track.lanczos_tol=0.02"]), parts)
    run(compose_train(STOPPED), parts)
    assert (parts / results.METRICS).read_bytes() == (whole / results.METRICS).read_bytes()


# ----------------------------------------------------------------------------- 5. files that block

def test_a_truncated_summary_and_leftover_temporary_files_do_not_block_a_run(tmp_path):
    first = run(compose_train(TINY), tmp_path)
    for cut in (len((tmp_path / results.SUMMARY).read_text()) // 2, 0):    # cut short, then empty
        text = (tmp_path / results.SUMMARY).read_text()
        (tmp_path / results.SUMMARY).write_text(text[:cut])
        leftovers = [tmp_path / f".{name}.tmp" for name in (results.CHECKPOINT, results.SUMMARY, results.KERNELS)]
        for path in leftovers:
            path.write_bytes(b"half a write")
        again = run(compose_train(TINY), tmp_path)       # treated as unfinished: run again
        assert again["status"] == "ok" and again["final"] == first["final"]
        assert not any(path.exists() for path in leftovers)


_ENOSPC_CHECKPOINT = """
import errno, sys, torch
from ntklab import results
real_save = torch.save
def full_disk(obj, f, *args, **kwargs):
    if "step" in obj:                       # the checkpoint: a few bytes, then the disk is full
        f.write(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(obj, f, *args, **kwargs)
results.torch.save = full_disk
from ntklab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary_file(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    process = subprocess.run([sys.executable, "-c", _ENOSPC_CHECKPOINT, "train", *STOPPED, f"hydra.run.dir={tmp_path}"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 1, process.stderr
    assert process.stderr.strip().splitlines() == [
        f"ntklab train: [Errno 28] cannot write {tmp_path / results.CHECKPOINT}: No space left on device"]
    assert not list(tmp_path.glob(".*.tmp"))
    summary = json.loads((tmp_path / results.SUMMARY).read_text())     # there was room for the summary
    assert summary["status"] == "failed" and "checkpoint.pt" in summary["error"]


def test_an_atomic_write_fsyncs_the_file_then_its_directory_and_survives_a_filesystem_that_refuses(
        tmp_path, monkeypatch):
    real_fsync, synced = os.fsync, []

    def record(fd):
        synced.append(("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file",
                       os.path.exists(tmp_path / "a.json")))
        real_fsync(fd)

    monkeypatch.setattr(results.os, "fsync", record)
    results.write_json(tmp_path / "a.json", {"x": 1.5})
    results.save_torch(tmp_path / "b.pt", {"x": 2.5})
    # each: the temporary file's contents before the rename, then the directory after it (a.json exists)
    assert synced == [("file", False), ("directory", True), ("file", True), ("directory", True)]

    def refuse_directories(fd):      # as some network and FUSE filesystems do
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(results.os, "fsync", refuse_directories)
    results.write_json(tmp_path / "a.json", {"x": 3.5})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 3.5}
    assert not list(tmp_path.glob(".*.tmp"))

    def fail_directories(fd):       # a real I/O error is not swallowed
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(results.os, "fsync", fail_directories)
    with pytest.raises(results.WriteError, match="a.json"):
        results.write_json(tmp_path / "a.json", {"x": 4.5})


# ----------------------------------------------------------------------------- 6. values refused or classified

# the analytic predictor warns that 1e308 is far above η_max: that warning is the point of the run
@pytest.mark.filterwarnings("ignore:learning rate 1e\\+308:RuntimeWarning")
def test_a_learning_rate_beyond_the_dtype_diverges(tmp_path):
    summary = run(compose_train(TINY + ["optim.lr_unit=absolute", "optim.lr=1e308"]), tmp_path)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 0


def test_every_seed_follows_one_rule(tmp_path):
    from ntklab.errors import ConfigError

    for field in ("seed", "data.seed"):
        for bad in (-1, 2 ** 70):
            with pytest.raises(ConfigError, match=rf"{field}: must be an integer in \[0, 2\*\*62 - 1\]"):
                run(compose_train(TINY + [f"{field}={bad}"]), tmp_path / "refused")


def test_a_clipped_probe_set_and_a_zero_loss_are_reported_as_they_are(tmp_path, monkeypatch, caplog):
    from ntklab.train import tracking

    original = tracking.Tracker.measure

    def exact_fit(self, model, step):      # a run that fits its targets exactly at the end
        record = original(self, model, step)
        return {**record, "train_loss": 0.0} if step == 20 else record
    monkeypatch.setattr(tracking.Tracker, "measure", exact_fit)
    with caplog.at_level("INFO", logger="ntklab"):
        summary = run(compose_train(TINY + ["track.probe_size=100000"]), tmp_path)
    assert summary["probe_size"] == 16 and summary["final"]["train_loss"] == 0.0
    assert "track.probe_size=100000 is more than the 16 train points" in caplog.text
    assert "train loss 0," in caplog.text and "train loss nan" not in caplog.text


# ----------------------------------------------------------------------------- 7. the Python API says what is wrong

@pytest.mark.parametrize("argument, value, text", [
    ("device", "foo", "device must be a torch device"),
    ("dtype", __import__("torch").int64, "dtype must be a floating-point torch.dtype"),
] + ([] if __import__("torch").cuda.is_available() else [("device", "cuda", "device='cuda': this machine has no CUDA")]))
def test_build_mlp_names_a_bad_device_or_dtype(argument, value, text):
    from ntklab import ArchSpec, build_mlp

    with pytest.raises(ValueError, match=text.replace("(", r"\(")):
        build_mlp(ArchSpec(depth=1, width=8), 3, **{argument: value})
    from ntklab import build_net, layers as nl

    with pytest.raises(ValueError, match=text.replace("(", r"\(")):       # the one check every net makes
        build_net(nl.serial(nl.conv(2, 3), nl.flatten(), nl.dense(1)), (1, 4, 4), **{argument: value})


def test_mse_predictor_takes_any_scalar_learning_rate_but_not_a_bool():
    import numpy as np
    import torch

    from ntklab.dynamics import mse_predictor

    kernel, y = torch.eye(3, dtype=torch.float64) + 0.1, torch.ones(3, dtype=torch.float64)
    for rate in (np.float32(0.5), np.array(0.5), torch.tensor(0.5)):
        assert mse_predictor(kernel, y, rate).learning_rate == 0.5
    for rate, text in ((True, "the bool True"), (torch.tensor([0.5, 0.5]), "shape"), ("0.5", "str")):
        with pytest.raises(ValueError, match=f"learning_rate.*{text}"):
            mse_predictor(kernel, y, rate)


def test_inputs_whose_kernels_overflow_are_refused():
    import torch

    from ntklab import ArchSpec, analytic_kernels

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spec = ArchSpec(depth=2, width=8)
    assert torch.isfinite(analytic_kernels(spec, 1e10 * x).ntk).all()     # large inputs, finite kernels
    # |x|² ~ 1e320 is past float64's 1.8e308 (the recursion's products k(x,x)·k(x',x') already
    # overflow from |x| ~ 1e77): refused instead of returned as NaN
    with pytest.raises(ValueError, match="x1: the kernels overflow float64"):
        analytic_kernels(spec, 1e160 * x)
    with pytest.raises(ValueError, match="x2: the kernels overflow"):
        analytic_kernels(spec, x, 1e160 * x)


def test_an_indefinite_kernel_is_not_called_rounding():
    import torch

    from ntklab.dynamics import mse_predictor

    kernel = torch.diag(torch.tensor([-1.0, 3.0, 2.0], dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match=r"indefinite: its smallest eigenvalue is -1 against λ_max = 3") as caught:
        mse_predictor(kernel, torch.ones(3, dtype=torch.float64), 0.1)
    assert not any("within rounding" in str(w.message) for w in caught)
