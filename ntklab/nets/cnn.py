"""The convolutional net of the trainer's ``model=cnn``, as a composition of layers.

    serial(conv(C, k, stride_1), φ, [avg_pool(2)], ..., conv(C, k, stride_L), φ, [avg_pool(2)],
           global_avg_pool() | flatten(), dense(out_dim))

L = ``depth`` conv blocks of ``channels`` channels each (the width the sweeps vary), a 2×2 average
pool (stride 2) after the blocks listed in ``pool_after``, and a readout of the global-average-pool
kind (CNTK-GAP in Arora et al. 2019) or the flatten kind (their CNTK-V, "vanilla"). Every conv and
the readout take the same σ_w, σ_b, bias and parametrization, as the MLP's layers do.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ntklab import layers as nl
from ntklab.spec import is_integer

READOUTS = ("gap", "flatten")


def cnn_layers(depth: int, channels: int, out_dim: int, *, kernel_size: int = 3,
               strides: Optional[Sequence[int]] = None, padding: str = "same", pool_after: Sequence[int] = (),
               readout: str = "gap", activation: str = "relu", sigma_w: float = 1.0, sigma_b: float = 0.0,
               bias: bool = True, parametrization: str = "ntk") -> nl.Serial:
    """The layers of the module docstring.

    Args:
        depth: L ≥ 1 conv blocks; channels: C ≥ 1 per conv; out_dim: k outputs.
        kernel_size: k×k windows; padding: "same" | "valid".
        strides: one stride per conv block (None or empty: 1 everywhere).
        pool_after: blocks (1..L) followed by a 2×2 average pool of stride 2.
        readout: "gap" (global average pool) or "flatten", then a dense layer to k outputs.

    Raises ValueError whose message starts with the argument's name.
    """
    if not is_integer(depth) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (conv blocks), got {depth!r}")
    strides = list(strides or [1] * depth)
    if len(strides) != depth:
        raise ValueError(f"strides must give one stride per conv block ({depth}), got {strides}")
    pool_after = list(pool_after or [])
    for block in pool_after:
        if not is_integer(block) or not 1 <= block <= depth:
            raise ValueError(f"pool_after must list conv blocks in 1..{depth}, got {pool_after}")
    if len(set(pool_after)) != len(pool_after):
        raise ValueError(f"pool_after lists a block twice: {pool_after}")
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    affine = dict(sigma_w=sigma_w, sigma_b=sigma_b, bias=bias, parametrization=parametrization)
    layers = []
    for block, stride in enumerate(strides, start=1):
        layers += [nl.conv(channels, kernel_size, stride=stride, padding=padding, **affine), nl.activation(activation)]
        if block in pool_after:
            layers.append(nl.avg_pool(2))
    layers += [nl.global_avg_pool() if readout == "gap" else nl.flatten(), nl.dense(out_dim, **affine)]
    return nl.serial(*layers)
