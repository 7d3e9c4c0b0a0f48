"""Infinite-width NNGP Σ and NTK Θ of any composition of :mod:`ntklab.layers`, in float64.

The recursion lives in the layers: each layer's ``rule`` maps the (NNGP, NTK) of its input to
those of its output (see :mod:`ntklab.layers.dense`, ``.elementwise``, ``.pooling``,
``.combinators`` and docs/design.md). This module starts it and runs it in blocks:

    input kernel   x·x'/n_0 (vectors) or Σ_c x_{c,s} x'_{c,s'}/C over positions (images), NTK 0
    then every layer's rule: first on the self pairs (x_i, x_i) of all inputs, recording the variances
    (their spatial diagonal) each activation and layer norm reads, then on the pairs (x1_i, x2_j)
    block by block, reading those variances back (:class:`~ntklab.layers.core.Replay`).

An :class:`~ntklab.spec.ArchSpec` lowers to ``serial(dense, activation, ..., dense)``
(:func:`ntklab.nets.mlp_layers`); for it this is the recursion of Jacot et al. (2018) / Lee et
al. (2019, eq. 7), Θ^l = Σ^l + σ_w² E[φ'φ'] Θ^{l-1} under "ntk", and the same operations in the
same order as before the layers existed, so its numbers did not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from ntklab.kernels.quadrature import DEFAULT_QUADRATURE_DEGREE
from ntklab.layers.combinators import check_limit
from ntklab.layers.core import (KernelOptions, KernelState, Layer, Node, Part, Replay, bind, spatial_diagonal,
                                variance_prefix)
from ntklab.spec import ArchSpec
from ntklab.tensor_checks import check_inputs, check_kernel_scale

KERNEL_METHODS = ("auto", "closed_form", "quadrature")

# analytic_kernels' working memory in numbers of its dtype, per kernel entry of a block (its docstring)
WORKING_ARRAYS = 14
CPU_BLOCK_ELEMENTS = 2 ** 20
GPU_BLOCK_ELEMENTS = 2 ** 26


@dataclass(frozen=True)
class Kernels:
    """A pair of kernels on the same inputs.

    nngp: Σ, float64, shape (N1, N2), or (N1,) when only the diagonal was asked for.
    ntk:  Θ, same shape and dtype.
    """

    nngp: Tensor
    ntk: Tensor


def analytic_kernels(arch: Union[Layer, ArchSpec], x1, x2=None, *, diagonal: bool = False, method: str = "auto",
                     quadrature_degree: int = DEFAULT_QUADRATURE_DEGREE, block_elements: int = CPU_BLOCK_ELEMENTS,
                     device=None, dtype: torch.dtype = torch.float64) -> Kernels:
    """NNGP and NTK of ``arch`` between the inputs x1 and x2 (x2=None means x1).

    Args:
        arch: an :mod:`ntklab.layers` composition, or an :class:`~ntklab.spec.ArchSpec` (an MLP).
        x1: (N1, d) vectors or (N1, C, H, W) images; x2: the same with N2 rows.
        diagonal: return only k(x1_i, x1_i), shapes (N1,) (x2 must be None).
        method: "closed_form" (error if an activation has none), "quadrature", or "auto"
            (closed form where there is one).
        quadrature_degree: see :func:`ntklab.kernels.quadrature.quadrature_dual`.
        block_elements: pairs are processed in blocks of about this many kernel entries, counting
            the spatial entries of each pair (H·W, or (H·W)² while pooling lies ahead), so the
            working memory stays near 14 · block_elements numbers of ``dtype`` for any N (≈ 120 MB in
            float64 by default): the block's arrays and the rules' temporaries. The default suits a
            CPU; :func:`default_block_elements` gives a GPU's, which ``python -m ntklab regress`` uses
            (it holds the device alone; a training run's kernels share it with the net and with
            other runs, so they keep the small default). Beside it, a first pass over the self pairs
            (x, x) keeps the variances every activation and layer norm reads: (N1 + N2) · H·W numbers
            per such layer (N · #layers for vectors).
        device: where to compute (default: x1's device).
        dtype: of the arithmetic. float64 (the default, and what every other part of ntklab uses) keeps
            ~1e-15 relative accuracy; float32 is for speed comparisons (neural-tangents computes in
            float32 by default) and loses ~1e-7 per layer, more where arccos meets ρ ≈ 1.

    Returns:
        :class:`Kernels` in ``dtype`` (float64 by default); per output (outputs are independent in the limit).
    """
    if method not in KERNEL_METHODS:
        raise ValueError(f"method must be one of {', '.join(KERNEL_METHODS)}, got {method!r}")
    if diagonal and x2 is not None:
        raise ValueError("diagonal=True computes k(x, x) on x1 only; pass x2=None")
    if isinstance(arch, ArchSpec):
        from ntklab.nets.mlp import mlp_layers

        arch = mlp_layers(arch)
    elif not isinstance(arch, Layer):
        raise ValueError(f"arch must be an ntklab.layers composition or an ntklab.ArchSpec, got {type(arch).__name__}")
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
    x1, x2 = check_inputs(x1, x2, dtype=dtype, device=device)
    _check_block_elements(block_elements)
    settle_cpu_threads(x1.device)
    root = bind(arch, x1.shape[1:])
    problem = _limit_problem(root)
    if problem is not None:
        raise ValueError(problem)
    options = KernelOptions(method, quadrature_degree)
    _check_duals(root, options)

    # First pass: the self pairs (x, x) of every input, recording the variances every layer reads.
    # Their kernels are results only for diagonal=True and x2=None (the diagonal, below); otherwise
    # the pass stops after the last layer that reads variances, which for a net that pools only at
    # its end (a global average pool) never carries a full (H·W)² covariance.
    symmetric = x2 is None
    prefix = None if diagonal or symmetric or not root.full_in else variance_prefix(root)
    self_root = root if prefix is None else prefix
    diag1, recorded1 = _self_pairs(self_root, x1, options, block_elements)
    check_kernel_scale(diag1.ntk.movedim(-1, 0), "x1", x1)       # NaN from inf − inf otherwise
    if diagonal:
        return diag1
    diag2, recorded2 = (diag1, recorded1) if symmetric else _self_pairs(self_root, x2, options, block_elements)
    if not symmetric:
        check_kernel_scale(diag2.ntk.movedim(-1, 0), "x2", x2)
    x2 = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2.shape[0]
    nngp = torch.empty(n1, n2, dtype=dtype, device=x1.device)
    ntk = torch.empty_like(nngp)
    # As many columns as fit, then rows: the columns are the arrays' fastest axis (pairs last), and a
    # row's variances broadcast along them, so long rows keep every elementwise loop long. A
    # symmetric kernel then wastes nothing on the lower triangle where a block is a single row.
    pairs = max(1, block_elements // _entries_per_pair(root))
    cols_per_block = min(n2, pairs)
    rows_per_block = max(1, pairs // cols_per_block)
    for row_start in range(0, n1, rows_per_block):
        rows = slice(row_start, min(row_start + rows_per_block, n1))
        # A symmetric kernel needs only the blocks on and right of the diagonal.
        for col_start in range(row_start if symmetric else 0, n2, cols_per_block):
            cols = slice(col_start, min(col_start + cols_per_block, n2))
            state = input_state(x1[rows], x2[cols], root.full_in, options, self_pairs=False)
            state.replay = Replay(recorded1, recorded2, rows, cols)
            state = root.layer.kernel(root, state)
            nngp[rows, cols], ntk[rows, cols] = state.block.nngp, state.block.ntk
        if symmetric:
            for kernel in (nngp, ntk):
                _mirror_block(kernel, rows.start, rows.stop)
    if symmetric:
        # Diagonal entries have ρ = 1 exactly, but the blocks' x·x rounds differently from the self
        # pairs' and arccos amplifies a 1e-16 error in ρ near 1 to 1e-8 (relu, abs). The self pairs
        # compute ρ = 1 exactly: the same recursion, without that error.
        nngp.diagonal().copy_(diag1.nngp)
        ntk.diagonal().copy_(diag1.ntk)
    return Kernels(nngp, ntk)


def limit_problem(arch: Union[Layer, ArchSpec], in_shape) -> Optional[str]:
    """Why :func:`analytic_kernels` cannot compute ``arch``'s kernels on inputs of shape ``in_shape``
    (a layer without an infinite-width rule, a composition whose rules are not the limit, a net that
    does not end with vectors), or None when it can. Raises ValueError when ``arch`` does not fit
    ``in_shape`` at all."""
    if isinstance(arch, ArchSpec):
        return None
    return _limit_problem(bind(arch, in_shape))


def pixel_kernels(arch: Layer, x, *, method: str = "auto", quadrature_degree: int = DEFAULT_QUADRATURE_DEGREE,
                  block_elements: int = CPU_BLOCK_ELEMENTS) -> Kernels:
    """The NNGP and NTK of each output pixel with itself, Σ(x, x)(t, t) and Θ(x, x)(t, t), of a net that
    ends with images: a generator (``serial(dense(C·h·w), unflatten(C, h, w), conv_transpose(...), ...)`` on
    latent vectors) or a conv stack on images. x: (N, d) or (N, C, H, W); returns Kernels of shape
    (N, H_out, W_out), float64.

    A transposed convolution whose filter is not a multiple of its stride reaches different output
    pixels with different numbers of filter offsets, so this variance map is periodic (a checkerboard)
    even at infinite width.
    """
    if method not in KERNEL_METHODS:
        raise ValueError(f"method must be one of {', '.join(KERNEL_METHODS)}, got {method!r}")
    x, _ = check_inputs(x, dtype=torch.float64)
    _check_block_elements(block_elements)
    settle_cpu_threads(x.device)
    root = bind(arch, x.shape[1:])
    if len(root.out_shape) != 3:
        raise ValueError(f"pixel_kernels needs a net that ends with images (C, H, W), this one ends with shape "
                         f"{root.out_shape}; use analytic_kernels for nets that end with vectors")
    problem = _limit_problem(root, images_out=True)
    if problem is not None:
        raise ValueError(problem)
    options = KernelOptions(method, quadrature_degree)
    _check_duals(root, options)
    kernels, _ = _self_pairs(root, x, options, block_elements)
    # the last layers may have dropped the covariances between positions: (H, W, N) or (H, W, H, W, N)
    as_pixels = lambda k: (spatial_diagonal(k) if k.dim() == 5 else k).movedim(-1, 0)
    return Kernels(as_pixels(kernels.nngp).contiguous(), as_pixels(kernels.ntk).contiguous())


def default_block_elements(device, dtype: torch.dtype = torch.float64) -> int:
    """The ``block_elements`` for :func:`analytic_kernels` on ``device`` when a process has it to itself
    (``python -m ntklab regress``, the benchmarks).

    CPU: 2^20. The fastest blocks there are those whose arrays stay in the cache: a 28×28 image pair
    of a global-average-pool CNTK (614,656 entries) took 17–18 ms in blocks of 1–6 pairs and 29–40
    ms in blocks of 27–109 (float32, one thread of a 2-core Intel Xeon).
    GPU: 2^26 entries, or as many as 14 arrays of ``dtype`` fit in a quarter of the device's memory
    if that is fewer. An elementwise pass over 2^20 float32 entries moves 8 MB, about 2.5 µs at an
    H100's 3.35 TB/s, less than the few µs it takes to launch; a 28×28 GAP pair alone is such a pass,
    so CPU-sized blocks would leave a GPU idle between launches (about 60 per pair). 2^26 makes each
    pass long enough to be bound by memory bandwidth (an estimate: no GPU has measured it yet). The
    choice depends only on the device's total memory, not on what is free at the moment, so a run
    resumed on the same kind of GPU groups its pairs the same way and computes the same numbers to
    the last bit.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BLOCK_ELEMENTS
    total = torch.cuda.get_device_properties(device).total_memory
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(CPU_BLOCK_ELEMENTS, min(GPU_BLOCK_ELEMENTS, total // 4 // (WORKING_ARRAYS * itemsize)))


_SETTLED_THREADS = 0


def settle_cpu_threads(device) -> None:
    """Run one throwaway elementwise square root on every CPU thread torch uses, once per process and
    thread count, before any kernel arithmetic.

    In about one process in twenty (torch 2.13.0's MKL build, 2 threads, a 2-core Intel Xeon), the first
    multi-threaded call of an elementwise function such as sqrt computes the worker thread's share less
    accurately (relative errors up to 3e-11 where later calls give 1 ulp), as if that thread's math
    library state were set up while in use. The relu dual turns such differences into 1e-8 of a kernel
    entry where ρ ≈ 1, so without this a resumed ``regress`` could differ from an uninterrupted one in
    the eighth digit. Measured here: a first multi-threaded sqrt differed from the process's later ones
    in 2 of 40 processes, and in 0 of 40 after this; tests/test_regress.py's killed-and-resumed run
    differed from the uninterrupted one in 2 of 10 runs, and in 0 of 20 after this.
    """
    global _SETTLED_THREADS
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or _SETTLED_THREADS == threads:
        return
    # at least two of torch's 32,768-element parallel grains per thread, so that every thread gets one
    torch.full((2 * 32_768 * threads,), 0.25, dtype=torch.float64).sqrt_()
    torch.full((2 * 32_768 * threads,), 0.25, dtype=torch.float32).sqrt_()
    _SETTLED_THREADS = threads


def _check_block_elements(block_elements) -> None:
    if isinstance(block_elements, bool) or not isinstance(block_elements, int) or block_elements < 1:
        raise ValueError(f"block_elements must be an integer >= 1, got {block_elements!r}")


def _limit_problem(root: Node, images_out: bool = False) -> Optional[str]:
    if len(root.out_shape) != 1 and not images_out:
        return (f"the net ends with shape {root.out_shape}; kernels are defined for nets that end with "
                "vectors (flatten() or global_avg_pool(), then dense)")
    for node in root.leaves():
        if not node.layer.has_analytic_rule:
            return (f"{node.describe()} has no infinite-width rule; analytic kernels cannot be computed for a net "
                    "that contains it (its empirical kernels can)")
    try:
        check_limit(root)
    except ValueError as err:
        return str(err)
    return None


def _self_pairs(root: Node, x: Tensor, options: KernelOptions, block_elements: int):
    """(Kernels of the pairs (x_i, x_i) at the end of ``root``: (N,) for a whole net, (…, N) for a
    :func:`~ntklab.layers.core.variance_prefix`; the variances each layer read: a list of (…, N) arrays)."""
    outputs, chunks = [], []
    rows_per_block = max(1, block_elements // _entries_per_pair(root))
    for start in range(0, x.shape[0], rows_per_block):
        state = input_state(x[start: start + rows_per_block], None, root.full_in, options)
        state.recorder = []
        state = root.layer.kernel(root, state)
        outputs.append(state.diag1)
        chunks.append(state.recorder)
    joined = lambda arrays: torch.cat(arrays, dim=-1) if len(arrays) > 1 else arrays[0]
    recorded = [joined(parts) for parts in zip(*chunks)]
    return Kernels(joined([part.nngp for part in outputs]), joined([part.ntk for part in outputs])), recorded


def input_state(x1: Tensor, x2: Optional[Tensor], full: bool, options: KernelOptions,
                self_pairs: bool = True) -> KernelState:
    """The input kernel of the pairs (x1_i, x2_j) and of the self pairs (module docstring); NTK 0.

    x2=None gives only the self pairs of x1; ``self_pairs=False`` only the block (its variances
    then come from a :class:`~ntklab.layers.core.Replay`). Images give contiguous (H, W, H, W, b1, b2)
    or (H, W, b1, b2) arrays, the pairs last (see :mod:`ntklab.layers.core`).
    """
    if x1.dim() == 2:
        d = x1.shape[1]
        block = None if x2 is None else (x1 @ x2.T) / d
        diag1 = (x1 * x1).sum(dim=1) / d if self_pairs else None
        diag2 = (x2 * x2).sum(dim=1) / d if self_pairs and x2 is not None else None
        spatial = ()
    else:
        c, h, w = x1.shape[1:]
        flat1 = x1.reshape(x1.shape[0], c, h * w)
        flat2 = None if x2 is None else x2.reshape(x2.shape[0], c, h * w)
        # Every rule after assumes the contiguous layout (its elementwise operations against the
        # (…, b1, 1) and (…, 1, b2) variances run up to 40× slower on another), hence .contiguous().
        def pair(a, b):
            if not full:
                return torch.einsum("acs,bcs->sab", a, b).contiguous().div_(c).view(h, w, a.shape[0], b.shape[0])
            # one product (S·b1, C) @ (C, S·b2), laid out (s, b1, t, b2): that is (s, t, b1, b2) already
            # for a block of one row, as analytic_kernels' blocks are once x2 has more images than a
            # block holds pairs (einsum's (b1, s, b2, t) would need a transposing copy every block)
            product = a.permute(2, 0, 1).reshape(-1, c) @ b.permute(1, 2, 0).reshape(c, -1)
            return product.view(h, w, a.shape[0], h, w, b.shape[0]).permute(0, 1, 3, 4, 2, 5).contiguous().div_(c)

        if full:
            own = lambda a: torch.einsum("acs,act->sta", a, a).contiguous().div_(c).view(h, w, h, w, a.shape[0])
        else:
            own = lambda a: (a * a).sum(dim=1).T.contiguous().div_(c).view(h, w, a.shape[0])
        block = None if x2 is None else pair(flat1, flat2)
        diag1 = own(flat1) if self_pairs else None
        diag2 = own(flat2) if self_pairs and x2 is not None else None
        spatial = (h, w)
    as_part = lambda k: None if k is None else Part(k, torch.zeros_like(k), ntk_is_zero=True)
    return KernelState(as_part(block), as_part(diag1), as_part(diag2), spatial, full and bool(spatial), options)


def _entries_per_pair(root: Node) -> int:
    """The largest number of spatial entries one pair of inputs holds along the recursion."""
    largest = 1
    for node in root.leaves():
        if len(node.in_shape) == 3:
            positions = node.in_shape[1] * node.in_shape[2]
            largest = max(largest, positions * positions if node.full_in else positions)
    return largest


def _check_duals(root: Node, options: KernelOptions) -> None:
    """Fail before any work if an activation cannot give the expectations ``options`` ask for."""
    from ntklab.layers.elementwise import ActivationLayer

    for node in root.leaves():
        if isinstance(node.layer, ActivationLayer):
            node.layer.dual(options)


def _mirror_block(kernel: Tensor, start: int, stop: int) -> None:
    """Fill the lower triangle of rows/columns [start, stop) of a symmetric kernel from its upper
    part, in place (no full-size temporaries, so N = 20,000 costs only the two outputs)."""
    block = kernel[start:stop, start:stop]
    lower = torch.tril_indices(stop - start, stop - start, offset=-1, device=kernel.device)
    block[lower[0], lower[1]] = block[lower[1], lower[0]]
    kernel[stop:, start:stop] = kernel[start:stop, stop:].T


def mlp_kernels_by_depth(spec: ArchSpec, in_dim: int, depths, state: KernelState):
    """Yield (depth, state after that depth's readout) for each of ``depths`` (ascending, ≥ 0), running the
    recursion of ``spec`` from the input ``state`` once through the hidden layers of the deepest.

    The hidden layers of a depth-l net are the first l of the deepest one (same constants for every
    parametrization; checked), so one pass serves every depth and only the readout, whose
    constants may depend on the depth (as under "mup"), is applied per depth: O(max depth) layers
    instead of O(max depth²). ``state`` may hold tensors or mpmath object arrays
    (:class:`~ntklab.layers.KernelState`); it is consumed.
    """
    from dataclasses import replace

    from ntklab.nets.mlp import mlp_layers

    depths = sorted(set(depths))
    if isinstance(spec.width, tuple) and len(depths) > 1:
        raise ValueError("kernels by depth need one width for every layer, not a tuple of widths")
    deepest = depths[-1]
    as_depth = lambda depth: spec if depth == spec.depth else replace(spec, depth=depth)
    hidden = bind(mlp_layers(as_depth(deepest)), (in_dim,)).children[:-1]      # dense, activation, ...
    done = 0
    for depth in depths:
        for node in hidden[2 * done: 2 * depth]:
            state = node.layer.kernel(node, state)
        done = depth
        net = bind(mlp_layers(as_depth(depth)), (in_dim,))
        if [n.scale for n in net.children[:-1:2]] != [n.scale for n in hidden[: 2 * depth: 2]]:
            raise ValueError(f"the hidden layers of depth {depth} differ from those of depth {deepest}")
        readout = net.children[-1]
        yield depth, readout.layer.kernel(readout, state.clone())
