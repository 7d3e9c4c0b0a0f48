"""Benchmark training runs: seconds per gradient step and the share of time spent tracking.

    python scripts/bench_train.py                          # widths 1024 and 4096 on the default device
    python scripts/bench_train.py --device cpu --widths 1024 --steps 200

Each case is a real run of the default config (`python -m ntklab train`: depth-2 relu net,
sphere data with N = 256 train and 256 test points, full-batch GD, the default log schedule of
40 log-spaced steps, a 64-point probe set, every tracked quantity) at the given width and number
of steps, run in-process into a temporary directory. The columns come from its summary.json:

  s/step         time of the gradient steps alone, per step (forward, backward, update, loss check)
  tracking s     all measurements at the log steps (outputs, probe-set NTK, drift, predictions)
  tracking %     tracking / (steps + tracking): the cost of tracking within the training loop
  setup s        once per run: analytic kernels, Θ̂_0 on train and test, two eigendecompositions
  with setup %   (tracking + setup) / wall time
  wall s         the whole run, including checkpoints, kernels.pt and plots
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from hydra import compose, initialize_config_module

from ntklab.config import register_configs
from ntklab.results import environment
from ntklab.train import run


def bench(width: int, steps: int, device: str, dtype: str) -> dict:
    register_configs()
    with initialize_config_module(config_module="ntklab.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"width={width}", f"optim.steps={steps}", f"device={device}",
                                          f"dtype={dtype}", "track.progress=false"])
    with tempfile.TemporaryDirectory() as run_dir:
        summary = run(cfg, run_dir)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    env = environment(args.device, args.dtype)
    print(f"device: {env['device']} ({env['device_name']}), torch {env['versions']['torch']}, {env['dtype']}, "
          f"{args.steps} steps, default log schedule\n")
    print("| width | parameters | s/step | tracking s | tracking % | setup s | with setup % | wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        summary = bench(width, args.steps, args.device, args.dtype)
        t = summary["timing"]
        print(f"| {width} | {summary['n_params']:,} | {t['per_step_s']:.4f} | {t['tracking_s']:.2f} | "
              f"{100 * t['tracking_fraction']:.1f} | {t['setup_s']:.2f} | {100 * t['tracking_fraction_with_setup']:.1f} | "
              f"{t['wall_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
