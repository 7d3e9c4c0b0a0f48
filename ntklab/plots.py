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

``chaos`` (:func:`plot_chaos`), from its summary (chaos.json; ``scripts/fig_chaos.py`` redraws them):

    chaos_normalised_ntk.png        finite nets (mean ± std over seeds) and the limit against depth, one
                                    panel per (arch, norm), one colour per σ_b²
    chaos_condition_number.png      the NTK's condition number on the probe inputs, the same panels
    chaos_steps.png                 gradient-descent steps to the target loss, and the kernel's prediction

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


def plot_gan(run_dir: Path, summary: Dict, records: List[Dict], formats: Sequence[str] = ("png",)) -> List[Path]:
    """The figures of a ``gan`` run (:mod:`ntklab.commands.gan`), from its summary, its metrics records
    and the files it wrote (samples.csv / samples.pt, spectrum.csv, pixels.csv):

        samples.png         ring: the final samples over the modes and their 3σ circles; images: a grid
                            of generated images beside real ones
        ntk.png             the generator's normalised NTK over latents (mean off the diagonal) against
                            step, with the limit's value at init
        progress.png        the run's metrics against step, the data's own value dashed
        spectrum.png        images: log10 of the mean power spectrum of generated and real images
                            (centred; the Nyquist row and column are the border)
        pixel_variance.png  images: the per-pixel NTK variance Θ(z, z)(t, t) at init, of the limit and of the net
    """
    import csv

    run_dir = Path(run_dir)
    paths: List[Path] = []
    steps = [r["step"] for r in records]
    ring = summary["dataset"] == "ring"
    label = f"{summary['dataset']}, {summary['generator']} (χ_1 = {summary['phase']['chi_1']:.3g}), seed {summary['seed']}"

    def read(name):
        with open(run_dir / name) as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(steps, [r["ntk_offdiag"] for r in records], "o-", label="empirical Θ̂")
    analytic = summary["ntk"]["analytic_init"]
    if analytic is not None:
        ax.axhline(analytic, color="k", linestyle="--", linewidth=1, label=f"limit at init: {analytic:.3f}")
    ax.set(xlabel="step", ylabel="mean off-diagonal of Θ̂/√(Θ̂_ii Θ̂_jj)", ylim=(-0.05, 1.05),
           title=f"generator NTK over latents\n{label}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    paths += save_figure(fig, run_dir / "ntk", formats)

    names = ["modes_covered", "high_quality"] if ring else ["checkerboard", "diversity", "classes_covered"]
    reference = summary.get("data", {})
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2))
    for ax, name in zip(axes, names):
        ax.plot(steps, [r[name] for r in records], "o-")
        value = {"diversity": 1.0}.get(name, reference.get(name))
        if value is not None:
            ax.axhline(value, color="gray", linestyle="--", linewidth=1, label="data")
            ax.legend(fontsize=7)
        ax.set(xlabel="step", title=name)
    fig.suptitle(label, fontsize=9)
    paths += save_figure(fig, run_dir / "progress", formats)

    if ring:
        config = summary["config"]["ring"]
        points = np.asarray([[row["x"], row["y"]] for row in read("samples.csv")])
        angles = 2 * np.pi * np.arange(config["n_modes"]) / config["n_modes"]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(points[:, 0], points[:, 1], ".", markersize=2, alpha=0.4, label="generated")
        for a in angles:
            ax.add_patch(plt.Circle((config["radius"] * np.cos(a), config["radius"] * np.sin(a)), 3 * config["std"],
                                    fill=False, color="C3", linewidth=1))
        final = records[-1]
        ax.set(aspect="equal", xlim=(-1.6 * config["radius"], 1.6 * config["radius"]),
               ylim=(-1.6 * config["radius"], 1.6 * config["radius"]),
               title=f"{label}\nstep {final['step']}: {final['modes_covered']} modes, "
                     f"{final['high_quality']:.0%} within 3σ")
        ax.title.set_fontsize(8)
        paths += save_figure(fig, run_dir / "samples", formats)
        return paths

    import torch

    saved = torch.load(run_dir / "samples.pt")
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, name in zip(axes, ("generated", "real")):
        ax.imshow(_grid(saved[name].numpy()), cmap="gray", vmin=-1, vmax=1)
        ax.set(title=name, xticks=[], yticks=[])
    fig.suptitle(label, fontsize=9)
    paths += save_figure(fig, run_dir / "samples", formats)

    rows = read("spectrum.csv")
    height, width = int(max(r["u"] for r in rows)) + 1, int(max(r["v"] for r in rows)) + 1
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    maps = {}
    for name in ("generated", "real"):
        power = np.zeros((height, width))
        for r in rows:
            power[int(r["u"]), int(r["v"])] = r[name]
        power[0, 0] = np.nan
        maps[name] = np.log10(np.fft.fftshift(power / np.nansum(power)))
    low = min(np.nanmin(m[np.isfinite(m)]) for m in maps.values())
    for ax, (name, values) in zip(axes, maps.items()):
        mesh = ax.imshow(values, cmap="magma", vmin=max(low, -6), vmax=0,
                         extent=(-width // 2 - 0.5, width - width // 2 - 0.5, height - height // 2 - 0.5, -height // 2 - 0.5))
        share = records[-1]["checkerboard"] if name == "generated" else reference["checkerboard"]
        ax.set(title=f"{name}: Nyquist share {share:.3g}", xlabel="v", ylabel="u")
        fig.colorbar(mesh, ax=ax, shrink=0.8, label="log10 share of power")
    fig.suptitle(f"mean power spectrum (DC removed), {label}", fontsize=9)
    paths += save_figure(fig, run_dir / "spectrum", formats)

    rows = read("pixels.csv")
    height, width = int(max(r["i"] for r in rows)) + 1, int(max(r["j"] for r in rows)) + 1
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, name, title in zip(axes, ("ntk", "empirical_ntk"),
                               ("limit: Θ(z, z)(t, t) / mean", "finite net at init: Θ̂(z, z)(t, t) / mean")):
        values = np.zeros((height, width))
        for r in rows:
            values[int(r["i"]), int(r["j"])] = r[name]
        mesh = ax.imshow(values / values.mean(), cmap="viridis")
        ax.set(title=title, xticks=[], yticks=[])
        fig.colorbar(mesh, ax=ax, shrink=0.8)
    note = summary.get("pixel_kernels", {}).get("note")
    fig.suptitle(f"per-pixel variance at init, {label}" + (f"\n({note})" if note else ""), fontsize=9)
    paths += save_figure(fig, run_dir / "pixel_variance", formats)
    return paths


def _grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """(N, C, H, W) → one (rows·(H+1), columns·(W+1)) mosaic of the first channel, −1 between tiles."""
    n, _, height, width = images.shape
    rows = -(-n // columns)
    out = -np.ones((rows * (height + 1), columns * (width + 1)))
    for k in range(n):
        r, c = divmod(k, columns)
        out[r * (height + 1): r * (height + 1) + height, c * (width + 1): c * (width + 1) + width] = images[k, 0]
    return out


def _array(values) -> np.ndarray:
    """JSON lists (None for non-finite numbers) as a float array with NaN."""
    return np.asarray([[math.nan if v is None else v for v in row] if isinstance(row, list) else
                       (math.nan if row is None else row) for row in values], dtype=np.float64)


# ----------------------------------------------------------------------------- chaos

def plot_chaos(out_dir: Path, summary: Dict, correlation: float, formats: Sequence[str] = ("png",),
               prefix: str = "chaos_", dpi: int = 120) -> List[Path]:
    """The ``chaos`` figures from its summary (chaos.json), one panel per (arch, norm), one colour per σ_b²:

    <prefix>normalised_ntk   Θ(x_0, x_c)/√(Θ(x_0,x_0)Θ(x_c,x_c)) at ``correlation`` against depth: limit
                             (line), finite nets (mean ± std over seeds)
    <prefix>condition_number λ_max/λ_min of Θ on the probe set: limit (line), finite (median, min–max)
    <prefix>steps            gradient-descent steps to the target loss (trained archs): median (filled),
                             each seed (dots), not reached (× at the cap), the kernel prediction (dashed)
    """
    out_dir = Path(out_dir)
    curves = summary["curves"]
    archs = list(dict.fromkeys(c["arch"] for c in curves))
    norms = list(dict.fromkeys(c["norm"] for c in curves))
    b2_values = [s["sigma_b2"] for s in summary["settings"]]
    phases = {s["sigma_b2"]: s for s in summary["settings"]}
    key = str(correlation)
    j = summary["correlations"].index(correlation)
    paths = []

    def grid(rows):
        fig, axes = plt.subplots(len(rows), len(norms), figsize=(4.2 * len(norms), 3.3 * len(rows)), squeeze=False,
                                 sharex=True)
        return fig, axes

    def depth_axis(ax, depths):
        ax.set_xscale("log")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.minorticks_off()

    def label(curve):
        s = phases[curve["sigma_b2"]]
        return f"σ_b²={curve['sigma_b2']:g} ({s['phase']}, χ_1={s['chi_1']:.3g})"

    def panel_title(ax, curve):
        width = summary["widths"][curve["arch"]]
        where = "" if curve["norm"] == "none" else (" before φ" if summary.get("norm_position", "pre") == "pre"
                                                     else " after φ")
        ax.set_title(f"{curve['arch']} ({'width' if curve['arch'] == 'mlp' else 'channels'} {width}), "
                     f"{curve['norm']}{where}" + ("\nno limit: finite nets only" if curve["limit"] is None else ""),
                     fontsize=9)

    fig, axes = grid(archs)
    for curve in curves:
        ax = axes[archs.index(curve["arch"]), norms.index(curve["norm"])]
        color = f"C{b2_values.index(curve['sigma_b2'])}"
        if curve["limit"] is not None:
            ax.plot(curve["limit"]["depths"], curve["limit"]["normalised_ntk"][j], "-", color=color, linewidth=1)
        stats = [f["normalised_ntk"].get(key) for f in curve["finite"]]
        depths = [d for d, s in zip(curve["depths"], stats) if s]
        ax.errorbar(depths, [s["mean"] for s in stats if s], yerr=[s["std"] for s in stats if s], fmt="o",
                    color=color, markersize=4, capsize=2, label=label(curve))
        panel_title(ax, curve)
        depth_axis(ax, curve["depths"])
        ax.set(xlabel="depth L", ylabel=f"normalised NTK, c = {correlation:g}")
        ax.axhline(0.0, color="gray", linewidth=0.5)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{summary['activation']}, σ_w² = {summary['sigma_w2']:g}: limit (lines), finite nets "
                 "(mean ± std over seeds)", fontsize=10)
    paths += save_figure(fig, out_dir / f"{prefix}normalised_ntk", formats, dpi)

    fig, axes = grid(archs)
    for curve in curves:
        ax = axes[archs.index(curve["arch"]), norms.index(curve["norm"])]
        color = f"C{b2_values.index(curve['sigma_b2'])}"
        if curve["limit"] is not None:
            ax.plot(curve["limit"]["depths"], _array(curve["limit"]["condition_number"]), "-", color=color,
                    linewidth=1)
        rows = [(d, f["condition_number"]) for d, f in zip(curve["depths"], curve["finite"]) if f["condition_number"]]
        finite_only = lambda values: np.where(np.isfinite(values), values, np.nan)     # inf: λ_min is rounding
        med = finite_only(_array([r[1]["median"] for r in rows]))
        low, high = (finite_only(_array([r[1][k] for r in rows])) for k in ("min", "max"))
        ax.errorbar([r[0] for r in rows], med, yerr=[np.nan_to_num(med - low), np.nan_to_num(high - med)], fmt="o",
                    color=color, markersize=4, capsize=2, label=label(curve))
        panel_title(ax, curve)
        depth_axis(ax, curve["depths"])
        ax.set(yscale="log", xlabel="depth L", ylabel="λ_max / λ_min of Θ")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"condition number of the NTK on {summary['n_inputs']} inputs: limit (lines), finite (median, "
                 "min–max); not drawn where λ_min is rounding", fontsize=10)
    paths += save_figure(fig, out_dir / f"{prefix}condition_number", formats, dpi)

    trained = [a for a in archs if any(c["arch"] == a and any(f.get("steps_to_loss") for f in c["finite"])
                                       for c in curves)]
    if trained:
        cap = summary["max_steps"]
        fig, axes = grid(trained)
        for curve in (c for c in curves if c["arch"] in trained):
            ax = axes[trained.index(curve["arch"]), norms.index(curve["norm"])]
            color = f"C{b2_values.index(curve['sigma_b2'])}"
            offset = 1.0 + 0.04 * (b2_values.index(curve["sigma_b2"]) - 1)      # keep the colours apart
            for depth, finite in zip(curve["depths"], curve["finite"]):
                steps = finite.get("steps_to_loss")
                if not steps:
                    continue
                reached = [s for s in steps["values"] if s is not None]
                ax.plot([depth * offset] * len(reached), [max(s, 0.8) for s in reached], ".", color=color, alpha=0.5)
                if steps["not_reached"]:
                    ax.plot(depth * offset, cap, "x", color=color, markersize=7)
            medians = [(d * offset, f["steps_to_loss"]["median"]) for d, f in zip(curve["depths"], curve["finite"])
                       if f.get("steps_to_loss") and f["steps_to_loss"]["median"] is not None]
            ax.plot(*zip(*medians) if medians else ([], []), "o-", color=color, markersize=4, label=label(curve))
            predicted = [(d * offset, f["steps_predicted"]["median"]) for d, f in zip(curve["depths"], curve["finite"])
                         if f.get("steps_predicted") and f["steps_predicted"]["median"] is not None]
            ax.plot(*zip(*predicted) if predicted else ([], []), "--", color=color, linewidth=1)
            panel_title(ax, curve)
            ax.axhline(cap, color="gray", linewidth=0.5, linestyle=":")
            depth_axis(ax, curve["depths"])
            ax.set(yscale="log", xlabel="depth L", ylabel="GD steps to the target loss")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"steps to {summary['config']['train']['loss_fraction']:g}·L_0 (η = "
                     f"{summary['config']['train']['lr_fraction']:g}·2N/λ_max): median (o), seeds (·), "
                     f"not reached within {cap} (×), kernel prediction (--)", fontsize=10)
        paths += save_figure(fig, out_dir / f"{prefix}steps", formats, dpi)
    return paths
