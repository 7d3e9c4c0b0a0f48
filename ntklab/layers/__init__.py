"""Layers that carry their limit: each layer holds its finite forward pass, its infinite-width kernel
rule (NNGP, NTK and variances, float64) and its term of the structured empirical NTK in one class,
so the network and its kernel cannot drift apart (the discipline of neural-tangents' stax).

    from ntklab import layers as nl, analytic_kernels, build_net, empirical_ntk
    arch = nl.serial(nl.conv(64, 3), nl.activation("relu"), nl.global_avg_pool(), nl.dense(1))
    k = analytic_kernels(arch, x)                  # x: (N, C, H, W) float64
    net = build_net(arch, in_shape=x.shape[1:], seed=0)
    theta = empirical_ntk(net, x, method="structured")

Images are (N, C, H, W), torch's layout. See docs/design.md for the conventions and each layer's rule.
"""

from ntklab.layers.batch_norm import BatchNorm, batch_norm
from ntklab.layers.combinators import Residual, Serial, check_limit, residual, serial
from ntklab.layers.core import KernelOptions, KernelState, Layer, Node, Part, bind
from ntklab.layers.dense import Conv, Dense, conv, dense
from ntklab.layers.elementwise import ActivationLayer, LayerNorm, activation, layer_norm
from ntklab.layers.net import LayerModule, Net, build_net
from ntklab.layers.pooling import (AvgPool, Flatten, GlobalAvgPool, Unflatten, avg_pool, flatten, global_avg_pool,
                                   unflatten)
from ntklab.layers.transpose import ConvTranspose, conv_transpose

__all__ = ["dense", "conv", "conv_transpose", "batch_norm", "avg_pool", "global_avg_pool", "flatten", "unflatten",
           "activation", "layer_norm", "residual", "serial", "build_net", "Net", "LayerModule", "Layer", "Node", "bind", "check_limit", "KernelState",
           "KernelOptions", "Part", "Dense", "Conv", "AvgPool", "GlobalAvgPool", "Flatten", "ActivationLayer",
           "LayerNorm", "Serial", "Residual", "ConvTranspose", "BatchNorm", "Unflatten"]
