"""Benchmark the opt-in spectral quantities: what each costs per log step, in gradient steps, and the
share of the training loop that tracking takes with them.

    python scripts/bench_spectra.py                              # width 1024, the default device
    python scripts/bench_spectra.py --device cpu --widths 1024 --threads 1 --rounds 7

The setting is the default config's (`python -m ntklab train`: depth-2 relu net, sphere data with
N = 256 train points, full-batch GD at η_max/2, 1000 steps, 40 log-spaced log steps). Two parts:

1. Interleaved timing (robust on a shared machine: every round times each piece once, and the
   medians over rounds are compared), at θ_0: one gradient step; the default tracker's measurement;
   and the spectral tracker's with ``ntk_top_eigenvalues``, then also ``sharpness``, then also
   ``gauss_newton_share``. Each cost is given in gradient steps, and the tracking share of the
   training loop, tracking / (steps + tracking), is projected for the default schedule.
2. A real run with all three quantities: its measured tracking share and the Lanczos steps
   (Hessian-vector products) per measurement over the run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from ntklab.config import build_arch, register_configs
from ntklab.dynamics import mse_loss
from ntklab.nets import build_mlp
from ntklab.quantities import DEFAULT, SPECTRAL
from ntklab.results import environment, read_metrics
from ntklab.train import log_schedule, run
from ntklab.train.trainer import load_data
from ntklab.train.tracking import NetworkOutputs, SpectrumTracker, Tracker, reference_kernels

COMBINATIONS = (("ntk_top_eigenvalues",), ("ntk_top_eigenvalues", "sharpness"), SPECTRAL)


def config(width: int, device: str, dtype: str, quantities) -> object:
    register_configs()
    with initialize_config_module(config_module="ntklab.configs", version_base="1.3"):
        return compose("train", overrides=[f"width={width}", f"device={device}", f"dtype={dtype}",
                                           "track.progress=false", "track.plots=false", "track.save_kernels=false",
                                           f"track.quantities=[{','.join(quantities)}]"])


def interleaved(width: int, device: str, dtype: str, rounds: int) -> dict:
    """Median seconds of a gradient step, the default measurement and each spectral combination."""
    cfg = config(width, device, dtype, DEFAULT)
    data = load_data(cfg.data).to(torch.device(device), getattr(torch, dtype))
    _, spec = build_arch(cfg.model, data.x_train.shape[1:], data.out_dim)
    model = build_mlp(spec, in_dim=data.in_dim, seed=0, device=torch.device(device), dtype=getattr(torch, dtype))
    outputs = NetworkOutputs(model, data)
    reference = reference_kernels(model, data, analytic=True, empirical=True, probe_size=cfg.track.probe_size,
                                  full_kernel_limit=cfg.track.full_kernel_limit, outputs=outputs)
    lr = 0.5 * reference.eta_max("eta_max")
    tracker = Tracker(model, data, reference, lr, [0], DEFAULT, outputs)
    spectra = {names: SpectrumTracker(data, outputs, lr, names, top=cfg.track.top_eigenvalues,
                                      lanczos_steps=cfg.track.lanczos_steps) for names in COMBINATIONS}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)       # lr 0: θ stays at θ_0 for every round

    def step():
        loss = mse_loss(model(data.x_train), data.y_train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    pieces = {"step": step, "default": lambda: tracker.measure(model, 0),
              **{names: (lambda s=s: s.measure(model)) for names, s in spectra.items()}}
    times = {name: [] for name in pieces}
    for _ in range(rounds + 1):         # the first round warms up and is dropped
        for name, piece in pieces.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            piece()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--widths", type=int, nargs="+", default=[1024])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-run", action="store_true", help="skip part 2 (the real run)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(args.device, args.dtype)
    n_logs = len(log_schedule(args.steps, 40))
    print(f"device: {env['device']} ({env['device_name']}), torch {env['versions']['torch']}, {env['dtype']}, "
          f"{torch.get_num_threads()} CPU threads; {args.steps} steps, {n_logs} log steps\n")
    print("| width | tracked | s per log step | in gradient steps | projected tracking % |")
    print("|---:|---|---:|---:|---:|")
    for width in args.widths:
        medians = interleaved(width, args.device, args.dtype, args.rounds)
        step = medians["step"]
        for label, names in (("default", None),) + tuple(("default + " + ", ".join(c), c) for c in COMBINATIONS):
            seconds = medians["default"] + (medians[names] if names else 0.0)
            share = n_logs * seconds / (args.steps * step + n_logs * seconds)
            print(f"| {width} | {label} | {seconds:.4f} | {seconds / step:.1f} | {100 * share:.1f} |", flush=True)
        print(f"\none gradient step: {step:.4f} s\n")
        if args.no_run:
            continue
        cfg = config(width, args.device, args.dtype, DEFAULT + SPECTRAL)
        with tempfile.TemporaryDirectory() as run_dir:
            summary = run(cfg, run_dir)
            lanczos = [r["lanczos_steps"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")]
        t = summary["timing"]
        print(f"a real run with all three (width {width}): {t['per_step_s']:.4f} s/step, tracking {t['tracking_s']:.2f} s "
              f"= {100 * t['tracking_fraction']:.1f}% of the loop; Lanczos steps per measurement: mean "
              f"{statistics.mean(lanczos):.2f}, max {max(lanczos)}\n", flush=True)


if __name__ == "__main__":
    main()
