"""Figure (d): the trained networks' test outputs against the NTK kernel-regression outputs.

    python scripts/fig_outputs.py outputs/sweep/width/results.csv [--out docs/outputs] [--seed 0] [--widths 64 1024 8192]

One panel per width (one seed, ntk parametrization where present): every test output f_T(x*) of
the network against the analytic NTK's prediction for the same step and initial outputs (from
predictions.pt), with the diagonal and the RMS gap. The points close in on the diagonal as width grows.
The panels' numbers are saved with the figure as STEM.json: {"panels": [{"width", "parametrization",
"seed", "run_dir", "rms_gap", "n_points"}, ...]}.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from figure_common import arguments, finished_runs, one_seed, save_numbers  # noqa: E402
from ntklab import results  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402


def main() -> None:
    def extra(parser):
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--widths", type=int, nargs="*", default=None, help="default: up to 4, spread over the sweep")
    args = arguments(__doc__, "outputs", extra)
    runs = one_seed(finished_runs(args.table), args.seed)
    if args.widths:
        runs = runs[runs["model.width"].isin(args.widths)]
    elif len(runs) > 4:
        runs = runs.iloc[[round(i * (len(runs) - 1) / 3) for i in range(4)]]
    saved_runs = []
    for _, run in runs.iterrows():
        saved = torch.load(Path(run["run_dir"]) / results.PREDICTIONS)
        if saved["f_pred_analytic"] is None:
            print(f"skipped {run['run_dir']}: no analytic prediction (use optim.lr_unit=eta_max or track pred_gap_analytic)")
        else:
            saved_runs.append((run, saved))
    if not saved_runs:
        raise SystemExit("no run in the table has an analytic prediction")
    fig, axes = plt.subplots(1, len(saved_runs), figsize=(3.3 * len(saved_runs), 3.4), squeeze=False)
    panels = []
    for ax, (run, saved) in zip(axes[0], saved_runs):
        network, predicted = saved["f_final"].flatten(), saved["f_pred_analytic"].flatten()
        ax.plot(predicted, network, ".", markersize=3, alpha=0.6)
        low, high = float(min(network.min(), predicted.min())), float(max(network.max(), predicted.max()))
        ax.plot([low, high], [low, high], "k-", linewidth=0.8)
        gap = (network - predicted).pow(2).mean().sqrt().item()
        panels.append({"width": int(run["model.width"]), "parametrization": run["model.parametrization"],
                       "seed": int(run["seed"]), "run_dir": run["run_dir"], "rms_gap": gap, "n_points": network.numel()})
        ax.set(title=f"{run['model.parametrization']}, width {run['model.width']}: RMS gap {gap:.3g}",
               xlabel="NTK prediction f(x*)")
    axes[0][0].set_ylabel("network f_T(x*)")
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, {"panels": panels}))


if __name__ == "__main__":
    main()
