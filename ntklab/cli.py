"""``python -m ntklab <subcommand> [hydra overrides]``.

Each subcommand is a Hydra app whose config lives under the top-level ``configs/`` (installed as
``ntklab.configs``) and is typed by the dataclasses of :mod:`ntklab.config`. Exit codes: 0 for a
finished run (also a diverged one, so a sweep goes on), 2 for a value the lab's validation rejects
(a short message naming the field, no traceback), for a run directory another process is
running in (one line naming its pid) and for one whose checkpoint or metrics fail their checksum
(one line naming the file and what to do; summary.json records the failure), Hydra's own codes for its own errors (a
malformed override, ``width=abc``), 1 for a run that failed (its summary.json, or regress's regression.json, says why; a file
that cannot be written, e.g. on a full disk, is one line naming it). A multirun
sweep runs every job whatever happens to the others and exits 1 when any of them failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

CONFIG_PACKAGE = "pkg://ntklab.configs"
USAGE = """usage: python -m ntklab <command> [OVERRIDE ...]

commands:
{commands}

Overrides are Hydra's: key=value (width=4096, optim.steps=2000), group=option (data=digits),
-m / --multirun with comma-separated values for sweeps. `python -m ntklab <command> --help`
shows the command's config groups and defaults; `--cfg job` prints the composed config.
"""


def _run_app(cfg, name: str, target: str) -> Optional[Dict]:
    """Run ``target`` ("module:function", called with the config and Hydra's output directory);
    a ConfigError (or a run directory in use) becomes one line on stderr and exit code 2.

    In a multirun sweep nothing a job raises ends the process: the job prints one line, its
    outcome goes to the sweep's report (:mod:`ntklab.sweeps`) and the launcher goes on to the next
    job; :func:`main` then exits 1 when any job failed."""
    import importlib

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ntklab import sweeps
    from ntklab.errors import ConfigError
    from ntklab.results import RunDirBusy, RunDirCorrupt, WriteError

    hydra_cfg = HydraConfig.get()
    module, function = target.split(":")
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    job = {"job": hydra_cfg.job.get("num"), "run_dir": str(run_dir)}
    try:
        result = getattr(importlib.import_module(module), function)(cfg, run_dir)
    except (ConfigError, RunDirBusy, RunDirCorrupt) as err:
        reason = f"invalid config: {err}" if isinstance(err, ConfigError) else str(err)
        print(f"ntklab {name}: {reason}", file=sys.stderr)
        if not in_sweep:
            sys.exit(2)
        sweeps.record_job({**job, "status": "failed", "error": reason})
        return None
    except Exception as err:
        if isinstance(err, WriteError) and not in_sweep:     # a full disk: the file, not a chained traceback
            print(f"ntklab {name}: {err}", file=sys.stderr)
            sys.exit(1)
        if not in_sweep:
            raise
        # one line; the traceback is in the job's summary.json (the trainer records it)
        reason = f"{type(err).__name__}: {err}"
        print(f"ntklab {name}: job {job['job']} failed ({run_dir}): {reason}", file=sys.stderr)
        sweeps.record_job({**job, "status": "failed", "error": reason})
        return None
    status = result.get("status", "ok") if isinstance(result, dict) else "ok"
    sweeps.record_job({**job, "status": status})
    return result


# Hydra pickles the task with a sweep's jobs (submitit), so each is a module-level function.
def _train(cfg) -> Optional[Dict]:
    return _run_app(cfg, "train", "ntklab.train:run")


def _spectrum(cfg) -> Optional[Dict]:
    return _run_app(cfg, "spectrum", "ntklab.commands.spectrum:run")


def _phase(cfg) -> Optional[Dict]:
    return _run_app(cfg, "phase", "ntklab.commands.phase:run")


def _chaos(cfg) -> Optional[Dict]:
    return _run_app(cfg, "chaos", "ntklab.commands.chaos:run")


def _regress(cfg) -> Optional[Dict]:
    return _run_app(cfg, "regress", "ntklab.commands.regress:run")


def _gan(cfg) -> Optional[Dict]:
    return _run_app(cfg, "gan", "ntklab.commands.gan:run")


def _collect(args: List[str]) -> int:
    from ntklab.collect import main as collect_main

    return collect_main(args)


def _compare(args: List[str]) -> int:
    from ntklab.compare import main as compare_main

    return compare_main(args)


# name → (one-line description, task, primary config name). A Hydra app's task takes the composed
# config; a command without a config (None) is a plain argparse program taking its arguments.
COMMANDS: Dict[str, Tuple[str, Callable, Optional[str]]] = {
    "train": ("train a network by gradient descent and track it against its infinite-width NTK", _train, "train"),
    "spectrum": ("eigenvalues of the NNGP/NTK by degree (boolean cube, sphere) and their depth sweep", _spectrum,
                 "spectrum"),
    "phase": ("freeze and chaos: chi_1 phase diagram, normalised NTK and condition number against depth", _phase,
              "phase"),
    "chaos": ("freeze and chaos in finite nets: normalised NTK, condition number, steps to loss vs depth, "
              "with/without layer_norm, batch_norm", _chaos, "chaos"),
    "regress": ("kernel regression with a model's analytic NNGP and NTK (the CNTK for CNNs) on train/test data",
                _regress, "regress"),
    "gan": ("a GAN whose generator is frozen, chaotic or normalised: mode collapse, checkerboards, its NTK over "
            "latents", _gan, "gan"),
    "collect": ("gather run directories (a multirun sweep) into one table: PATH/results.csv", _collect, None),
    "compare": ("two runs (regress or train) on the same test images, image by image: counts, paired error, "
                "McNemar p",
                _compare, None),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {name:<{width}}  {text}" for name, (text, _, _) in COMMANDS.items()))


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatch to a subcommand; ``argv`` defaults to ``sys.argv[1:]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, overrides = args[0], args[1:]
    if name not in COMMANDS:
        print(f"ntklab: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    _, task, config_name = COMMANDS[name]
    if config_name is None:
        return task(overrides)
    import hydra

    from ntklab.config import register_configs

    register_configs()
    app = hydra.main(config_path=CONFIG_PACKAGE, config_name=config_name, version_base="1.3")(task)
    # Hydra parses sys.argv itself: hand it the overrides only.
    saved, sys.argv = sys.argv, [f"{sys.argv[0]} {name}"] + overrides
    try:
        app()
    finally:
        sys.argv = saved
    from ntklab import sweeps

    failed = sweeps.failures()
    if failed:      # a sweep ran every job; its exit code says whether any failed
        print(f"ntklab {name}: {len(failed)} of {len(sweeps.jobs())} jobs failed (each run directory's summary.json, or a regress run's regression.json, keeps its error): "
              + "; ".join(f"job {r['job']}: {r.get('error')}" for r in failed), file=sys.stderr)
        return 1
    return 0
