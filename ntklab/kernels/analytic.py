"""Infinite-width NNGP Σ and NTK Θ of a fully connected net (DESIGN.md), in float64.

Layer by layer, with E_in the layer's input kernel (x·x'/n_0 for the first layer,
E[φ(u)φ(v)] afterwards, (u, v) drawn from the previous pre-activation NNGP) and the
constants of :func:`ntklab.spec.layer_scales`:

    Σ_out = σ_w² E_in + σ_b²
    Θ_out = c_l · n_{l-1} · E_in + c'_l + σ_w² E[φ'(u)φ'(v)] Θ_in        (Θ_in = 0 for the first layer)

with c_l = weight_mult², c'_l = bias_mult². Under "ntk" c_l n_{l-1} = σ_w², c'_l = σ_b² and this is
Θ^l = Σ^l + σ_w² E[φ'φ'] Θ^{l-1} (Jacot et al. 2018; Lee et al. 2019, eq. 7). Under
"standard" c_l = c'_l = 1, so Θ_out = n_{l-1} E_in + 1 + σ_w² E[φ'φ'] Θ_in grows with the finite
widths (Sohl-Dickstein et al. 2020); the NNGP is the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from ntklab.activations import Dual
from ntklab.inputs import check_inputs
from ntklab.kernels.quadrature import DEFAULT_QUADRATURE_DEGREE, quadrature_dual
from ntklab.spec import ArchSpec, LayerScale, layer_scales

KERNEL_METHODS = ("auto", "closed_form", "quadrature")


@dataclass(frozen=True)
class Kernels:
    """A pair of kernels on the same inputs.

    nngp: Σ, float64, shape (N1, N2), or (N1,) when only the diagonal was asked for.
    ntk:  Θ, same shape and dtype.
    """

    nngp: Tensor
    ntk: Tensor


def analytic_kernels(spec: ArchSpec, x1, x2=None, *, diagonal: bool = False, method: str = "auto",
                     quadrature_degree: int = DEFAULT_QUADRATURE_DEGREE,
                     block_elements: int = 2 ** 20, device=None) -> Kernels:
    """NNGP and NTK of ``spec`` between the rows of x1 (N1, d) and x2 (N2, d); x2=None means x1.

    Args:
        diagonal: return only k(x1_i, x1_i), shapes (N1,) (x2 must be None).
        method: "closed_form" (error if the activation has none), "quadrature", or "auto"
            (closed form where there is one).
        quadrature_degree: see :func:`ntklab.kernels.quadrature.quadrature_dual`.
        block_elements: rows of x1 are processed in blocks of about this many kernel entries,
            so temporaries stay bounded (≈ 10 · 8 · block_elements bytes) whatever N1, N2.
        device: where to compute (default: x1's device).

    Returns:
        :class:`Kernels` with float64 tensors; per output (outputs are independent in the limit).
    """
    if method not in KERNEL_METHODS:
        raise ValueError(f"method must be one of {', '.join(KERNEL_METHODS)}, got {method!r}")
    if not isinstance(spec, ArchSpec):
        raise ValueError(f"spec must be an ntklab.ArchSpec, got {type(spec).__name__}")
    if diagonal and x2 is not None:
        raise ValueError("diagonal=True computes k(x, x) on x1 only; pass x2=None")
    x1, x2 = check_inputs(x1, x2, dtype=torch.float64, device=device)
    dual = _resolve_dual(spec, method, quadrature_degree)
    scales = layer_scales(spec, x1.shape[1])

    nngp_diag1, ntk_diag1, variances1 = _propagate(scales, dual, _row_norms(x1, x1.shape[1]))
    if diagonal:
        return Kernels(nngp_diag1, ntk_diag1)
    variances2 = variances1 if x2 is None else _propagate(scales, dual, _row_norms(x2, x2.shape[1]))[2]
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2.shape[0]
    nngp = torch.empty(n1, n2, dtype=torch.float64, device=x1.device)
    ntk = torch.empty_like(nngp)
    rows_per_block = max(1, block_elements // n2)
    for start in range(0, n1, rows_per_block):
        rows = slice(start, start + rows_per_block)
        # A symmetric kernel needs only the blocks on and right of the diagonal.
        cols = slice(start if symmetric else 0, n2)
        input_dot = (x1[rows] @ x2[cols].T) / x1.shape[1]
        nngp[rows, cols], ntk[rows, cols], _ = _propagate(
            scales, dual, input_dot, [v[rows].unsqueeze(1) for v in variances1],
            [v[cols].unsqueeze(0) for v in variances2])
        if symmetric:
            for kernel in (nngp, ntk):
                _mirror_block(kernel, start, min(start + rows_per_block, n1))
    if symmetric:
        # Diagonal entries have ρ = 1 exactly, but the matmul above rounds x·x differently from
        # the row norms, and arccos amplifies a 1e-16 error in ρ near 1 to 1e-8 (relu, abs).
        # The diagonal recursion uses ρ = 1 exactly; entries depend only on their own earlier
        # entries, so taking them from it is the same recursion, computed without that error.
        nngp.diagonal().copy_(nngp_diag1)
        ntk.diagonal().copy_(ntk_diag1)
    return Kernels(nngp, ntk)


def _resolve_dual(spec: ArchSpec, method: str, degree: int) -> Dual:
    act = spec.act
    if method == "closed_form" and act.dual is None:
        raise ValueError(f"activation {act.name!r} has no closed-form kernel; use method='quadrature' "
                         "or 'auto'")
    if method == "quadrature" or act.dual is None:
        return quadrature_dual(act, degree)
    return act.dual


def _mirror_block(kernel: Tensor, start: int, stop: int) -> None:
    """Fill the lower triangle of rows/columns [start, stop) of a symmetric kernel from its upper
    part, in place (no full-size temporaries, so N = 20,000 costs only the two outputs)."""
    block = kernel[start:stop, start:stop]
    lower = torch.tril_indices(stop - start, stop - start, offset=-1, device=kernel.device)
    block[lower[0], lower[1]] = block[lower[1], lower[0]]
    kernel[stop:, start:stop] = kernel[start:stop, stop:].T


def _row_norms(x: Tensor, in_dim: int) -> Tensor:
    return (x * x).sum(dim=1) / in_dim


def _propagate(scales: Sequence[LayerScale], dual: Dual, input_dot: Tensor,
               row_variances: Optional[List[Tensor]] = None,
               col_variances: Optional[List[Tensor]] = None):
    """Run the recursion of the module docstring from the input kernel x·x'/n_0.

    For a block, ``row_variances[l]`` (b, 1) and ``col_variances[l]`` (1, N2) are the pre-activation
    variances Σ(x, x), Σ(x', x') entering hidden layer l. When they are None the block *is* a
    diagonal, so the current NNGP serves as both. Returns (nngp, ntk, variances entering each
    hidden layer).
    """
    first = scales[0]
    nngp = first.weight_variance * input_dot + first.bias_variance
    ntk = (first.weight_ntk_factor * first.fan_in) * input_dot + first.bias_ntk_factor
    variances = []
    for layer, scale in enumerate(scales[1:]):
        variances.append(nngp)
        q1 = nngp if row_variances is None else row_variances[layer]
        q2 = nngp if col_variances is None else col_variances[layer]
        e_phi, e_dphi = dual(q1, q2, nngp)
        ntk = ntk.mul_(e_dphi).mul_(scale.weight_variance)
        ntk = ntk.add_(e_phi, alpha=scale.weight_ntk_factor * scale.fan_in).add_(scale.bias_ntk_factor)
        # Not in place: a dual may hand back its own input (identity returns cov itself).
        nngp = scale.weight_variance * e_phi + scale.bias_variance
    return nngp, ntk, variances
