"""``python -m ntklab <subcommand> [hydra overrides]``.

Each subcommand is a Hydra app whose config lives under the top-level ``configs/`` (installed as
``ntklab.configs``) and is typed by the dataclasses of :mod:`ntklab.config`. Exit codes: 0 for a
finished run (also a diverged one, so a sweep goes on), 2 for a value the lab's validation rejects
(a short message naming the field, no traceback), Hydra's own codes for its own errors (a
malformed override, ``width=abc``), 1 for a run that failed (its summary.json says why).
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
    a ConfigError becomes one line on stderr and exit code 2."""
    import importlib

    from hydra.core.hydra_config import HydraConfig

    from ntklab.errors import ConfigError

    module, function = target.split(":")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return getattr(importlib.import_module(module), function)(cfg, run_dir)
    except ConfigError as err:
        print(f"ntklab {name}: invalid config: {err}", file=sys.stderr)
        sys.exit(2)


# Hydra pickles the task with a sweep's jobs (submitit), so each is a module-level function.
def _train(cfg) -> Optional[Dict]:
    return _run_app(cfg, "train", "ntklab.train:run")


def _spectrum(cfg) -> Optional[Dict]:
    return _run_app(cfg, "spectrum", "ntklab.commands.spectrum:run")


def _phase(cfg) -> Optional[Dict]:
    return _run_app(cfg, "phase", "ntklab.commands.phase:run")


def _collect(args: List[str]) -> int:
    from ntklab.collect import main as collect_main

    return collect_main(args)


# name → (one-line description, task, primary config name). A Hydra app's task takes the composed
# config; a command without a config (None) is a plain argparse program taking its arguments.
COMMANDS: Dict[str, Tuple[str, Callable, Optional[str]]] = {
    "train": ("train a network by gradient descent and track it against its infinite-width NTK", _train, "train"),
    "spectrum": ("eigenvalues of the NNGP/NTK by degree (boolean cube, sphere) and their depth sweep", _spectrum,
                 "spectrum"),
    "phase": ("freeze and chaos: chi_1 phase diagram, normalised NTK and condition number against depth", _phase,
              "phase"),
    "collect": ("gather run directories (a multirun sweep) into one table: PATH/results.csv", _collect, None),
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
    return 0
