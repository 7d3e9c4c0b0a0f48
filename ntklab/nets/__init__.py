"""Finite networks: any :mod:`ntklab.layers` composition (:func:`build_net`) and the MLP of an ArchSpec."""

from ntklab.layers.net import LayerModule, Net, build_net
from ntklab.nets.mlp import MLP, build_mlp, mlp_layers

__all__ = ["Net", "LayerModule", "build_net", "MLP", "build_mlp", "mlp_layers"]
