"""Figure: Arora et al. (2019)'s comparison — kernel regression with the CNTK against a trained CNN.

    python scripts/fig_cntk.py outputs/sweep/cntk/results.csv [--trained outputs/sweep/cnn_width/results.csv]
                               [--out docs/cntk]

Left panel (the ``regress`` sweep, ``+sweep=cntk``): test accuracy against the number of train
images for each method — CNTK-GAP and CNTK-V (the NTK with a global-average-pool or flatten
readout) and their NNGPs — one line per method, the mean over whatever else the table varies.
With ``--trained`` (the ``train`` sweep, ``+sweep=cnn_width``), two more panels against channels:
the trained CNN's final test accuracy (every seed a point, the mean a line; the kernels' panel
holds the CNTK's at t = ∞ to compare by eye), and its distance to the CNTK's prediction at the same step (final pred_gap_analytic) with
its fitted power law. The numbers go to STEM.json: {"kernel": {method: {n_train: accuracy}},
"trained": {"accuracy": {width: mean}, "pred_gap_fit": {...}}}.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from figure_common import arguments, finished_runs, fit_numbers, require, save_numbers  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402
from ntklab.scaling import fit_with_bootstrap  # noqa: E402

METHODS = {("gap", "ntk"): "CNTK-GAP", ("flatten", "ntk"): "CNTK-V",
           ("gap", "nngp"): "NNGP-GAP", ("flatten", "nngp"): "NNGP-V"}


def kernel_accuracies(runs) -> dict:
    """{method: {n_train: mean test accuracy}} of a regress table."""
    require(runs, ["model.readout", "data.n_train", "kernels.ntk.test_accuracy"], "a table of `regress` runs")
    curves = {}
    for (readout, kind), method in METHODS.items():
        rows = runs[runs["model.readout"] == readout]
        if rows.empty:
            continue
        mean = rows.groupby("data.n_train")[f"kernels.{kind}.test_accuracy"].mean()
        curves[method] = {int(n): float(a) for n, a in mean.items()}
    return curves


def main() -> None:
    args = arguments(__doc__, "cntk", extra=lambda p: p.add_argument("--trained", default=None,
                                                                       help="results table of +sweep=cnn_width"))
    curves = kernel_accuracies(finished_runs(args.table))
    panels = 3 if args.trained else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.8), squeeze=False)
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
        require(trained, ["model.width", "final.test_accuracy", "final.pred_gap_analytic"], "a +sweep=cnn_width table")
        mean = trained.groupby("model.width")["final.test_accuracy"].mean()
        axes[1].plot(trained["model.width"], trained["final.test_accuracy"], "o", alpha=0.5, markersize=4)
        axes[1].plot(mean.index, mean.values, "-", label="trained CNN (mean over seeds)")
        axes[1].set(xscale="log", xlabel="channels", ylabel="test accuracy", title="trained by gradient descent")
        axes[1].legend(fontsize=8)
        fit = fit_with_bootstrap(trained, "model.width", "final.pred_gap_analytic")
        axes[2].plot(trained["model.width"], trained["final.pred_gap_analytic"], "o", alpha=0.5, markersize=4)
        widths = sorted(trained["model.width"].unique())
        axes[2].plot(widths, fit(widths), "-", label=fit.label())
        axes[2].set(xscale="log", yscale="log", xlabel="channels", ylabel="RMS gap to CNTK prediction",
                    title="trained CNN vs its CNTK")
        axes[2].legend(fontsize=8)
        numbers["trained"] = {"accuracy": {int(w): float(a) for w, a in mean.items()},
                              "pred_gap_fit": fit_numbers(fit)}
        print(f"trained CNN: accuracy by channels {numbers['trained']['accuracy']}; pred_gap ∝ channels^"
              f"{fit.exponent:.3f} [{fit.low:.3f}, {fit.high:.3f}]")
    fig.tight_layout()
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, numbers))


if __name__ == "__main__":
    main()
