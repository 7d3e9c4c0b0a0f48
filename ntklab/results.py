"""The files of one run directory, written so that a crash loses nothing already measured.

    config.yaml      the resolved config the run was started with (a resumed run must match it)
    metrics.jsonl    one JSON object per log step, flushed and fsynced as it is written
    checkpoint.pt    model, optimizer, RNG states, step and the metrics file's length (atomic)
    summary.json     status ok | diverged | failed, final and fitted numbers (atomic, at the end)
    kernels.pt       Θ̂_0, Θ̂_T and the analytic Θ, Σ on the probe set; the row Θ(x*_0, x*_j) at init,
                     at the end and in the limit (atomic)
    predictions.pt   test inputs, targets, the network's test outputs at init and at the end, and
                     the analytic and linearised predictions for the end (atomic)
    loss.png, drift.png

Non-finite numbers (a diverged loss) are written as JSON ``null``, so every file is strict JSON.
"""

from __future__ import annotations

import csv
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
# summary.json's status; a run directory whose status is FINISHED is not run again
OK, DIVERGED, FAILED = "ok", "diverged", "failed"
STATUSES = (OK, DIVERGED, FAILED)
FINISHED = (OK, DIVERGED)
STOPPED = "stopped"     # returned by an invocation that ended at stop_after; never written (no summary yet)


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


def _replace_atomically(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` then rename over ``path``: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


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
    """Appends one JSON line per log step to metrics.jsonl, durable before the next step starts."""

    def __init__(self, path: Path, keep_bytes: int = 0):
        """Open ``path`` for appending after truncating it to its first ``keep_bytes`` bytes
        (the length recorded with the checkpoint being resumed; 0 starts afresh)."""
        self.path = Path(path)
        length = self.path.stat().st_size if self.path.exists() else 0
        if length < keep_bytes:
            raise RuntimeError(f"{self.path} holds {length} bytes but the checkpoint recorded {keep_bytes}; "
                               "the run directory was altered, so it cannot be resumed exactly")
        mode = "r+b" if self.path.exists() else "w+b"
        self._file = open(self.path, mode)
        self._file.truncate(keep_bytes)
        self._file.seek(keep_bytes)

    def write(self, record: Dict) -> int:
        """Write ``record`` as one line; returns the file's length afterwards."""
        self._file.write((json.dumps(json_ready(record), allow_nan=False) + "\n").encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    @property
    def position(self) -> int:
        return self._file.tell()

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


def read_summary(run_dir: Path) -> Optional[Dict]:
    """summary.json of a run directory, or None when the run has not finished."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)
