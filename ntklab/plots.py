"""Figures of one run, drawn from its metrics records (matplotlib, no display needed).

    loss.png   train and test loss against step: the network (solid), the analytic NTK's
               kernel-regression prediction (dashed) and the linearised network's (dotted)
    drift.png  param_drift, kernel_change, kernel_to_limit and the prediction gaps against step, log-log
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from ntklab import results  # noqa: E402

_DRIFT = ("param_drift", "kernel_change", "kernel_to_limit", "pred_gap_analytic", "pred_gap_linear")


def _series(records: List[Dict], name: str):
    """(steps, values) of the records with a positive finite ``name`` at step ≥ 1 (log axes)."""
    pairs = [(r["step"], r[name]) for r in records
             if r.get("step", 0) >= 1 and isinstance(r.get(name), (int, float)) and r[name] > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_run(run_dir: Path, records: Optional[List[Dict]] = None) -> List[Path]:
    """Draw loss.png and drift.png into ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    if records is None:
        records = results.read_metrics(run_dir / results.METRICS)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for split, color in (("train", "C0"), ("test", "C1")):
        for name, style, label in ((f"{split}_loss", "-", "network"),
                                   (f"pred_{split}_loss_analytic", "--", "NTK prediction"),
                                   (f"pred_{split}_loss_linear", ":", "linearised")):
            steps, values = _series(records, name)
            if steps:
                ax.plot(steps, values, style, color=color, label=f"{split}: {label}")
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="loss  1/(2Nk) Σ‖f − y‖²",
           title="network against its kernel predictions")
    ax.legend(fontsize=8)
    paths.append(_save(fig, run_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in _DRIFT:
        steps, values = _series(records, name)
        if steps:
            ax.plot(steps, values, "o-", markersize=3, label=name)
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="relative distance / RMS gap",
           title="distance from the kernel regime")
    ax.legend(fontsize=8)
    paths.append(_save(fig, run_dir / "drift.png"))
    return paths


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path.with_suffix(""), formats=("png",))[0]


def save_figure(fig, stem: Path, formats=("png", "pdf"), dpi: int = 120) -> List[Path]:
    """Save ``fig`` as ``stem``.png (and .pdf, ...), close it, and return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths
