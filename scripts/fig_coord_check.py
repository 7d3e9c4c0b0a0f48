"""Figure: the coordinate check of the maximal-update parametrization (Yang et al. 2021, microsoft/mup).

    python scripts/fig_coord_check.py [--out docs/coord_check] [--widths 64 128 ... 4096] [--steps 3]
                                      [--parametrizations ntk standard mup] [--seeds 3]

Depth-2 relu nets (σ_w² = 2) on 64 points of the default task's data (sphere S⁹, erf teacher) take
``--steps`` full-batch gradient steps at one step size for every width, η = ½ η_max of the analytic
NTK of the width-64 net of each parametrization (width-independent for ntk and mup, whose limits
exist; for standard its NTK grows with the width, so the widest nets of that row are past their own
η_max: the blow-up the check is meant to show). For each layer's pre-activations z^1, z^2 and the
output f, averaged over ``--seeds`` initialisations, against width (log-log), one panel row per
parametrization:

  left   the coordinate size RMS(z) at init
  right  the coordinate size of the change RMS(z_t − z_0) after each step t

Under mup every curve is flat (activations and their updates are O(1) per coordinate at every
width); under ntk the hidden layers' updates fall like width^(−1/2) (no feature learning in the
limit). The numbers are saved as STEM.json: {"widths", "steps", "seeds", "layers": ["z1", "z2", "f"],
"parametrizations": {p: {"learning_rate", "size": {layer: [per width]}, "change": {layer: [[per
width] per step]}, "change_exponent": {layer: fitted exponent of the last step's change against width}}}}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from figure_common import save_numbers  # noqa: E402
from ntklab import ArchSpec, analytic_kernels, build_mlp  # noqa: E402
from ntklab.data import load_dataset  # noqa: E402
from ntklab.dynamics import max_learning_rate, mse_loss  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402
from ntklab.scaling import fit_power_law  # noqa: E402

LAYERS = ("z1", "z2", "f")


def spec(parametrization: str, width: int) -> ArchSpec:
    return ArchSpec(depth=2, width=width, activation="relu", sigma_w=2 ** 0.5, parametrization=parametrization)


def coordinates(net, x) -> list:
    """z^1, z^2 and f on x, each (N, ·)."""
    return [*net.hidden(x)[1], net(x)]


def check(parametrization: str, widths, steps: int, seeds: int, x, y) -> dict:
    """RMS sizes at init and of the change after each step, per layer and width, mean over seeds."""
    learning_rate = max_learning_rate(analytic_kernels(spec(parametrization, widths[0]), x).ntk, fraction=0.5)
    size = np.zeros((len(LAYERS), len(widths)))
    change = np.zeros((steps, len(LAYERS), len(widths)))
    for j, width in enumerate(widths):
        for seed in range(seeds):
            net = build_mlp(spec(parametrization, width), in_dim=x.shape[1], seed=seed, dtype=torch.float64)
            params = list(net.parameters())
            with torch.no_grad():
                start = coordinates(net, x)
            size[:, j] += [z.pow(2).mean().sqrt().item() / seeds for z in start]
            for t in range(steps):
                grads = torch.autograd.grad(mse_loss(net(x), y), params)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.sub_(learning_rate * g)
                    now = coordinates(net, x)
                change[t, :, j] += [(z - z0).pow(2).mean().sqrt().item() / seeds for z, z0 in zip(now, start)]
    return {"learning_rate": learning_rate,
            "size": {name: size[i].tolist() for i, name in enumerate(LAYERS)},
            "change": {name: change[:, i].tolist() for i, name in enumerate(LAYERS)},
            "change_exponent": {name: fit_power_law(widths, change[-1, i]).exponent for i, name in enumerate(LAYERS)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/figures/coord_check"), help="output path without suffix")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parametrizations", nargs="+", default=["ntk", "standard", "mup"])
    args = parser.parse_args()
    data = load_dataset("sphere", n_train=64, n_test=1, dim=10)
    x, y = data.x_train.double(), data.y_train.double()
    numbers = {"widths": args.widths, "steps": args.steps, "seeds": args.seeds, "layers": list(LAYERS),
               "parametrizations": {}}
    fig, axes = plt.subplots(len(args.parametrizations), 2, figsize=(10, 3.2 * len(args.parametrizations)),
                             squeeze=False)
    for row, parametrization in zip(axes, args.parametrizations):
        result = check(parametrization, args.widths, args.steps, args.seeds, x, y)
        numbers["parametrizations"][parametrization] = result
        for i, name in enumerate(LAYERS):
            row[0].plot(args.widths, result["size"][name], "o-", color=f"C{i}", label=name)
            for t in range(args.steps):
                row[1].plot(args.widths, result["change"][name][t], "o-", color=f"C{i}", alpha=0.4 + 0.6 * (t + 1) / args.steps,
                            label=f"{name} (slope {result['change_exponent'][name]:+.2f})" if t == args.steps - 1 else None)
        row[0].set(xscale="log", yscale="log", ylabel=f"{parametrization}\nRMS per coordinate",
                   title="size at init" if row is axes[0] else None)
        row[1].set(xscale="log", yscale="log", title=f"change after steps 1…{args.steps}" if row is axes[0] else None)
        row[0].legend(fontsize=7)
        row[1].legend(fontsize=7)
        print(f"{parametrization}: change exponents {result['change_exponent']}")
    for ax in axes[-1]:
        ax.set_xlabel("width")
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, numbers))


if __name__ == "__main__":
    main()
