"""What a multirun sweep checks before it starts and reports about its jobs: a SLURM request no
node could run is refused, every job runs, and the sweep's exit code says whether any failed.

A job that fails (a value its validation refuses, a runtime error) records status "failed" and
the reason in its run directory's summary.json (the trainer does that), prints one line, and
returns normally, so the launcher goes on to the next job instead of stopping the sweep (Hydra's
sequential launcher stops at the first ``SystemExit``; submitit turns a job's non-zero exit into a
long traceback). :class:`SweepReport`, a Hydra callback every command's config registers
(configs/hydra/output/ntklab.yaml), gives the jobs a file in the sweep directory to append their
outcome to (``$NTKLAB_SWEEP_REPORT``: jobs may run in other processes or on other nodes), and
reads it back when the sweep ends; :func:`failures` is what the command line turns into its exit code.

Before anything is submitted, a sweep through SLURM (``hydra/launcher=slurm``) has its request
checked against the partition's nodes as ``sinfo`` reports them (:mod:`ntklab.slurm`): a task no
node could ever run (8 CPUs on a 2-CPU node) would pend forever, so the sweep stops with one line
naming the fields to override and exit code 2, before it creates its folder. When sinfo cannot be
asked the sweep goes ahead (sbatch then says what is wrong) and the log says why it was not checked.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
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


def refuse_unrunnable_slurm_request(config) -> None:
    """Exit with code 2 and one line when the sweep submits to SLURM and no node of its partition
    could ever run one of its tasks (see the module's docstring); otherwise return."""
    from ntklab import slurm

    if not slurm.is_slurm_launcher(config.hydra.launcher):
        return
    try:
        request = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    except Exception as err:        # the launcher fails on it too, with its own message; this hook must not
        refusal, unchecked = None, f"its config cannot be resolved ({err})"
    else:
        refusal, unchecked = slurm.check_launcher(request)
    if unchecked:
        log.warning("the SLURM request was not checked against the partition's nodes: %s", unchecked)
    if refusal:
        print(f"ntklab {config.hydra.job.name}: {refusal}", file=sys.stderr)
        sys.exit(2)


class SweepReport(Callback):
    """Collects the outcome of every job of a multirun sweep (see the module's docstring)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        global _LAST
        _LAST = None
        refuse_unrunnable_slurm_request(config)
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
