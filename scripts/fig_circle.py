"""Figure (e): the circle figure of Jacot et al. (2018): Θ̂(x_0, x(γ)) for γ ∈ [0, 2π).

    python scripts/fig_circle.py outputs/sweep/circle/results.csv [--out docs/circle]

Runs of the circle data set (``+sweep=circle``) store in kernels.pt the row of the empirical NTK
between the first test point x_0 = (1, 0) and the equally spaced test angles γ, at
initialisation and after training, and the limit Θ. One colour per width, thin lines per seed:
dashed at init, solid after training; black: the infinite-width limit. As width grows the curves
gather around the limit and move less in training. The curves are saved with the figure as
STEM.json: {"gamma": [...], "limit": [...], "curves": [{"width", "seed", "run_dir", "init": [...],
"final": [...]}, ...]}.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from figure_common import arguments, finished_runs, save_numbers  # noqa: E402
from ntklab import results  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402


def main() -> None:
    args = arguments(__doc__, "circle")
    runs = finished_runs(args.table)
    runs = runs[runs["data.name"] == "circle"].sort_values(["model.width", "seed"])
    if runs.empty:
        raise SystemExit(f"no finished circle runs in {args.table} (run: python -m ntklab train -m +sweep=circle)")
    widths = sorted(runs["model.width"].unique())
    fig, ax = plt.subplots(figsize=(7, 4))
    limit, curves = None, []
    for i, width in enumerate(widths):
        for j, (_, run) in enumerate(runs[runs["model.width"] == width].iterrows()):
            path = Path(run["run_dir"]) / results.KERNELS
            if not path.exists():
                print(f"skipped {run['run_dir']}: no kernels.pt (track.save_kernels was false)")
                continue
            kernels = torch.load(path)
            row_init, row_final = kernels["ntk_test_row_empirical_init"], kernels["ntk_test_row_empirical_final"]
            gamma = 2 * math.pi * torch.arange(row_init.numel(), dtype=torch.float64) / row_init.numel()
            label = dict(label=f"width {width}") if j == 0 else {}
            ax.plot(gamma, row_init, "--", color=f"C{i}", linewidth=0.8)
            ax.plot(gamma, row_final, "-", color=f"C{i}", linewidth=0.8, **label)
            curves.append({"width": int(width), "seed": int(run["seed"]), "run_dir": run["run_dir"],
                           "init": row_init.tolist(), "final": row_final.tolist()})
            limit = kernels["ntk_test_row_analytic"] if limit is None else limit
    if limit is not None:
        ax.plot(gamma, limit, "k-", linewidth=2, label="limit Θ")
    ax.set(xlabel="γ", ylabel="Θ(x₀, x(γ))", xlim=(0, 2 * math.pi),
           title="NTK on the circle: init (dashed), after training (solid)")
    ax.legend(fontsize=8)
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, {"gamma": None if limit is None else gamma.tolist(),
                                  "limit": None if limit is None else limit.tolist(), "curves": curves}))


if __name__ == "__main__":
    main()
