"""Figure: Arora et al. (2019)'s comparison — kernel regression with the CNTK against a trained CNN.

    python scripts/fig_cntk.py outputs/sweep/cntk/results.csv [--trained outputs/sweep/cnn_width/results.csv]
                               [--out docs/cntk]

Left panel (the ``regress`` sweep, ``+sweep=cntk``): test accuracy against the number of train
images for each method — CNTK-GAP and CNTK-V (the NTK with a global-average-pool or flatten
readout) and their NNGPs — one line per method, the mean over test draws (data.seed, data.n_test),
seeds and dtype; a table of several depths gets one line per method and depth ("CNTK-V, depth 1"),
and a table whose runs differ in anything else (the data set, the ridge, σ_w, ...) is refused, naming it.
With ``--trained`` (``train`` runs: ``+sweep=cnn_width``, or runs at several ``data.n_train``), two
more panels against channels, one colour per train-set size n: the trained CNN's final test
accuracy (every seed a point, the mean a line) with, dashed, its own CNTK's accuracy at t = ∞ (the
kernel table's rows of the same data set, n, n_test and model, where it has them), and its
distance to the CNTK's prediction at the same step (final pred_gap_analytic) with its fitted power
law per n (where two channel counts have a finite value); trained runs that differ in a setting
besides channels, seed and n are refused. Each table may hold runs of the other kind (one collect of
both sweeps): the kernel rows are those with a kernel accuracy, the trained rows those with a final
test accuracy. The numbers go to STEM.json: {"kernel": {method: {n_train: accuracy}}, "trained":
{n_train: {"accuracy": {width: mean}, "cntk_accuracy": accuracy or null, "pred_gap_fit": {...} or
null}}}.
"""

from typing import Optional

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from figure_common import (arguments, finished_runs, fit_numbers, require, require_one_setting,  # noqa: E402
                           save_numbers, setting_columns, setting_text)
from ntklab.plots import save_figure  # noqa: E402
from ntklab.scaling import can_fit, fit_with_bootstrap  # noqa: E402

METHODS = {("gap", "ntk"): "CNTK-GAP", ("flatten", "ntk"): "CNTK-V",
           ("gap", "nngp"): "NNGP-GAP", ("flatten", "nngp"): "NNGP-V"}


# What a kernel line averages over (test draws, seeds, the arithmetic; the width and α, which the
# limit does not have) and what it plots against or splits by; the trained nets' lines likewise.
# Runs differing in anything else are refused.
KERNEL_FREE = ("model.readout", "model.depth", "data.n_train", "data.n_test", "data.seed", "seed", "dtype",
               "model.width", "model.alpha")
TRAINED_FREE = ("model.width", "seed", "data.n_train")
# the config groups regress shares with train, and the settings in them its kernels have no use for
KERNEL_GROUPS = ("model.", "data.")
NOT_KERNEL_SETTINGS = ("model.width", "model.alpha", "data.seed")


def kernel_accuracies(runs) -> dict:
    """{method: {n_train: mean test accuracy}} of a regress table (methods named with their depth
    when the table holds several)."""
    require(runs, ["model.readout", "data.n_train", "kernels.ntk.test_accuracy"], "a table of `regress` runs")
    require_one_setting(runs, KERNEL_FREE, "a kernel accuracy line")
    depths = sorted(runs["model.depth"].unique()) if "model.depth" in runs else [None]
    curves = {}
    for depth in depths:
        at_depth = runs if depth is None else runs[runs["model.depth"] == depth]
        for (readout, kind), method in METHODS.items():
            rows = at_depth[at_depth["model.readout"] == readout]
            if rows.empty:
                continue
            mean = rows.groupby("data.n_train")[f"kernels.{kind}.test_accuracy"].mean()
            name = method if len(depths) == 1 else f"{method}, depth {depth}"
            curves[name] = {int(n): float(a) for n, a in mean.items()}
    return curves


def own_cntk_accuracy(kernels, trained_rows) -> Optional[float]:
    """The CNTK's test accuracy at t = ∞ for the trained nets ``trained_rows`` (one n): the kernel
    table's mean over its rows with the same value of every setting both tables record (data set,
    n_train, n_test, depth, readout, σ_w, ...; not channels, α, seeds or dtype); None without one."""
    match = kernels
    for column in setting_columns(trained_rows):
        if not column.startswith(KERNEL_GROUPS) or column in NOT_KERNEL_SETTINGS or column not in kernels:
            continue
        values = setting_text(trained_rows[column]).unique()
        if len(values) != 1:
            return None
        match = match[setting_text(match[column]) == values[0]]
    return None if match.empty else float(match["kernels.ntk.test_accuracy"].mean())


def main() -> None:
    trained_help = "results table of `train` runs (+sweep=cnn_width, or at several n)"
    args = arguments(__doc__, "cntk", extra=lambda p: p.add_argument("--trained", default=None, help=trained_help))
    kernels = finished_runs(args.table)
    if "kernels.ntk.test_accuracy" in kernels:       # a table of both sweeps: its regress rows
        kernels = kernels[kernels["kernels.ntk.test_accuracy"].notna()]
    curves = kernel_accuracies(kernels)
    panels = 3 if args.trained else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.8 if panels == 1 else 4.8), squeeze=False)
    axes = axes[0]
    sizes = sorted({n for c in curves.values() for n in c})
    print("| method | " + " | ".join(f"n = {n}" for n in sizes) + " |")
    for method, curve in curves.items():
        axes[0].plot(list(curve), list(curve.values()), "o-", label=method)
        print(f"| {method} | " + " | ".join(f"{curve[n]:.4f}" if n in curve else "–" for n in sizes) + " |")
    axes[0].set(xscale="log", xlabel="train images", ylabel="test accuracy", title="kernel regression (t = ∞)")
    axes[0].legend(fontsize=8)
    numbers = {"kernel": curves}
    if args.trained:
        trained = finished_runs(args.trained)
        require(trained, ["model.width", "final.test_accuracy", "final.pred_gap_analytic"], "a table of `train` runs")
        trained = trained[trained["final.test_accuracy"].notna()]
        require_one_setting(trained, TRAINED_FREE, "a trained-CNN line")
        sizes = sorted(trained["data.n_train"].unique()) if "data.n_train" in trained else [None]
        numbers["trained"] = {}
        for colour, n in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], sizes):
            runs = trained if n is None else trained[trained["data.n_train"] == n]
            label = "trained CNN" if n is None else f"n = {n}"
            mean = runs.groupby("model.width")["final.test_accuracy"].mean()
            axes[1].plot(runs["model.width"], runs["final.test_accuracy"], "o", color=colour, alpha=0.5, markersize=4)
            # a size trained at one channel count only has no line to draw: its mean is a marker
            axes[1].plot(mean.index, mean.values, "-" if len(mean) > 1 else "D", color=colour,
                         label=f"{label} (mean over seeds)")
            cntk = own_cntk_accuracy(kernels, runs)
            if cntk is not None:
                axes[1].axhline(cntk, color=colour, linestyle="--", linewidth=1, label=f"its CNTK at t = ∞, {label}")
            axes[2].plot(runs["model.width"], runs["final.pred_gap_analytic"], "o", color=colour, alpha=0.5, markersize=4)
            fit = None
            if can_fit(runs, "model.width", "final.pred_gap_analytic"):
                fit = fit_with_bootstrap(runs, "model.width", "final.pred_gap_analytic")
                widths = sorted(runs["model.width"].unique())
                axes[2].plot(widths, fit(widths), "-", color=colour, label=f"{label}: {fit.label()}")
            numbers["trained"][str(n)] = {"accuracy": {int(w): float(a) for w, a in mean.items()},
                                          "cntk_accuracy": cntk, "pred_gap_fit": None if fit is None else fit_numbers(fit)}
            if fit is None:
                gap = "no fit (fewer than two channel counts with a finite pred_gap_analytic)"
            else:
                interval = "" if np.isnan(fit.low) else f" [{fit.low:.3f}, {fit.high:.3f}]"
                gap = f"pred_gap ∝ channels^{fit.exponent:.3f}{interval}"
            print(f"trained CNN, {label}: accuracy by channels {numbers['trained'][str(n)]['accuracy']} (its CNTK at "
                  f"t = ∞: {cntk}); {gap}")
        axes[1].set(xscale="log", xlabel="channels", ylabel="test accuracy", title="trained by gradient descent")
        # below the panels: with several n the entries would cover the lines
        axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        axes[2].set(xscale="log", yscale="log", xlabel="channels", ylabel="RMS gap to CNTK prediction",
                    title="trained CNN vs its CNTK")
        axes[2].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
    fig.tight_layout()
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, numbers))


if __name__ == "__main__":
    main()
