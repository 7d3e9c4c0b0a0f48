"""Figure: the loss's Hessian against the NTK at initialisation, across widths (Jacot, Gabriel &
Hongler 2019), from any sweep that tracks ``ntk_top_eigenvalues`` and ``sharpness`` (+sweep=eos).

    python scripts/fig_hessian_ntk.py outputs/sweep/eos/results.csv [--out docs/hessian_ntk]

H = G + R with G = JᵀJ/(Nk), whose nonzero eigenvalues are those of Θ̂/(Nk), and R the residual
term Σ (f − y)·∇²f/(Nk), small for a wide net. One run per width and seed (θ_0 does not depend on
the step size):

  (a) the top eigenvalues of H_0 against the top eigenvalues of Θ̂_0/(Nk), pairwise (i-th with
      i-th), one colour per width, with the line y = x
  (b) the relative gap |λ_max(H_0) − λ_max(Θ̂_0)/(Nk)| / (λ_max(Θ̂_0)/(Nk)) against width, log-log,
      with its fitted exponent (and bootstrap interval over seeds when there are several)

The numbers are saved with the figure as STEM.json: {"points": [{"width", "seed", "entries" (Nk),
"ntk_over_nk": [...], "hessian": [...], "relative_gap"}, ...] (by width), "gap_fit": fit or null}.
"""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from figure_common import arguments, ended_runs, fit_numbers, require, save_numbers  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402
from ntklab.scaling import fit_with_bootstrap  # noqa: E402


def _values(cell) -> list:
    """A list column of the table: JSON text in a CSV, a list or array in a parquet table."""
    return json.loads(cell) if isinstance(cell, str) else [float(v) for v in cell]


def main() -> None:
    args = arguments(__doc__, "hessian_ntk")
    runs = ended_runs(args.table)
    require(runs, ["initial.hessian_top_eigenvalues", "initial.ntk_top_eigenvalues", "spectrum.entries"],
            "track ntk_top_eigenvalues and sharpness (+sweep=eos does)")
    runs = runs.sort_values(["model.width", "seed", "run_dir"]).drop_duplicates(["model.width", "seed"])
    points = []
    for _, run in runs.iterrows():
        entries = int(run["spectrum.entries"])
        ntk = [v / entries for v in _values(run["initial.ntk_top_eigenvalues"])]
        hessian = _values(run["initial.hessian_top_eigenvalues"])
        points.append({"width": int(run["model.width"]), "seed": int(run["seed"]), "entries": entries,
                       "ntk_over_nk": ntk, "hessian": hessian, "relative_gap": abs(hessian[0] - ntk[0]) / ntk[0]})
    widths = sorted({p["width"] for p in points})
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0.0, 0.9, len(widths)))))
    fig, (ax, ax_gap) = plt.subplots(1, 2, figsize=(10, 4.2))
    for width in widths:
        for i, p in enumerate(q for q in points if q["width"] == width):
            pairs = min(len(p["ntk_over_nk"]), len(p["hessian"]))
            ax.plot(p["ntk_over_nk"][:pairs], p["hessian"][:pairs], "o", color=colors[width], alpha=0.7,
                    label=f"width {width}" if i == 0 else None)
    low = min(min(p["ntk_over_nk"] + p["hessian"]) for p in points)
    high = max(max(p["ntk_over_nk"] + p["hessian"]) for p in points)
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="y = x")
    ax.set(xscale="log", yscale="log", xlabel="λ_i(Θ̂_0) / (Nk)", ylabel="λ_i(H_0)",
           title="(a) top eigenvalues at init: Hessian against NTK/(Nk)")
    ax.legend(fontsize=7)
    gaps = pd.DataFrame([{"model.width": p["width"], "seed": p["seed"], "gap": p["relative_gap"]} for p in points])
    ax_gap.plot(gaps["model.width"], gaps["gap"], "o", color="C0", alpha=0.6)
    fit = None
    positive = gaps[gaps["gap"] > 0]
    if positive["model.width"].nunique() >= 2:
        fit = fit_with_bootstrap(positive, "model.width", "gap")
        grid = np.geomspace(positive["model.width"].min(), positive["model.width"].max(), 50)
        ax_gap.plot(grid, fit(grid), "-", color="C0", label=fit.label())
        print(f"relative gap vs width: exponent {fit.exponent:.3f} [{fit.low}, {fit.high}]")
        ax_gap.legend(fontsize=8)
    ax_gap.set(xscale="log", yscale="log", xlabel="width", ylabel="|λ_max(H_0) − λ_max(Θ̂_0)/(Nk)|, relative",
               title="(b) the residual term's part of the sharpness")
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, {"points": points, "gap_fit": None if fit is None else fit_numbers(fit)}))


if __name__ == "__main__":
    main()
