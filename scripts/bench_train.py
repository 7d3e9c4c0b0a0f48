"""Benchmark training runs: seconds per gradient step, the share of time spent tracking, the step
loop alone (GPU), and seeds at once against one seed after another.

    python scripts/bench_train.py                          # every table on the default device
    python scripts/bench_train.py --device cpu --widths 1024 --steps 200
    python scripts/bench_train.py --tables seeds --device cpu    # only the seeds-at-once table
    python scripts/bench_train.py --tables step --peak-tflops 67 # step table; the fp32 peak when it cannot be read

Run table (``run``): each case is a real run of the default config (`python -m ntklab train`:
depth-2 relu net, sphere data with N = 256 train and 256 test points, full-batch GD, the default
log schedule of 40 log-spaced steps, a 64-point probe set, every tracked quantity) at the given
width and number of steps, run in-process into a temporary directory. The columns come from its
summary.json:

  s/step         time of the gradient steps alone, per step (forward, backward, update, loss check)
  tracking s     all measurements at the log steps (outputs, probe-set NTK, drift, predictions)
  tracking %     tracking / (steps + tracking): the cost of tracking within the training loop
  setup s        once per run: analytic kernels, Θ̂_0 on train and test, two eigendecompositions
  with setup %   (tracking + setup) / wall time
  wall s         the whole run, including checkpoints, kernels.pt and plots

Step table (``step``, meant for a GPU): the trainer's step loop as it runs, from real runs of the
default task (track=minimal measured at step 0 and the last step only, no checkpoints), with the
loss read back to the host every step (k = 1, what the trainer did before
optim.divergence_check_every) and every 16 steps (k = 16, the default; includes the copy of θ kept
at each window's start), eager and then compiled (``compile=MODE`` for each of --compile:
"reduce-overhead" replays the compiled step as CUDA graphs). Cases: width 1024 on N = 256 for
--step-steps steps (target ≤ 0.5 ms/step on an H100/H200) and width 8192 on N = 4096 for a fifth of
them (target ≥ 50% of the fp32 matmul peak). Columns:

  ms/step        the steps' wall time after the first (the summary's timing.steps_s less
                 first_step_s, over steps − 1; the device synchronised around the log steps only)
  first step s   the first step alone: warm-up, and with compile the compilation
  TFLOP/s        the step's matrix-product work, Σ over layers of 2·N·fan_in·fan_out for the forward
                 product, the weight gradient and (but the first layer) the input gradient, per second
  % fp32 peak    that rate over the device's fp32 (non-tensor-core) peak: SMs × FP32 lanes per SM ×
                 2 × clock, from torch.cuda.get_device_properties when it gives the clock, else
                 --peak-tflops (torch's default for fp32 matmuls, TF32 off, runs on those lanes)

Seeds table (``seeds``): ``seeds=M`` (M nets trained at once, one run directory each) against the
same M seeds run one after another in this process, on the default config at --seeds-width
(default 256), --seeds (default 8) seeds and --steps steps: wall time of each, and the throughput
ratio sequential / at once (the issue's target: ≥ 1.5 on 2 CPU cores, 8 seeds at width 256 in ≤ 2×
one seed's time on a GPU). The machine's load average is printed with it: other processes slow both.

Chunks table (``chunks``, meant for the CPU): a wide CNN's step in chunks of rows
(``optim.chunk_size``): real runs of a depth-1 CNN (3x3 relu conv of --chunk-width channels,
flatten readout, f − f_0) on --chunk-n train and as many test images of --chunk-data (digits, or
mnist / fashion_mnist with --chunk-root), --chunk-steps steps at a fixed lr (no analytic kernels to
set up), tracking param_drift and kernel_change at steps 0 and last, with chunk_size the whole batch,
null (automatic) and each of --chunk-sizes. Columns: chunk_size, the rows per pass it gives, the
largest layer output of one pass (MiB), s/step, tracking s (the outputs on train and test images at the two
log steps, chunked the same way, and the probe-set NTK), setup s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from ntklab.config import COMPILE_MODES, register_configs
from ntklab.results import environment
from ntklab.train import run

# FP32 lanes per SM by compute capability (CUDA programming guide, "arithmetic instructions")
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128,
              (10, 0): 128, (12, 0): 128}


def compose_train(overrides) -> object:
    register_configs()
    with initialize_config_module(config_module="ntklab.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def bench(width: int, steps: int, device: str, dtype: str, extra=()) -> dict:
    cfg = compose_train([f"width={width}", f"optim.steps={steps}", f"device={device}", f"dtype={dtype}",
                         "track.progress=false", *extra])
    with tempfile.TemporaryDirectory() as run_dir:
        summary = run(cfg, run_dir)
    return summary


def run_table(args) -> None:
    print(f"\nRuns: {args.steps} steps, default log schedule\n")
    print("| width | parameters | s/step | tracking s | tracking % | setup s | with setup % | wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        summary = bench(width, args.steps, args.device, args.dtype)
        t = summary["timing"]
        print(f"| {width} | {summary['n_params']:,} | {t['per_step_s']:.4f} | {t['tracking_s']:.2f} | "
              f"{100 * t['tracking_fraction']:.1f} | {t['setup_s']:.2f} | {100 * t['tracking_fraction_with_setup']:.1f} | "
              f"{t['wall_s']:.1f} |", flush=True)


# ----------------------------------------------------------------------------- the step loop alone

def fp32_peak_tflops(device: torch.device, given) -> tuple:
    """(peak TFLOP/s, where it came from): --peak-tflops, or SMs × FP32 lanes × 2 × clock."""
    if given:
        return float(given), "--peak-tflops"
    if device.type != "cuda":
        return None, "not known on CPU (give --peak-tflops)"
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "clock_rate", None)
    lanes = FP32_LANES.get((props.major, props.minor))
    if not clock_khz or lanes is None:
        return None, "not readable from torch (give --peak-tflops)"
    return props.multi_processor_count * lanes * 2 * clock_khz * 1e3 / 1e12, \
        f"{props.multi_processor_count} SMs × {lanes} lanes × 2 × {clock_khz / 1e6:.2f} GHz"


def step_flops(model, n: int) -> float:
    """Matrix-product FLOPs of one full-batch step of an MLP on n points: per layer 2·n·a·b for the
    forward product and the weight gradient, and for the input gradient of every layer but the first."""
    total = 0.0
    for i, layer in enumerate(model.parametrized_modules()):
        b, a = layer.weight.shape
        total += 2 * n * a * b * (2 if i == 0 else 3)
    return total


def step_case(width: int, n: int, args, every: int, steps: int, compile_mode: str) -> dict:
    """A real run of the default task at this width on n train points, tracking at steps 0 and the
    last only (track=minimal, no checkpoints), with the loss read every ``every`` steps and the step
    compiled in ``compile_mode`` ("none": eager): its seconds per step after the first (the trainer's
    step loop as it runs), the first step's seconds (warm-up, and the compilation) and the net's
    step FLOPs."""
    extra = [f"data.n_train={n}", "data.n_test=16", "track=minimal", "track.log_steps=1", "track.checkpoint_every=0",
             f"optim.divergence_check_every={every}"]
    if compile_mode != "none":
        extra.append(f"compile={compile_mode}")
    summary = bench(width, steps, args.device, args.dtype, extra)
    from ntklab import ArchSpec, build_mlp

    spec = ArchSpec(depth=2, width=width, activation="relu", out_dim=summary["out_dim"])
    flops = step_flops(build_mlp(spec, in_dim=summary["in_dim"], device="meta"), n)
    timing = summary["timing"]
    return {"seconds": (timing["steps_s"] - timing["first_step_s"]) / (steps - 1), "first": timing["first_step_s"],
            "flops": flops}


def step_table(args) -> None:
    device = torch.device(args.device)
    peak, source = fp32_peak_tflops(device, args.peak_tflops)
    print(f"\nStep loop of real runs (fp32 peak: "
          f"{'%.1f TFLOP/s' % peak if peak else '-'}, {source}); TF32 for matmuls: "
          f"{torch.backends.cuda.matmul.allow_tf32}\n")
    print("| width | N | steps | k (steps per loss read) | compile | ms/step | first step s | TFLOP/s | % fp32 peak |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    # eager with the loss read every step (the trainer before divergence_check_every) and every 16
    # (the default), then each compile mode at k = 16
    cases = [(1, "none"), (16, "none")] + [(16, mode) for mode in args.compile if mode != "none"]
    for width, n, steps in ((1024, 256, args.step_steps), (8192, 4096, max(args.step_steps // 5, 20))):
        if device.type == "cpu" and width > 2048 and not args.large_on_cpu:
            print(f"| {width} | {n} | - | - | - | skipped on CPU (--large-on-cpu) | | | |")
            continue
        for every, mode in cases:
            case = step_case(width, n, args, every, steps, mode)
            rate = case["flops"] / case["seconds"] / 1e12
            print(f"| {width} | {n} | {steps} | {every} | {mode} | {1e3 * case['seconds']:.3f} | {case['first']:.2f} | "
                  f"{rate:.3f} | {'%.0f' % (100 * rate / peak) if peak else '-'} |", flush=True)


# ----------------------------------------------------------------------------- chunked steps

def chunks_table(args) -> None:
    from ntklab.data import IMAGE_SHAPES
    from ntklab.layers import build_net
    from ntklab.nets import cnn_layers
    from ntklab.resources import chunk_rows

    n, width = args.chunk_n, args.chunk_width
    data = [f"data={args.chunk_data}", f"data.n_train={n}", f"data.n_test={n}"]
    if args.chunk_root:
        data.append(f"data.root={args.chunk_root}")
    common = ["model=cnn", "depth=1", "model.readout=flatten", "model.alpha=1", "data.targets=onehot",
              "data.center_targets=true", "optim.lr_unit=absolute", "optim.lr=1.0", "track=minimal",
              "track.log_steps=1", "track.checkpoint_every=0", *data]
    channels, height, width_px = IMAGE_SHAPES[args.chunk_data]
    itemsize = getattr(torch, args.dtype).itemsize
    per_row = width * height * width_px * itemsize       # the conv's output for one image, the largest
    # the rows per pass each case's run takes, by the trainer's own rule, from the net's shapes alone
    root = build_net(cnn_layers(1, width, 10, readout="flatten"), (channels, height, width_px), device="meta").root
    load = os.getloadavg()
    print(f"\nChunked steps: depth-1 CNN, {width} channels, {args.chunk_data} ({channels}x{height}x{width_px}), "
          f"{n} train images, {args.chunk_steps} steps (load average before: {load[0]:.2f}; torch threads "
          f"{torch.get_num_threads()})\n")
    print("| chunk_size | rows per pass | largest output per pass MiB | s/step | tracking s | setup s |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in [str(n), "null", *(str(c) for c in args.chunk_sizes)]:
        summary = bench(width, args.chunk_steps, args.device, args.dtype, common + [f"optim.chunk_size={size}"])
        rows = chunk_rows(root, n, args.device, itemsize, None if size == "null" else int(size))
        t = summary["timing"]
        print(f"| {size} | {rows} | {rows * per_row / 2 ** 20:.1f} | {t['per_step_s']:.3f} | {t['tracking_s']:.2f} | "
              f"{t['setup_s']:.1f} |", flush=True)


# ----------------------------------------------------------------------------- seeds at once

def seeds_table(args) -> None:
    width, count = args.seeds_width, args.seeds
    load = os.getloadavg()
    print(f"\nSeeds at once: {count} seeds at width {width}, default config, {args.steps} steps "
          f"(load average before: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; "
          f"torch threads {torch.get_num_threads()})\n")
    common = [f"width={width}", f"optim.steps={args.steps}", f"device={args.device}", f"dtype={args.dtype}",
              "track.progress=false"]
    with tempfile.TemporaryDirectory() as root:      # warm-up: imports and first calls, paid by neither case
        run(compose_train(common + ["optim.steps=5", "track.plots=false", "seeds=2"]), root)
    print("| case | plots | wall s | steps s | tracking s | setup s | throughput vs sequential |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for plots in args.seeds_plots:
        extra = [f"track.plots={plots}"]
        timings = {"setup_s": 0.0, "steps_s": 0.0, "tracking_s": 0.0}
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            for seed in range(count):
                summary = run(compose_train(common + extra + [f"seed={seed}"]), Path(root) / f"seed_{seed}")
                for key in timings:
                    timings[key] += summary["timing"][key]
            sequential = time.perf_counter() - start
        print(f"| {count} runs one after another | {plots} | {sequential:.1f} | {timings['steps_s']:.1f} | "
              f"{timings['tracking_s']:.1f} | {timings['setup_s']:.1f} | 1.00 |", flush=True)
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            run(compose_train(common + extra + [f"seeds={count}"]), root)
            at_once = time.perf_counter() - start
            import json
            timing = json.loads((Path(root) / "seed_0" / "summary.json").read_text())["timing"]   # the group's
        print(f"| seeds={count} | {plots} | {at_once:.1f} | {timing['steps_s']:.1f} | {timing['tracking_s']:.1f} | "
              f"{timing['setup_s']:.1f} | {sequential / at_once:.2f} |", flush=True)
    load = os.getloadavg()
    print(f"\n(load average after: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tables", nargs="+", default=["run", "step", "seeds"],
                        choices=["run", "step", "seeds", "chunks"])
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--step-steps", type=int, default=500, help="steps of the width-1024 step case (a fifth at 8192)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's fp32 peak, when not readable")
    parser.add_argument("--large-on-cpu", action="store_true", help="run the width-8192 N=4096 step case on CPU too")
    parser.add_argument("--compile", nargs="+", default=None, choices=("none",) + COMPILE_MODES,
                        help="torch.compile modes of the step table (default: reduce-overhead on CUDA, "
                             "default on CPU)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seeds-width", type=int, default=256)
    parser.add_argument("--seeds-plots", nargs="+", default=["false", "true"], choices=["false", "true"],
                        help="track.plots of the seeds table's cases (figures cost the same per seed either way)")
    parser.add_argument("--chunk-data", default="digits", choices=["digits", "mnist", "fashion_mnist"])
    parser.add_argument("--chunk-root", default=None, help="data.root of --chunk-data (mnist, fashion_mnist)")
    parser.add_argument("--chunk-n", type=int, default=1000, help="train (and test) images of the chunks table")
    parser.add_argument("--chunk-width", type=int, default=256)
    parser.add_argument("--chunk-steps", type=int, default=20)
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[64, 8])
    args = parser.parse_args()
    if args.compile is None:
        args.compile = ["reduce-overhead"] if args.device.startswith("cuda") else ["default"]
    env = environment(args.device, args.dtype)
    print(f"device: {env['device']} ({env['device_name']}), torch {env['versions']['torch']}, {env['dtype']}")
    tables = {"run": run_table, "step": step_table, "seeds": seeds_table, "chunks": chunks_table}
    for name in args.tables:
        tables[name](args)


if __name__ == "__main__":
    main()
