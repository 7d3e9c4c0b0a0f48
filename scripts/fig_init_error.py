"""Figure (b): relative error of the empirical NTK at initialisation, ‖Θ̂_0 − Θ‖_F/‖Θ‖_F, against width.

    python scripts/fig_init_error.py outputs/sweep/width/results.csv [--out docs/init_error]

Reads ``initial.kernel_to_limit`` (the probe-set error at step 0) of every finished run; one
colour per parametrization, the fitted power law with its bootstrap interval over seeds, and the
width^(-1/2) of the central limit theorem. The fits are saved with the figure as STEM.json:
{"fits": {"initial.kernel_to_limit": {parametrization: {exponent, prefactor, low, high, n_points,
n_groups}}}, "reference_exponent": -0.5}.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from figure_common import (arguments, finished_runs, fit_numbers, plot_half_power_reference,  # noqa: E402
                           plot_width_fits, require, save_numbers)
from ntklab.plots import save_figure  # noqa: E402

QUANTITY = "initial.kernel_to_limit"


def main() -> None:
    args = arguments(__doc__, "init_error")
    runs = finished_runs(args.table)
    require(runs, [QUANTITY], "track kernel_to_limit (it needs the analytic kernel)")
    fig, ax = plt.subplots(figsize=(5, 4))
    fits = {}
    for parametrization, fit in plot_width_fits(ax, runs, QUANTITY):
        print(f"{parametrization}: exponent {fit.exponent:.3f} [{fit.low:.3f}, {fit.high:.3f}] over {fit.n_points} runs")
        fits[parametrization] = fit_numbers(fit)
    plot_half_power_reference(ax, runs, QUANTITY)
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="‖Θ̂₀ − Θ‖ / ‖Θ‖ (probe set)",
           title="empirical NTK at initialisation")
    ax.legend(fontsize=8)
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, {"fits": {QUANTITY: fits}, "reference_exponent": -0.5}))


if __name__ == "__main__":
    main()
