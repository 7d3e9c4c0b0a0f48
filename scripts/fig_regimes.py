"""Figure: lazy training against feature learning (docs/regimes.png, README "Beyond the lazy regime").

    python scripts/fig_regimes.py outputs/sweep/regimes/results.csv [--alpha outputs/sweep/alpha/results.csv] [--out docs/regimes]

Left: kernel_change at the end of training against width for each parametrization in the table
(+sweep=regimes: ntk, standard with lr ∝ 1/width, mup), log-log, with the fitted exponent and its
bootstrap interval over seeds. Right (with --alpha): kernel_change and pred_gap_linear against the
lazy scale α at fixed width (+sweep=alpha), with a 1/α reference line. The fits and the curves'
values are saved with the figure as STEM.json: {"width_fits": {parametrization: fit},
"alpha_fits": {quantity: fit}, "alpha_means": {quantity: {"alpha": [...], "mean": [...]}}}, each
fit {exponent, prefactor, low, high, n_points, n_groups}.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figure_common import arguments, finished_runs, fit_numbers, plot_width_fits, save_numbers  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402
from ntklab.scaling import fit_with_bootstrap  # noqa: E402


def main() -> None:
    args = arguments(__doc__, "regimes", lambda p: p.add_argument("--alpha", type=Path, default=None,
                                                                   help="results table of +sweep=alpha"))
    runs = finished_runs(args.table)
    fig, axes = plt.subplots(1, 2 if args.alpha else 1, figsize=(10 if args.alpha else 5.2, 4), squeeze=False)
    ax = axes[0][0]
    numbers = {"width_fits": {}, "alpha_fits": {}, "alpha_means": {}}
    for parametrization, fit in plot_width_fits(ax, runs, "final.kernel_change"):
        print(f"kernel_change vs width, {parametrization}: exponent {fit.exponent:.3f} [{fit.low:.3f}, {fit.high:.3f}]")
        numbers["width_fits"][parametrization] = fit_numbers(fit)
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="kernel_change at the end",
           title="kernel change against width")
    ax.legend(fontsize=8)
    if args.alpha:
        ax = axes[0][1]
        lazy = finished_runs(args.alpha).dropna(subset=["model.alpha"])
        for i, name in enumerate(("final.kernel_change", "final.pred_gap_linear")):
            ax.plot(lazy["model.alpha"], lazy[name], "o", color=f"C{i}", alpha=0.6, markersize=4)
            means = lazy.groupby("model.alpha")[name].mean()
            numbers["alpha_means"][name] = {"alpha": means.index.tolist(), "mean": means.tolist()}
            label = name.split(".", 1)[1]
            lazy_side = lazy[lazy["model.alpha"] >= 1]
            if lazy_side["model.alpha"].nunique() >= 2:     # the fit needs two α ≥ 1
                fit = fit_with_bootstrap(lazy_side, "model.alpha", name)
                label += f" (α ≥ 1: {fit.label()})"
                print(f"{name} vs alpha (alpha >= 1): exponent {fit.exponent:.3f} [{fit.low:.3f}, {fit.high:.3f}]")
                numbers["alpha_fits"][name] = fit_numbers(fit)
            ax.plot(means.index, means.values, "-", color=f"C{i}", label=label)
        alphas = np.geomspace(lazy["model.alpha"].min(), lazy["model.alpha"].max(), 50)
        nearest = lazy.loc[(np.log(lazy["model.alpha"])).abs().idxmin(), "model.alpha"]    # the α closest to 1
        anchor = lazy.loc[lazy["model.alpha"] == nearest, "final.kernel_change"].mean() * nearest
        ax.plot(alphas, anchor / alphas, "k--", linewidth=1, label="1/α")
        width = lazy["model.width"].iloc[0]
        ax.set(xscale="log", yscale="log", xlabel="α", title=f"lazy scale α at width {width}")
        ax.legend(fontsize=8)
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, numbers))


if __name__ == "__main__":
    main()
