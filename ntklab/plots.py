"""Every figure the commands draw, from their records or summaries (matplotlib Agg, no display
needed), saved by the one :func:`save_figure` (which the figure scripts use too).

``train``, from a run's metrics records (:func:`plot_run`):

    loss.png   train and test loss against step: the network (solid), the analytic NTK's
               kernel-regression prediction (dashed) and the linearised network's (dotted)
    drift.png  param_drift, kernel_change, kernel_to_limit and the prediction gaps against step, log-log
    stability.png  (with the spectral quantities) η·λ_max(H) and η·λ_max(Θ̂)/(Nk) against step, with
               the edge 2, above the train loss

``spectrum`` (:func:`plot_spectrum`) and ``phase`` (:func:`plot_phase`), from their summaries:

    eigenvalues.png                 μ_k and the fractional variance by degree k (log scale)
    fractional_variance_depth.png   each chosen degree's share of the trace against depth, its
                                    maximising depth marked
    phase_diagram.png               χ_1 over (σ_w², σ_b²), the χ_1 = 1 line, the two example settings
    normalised_ntk.png              Θ(x, x')/√(Θ(x, x) Θ(x', x')) (and the NNGP's) against depth
    condition_number.png            the NTK's condition number on a few inputs against depth
    correlation_map.png             c ↦ c_next for the two settings, with the diagonal

Each spectrum/phase figure is saved in each of the given formats (png by default; pdf, svg). The
functions read plain dicts and records (the JSON written next to them), so a figure can be
redrawn from a finished run directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from ntklab import results  # noqa: E402
from ntklab.quantities import DEFAULT  # noqa: E402


def save_figure(fig, stem: Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 120) -> List[Path]:
    """Save ``fig`` as ``stem``.png (and .pdf, ...), close it, and return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- train

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
    paths += save_figure(fig, run_dir / "loss", formats=("png",))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in DEFAULT:
        steps, values = _series(records, name)
        if steps:
            ax.plot(steps, values, "o-", markersize=3, label=name)
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="relative distance / RMS gap",
           title="distance from the kernel regime")
    ax.legend(fontsize=8)
    paths += save_figure(fig, run_dir / "drift", formats=("png",))

    spectral = [(name, label) for name, label in (("eta_sharpness", "η·λ_max(H)"), ("eta_ntk", "η·λ_max(Θ̂)/(Nk)"))
                if any(name in r for r in records)]
    if spectral:
        fig, (ax_loss, ax) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
        steps, values = _series(records, "train_loss")
        ax_loss.plot(steps, values, "-", color="C0")
        ax_loss.set(xscale="log", yscale="log", ylabel="train loss")
        for name, label in spectral:
            steps, values = _series(records, name)
            ax.plot(steps, values, "o-", markersize=2, label=label)
        ax.axhline(2.0, color="k", linestyle="--", linewidth=1, label="2 (edge of stability)")
        ax.set(xscale="log", xlabel="step", ylabel="step size × curvature", title="stability: η·sharpness against 2")
        ax.legend(fontsize=8)
        paths += save_figure(fig, run_dir / "stability", formats=("png",))
    return paths


# ----------------------------------------------------------------------------- spectrum and phase

_SETTINGS = (("frozen", "C0"), ("chaotic", "C3"))


def plot_spectrum(run_dir: Path, summary: Dict, plot_degrees: Sequence[int],
                  formats: Sequence[str] = ("png",)) -> List[Path]:
    """eigenvalues and, with a depth sweep, fractional_variance_depth, in each of ``formats``."""
    run_dir = Path(run_dir)
    kinds = summary["kinds"]
    degrees = np.asarray(summary["degree"])
    where = "{±1}^%d" % summary["d"] if summary["domain"] == "boolean_cube" else "the sphere in R^%d" % summary["d"]
    paths = []

    fig, (ax_mu, ax_fv) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, entry in kinds.items():
        mu, fv = _array(entry["eigenvalue"]), _array(entry["fractional_variance"])
        keep = mu > 0          # exact zeros (odd kernels' even degrees) have no place on a log axis
        marker = "o" if degrees.size <= 60 else None
        ax_mu.plot(degrees[keep], mu[keep], marker=marker, markersize=3, label=kind.upper())
        keep = fv > 0
        ax_fv.plot(degrees[keep], fv[keep], marker=marker, markersize=3, label=kind.upper())
    ax_mu.set(yscale="log", xlabel="degree k", ylabel="eigenvalue μ_k",
              title=f"eigenvalues on {where}, depth {summary['depth']}")
    ax_fv.set(yscale="log", xlabel="degree k", ylabel="fractional variance m_k μ_k / Φ(1)",
              title="share of the trace by degree")
    for ax in (ax_mu, ax_fv):
        ax.legend(fontsize=8)
    paths += save_figure(fig, run_dir / "eigenvalues", formats)

    sweeps = {kind: entry["sweep"] for kind, entry in kinds.items() if entry.get("sweep")}
    if sweeps:
        fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4), squeeze=False)
        for ax, (kind, sweep) in zip(axes[0], sweeps.items()):
            depths = np.asarray(sweep["depths"])
            shares = _array(sweep["fractional_variance"])           # (D, K+1)
            shares[shares <= 0] = np.nan        # exact zeros (relu's odd degrees >= 3 at depth 1): off the log axis
            for i, k in enumerate(plot_degrees):
                color = f"C{i % 10}"
                if np.isnan(shares[:, k]).all():      # zero at every depth (odd φ without bias, even k)
                    continue
                ax.plot(depths, shares[:, k], color=color, label=f"k = {k}")
                best = int(np.nanargmax(shares[:, k]))
                ax.plot(depths[best], shares[best, k], "*", color=color, markersize=10)
            ax.set(xlabel="depth L", ylabel="fractional variance of degree k", yscale="log",
                   title=f"{kind.upper()}: share by depth (★ = maximising depth)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=8)
        paths += save_figure(fig, run_dir / "fractional_variance_depth", formats)
    return paths


def plot_phase(run_dir: Path, summary: Dict, formats: Sequence[str] = ("png",)) -> List[Path]:
    """phase_diagram, normalised_ntk, condition_number, correlation_map, in each of ``formats``."""
    run_dir = Path(run_dir)
    grid, examples = summary["grid"], summary["examples"]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4.5))
    w, b, chi = np.asarray(grid["sigma_w2"]), np.asarray(grid["sigma_b2"]), _array(grid["chi_1"])
    log_chi = np.log10(chi)
    span = max(np.nanmax(np.abs(log_chi)), 1e-3)
    mesh = ax.pcolormesh(w, b, log_chi, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -span, span), shading="nearest")
    fig.colorbar(mesh, ax=ax, label="log10 χ_1")
    line = summary["critical_line"]
    line_w, line_b = _array(line["sigma_w2"]), np.asarray(line["sigma_b2"])
    ax.plot(line_w, line_b, "k-", linewidth=2, label="χ_1 = 1 (edge of chaos)")
    for name, color in _SETTINGS:
        point = examples[name]
        ax.plot(point["sigma_w2"], point["sigma_b2"], "o", color="k", markerfacecolor=color, markersize=8,
                label=f"{name}: χ_1 = {point['chi_1']:.3g}")
    ax.set(xlabel="σ_w²", ylabel="σ_b²", title=f"{summary['activation']}: ordered (blue) and chaotic (red)",
           xlim=(w[0], w[-1]), ylim=(b[0], b[-1]))
    ax.legend(fontsize=8, loc="upper left")
    paths += save_figure(fig, run_dir / "phase_diagram", formats)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in _SETTINGS:
        point = examples[name]
        ax.plot(point["depths"], point["normalised_ntk"], "-", color=color,
                label=f"{name} NTK (σ_w²={point['sigma_w2']:g}, σ_b²={point['sigma_b2']:g}, χ_1={point['chi_1']:.3g})")
        ax.plot(point["depths"], point["normalised_nngp"], "--", color=color, label=f"{name} NNGP")
    ax.set(xlabel="depth L", ylabel="K(x, x') / √(K(x, x) K(x', x'))", ylim=(-0.05, 1.05),
           title=f"{summary['activation']}: normalised kernels of two inputs against depth")
    ax.legend(fontsize=7)
    paths += save_figure(fig, run_dir / "normalised_ntk", formats)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in _SETTINGS:
        point = examples[name]
        ax.plot(point["depths"], _array(point["condition_number"]), "-", color=color, label=name)
    ax.set(xlabel="depth L", ylabel="λ_max / λ_min of the NTK", yscale="log",
           title="condition number of the NTK matrix\n(not drawn once λ_min is at rounding level)")
    ax.legend(fontsize=8)
    paths += save_figure(fig, run_dir / "condition_number", formats)

    with_map = [(name, color) for name, color in _SETTINGS if "correlation_out" in examples[name]]
    if with_map:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([-1, 1], [-1, 1], ":", color="gray", label="c_next = c")
        for name, color in with_map:
            point = examples[name]
            ax.plot(point["correlation_in"], point["correlation_out"], color=color,
                    label=f"{name}: c* = {point['c_star']:.3g}")
        ax.set(xlabel="correlation c", ylabel="next layer's correlation", title="correlation map", aspect="equal")
        ax.legend(fontsize=8)
        paths += save_figure(fig, run_dir / "correlation_map", formats)
    return paths


def _array(values) -> np.ndarray:
    """JSON lists (None for non-finite numbers) as a float array with NaN."""
    return np.asarray([[math.nan if v is None else v for v in row] if isinstance(row, list) else
                       (math.nan if row is None else row) for row in values], dtype=np.float64)
