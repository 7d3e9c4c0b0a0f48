"""The finite network of an architecture: one ``nn.Module`` per layer, forward formulas from the layers.

:func:`build_net` binds the architecture to the input shape (:func:`ntklab.layers.bind`) and draws
every parameter in float64 on the CPU from one generator, in the order of the layers (weights, then
biases), then casts: the same seed gives the same net, up to rounding, on every device and dtype.
The trainable tensors are the raw W, b of :func:`ntklab.spec.parameter_scale`, so gradient descent
and every empirical NTK see the parametrization as intended.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from ntklab.layers.core import Layer, Node, Shape, bind
from ntklab.tensor_checks import check_device_dtype


class LayerModule(nn.Module):
    """One bound layer's parameters; ``forward`` is the layer's own :meth:`Layer.forward`."""

    def __init__(self, node: Node, generator: torch.Generator, device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.node = node
        self.layer = node.layer
        params = node.layer.init(node, generator)
        for name in ("weight", "bias"):
            value = params.get(name)
            self.register_parameter(name, None if value is None else nn.Parameter(value.to(device=device, dtype=dtype)))
        self.children_modules = nn.ModuleList(LayerModule(child, generator, device, dtype) for child in node.children)

    @property
    def scale(self):
        """The layer's parametrization constants (parametrized layers; None otherwise)."""
        return self.node.scale

    @property
    def weight_mult(self) -> float:
        return self.node.scale.weight_mult

    @property
    def bias_mult(self) -> float:
        return self.node.scale.bias_mult

    def forward(self, x: Tensor) -> Tensor:
        return self.layer.forward(self, x)

    def extra_repr(self) -> str:
        return self.layer.describe() if not self.node.children else ""


class Net(nn.Module):
    """The network of an architecture: x (N, *in_shape) → f(x) (N, k).

    Attributes:
        arch: the architecture; ``root``: the :class:`Node` tree it was bound to;
        in_shape, out_dim; ``body``: the root :class:`LayerModule`.
    """

    def __init__(self, arch: Layer, in_shape, seed: int = 0, *, device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        device, dtype = check_device_dtype(device, dtype)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        in_shape = (int(in_shape),) if isinstance(in_shape, int) else tuple(int(n) for n in in_shape)
        self.root = bind(arch, in_shape)
        if len(self.root.out_shape) != 1:
            raise ValueError(f"the net must end with vectors (N, k) — end it with flatten() or global_avg_pool() and a "
                             f"dense layer — but it ends with shape {self.root.out_shape}")
        self.arch = arch
        self.in_shape: Shape = in_shape
        self.out_dim = self.root.out_shape[0]
        generator = torch.Generator().manual_seed(seed)
        self.body = LayerModule(self.root, generator, device, dtype)

    @property
    def in_dim(self) -> Optional[int]:
        """The input dimension for vector inputs (None for images)."""
        return self.in_shape[0] if len(self.in_shape) == 1 else None

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    @property
    def couples_batch(self) -> bool:
        """Whether f(x) depends on the rest of the batch (a batch_norm layer): see :mod:`ntklab.layers.batch_norm`."""
        return any(leaf.layer.couples_batch for leaf in self.root.leaves())

    def parametrized_modules(self) -> List[LayerModule]:
        """The modules that own parameters (dense, conv), in forward order."""
        return [m for m in self.body.modules() if isinstance(m, LayerModule) and m.layer.parametrized]


def build_net(arch: Layer, in_shape, seed: int = 0, *, device=None, dtype: torch.dtype = torch.float32) -> Net:
    """The finite network of ``arch`` on inputs of shape ``in_shape`` ((d,) or (C, H, W)), seeded."""
    return Net(arch, in_shape, seed, device=device, dtype=dtype)
