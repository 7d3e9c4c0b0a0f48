"""The fully connected net of an :class:`~ntklab.spec.ArchSpec`, as a composition of layers.

An ArchSpec is the short way to describe an MLP; :func:`mlp_layers` lowers it to

    serial(dense(n_1), activation(φ), ..., dense(n_L), activation(φ), dense(k))

so the finite net (:class:`MLP`), its analytic kernels and its structured empirical NTK come from
the same :mod:`ntklab.layers` as any other architecture. Hidden layers l = 1..L and the readout
compute (docs/design.md)

    z^l = weight_mult_l · W^l a^{l-1} + bias_mult_l · b^l,   a^0 = x,  a^l = φ(z^l),  f(x) = z^{L+1},

with the constants of :func:`ntklab.spec.parameter_scale` for each layer's role.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ntklab import layers as nl
from ntklab.layers.net import LayerModule, Net
from ntklab.spec import ArchSpec


def mlp_layers(spec: ArchSpec) -> nl.Serial:
    """The layers of ``spec``: L dense layers each followed by the activation, then the readout."""
    layers = []
    for width in spec.widths:
        layers += [nl.dense(width, spec.sigma_w, spec.sigma_b, spec.bias, spec.parametrization), nl.activation(spec.act)]
    layers.append(nl.dense(spec.out_dim, spec.sigma_w, spec.sigma_b, spec.bias, spec.parametrization))
    return nl.serial(*layers)


class MLP(Net):
    """The network of an :class:`~ntklab.spec.ArchSpec`: x (N, in_dim) → f(x) (N, out_dim).

    Attributes:
        spec: the architecture; ``activation``: its resolved Activation;
        layers: the L+1 dense :class:`~ntklab.layers.LayerModule` s, input layer first.
    """

    def __init__(self, spec: ArchSpec, in_dim: int, seed: int = 0, *, device=None,
                 dtype: torch.dtype = torch.float32):
        if not isinstance(spec, ArchSpec):
            raise ValueError(f"spec must be an ntklab.ArchSpec, got {type(spec).__name__}")
        if not isinstance(in_dim, int) or isinstance(in_dim, bool) or in_dim < 1:
            raise ValueError(f"in_dim must be an integer >= 1, got {in_dim!r}")
        super().__init__(mlp_layers(spec), (in_dim,), seed, device=device, dtype=dtype)
        self.spec = spec
        self.activation = spec.act

    @property
    def layers(self) -> List[LayerModule]:
        return self.parametrized_modules()

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
