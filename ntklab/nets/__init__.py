"""Finite networks: any :mod:`ntklab.layers` composition (:func:`build_net`), the MLP of an ArchSpec and
the trainer's CNN (:func:`cnn_layers`)."""

from ntklab.layers.net import LayerModule, Net, build_net
from ntklab.nets.cnn import READOUTS, cnn_layers
from ntklab.nets.mlp import MLP, build_mlp, mlp_layers

__all__ = ["Net", "LayerModule", "build_net", "MLP", "build_mlp", "mlp_layers", "cnn_layers", "READOUTS"]
