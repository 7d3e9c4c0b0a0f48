"""Finite fully connected networks in the parametrizations of :mod:`ntklab.spec`.

Hidden layers l = 1..L and the readout L+1 compute (DESIGN.md)

    z^l = weight_mult_l · W^l a^{l-1} + bias_mult_l · b^l,   a^0 = x,  a^l = φ(z^l),  f(x) = z^{L+1},

with W, b drawn at the scales of :func:`ntklab.spec.layer_scales`. The trainable tensors are the
raw W, b, so gradient descent and any empirical NTK see the parametrization as intended.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ntklab.spec import ArchSpec, LayerScale, layer_scales


class Dense(nn.Module):
    """z = weight_mult · a Wᵀ + bias_mult · b for a batch a of shape (N, fan_in) → (N, fan_out)."""

    def __init__(self, scale: LayerScale, weight: Tensor, bias: Optional[Tensor]):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(weight)                 # (fan_out, fan_in)
        self.bias = None if bias is None else nn.Parameter(bias)   # (fan_out,)

    @property
    def weight_mult(self) -> float:
        return self.scale.weight_mult

    @property
    def bias_mult(self) -> float:
        return self.scale.bias_mult

    def forward(self, a: Tensor) -> Tensor:
        z = nn.functional.linear(a, self.weight) * self.weight_mult
        if self.bias is not None:
            z = z + self.bias_mult * self.bias
        return z

    def extra_repr(self) -> str:
        s = self.scale
        return (f"fan_in={s.fan_in}, fan_out={s.fan_out}, weight_std={s.weight_std:.4g}, "
                f"weight_mult={s.weight_mult:.4g}, bias={s.has_bias}")


class MLP(nn.Module):
    """The network of an :class:`~ntklab.spec.ArchSpec`: x (N, in_dim) → f(x) (N, out_dim).

    Attributes:
        spec: the architecture; ``activation``: its resolved Activation;
        layers: ``nn.ModuleList`` of L+1 :class:`Dense` layers, input layer first.
    """

    def __init__(self, spec: ArchSpec, in_dim: int, seed: int = 0, *, device=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(spec, ArchSpec):
            raise ValueError(f"spec must be an ntklab.ArchSpec, got {type(spec).__name__}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.spec = spec
        self.in_dim = int(in_dim)
        self.activation = spec.act
        # Draw in float64 on the CPU from one generator, then cast: the same seed gives the same
        # network (up to rounding) on every device and dtype.
        generator = torch.Generator().manual_seed(seed)
        layers = []
        for scale in layer_scales(spec, in_dim):
            weight = torch.randn(scale.fan_out, scale.fan_in, generator=generator,
                                 dtype=torch.float64) * scale.weight_std
            bias = None
            if scale.has_bias:
                bias = torch.randn(scale.fan_out, generator=generator, dtype=torch.float64) * scale.bias_std
            to = dict(device=device, dtype=dtype)
            layers.append(Dense(scale, weight.to(**to), None if bias is None else bias.to(**to)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for layer in self.layers[:-1]:
            h = self.activation.fn(layer(h))
        return self.layers[-1](h)

    def hidden(self, x: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Layer inputs and pre-activations of one forward pass.

        Returns ``(inputs, preactivations)``: inputs[l] = a^l for l = 0..L (a^0 = x, each
        (N, n_l)) and preactivations[l] = z^{l+1} for l = 0..L-1 (hidden layers only).
        """
        inputs, preactivations = [x], []
        h = x
        for layer in self.layers[:-1]:
            z = layer(h)
            preactivations.append(z)
            h = self.activation.fn(z)
            inputs.append(h)
        return inputs, preactivations


def build_mlp(spec: ArchSpec, in_dim: int, seed: int = 0, *, device=None,
              dtype: torch.dtype = torch.float32) -> MLP:
    """The finite network of ``spec`` on ``in_dim`` inputs, initialised from ``seed``."""
    return MLP(spec, in_dim, seed, device=device, dtype=dtype)
