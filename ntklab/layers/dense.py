"""Fully connected and convolutional layers: the two kinds that own weights.

Both compute z = weight_mult · (W ⋆ a) + bias_mult · b with W, b drawn at weight_std, bias_std
(constants of :func:`ntklab.spec.parameter_scale`, by parametrization and role), and share one
kernel rule, the conv one averaging over the window's aligned offsets first:

    Σ_out = σ_w²_eff · E_in + σ_b²_eff
    Θ_out = σ_w²_eff · Θ_in + c · fan_in · E_in + c'

with E_in the input's NNGP (x·x'/n_0, or Σ_c x_{c,s} x'_{c,s'}/C for the first layer; E[φ(u)φ(v)]
after an activation), Θ_in its NTK (0 for the first layer), σ_w²_eff = (weight_std·weight_mult)²·fan_in,
σ_b²_eff = (bias_std·bias_mult)², c = weight_mult², c' = bias_mult². Under "ntk" this is
Θ = Σ + σ_w² Θ_in; under "standard" c·fan_in = fan_in and c' = 1 (the kernel grows with width).
For conv (neural-tangents' convention), E_in and Θ_in at the output positions (s, s') are the
means over the k_h·k_w offsets o of the input's at (stride·s + o, stride·s' + o), zero outside the
input ("same" padding). Kernel arrays are (H, W, H, W, pairs…) or (H, W, pairs…) (see
:mod:`ntklab.layers.core`).
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ntklab.layers.core import (PADDINGS, Layer, Node, Part, Shape, check_int, check_pair, check_real, is_tensor,
                                window_padding, window_sum)
from ntklab.spec import PARAMETRIZATIONS, LayerScale, parameter_scale


class _Parametrized(Layer):
    parametrized = True

    def __init__(self, sigma_w: float, sigma_b: float, bias: bool, parametrization: str, allowed=PARAMETRIZATIONS):
        self.sigma_w = check_real(sigma_w, f"{self.name}: sigma_w", 0.0, strict=True)
        self.sigma_b = check_real(sigma_b, f"{self.name}: sigma_b", 0.0, strict=False)
        if not isinstance(bias, bool):
            raise ValueError(f"{self.name}: bias must be True or False, got {bias!r}")
        if parametrization not in allowed:
            raise ValueError(f"{self.name}: parametrization must be one of {', '.join(allowed)}, got {parametrization!r}")
        self.bias = bias
        self.parametrization = parametrization

    def _scale(self, fan_in: int, fan_out: int, role: str) -> LayerScale:
        return parameter_scale(self.parametrization, role, fan_in, fan_out, self.sigma_w, self.sigma_b, self.bias)

    def weight_shape(self, node: Node) -> Tuple[int, ...]:
        """The shape of W (torch's layout for the layer)."""
        raise NotImplementedError

    def bias_size(self, node: Node) -> int:
        """Entries of b: the output features or channels (W's first dimension unless a layer says otherwise)."""
        return self.weight_shape(node)[0]

    def parameter_count(self, node: Node) -> int:
        """Entries of W and b."""
        return math.prod(self.weight_shape(node)) + (self.bias_size(node) if node.scale.has_bias else 0)

    def init(self, node: Node, generator: torch.Generator) -> dict:
        scale, shape = node.scale, self.weight_shape(node)
        params = {"weight": torch.randn(*shape, generator=generator, dtype=torch.float64) * scale.weight_std}
        if scale.has_bias:
            params["bias"] = torch.randn(self.bias_size(node), generator=generator, dtype=torch.float64) * scale.bias_std
        return params

    @staticmethod
    def _affine_rule(scale: LayerScale, nngp, ntk, count: int = 1, owned: bool = False,
                     ntk_is_zero: bool = False) -> Part:
        """The rule of the module docstring with E_in = nngp / count and Θ_in = ntk / count.

        The conv rule passes the sums over its ``count`` window offsets and the division is folded
        into the constants, which saves a pass over each array. ntk is the state's own array and is
        updated in place; so is nngp where ``owned`` (the conv's offset sum), else it may be a recorded
        variance (see :mod:`ntklab.layers.core`) and is not. Constants that are 0 (σ_b = 0) cost no pass,
        nor does Θ_in where ``ntk_is_zero`` (the input's: ntk only gives its array to write into).
        """
        weight_variance = scale.weight_variance / count
        ntk_weight = scale.weight_ntk_factor * scale.fan_in / count
        if not is_tensor(ntk):      # mpmath object arrays (the spectra's vector nets): count is 1
            ntk = ntk * weight_variance + nngp * ntk_weight + scale.bias_ntk_factor
            return Part(weight_variance * nngp + scale.bias_variance, ntk)
        if ntk_is_zero:
            ntk = torch.mul(nngp, ntk_weight, out=ntk)
        else:
            ntk = ntk.mul_(weight_variance).add_(nngp, alpha=ntk_weight)
        if scale.bias_ntk_factor:
            ntk = ntk.add_(scale.bias_ntk_factor)
        nngp = nngp.mul_(weight_variance) if owned else nngp * weight_variance
        if scale.bias_variance:
            nngp = nngp.add_(scale.bias_variance)
        return Part(nngp, ntk)

    def _extra(self) -> str:
        text = f"sigma_w={self.sigma_w:g}, sigma_b={self.sigma_b:g}"
        if not self.bias:
            text += ", bias=False"
        if self.parametrization != "ntk":
            text += f", {self.parametrization}"
        return text


class Dense(_Parametrized):
    """z = weight_mult · a Wᵀ + bias_mult · b: (N, fan_in) → (N, out_dim). Vectors only."""

    name = "dense"

    def __init__(self, out_dim: int, sigma_w: float = 1.0, sigma_b: float = 0.0, bias: bool = True,
                 parametrization: str = "ntk"):
        self.out_dim = check_int(out_dim, "dense: out_dim")
        super().__init__(sigma_w, sigma_b, bias, parametrization)

    def describe(self) -> str:
        return f"dense({self.out_dim}, {self._extra()})"

    def output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 1:
            raise ValueError(f"dense takes vectors, got inputs of shape {in_shape}; put flatten() or "
                             "global_avg_pool() before it")
        return (self.out_dim,)

    def scale(self, in_shape: Shape, out_shape: Shape, role: str) -> LayerScale:
        return self._scale(in_shape[0], self.out_dim, role)

    def weight_shape(self, node: Node) -> Tuple[int, ...]:
        return (self.out_dim, node.in_shape[0])

    def forward(self, module, a: Tensor) -> Tensor:
        scale = module.node.scale
        z = F.linear(a, module.weight) * scale.weight_mult
        if module.bias is not None:
            z = z + scale.bias_mult * module.bias
        return z

    def rule(self, node: Node, part: Part, q1, q2, state) -> Part:
        return self._affine_rule(node.scale, part.nngp, part.ntk, ntk_is_zero=part.ntk_is_zero)

    def ntk_gram(self, module, features1, features2, full: bool) -> Tensor:
        """(c a·a' + c') (δ·δ'): features (a (b, fan_in), δ (b, k, out_dim))."""
        (a1, d1), (a2, d2) = features1, features2
        scale = module.node.scale
        gram = torch.mm(a1, a2.T).mul_(scale.weight_ntk_factor)                   # (b1, b2)
        if scale.bias_ntk_factor:
            gram.add_(scale.bias_ntk_factor)
        return _times_delta_gram(gram, d1, d2, full)


class _Windowed(_Parametrized):
    """A layer with a k_h × k_w filter of ``out_channels`` channels sliding with a stride (conv, conv_transpose):
    the shared arguments, their checks and description, and the fan-in C_in·k_h·k_w of its scale."""

    parametrizations = ("ntk", "standard")

    def __init__(self, out_channels: int, kernel_size, stride=1, padding: str = "same", sigma_w: float = 1.0,
                 sigma_b: float = 0.0, bias: bool = True, parametrization: str = "ntk"):
        self.out_channels = check_int(out_channels, f"{self.name}: out_channels (channels)")
        self.kernel_size = check_pair(kernel_size, f"{self.name}: kernel_size")
        self.stride = check_pair(stride, f"{self.name}: stride")
        if padding not in PADDINGS:
            raise ValueError(f"{self.name}: padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        self.padding = padding
        super().__init__(sigma_w, sigma_b, bias, parametrization, allowed=self.parametrizations)

    def describe(self) -> str:
        kh, kw = self.kernel_size
        stride = "" if self.stride == (1, 1) else f", stride={self.stride[0] if self.stride[0] == self.stride[1] else self.stride}"
        return f"{self.name}({self.out_channels}, {kh}x{kw}{stride}, {self.padding}, {self._extra()})"

    def scale(self, in_shape: Shape, out_shape: Shape, role: str) -> LayerScale:
        kh, kw = self.kernel_size
        return self._scale(in_shape[0] * kh * kw, self.out_channels, role)


class Conv(_Windowed):
    """2-D convolution (cross-correlation, as torch's conv2d): (N, C_in, H, W) → (N, C_out, H', W')."""

    name = "conv"
    parametrizations = ("ntk", "standard", "mup")

    def output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 3:
            raise ValueError(f"conv takes images (C, H, W), got inputs of shape {in_shape}")
        _, (_, _, out_h), (_, _, out_w) = self._geometry(in_shape)
        return (self.out_channels, out_h, out_w)

    def _geometry(self, in_shape: Shape):
        c, h, w = in_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        try:
            rows, cols = window_padding(h, kh, sh, self.padding), window_padding(w, kw, sw, self.padding)
        except ValueError:
            raise ValueError(f"the {kh}x{kw} kernel is larger than the {h}x{w} input with padding 'valid'") from None
        return c, rows, cols

    def weight_shape(self, node: Node) -> Tuple[int, ...]:
        return (self.out_channels, node.in_shape[0]) + self.kernel_size

    def _pad(self, node: Node) -> Tuple[int, int, int, int]:
        _, (top, bottom, _), (left, right, _) = self._geometry(node.in_shape)
        return left, right, top, bottom

    def forward(self, module, x: Tensor) -> Tensor:
        scale = module.node.scale
        z = F.conv2d(F.pad(x, self._pad(module.node)), module.weight, stride=self.stride) * scale.weight_mult
        if module.bias is not None:
            z = z + scale.bias_mult * module.bias[:, None, None]
        return z

    def rule(self, node: Node, part: Part, q1, q2, state) -> Part:
        pad = self._pad(node)
        (kh, kw), (left, right, top, bottom) = self.kernel_size, pad
        if self.stride == (1, 1) and top + bottom == kh - 1 and left + right == kw - 1:
            # The output has the input's shape: the sums replace the arrays they are made from (the NTK
            # always, the NNGP where the state may overwrite it), through one scratch array for both.
            # The input's zero NTK sums to zero: its array only receives the result.
            scratch = torch.empty_like(part.ntk)
            ntk = part.ntk if part.ntk_is_zero else _same_size_offset_sum(part.ntk, self.kernel_size, pad,
                                                                          state.full, scratch, out=part.ntk)
            nngp = _same_size_offset_sum(part.nngp, self.kernel_size, pad, state.full, scratch,
                                         out=part.nngp if state.may_overwrite_nngp else None)
        else:
            nngp = _offset_sum(part.nngp, self.kernel_size, self.stride, pad, state.full)
            ntk = (torch.empty_like(nngp) if part.ntk_is_zero
                   else _offset_sum(part.ntk, self.kernel_size, self.stride, pad, state.full))
        return self._affine_rule(node.scale, nngp, ntk, count=kh * kw, owned=True, ntk_is_zero=part.ntk_is_zero)

    def _gradient_route(self, node: Node, k: int, full: bool) -> bool:
        """Whether :meth:`ntk_gram` contracts per-input weight gradients G = Σ_s δ_s ⊗ patch_s (k, C_out, F)
        (b1·b2·k·C_out·F, times k if ``full``) rather than summing over pairs of output positions as
        written (b1·b2·S²·(F + k·C_out), S output positions, F = C_in·k_h·k_w; k²·C_out if ``full``, one
        δ·δ' product per pair of outputs): the gradients win unless the output is only a few positions
        wide. Forming G costs k·C_out·F·S per input, once."""
        if _PREFER:
            return _PREFER == "gradients"
        channels, positions, features = self._gram_sizes(node)
        outputs = k * k if full else k
        return outputs * channels * features < positions * positions * (features + outputs * channels)

    def _gram_sizes(self, node: Node) -> Tuple[int, int, int]:
        """(C_out, S output positions, F = C_in·k_h·k_w) of the layer on ``node``'s input."""
        return (self.out_channels, math.prod(node.out_shape[1:]),
                node.in_shape[0] * self.kernel_size[0] * self.kernel_size[1])

    def ntk_features(self, module, a, d, full: bool):
        """(G (b, k, C_out·F), Σ_s δ_s (b, k, C_out)) on the gradient route, else (patches (b, F, S), δ (b, k, C_out, S))."""
        k = d.shape[1]
        patches = _patches(a, self.kernel_size, self.stride, self._pad(module.node))             # (b, F, S)
        deltas = d.flatten(3)                                                                   # (b, k, C, S)
        if self._gradient_route(module.node, k, full):
            return torch.einsum("bkcs,bfs->bkcf", deltas, patches).flatten(2), deltas.sum(-1)
        return patches, deltas

    def ntk_feature_numel(self, node: Node, k: int, full: bool) -> int:
        channels, positions, features = self._gram_sizes(node)
        if self._gradient_route(node, k, full):
            return k * channels * features + k * channels
        return features * positions + k * channels * positions

    def ntk_gram(self, module, features1, features2, full: bool) -> Tensor:
        """c Σ_{s,s'} (patch_s(x)·patch_s'(x')) (δ_s(x)·δ_s'(x')) + c' (Σ_s δ_s(x))·(Σ_s' δ_s'(x')),
        by either exact route of :meth:`_gradient_route` (G(x)·G(x') on the gradient route)."""
        scale = module.node.scale
        if self._gradient_route(module.node, features1[1].shape[1], full):
            (g1, sums1), (g2, sums2) = features1, features2
            weights = _delta_gram(g1, g2, full).mul_(scale.weight_ntk_factor)
        else:
            (p1, e1), (p2, e2) = features1, features2
            patch_gram = torch.einsum("afs,bft->abst", p1, p2)                                 # (b1, b2, S, S)
            if full:
                # one pair of outputs (i, j) at a time: the δ products of all of them at once would be
                # (b1, b2, k, k, S, S), k² times the memory the row chunks were sized for
                k = e1.shape[1]
                weights = patch_gram.new_empty(len(p1), len(p2), k, k)
                for i, j in itertools.product(range(k), repeat=2):
                    delta = torch.einsum("acs,bct->abst", e1[:, i], e2[:, j])
                    weights[:, :, i, j] = delta.mul_(patch_gram).sum((-2, -1))
            else:
                delta = torch.einsum("akcs,bkct->abst", e1, e2)
                weights = (patch_gram * delta).sum((-2, -1))
            weights = weights.mul_(scale.weight_ntk_factor)
            sums1, sums2 = e1.sum(-1), e2.sum(-1)
        if scale.bias_ntk_factor:
            weights = weights.add_(_delta_gram(sums1, sums2, full), alpha=scale.bias_ntk_factor)
        return weights


def _patches(a: Tensor, window, stride, pad) -> Tensor:
    """The receptive fields of every output position: (b, C, H, W) → (b, C·k_h·k_w, S), ordered as
    F.unfold orders them (channel, then row and column offset), from strided slices of the padded
    input (F.unfold's im2col is ~4× slower on the CPU)."""
    (kh, kw), (sh, sw) = window, stride
    padded = F.pad(a, pad)
    out_h, out_w = (padded.shape[2] - kh) // sh + 1, (padded.shape[3] - kw) // sw + 1
    pieces = [padded[:, :, dh: dh + sh * (out_h - 1) + 1: sh, dw: dw + sw * (out_w - 1) + 1: sw]
              for dh in range(kh) for dw in range(kw)]
    return torch.stack(pieces, dim=2).reshape(a.shape[0], a.shape[1] * kh * kw, out_h * out_w)


_PREFER: Optional[str] = None
"""Force one route of :meth:`Conv._gradient_route` ("pairs" or "gradients"); None picks the cheaper. For tests."""


def _delta_gram(d1: Tensor, d2: Tensor, full: bool) -> Tensor:
    """δ1 (b1, k, n), δ2 (b2, k, n) → Σ_n δ1_i δ2_j (b1, b2, k, k), or its trace over i = j (b1, b2)."""
    b1, k = d1.shape[:2]
    b2 = d2.shape[0]
    if full:
        return torch.mm(d1.reshape(b1 * k, -1), d2.reshape(b2 * k, -1).T).reshape(b1, k, b2, k).permute(0, 2, 1, 3)
    return torch.mm(d1.reshape(b1, -1), d2.reshape(b2, -1).T)


def _times_delta_gram(gram: Tensor, d1: Tensor, d2: Tensor, full: bool) -> Tensor:
    """gram (b1, b2) ⊙ (δ·δ'), in the output layout of :meth:`Layer.ntk_gram`."""
    if full:
        return gram[:, :, None, None] * _delta_gram(d1, d2, True)
    return gram.mul_(_delta_gram(d1, d2, False))


def _offset_sum(kernel: Tensor, window, stride, pad, full: bool) -> Tensor:
    """K'(s1, s2) = Σ_o K(stride·s1 + o, stride·s2 + o) over the window's offsets o, zero padded, a new
    array (the conv rule divides by the count in its constants): (H, W, H, W, …) → (H', W', H', W', …)
    if ``full``, else the spatial diagonal (H, W, …) → (H', W', …).

    Separable: the offsets along rows first (k_h strided slices moving both positions), then along
    columns (k_w), so the cost is (k_h + k_w) passes over the output, not k_h·k_w.
    """
    (kh, kw), (sh, sw), (left, right, top, bottom) = window, stride, pad
    rows = window_sum(kernel, (0, 2) if full else (0,), kh, sh, top, bottom)
    return window_sum(rows, (1, 3) if full else (1,), kw, sw, left, right)


def _same_size_offset_sum(kernel: Tensor, window, pad, full: bool, scratch: Optional[Tensor] = None,
                          out: Optional[Tensor] = None) -> Tensor:
    """:func:`_offset_sum` for stride 1 and "same" padding, where the output has the input's shape:
    the offset-0 term is the input itself and every other adds the overlapping block (the padded
    zeros add nothing), without padding a copy.

    The row offsets go into ``scratch``, the column offsets from there into ``out`` (which may be
    ``kernel`` itself: it is read only before); each is allocated when not given or not contiguous.
    The diagonal and full forms add the same terms in the same order, so a pair's spatial diagonal is
    the same number in both.
    """
    (kh, kw) = window
    left, _, top, _ = pad
    h, w = kernel.shape[:2]
    spatial = (h, w, h, w) if full else (h, w)
    values = kernel.reshape(spatial + (-1,))
    as_values = lambda array: array.view(values.shape) if array is not None and array.is_contiguous() else None
    rows = _shift_sum(values, (0, 2) if full else (0,), h, top, kh, out=as_values(scratch))
    return _shift_sum(rows, (1, 3) if full else (1,), w, left, kw, out=as_values(out)).view(kernel.shape)


def _shift_sum(values: Tensor, axes, size: int, before: int, count: int, out: Optional[Tensor] = None) -> Tensor:
    """Σ over offsets o = −before … count−1−before of ``values`` shifted by o along ``axes`` together
    (out[…, i, …, i', …] = Σ_o values[…, i + o, …, i' + o, …]; entries shifted in from outside count
    as 0), into ``out`` (not overlapping ``values``) or a new array.

    The first nonzero offset is added to the offset-0 term out of place, straight into ``out`` over
    its overlap (the rest of ``out`` takes the offset-0 term alone, a copy of thin slabs), and every
    further offset in place: no pass over the whole array only copies it.
    """
    out = torch.empty_like(values) if out is None else out
    offsets = [offset for offset in range(-before, count - before) if offset]
    if not offsets:
        return out.copy_(values)

    def overlap(offset):
        lo, hi = max(0, -offset), min(size, size - offset)
        target, source = [slice(None)] * values.dim(), [slice(None)] * values.dim()
        for axis in axes:
            target[axis], source[axis] = slice(lo, hi), slice(lo + offset, hi + offset)
        return tuple(target), tuple(source), lo, hi

    target, source, lo, hi = overlap(offsets[0])
    torch.add(values[target], values[source], out=out[target])
    # outside the overlap: the axes before `axis` inside [lo, hi), `axis` itself outside it
    for i, axis in enumerate(axes):
        for outside in (slice(0, lo), slice(hi, size)):
            if outside.start < outside.stop:
                index = [slice(None)] * values.dim()
                for inner in axes[:i]:
                    index[inner] = slice(lo, hi)
                index[axis] = outside
                out[tuple(index)] = values[tuple(index)]
    for offset in offsets[1:]:
        target, source, _, _ = overlap(offset)
        out[target].add_(values[source])
    return out


def dense(out_dim: int, sigma_w: float = 1.0, sigma_b: float = 0.0, bias: bool = True,
          parametrization: str = "ntk") -> Dense:
    """A fully connected layer with ``out_dim`` outputs (see :class:`Dense`)."""
    return Dense(out_dim, sigma_w, sigma_b, bias, parametrization)


def conv(out_channels: int, kernel_size, stride=1, padding: str = "same", sigma_w: float = 1.0,
         sigma_b: float = 0.0, bias: bool = True, parametrization: str = "ntk") -> Conv:
    """A 2-D convolution with ``out_channels`` channels and a ``kernel_size`` window (see :class:`Conv`).

    ``padding`` "same" (TensorFlow's: output ⌈size/stride⌉, zeros) or "valid"; ``parametrization``
    "ntk", "standard" or "mup" (μP treats channels as the width).
    """
    return Conv(out_channels, kernel_size, stride, padding, sigma_w, sigma_b, bias, parametrization)
