"""Infinite-width NNGP Σ and NTK Θ of any composition of :mod:`ntklab.layers`, in float64.

The recursion lives in the layers: each layer's ``rule`` maps the (NNGP, NTK) of its input to
those of its output (see :mod:`ntklab.layers.dense`, ``.elementwise``, ``.pooling``,
``.combinators`` and docs/design.md). This module starts it and runs it in blocks:

    input kernel   x·x'/n_0 (vectors) or Σ_c x_{c,s} x'_{c,s'}/C over positions (images), NTK 0
    then every layer's rule, on the pairs (x1_i, x2_j) of a block together with the pairs
    (x1_i, x1_i), (x2_j, x2_j) whose spatial diagonal gives the variances that activations read.

An :class:`~ntklab.spec.ArchSpec` lowers to ``serial(dense, activation, ..., dense)``
(:func:`ntklab.nets.mlp_layers`); for it this is the recursion of Jacot et al. (2018) / Lee et
al. (2019, eq. 7), Θ^l = Σ^l + σ_w² E[φ'φ'] Θ^{l-1} under "ntk", and the same operations in the
same order as before the layers existed, so its numbers did not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from ntklab.kernels.quadrature import DEFAULT_QUADRATURE_DEGREE
from ntklab.layers.combinators import check_limit
from ntklab.layers.core import KernelOptions, KernelState, Layer, Node, Part, bind
from ntklab.spec import ArchSpec
from ntklab.tensor_checks import check_inputs

KERNEL_METHODS = ("auto", "closed_form", "quadrature")


@dataclass(frozen=True)
class Kernels:
    """A pair of kernels on the same inputs.

    nngp: Σ, float64, shape (N1, N2), or (N1,) when only the diagonal was asked for.
    ntk:  Θ, same shape and dtype.
    """

    nngp: Tensor
    ntk: Tensor


def analytic_kernels(arch: Union[Layer, ArchSpec], x1, x2=None, *, diagonal: bool = False, method: str = "auto",
                     quadrature_degree: int = DEFAULT_QUADRATURE_DEGREE, block_elements: int = 2 ** 20,
                     device=None) -> Kernels:
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
            working memory stays near 14 · 8 · block_elements bytes (≈ 120 MB by default) for any N:
            the state's six arrays and the rules' temporaries.
        device: where to compute (default: x1's device).

    Returns:
        :class:`Kernels` with float64 tensors; per output (outputs are independent in the limit).
    """
    if method not in KERNEL_METHODS:
        raise ValueError(f"method must be one of {', '.join(KERNEL_METHODS)}, got {method!r}")
    if diagonal and x2 is not None:
        raise ValueError("diagonal=True computes k(x, x) on x1 only; pass x2=None")
    if not isinstance(block_elements, int) or block_elements < 1:
        raise ValueError(f"block_elements must be an integer >= 1, got {block_elements!r}")
    if isinstance(arch, ArchSpec):
        from ntklab.nets.mlp import mlp_layers

        arch = mlp_layers(arch)
    elif not isinstance(arch, Layer):
        raise ValueError(f"arch must be an ntklab.layers composition or an ntklab.ArchSpec, got {type(arch).__name__}")
    x1, x2 = check_inputs(x1, x2, dtype=torch.float64, device=device)
    root = bind(arch, x1.shape[1:])
    if len(root.out_shape) != 1:
        raise ValueError(f"the net ends with shape {root.out_shape}; kernels are defined for nets that end with "
                         "vectors (flatten() or global_avg_pool(), then dense)")
    check_limit(root)
    options = KernelOptions(method, quadrature_degree)
    _check_duals(root, options)

    if diagonal:
        return _diagonal_kernels(root, x1, options, block_elements)
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2.shape[0]
    nngp = torch.empty(n1, n2, dtype=torch.float64, device=x1.device)
    ntk = torch.empty_like(nngp)
    pairs = max(1, block_elements // _entries_per_pair(root, x1))
    # Square blocks: each block also runs the self pairs of its rows and columns (the variances),
    # which costs (b1 + b2)/(b1·b2) of the block's own work, least for b1 = b2.
    cols_per_block = min(n2, max(1, math.isqrt(pairs)))
    rows_per_block = max(1, pairs // cols_per_block)
    for row_start in range(0, n1, rows_per_block):
        rows = slice(row_start, min(row_start + rows_per_block, n1))
        # A symmetric kernel needs only the blocks on and right of the diagonal.
        for col_start in range(row_start if symmetric else 0, n2, cols_per_block):
            cols = slice(col_start, min(col_start + cols_per_block, n2))
            state = root.layer.kernel(root, input_state(x1[rows], x2[cols], root.full_in, options))
            nngp[rows, cols], ntk[rows, cols] = state.block.nngp, state.block.ntk
            if symmetric and col_start == row_start:
                # Diagonal entries have ρ = 1 exactly, but the block's x·x rounds differently from the
                # self pairs' and arccos amplifies a 1e-16 error in ρ near 1 to 1e-8 (relu, abs). The
                # self pairs compute ρ = 1 exactly: the same recursion, without that error.
                nngp.diagonal()[rows] = state.diag1.nngp
                ntk.diagonal()[rows] = state.diag1.ntk
        if symmetric:
            for kernel in (nngp, ntk):
                _mirror_block(kernel, rows.start, rows.stop)
    return Kernels(nngp, ntk)


def input_state(x1: Tensor, x2: Optional[Tensor], full: bool, options: KernelOptions) -> KernelState:
    """The input kernel of the pairs (x1_i, x2_j) and of the self pairs (module docstring); NTK 0.

    x2=None gives only the self pairs of x1 (the state of ``diagonal=True``).
    """
    if x1.dim() == 2:
        d = x1.shape[1]
        block = None if x2 is None else (x1 @ x2.T) / d
        diag1 = (x1 * x1).sum(dim=1) / d
        diag2 = None if x2 is None else (x2 * x2).sum(dim=1) / d
        spatial = ()
    else:
        c, h, w = x1.shape[1:]
        flat1 = x1.reshape(x1.shape[0], c, h * w)
        flat2 = None if x2 is None else x2.reshape(x2.shape[0], c, h * w)
        if full:
            pair = lambda a, b: torch.einsum("acs,bct->abst", a, b).reshape(a.shape[0], b.shape[0], h, w, h, w) / c
            self_pairs = lambda a: torch.einsum("acs,act->ast", a, a).reshape(a.shape[0], h, w, h, w) / c
        else:
            pair = lambda a, b: torch.einsum("acs,bcs->abs", a, b).reshape(a.shape[0], b.shape[0], h, w) / c
            self_pairs = lambda a: (a * a).sum(dim=1).reshape(a.shape[0], h, w) / c
        block = None if x2 is None else pair(flat1, flat2)
        diag1 = self_pairs(flat1)
        diag2 = None if x2 is None else self_pairs(flat2)
        spatial = (h, w)
    as_part = lambda k: None if k is None else Part(k, torch.zeros_like(k))
    return KernelState(as_part(block), as_part(diag1), as_part(diag2), spatial, full and bool(spatial), options)


def _diagonal_kernels(root: Node, x1: Tensor, options: KernelOptions, block_elements: int) -> Kernels:
    nngp = torch.empty(x1.shape[0], dtype=torch.float64, device=x1.device)
    ntk = torch.empty_like(nngp)
    rows_per_block = max(1, block_elements // _entries_per_pair(root, x1))
    for start in range(0, x1.shape[0], rows_per_block):
        rows = slice(start, start + rows_per_block)
        state = root.layer.kernel(root, input_state(x1[rows], None, root.full_in, options))
        nngp[rows], ntk[rows] = state.diag1.nngp, state.diag1.ntk
    return Kernels(nngp, ntk)


def _entries_per_pair(root: Node, x: Tensor) -> int:
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
