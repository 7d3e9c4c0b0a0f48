"""The files of one run directory, written so that a crash loses nothing already measured.

    config.yaml      the resolved config the run was started with (a resumed run must match it)
    metrics.jsonl    one JSON object per log step, flushed and fsynced as it is written
    checkpoint.pt    model, optimizer, RNG states, step and the metrics file's length (atomic), with a
                     SHA-256 of its own contents and of the metrics prefix it vouches for, both
                     verified on resume (RunDirCorrupt on a mismatch)
    reference.pt     the kernels and outputs at θ_0 that the run is compared with (atomic, written at
                     setup, with a SHA-256 of its contents): a resumed run reads them instead of
                     computing them again (minutes for a wide CNN on 1000 images); one that does not
                     match its checksum is computed anew. Removed with checkpoint.pt at the end
    .lock            held (fcntl.flock, exclusive) by the one process running in the directory (shared
                     by the workers of one ``regress``); the OS releases it when that process ends or
                     dies, so it is never stale
    summary.json     status ok | diverged | failed, final and fitted numbers (atomic, at the end); a
                     refused config leaves one with status failed and the reason (and only .lock);
                     one that cannot be parsed is removed and the run treated as unfinished
    kernels.pt       Θ̂_0, Θ̂_T and the analytic Θ, Σ on the probe set; the row Θ(x*_0, x*_j) at init,
                     at the end and in the limit (atomic)
    predictions.pt   test inputs, targets, the network's test outputs at init and at the end, and
                     the analytic and linearised predictions for the end (atomic)
    loss.png, drift.png
    seeds.json       only in the folder of seeds trained at once (``seeds`` > 1), which holds one run
                     directory per seed, seed_<s>/, and is not a run directory itself

Non-finite numbers (a diverged loss) are written as JSON ``null``, so every file is strict JSON.
An atomic write goes through ``.NAME.tmp``: a write that fails removes it, and the next run removes
those a killed process left (:func:`remove_leftovers`); the rename is made durable by an fsync of the
directory (skipped where the filesystem refuses one); an OSError (a full disk) becomes a
:class:`WriteError` naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import torch

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
KERNELS = "kernels.pt"
PREDICTIONS = "predictions.pt"
CHECKPOINT = "checkpoint.pt"
REFERENCE = "reference.pt"
# in the folder of seeds trained at once (seeds > 1): the group's index; each seed is a run
# directory of its own below it (seed_<s>/), and the folder holding this file is not a run itself
SEEDS = "seeds.json"
REGRESSION = "regression.json"     # the summary of a ``regress`` run (it has no metrics)
KERNEL_BLOCKS = "kernel_blocks"    # a ``regress`` run's folder of saved kernel blocks
# summary.json's status; a run directory whose status is FINISHED is not run again
OK, DIVERGED, FAILED = "ok", "diverged", "failed"
STATUSES = (OK, DIVERGED, FAILED)
FINISHED = (OK, DIVERGED)
LOCK = ".lock"
STOPPED = "stopped"     # returned by an invocation that ended at stop_after; never written (no summary yet)


class RunDirBusy(RuntimeError):
    """Another process holds the run directory's lock."""

    def __init__(self, run_dir: Path, pid: Optional[int]):
        self.run_dir, self.pid = run_dir, pid
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{run_dir} is in use by {holder}; wait for it to end or choose another run directory")


class RunDirCorrupt(RuntimeError):
    """A file of the run directory does not hold what was written: the run cannot be resumed exactly."""

    def __init__(self, path: Path, problem: str, remedy: Optional[str] = None):
        """``remedy``: what to do about it (default: a training run's, to start again from step 0)."""
        self.path = Path(path)
        if remedy is None:
            remedy = (f"delete {path.parent / CHECKPOINT} and {path.parent / METRICS} to run again from step 0, "
                      "or restore both from a copy")
        super().__init__(f"{path}: {problem}; {remedy}")


def with_checksum(saved: Dict) -> Dict:
    """``saved`` (a dict to ``torch.save``) with a "checksum" entry: the :func:`content_digest` of the rest."""
    return {**saved, "checksum": content_digest(saved)}


def pop_checksum(saved: Dict) -> Optional[bool]:
    """Remove ``saved``'s "checksum" entry (as :func:`with_checksum` wrote it) and say whether it
    matches the rest; None when there is none."""
    checksum = saved.pop("checksum", None)
    return None if checksum is None else content_digest(saved) == checksum


def content_digest(obj) -> str:
    """SHA-256 of a checkpoint's contents as loaded (tensors by dtype, shape and bytes; everything
    else by ``repr``; dict keys sorted): a flipped bit in any stored value changes it."""
    digest = hashlib.sha256()

    def visit(value) -> None:
        if torch.is_tensor(value):
            t = value.detach().cpu().contiguous()
            digest.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                digest.update(f"{key!r}:".encode())
                visit(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                visit(item)
            digest.update(b"]")
        else:
            digest.update(f"{type(value).__name__} {value!r};".encode())

    visit(obj)
    return digest.hexdigest()


def _recorded_pid(fd: int) -> Optional[int]:
    """The pid written in an open lock file, or None (none written yet, or two writes interleaved)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (ValueError, OSError):
        return None


def _is_running(pid: Optional[int]) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0 checks without sending anything)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # it exists, under another user
        return True
    return True


def running_holder(run_dir: Path) -> Optional[int]:
    """The pid recorded in the run directory's lock file when that is another process running on this
    machine, else None (no lock file, no pid, its process ended, or this process: a run it finished
    in-process leaves its own pid behind). Read without taking the lock, so a reader never makes a
    starting run see the directory busy; a pid reused by another process reads as running."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid = _recorded_pid(fd)
    finally:
        os.close(fd)
    return pid if pid != os.getpid() and _is_running(pid) else None


@contextlib.contextmanager
def locked(run_dir: Path, shared: bool = False) -> Iterator[None]:
    """Hold the run directory's lock (its .lock file) for the ``with`` block: exclusive, or ``shared``
    with other holders that ask for it shared (the workers of one ``regress``, which coordinate through
    :func:`file_lock` per block) and with none that hold it exclusively.

    The lock is ``fcntl.flock`` on an open file: the OS drops it when the holder closes the file,
    exits or is killed, so a dead run never leaves a stale lock. The holder's pid is written into
    the file for the message of :class:`RunDirBusy`, raised at once when the lock cannot be had.
    """
    path = Path(run_dir) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunDirBusy(Path(run_dir), _recorded_pid(fd)) from None
        # shared holders keep a live holder's pid (any of them names a user of the directory) and replace
        # one that has ended; a pid of another machine's worker reads as ended here, and is replaced too
        if not shared or not _is_running(_recorded_pid(fd)):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)        # releases the lock


@contextlib.contextmanager
def file_lock(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive ``fcntl.flock`` on ``path`` (created if missing) for the ``with`` block: yields True
    when held; with ``wait=False`` it yields False at once if another process holds it, with
    ``wait=True`` it blocks until the holder ends (or dies: the OS releases a dead holder's lock).
    A claim on one piece of shared work, e.g. one block of a ``regress`` kernel matrix."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            if wait or err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def environment(device="cpu", dtype: Optional[str] = None) -> Dict:
    """What a result was computed with, for every command's summary and the benchmarks:
    ``{"device", "device_name", ["dtype",] "versions": {"ntklab", "torch", "python"}}``."""
    import ntklab

    record = {"device": str(torch.device(device)), "device_name": device_name(device)}
    if dtype is not None:
        record["dtype"] = dtype
    record["versions"] = {"ntklab": ntklab.__version__, "torch": torch.__version__,
                          "python": platform.python_version()}
    return record


def device_name(device) -> str:
    """What a run ran on, for summaries and benchmark tables: the GPU's name, or the CPU model and
    the number of threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model or platform.machine()}, {torch.get_num_threads()} threads"


def flatten(tree: Dict, prefix: str = "") -> Dict[str, object]:
    """{"a": {"b": 1}, "c": [1, 2]} → {"a.b": 1, "c": "[1, 2]"}: one scalar per dotted key."""
    out: Dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def json_ready(value):
    """``value`` with non-finite floats replaced by None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


class WriteError(OSError):
    """A run file could not be written (a full disk, a quota): the message names the file."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(err.errno, f"cannot write {path}: {err.strerror or err}")
        self.path = Path(path)


def test_inputs_sha256(x_test) -> List[str]:
    """SHA-256s of test inputs (M, ...) rounded to float32 (:func:`content_digest`): what says two runs
    were tested on the same images. A float64 ``regress`` run and a float32 training run on the same
    images give the same digests (float64 → float32 rounds the same way everywhere).

    Two digests, of the same numbers in two layouts: first as (M, features), so an MLP's flattened
    images (M, H·W) and a CNN's (M, C, H, W) match; then as given, the one digest written before
    there were two, so runs written then still pair (one digest only when x_test is (M, features))."""
    x = x_test.detach().cpu().float()
    flat = content_digest(x.reshape(len(x), -1))
    return [flat] if x.dim() == 2 else [flat, content_digest(x)]


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def remove_leftover(path: Path) -> Optional[Path]:
    """Delete the temporary file (``.NAME.tmp``) that an atomic write of ``path`` left when its process
    was killed; the file deleted, or None. Call it holding whatever lock guards writes of ``path``."""
    tmp = _tmp_path(Path(path))
    if not tmp.exists():
        return None
    tmp.unlink(missing_ok=True)
    return tmp


def remove_leftovers(run_dir: Path) -> List[Path]:
    """Delete the temporary files of atomic writes that a killed process left in ``run_dir``
    (``.checkpoint.pt.tmp``, ``.summary.json.tmp``, ``.regression.json.tmp``, ...); call it holding
    the directory's lock."""
    removed = [remove_leftover(Path(run_dir) / name)
               for name in (CONFIG, SUMMARY, KERNELS, PREDICTIONS, CHECKPOINT, REFERENCE, REGRESSION)]
    return [path for path in removed if path is not None]


# fsync on a directory is refused by some filesystems (network and FUSE mounts): there the rename
# stands but is only as durable as the filesystem makes it, which is no reason to fail a run.
_DIRECTORY_SYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES,
                               errno.EPERM, errno.EISDIR}


def _sync_directory(directory: Path) -> None:
    """fsync ``directory`` so that a rename into it survives a power loss (POSIX makes the file's
    contents durable by fsyncing the file, its name by fsyncing the directory that holds it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        if err.errno in _DIRECTORY_SYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _DIRECTORY_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _replace_atomically(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` then rename over ``path`` and fsync its directory: readers see
    the old or the new file, and once this returns the new name survives a power loss (its contents
    too where ``write`` fsyncs the file). A write that fails removes its temporary file; an OSError
    (a full disk) becomes a :class:`WriteError` naming ``path``."""
    tmp = _tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
        _sync_directory(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err) from None
        raise


def write_json(path: Path, obj) -> None:
    """Atomically write ``obj`` as indented strict JSON."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(json_ready(obj), f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    _replace_atomically(Path(path), write)


def save_torch(path: Path, obj) -> None:
    """Atomically and durably ``torch.save`` ``obj`` (a checkpoint or the kernels)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    _replace_atomically(Path(path), write)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Atomically write a table as CSV; floats as ``repr`` (every digit, so they read back exactly)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([[repr(v) if isinstance(v, float) else v for v in row] for row in rows])
    _replace_atomically(Path(path), write)


def save_config(path: Path, config: Dict) -> None:
    """Atomically write a resolved config as YAML."""
    from omegaconf import OmegaConf

    _replace_atomically(Path(path), lambda tmp: OmegaConf.save(OmegaConf.create(config), tmp))


class MetricsWriter:
    """Appends one JSON line per log step to metrics.jsonl, durable before the next step starts,
    keeping the SHA-256 of everything in the file (:attr:`digest`, stored with each checkpoint)."""

    def __init__(self, path: Path, keep_bytes: int = 0, expected_digest: Optional[str] = None):
        """Open ``path`` for appending after truncating it to its first ``keep_bytes`` bytes
        (the length recorded with the checkpoint being resumed; 0 starts afresh). Raises
        :class:`RunDirCorrupt` when the file is shorter, or when those bytes' SHA-256 is not
        ``expected_digest`` (the checkpoint's; None: not checked)."""
        self.path = Path(path)
        length = self.path.stat().st_size if self.path.exists() else 0
        if length < keep_bytes:
            raise RunDirCorrupt(self.path, f"holds {length} bytes but the checkpoint recorded {keep_bytes}")
        mode = "r+b" if self.path.exists() else "w+b"
        self._file = open(self.path, mode)
        self._hash = hashlib.sha256(self._file.read(keep_bytes))
        if expected_digest is not None and self._hash.hexdigest() != expected_digest:
            self._file.close()
            raise RunDirCorrupt(self.path, f"its first {keep_bytes} bytes are not those the checkpoint vouches for "
                                "(SHA-256 mismatch)")
        self._file.truncate(keep_bytes)
        self._file.seek(keep_bytes)

    def write(self, record: Dict) -> int:
        """Write ``record`` as one line; returns the file's length afterwards."""
        line = (json.dumps(json_ready(record), allow_nan=False) + "\n").encode()
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:
            raise WriteError(self.path, err) from None
        self._hash.update(line)
        return self._file.tell()

    @property
    def position(self) -> int:
        return self._file.tell()

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the file's first :attr:`position` bytes."""
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> List[Dict]:
    """The records of a metrics.jsonl; a last line cut short by a crash is ignored."""
    return list(_records(Path(path)))


def _records(path: Path) -> Iterator[Dict]:
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:     # the unterminated last line of an interrupted write
                return
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None


def read_summary(run_dir: Path, name: str = SUMMARY) -> Optional[Dict]:
    """summary.json (or ``name``: a regress run's REGRESSION) of a run directory, or None when the run
    has not finished; raises ValueError naming the file when it is cut short, empty or not a JSON object."""
    path = Path(run_dir) / name
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is cut short or corrupt ({err})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path} holds no JSON object")
    return summary


def schema_defaults(schema, prefix: str = "") -> Dict[str, object]:
    """The defaults of a config dataclass as dotted keys (:func:`flatten`'s form), its config-group fields
    (typed by a dataclass, filled by a group option) through their own dataclass's defaults; fields
    without a default (a group typed Any, such as the model) are left out."""
    import dataclasses
    import typing

    from omegaconf import MISSING, OmegaConf

    defaults: Dict[str, object] = {}
    hints = typing.get_type_hints(schema)
    values = OmegaConf.to_container(OmegaConf.structured(schema))
    for field in dataclasses.fields(schema):
        name, hint, value = f"{prefix}{field.name}", hints[field.name], values[field.name]
        if dataclasses.is_dataclass(hint):
            defaults.update(schema_defaults(hint, f"{name}."))
        elif value != MISSING:
            defaults.update(flatten({name: value}))
    return defaults


def check_same_config(run_dir: Path, config: Dict, not_compared: Sequence[str] = (), schema=None) -> None:
    """A run directory holds one run: save ``config`` as its config.yaml, or, when one is there,
    refuse (ConfigError on hydra.run.dir, naming the fields that differ) a config that differs from
    it in anything but the dotted fields ``not_compared`` (those that do not change the results).

    A field the saved config lacks is no difference when it now holds ``schema``'s default (a dataclass
    of :mod:`ntklab.config`): an option added to ntklab after the run began, left at the default that
    keeps the old behaviour, lets the run resume."""
    from omegaconf import OmegaConf

    from ntklab.errors import ConfigError

    def comparable(tree: Dict) -> Dict:
        tree = OmegaConf.create(tree)
        for dotted in not_compared:
            parent, _, leaf = dotted.rpartition(".")
            node = OmegaConf.select(tree, parent) if parent else tree
            if node is not None and leaf in node:
                del node[leaf]
        return flatten(OmegaConf.to_container(tree))

    path = Path(run_dir) / CONFIG
    if not path.exists():
        save_config(path, config)
        return
    before, now = comparable(OmegaConf.to_container(OmegaConf.load(path))), comparable(config)
    if schema is not None:
        defaults = schema_defaults(schema)
        now = {key: value for key, value in now.items()
               if key in before or key not in defaults or value != defaults[key]}
    if before != now:
        changed = sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))
        raise ConfigError("hydra.run.dir", f"{run_dir} holds a run with a different config "
                          f"(differs in {', '.join(changed)}); choose a new run directory")
