"""GANs in the frozen and the chaotic phase: generators, discriminators, data and metrics.

Jacot, Gabriel & Hongler (2019) argue that a generator in the frozen (ordered) phase of the
mean-field theory, χ_1 = σ_w² E[φ'(√q* z)²] < 1 (:func:`ntklab.phases.mean_field`), has an NTK over
its latent inputs whose rows are nearly alike, Θ(z, z')/√(Θ(z, z) Θ(z', z')) → 1 with depth: a
gradient step moves G(z) for every z the same way, so the outputs drift together (mode collapse),
and that transposed convolutions paint checkerboards, whereas a chaotic (or normalised) generator
suffers less. This module holds what ``python -m ntklab gan`` (:mod:`ntklab.commands.gan`) needs to
measure it; every network is an :mod:`ntklab.layers` composition, so the same architecture gives
the finite net (:func:`ntklab.build_net`) and, where it exists, its limit
(:func:`ntklab.analytic_kernels`, :func:`ntklab.kernels.pixel_kernels`).

Data:
    ring    n_modes Gaussians N(m_k, std² I) in the plane, m_k = radius·(cos 2πk/n, sin 2πk/n),
            drawn with equal probability (:func:`ring_modes`, :func:`sample_ring`).
    digits, mnist  real images from :func:`ntklab.data.load_dataset` (images=True), resized to
            image_size × image_size (bilinear, antialiased) and mapped from [0, 1] to [−1, 1].

Metrics (each a plain function of samples, tested on hand-made sets):
    :func:`ring_metrics`         high-quality share (samples within 3σ of a mode) and modes covered
    :func:`checkerboard_share`   share of the spectral power (DC excluded) on the Nyquist row and column
    :func:`mean_pairwise_distance`  diversity of a sample set
    :func:`normalised_offdiagonal`  mean of Θ(z_i, z_j)/√(Θ(z_i, z_i) Θ(z_j, z_j)) over i ≠ j
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ntklab import layers as nl
from ntklab.data.seeding import stream_rng
from ntklab.phases import normalised_kernel

NORMS = ("none", "layer_norm", "batch_norm")
# stream numbers of the run's random draws (ntklab.data.seeding.stream_rng(seed, stream)); fixed forever
GENERATOR_INIT, DISCRIMINATOR_INIT, TRAIN_DRAWS, EVAL_DRAWS, REFERENCE_DRAWS = 101, 102, 103, 104, 105


def torch_seed(seed: int, stream: int) -> int:
    """A torch seed for ``stream`` under the run's ``seed``: independent draws per purpose."""
    return int(stream_rng(seed, stream).integers(0, 2 ** 62))


# ----------------------------------------------------------------------------- architectures

def _affine_args(sigma_w2: float, sigma_b2: float, parametrization: str) -> Dict:
    return {"sigma_w": math.sqrt(sigma_w2), "sigma_b": math.sqrt(sigma_b2), "parametrization": parametrization}


def _block(affine: nl.Layer, activation: str, norm: str) -> List[nl.Layer]:
    """affine → [layer_norm | batch_norm] → activation (a normalisation right after the affine layer,
    where layer_norm's limit rule holds: :func:`ntklab.layers.check_limit`)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    middle = {"none": [], "layer_norm": [nl.layer_norm()], "batch_norm": [nl.batch_norm()]}[norm]
    return [affine, *middle, nl.activation(activation)]


def ring_generator(latent_dim: int, width: int, depth: int, activation: str, sigma_w2: float, sigma_b2: float,
                   norm: str = "none", parametrization: str = "ntk", out_dim: int = 2) -> nl.Layer:
    """The MLP generator z (latent_dim,) → x (out_dim,): ``depth`` blocks dense(width) → [norm] → φ,
    then dense(out_dim); every affine layer with σ_w², σ_b² (the phase-diagram point)."""
    del latent_dim      # the input size comes from build_net's in_shape
    args = _affine_args(sigma_w2, sigma_b2, parametrization)
    body = [layer for _ in range(depth) for layer in _block(nl.dense(width, **args), activation, norm)]
    return nl.serial(*body, nl.dense(out_dim, **args))


def image_generator(image_shape: Sequence[int], width: int, depth: int, upsamplings: int, kernel_size: int,
                    activation: str, sigma_w2: float, sigma_b2: float, norm: str = "none",
                    parametrization: str = "ntk", output_activation: str = "tanh") -> nl.Layer:
    """The deconvolution generator z → images (C, H, W), ending with images (no flatten; see
    :func:`flat`):

        dense(width·h0·w0) → unflatten(width, h0, w0) → [norm] → φ              h0 = H / 2^upsamplings
        ``depth`` × (conv_transpose(width, k, stride 1) → [norm] → φ)           at h0 × w0
        (upsamplings − 1) × (conv_transpose(width, k, stride 2) → [norm] → φ)   doubling the size
        conv_transpose(C, k, stride 2) → output_activation                      to H × W

    With k not a multiple of 2 (k = 3) each stride-2 layer reaches alternate output pixels with
    different numbers of filter taps: the checkerboard (:mod:`ntklab.layers.transpose`).
    """
    channels, height, width_px = (int(n) for n in image_shape)
    factor = 2 ** upsamplings
    if upsamplings < 1 or height % factor or width_px % factor:
        raise ValueError(f"the image size {height}×{width_px} must be divisible by 2^upsamplings = {factor}")
    h0, w0 = height // factor, width_px // factor
    args = _affine_args(sigma_w2, sigma_b2, parametrization)
    first, *rest = _block(nl.dense(width * h0 * w0, **args), activation, norm)
    layers = [first, nl.unflatten(width, h0, w0), *rest]       # unflatten right after the dense layer
    for _ in range(depth):
        layers += _block(nl.conv_transpose(width, kernel_size, 1, **args), activation, norm)
    for _ in range(upsamplings - 1):
        layers += _block(nl.conv_transpose(width, kernel_size, 2, **args), activation, norm)
    layers += [nl.conv_transpose(channels, kernel_size, 2, **args), nl.activation(output_activation)]
    return nl.serial(*layers)


def flat(arch: nl.Layer) -> nl.Layer:
    """``arch`` followed by flatten(): a :class:`ntklab.Net` must end with vectors (reshape its outputs)."""
    return nl.serial(arch, nl.flatten())


def discriminator(width: int, depth: int, images: bool, parametrization: str = "ntk") -> nl.Layer:
    """The critic x → logit (1,): [flatten] → ``depth`` × (dense(width) → leaky_relu) → dense(1),
    σ_w² = 2, σ_b² = 0.01, the same in every generator regime."""
    args = _affine_args(2.0, 0.01, parametrization)
    body = [layer for _ in range(depth) for layer in (nl.dense(width, **args), nl.activation("leaky_relu"))]
    return nl.serial(*([nl.flatten()] if images else []), *body, nl.dense(1, **args))


# ----------------------------------------------------------------------------- data

def ring_modes(n_modes: int = 8, radius: float = 2.0) -> Tensor:
    """(n_modes, 2) float64: m_k = radius·(cos 2πk/n, sin 2πk/n), k = 0..n−1."""
    angles = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def sample_ring(n: int, modes: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """(n, 2) float64 draws of the mixture: a mode uniformly at random, then m_k + std·ε, ε ~ N(0, I)."""
    which = torch.randint(modes.shape[0], (n,), generator=generator)
    return modes[which] + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def prepare_images(x: Tensor, size: int) -> Tensor:
    """Images (N, C, H, W) in [0, 1] → (N, C, size, size) in [−1, 1]: bilinear (antialiased) resize
    when the size differs, then 2x − 1, clamped to [−1, 1] (the resize may overshoot by rounding)."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (2.0 * x - 1.0).clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------- metrics

def ring_metrics(samples: Tensor, modes: Tensor, std: float, cover_share: float = 0.02,
                 radius_in_std: float = 3.0) -> Dict:
    """Mode coverage and sample quality of 2-D samples (N, 2) against the ring's modes (M, 2).

    A sample is *high quality* when its distance to the nearest mode is ≤ radius_in_std·std; mode k
    is *covered* when the high-quality samples nearest to it are at least ``cover_share``·N
    (fair share: N/M). Returns {"high_quality": share in [0, 1], "modes_covered": int,
    "mode_shares": (M,) list of each mode's high-quality samples / N}.
    """
    samples = torch.as_tensor(samples, dtype=torch.float64)
    distance = torch.cdist(samples, modes.to(torch.float64))            # (N, M)
    nearest, which = distance.min(dim=1)
    near = nearest <= radius_in_std * std
    counts = torch.bincount(which[near], minlength=modes.shape[0]).to(torch.float64)
    shares = counts / samples.shape[0]
    return {"high_quality": near.to(torch.float64).mean().item(),
            "modes_covered": int((shares >= cover_share).sum().item()),
            "mode_shares": shares.tolist()}


def power_spectrum(images: Tensor) -> Tensor:
    """Mean spectral power P(u, v) = mean over images and channels of |DFT₂(x)(u, v)|², (H, W) float64,
    with the DC bin (0, 0) set to 0 (it is the mean brightness, not a pattern)."""
    x = torch.as_tensor(images, dtype=torch.float64)
    power = torch.fft.fft2(x).abs().pow(2).mean(dim=(0, 1))
    power[0, 0] = 0.0
    return power


def nyquist_band(height: int, width: int) -> Tensor:
    """(H, W) bool: the Nyquist row u = H/2 and column v = W/2 of the DFT, the frequencies of a
    period-2 pattern (a stride-2 checkerboard: (−1)^i, (−1)^j, (−1)^{i+j}); H and W must be even."""
    if height % 2 or width % 2:
        raise ValueError(f"the Nyquist row and column need an even image size, got {height}×{width}")
    band = torch.zeros(height, width, dtype=torch.bool)
    band[height // 2, :] = True
    band[:, width // 2] = True
    return band


def checkerboard_share(images: Tensor) -> float:
    """Share of the images' spectral power at the highest spatial frequency:

        Σ_{(u,v) ∈ Nyquist row ∪ column} P(u, v) / Σ_{(u,v) ≠ (0,0)} P(u, v)

    with P = :func:`power_spectrum` (pooled over the images before the ratio). A pure checkerboard
    a(−1)^{i+j} gives 1, a smooth cos(2πi/H) gives 0, and their sum a(−1)^{i+j} + b cos(2πi/H) + c
    gives a²/(a² + b²/2) (the DFT puts a·HW at (H/2, W/2) and b·HW/2 at (±1, 0)). 0 for constant images.
    """
    power = power_spectrum(images)
    total = power.sum()
    if total <= 0:
        return 0.0
    return (power[nyquist_band(*power.shape)].sum() / total).item()


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean Euclidean distance ‖x_i − x_j‖ over the pairs i < j of the rows of x (N, ...) flattened."""
    flat_x = torch.as_tensor(x, dtype=torch.float64).reshape(x.shape[0], -1)
    return torch.pdist(flat_x).mean().item()


def normalised_offdiagonal(kernel: Tensor) -> float:
    """Mean over i ≠ j of K_ij/√(K_ii K_jj) for K (N, N): near 1 when all rows are alike (frozen), near
    0 when K is close to a multiple of the identity (chaotic); nan when a diagonal entry is 0
    (:func:`ntklab.phases.normalised_kernel`)."""
    normalised = normalised_kernel(kernel)
    n = normalised.shape[0]
    return ((normalised.sum() - normalised.diagonal().sum()) / (n * (n - 1))).item()


def class_coverage(predicted: Tensor, n_classes: int, cover_share: float) -> Dict:
    """Classes covered by predicted labels (N,): those with a share ≥ cover_share, and the effective
    number of classes exp(H(p)) of the predicted class distribution p (n_classes for a uniform one)."""
    shares = torch.bincount(torch.as_tensor(predicted), minlength=n_classes).to(torch.float64) / len(predicted)
    nonzero = shares[shares > 0]
    return {"classes_covered": int((shares >= cover_share).sum().item()),
            "effective_classes": math.exp(-(nonzero * nonzero.log()).sum().item()),
            "class_shares": shares.tolist()}


# ----------------------------------------------------------------------------- losses

def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """−E log σ(D(x)) − E log(1 − σ(D(G(z)))) = E softplus(−D(x)) + E softplus(D(G(z)))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: Tensor) -> Tensor:
    """The non-saturating generator loss −E log σ(D(G(z))) = E softplus(−D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def seed_interval(values: Sequence[float], level: float = 0.95) -> Dict:
    """Mean over seeds with Student's t interval: mean ± t_{(1+level)/2, n−1}·s/√n, s the sample sd.

    Returns {"n", "mean", "low", "high", "values"}; low = high = mean for one seed (no spread to
    estimate: say so rather than draw a zero-width bar), NaN-free values only."""
    from scipy import stats

    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan, "values": []}
    mean = sum(x) / n
    if n == 1:
        return {"n": 1, "mean": mean, "low": mean, "high": mean, "values": x}
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "values": x}


def pixel_share_pattern(variance: Tensor) -> Tuple[float, float]:
    """(max/min over pixels, share at the Nyquist row ∪ column of the variance map's own spectrum)
    of a per-pixel variance map (H, W): how periodic the map is (1.0 and 0.0 for a flat map)."""
    variance = torch.as_tensor(variance, dtype=torch.float64)
    ratio = (variance.max() / variance.min()).item() if variance.min() > 0 else math.inf
    return ratio, checkerboard_share(variance[None, None])


__all__ = ["NORMS", "torch_seed", "ring_generator", "image_generator", "flat", "discriminator", "ring_modes",
           "sample_ring", "prepare_images", "ring_metrics", "power_spectrum", "nyquist_band", "checkerboard_share",
           "mean_pairwise_distance", "normalised_offdiagonal", "class_coverage", "discriminator_loss",
           "generator_loss", "seed_interval", "pixel_share_pattern"]
