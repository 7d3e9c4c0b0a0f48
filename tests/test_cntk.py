"""Independent check of the convolutional NNGP/NTK (``ntklab.layers``), float64, CPU.

Three routes to the same kernels, sharing no code:

1. ``_reference_kernels``: a plain full-covariance recursion written here. It carries the JOINT
   covariance of every (input, position) with every other one, a (M·S) × (M·S) matrix for M distinct
   inputs and S positions, and the same for the NTK, and applies each layer's rule with explicit
   loops over kernel offsets / pooling windows. Activations read their variances off that matrix's
   diagonal; the exact self pairs (same input, same position) get correlation exactly 1, so the
   relu arc-cosine terms carry no √ε rounding blow-up there.
2. ``_finite_cnn``: the same description as a finite net in plain torch (``F.conv2d`` on
   TensorFlow-"same"-padded inputs, weights N(0, 1) times the ntk multipliers, or N(0, σ_w²/fan_in)
   under "standard"). Its NNGP is estimated by the readout expectation (σ_w²/n) a·a' + σ_b² over the
   last hidden features a, its NTK by per-input autograd gradients over all parameters, J Jᵀ, both
   averaged over seeded draws at a large channel count. The tests in part A check route 1 against
   route 2: a wrong offset alignment, padding or a diagonal-only (CNN-GP style) shortcut in the
   reference shows up there, and ``test_monte_carlo_has_power`` checks that such mistakes are
   indeed caught at the tolerance used.
3. ``ntklab``'s own ``analytic_kernels`` / ``build_net`` / ``empirical_ntk`` / ``monte_carlo_kernels``
   on ``nl.serial(...)`` architectures translated from the same description (part B). Those
   tests are written to the ``ntklab.layers`` API and import it inside each test.

The descriptions are lists of plain dicts (``_conv``, ``_act``, ... below), not ntklab objects.
"""

import contextlib
import math
import sys

import pytest
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# A net description of our own: a list of dicts.
# --------------------------------------------------------------------------------------------


def _pair(k):
    return (k, k) if isinstance(k, int) else tuple(k)


def _conv(channels, k, stride=1, padding="same", sigma_w=1.0, sigma_b=0.0, bias=True, param="ntk"):
    return dict(kind="conv", channels=channels, k=_pair(k), stride=stride, padding=padding,
                sigma_w=sigma_w, sigma_b=sigma_b, bias=bias, param=param)


def _conv_transpose(channels, k, stride=1, padding="same", sigma_w=1.0, sigma_b=0.0, bias=True, param="ntk"):
    return dict(kind="conv_transpose", channels=channels, k=_pair(k), stride=stride, padding=padding,
                sigma_w=sigma_w, sigma_b=sigma_b, bias=bias, param=param)


def _dense(out, sigma_w=1.0, sigma_b=0.0, bias=True, param="ntk"):
    return dict(kind="dense", out=out, sigma_w=sigma_w, sigma_b=sigma_b, bias=bias, param=param)


def _act(name):
    return dict(kind="act", name=name)


def _avg_pool(k, stride=None):
    return dict(kind="avg_pool", k=k, stride=k if stride is None else stride)


def _gap():
    return dict(kind="gap")


def _flatten():
    return dict(kind="flatten")


def _layer_norm():
    return dict(kind="layer_norm")


def _residual(branch):
    return dict(kind="residual", branch=list(branch))


WIDE = "C"  # placeholder channel count, replaced by _with_channels


def _with_channels(desc, channels):
    """The description with every WIDE conv/dense width replaced by ``channels``."""
    out = []
    for layer in desc:
        layer = dict(layer)
        if layer["kind"] == "residual":
            layer["branch"] = _with_channels(layer["branch"], channels)
        for key in ("channels", "out"):
            if layer.get(key) == WIDE:
                layer[key] = channels
        out.append(layer)
    return out


def _same_padding(size, k, stride):
    """TensorFlow "SAME": (out, pad_left, pad_right) along one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def _conv_geometry(size, k, stride, padding):
    if padding == "same":
        return _same_padding(size, k, stride)
    assert padding == "valid"
    return (size - k) // stride + 1, 0, 0


def _transpose_geometry(size, k, stride, padding):
    """neural-tangents' ConvTranspose (jax's ``lax.conv_transpose``) along one axis: (out, crop).

    jax computes it as a stride-1 convolution of the input dilated by the stride ((size − 1)·stride + 1
    long) padded by (a, b): "SAME" a + b = k + stride − 2 with a = k − 1 if stride > k − 1 else
    ⌈(k + stride − 2)/2⌉; "VALID" a = k − 1, b = stride − 1 + max(k − stride, 0). Against torch's
    uncropped ``conv_transpose2d`` output (size − 1)·stride + k long, which is that convolution with
    a = b = k − 1, output position t is full position t + crop, crop = k − 1 − a."""
    if padding == "same":
        a = k - 1 if stride > k - 1 else math.ceil((k + stride - 2) / 2)
        b = k + stride - 2 - a
    else:
        a, b = k - 1, stride - 1 + max(k - stride, 0)
    return (size - 1) * stride + 1 + a + b - k + 1, k - 1 - a


# --------------------------------------------------------------------------------------------
# Route 1: the reference recursion on joint (M, H, W, M, H, W) covariances.
# --------------------------------------------------------------------------------------------

def _relu_duals(q1, q2, cov, exact_one):
    rho = (cov / torch.sqrt(q1 * q2)).clamp(-1.0, 1.0)
    rho = torch.where(exact_one, torch.ones_like(rho), rho)
    theta = torch.arccos(rho)
    e_phi = torch.sqrt(q1 * q2) / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta))
    e_dphi = (math.pi - theta) / (2 * math.pi)
    return e_phi, e_dphi


def _erf_duals(q1, q2, cov, exact_one):
    a = (1 + 2 * q1) * (1 + 2 * q2)
    e_phi = 2 / math.pi * torch.arcsin(2 * cov / torch.sqrt(a))
    e_dphi = 4 / math.pi / torch.sqrt(a - 4 * cov ** 2)
    return e_phi, e_dphi


DUALS = {"relu": _relu_duals, "erf": _erf_duals}


def _as_matrix(k):
    """A joint kernel as a square matrix over (input, position) points, and its shape."""
    n = int(round(math.sqrt(k.numel())))
    return k.reshape(n, n), k.shape


def _ref_conv(layer, K, T, in_channels):
    kh, kw = layer["k"]
    s = layer["stride"]
    M, H, W = K.shape[:3]
    Ho, ph, _ = _conv_geometry(H, kh, s, layer["padding"])
    Wo, pw, _ = _conv_geometry(W, kw, s, layer["padding"])

    def average_over_offsets(A):
        # Zero-pad both position axes generously, then for each offset (i, j) read the pair
        # (s·p + i − pad_left, s·p' + i − pad_left) — the same offset for both positions.
        Hp, Wp = s * (Ho - 1) + kh, s * (Wo - 1) + kw
        P = torch.zeros(M, Hp + H, Wp + W, M, Hp + H, Wp + W, dtype=A.dtype)
        P[:, ph:ph + H, pw:pw + W, :, ph:ph + H, pw:pw + W] = A
        out = torch.zeros(M, Ho, Wo, M, Ho, Wo, dtype=A.dtype)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i, i + s * (Ho - 1) + 1, s)
                cols = slice(j, j + s * (Wo - 1) + 1, s)
                out += P[:, rows, cols, :, rows, cols]
        return out / (kh * kw)

    return _ref_linear(layer, average_over_offsets(K), average_over_offsets(T), in_channels * kh * kw)


def _ref_conv_transpose(layer, K, T, in_channels):
    """Σ_out = σ_w²/(k_h k_w) Σ_o A_o Σ_in A_oᵀ (+ σ_b²) with A_o the 0/1 map sending input position i
    to output t where stride·i + o = t + crop (per axis; the offset o is shared by both positions)."""
    kh, kw = layer["k"]
    s = layer["stride"]
    M, H, W = K.shape[:3]
    (Ho, crop_h), (Wo, crop_w) = (_transpose_geometry(H, kh, s, layer["padding"]),
                                  _transpose_geometry(W, kw, s, layer["padding"]))

    def spread(n_in, n_out, offset, crop):
        A = torch.zeros(n_out, n_in, dtype=K.dtype)
        for t in range(n_out):
            for i in range(n_in):
                if s * i + offset == t + crop:
                    A[t, i] = 1.0
        return A

    def average_over_offsets(X):
        out = torch.zeros(M, Ho, Wo, M, Ho, Wo, dtype=X.dtype)
        for i in range(kh):
            for j in range(kw):
                Ah, Aw = spread(H, Ho, i, crop_h), spread(W, Wo, j, crop_w)
                out += torch.einsum("th,uw,ahwbij,vi,xj->atubvx", Ah, Aw, X, Ah, Aw)
        return out / (kh * kw)

    return _ref_linear(layer, average_over_offsets(K), average_over_offsets(T), in_channels * kh * kw)


def _ref_linear(layer, avg_k, avg_t, fan_in):
    """Σ_out = σ_w² avg Σ_in + σ_b²;  Θ_out = (ntk) Σ_out + σ_w² avg Θ_in
    or (standard) fan_in·avg Σ_in + 1 + σ_w² avg Θ_in (bias terms only with a bias)."""
    sw2 = layer["sigma_w"] ** 2
    sb2 = layer["sigma_b"] ** 2 if layer["bias"] else 0.0
    K = sw2 * avg_k + sb2
    if layer["param"] == "ntk":
        T = K + sw2 * avg_t
    else:
        assert layer["param"] == "standard"
        T = fan_in * avg_k + (1.0 if layer["bias"] else 0.0) + sw2 * avg_t
    return K, T


def _ref_avg_pool(layer, K, T):
    k, s = layer["k"], layer["stride"]
    M, H, W = K.shape[:3]
    Ho, Wo = (H - k) // s + 1, (W - k) // s + 1

    def pool(A):
        out = torch.zeros(M, Ho, Wo, M, Ho, Wo, dtype=A.dtype)
        for i1 in range(k):
            for j1 in range(k):
                for i2 in range(k):
                    for j2 in range(k):
                        out += A[:, i1:i1 + s * (Ho - 1) + 1:s, j1:j1 + s * (Wo - 1) + 1:s,
                                 :, i2:i2 + s * (Ho - 1) + 1:s, j2:j2 + s * (Wo - 1) + 1:s]
        return out / k ** 4

    return pool(K), pool(T)


def _ref_layers(desc, K, T, channels):
    """Apply the description to the joint kernels (K, T); ``channels`` = current channel count."""
    for layer in desc:
        kind = layer["kind"]
        if kind == "conv":
            assert K.dim() == 6
            K, T = _ref_conv(layer, K, T, channels)
            channels = layer["channels"]
        elif kind == "conv_transpose":
            assert K.dim() == 6
            K, T = _ref_conv_transpose(layer, K, T, channels)
            channels = layer["channels"]
        elif kind == "dense":
            assert K.dim() == 2
            K, T = _ref_linear(layer, K, T, channels)
            channels = layer["out"]
        elif kind == "act":
            Km, shape = _as_matrix(K)
            Tm, _ = _as_matrix(T)
            q = torch.diagonal(Km)
            exact_one = torch.eye(len(q), dtype=torch.bool)
            e_phi, e_dphi = DUALS[layer["name"]](q[:, None], q[None, :], Km, exact_one)
            K, T = e_phi.reshape(shape), (e_dphi * Tm).reshape(shape)
        elif kind == "layer_norm":
            Km, shape = _as_matrix(K)
            Tm, _ = _as_matrix(T)
            q = torch.diagonal(Km)
            scale = torch.sqrt(q[:, None] * q[None, :])
            K, T = (Km / scale).reshape(shape), (Tm / scale).reshape(shape)
        elif kind == "avg_pool":
            K, T = _ref_avg_pool(layer, K, T)
        elif kind == "gap":
            K, T = K.mean(dim=(1, 2, 4, 5)), T.mean(dim=(1, 2, 4, 5))
        elif kind == "flatten":
            S = K.shape[1] * K.shape[2]
            channels = channels * S
            K, T = torch.einsum("ahwbhw->ab", K) / S, torch.einsum("ahwbhw->ab", T) / S
        elif kind == "residual":
            Kb, Tb, _ = _ref_layers(layer["branch"], K, T, channels)
            K, T = K + Kb, T + Tb
        else:
            raise ValueError(kind)
    return K, T, channels


def _distinct_rows(x1, x2):
    """The distinct inputs among x1 and x2 (exact equality) and where each row of x1, x2 lives."""
    points, index = [], []
    for x in torch.cat([x1, x2]):
        for m, p in enumerate(points):
            if torch.equal(p, x):
                index.append(m)
                break
        else:
            points.append(x)
            index.append(len(points) - 1)
    index = torch.tensor(index)
    return torch.stack(points), index[:len(x1)], index[len(x1):]


def _reference_kernels(desc, x1, x2=None):
    """(NNGP, NTK), each (N1, N2) float64, of the described net; x2=None means x1."""
    x2 = x1 if x2 is None else x2
    X, i1, i2 = _distinct_rows(x1.to(torch.float64), x2.to(torch.float64))
    C = X.shape[1]
    K = torch.einsum("achw,bcij->ahwbij", X, X) / C   # Σ⁰ over all (input, position) pairs
    T = torch.zeros_like(K)
    K, T, _ = _ref_layers(desc, K, T, C)
    assert K.shape == (len(X), len(X)), "the description must end in a vector output"
    return K[i1][:, i2], T[i1][:, i2]


# --------------------------------------------------------------------------------------------
# Route 2: finite CNNs in plain torch, and their Monte Carlo kernels.
# --------------------------------------------------------------------------------------------

def _finite_cnn(desc, in_shape, channels, seed):
    """A finite net for ``desc`` with every WIDE width set to ``channels``.

    Returns (params, forward) with forward(x) -> (outputs (N, k), readout features (N, n)); the
    readout features are the input of the final dense layer.
    """
    gen = torch.Generator().manual_seed(seed)
    params = []

    def normal(*shape):
        p = torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)
        params.append(p)
        return p

    def build(layers, shape):
        """Create the parameters for ``layers`` on input ``shape``; return (steps, out shape)."""
        steps = []
        for layer in layers:
            kind = layer["kind"]
            if kind in ("conv", "conv_transpose", "dense"):
                if kind == "conv":
                    c_in, H, W = shape
                    kh, kw = layer["k"]
                    fan_in, fan_out = c_in * kh * kw, layer["channels"]
                    w = normal(fan_out, c_in, kh, kw)
                elif kind == "conv_transpose":
                    c_in, H, W = shape
                    kh, kw = layer["k"]
                    fan_in, fan_out = c_in * kh * kw, layer["channels"]
                    w = normal(c_in, fan_out, kh, kw)
                else:
                    (fan_in,), fan_out = shape, layer["out"]
                    w = normal(fan_out, fan_in)
                b = normal(fan_out) if layer["bias"] else None
                if layer["param"] == "ntk":
                    wm, bm = layer["sigma_w"] / math.sqrt(fan_in), layer["sigma_b"]
                else:  # standard: draw N(0, σ²) directly, multiplier 1
                    with torch.no_grad():
                        w.mul_(layer["sigma_w"] / math.sqrt(fan_in))
                        if b is not None:
                            b.mul_(layer["sigma_b"])
                    wm, bm = 1.0, 1.0
                if kind == "conv":
                    s = layer["stride"]
                    Ho, ph0, ph1 = _conv_geometry(H, kh, s, layer["padding"])
                    Wo, pw0, pw1 = _conv_geometry(W, kw, s, layer["padding"])

                    def step(a, w=w, b=b, wm=wm, bm=bm, s=s, pad=(pw0, pw1, ph0, ph1)):
                        z = wm * F.conv2d(F.pad(a, pad), w, stride=s)
                        return z if b is None else z + bm * b[None, :, None, None]

                    shape = (fan_out, Ho, Wo)
                elif kind == "conv_transpose":
                    s = layer["stride"]
                    (Ho, crop_h), (Wo, crop_w) = (_transpose_geometry(H, kh, s, layer["padding"]),
                                                  _transpose_geometry(W, kw, s, layer["padding"]))

                    def step(a, w=w, b=b, wm=wm, bm=bm, s=s, crop=(crop_h, crop_w), out=(Ho, Wo)):
                        full = wm * F.conv_transpose2d(a, w, stride=s)
                        z = full.new_zeros(full.shape[:2] + out)     # positions past the full output: bias only
                        rows = min(out[0], full.shape[2] - crop[0])
                        cols = min(out[1], full.shape[3] - crop[1])
                        z[:, :, :rows, :cols] = full[:, :, crop[0]:crop[0] + rows, crop[1]:crop[1] + cols]
                        return z if b is None else z + bm * b[None, :, None, None]

                    shape = (fan_out, Ho, Wo)
                else:
                    def step(a, w=w, b=b, wm=wm, bm=bm):
                        z = wm * a @ w.T
                        return z if b is None else z + bm * b

                    shape = (fan_out,)
                steps.append((kind, step))
            elif kind == "act":
                steps.append((kind, {"relu": torch.relu, "erf": torch.erf}[layer["name"]]))
            elif kind == "layer_norm":
                def step(z):
                    mean = z.mean(dim=1, keepdim=True)
                    var = z.var(dim=1, unbiased=False, keepdim=True)
                    return (z - mean) / torch.sqrt(var + 1e-5)
                steps.append((kind, step))
            elif kind == "avg_pool":
                c, H, W = shape
                k, s = layer["k"], layer["stride"]
                steps.append((kind, lambda a, k=k, s=s: F.avg_pool2d(a, k, stride=s)))
                shape = (c, (H - k) // s + 1, (W - k) // s + 1)
            elif kind == "gap":
                steps.append((kind, lambda a: a.mean(dim=(2, 3))))
                shape = shape[:1]
            elif kind == "flatten":
                steps.append((kind, lambda a: a.flatten(1)))
                shape = (math.prod(shape),)
            elif kind == "residual":
                branch, branch_shape = build(layer["branch"], shape)
                assert branch_shape == shape
                steps.append((kind, lambda a, branch=branch: a + run(branch, a)[0]))
            else:
                raise ValueError(kind)
        return steps, shape

    def run(steps, a):
        features = None
        for kind, step in steps:
            features = a
            a = step(a)
        return a, features

    steps, _ = build(_with_channels(desc, channels), tuple(in_shape))
    assert desc[-1]["kind"] == "dense"

    def forward(x):
        return run(steps, x)

    return params, forward


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread, then restore: these small float64 convs and per-input backward
    passes ran 7–10× faster on one thread than on two (measured; intra-op hand-offs dominate,
    and much more so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _monte_carlo(desc, x, channels, n_samples, seed):
    """Averaged readout-expectation NNGP and autograd NTK (J Jᵀ) of finite nets, (N, N) each."""
    with _one_thread():
        return _monte_carlo_sums(desc, x, channels, n_samples, seed)


def _monte_carlo_sums(desc, x, channels, n_samples, seed):
    last = desc[-1]
    nngp = torch.zeros(len(x), len(x), dtype=torch.float64)
    ntk = torch.zeros_like(nngp)
    for m in range(n_samples):
        params, forward = _finite_cnn(desc, x.shape[1:], channels, seed=seed + m)
        out, features = forward(x)
        n = features.shape[1]
        bias = last["sigma_b"] ** 2 if last["bias"] else 0.0
        nngp += (last["sigma_w"] ** 2 / n * features @ features.T + bias).detach()
        rows = []
        for i in range(len(x)):
            # out[i, 0] (the first output) depends on x[i] only, so this is the per-input gradient.
            grads = torch.autograd.grad(out[i, 0], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        J = torch.stack(rows)
        ntk += J @ J.T
    return nngp / n_samples, ntk / n_samples


def _rel_fro(a, b):
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


# --------------------------------------------------------------------------------------------
# The layer mixes, shared by both parts. WIDE convs/denses get the Monte Carlo width in part A and
# NARROW channels in part B (where the width only matters under "standard").
# --------------------------------------------------------------------------------------------

SW, SB = 1.5, 0.1

MIXES = {
    # same → stride-2 valid, global average pool readout, relu
    "same_valid_stride2_gap_relu": [
        _conv(WIDE, 3, sigma_w=SW, sigma_b=SB), _act("relu"),
        _conv(WIDE, 3, stride=2, padding="valid", sigma_w=SW, sigma_b=SB), _act("relu"),
        _gap(), _dense(1, sigma_w=SW, sigma_b=SB)],
    # rectangular kernel with stride-2 "same" (asymmetric padding: left 0, right 1 on 6 → 3),
    # even kernel with "same" (left 0, right 1), flatten readout, a dense hidden layer, erf
    "asym_same_flatten_dense_erf": [
        _conv(WIDE, (3, 2), stride=2, sigma_w=SW, sigma_b=SB), _act("erf"),
        _conv(WIDE, 2, sigma_w=1.2, sigma_b=0.2), _act("erf"),
        _flatten(), _dense(WIDE, sigma_w=SW, sigma_b=SB), _act("erf"), _dense(1, sigma_w=SW, sigma_b=SB)],
    # average pooling between convs, flatten readout, no bias in the first conv
    "avg_pool_flatten_relu": [
        _conv(WIDE, 3, sigma_w=SW, bias=False), _act("relu"), _avg_pool(2),
        _conv(WIDE, 2, padding="valid", sigma_w=SW, sigma_b=SB), _act("relu"),
        _flatten(), _dense(1, sigma_w=SW, sigma_b=SB)],
    # a residual block
    "residual_gap_relu": [
        _conv(WIDE, 3, sigma_w=SW, sigma_b=SB), _act("relu"),
        _residual([_conv(WIDE, 3, sigma_w=SW, sigma_b=SB), _act("relu"), _conv(WIDE, 3, sigma_w=1.0)]),
        _gap(), _dense(1, sigma_w=SW, sigma_b=SB)],
    # layer norm right after a conv, mixed activations
    "layer_norm_erf_relu": [
        _conv(WIDE, 3, sigma_w=SW, sigma_b=SB), _layer_norm(), _act("erf"),
        _conv(WIDE, 3, stride=2, sigma_w=SW, sigma_b=SB), _act("relu"),
        _gap(), _dense(1, sigma_w=SW, sigma_b=SB)],
    # standard parametrization in the convs (its NTK grows with the channel count)
    "standard_convs": [
        _conv(WIDE, 3, sigma_w=SW, sigma_b=SB, param="standard"), _act("relu"),
        _conv(WIDE, 3, padding="valid", sigma_w=SW, sigma_b=0.0, param="standard"), _act("relu"),
        _gap(), _dense(1, sigma_w=SW, sigma_b=SB)],
}

# transposed convolutions (the generator's layer): "same" upsampling by 2 with a 3×3 filter (k not a
# multiple of the stride: a checkerboard in the variances), then "valid" (2, 3) by stride 2 on rows
# past the full output (k < stride along rows: bias-only positions), flatten readout
MIXES["conv_transpose_relu"] = [
    _conv(WIDE, 3, stride=2, sigma_w=SW, sigma_b=SB), _act("relu"),
    _conv_transpose(WIDE, 3, stride=2, sigma_w=SW, sigma_b=SB), _act("relu"),
    _conv_transpose(WIDE, (1, 3), stride=2, padding="valid", sigma_w=SW, sigma_b=0.3), _act("erf"),
    _flatten(), _dense(1, sigma_w=SW, sigma_b=SB)]

# Light enough for the fast suite; the rest are @slow.
FAST_MIXES = ["same_valid_stride2_gap_relu", "avg_pool_flatten_relu", "layer_norm_erf_relu", "standard_convs",
              "conv_transpose_relu"]


def _images(n, c=2, h=6, w=6, seed=0):
    """Gaussian images under a ramp, brighter towards the bottom-right: a border or offset placed
    on the wrong side then changes the kernels by tens of percent (test_monte_carlo_has_power)."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.2, 2.0, h, dtype=torch.float64)[:, None] * torch.linspace(0.2, 2.0, w, dtype=torch.float64)
    return torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * ramp


# --------------------------------------------------------------------------------------------
# Part A: the reference against Monte Carlo of finite nets (passes without ntklab.layers).
# --------------------------------------------------------------------------------------------

MC_CHANNELS = 128
MC_SAMPLES = 128
MC_SEED = 1000
# Tolerances on the relative Frobenius error ‖MC − ref‖_F / ‖ref‖_F of the 4×4 kernels (NNGP, NTK)
# at 128 channels and 128 draws. The error is Monte Carlo noise ≈ (1–2)/√(channels · draws): the
# cost of a draw grows like channels², so at fixed time many draws at 128 channels beat few at 256
# (256 channels × 32 draws gave worst errors of 0.03–0.06). Measured over 10 disjoint seed sets per
# mix (MC_SEED + 100·r, r = 0..9), worst [mean] of the 10:
#   same_valid_stride2_gap_relu   NNGP 0.015 [0.010]  NTK 0.014 [0.009]
#   asym_same_flatten_dense_erf   NNGP 0.027 [0.017]  NTK 0.024 [0.016]
#   avg_pool_flatten_relu         NNGP 0.026 [0.012]  NTK 0.015 [0.010]
#   residual_gap_relu             NNGP 0.023 [0.011]  NTK 0.018 [0.010]
#   layer_norm_erf_relu           NNGP 0.016 [0.009]  NTK 0.014 [0.010]
#   standard_convs                NNGP 0.015 [0.008]  NTK 0.019 [0.009]
#   conv_transpose_relu           NNGP 0.007 [0.004]  NTK 0.008 [0.005]
# Each bound below is ≥ 3× the worst seen for that mix. The finite-width bias is below that: 800
# draws at 128 channels and 400 at 256 left 0.001–0.012 on every mix (0.003–0.008 at 256).
# test_monte_carlo_has_power shows that a "same" border on the wrong side or a diagonal-only
# readout errs by 3–12× these bounds (0.28–0.43 and 0.40–0.59 at MC_SEED), and a transposed conv
# cropped on the other side (torch's habit for odd filters) by 4–6× (0.10, 0.16).
MC_TOL = {
    "same_valid_stride2_gap_relu": (0.05, 0.05),
    "asym_same_flatten_dense_erf": (0.09, 0.08),
    "avg_pool_flatten_relu": (0.08, 0.05),
    "residual_gap_relu": (0.07, 0.06),
    "layer_norm_erf_relu": (0.05, 0.05),
    "standard_convs": (0.05, 0.06),
    "conv_transpose_relu": (0.025, 0.025),
}
POWER_MARGIN = 2.0


def _check_against_monte_carlo(name, seed=MC_SEED):
    desc = _with_channels(MIXES[name], MC_CHANNELS)
    x = _images(4)
    ref_nngp, ref_ntk = _reference_kernels(desc, x)
    mc_nngp, mc_ntk = _monte_carlo(MIXES[name], x, MC_CHANNELS, MC_SAMPLES, seed)
    err_nngp, err_ntk = _rel_fro(mc_nngp, ref_nngp), _rel_fro(mc_ntk, ref_ntk)
    tol_nngp, tol_ntk = MC_TOL[name]
    assert err_nngp < tol_nngp, (name, "nngp", err_nngp)
    assert err_ntk < tol_ntk, (name, "ntk", err_ntk)


@pytest.mark.parametrize("name", FAST_MIXES)
def test_reference_matches_monte_carlo(name):
    _check_against_monte_carlo(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MIXES if n not in FAST_MIXES])
def test_reference_matches_monte_carlo_slow(name):
    _check_against_monte_carlo(name)


@pytest.mark.slow
def test_monte_carlo_has_power(monkeypatch):
    # The Monte Carlo tolerance rejects plausible reference bugs, so part A means something:
    #  * the diagonal-only (CNN-GP-style) shortcut: a global average pool read off the spatial
    #    diagonal Σ(s, s) only, as flatten does, dropping the cross-position covariances;
    #  * TensorFlow "same" padding put on the wrong side (right = total // 2): on the ramp images
    #    the asymmetric stride-2 (3, 2) conv and the even 2×2 conv then see the wrong border.
    x = _images(4)
    name = "same_valid_stride2_gap_relu"
    desc = _with_channels(MIXES[name], MC_CHANNELS)
    mc_nngp, mc_ntk = _monte_carlo(MIXES[name], x, MC_CHANNELS, MC_SAMPLES, MC_SEED)
    wrong = [_flatten() if layer["kind"] == "gap" else layer for layer in desc]
    wrong_nngp, wrong_ntk = _reference_kernels(wrong, x)
    assert _rel_fro(mc_nngp, wrong_nngp) > POWER_MARGIN * MC_TOL[name][0]
    assert _rel_fro(mc_ntk, wrong_ntk) > POWER_MARGIN * MC_TOL[name][1]

    name = "asym_same_flatten_dense_erf"
    desc = _with_channels(MIXES[name], MC_CHANNELS)
    mc_nngp, mc_ntk = _monte_carlo(MIXES[name], x, MC_CHANNELS, MC_SAMPLES, MC_SEED)
    right_side = _same_padding

    def wrong_side(size, k, stride):
        out, left, right = right_side(size, k, stride)
        return out, right, left

    monkeypatch.setattr(sys.modules[__name__], "_same_padding", wrong_side)
    wrong_nngp, wrong_ntk = _reference_kernels(desc, x)
    assert _rel_fro(mc_nngp, wrong_nngp) > POWER_MARGIN * MC_TOL[name][0]
    assert _rel_fro(mc_ntk, wrong_ntk) > POWER_MARGIN * MC_TOL[name][1]

    #  * a transposed conv cropped on the other side: the 3×3 stride-2 "same" layer keeps full
    #    positions 1..6 instead of 0..5 (torch's padding=1, output_padding=1 does that)
    name = "conv_transpose_relu"
    desc = _with_channels(MIXES[name], MC_CHANNELS)
    mc_nngp, mc_ntk = _monte_carlo(MIXES[name], x, MC_CHANNELS, MC_SAMPLES, MC_SEED)
    right_crop = _transpose_geometry

    def other_side(size, k, stride, padding):
        out, crop = right_crop(size, k, stride, padding)
        return out, (size - 1) * stride + k - out - crop

    monkeypatch.setattr(sys.modules[__name__], "_transpose_geometry", other_side)
    wrong_nngp, wrong_ntk = _reference_kernels(desc, x)
    assert _rel_fro(mc_nngp, wrong_nngp) > POWER_MARGIN * MC_TOL[name][0]
    assert _rel_fro(mc_ntk, wrong_ntk) > POWER_MARGIN * MC_TOL[name][1]


def test_reference_linear_closed_form():
    # Sanity check of the reference on its own: two bias-free 1×1 convs (no activation), global
    # average pooling and a bias-free dense readout. A 1×1 conv leaves the kernel's spatial
    # structure alone, so Σ = (σ_1 σ_2 σ_3)² · mean_{s,s'} Σ⁰(s, s') = (σ_1 σ_2 σ_3)² x̄·x̄'/C with x̄
    # the per-channel mean image, and Θ = 3 Σ (under ntk each bias-free layer adds Σ).
    x1, x2 = _images(3), _images(2, seed=1)
    desc = [_conv(5, 1, sigma_w=1.3, bias=False), _conv(7, 1, sigma_w=0.7, bias=False),
            _gap(), _dense(1, sigma_w=1.1, bias=False)]
    nngp, ntk = _reference_kernels(desc, x1, x2)
    expected = (1.3 * 0.7 * 1.1) ** 2 * torch.einsum("ac,bc->ab", x1.mean(dim=(2, 3)), x2.mean(dim=(2, 3))) / 2
    torch.testing.assert_close(nngp, expected, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(ntk, 3 * expected, rtol=1e-13, atol=1e-15)


def test_reference_is_exact_on_self_pairs():
    # The reference puts ρ = 1 exactly on (same input, same position); with x1 == x2 given as
    # separate tensors it must agree with x2=None bit for bit, and be symmetric.
    x = _images(3)
    desc = _with_channels(MIXES["same_valid_stride2_gap_relu"], 8)
    a = _reference_kernels(desc, x)
    b = _reference_kernels(desc, x, x.clone())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[1], a[1].T, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------------
# Part B: ntklab.layers against the reference (needs ntklab.layers; fails until it exists).
# --------------------------------------------------------------------------------------------

NARROW = 8

# Off-diagonal entries (x ≠ x'): the same float64 recursion by two codes through ~4–8 layers,
# each adding a few ulps (≈ 1e-16 relative) — arccos/arcsin are well conditioned away from ρ = ±1
# — so 1e-10 of the largest entry leaves ~1e5× margin for summation order.
RTOL_OFF_DIAGONAL = 1e-10
# Diagonal entries (x = x'): at a position paired with itself ρ = 1 up to rounding, and a code that
# computes θ = arccos(ρ) from rounded kernels gets θ ≈ √(2·1e-16) ≈ 1.5e-8 instead of 0; the relu
# NTK factor (π − θ)/(2π) inherits that linearly (≈ 2e-9 relative per relu layer). The reference
# is exact there. Measured: setting every self-pair ρ to 1 − k·2⁻⁵³ in the reference moves these
# mixes' kernels by at most 3.7e-9, 7.5e-9, 1.5e-8 of the largest entry for k = 1, 4, 16 ulps, and
# only on the diagonal; 1e-7 allows ~100 ulps while still catching any real rule error.
RTOL_DIAGONAL = 1e-7


def _nl_layers(nl, desc):
    out = []
    for layer in desc:
        kind = layer["kind"]
        if kind == "conv":
            out.append(nl.conv(layer["channels"], layer["k"], stride=layer["stride"], padding=layer["padding"],
                               sigma_w=layer["sigma_w"], sigma_b=layer["sigma_b"], bias=layer["bias"],
                               parametrization=layer["param"]))
        elif kind == "dense":
            extra = {}
            if not layer["bias"]:
                extra["bias"] = False
            if layer["param"] != "ntk":
                extra["parametrization"] = layer["param"]
            out.append(nl.dense(layer["out"], sigma_w=layer["sigma_w"], sigma_b=layer["sigma_b"], **extra))
        elif kind == "act":
            out.append(nl.activation(layer["name"]))
        elif kind == "layer_norm":
            out.append(nl.layer_norm())
        elif kind == "conv_transpose":
            out.append(nl.conv_transpose(layer["channels"], layer["k"], stride=layer["stride"],
                                         padding=layer["padding"], sigma_w=layer["sigma_w"],
                                         sigma_b=layer["sigma_b"], bias=layer["bias"], parametrization=layer["param"]))
        elif kind == "avg_pool":
            out.append(nl.avg_pool(layer["k"], stride=layer["stride"]))
        elif kind == "gap":
            out.append(nl.global_avg_pool())
        elif kind == "flatten":
            out.append(nl.flatten())
        elif kind == "residual":
            out.append(nl.residual(nl.serial(*_nl_layers(nl, layer["branch"]))))
        else:
            raise ValueError(kind)
    return out


def _ntklab_arch(desc):
    from ntklab import layers as nl

    return nl.serial(*_nl_layers(nl, desc))


def _assert_close_scaled(actual, expected, rtol, what):
    scale = expected.abs().max()
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"{what}: max |Δ| / max |ref| = {err:.3g} > {rtol:g}"


def _split_diagonal(k):
    eye = torch.eye(k.shape[0], dtype=torch.bool)
    return k[eye], k[~eye]


@pytest.mark.parametrize("name", list(MIXES))
def test_ntklab_analytic_matches_reference(name):
    from ntklab import analytic_kernels

    desc = _with_channels(MIXES[name], NARROW)
    arch = _ntklab_arch(desc)
    x1, x2 = _images(4, seed=2), _images(3, seed=3)

    # Distinct inputs: every entry is an x ≠ x' pair.
    ref_nngp, ref_ntk = _reference_kernels(desc, x1, x2)
    k = analytic_kernels(arch, x1, x2)
    assert k.nngp.shape == (4, 3) and k.ntk.shape == (4, 3)
    assert k.nngp.dtype == torch.float64 and k.ntk.dtype == torch.float64
    _assert_close_scaled(k.nngp, ref_nngp, RTOL_OFF_DIAGONAL, f"{name} nngp(x1, x2)")
    _assert_close_scaled(k.ntk, ref_ntk, RTOL_OFF_DIAGONAL, f"{name} ntk(x1, x2)")

    # x2=None: off-diagonal entries as tight, the diagonal at the ρ≈1 tolerance.
    ref_nngp, ref_ntk = _reference_kernels(desc, x1)
    k = analytic_kernels(arch, x1)
    for got, ref, what in [(k.nngp, ref_nngp, "nngp"), (k.ntk, ref_ntk, "ntk")]:
        assert got.shape == (4, 4)
        got_diag, got_off = _split_diagonal(got)
        ref_diag, ref_off = _split_diagonal(ref)
        _assert_close_scaled(got_off, ref_off, RTOL_OFF_DIAGONAL * ref.abs().max() / ref_off.abs().max(),
                             f"{name} {what}(x1) off-diagonal")
        _assert_close_scaled(got_diag, ref_diag, RTOL_DIAGONAL, f"{name} {what}(x1) diagonal")


@pytest.mark.parametrize("name", list(MIXES))
def test_ntklab_diagonal_and_symmetric_calls(name):
    from ntklab import analytic_kernels

    desc = _with_channels(MIXES[name], NARROW)
    arch = _ntklab_arch(desc)
    x1 = _images(4, seed=2)
    full = analytic_kernels(arch, x1)
    same = analytic_kernels(arch, x1, x1)
    diag = analytic_kernels(arch, x1, diagonal=True)
    ref_nngp, ref_ntk = _reference_kernels(desc, x1)
    for what in ("nngp", "ntk"):
        f, s, d = getattr(full, what), getattr(same, what), getattr(diag, what)
        ref = {"nngp": ref_nngp, "ntk": ref_ntk}[what]
        assert d.shape == (4,) and d.dtype == torch.float64
        _assert_close_scaled(d, torch.diagonal(f), RTOL_DIAGONAL, f"{name} {what} diagonal=True vs full")
        _assert_close_scaled(d, torch.diagonal(ref), RTOL_DIAGONAL, f"{name} {what} diagonal=True vs ref")
        # x2=None equals x2=x1: off-diagonal tight, diagonal at the ρ≈1 tolerance.
        f_diag, f_off = _split_diagonal(f)
        s_diag, s_off = _split_diagonal(s)
        _assert_close_scaled(s_off, f_off, RTOL_OFF_DIAGONAL, f"{name} {what} x2=x1 vs None, off-diagonal")
        _assert_close_scaled(s_diag, f_diag, RTOL_DIAGONAL, f"{name} {what} x2=x1 vs None, diagonal")
        torch.testing.assert_close(f, f.T, rtol=RTOL_OFF_DIAGONAL, atol=0)


def _autograd_ntk(net, x1, x2):
    params = [p for p in net.parameters() if p.requires_grad]

    def jacobian(x):
        rows = []
        for i in range(len(x)):
            out = net(x[i:i + 1])
            assert out.shape == (1, 1)
            grads = torch.autograd.grad(out[0, 0], params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        return torch.stack(rows)

    return jacobian(x1) @ jacobian(x2).T


@pytest.mark.parametrize("name", list(MIXES))
def test_ntklab_structured_ntk_equals_autograd(name):
    # ntklab's per-layer structured empirical NTK against plain autograd J Jᵀ of the same module:
    # an exact identity in float64, so the same 1e-10 (rounding only) bound.
    from ntklab import build_net, empirical_ntk

    desc = _with_channels(MIXES[name], NARROW)
    x1, x2 = _images(4, seed=2), _images(3, seed=3)
    net = build_net(_ntklab_arch(desc), in_shape=x1.shape[1:], seed=0, dtype=torch.float64)
    assert net(x1).shape == (4, 1)
    theta = empirical_ntk(net, x1, x2, method="structured")
    assert theta.shape == (4, 3)
    _assert_close_scaled(theta, _autograd_ntk(net, x1, x2), 1e-10, f"{name} structured vs autograd")


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST_MIXES)
def test_ntklab_monte_carlo_matches_reference(name):
    # ntklab's finite nets (its own weight draws, forward pass and empirical kernels) against the
    # reference, at the part-A width and draw count, so the part-A tolerances apply. (The NNGP
    # check assumes the low-variance "readout" estimate, ntklab's default for MLPs; an
    # f(x)f(x') estimate would be far noisier.)
    from ntklab import analytic_kernels, monte_carlo_kernels

    desc = _with_channels(MIXES[name], MC_CHANNELS)
    arch = _ntklab_arch(desc)
    x = _images(4)
    with _one_thread():
        mc = monte_carlo_kernels(arch, x, x, n_samples=MC_SAMPLES, seed=MC_SEED)
    ref_nngp, ref_ntk = _reference_kernels(desc, x)
    tol_nngp, tol_ntk = MC_TOL[name]
    assert _rel_fro(mc.ntk, ref_ntk) < tol_ntk
    assert _rel_fro(mc.nngp, ref_nngp) < tol_nngp
    # At this width too (it matters under "standard"), the analytic kernel is the reference's.
    k = analytic_kernels(arch, x)
    _assert_close_scaled(k.ntk, ref_ntk, RTOL_DIAGONAL, f"{name} analytic ntk at width {MC_CHANNELS}")
