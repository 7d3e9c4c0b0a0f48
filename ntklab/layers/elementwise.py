"""Layers that act at each position: an elementwise activation, and layer norm over channels.

activation(φ):  Σ'(s, s') = E[φ(u)φ(v)],  Θ'(s, s') = E[φ'(u)φ'(v)] Θ(s, s'),
                (u, v) centred Gaussian with Var u = Σ(x, x)(s, s), Var v = Σ(x', x')(s', s'), Cov = Σ(x, x')(s, s').
                The expectations are the activation's dual (closed form, or quadrature of φ and φ').
layer_norm:     Σ'(s, s') = Σ(s, s') / √(Σ(x, x)(s, s) Σ(x', x')(s', s')), the same factor on Θ.

The finite layer norm centres and scales each position's channel vector, (z − mean_c z)/√(var_c z + ε),
without an affine part. The rule above is its limit when the input has zero mean over channels
(a dense or conv output, or an odd function of one): the channel mean then vanishes and
var_c z → Σ(x, x)(s, s), and the projection in its derivative removes one direction of many, so
the NTK scales by the same factor. :func:`ntklab.layers.check_limit` refuses a layer norm after,
say, a relu, whose channels keep a mean of order one.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ntklab.activations import Activation, ActivationLike, get_activation
from ntklab.layers.core import Layer, Node, Part, check_real, is_tensor


class ActivationLayer(Layer):
    """φ applied elementwise; any activation of :mod:`ntklab.activations` or an elementwise callable."""

    name = "activation"
    needs_variances = True

    def __init__(self, activation: ActivationLike):
        self.act: Activation = get_activation(activation)       # its errors already start "activation"

    def describe(self) -> str:
        return self.act.name

    def forward(self, module, x: Tensor) -> Tensor:
        return self.act.fn(x)

    def dual(self, options):
        """The Gaussian expectations the rule uses, as the options ask (see :class:`KernelOptions`)."""
        if options.precise:
            return _precise_dual(self.act)
        if options.method == "closed_form" and self.act.dual is None:
            raise ValueError(f"activation {self.act.name!r} has no closed-form kernel; use method='quadrature' "
                             "or 'auto'")
        if options.method == "quadrature" or self.act.dual is None:
            return _quadrature_dual(self.act, options.quadrature_degree)
        return self.act.dual

    def rule(self, node: Node, part: Part, q1, q2, state) -> Part:
        e_phi, e_dphi = self.dual(state.options)(q1, q2, part.nngp)
        ntk = part.ntk.mul_(e_dphi) if is_tensor(part.ntk) else part.ntk * e_dphi
        return Part(e_phi, ntk)

    @functools.cached_property
    def odd(self) -> bool:
        """φ(−x) = −φ(x) (on a grid): keeps a zero-mean input zero-mean."""
        grid = torch.linspace(0.05, 6.0, 41, dtype=torch.float64)
        return bool(torch.allclose(self.act.fn(-grid), -self.act.fn(grid), rtol=1e-12, atol=1e-12))


@functools.lru_cache(maxsize=64)
def _quadrature_dual(act: Activation, degree: int):
    from ntklab.kernels.quadrature import quadrature_dual

    return quadrature_dual(act, degree)


@functools.lru_cache(maxsize=64)
def _precise_dual(act: Activation):
    """The activation's mpmath dual, vectorised over numpy object arrays."""
    if act.precise_dual is None:
        raise ValueError(f"activation {act.name!r} has no high-precision closed-form dual (relu, abs, leaky_relu, "
                         "erf, gelu, identity and sin have one)")
    return np.frompyfunc(act.precise_dual, 3, 2)


class LayerNorm(Layer):
    """Normalise each position's channel vector (features, for vectors) to zero mean and unit variance."""

    name = "layer_norm"
    needs_variances = True

    def __init__(self, eps: float = 1e-5):
        self.eps = check_real(eps, "layer_norm: eps", 0.0, strict=False)

    def forward(self, module, x: Tensor) -> Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(dim=1, keepdim=True) + self.eps)

    def rule(self, node: Node, part: Part, q1, q2, state) -> Part:
        if not is_tensor(part.nngp):
            raise ValueError("layer_norm has no high-precision rule; the boolean-cube spectra take MLPs of ArchSpec")
        factor = torch.rsqrt(q1 * q2)
        return Part(part.nngp * factor, part.ntk.mul_(factor))


def activation(activation: ActivationLike) -> ActivationLayer:
    """An elementwise activation: a name of ``ntklab.ACTIVATION_NAMES``, an ``Activation`` or a callable."""
    return ActivationLayer(activation)


def layer_norm(eps: float = 1e-5) -> LayerNorm:
    """Layer norm over channels at each position (over features for vectors), without affine parameters."""
    return LayerNorm(eps)
