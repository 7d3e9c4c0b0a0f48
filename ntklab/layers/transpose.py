"""The transposed convolution: upsampling with a learned filter, the generator's layer.

Finite layer (torch's ``conv_transpose2d``, neural-tangents' ``ConvTranspose``): each input position
i spreads its channel vector over a k_h × k_w patch of the output starting at stride·i,

    z_full[u] = σ_w/√(C_in·k_h·k_w) · Σ_{i, o : stride·i + o = u} W[:, :, o]ᵀ x[i]      (ntk)

(W ~ N(0, 1) of shape (C_in, C_out, k_h, k_w); "standard" draws W ~ N(0, σ_w²/(C_in·k_h·k_w))
instead), then the output keeps the positions t of z_full[t + crop] and adds σ_b·b. Along each axis
of n positions, with jax's transpose padding (the one neural-tangents uses): the input dilated by
the stride (n − 1)·s + 1 long is padded by (a, b) and a stride-1 window of k slides over it,

    "same":   out = n·s;                        a + b = k + s − 2, a = k − 1 if s > k − 1 else ⌈(k + s − 2)/2⌉
    "valid":  out = n·s + max(k − s, 0);        a = k − 1, b = s − 1 + max(k − s, 0)

so crop = k − 1 − a (≥ 0), and where out reaches past z_full the extra positions hold the bias alone.

Kernel rule (the conv rule with the offsets read the other way): the output covariance at (t, t')
sums the input's at the pairs (i, i') that reach t and t' through the same filter offset o,

    Σ_out(t, t') = σ_w²/(k_h·k_w) · Σ_o Σ_in(i, i') [s·i = t + o − a, s·i' = t' + o − a] + σ_b²,
    Θ_out        = σ_w²/(k_h·k_w) · Σ_o Θ_in(…) + (the same sum of Σ_in)/(k_h·k_w) + σ_b²   (ntk)

computed by dilating the kernel array (zeros between positions) and a window sum with padding (a, b).
Where k is not a multiple of s, the number of offsets that reach an output position depends on t mod s,
so the output variance Σ_out(t, t) alternates along each axis: the checkerboard of a deconvolution
generator is already in its infinite-width kernel. Only the spatial diagonal of the input is needed
for the diagonal of the output (the same offset o maps t = t' to i = i').
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ntklab.layers.core import Node, Part, Shape, window_sum
from ntklab.layers.dense import _delta_gram, _patches, _Windowed


def transpose_padding(size: int, window: int, stride: int, padding: str) -> Tuple[int, int, int]:
    """(a, b, out): the padding of the stride-dilated input and the output size along one axis (module docstring)."""
    if padding == "same":
        total = window + stride - 2
        before = window - 1 if stride > window - 1 else -(-total // 2)
    else:
        total = window + stride - 2 + max(window - stride, 0)
        before = window - 1
    after = total - before
    dilated = (size - 1) * stride + 1
    return before, after, dilated + before + after - window + 1


class ConvTranspose(_Windowed):
    """2-D transposed convolution: (N, C_in, H, W) → (N, C_out, H', W'), H' = H·stride for "same"."""

    name = "conv_transpose"

    def _geometry(self, in_shape: Shape):
        """Per axis (rows, columns): (a, b, out) of :func:`transpose_padding`."""
        if len(in_shape) != 3:
            raise ValueError(f"conv_transpose takes images (C, H, W), got inputs of shape {in_shape}")
        return tuple(transpose_padding(n, k, s, self.padding)
                     for n, k, s in zip(in_shape[1:], self.kernel_size, self.stride))

    def output_shape(self, in_shape: Shape) -> Shape:
        (_, _, out_h), (_, _, out_w) = self._geometry(in_shape)
        return (self.out_channels, out_h, out_w)

    def weight_shape(self, node: Node) -> Tuple[int, ...]:
        return (node.in_shape[0], self.out_channels) + self.kernel_size

    def bias_size(self, node: Node) -> int:
        return self.out_channels

    def _crop(self, node: Node) -> Tuple[int, int, int, int]:
        """(left, right, top, bottom) to cut from the full transposed output (negative: zeros to add)."""
        crops = []
        for n, k, s, (before, _, out) in zip(node.in_shape[1:], self.kernel_size, self.stride,
                                              self._geometry(node.in_shape)):
            full = (n - 1) * s + k
            crops.append((k - 1 - before, full - out - (k - 1 - before)))
        (top, bottom), (left, right) = crops
        return left, right, top, bottom

    def forward(self, module, x: Tensor) -> Tensor:
        scale = module.node.scale
        full = F.conv_transpose2d(x, module.weight, stride=self.stride) * scale.weight_mult
        left, right, top, bottom = self._crop(module.node)
        z = F.pad(full, (-left, -right, -top, -bottom))        # negative padding crops
        if module.bias is not None:
            z = z + scale.bias_mult * module.bias[:, None, None]
        return z

    def rule(self, node: Node, part: Part, q1, q2, state) -> Part:
        geometry = self._geometry(node.in_shape)
        return self._affine_rule(node.scale, self._offset_sum(part.nngp, geometry, state.full),
                                 self._offset_sum(part.ntk, geometry, state.full),
                                 count=self.kernel_size[0] * self.kernel_size[1], owned=True)

    def _offset_sum(self, kernel: Tensor, geometry, full: bool) -> Tensor:
        """Σ_o K(i, i') over the pairs reaching (t, t') through offset o (module docstring), a new array:
        rows first (dilate axes 0 and 2, or 0 for a diagonal, then a window sum), then columns."""
        for axis, (window, stride, (before, after, _)) in enumerate(zip(self.kernel_size, self.stride, geometry)):
            axes = (axis, axis + 2) if full else (axis,)
            kernel = window_sum(_dilate(kernel, axes, stride), axes, window, 1, before, after)
        return kernel

    def ntk_features(self, module, a, d, full: bool):
        """(G (b, k, C_in·C_out·k_h·k_w), Σ_t δ_t (b, k, C_out)), G the per-input weight gradient.

        The transposed convolution is the adjoint of a strided convolution, so its weight gradient is
        G[c_in, (c_out, o)] = Σ_i x[c_in, i] δ_full[c_out, s·i + o]: the input against the stride-s
        patches of δ put back at its full-output positions (zeros where the output was cropped).
        """
        left, right, top, bottom = self._crop(module.node)
        b, k = d.shape[:2]
        delta_full = F.pad(d.flatten(0, 1), (left, right, top, bottom))
        patches = _patches(delta_full, self.kernel_size, self.stride, (0, 0, 0, 0))        # (b·k, C_out·k_h·k_w, S_in)
        patches = patches.reshape(b, k, patches.shape[1], -1)
        return torch.einsum("bcs,bkfs->bkcf", a.flatten(2), patches).flatten(2), d.flatten(3).sum(-1)

    def ntk_feature_numel(self, node: Node, k: int, full: bool) -> int:
        return k * node.in_shape[0] * self.out_channels * self.kernel_size[0] * self.kernel_size[1] + k * self.out_channels

    def ntk_gram(self, module, features1, features2, full: bool) -> Tensor:
        """c Σ G(x)·G(x') + c' (Σ_t δ_t(x))·(Σ_t δ_t(x')), from :meth:`ntk_features`."""
        scale = module.node.scale
        (g1, sums1), (g2, sums2) = features1, features2
        weights = _delta_gram(g1, g2, full).mul_(scale.weight_ntk_factor)
        if scale.bias_ntk_factor:
            weights = weights.add_(_delta_gram(sums1, sums2, full), alpha=scale.bias_ntk_factor)
        return weights


def _dilate(values: Tensor, axes, stride: int) -> Tensor:
    """Insert stride − 1 zeros between neighbouring entries along every axis of ``axes``: n → (n − 1)·stride + 1."""
    if stride == 1:
        return values
    shape = list(values.shape)
    index = [slice(None)] * values.dim()
    for axis in axes:
        shape[axis] = (shape[axis] - 1) * stride + 1
        index[axis] = slice(None, None, stride)
    out = values.new_zeros(shape)
    out[tuple(index)] = values
    return out


def conv_transpose(out_channels: int, kernel_size, stride=1, padding: str = "same", sigma_w: float = 1.0,
                   sigma_b: float = 0.0, bias: bool = True, parametrization: str = "ntk") -> ConvTranspose:
    """A 2-D transposed convolution with ``out_channels`` channels, a ``kernel_size`` filter and ``stride``
    (upsampling by the stride under "same"); ``parametrization`` "ntk" or "standard" (see :class:`ConvTranspose`)."""
    return ConvTranspose(out_channels, kernel_size, stride, padding, sigma_w, sigma_b, bias, parametrization)
