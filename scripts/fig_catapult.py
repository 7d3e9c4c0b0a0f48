"""Figure: the lazy → catapult → divergence phase diagram (Lewkowycz et al. 2020, Fig. 2), from +sweep=eos.

    python scripts/fig_catapult.py outputs/sweep/eos/results.csv [--out docs/catapult]

Three panels against η/η_max (η_max = 2Nk/λ_max of each net's empirical NTK at init), one colour per
width, one marker per regime (summary.json's ``regime.label``; ok and diverged runs, a diverged run
drawn at its last full measurement):

  (a) kernel_change at the end of training, ‖Θ̂_T − Θ̂_0‖/‖Θ̂_0‖ (log scale)
  (b) λ_max(Θ̂_T)/λ_max(Θ̂_0): below 1 the kernel shrank; the dotted curve η_max/η is where
      η·λ_max(Θ̂_T)/(Nk) = 2, the edge a catapulted run ends under
  (c) the regime of every run as a grid, width against η/η_max

Runs need ``kernel_change`` and ``ntk_top_eigenvalues`` tracked. The numbers are saved with the
figure as STEM.json: {"runs": [{"width", "seed", "lr_over_eta_max", "status", "regime",
"kernel_change", "ntk_ratio"}, ...] (sorted by width, then η), "regimes": {regime: count}}.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figure_common import arguments, ended_runs, require, save_numbers, step_size_ratio  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402

MARKERS = {"lazy": "o", "catapult": "^", "edge_of_stability": "s", "diverged": "X", "other": "."}
COLORS = {"lazy": "C0", "catapult": "C1", "edge_of_stability": "C2", "diverged": "C3", "other": "0.6"}


def main() -> None:
    args = arguments(__doc__, "catapult")
    runs = ended_runs(args.table)
    require(runs, ["final.kernel_change", "final.ntk_max_eigenvalue", "initial.ntk_max_eigenvalue", "regime.label"],
            "track kernel_change and ntk_top_eigenvalues (+sweep=eos does)")
    runs["ratio"] = step_size_ratio(runs)
    runs["ntk_ratio"] = runs["final.ntk_max_eigenvalue"] / runs["initial.ntk_max_eigenvalue"]
    runs = runs.sort_values(["model.width", "ratio"])
    widths = sorted(runs["model.width"].unique())
    width_colors = dict(zip(widths, plt.cm.viridis(np.linspace(0.0, 0.9, len(widths)))))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for width in widths:
        group = runs[runs["model.width"] == width]
        for ax, column in zip(axes[:2], ("final.kernel_change", "ntk_ratio")):
            ax.plot(group["ratio"], group[column], "-", color=width_colors[width], linewidth=1, label=f"width {width}")
            for regime, rows in group.groupby("regime.label"):
                ax.plot(rows["ratio"], rows[column], MARKERS.get(regime, "."), color=width_colors[width], markersize=7)
    for regime, marker in MARKERS.items():           # legend entries for the markers
        axes[1].plot([], [], marker, color="k", linestyle="none", label=regime)
    ratios = np.geomspace(runs["ratio"].min(), runs["ratio"].max(), 100)
    axes[1].plot(ratios, np.minimum(1.0 / ratios, 10), "k:", linewidth=1, label="η_max/η (edge at the end)")
    for ax in axes[:2]:
        ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set(xscale="log", xlabel="η / η_max")
    axes[0].set(yscale="log", ylabel="kernel_change at the end", title="(a) how far the kernel moved")
    axes[1].set(yscale="log", ylabel="λ_max(Θ̂_T) / λ_max(Θ̂_0)", title="(b) the kernel's top eigenvalue")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    ax = axes[2]
    ratio_values = sorted(runs["ratio"].round(6).unique())
    for _, run in runs.iterrows():
        regime = run["regime.label"]
        ax.scatter(ratio_values.index(round(run["ratio"], 6)), widths.index(run["model.width"]), s=120,
                   marker=MARKERS.get(regime, "."), color=COLORS.get(regime, "k"))
    for regime, marker in MARKERS.items():
        ax.scatter([], [], marker=marker, color=COLORS[regime], label=regime)
    ax.set_xticks(range(len(ratio_values)), [f"{r:g}" for r in ratio_values], fontsize=7)
    ax.set_yticks(range(len(widths)), [str(w) for w in widths])
    ax.set(xlabel="η / η_max", ylabel="width", title="(c) regime of each run", ylim=(-0.5, len(widths) - 0.5))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    rows = [{"width": int(r["model.width"]), "seed": int(r["seed"]), "lr_over_eta_max": float(r["ratio"]),
             "status": r["status"], "regime": r["regime.label"], "kernel_change": float(r["final.kernel_change"]),
             "ntk_ratio": float(r["ntk_ratio"])} for _, r in runs.iterrows()]
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, {"runs": rows, "regimes": runs["regime.label"].value_counts().to_dict()}))


if __name__ == "__main__":
    main()
