"""The ``gan`` command: config → one GAN run (one generator regime, one seed) → files.

A generator G and a critic D (:mod:`ntklab.gan`) are trained adversarially with the non-saturating
loss, one Adam step of D then one of G per step, each on a fresh batch (``batch_size`` real points
and as many latents z ~ N(0, I)). Every ``log_every`` steps (and at 0 and at the end) the run
measures, on fixed evaluation latents:

    ring      high_quality (share of samples within 3σ of a mode) and modes_covered
    images    checkerboard (share of the spectral power on the Nyquist row and column), diversity
              (mean pairwise distance over that of real images) and the classes a logistic-regression
              classifier, fitted on the real images, sees covered
    both      ntk_offdiag: the mean over i ≠ j of Θ̂(z_i, z_j)/√(Θ̂(z_i, z_i) Θ̂(z_j, z_j)), the
              generator's empirical NTK over ``ntk_latents`` latents (jacobian method, float64 copy;
              mean over the outputs, for images over ``NTK_PIXELS`` fixed random pixels), and the D/G losses

A batch_norm generator normalises with the statistics of the batch it is given: ``batch_size``
latents in training, the ``n_eval`` evaluation latents when measured, the ``ntk_latents`` for its NTK.

Files of the run directory:

    gan.json        the summary: χ_1 and q* of the regime's (σ_w², σ_b²) (ntklab.phases.mean_field),
                    the analytic normalised NTK at init (where the limit exists: not with batch_norm),
                    the data's own metrics, the first and last records, timing, environment, config;
                    written at the start (status "running") and at the end ("ok")
    metrics.jsonl   one record per log step, fsynced as it is written (a crash keeps every step done)
    metrics.csv     the same records as a table, at the end
    samples.csv     ring: the final generated samples (x, y); samples.pt images: 64 final samples and
                    64 real ones
    spectrum.csv    images: u, v, the mean power of generated and of real images at each DFT bin
    pixels.csv      images: i, j, the analytic NNGP and NTK variance of each output pixel at init
                    (ntklab.kernels.pixel_kernels) and the finite net's Θ̂(z, z)(t, t), both the mean
                    over pixel_latents latents
    *.png           samples, ntk, progress, and for images spectrum, pixel_variance (ntklab.plots.plot_gan)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from omegaconf import OmegaConf

from ntklab import gan, results
from ntklab.activations import ACTIVATION_NAMES
from ntklab.config import check_plot_formats
from ntklab.errors import ConfigError, check_choice, check_seed
from ntklab.kernels import analytic_kernels, pixel_kernels
from ntklab.layers import build_net
from ntklab.layers.net import Net
from ntklab.ntk import empirical_ntk
from ntklab.phases import mean_field

log = logging.getLogger(__name__)

GAN_JSON, METRICS_CSV, SAMPLES_CSV, SAMPLES_PT, SPECTRUM_CSV, PIXELS_CSV = (
    "gan.json", "metrics.csv", "samples.csv", "samples.pt", "spectrum.csv", "pixels.csv")
DATASETS = ("ring", "digits", "mnist")
PARAMETRIZATIONS = ("ntk", "standard")
NTK_PIXELS = 32             # output pixels the images generator's NTK is averaged over
NTK_MEMORY = 2 ** 31        # bytes the batch-norm generator's whole-batch Jacobian may take
DIVERSITY_SAMPLES = 500     # samples of the mean pairwise distance


def validate(cfg) -> None:
    """Check the gan config's values (raises :class:`ConfigError` naming the field)."""
    check_choice("dataset", cfg.dataset, DATASETS)
    check_choice("generator", cfg.generator, list(cfg.generators))
    for name, regime in cfg.generators.items():
        check_choice(f"generators.{name}.activation", regime.activation, ACTIVATION_NAMES)
        check_choice(f"generators.{name}.norm", regime.norm, gan.NORMS)
        if not (math.isfinite(regime.sigma_w2) and regime.sigma_w2 > 0):
            raise ConfigError(f"generators.{name}.sigma_w2", f"must be a finite number > 0, got {regime.sigma_w2!r}")
        if not (math.isfinite(regime.sigma_b2) and regime.sigma_b2 >= 0):
            raise ConfigError(f"generators.{name}.sigma_b2", f"must be a finite number >= 0, got {regime.sigma_b2!r}")
    check_seed("seed", cfg.seed)
    check_choice("parametrization", cfg.parametrization, PARAMETRIZATIONS)
    for name in ("steps", "log_every", "n_eval"):
        _at_least(name, getattr(cfg, name), 1)
    _at_least("ntk_latents", cfg.ntk_latents, 2)
    _at_least("pixel_latents", cfg.pixel_latents, 1)
    for name in ("lr_g", "lr_d"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(name, f"must be a finite number > 0, got {value!r}")
    betas = list(cfg.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError("betas", f"must be two numbers in [0, 1), got {betas!r}")
    if not 0 < cfg.cover_share <= 1:
        raise ConfigError("cover_share", f"must lie in (0, 1], got {cfg.cover_share!r}")
    block = cfg.ring if cfg.dataset == "ring" else cfg.images
    prefix = "ring" if cfg.dataset == "ring" else "images"
    for name in ("latent_dim", "g_width", "d_width", "d_depth"):
        _at_least(f"{prefix}.{name}", getattr(block, name), 1)
    _at_least(f"{prefix}.g_depth", block.g_depth, 0)
    # batch_norm normalises over the batch: a batch of one has no variance
    _at_least(f"{prefix}.batch_size", block.batch_size, 2)
    if cfg.dataset == "ring":
        _at_least("ring.n_modes", cfg.ring.n_modes, 1)
        for name in ("radius", "std"):
            value = getattr(cfg.ring, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"ring.{name}", f"must be a finite number > 0, got {value!r}")
    else:
        images = cfg.images
        for name in ("n_train", "n_test", "upsamplings", "kernel_size"):
            _at_least(f"images.{name}", getattr(images, name), 1)
        _at_least("images.image_size", images.image_size, 2)
        factor = 2 ** images.upsamplings
        if images.image_size % factor:
            raise ConfigError("images.image_size", f"must be divisible by 2^images.upsamplings = {factor}, "
                                                   f"got {images.image_size}")
        if cfg.dataset == "mnist" and images.root is None:
            raise ConfigError("images.root", "not set; mnist needs the directory of its files (IDX or mnist.pkl.gz)")
    check_plot_formats(cfg.plot_formats)


def _at_least(name: str, value, lowest: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
        raise ConfigError(name, f"must be an integer >= {lowest}, got {value!r}")


def log_steps(steps: int, every: int) -> List[int]:
    """0, every, 2·every, ... and the last step (steps)."""
    return sorted(set(range(0, steps + 1, every)) | {steps})


def run(cfg, run_dir: Path) -> Dict:
    """Train one GAN, measuring as it goes; writes the files of the module docstring."""
    run_dir = Path(run_dir)
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with results.locked(run_dir):
        try:
            return _run(cfg, run_dir)
        except Exception as err:      # gan.json says why; metrics.jsonl keeps every step measured
            import traceback

            path = run_dir / GAN_JSON
            summary = json.loads(path.read_text()) if path.exists() else {}
            summary.update(status=results.FAILED, error=f"{type(err).__name__}: {err}",
                           traceback=traceback.format_exc())
            results.write_json(path, summary)
            raise


def _run(cfg, run_dir: Path) -> Dict:
    from tqdm.auto import tqdm

    started = time.perf_counter()
    regime = cfg.generators[cfg.generator]
    images = cfg.dataset != "ring"
    block = cfg.images if images else cfg.ring
    field = mean_field(regime.activation, regime.sigma_w2, regime.sigma_b2)
    chi = field.chi_1.item()
    summary: Dict = {
        "status": "running", "dataset": cfg.dataset, "generator": cfg.generator, "seed": cfg.seed,
        "phase": {"activation": regime.activation, "sigma_w2": regime.sigma_w2, "sigma_b2": regime.sigma_b2,
                  "norm": regime.norm, "chi_1": chi, "q_star": field.q_star.item(),
                  "side": "ordered" if chi < 1 else ("chaotic" if chi > 1 else "critical"),
                  "note": ("χ_1 of the un-normalised recursion at these variances; the normalisation changes "
                           "the recursion (the normalised NTK says where the net is)") if regime.norm != "none"
                  else None},
        "optimizer": {"name": "Adam", "lr_g": cfg.lr_g, "lr_d": cfg.lr_d, "betas": list(cfg.betas),
                      "d_steps_per_g_step": 1, "loss": "non-saturating"},
        **results.environment(), "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results.write_json(run_dir / GAN_JSON, summary)

    data = _data(cfg)
    summary["data"] = data.reference
    g_arch = _generator_arch(cfg, data.shape)
    g_net = build_net(gan.flat(g_arch), (block.latent_dim,), seed=gan.torch_seed(cfg.seed, gan.GENERATOR_INIT))
    d_net = build_net(gan.discriminator(block.d_width, block.d_depth, images, cfg.parametrization), data.shape,
                      seed=gan.torch_seed(cfg.seed, gan.DISCRIMINATOR_INIT))
    summary["parameters"] = {"generator": sum(p.numel() for p in g_net.parameters()),
                             "discriminator": sum(p.numel() for p in d_net.parameters())}
    eval_draws = torch.Generator().manual_seed(gan.torch_seed(cfg.seed, gan.EVAL_DRAWS))
    z_eval = torch.randn(cfg.n_eval, block.latent_dim, generator=eval_draws)
    z_ntk = torch.randn(cfg.ntk_latents, block.latent_dim, generator=eval_draws)
    pixels = (torch.randperm(math.prod(data.shape), generator=eval_draws)[:NTK_PIXELS] if images else None)
    summary["ntk"] = {"latents": cfg.ntk_latents, "outputs": "all (2)" if not images else
                      f"{NTK_PIXELS} random output pixels", "analytic_init": _analytic_offdiag(g_arch, z_ntk, regime)}
    if images:
        summary["pixel_kernels"] = _pixel_maps(cfg, g_arch, g_net, data.shape, z_eval, run_dir)
    results.write_json(run_dir / GAN_JSON, summary)

    g_opt = torch.optim.Adam(g_net.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
    d_opt = torch.optim.Adam(d_net.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas))
    train_draws = torch.Generator().manual_seed(gan.torch_seed(cfg.seed, gan.TRAIN_DRAWS))
    writer = results.MetricsWriter(run_dir / results.METRICS)
    records, losses = [], {"d_loss": [], "g_loss": []}
    train_time = 0.0
    wanted = log_steps(cfg.steps, cfg.log_every)
    try:
        bar = tqdm(total=cfg.steps, desc=f"gan {cfg.dataset} {cfg.generator} seed {cfg.seed}", unit="step",
                   disable=not cfg.progress)
        for step in range(cfg.steps + 1):
            if step in wanted:
                record = {"step": step, **_evaluate(cfg, data, g_net, z_eval, z_ntk, pixels)}
                for name, values in losses.items():
                    record[name] = sum(values) / len(values) if values else None
                    values.clear()
                writer.write(record)
                records.append(record)
                bar.set_postfix({key: f"{record[key]:.3g}" for key in data.headline + ["ntk_offdiag"]})
            if step == cfg.steps:
                break
            tick = time.perf_counter()
            d_loss, g_loss = _train_step(data, g_net, d_net, g_opt, d_opt, block, train_draws)
            train_time += time.perf_counter() - tick
            losses["d_loss"].append(d_loss)
            losses["g_loss"].append(g_loss)
            bar.update(1)
        bar.close()
    finally:
        writer.close()

    summary.update(status=results.OK, initial=_scalars(records[0]), final=_scalars(records[-1]),
                   timing_s={"total": time.perf_counter() - started, "per_step": train_time / cfg.steps})
    keys = [key for key in records[0] if not isinstance(records[0][key], list)]
    results.write_csv(run_dir / METRICS_CSV, keys, [[r.get(key) for key in keys] for r in records])
    _save_samples(cfg, data, g_net, z_eval, run_dir)
    log.info("%s %s seed %d: χ_1 = %.3g; %s", cfg.dataset, cfg.generator, cfg.seed, chi,
             ", ".join(f"{k} {records[0][k]:.3g} → {records[-1][k]:.3g}" for k in data.headline + ["ntk_offdiag"]))
    if cfg.plots:
        from ntklab.plots import plot_gan

        summary["plots"] = [p.name for p in plot_gan(run_dir, summary, records, cfg.plot_formats)]
    results.write_json(run_dir / GAN_JSON, summary)
    return summary


# ----------------------------------------------------------------------------- pieces

class _Data:
    """The run's data: a sampler of real batches and what the metrics compare against."""

    def __init__(self, shape, sample, reference, headline, real=None, classifier=None, modes=None):
        self.shape, self.sample, self.reference, self.headline = shape, sample, reference, headline
        self.real, self.classifier, self.modes = real, classifier, modes


def _data(cfg) -> _Data:
    if cfg.dataset == "ring":
        ring = cfg.ring
        modes = gan.ring_modes(ring.n_modes, ring.radius)
        check = gan.sample_ring(cfg.n_eval, modes, ring.std,
                                torch.Generator().manual_seed(gan.torch_seed(cfg.seed, gan.REFERENCE_DRAWS)))
        reference = {"ring_samples": cfg.n_eval, **_ring_scalars(gan.ring_metrics(check, modes, ring.std, cfg.cover_share)),
                     "high_quality_expected": 1.0 - math.exp(-4.5)}   # P(|ε| ≤ 3σ) for a 2-D Gaussian
        sample = lambda n, g: gan.sample_ring(n, modes, ring.std, g).to(torch.float32)
        return _Data((2,), sample, reference, ["modes_covered", "high_quality"], modes=modes)
    from ntklab.data import load_dataset

    images = cfg.images
    try:
        loaded = load_dataset(cfg.dataset, n_train=images.n_train, n_test=images.n_test, normalize="none",
                              images=True, root=images.root, seed=cfg.seed)
    except ConfigError as err:      # the loader names its own fields (data.n_train, data.root)
        name = err.field.split(".")[-1]
        raise ConfigError(f"images.{name}", str(err).split(": ", 1)[-1].replace("data.", "images.")) from None
    real = gan.prepare_images(loaded.x_train, images.image_size).to(torch.float32)
    held_out = gan.prepare_images(loaded.x_test, images.image_size).to(torch.float32)
    classifier = _classifier(real, loaded.labels_train, held_out, loaded.labels_test)
    reference = {"images": real.shape[0], "image_shape": list(real.shape[1:]),
                 "checkerboard": gan.checkerboard_share(real),
                 "pairwise_distance": gan.mean_pairwise_distance(real[:DIVERSITY_SAMPLES]),
                 "classifier_accuracy": classifier["accuracy"],
                 **_class_scalars(gan.class_coverage(torch.as_tensor(classifier["model"].predict(
                     real.flatten(1).numpy())), 10, cfg.cover_share))}

    def sample(n, g):
        return real[torch.randint(real.shape[0], (n,), generator=g)]

    data = _Data(tuple(real.shape[1:]), sample, reference, ["checkerboard", "diversity", "classes_covered"],
                 real=real, classifier=classifier["model"])
    return data


def _classifier(x, labels, x_test, labels_test) -> Dict:
    """Multinomial logistic regression on the flattened real images: the coverage classifier."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=300, C=1.0)
    model.fit(x.flatten(1).numpy(), labels.numpy())
    accuracy = float((model.predict(x_test.flatten(1).numpy()) == labels_test.numpy()).mean())
    return {"model": model, "accuracy": accuracy}


def _generator_arch(cfg, shape, norm: Optional[str] = None):
    """The regime's generator (``norm`` replaces the regime's normalisation when given)."""
    regime = cfg.generators[cfg.generator]
    norm = regime.norm if norm is None else norm
    if cfg.dataset == "ring":
        ring = cfg.ring
        return gan.ring_generator(ring.latent_dim, ring.g_width, ring.g_depth, regime.activation, regime.sigma_w2,
                                  regime.sigma_b2, norm, cfg.parametrization, out_dim=2)
    images = cfg.images
    return gan.image_generator(shape, images.g_width, images.g_depth, images.upsamplings, images.kernel_size,
                               regime.activation, regime.sigma_w2, regime.sigma_b2, norm, cfg.parametrization)


def _train_step(data: _Data, g_net: Net, d_net: Net, g_opt, d_opt, block, draws: torch.Generator):
    """One Adam step of D on real and generated batches, then one of G on a fresh latent batch."""
    n = block.batch_size
    real = data.sample(n, draws)
    z = torch.randn(n, block.latent_dim, generator=draws)
    with torch.no_grad():
        fake = g_net(z).reshape(n, *data.shape)
    d_loss = gan.discriminator_loss(d_net(real), d_net(fake))
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()
    z = torch.randn(n, block.latent_dim, generator=draws)
    g_loss = gan.generator_loss(d_net(g_net(z).reshape(n, *data.shape)))
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    return d_loss.item(), g_loss.item()


def generator_offdiag(g_net: Net, z: torch.Tensor, pixels: Optional[torch.Tensor] = None) -> float:
    """The generator's normalised empirical NTK over the latents z (N, d_z), mean off the diagonal
    (:func:`ntklab.gan.normalised_offdiagonal`): Θ̂ = mean over the outputs (or over the outputs
    ``pixels``) of ∂G_o(z_i)/∂θ · ∂G_o(z_j)/∂θ, by the jacobian method on a float64 copy of the net
    (for a batch_norm generator, Θ̂ of the batch z: :mod:`ntklab.layers.batch_norm`)."""
    net = copy.deepcopy(g_net).to(torch.float64)
    model = net if pixels is None else _OutputSubset(net, pixels)
    theta = empirical_ntk(model, z.to(torch.float64), method="jacobian", outputs="mean", memory_budget=NTK_MEMORY)
    return gan.normalised_offdiagonal(theta)


class _OutputSubset(Net):
    """A view of a Net that returns the outputs ``index`` only, sharing its modules (so that
    :func:`ntklab.empirical_ntk` still sees a Net and keeps batch_norm's whole-batch rule)."""

    def __init__(self, net: Net, index: torch.Tensor):
        torch.nn.Module.__init__(self)
        self.root, self.arch, self.in_shape, self.body = net.root, net.arch, net.in_shape, net.body
        self.out_dim = int(index.numel())
        self.register_buffer("index", index.clone())

    def forward(self, x):
        return self.body(x)[:, self.index]


def _analytic_offdiag(g_arch, z: torch.Tensor, regime) -> Optional[float]:
    """The limit's normalised NTK over z at init, mean off the diagonal (None with batch_norm: no limit)."""
    if regime.norm == "batch_norm":
        return None
    kernels = analytic_kernels(gan.flat(g_arch), z.to(torch.float64))
    return gan.normalised_offdiagonal(kernels.ntk)


def _evaluate(cfg, data: _Data, g_net: Net, z_eval, z_ntk, pixels) -> Dict:
    with torch.no_grad():
        samples = g_net(z_eval).reshape(z_eval.shape[0], *data.shape)
    record: Dict = {}
    if cfg.dataset == "ring":
        metrics = gan.ring_metrics(samples, data.modes, cfg.ring.std, cfg.cover_share)
        record.update(_ring_scalars(metrics), mode_shares=metrics["mode_shares"])
    else:
        record["checkerboard"] = gan.checkerboard_share(samples)
        record["checkerboard_ratio"] = record["checkerboard"] / data.reference["checkerboard"]
        record["pairwise_distance"] = gan.mean_pairwise_distance(samples[:DIVERSITY_SAMPLES])
        record["diversity"] = record["pairwise_distance"] / data.reference["pairwise_distance"]
        predicted = torch.as_tensor(data.classifier.predict(samples.flatten(1).numpy()))
        coverage = gan.class_coverage(predicted, 10, cfg.cover_share)
        record.update(_class_scalars(coverage), class_shares=coverage["class_shares"])
    record["output_std"] = samples.flatten(1).std(dim=0).mean().item()     # across latents, mean over outputs
    record["ntk_offdiag"] = generator_offdiag(g_net, z_ntk, pixels)
    return record


def _ring_scalars(metrics: Dict) -> Dict:
    return {"modes_covered": metrics["modes_covered"], "high_quality": metrics["high_quality"]}


def _class_scalars(coverage: Dict) -> Dict:
    return {"classes_covered": coverage["classes_covered"], "effective_classes": coverage["effective_classes"]}


def _scalars(record: Dict) -> Dict:
    return {k: v for k, v in record.items() if not isinstance(v, list)}


def _pixel_maps(cfg, g_arch, g_net: Net, shape, z_eval, run_dir: Path) -> Dict:
    """The per-pixel variance maps at init over ``pixel_latents`` latents: the limit's NNGP and NTK
    (pixel_kernels; for batch_norm, of the same generator without it, which has a limit) and the
    finite net's own Θ̂(z, z)(t, t) (:func:`pixel_ntk_diagonal`); writes pixels.csv."""
    regime = cfg.generators[cfg.generator]
    arch, note = g_arch, None
    if regime.norm == "batch_norm":
        arch = _generator_arch(cfg, shape, norm="none")
        note = "batch_norm has no limit: the analytic maps are of the same generator without it"
    z = z_eval[: cfg.pixel_latents].to(torch.float64)
    kernels = pixel_kernels(arch, z)
    nngp, ntk = kernels.nngp.mean(0), kernels.ntk.mean(0)                     # (H, W)
    empirical = pixel_ntk_diagonal(g_net, z, shape).mean(0)
    height, width = nngp.shape
    results.write_csv(run_dir / PIXELS_CSV, ["i", "j", "nngp", "ntk", "empirical_ntk"],
                      [(i, j, nngp[i, j].item(), ntk[i, j].item(), empirical[i, j].item())
                       for i in range(height) for j in range(width)])
    out = {"note": note, "latents": cfg.pixel_latents}
    for name, values in (("nngp", nngp), ("ntk", ntk), ("empirical_ntk", empirical)):
        ratio, share = gan.pixel_share_pattern(values)
        out[name] = {"max_over_min": ratio, "nyquist_share": share}
    return out


def pixel_ntk_diagonal(g_net: Net, z: torch.Tensor, shape, chunk: int = 64) -> torch.Tensor:
    """Θ̂(z_n, z_n)(t, t) of an image generator: (N, H, W), the mean over channels of each output
    pixel's NTK with itself, from :func:`ntklab.empirical_ntk` (jacobian, outputs="full", float64
    copy) on ``chunk`` outputs at a time (for batch_norm: on the batch z, as everywhere)."""
    net = copy.deepcopy(g_net).to(torch.float64)
    z = z.to(torch.float64)
    diagonal = []
    for start in range(0, net.out_dim, chunk):
        index = torch.arange(start, min(start + chunk, net.out_dim))
        full = empirical_ntk(_OutputSubset(net, index), z, method="jacobian", outputs="full", memory_budget=NTK_MEMORY)
        diagonal.append(torch.stack([full[n, n].diagonal() for n in range(z.shape[0])]))    # (N, chunk)
    return torch.cat(diagonal, dim=1).reshape(z.shape[0], *shape).mean(dim=1)


def _save_samples(cfg, data: _Data, g_net: Net, z_eval, run_dir: Path) -> None:
    with torch.no_grad():
        samples = g_net(z_eval).reshape(z_eval.shape[0], *data.shape).to(torch.float64)
    if cfg.dataset == "ring":
        results.write_csv(run_dir / SAMPLES_CSV, ["x", "y"], samples.tolist())
        return
    results.save_torch(run_dir / SAMPLES_PT, {"generated": samples[:64].clone(), "real": data.real[:64].double()})
    generated, real = gan.power_spectrum(samples), gan.power_spectrum(data.real)
    height, width = generated.shape
    results.write_csv(run_dir / SPECTRUM_CSV, ["u", "v", "generated", "real"],
                      [(u, v, generated[u, v].item(), real[u, v].item()) for u in range(height) for v in range(width)])
