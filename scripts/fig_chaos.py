"""Redraw the figures of a ``python -m ntklab chaos`` run from its chaos.json, and write the numbers they show.

    python scripts/fig_chaos.py outputs/chaos/<run> [--out docs/chaos] [--correlation 0.5] [--dpi 72]

STEM_normalised_ntk.png, STEM_condition_number.png, STEM_steps.png (:func:`ntklab.plots.plot_chaos`; the
README's figures are drawn this way with ``--out docs/chaos --dpi 72``) and STEM.json: per (arch, norm, σ_b²)
at the deepest listed depth the finite nets' normalised NTK (mean, std), the limit's, the condition numbers and
the median steps to loss (:func:`figure_common.save_numbers`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from figure_common import save_numbers
from ntklab.plots import plot_chaos


def deepest(summary: dict, correlation: float) -> list:
    """One row per curve: its numbers at the deepest listed depth."""
    j = summary["correlations"].index(correlation)
    rows = []
    for curve in summary["curves"]:
        finite, depth = curve["finite"][-1], curve["depths"][-1]
        limit = curve["limit"]
        at = None if limit is None or depth not in limit["depths"] else limit["depths"].index(depth)
        stats = finite["normalised_ntk"].get(str(correlation)) or {}
        rows.append({"arch": curve["arch"], "norm": curve["norm"], "sigma_b2": curve["sigma_b2"],
                     "phase": curve["phase"], "depth": depth, "finite_mean": stats.get("mean"),
                     "finite_std": stats.get("std"), "limit": None if at is None else limit["normalised_ntk"][j][at],
                     "condition_finite_median": (finite["condition_number"] or {}).get("median"),
                     "condition_limit": None if at is None else limit["condition_number"][at],
                     "steps_median": (finite.get("steps_to_loss") or {}).get("median"),
                     "steps_predicted_median": (finite.get("steps_predicted") or {}).get("median")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a chaos run directory (holds chaos.json)")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default: RUN_DIR/figures/chaos)")
    parser.add_argument("--correlation", type=float, default=None, help="the pair drawn (default: the run's)")
    parser.add_argument("--dpi", type=int, default=120)
    args = parser.parse_args()
    summary = json.loads((args.run_dir / "chaos.json").read_text())
    correlation = summary["config"]["plot_correlation"] if args.correlation is None else args.correlation
    if correlation not in summary["correlations"]:
        raise SystemExit(f"--correlation must be one of the run's correlations {summary['correlations']}")
    stem = args.out or args.run_dir / "figures" / "chaos"
    paths = plot_chaos(stem.parent, summary, correlation, ("png",), prefix=f"{stem.name}_", dpi=args.dpi)
    paths.append(save_numbers(stem, {"correlation": correlation, "deepest": deepest(summary, correlation),
                                     "settings": summary["settings"], "machine": summary.get("device"),
                                     "timing_s": summary["timing_s"]}))
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
