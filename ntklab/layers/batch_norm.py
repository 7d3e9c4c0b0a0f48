"""Batch normalisation: each channel normalised with the statistics of the batch it is given.

    y[n, c, s] = (z[n, c, s] − m_c) / √(v_c + ε),   m_c, v_c = mean and (biased) variance of z[·, c, ·]
                                                    over the batch and all positions (vectors: over the batch)

always with the batch's own statistics (torch's training mode, no running averages, no affine part), so
f(x) depends on the other inputs of the batch: a batch-norm net is a function of the whole batch,
F(X) ∈ R^{N×k}, and its empirical NTK is defined on one batch X,

    Θ̂(X)_{(n,i),(m,j)} = Σ_p ∂F_{n,i}(X)/∂θ_p · ∂F_{m,j}(X)/∂θ_p,

which is not the kernel of a function of single inputs: Θ̂ of a sub-batch is not the sub-block of Θ̂(X).
:func:`ntklab.empirical_ntk` therefore takes one batch (x2 = None) for these nets and computes it
exactly from the Jacobian of F(X) in one piece (``jacobian``, whole-batch ``jacrev``) or from NTK-vector
products of F (``ntvp``); the per-layer ``structured`` rule assumes per-input gradients and does not apply.

Infinite width: the channel statistics are averages over N·H·W entries, not over the width, so they stay
random as the width grows and the limit is not a Gaussian-process kernel rule of the kind the other
layers have (the layer has none; :func:`ntklab.kernels.limit_problem` says so). Its effect on freeze and
chaos is measured on finite nets (``python -m ntklab chaos``).
"""

from __future__ import annotations

from torch import Tensor

from ntklab.layers.core import Layer, check_real


class BatchNorm(Layer):
    """Normalise each channel (feature, for vectors) over the batch and positions; no parameters."""

    name = "batch_norm"
    couples_batch = True
    has_structured_ntk = False

    def __init__(self, eps: float = 1e-5):
        self.eps = check_real(eps, "batch_norm: eps", 0.0, strict=False)

    def describe(self) -> str:
        return self.name

    def forward(self, module, x: Tensor) -> Tensor:
        if x.shape[0] < 2 and x.dim() == 2:
            raise ValueError(f"batch_norm needs a batch of at least 2 vectors to normalise over, got {x.shape[0]}")
        dims = (0,) if x.dim() == 2 else (0, 2, 3)
        centred = x - x.mean(dim=dims, keepdim=True)
        return centred / (centred.pow(2).mean(dim=dims, keepdim=True) + self.eps).sqrt()


def batch_norm(eps: float = 1e-5) -> BatchNorm:
    """Batch normalisation over the batch (and positions), with the batch's own statistics, no affine part."""
    return BatchNorm(eps)
