"""What a training run needs from the machine, estimated from its config before anything is
allocated: the trainer refuses a run its device cannot hold (one line, exit code 2, instead of
dying inside an allocation), and the local launcher runs as many jobs at once as the machine's
cores and memory allow.

The estimate is a lower bound on the largest terms, not a measurement: the parameters held four
times (θ, θ_0 for param_drift, the gradient, the momentum buffer or optimizer state; twice more when
the loss is checked every k > 1 steps, whose window start is kept to recover the step of a divergence), the
outputs of every dense or conv layer on the rows of one pass four times (forward values,
derivatives, the arrays the structured NTK's features are computed from, autograd's saved tensors; a pass covers the
largest of the train and test sets, or one chunk of it: ``optim.chunk_size``, :func:`chunk_rows`), the
structured empirical NTK's kept per-input features (a conv's weight gradient, k·C_out·C_in·k_h·k_w
numbers per input: those of the larger set, or the memory budget empirical_ntk keeps at least
where they do not fit), and the float64 kernels on the train set (analytic Θ and Σ, the empirical
Θ̂_0 and its test×train block). The analytic CNTK's working memory is bounded separately
(``analytic_kernels``' block_elements).

Kernel regression (``python -m ntklab regress``, :func:`regression_bytes`): the kernels on the host
and the float64 solve on its device, checked before the blocks are computed (a warning: they may be
solved on another machine) and refused before the solve.

With the opt-in spectral quantities (:func:`spectral_bytes`): the kernel on the spectrum set and its
eigenvectors (float64), and with ``sharpness`` or ``gauss_newton_share`` the Lanczos basis
((track.lanczos_steps + 1) parameter-sized vectors), its Ritz vectors, the few parameter-sized
vectors a Hessian-vector product holds, and the double-backward graph on the spectrum set.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple

import torch

PROCESS_BYTES = 400 * 2 ** 20     # a Python process with torch imported, before any tensor (measured ~350 MB)


def run_bytes(cfg, in_shape: Optional[Sequence[int]] = None, out_dim: Optional[int] = None) -> int:
    """Bytes a training run of ``cfg`` needs at least (see the module's docstring); ``in_shape`` (one
    input's shape) and ``out_dim`` default to what the data config implies. Raises ConfigError for a
    model config that cannot be built."""
    from ntklab.config import build_arch, wants_images
    from ntklab.data import IMAGE_SHAPES
    from ntklab.layers import bind
    from ntklab.ntk.empirical import DEFAULT_MEMORY_BUDGET

    data, track = cfg.data, cfg.track
    if in_shape is None:
        image = IMAGE_SHAPES.get(data.name)     # synthetic sets are vectors of data.dim
        in_shape = (int(data.dim),) if image is None else image if wants_images(cfg.model) else (math.prod(image),)
    if out_dim is None:
        out_dim = (len(data.classes) if data.get("classes") else 10) if data.targets == "onehot" else 1
    itemsize = 8 if cfg.dtype == "float64" else 4
    arch, _ = build_arch(cfg.model, in_shape, out_dim)
    root = bind(arch, in_shape)
    layers = root.parametrized()
    n_params = sum(node.layer.parameter_count(node) for node in layers)
    features_per_row = sum(math.prod(node.out_shape) for node in layers)
    n_train, n_test = int(data.n_train), int(data.n_test)
    # the passes over the train and test sets run in chunks of rows (chunk_rows): the layer outputs
    # held at once are one chunk's
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    rows = chunk_rows(root, max(n_train, n_test), device, itemsize, cfg.optim.get("chunk_size"))
    activations = 4 * rows * features_per_row * itemsize
    k = out_dim if n_train * out_dim <= track.full_kernel_limit else 1
    kernels = 8 * (3 * (n_train * k) ** 2 + n_test * n_train)
    feature_bytes = itemsize * sum(node.layer.ntk_feature_numel(node, out_dim, k > 1) for node in layers)
    kept_features = min(max(n_train, n_test) * feature_bytes, DEFAULT_MEMORY_BUDGET)
    # a check of the loss every k > 1 steps keeps the parameters and optimizer state of the window's start
    window_copy = 2 * n_params * itemsize if int(cfg.optim.get("divergence_check_every", 1)) > 1 else 0
    return 4 * n_params * itemsize + window_copy + activations + kernels + kept_features + spectral_bytes(
        track, n_params=n_params, features_per_row=features_per_row, n_train=n_train, out_dim=out_dim,
        itemsize=itemsize)


CHUNK_BYTES = 16 * 2 ** 20
"""The automatic ``optim.chunk_size`` on the CPU keeps every layer output of a pass within this many
bytes. Larger tensors come from fresh pages of the operating system each time (glibc maps every
allocation above 32 MiB anew, and the kernel zeroes its pages at first touch), which dominated the
CPU step of wide CNNs: a depth-1, 256-channel CNN on 1000 MNIST images took 4.9 s per full-batch
step and 1.1 s in the automatic chunks of 20 (``scripts/bench_train.py --tables chunks``, README "Speed")."""


def chunk_rows(root, rows: int, device, itemsize: int, chunk_size: Optional[int] = None, members: int = 1) -> int:
    """Rows per forward/backward pass of a training run on ``rows`` rows (``optim.chunk_size``);
    ``root`` is the net's bound layer tree (``Net.root``, or :func:`ntklab.layers.bind` of its
    architecture), ``itemsize`` its dtype's bytes.

    ``chunk_size`` given: that many (at most ``rows``). None: ``rows`` on CUDA, whose caching
    allocator reuses its blocks; on the CPU the most rows whose largest layer output, for all
    ``members`` nets at once, fits :data:`CHUNK_BYTES`. A net whose forward couples the rows of a batch
    (batch_norm) takes them whole: a chunked forward would be another function. Raises ConfigError
    when ``chunk_size`` asks to split such a net's batch."""
    from ntklab.errors import ConfigError

    leaves = list(root.leaves())
    if any(leaf.layer.couples_batch for leaf in leaves):
        if chunk_size is not None and chunk_size < rows:
            raise ConfigError("optim.chunk_size", f"{chunk_size} splits the batch of {rows} rows, but this net's "
                              "batch_norm normalises over the whole batch; leave it null")
        return rows
    if chunk_size is not None:
        return min(int(chunk_size), rows)
    if torch.device(device).type != "cpu":
        return rows
    return rows_within_chunk_bytes(rows, max(math.prod(leaf.out_shape) for leaf in leaves) * itemsize * members)


def rows_within_chunk_bytes(rows: int, bytes_per_row: int) -> int:
    """The most of ``rows`` rows (at least 1) whose largest array, ``bytes_per_row`` a row, fits
    :data:`CHUNK_BYTES`: the CPU's chunking rule, for the training step's passes and the empirical NTK's features."""
    return max(1, min(rows, CHUNK_BYTES // bytes_per_row))


HVP_VECTORS = 4
"""Parameter-sized vectors a Hessian-vector product holds besides the Lanczos basis: the gradient
tree, the tangent, the product and the vector being orthogonalised."""


def spectral_bytes(track, *, n_params: int, features_per_row: int, n_train: int, out_dim: int, itemsize: int) -> int:
    """Bytes the opt-in spectral quantities of ``track`` (``ntklab.quantities.SPECTRAL``) add, 0 when
    none is tracked (ntklab.train.tracking.SpectrumTracker):

    * any of them: Θ̂ on the spectrum set of S points (``track.spectrum_points`` or all) and its
      eigenvectors, float64, (Sk)² each for the full kernel (k > 1 outputs, Sk ≤
      ``track.full_kernel_limit``), else S²;
    * ``sharpness`` or ``gauss_newton_share`` (which runs the same Lanczos): the Lanczos basis,
      min(lanczos_steps, P) + 1 vectors of the P parameters in the run's dtype, ``top_eigenvalues``
      Ritz vectors, :data:`HVP_VECTORS` more, and the double-backward graph of a Hessian-vector
      product on the S points (counted as the layer outputs four times more, like the training
      step's)."""
    from ntklab.quantities import SPECTRAL

    quantities = set(track.quantities) & set(SPECTRAL)
    if not quantities:
        return 0
    spectrum_points = getattr(track, "spectrum_points", None)
    points = n_train if spectrum_points is None else min(int(spectrum_points), n_train)
    side = points * out_dim if out_dim > 1 and points * out_dim <= track.full_kernel_limit else points
    total = 2 * 8 * side ** 2
    if quantities & {"sharpness", "gauss_newton_share"}:
        basis = min(int(track.lanczos_steps), n_params) + 1
        vectors = basis + min(int(track.top_eigenvalues), n_params) + HVP_VECTORS
        total += vectors * n_params * itemsize + 4 * points * features_per_row * itemsize
    return total


SOLVE_ARRAYS = {"eigh": 5, "cholesky": 1}
"""n × n float64 arrays a kernel regression solve (``ntklab.commands.regress.solve``) holds at its peak
beside the train kernel it solves with, by solver: measured as the growth of the peak resident
memory over the solve of one kernel on the CPU at n = 3000 (eigh 5.15: LAPACK's divide and conquer
copies K into the eigenvectors' array and works in 2n² more, the predictor keeps a ridged copy;
Cholesky 1.08: the factor)."""


def regression_bytes(n_train: int, n_test: int, itemsize: int, solver: str, on_gpu: bool) -> Tuple[int, int]:
    """(host bytes, GPU bytes) the solve of ``python -m ntklab regress`` needs at least, beyond the
    process itself: the NNGP and NTK [K(X, X); K(X*, X)], 2(N² + MN) numbers of the dtype they were
    computed in (``itemsize`` bytes), held by the host; then one kernel at a time widened to float64 on
    the solving device, (N² + MN)·8 bytes (no copy for float64 kernels on the CPU), beside the solver's
    ``SOLVE_ARRAYS[solver]``·N²·8. GPU bytes are 0 when the solve runs on the CPU."""
    kernels = 2 * (n_train + n_test) * n_train * itemsize
    widened = 0 if itemsize == 8 and not on_gpu else (n_train + n_test) * n_train * 8
    # eigh's prediction K(X*, X)·V is one more M × N float64 array
    solving = widened + SOLVE_ARRAYS[solver] * n_train * n_train * 8 + (n_test * n_train * 8 if solver == "eigh" else 0)
    return (kernels, solving) if on_gpu else (kernels + solving, 0)


def available_bytes(device) -> int:
    """Memory the device can give a run now: a GPU's free memory (what torch's caching allocator holds
    counts as used: empty its cache first), or the CPU's MemAvailable (/proc/meminfo; the physical
    memory where that file is missing), or less where this process's cgroup allows less
    (:func:`cgroup_available_bytes`: a SLURM job's allocation, a container's limit)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    allowed = cgroup_available_bytes()
    return have if allowed is None else min(have, allowed)


# A cgroup v1 memory controller writes its "no limit" as a page-rounded 2**63 - 1.
_NO_CGROUP_LIMIT = 2 ** 62


def cgroup_available_bytes(cgroup_root: str = "/sys/fs/cgroup",
                           proc_cgroup: str = "/proc/self/cgroup") -> Optional[int]:
    """What this process's memory cgroup still allows, or None where no cgroup sets a limit.

    available = min over the cgroup and its ancestors that set one of (limit − working set), with
    working set = usage − inactive file cache (the page cache the kernel reclaims before the limit
    kills anything, as container runtimes count it). cgroup v2: the smaller of memory.max and
    memory.high (above memory.high the kernel throttles the cgroup and reclaims its memory hard:
    systemd's MemoryHigh=, a container's soft limit), memory.current and memory.stat's
    inactive_file under ``cgroup_root``; v1: memory.limit_in_bytes,
    memory.usage_in_bytes and total_inactive_file under ``cgroup_root``/memory. A cgroup's path comes
    from ``proc_cgroup``; inside a container whose mount shows its own cgroup at the root, the path's
    parents are tried up to the mount's root, so the container's limit is still found."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, files = cgroup_root, (("memory.max", "memory.high"), "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = os.path.join(cgroup_root, "memory"), (
                ("memory.limit_in_bytes",), "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), -1, -1):
            allowed = _cgroup_dir_available(os.path.join(base, *parts[:depth]), *files)
            if allowed is not None:
                found.append(allowed)
    return min(found) if found else None


def _cgroup_dir_available(directory: str, limit_files: Tuple[str, ...], usage_file: str,
                          inactive_key: str) -> Optional[int]:
    """limit − (usage − inactive file cache) of one cgroup directory, limit the smallest that
    ``limit_files`` set (those missing or "max" set none), or None without a limit."""
    try:
        with open(os.path.join(directory, usage_file)) as f:
            usage = int(f.read().strip())
    except (OSError, ValueError):
        return None
    limits = []
    for limit_file in limit_files:
        try:
            with open(os.path.join(directory, limit_file)) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < _NO_CGROUP_LIMIT:
            limits.append(int(limit))
    if not limits:
        return None
    inactive = 0
    try:
        with open(os.path.join(directory, "memory.stat")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
                    break
    except (OSError, ValueError):
        pass
    return max(min(limits) - max(usage - inactive, 0), 0)


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
