"""What a training run needs from the machine, estimated from its config before anything is
allocated: the trainer refuses a run its device cannot hold (one line, exit code 2, instead of
dying inside an allocation), and the local launcher runs as many jobs at once as the machine's
cores and memory allow.

The estimate is a lower bound on the largest terms, not a measurement: the parameters held four
times (θ, θ_0 for param_drift, the gradient, the momentum buffer or optimizer state), the
activations of the largest batch through every layer four times (forward values, derivatives,
the structured NTK's per-layer features, autograd's saved tensors), and the float64 kernels on the
train set (analytic Θ and Σ, the empirical Θ̂_0 and its test×train block).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

# input dimension of the real data sets (synthetic ones have data.dim)
_IN_DIMS = {"digits": 64, "mnist": 784, "cifar10": 3072}
PROCESS_BYTES = 400 * 2 ** 20     # a Python process with torch imported, before any tensor (measured ~350 MB)


def run_bytes(cfg, in_dim: Optional[int] = None, out_dim: Optional[int] = None) -> int:
    """Bytes a training run of ``cfg`` needs at least (see the module's docstring); ``in_dim`` and
    ``out_dim`` default to what the data config implies."""
    data, model, track = cfg.data, cfg.model, cfg.track
    in_dim = in_dim or _IN_DIMS.get(data.name, data.dim)
    out_dim = out_dim or (10 if data.targets == "onehot" else 1)
    itemsize = 8 if cfg.dtype == "float64" else 4
    width, depth = int(model.width), int(model.depth)
    widths = [in_dim] + [width] * depth + [out_dim]
    n_params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    n_train, n_test = int(data.n_train), int(data.n_test)
    rows = max(n_train, n_test)
    activations = 4 * rows * width * depth * itemsize
    k = out_dim if n_train * out_dim <= track.full_kernel_limit else 1
    kernels = 8 * (3 * (n_train * k) ** 2 + n_test * n_train)
    return 4 * n_params * itemsize + activations + kernels


def available_bytes(device) -> int:
    """Memory the device can give a run now: a GPU's total memory, or the CPU's MemAvailable
    (/proc/meminfo; the physical memory where that file is missing)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        return os.cpu_count() or 1


def default_parallelism(job_bytes: int, cpus_per_task: Optional[int] = None) -> int:
    """How many jobs of ``job_bytes`` each fit on this machine at once: its cores over each job's
    (``cpus_per_task``, default 1), and its available memory over each job's (plus a process's own)."""
    by_cores = cpu_count() // max(int(cpus_per_task or 1), 1)
    by_memory = available_bytes("cpu") // (job_bytes + PROCESS_BYTES)
    return max(1, min(by_cores, by_memory))


def gigabytes(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GB"
