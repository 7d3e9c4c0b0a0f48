"""Figure (a): how far trained networks end from the kernel regime, against width.

    python scripts/fig_scaling.py outputs/sweep/param/results.csv [--out docs/scaling]

Three log-log panels — kernel_change, param_drift and kernel_to_limit at the end of training —
with every run as a point, one colour per parametrization, the fitted power law of each with the
exponent and its 95% bootstrap interval over seeds (ntklab.scaling), and a width^(-1/2)
reference line (Lee et al. 2019). The fitted exponents are also printed as a table and saved
with the figure as STEM.json: {"fits": {quantity: {parametrization: {exponent, prefactor, low,
high, n_points, n_groups}}}, "reference_exponent": -0.5}.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from figure_common import (arguments, finished_runs, fit_numbers, plot_half_power_reference,  # noqa: E402
                           plot_width_fits, require, save_numbers)
from ntklab.plots import save_figure  # noqa: E402

QUANTITIES = ("final.kernel_change", "final.param_drift", "final.kernel_to_limit")


def main() -> None:
    args = arguments(__doc__, "scaling")
    runs = finished_runs(args.table)
    quantities = [q for q in QUANTITIES if q in runs and runs[q].notna().any()]
    skipped = sorted(set(QUANTITIES) - set(quantities))
    if skipped:
        print(f"not in the table (not tracked in these runs): {', '.join(skipped)}")
    require(runs, quantities[:1] or QUANTITIES[:1], "track kernel_change, param_drift or kernel_to_limit")
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.2 * len(quantities), 3.8), squeeze=False)
    axes = axes[0]
    print("| quantity | parametrization | exponent | 95% interval | runs |")
    print("|---|---|---:|---|---:|")
    fits = {}
    for ax, quantity in zip(axes, quantities):
        fits[quantity] = {}
        for parametrization, fit in plot_width_fits(ax, runs, quantity):
            print(f"| {quantity} | {parametrization} | {fit.exponent:.3f} | [{fit.low:.3f}, {fit.high:.3f}] | {fit.n_points} |")
            fits[quantity][parametrization] = fit_numbers(fit)
        plot_half_power_reference(ax, runs, quantity)
        ax.set(xscale="log", yscale="log", xlabel="width", title=quantity.split(".", 1)[1])
        ax.legend(fontsize=7)
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, {"fits": fits, "reference_exponent": -0.5}))


if __name__ == "__main__":
    main()
