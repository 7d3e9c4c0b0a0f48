"""One table from many run directories: ``python -m ntklab collect PATH [PATH ...] [--out FILE]``.

A run directory is any folder holding the ``config.yaml`` a training run writes first or a
``summary.json`` (a refused config leaves only that), and every job folder of a multirun sweep
(beside its ``multirun.yaml``), whatever it holds; the folder of seeds trained at once (``seeds=M``,
holding ``seeds.json``) is not a run, but each of its ``seed_<s>/`` folders is. Each run gives one row: ``run_dir``, ``status``, its config flattened to dotted columns (``model.width``,
``optim.lr``, ``seed``, ...), the ``command`` that made it (train or regress: from its files, else the
job name Hydra recorded; empty where nothing tells) and its summary flattened likewise (``final.kernel_change``,
``initial.kernel_to_limit``, ``max.pred_gap_analytic``, ``fitted.kernel_change_step_exponent``,
``timing.per_step_s``, ``eta_max.analytic``, ...). Nothing is dropped silently:

    ok, diverged, failed   as summary.json (a ``regress`` run's regression.json) says (``results.STATUSES``;
                           a failed run keeps its ``error``)
    unfinished             no summary.json yet (running, killed, or waiting to resume): its last
                           metrics record fills the ``final.*`` columns and ``steps_done`` (as it
                           does for a failed run)
    missing                a sweep's job with neither file: its folder is empty (the job never got
                           going) or was never made (a sweep interrupted before that job started;
                           its ``overrides`` column says which job that is)
    skipped                a config.yaml, summary.json or metrics.jsonl that cannot be read (cut
                           short, corrupt, a status none of the above) is reported on stderr by
                           path, and the run left out

The table goes to ``PATH/results.csv`` (the first PATH) unless ``--out`` says otherwise, and to
``.parquet`` beside it when pyarrow is installed. Its ``run_dir`` column is relative to the
table's folder, so a sweep moves with its table; :func:`read_table` makes the paths absolute.
Runs that are the same run twice (every column equal but the folder and the timings: a sweep over
``seed=0,1`` with ``seeds=2`` trains seed 1 in both jobs) are reported on stderr: a mean over the
table would count them twice.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pandas as pd
import yaml

from ntklab import results

UNFINISHED = "unfinished"
MISSING = "missing"
# Summary fields that are not numbers of the run (the config has its own columns).
_NOT_COLUMNS = ("config", "traceback", "plots", "versions")


def find_runs(paths: Iterable[Path]) -> List[Path]:
    """Run directories under ``paths`` (themselves included), sorted: every folder holding a
    config.yaml, a summary.json or a regression.json (a refused run leaves only one of the last two),
    and every job folder of a multirun (beside its multirun.yaml: a folder named by its job number, or
    holding Hydra's .hydra), even an empty one or, with :func:`planned_jobs`, one that was never made
    (the jobs an interrupted sweep never started); Hydra's .hydra copies, .submitit and other folders
    beside the jobs (a figure script's figures/) excluded."""
    found = set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        # files under a hidden folder (.hydra, .submitit) are copies or logs, not runs
        visible = lambda file: not any(part.startswith(".") for part in file.relative_to(path).parts[:-1])
        for name in (results.CONFIG, results.SUMMARY, results.REGRESSION):
            found.update(file.parent for file in path.rglob(name) if visible(file))
        for multirun in filter(visible, path.rglob("multirun.yaml")):
            found.update(d for d in multirun.parent.iterdir()
                         if d.is_dir() and (_job_number(d.name) is not None or (d / ".hydra").is_dir()))
            found.update(multirun.parent / str(job) for job in range(len(planned_jobs(multirun) or ())))
    # the folder of seeds trained at once (seeds=M) is no run itself: each of its seed_<s>/ folders is
    return sorted(d for d in found if not (d / results.SEEDS).exists())


def _job_number(name: str) -> Optional[int]:
    """The job number a folder named by ``${hydra.job.num}`` has (ASCII digits, no leading zero), else None."""
    return int(name) if name.isascii() and name.isdigit() and str(int(name)) == name else None


def planned_jobs(multirun_yaml: Path) -> Optional[List[List[str]]]:
    """The overrides of each job of the sweep that wrote ``multirun_yaml``, in job-number order, as
    Hydra's basic sweeper expands them (its preset's hydra.sweeper.params, then the command line's);
    None where that cannot be told (another sweeper, job folders not named by job number, a file
    that does not parse)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hydra = yaml.safe_load(multirun_yaml.read_text())["hydra"]
        if not hydra["sweeper"]["_target_"].endswith("BasicSweeper") or hydra["sweep"]["subdir"] != "${hydra.job.num}":
            return None
        params = [f"{key}={value}" for key, value in (hydra["sweeper"].get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides(params + list(hydra["overrides"]["task"]))
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:     # a record this version cannot read: no jobs inferred, the folders still count
        return None


def run_row(run_dir: Path) -> Dict[str, object]:
    """The table row of one run directory; raises ValueError naming the file that cannot be read."""
    run_dir = Path(run_dir)
    config_path, summary_path = run_dir / results.CONFIG, run_dir / results.SUMMARY
    if not summary_path.exists() and (run_dir / results.REGRESSION).exists():
        summary_path = run_dir / results.REGRESSION        # a regress run's summary
    row: Dict[str, object] = {"run_dir": str(run_dir.resolve()), "command": _command(run_dir)}
    if not config_path.exists() and not summary_path.exists():
        row["status"] = MISSING     # a sweep's job that left nothing (killed before it started)
        return row
    summary = None
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{summary_path}: cut short or corrupt ({err.msg} at line {err.lineno})") from None
        if not isinstance(summary, dict) or summary.get("status") not in results.STATUSES:
            status = summary.get("status") if isinstance(summary, dict) else None
            raise ValueError(f"{summary_path}: status {status!r} is not one of {', '.join(results.STATUSES)}")
    if config_path.exists():
        try:
            config = yaml.safe_load(config_path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{config_path}: not valid YAML ({err.__class__.__name__})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{config_path}: empty or not a mapping")
    else:   # a refused config: its failed summary carries the config as composed
        config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    row.update(results.flatten(config))
    if summary is not None:
        row.update(results.flatten({k: v for k, v in summary.items() if k not in _NOT_COLUMNS}))
        if "final" in summary:
            return row
    else:
        row["status"] = UNFINISHED
    # unfinished, or failed before a summary of its numbers: the metrics tell how far it got
    metrics_path = run_dir / results.METRICS
    if metrics_path.exists():
        records = results.read_metrics(metrics_path)       # ValueError names a corrupt line
        if records:
            row["steps_done"] = records[-1].get("step")
            row.update(results.flatten({"initial": records[0], "final": records[-1]}))
    return row


COMMANDS = ("train", "regress")


def _command(run_dir: Path) -> Optional[str]:
    """The command that made ``run_dir``: regress where its regression.json or kernel blocks are,
    train where its summary.json, metrics or checkpoint are, else the job name in Hydra's
    .hydra/hydra.yaml (a run stopped before writing any of those); None where nothing tells."""
    if (run_dir / results.REGRESSION).exists():
        return "regress"
    if any((run_dir / name).exists() for name in (results.SUMMARY, results.METRICS, results.CHECKPOINT)):
        return "train"
    if (run_dir / results.KERNEL_BLOCKS).is_dir():
        return "regress"
    return _hydra_job_name(run_dir / ".hydra" / "hydra.yaml")


def _hydra_job_name(path: Path) -> Optional[str]:
    """hydra.job.name in a record Hydra wrote (a run's .hydra/hydra.yaml, a sweep's multirun.yaml) when
    it is one of :data:`COMMANDS`, else None (no such file, or one that does not parse)."""
    try:
        name = yaml.safe_load(path.read_text())["hydra"]["job"]["name"]
    except Exception:
        return None
    return name if name in COMMANDS else None


def collect(paths: Sequence[Path], report=sys.stderr) -> Tuple[pd.DataFrame, List[Tuple[Path, str]]]:
    """The table of every run under ``paths`` and the (path, reason) of each run skipped."""
    rows, skipped, plans = [], [], {}
    for run_dir in find_runs(paths):
        try:
            row = run_row(run_dir)
        except (ValueError, OSError) as err:
            skipped.append((run_dir, str(err)))
            print(f"ntklab collect: skipped {run_dir}: {err}", file=report)
            continue
        job = _job_number(run_dir.name)
        if row["status"] == MISSING and job is not None:
            multirun = run_dir.parent / "multirun.yaml"
            if multirun not in plans:       # one expansion per sweep, however many jobs are missing
                plans[multirun] = ((planned_jobs(multirun), _hydra_job_name(multirun)) if multirun.exists()
                                   else (None, None))
            jobs, row["command"] = plans[multirun]
            if jobs is not None and job < len(jobs):
                row["overrides"] = " ".join(jobs[job])
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        first = [c for c in ("run_dir", "status", "command") if c in table.columns]
        table = table[first + [c for c in table.columns if c not in first]]
        _report_repeats(table, report)
    return table, skipped


def _report_repeats(table: pd.DataFrame, report) -> None:
    """Print the groups of finished runs that are one run twice: equal in every column but the
    folder and the timings (a training run's ``timing.*``, a regress run's ``timings.*``)."""
    finished = table[table["status"].isin([results.OK, results.DIVERGED])]
    same = [c for c in finished.columns if c != "run_dir" and not c.startswith(("timing.", "timings."))]
    text = finished[same].map(str)      # NaN as "nan": equal to itself, and a key groupby keeps
    repeated = text.duplicated(keep=False)
    for _, rows in text[repeated].groupby(same, sort=False, dropna=False):
        group = finished.loc[rows.index]
        print(f"ntklab collect: {', '.join(group['run_dir'])} are the same run (equal config and numbers; seed "
              f"{group['seed'].iloc[0] if 'seed' in group else '?'}): a mean over the table counts it "
              f"{len(group)} times", file=report)


def read_table(path: Path) -> pd.DataFrame:
    """A collected table: a results .csv/.parquet file, or a directory to collect on the fly."""
    path = Path(path)
    if path.is_dir():
        return collect([path])[0]
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"run_dir": str})
    if "run_dir" in table:      # stored relative to the table (see write_table)
        table["run_dir"] = [str((path.parent / p).resolve()) for p in table["run_dir"]]
    return table


def write_table(table: pd.DataFrame, out: Path) -> List[Path]:
    """``out`` as CSV, plus a .parquet beside it when pyarrow is installed; returns what was written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "run_dir" in table:
        # relative to the table, so a sweep directory can be moved or copied with its table
        table = table.assign(run_dir=[os.path.relpath(p, out.parent.resolve()) for p in table["run_dir"]])
    table.to_csv(out, index=False)
    written = [out]
    if importlib.util.find_spec("pyarrow") is None:   # optional: parquet keeps dtypes; CSV is always written
        return written
    parquet = out.with_suffix(".parquet")
    table.to_parquet(parquet, index=False)
    return written + [parquet]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntklab collect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="multirun or run directories")
    parser.add_argument("--out", type=Path, default=None, help="output CSV (default: PATH/results.csv)")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"ntklab collect: {', '.join(map(str, missing))} does not exist", file=sys.stderr)
        return 2
    table, skipped = collect(args.paths)
    if table.empty:
        print(f"ntklab collect: no runs under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    out = args.out or args.paths[0] / "results.csv"
    written = write_table(table, out)
    counts = table["status"].value_counts().to_dict()
    print(f"{len(table)} runs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), "
          f"{len(skipped)} skipped → {', '.join(map(str, written))}")
    return 0
