"""Figure (c): training curves of networks of several widths against the analytic NTK prediction.

    python scripts/fig_training_curves.py outputs/sweep/width/results.csv [--out docs/training_curves] [--seed 0]

For one seed and one parametrization (ntk unless the table has only another), one colour per
width: the network's train and test loss (solid) and the kernel-regression prediction of the
analytic NTK from the same initial outputs (dashed), read from each run's metrics.jsonl. The
curves drawn are saved with the figure as STEM.json: {"parametrization", "seed", "curves": [{"width",
"run_dir", "step": [...], "train_loss": [...], "test_loss": [...], "pred_train_loss_analytic": [...],
"pred_test_loss_analytic": [...]}, ...]} (the predictions only where the run has them).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from figure_common import arguments, finished_runs, one_seed, save_numbers  # noqa: E402
from ntklab import results  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402


def main() -> None:
    args = arguments(__doc__, "training_curves", lambda p: p.add_argument("--seed", type=int, default=None))
    runs = one_seed(finished_runs(args.table), args.seed)
    parametrization = runs["model.parametrization"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = plt.cm.viridis([i / max(len(runs) - 1, 1) for i in range(len(runs))])
    curves = []
    for color, (_, run) in zip(colors, runs.iterrows()):
        records = [r for r in results.read_metrics(Path(run["run_dir"]) / results.METRICS) if r["step"] >= 1]
        steps = [r["step"] for r in records]
        curve = {"width": int(run["model.width"]), "run_dir": run["run_dir"], "step": steps}
        for ax, split in zip(axes, ("train", "test")):
            curve[f"{split}_loss"] = [r[f"{split}_loss"] for r in records]
            ax.plot(steps, curve[f"{split}_loss"], "-", color=color, label=f"width {run['model.width']}")
            if f"pred_{split}_loss_analytic" in records[-1]:     # absent when no analytic kernel was computed
                curve[f"pred_{split}_loss_analytic"] = [r[f"pred_{split}_loss_analytic"] for r in records]
                ax.plot(steps, curve[f"pred_{split}_loss_analytic"], "--", color=color, linewidth=1)
        curves.append(curve)
    for ax, split in zip(axes, ("train", "test")):
        ax.set(xscale="log", yscale="log", xlabel="step", title=f"{split} loss: network (solid), NTK prediction (dashed)")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{parametrization} parametrization, seed {runs['seed'].iloc[0]}", fontsize=9)
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, {"parametrization": parametrization, "seed": int(runs["seed"].iloc[0]),
                                  "curves": curves}))


if __name__ == "__main__":
    main()
