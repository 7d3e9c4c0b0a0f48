"""Figure: gradient descent at the edge of stability (Cohen et al. 2021, Fig. 1), from +sweep=eos.

    python scripts/fig_eos.py outputs/sweep/eos/results.csv [--width 256] [--seed 0] [--lrs 0.5 1.5 4] [--out docs/eos]

For one width and seed (the smallest width unless --width), one colour per step size: the train
loss (top) and the sharpness λ_max(H) of the loss's Hessian (bottom) against step, with the
stability edge 2/η of each step size dashed in its colour (2(1 + β)/η with momentum β). Each
run's regime (summary.json's ``regime.label``) is in the legend. Runs need ``sharpness`` tracked.
The curves are saved with the figure as STEM.json: {"width", "seed", "curves": [{"run_dir",
"learning_rate", "lr_over_eta_max", "regime", "edge", "step": [...], "train_loss": [...],
"sharpness": [...]}, ...]}, in increasing η.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figure_common import arguments, ended_runs, require, save_numbers, step_size_ratio  # noqa: E402
from ntklab import results  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402


def extra(parser) -> None:
    parser.add_argument("--width", type=int, default=None, help="the width drawn (default: the smallest)")
    parser.add_argument("--seed", type=int, default=None, help="the seed drawn (default: the smallest)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None,
                        help="η/η_max values to draw (default: all in the table for that width and seed)")


def main() -> None:
    args = arguments(__doc__, "eos", extra)
    runs = ended_runs(args.table)
    require(runs, ["learning_rate", "max.sharpness"], "track sharpness (+sweep=eos does)")
    runs["ratio"] = step_size_ratio(runs)
    width = runs["model.width"].min() if args.width is None else args.width
    runs = runs[runs["model.width"] == width]
    seed = runs["seed"].min() if args.seed is None else args.seed
    runs = runs[runs["seed"] == seed].sort_values("learning_rate")
    if args.lrs:
        runs = runs[[any(np.isclose(r, args.lrs, rtol=1e-6)) for r in runs["ratio"]]]
    if runs.empty:
        raise SystemExit(f"no runs of width {width}, seed {seed}" + (f" at η/η_max in {args.lrs}" if args.lrs else ""))
    fig, (ax_loss, ax_sharp) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    colors = plt.cm.plasma(np.linspace(0.0, 0.85, len(runs)))
    curves = []
    for color, (_, run) in zip(colors, runs.iterrows()):
        records = [r for r in results.read_metrics(Path(run["run_dir"]) / results.METRICS)
                   if not r.get("diverged") and "sharpness" in r]
        momentum = float(run.get("optim.momentum", 0.0) or 0.0)
        edge = 2.0 * (1.0 + momentum) / float(run["learning_rate"])
        regime = run.get("regime.label", "")
        curve = {"run_dir": run["run_dir"], "learning_rate": float(run["learning_rate"]),
                 "lr_over_eta_max": float(run["ratio"]), "regime": regime if isinstance(regime, str) else None,
                 "edge": edge, "step": [r["step"] for r in records],
                 "train_loss": [r["train_loss"] for r in records], "sharpness": [r["sharpness"] for r in records]}
        curves.append(curve)
        label = f"η = {curve['lr_over_eta_max']:.3g} η_max" + (f" ({curve['regime']})" if curve["regime"] else "")
        ax_loss.plot(curve["step"], curve["train_loss"], "-", color=color, label=label)
        ax_sharp.plot(curve["step"], curve["sharpness"], "-", color=color)
        ax_sharp.axhline(edge, color=color, linestyle="--", linewidth=1)
    ax_loss.set(yscale="log", ylabel="train loss", title=f"width {width}, seed {seed}: full-batch GD")
    ax_loss.legend(fontsize=7)
    ax_sharp.set(yscale="log", xlabel="step", ylabel="sharpness λ_max(H)  (dashed: 2/η)")
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, {"width": int(width), "seed": int(seed), "curves": curves}))


if __name__ == "__main__":
    main()
