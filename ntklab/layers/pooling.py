"""Layers that mix, drop or make positions: average pooling, global average pooling, flatten, unflatten.

Kernel rules (neural-tangents' stax): with K the input's NNGP or NTK over pairs of positions,

    avg_pool:        K'(s1, s2) = mean over window(s1) × window(s2) of K(t1, t2)      (needs all of K)
    global_avg_pool: K' = mean over all pairs (s1, s2) of K(s1, s2)                    (needs all of K)
    flatten:         K' = mean over s of K(s, s)                                       (the diagonal only)

flatten followed by a dense layer of fan-in C·H·W gives σ_w²·(1/(C·H·W))Σ_{c,s} x_{c,s} x'_{c,s}
in the limit, which is that mean. None of them has parameters. Kernel arrays are (H, W, H, W, pairs…)
or (H, W, pairs…) (see :mod:`ntklab.layers.core`).
"""

from __future__ import annotations

import torch.nn.functional as F
import torch
from torch import Tensor

from ntklab.layers.core import (PADDINGS, Layer, Node, Part, Shape, check_int, check_pair, spatial_diagonal,
                                window_padding, window_sum)


def _images(name: str, in_shape: Shape) -> None:
    if len(in_shape) != 3:
        raise ValueError(f"{name} takes images (C, H, W), got inputs of shape {in_shape}")


class AvgPool(Layer):
    """Mean over k×k windows: (N, C, H, W) → (N, C, H', W'); "same" pads with zeros counted in the mean."""

    name = "avg_pool"

    def __init__(self, window, stride=None, padding: str = "valid"):
        self.window = check_pair(window, "avg_pool: window")
        self.stride = self.window if stride is None else check_pair(stride, "avg_pool: stride")
        if padding not in PADDINGS:
            raise ValueError(f"avg_pool: padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        self.padding = padding

    def describe(self) -> str:
        return f"avg_pool({self.window[0]}x{self.window[1]}, stride={self.stride}, {self.padding})"

    def _geometry(self, in_shape: Shape):
        _images(self.name, in_shape)
        _, h, w = in_shape
        try:
            return (window_padding(h, self.window[0], self.stride[0], self.padding),
                    window_padding(w, self.window[1], self.stride[1], self.padding))
        except ValueError:
            raise ValueError(f"the {self.window[0]}x{self.window[1]} window is larger than the {h}x{w} input "
                             "with padding 'valid'") from None

    def output_shape(self, in_shape: Shape) -> Shape:
        (_, _, out_h), (_, _, out_w) = self._geometry(in_shape)
        return (in_shape[0], out_h, out_w)

    def full_input_needed(self, full_output_needed: bool) -> bool:
        return True

    def _pad(self, in_shape: Shape):
        (top, bottom, _), (left, right, _) = self._geometry(in_shape)
        return left, right, top, bottom

    def forward(self, module, x: Tensor) -> Tensor:
        return F.avg_pool2d(F.pad(x, self._pad(module.node.in_shape)), self.window, self.stride)

    def rule(self, node: Node, part: Part, q1, q2, state) -> Part:
        pad = self._pad(node.in_shape)
        return Part(self._pool_pairs(part.nngp, pad), self._pool_pairs(part.ntk, pad))

    def _pool_pairs(self, kernel: Tensor, pad) -> Tensor:
        """(H, W, H, W, …) → (H', W', H', W', …): each position's window summed on its own axes (rows
        and columns of either position; the padded zeros count), then divided by the window pairs."""
        left, right, top, bottom = pad
        (kh, kw), (sh, sw) = self.window, self.stride
        rows, cols = (kh, sh, top, bottom), (kw, sw, left, right)
        for axis, (window, stride, before, after) in enumerate((rows, cols, rows, cols)):
            kernel = window_sum(kernel, (axis,), window, stride, before, after)
        return kernel.div_((kh * kw) ** 2)


class GlobalAvgPool(Layer):
    """Mean over all positions: (N, C, H, W) → (N, C)."""

    name = "global_avg_pool"

    def output_shape(self, in_shape: Shape) -> Shape:
        _images(self.name, in_shape)
        return (in_shape[0],)

    def full_input_needed(self, full_output_needed: bool) -> bool:
        return True

    def forward(self, module, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))

    def rule(self, node: Node, part: Part, q1, q2, state) -> Part:
        return Part(part.nngp.mean(dim=(0, 1, 2, 3)), part.ntk.mean(dim=(0, 1, 2, 3)))

    def kernel(self, node, state):
        return _to_vectors(super().kernel(node, state))


class Flatten(Layer):
    """(N, C, H, W) → (N, C·H·W); vectors pass unchanged."""

    name = "flatten"

    def output_shape(self, in_shape: Shape) -> Shape:
        size = 1
        for n in in_shape:
            size *= n
        return (size,)

    def full_input_needed(self, full_output_needed: bool) -> bool:
        return False

    def forward(self, module, x: Tensor) -> Tensor:
        return x.flatten(1)

    def rule(self, node: Node, part: Part, q1, q2, state) -> Part:
        if not state.spatial:
            return part
        diagonal = spatial_diagonal if state.full else (lambda k: k)
        return Part(diagonal(part.nngp).mean(dim=(0, 1)), diagonal(part.ntk).mean(dim=(0, 1)))

    def kernel(self, node, state):
        return _to_vectors(super().kernel(node, state))


def _to_vectors(state):
    state.spatial, state.full = (), False
    return state


def avg_pool(window, stride=None, padding: str = "valid") -> AvgPool:
    """Average pooling over ``window`` (int or pair) with ``stride`` (default: the window)."""
    return AvgPool(window, stride, padding)


def global_avg_pool() -> GlobalAvgPool:
    """The mean over all positions: images (C, H, W) → vectors (C,)."""
    return GlobalAvgPool()


def flatten() -> Flatten:
    """Images (C, H, W) → vectors (C·H·W,)."""
    return Flatten()


class Unflatten(Layer):
    """Vectors (C·H·W,) → images (C, H, W): the start of a generator (dense, then transposed convs).

    Kernel rule: the features of a dense layer's output are independent in the limit, feature (c, s)
    of one input correlated only with feature (c, s) of another, so the channel-mean covariance of
    the images is Σ(s, s') = δ_{ss'} Σ and Θ(s, s') = δ_{ss'} Θ. That needs an input with zero mean
    (a dense output, or odd functions of one: after a relu, features at different positions would
    share the mean E[φ]²); :func:`ntklab.layers.check_limit` refuses the others.
    """

    name = "unflatten"

    def __init__(self, channels: int, height: int, width: int):
        self.shape = tuple(check_int(n, f"unflatten: {what}") for n, what in
                           ((channels, "channels"), (height, "height"), (width, "width")))

    def describe(self) -> str:
        return f"unflatten{self.shape}"

    def output_shape(self, in_shape: Shape) -> Shape:
        size = self.shape[0] * self.shape[1] * self.shape[2]
        if len(in_shape) != 1 or in_shape[0] != size:
            raise ValueError(f"unflatten to {self.shape} takes vectors of {size} features, got inputs of shape {in_shape}")
        return self.shape

    def forward(self, module, x: Tensor) -> Tensor:
        return x.reshape((x.shape[0],) + self.shape)

    def kernel(self, node: Node, state):
        _, h, w = self.shape
        if node.full_out:      # (H, W, H, W, pairs…): δ_{ss'} times the vector kernel
            eye = torch.eye(h * w, dtype=torch.float64).view(h, w, h, w)
            spread = lambda k: eye.to(k).view((h, w, h, w) + (1,) * k.dim()) * k
        else:                  # (H, W, pairs…): the same number at every position
            spread = lambda k: k.expand((h, w) + k.shape).contiguous()
        return state.map(lambda part, q1, q2: Part(spread(part.nngp), spread(part.ntk)), spatial=(h, w),
                         full=node.full_out)


def unflatten(channels: int, height: int, width: int) -> Unflatten:
    """Vectors (channels·height·width,) → images (channels, height, width), right after a dense layer."""
    return Unflatten(channels, height, width)
