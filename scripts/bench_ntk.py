"""Benchmark the empirical NTK methods and the analytic kernels; prints markdown tables.

    python scripts/bench_ntk.py                 # every table on the default device (cuda if present)
    python scripts/bench_ntk.py --device cpu --widths 256 1024 --n 128

Empirical NTK table: method × width × N for a depth-3 relu MLP (scalar output, x2 = x1), with
  seconds      best of --repeats calls after one warm-up call,
  peak MiB     extra memory of one cold call: on CUDA the allocator's peak; on CPU the rise of
               the process's resident-set high-water mark, each case in a fresh subprocess,
  GFLOP/s      *effective* rate: the structured method's operation count (forward, backward and
               Gram products — the least work that yields the kernel) divided by the time, so
               every method is measured against the same work,
  % matmul     that rate as a fraction of this machine's measured square-matmul rate.
Reference-method cases whose estimated work would exceed --max-work are skipped and marked:
N·P for ``jacobian`` (per-sample Jacobians) and N²·P/128 for ``ntvp`` (N·k NTK-vector products,
each a pass over the batch), calibrated so that 1.2e9 is about 30 s on 2 CPU cores.
Width 4096 with N = 4096 shows the structured method inside its default memory budget
(ntklab.ntk.DEFAULT_MEMORY_BUDGET, 1 GiB of features per chunk, the kernel itself aside).

Analytic kernel table: NNGP + NTK in float64 for depth 3 on N inputs (x2 = x1).

Dynamics table: ``mse_predictor`` on N = 4000 train points (one float64 eigendecomposition),
then outputs on 1000 test points and losses at 100 times from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from ntklab import ArchSpec, analytic_kernels, build_mlp, empirical_ntk
from ntklab.dynamics import max_learning_rate, mse_predictor
from ntklab.results import environment

DEPTH = 3
IN_DIM = 32


def structured_flops(n: int, width: int, depth: int = DEPTH, in_dim: int = IN_DIM) -> float:
    """Multiply-adds ×2 of the structured NTK for x2 = x1, scalar output.

    forward 2N(d·n + (L−1)n² + n), backward 2N(L−1)n², Grams 2N²(d + L·n) for the layer inputs
    plus 2N²·L·n for the δ's.
    """
    forward = 2 * n * (in_dim * width + (depth - 1) * width ** 2 + width)
    backward = 2 * n * (depth - 1) * width ** 2
    grams = 2 * n ** 2 * (in_dim + depth * width) + 2 * n ** 2 * depth * width
    return float(forward + backward + grams)


def matmul_gflops(device: str, dtype: torch.dtype) -> float:
    size = 4096 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = _best_time(lambda: a @ b, device, repeats=5)
    return 2 * size ** 3 / seconds / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _best_time(fn, device: str, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _timed_once(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_case(method: str, width: int, n: int, device: str, dtype: torch.dtype, repeats: int) -> dict:
    """One empirical-NTK case: cold call for memory, then the best of ``repeats`` for time."""
    spec = ArchSpec(depth=DEPTH, width=width, activation="relu", sigma_w=1.4, sigma_b=0.1)
    net = build_mlp(spec, IN_DIM, seed=0, device=device, dtype=dtype)
    x = torch.randn(n, IN_DIM, device=device, dtype=dtype, generator=None)
    call = lambda: empirical_ntk(net, x, method=method)
    # Initialise the libraries' lazy state (thread pools, allocator) on a tiny call first, so the
    # cold call's memory is the method's own.
    empirical_ntk(net, x[:2], method=method)
    start = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    else:
        before = _rss_mib()
        call()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    cold_seconds = time.perf_counter() - start
    # Calls over a second are timed once more (warm) rather than `repeats` times.
    seconds = _best_time(call, device, repeats) if cold_seconds < 1.0 else _timed_once(call, device)
    return {"seconds": seconds, "peak_mib": max(peak, 0.0)}


def empirical_table(args, matmul_rate: float) -> None:
    print(f"\n### Empirical NTK, depth-{DEPTH} relu MLP, {args.dtype}, {args.device}\n")
    print("| method | width | N | seconds | peak MiB | eff. GFLOP/s | % matmul | vs structured |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        n_params = IN_DIM * width + (DEPTH - 1) * width ** 2 + width + DEPTH * width + 1
        for n in args.n:
            reference = None
            for method in args.methods:
                work = {"structured": 0, "jacobian": n * n_params, "ntvp": n * n * n_params / 128}[method]
                if work > args.max_work:
                    print(f"| {method} | {width} | {n} | skipped: est. work {work:.1e} > {args.max_work:.1e} "
                          "| | | | |")
                    continue
                result = _case_in_subprocess(method, width, n, args)
                gflops = structured_flops(n, width) / result["seconds"] / 1e9
                if method == "structured":
                    reference = result["seconds"]
                ratio = "" if reference is None else f"{result['seconds'] / reference:.0f}×"
                print(f"| {method} | {width} | {n} | {result['seconds']:.4f} | {result['peak_mib']:.0f} | "
                      f"{gflops:.1f} | {100 * gflops / matmul_rate:.0f}% | {ratio} |", flush=True)


def _case_in_subprocess(method: str, width: int, n: int, args) -> dict:
    # A fresh process per case, so the CPU high-water mark belongs to this case alone.
    command = [sys.executable, __file__, "--case", method, str(width), str(n), "--device", args.device,
               "--dtype", args.dtype, "--repeats", str(args.repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def analytic_table(args) -> None:
    print("\n### Analytic NNGP + NTK, float64, depth 3, x2 = x1\n")
    print("| activation | N | seconds | path |")
    print("|---|---:|---:|---|")
    for activation, sizes in [("relu", args.analytic_n), ("erf", args.analytic_n), ("tanh", [200])]:
        for n in sizes:
            spec = ArchSpec(depth=3, width=512, activation=activation, sigma_w=1.4, sigma_b=0.1)
            x = torch.randn(n, IN_DIM, dtype=torch.float64, device=args.device)
            repeats = 1 if activation == "tanh" else args.repeats
            seconds = _best_time(lambda: analytic_kernels(spec, x), args.device, repeats)
            path = "closed form" if spec.act.dual is not None else "quadrature (default degree)"
            print(f"| {activation} | {n} | {seconds:.3f} | {path} |", flush=True)


def dynamics_table(args) -> None:
    print("\n### Kernel-regression dynamics, float64, 100 times\n")
    print("| N train | N test | build (eigh) s | outputs at 100 times s | losses at 100 times s |")
    print("|---:|---:|---:|---:|---:|")
    n, n_test = args.dynamics_n, 1000
    spec = ArchSpec(depth=3, width=512, activation="relu", sigma_w=1.4, sigma_b=0.1)
    x = torch.randn(n + n_test, IN_DIM, dtype=torch.float64, device=args.device)
    kernel = analytic_kernels(spec, x).ntk
    k_train, k_test = kernel[:n, :n], kernel[n:, :n]
    y = torch.randn(n, 1, dtype=torch.float64, device=args.device)
    lr = max_learning_rate(k_train, fraction=0.5)
    times = torch.logspace(0, 5, 100, dtype=torch.float64)
    build = _best_time(lambda: mse_predictor(k_train, y, learning_rate=lr), args.device, 1)
    predict = mse_predictor(k_train, y, learning_rate=lr)
    outputs = _best_time(lambda: predict(times, 0.0, 0.0, k_test), args.device, args.repeats)
    losses = _best_time(lambda: predict.losses(times), args.device, args.repeats)
    print(f"| {n} | {n_test} | {build:.3f} | {outputs:.3f} | {losses:.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--n", type=int, nargs="+", default=[128, 1024, 4096])
    parser.add_argument("--methods", nargs="+", default=["structured", "jacobian", "ntvp"])
    parser.add_argument("--analytic-n", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--dynamics-n", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-work", type=float, default=1.2e9,
                        help="skip jacobian/ntvp cases whose estimated work is above this (~30 s on 2 CPU cores)")
    parser.add_argument("--skip-empirical", action="store_true")
    parser.add_argument("--skip-analytic", action="store_true")
    parser.add_argument("--skip-dynamics", action="store_true")
    parser.add_argument("--case", nargs=3, metavar=("METHOD", "WIDTH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.case:
        method, width, n = args.case[0], int(args.case[1]), int(args.case[2])
        print(json.dumps(run_case(method, width, n, args.device, dtype, args.repeats)))
        return
    env = environment(args.device, args.dtype)
    print(f"torch {env['versions']['torch']}, device {env['device']} ({env['device_name']}), "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
    if not args.skip_empirical:
        rate = matmul_gflops(args.device, dtype)
        print(f"measured {args.dtype} matmul rate: {rate:.1f} GFLOP/s")
        empirical_table(args, rate)
    if not args.skip_analytic:
        analytic_table(args)
    if not args.skip_dynamics:
        dynamics_table(args)


if __name__ == "__main__":
    main()
