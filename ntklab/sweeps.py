"""What a multirun sweep reports about its jobs: every job runs, and the sweep's exit code says
whether any failed.

A job that fails (a value its validation refuses, a runtime error) records status "failed" and
the reason in its run directory's summary.json (the trainer does that), prints one line, and
returns normally, so the launcher goes on to the next job instead of stopping the sweep (Hydra's
sequential launcher stops at the first ``SystemExit``; submitit turns a job's non-zero exit into a
long traceback). :class:`SweepReport`, a Hydra callback every command's config registers
(configs/hydra/output/ntklab.yaml), gives the jobs a file in the sweep directory to append their
outcome to (``$NTKLAB_SWEEP_REPORT``: jobs may run in other processes or on other nodes), and
reads it back when the sweep ends; :func:`failures` is what the command line turns into its exit code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from hydra.experimental.callback import Callback

ENV = "NTKLAB_SWEEP_REPORT"
_LAST: Optional[List[Dict]] = None      # the jobs of the sweep that ended last in this process


def record_job(record: Dict) -> None:
    """Append one job's outcome ({"job", "run_dir", "status", "error"}) to the sweep's report file;
    a no-op outside a sweep. One short O_APPEND write, so concurrent jobs do not interleave."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:     # a report that cannot be written must not fail the job itself
        pass


def failures() -> List[Dict]:
    """The failed jobs of the last sweep run in this process (empty when none, or no sweep)."""
    from ntklab.results import FINISHED, STOPPED

    return [r for r in (_LAST or []) if r.get("status") not in FINISHED + (STOPPED,)]


def jobs() -> List[Dict]:
    return list(_LAST or [])


class SweepReport(Callback):
    """Collects the outcome of every job of a multirun sweep (see the module's docstring)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        global _LAST
        _LAST = None
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        path = sweep_dir / f".jobs-{os.getpid()}.jsonl"
        path.write_text("")
        os.environ[ENV] = str(path.resolve())

    def on_multirun_end(self, config, **kwargs) -> None:
        global _LAST
        path = os.environ.pop(ENV, None)
        if path is None:
            return
        try:
            lines = Path(path).read_text().splitlines()
            Path(path).unlink()
        except OSError:
            lines = []
        _LAST = sorted((json.loads(line) for line in lines if line.strip()), key=lambda r: r.get("job", 0))
