"""The GAN demo (``python -m ntklab gan``): its metrics on hand-made sets with known answers, the
generator's NTK against its limit, the regimes' places in the phase diagram, and the command end to end."""

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from ntklab import build_net, gan
from ntklab.commands.gan import _analytic_offdiag, generator_offdiag, log_steps, validate
from ntklab.config import GanRegime
from ntklab.kernels import analytic_kernels, pixel_kernels
from ntklab.phases import depth_profile, mean_field, spec_from_variances
from tests.helpers import compose_config, start_ntklab, stop_all
from tests.helpers import metrics as metrics_records


# ----------------------------------------------------------------------------- the command (started first)

TINY_RING = ["steps=30", "log_every=15", "n_eval=200", "ntk_latents=4", "ring.g_width=16", "ring.g_depth=2",
             "ring.d_width=16", "ring.batch_size=32", "progress=false", "seed=3"]
TINY_DIGITS = ["dataset=digits", "generator=batch_norm", "steps=4", "log_every=2", "n_eval=64", "ntk_latents=4",
               "pixel_latents=2", "images.n_train=100", "images.n_test=50", "images.image_size=8",
               "images.g_width=4", "images.g_depth=1", "images.d_width=16", "images.d_depth=1",
               "images.batch_size=16", "progress=false"]


@pytest.fixture(scope="module", autouse=True)
def command_runs(tmp_path_factory):
    """The command's runs, started before this module's first test so that their interpreter and
    torch start-up overlap the in-process tests."""
    tmp = tmp_path_factory.mktemp("gan_command")
    runs = {"tmp": tmp,
            "ring": start_ntklab("gan", *TINY_RING, f"hydra.run.dir={tmp / 'ring'}", cwd=tmp),
            "digits": start_ntklab("gan", *TINY_DIGITS, f"hydra.run.dir={tmp / 'digits'}", cwd=tmp),
            "bad": start_ntklab("gan", "generator=warm", f"hydra.run.dir={tmp / 'bad'}", cwd=tmp)}
    yield runs
    stop_all([runs["ring"], runs["digits"], runs["bad"]])


# ----------------------------------------------------------------------------- ring metrics

def _ring_set(inside: int, outside: int, std: float, modes: torch.Tensor) -> torch.Tensor:
    """Per mode, ``inside`` points 2σ from it and ``outside`` points 4σ from it (radially outwards)."""
    points = []
    for m in modes:
        direction = m / m.norm()
        points += [m + 2 * std * direction] * inside + [m + 4 * std * direction] * outside
    return torch.stack(points)


def test_ring_metrics_count_modes_and_the_high_quality_share():
    modes, std = gan.ring_modes(8, 2.0), 0.05
    # 7 of every 10 points within 3σ: the share is 0.7 exactly, and each mode holds 7/80 = 0.0875
    everywhere = _ring_set(7, 3, std, modes)
    metrics = gan.ring_metrics(everywhere, modes, std, cover_share=0.02)
    assert metrics["high_quality"] == pytest.approx(0.7, abs=1e-15)
    assert metrics["modes_covered"] == 8
    assert metrics["mode_shares"] == pytest.approx([7 / 80] * 8, abs=1e-15)
    # a threshold above each mode's 0.0875 covers none of them
    assert gan.ring_metrics(everywhere, modes, std, cover_share=0.1)["modes_covered"] == 0
    # everything on one mode: collapsed, one mode, all high quality
    collapsed = modes[3].expand(50, 2) + 0.5 * std
    metrics = gan.ring_metrics(collapsed, modes, std)
    assert metrics["modes_covered"] == 1 and metrics["high_quality"] == 1.0
    assert metrics["mode_shares"][3] == 1.0
    # the ring's centre is 2 = 40σ from every mode: no quality, no mode
    assert gan.ring_metrics(torch.zeros(10, 2), modes, std) == {"high_quality": 0.0, "modes_covered": 0,
                                                                "mode_shares": [0.0] * 8}


def test_real_ring_samples_have_the_gaussian_high_quality_share():
    modes, std = gan.ring_modes(8, 2.0), 0.05
    samples = gan.sample_ring(20000, modes, std, torch.Generator().manual_seed(0))
    metrics = gan.ring_metrics(samples, modes, std)
    expected = 1.0 - math.exp(-4.5)      # P(‖ε‖ ≤ 3σ) for ε ~ N(0, σ²I₂): the χ² tail with 2 dof
    # binomial sd √(p(1−p)/n) = 7.4e-4 at n = 20000: 5 sd
    assert metrics["high_quality"] == pytest.approx(expected, abs=0.0037)
    assert metrics["modes_covered"] == 8
    # each mode's share of the samples is 1/8 · 0.989 up to the multinomial sd √(p/n) ≈ 2.3e-3: 5 sd
    assert np.allclose(metrics["mode_shares"], expected / 8, atol=0.012)


# ----------------------------------------------------------------------------- checkerboard

def test_checkerboard_share_matches_the_dft_closed_form():
    h, w = 16, 12
    i = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    j = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    board = (-1.0) ** (i + j)
    smooth = torch.cos(2 * math.pi * i / h)
    as_images = lambda x: x[None, None]
    # a pure checkerboard puts all its power at (H/2, W/2); period-2 stripes at (H/2, 0)
    assert gan.checkerboard_share(as_images(board)) == pytest.approx(1.0, abs=1e-14)
    assert gan.checkerboard_share(as_images((-1.0) ** i)) == pytest.approx(1.0, abs=1e-14)
    # one cycle over the image: power at (±1, 0) only; rounding leaves ~1e-32 of it elsewhere
    assert gan.checkerboard_share(as_images(smooth)) < 1e-25
    # a·board + b·smooth + c: (a·HW)² at the Nyquist corner, 2·(b·HW/2)² at (±1, 0), c on DC (excluded)
    a, b, c = 0.3, 1.0, 0.5
    expected = a ** 2 / (a ** 2 + b ** 2 / 2)
    assert gan.checkerboard_share(as_images(a * board + b * smooth + c)) == pytest.approx(expected, rel=1e-12)
    assert gan.checkerboard_share(torch.full((2, 1, 4, 4), 0.7)) == 0.0
    # white noise: the same expected power in every bin, so the share is the band's (H + W − 1) bins
    # out of the H·W − 1 non-DC ones; each bin's mean over 4000 images has relative sd 1/√4000, the
    # band's 31 bins pooled ~0.3%: 0.004 is > 3 sd of the share
    noise = torch.randn(4000, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert gan.checkerboard_share(noise) == pytest.approx(31 / 255, abs=0.004)
    with pytest.raises(ValueError, match="even"):
        gan.checkerboard_share(torch.rand(1, 1, 5, 4, generator=torch.Generator().manual_seed(0)))


def test_pairwise_distance_and_normalised_offdiagonal():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0]])
    assert gan.mean_pairwise_distance(x) == pytest.approx((5 + 8 + 5) / 3, abs=1e-12)
    rank_one = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert gan.normalised_offdiagonal(rank_one) == pytest.approx(1.0, abs=1e-14)
    assert gan.normalised_offdiagonal(4.0 * torch.eye(5)) == 0.0
    k = torch.tensor([[4.0, 1.0], [1.0, 1.0]])     # 1/√(4·1) = 0.5
    assert gan.normalised_offdiagonal(k) == pytest.approx(0.5, abs=1e-15)


# ----------------------------------------------------------------------------- the generator's NTK

@pytest.mark.parametrize("regime", [GanRegime("erf", 1.0, 2.0, "none"), GanRegime("erf", 3.5, 0.05, "none")],
                         ids=["frozen", "chaotic"])
def test_generator_ntk_at_init_tracks_its_limit(regime):
    arch = gan.ring_generator(8, 512, 3, regime.activation, regime.sigma_w2, regime.sigma_b2)
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    limit = _analytic_offdiag(arch, z, regime)
    # depth 3: frozen rows alike (0.92), chaotic ones nearly orthogonal (0.05)
    assert (limit > 0.9) if regime.sigma_b2 > 1 else (limit < 0.1)
    for seed in range(2):
        net = build_net(arch, (8,), seed=seed, dtype=torch.float64)
        # width 512: over 8 nets (4 seeds per regime) |empirical − limit| was at most 0.012 (finite-width
        # fluctuation ~1/√width); 0.03 leaves 2.5× margin
        assert generator_offdiag(net, z) == pytest.approx(limit, abs=0.03)


def test_batch_norm_generator_has_no_limit_but_an_empirical_ntk():
    regime = GanRegime("erf", 1.0, 2.0, "batch_norm")
    nets = {norm: build_net(gan.ring_generator(4, 64, 4, "erf", 1.0, 2.0, norm), (4,), seed=0)
            for norm in gan.NORMS}
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert _analytic_offdiag(nets["batch_norm"].arch, z, regime) is None
    offdiag = {norm: generator_offdiag(net, z) for norm, net in nets.items()}
    # batch norm subtracts the batch mean, the component all latents share (every layer's bias, which
    # freezes the plain net): at depth 4, width 64 over 3 seeds it measured 0.01-0.06 against the plain
    # net's 0.96-0.97. Layer norm (no affine part) rescales each latent's features, which leaves the
    # shared component in place: 0.996, even closer to 1 than the plain net.
    assert offdiag["none"] > 0.93 and offdiag["batch_norm"] < 0.2
    assert offdiag["layer_norm"] > offdiag["none"]


def test_regimes_sit_on_their_side_of_the_edge_of_chaos():
    cfg = compose_config("gan")
    frozen, chaotic = cfg.generators.frozen, cfg.generators.chaotic
    chi_frozen = mean_field(frozen.activation, frozen.sigma_w2, frozen.sigma_b2).chi_1.item()
    chi_chaotic = mean_field(chaotic.activation, chaotic.sigma_w2, chaotic.sigma_b2).chi_1.item()
    # the values the config's comment and the README quote (erf: 0.375 and 1.435)
    assert chi_frozen == pytest.approx(0.375, abs=5e-4) and chi_chaotic == pytest.approx(1.435, abs=5e-4)
    # at the ring generator's depth (8 hidden layers + readout) the limit's normalised NTK of two
    # orthogonal inputs is frozen (→ 1) on one side and decorrelated (→ 0) on the other
    depth = cfg.ring.g_depth + 1
    for point, check in ((frozen, lambda c: c > 0.99), (chaotic, lambda c: c < 0.02)):
        profile = depth_profile(spec_from_variances(point.activation, point.sigma_w2, point.sigma_b2, depth=1),
                                depth, correlation=0.0, n_inputs=4, dim=16)
        assert check(profile.normalised_ntk[-1].item())
    for name in ("layer_norm", "batch_norm"):
        regime = cfg.generators[name]
        assert (regime.sigma_w2, regime.sigma_b2, regime.norm) == (frozen.sigma_w2, frozen.sigma_b2, name)


def test_transposed_conv_generator_paints_a_checkerboard_in_the_limit():
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    maps = {}
    for k in (3, 4):
        arch = gan.image_generator((1, 16, 16), 8, 0, 2, k, "erf", 1.0, 0.05)
        maps[k] = pixel_kernels(arch, z).ntk.mean(0)
    ratio_3, share_3 = gan.pixel_share_pattern(maps[3])
    ratio_4, share_4 = gan.pixel_share_pattern(maps[4])
    # k = 3, stride 2: alternate pixels get 2 and 1 filter taps per axis, so the map's own spectrum
    # sits on the Nyquist row/column (measured 0.77 at σ_b² = 2; here ≥ 0.5) and varies by tens of %;
    # k = 4 = 2·stride gives every interior pixel 2 taps: only the border differs (share measured ~0.1)
    assert share_3 > 0.5 and ratio_3 > 1.2
    assert share_4 < share_3 / 3


# ----------------------------------------------------------------------------- config and command line

def test_gan_config_values_are_checked():
    from ntklab.errors import ConfigError

    cases = {"generator=chaotic": None, "dataset=digits": None, "generator=warm": "generator",
             "dataset=cifar": "dataset", "generators.frozen.sigma_w2=0": "generators.frozen.sigma_w2",
             "generators.frozen.norm=group_norm": "generators.frozen.norm", "steps=0": "steps",
             "lr_g=-1": "lr_g", "betas=[0.5]": "betas", "cover_share=0": "cover_share",
             "ring.batch_size=1": "ring.batch_size", "ring.std=0": "ring.std", "ntk_latents=1": "ntk_latents",
             "dataset=digits images.image_size=10": "images.image_size", "dataset=mnist": "images.root",
             "seed=-1": "seed"}
    base = compose_config("gan")
    for override, field in cases.items():
        cfg = copy.deepcopy(base)
        for item in override.split():
            key, value = item.split("=", 1)
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
        if field is None:
            validate(cfg)
            continue
        with pytest.raises(ConfigError, match=f"^{field}:"):
            validate(cfg)
    assert log_steps(30, 15) == [0, 15, 30] and log_steps(10, 4) == [0, 4, 8, 10]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _finished(command_runs, name):
    """The run directory of the started ``gan`` command ``name``, once it exited 0: (run_dir, gan.json, metrics records)."""
    run_dir = command_runs["tmp"] / name
    out, err = command_runs[name].communicate(timeout=300)
    assert command_runs[name].returncode == 0, err
    return run_dir, json.loads((run_dir / "gan.json").read_text()), metrics_records(run_dir)


def test_gan_command_ring_end_to_end(command_runs):
    run_dir, summary, records = _finished(command_runs, "ring")
    assert summary["status"] == "ok" and summary["generator"] == "frozen" and summary["seed"] == 3
    assert summary["phase"]["chi_1"] == pytest.approx(mean_field("erf", 1.0, 2.0).chi_1.item(), rel=1e-12)
    assert [r["step"] for r in records] == [0, 15, 30]
    assert [int(r["step"]) for r in _rows(run_dir / "metrics.csv")] == [0, 15, 30]
    # the final metrics, recomputed here from the saved samples without ntklab.gan
    points = np.array([[float(r["x"]), float(r["y"])] for r in _rows(run_dir / "samples.csv")])
    assert points.shape == (200, 2)
    angles = 2 * np.pi * np.arange(8) / 8
    modes = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    distance = np.linalg.norm(points[:, None, :] - modes[None], axis=2)
    near = distance.min(axis=1) <= 3 * 0.05
    shares = np.bincount(distance.argmin(axis=1)[near], minlength=8) / len(points)
    # samples.csv holds every digit (repr), so the shares agree to rounding
    assert records[-1]["high_quality"] == pytest.approx(near.mean(), abs=1e-12)
    assert records[-1]["modes_covered"] == int((shares >= 0.02).sum())
    assert summary["final"]["ntk_offdiag"] == records[-1]["ntk_offdiag"]
    assert 0.0 <= records[-1]["ntk_offdiag"] <= 1.0
    # the limit's value at init, recomputed: the run draws its 200 evaluation latents, then the 4 NTK ones
    draws = torch.Generator().manual_seed(gan.torch_seed(3, gan.EVAL_DRAWS))
    torch.randn(200, 16, generator=draws)
    z = torch.randn(4, 16, generator=draws).double()
    arch = gan.flat(gan.ring_generator(16, 16, 2, "erf", 1.0, 2.0, "none", "standard"))
    limit = gan.normalised_offdiagonal(analytic_kernels(arch, z).ntk)
    assert summary["ntk"]["analytic_init"] == pytest.approx(limit, rel=1e-12)
    for name in ("samples.png", "ntk.png", "progress.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gan_command_digits_end_to_end(command_runs):
    run_dir, summary, records = _finished(command_runs, "digits")
    assert summary["status"] == "ok" and summary["data"]["image_shape"] == [1, 8, 8]
    assert summary["ntk"]["analytic_init"] is None          # batch_norm: no limit
    assert summary["pixel_kernels"]["note"].startswith("batch_norm has no limit")
    assert [r["step"] for r in records] == [0, 2, 4]
    # the final checkerboard share, recomputed from spectrum.csv: Nyquist row u = 4 or column v = 4
    rows = _rows(run_dir / "spectrum.csv")
    band = sum(float(r["generated"]) for r in rows if int(r["u"]) == 4 or int(r["v"]) == 4)
    total = sum(float(r["generated"]) for r in rows if (int(r["u"]), int(r["v"])) != (0, 0))
    assert records[-1]["checkerboard"] == pytest.approx(band / total, rel=1e-9)
    real_band = sum(float(r["real"]) for r in rows if int(r["u"]) == 4 or int(r["v"]) == 4)
    real_total = sum(float(r["real"]) for r in rows if (int(r["u"]), int(r["v"])) != (0, 0))
    assert summary["data"]["checkerboard"] == pytest.approx(real_band / real_total, rel=1e-6)   # float32 images
    assert len(_rows(run_dir / "pixels.csv")) == 64
    saved = torch.load(run_dir / "samples.pt")
    assert saved["generated"].shape == (64, 1, 8, 8) and float(saved["generated"].abs().max()) <= 1.0
    for name in ("samples.png", "ntk.png", "progress.png", "spectrum.png", "pixel_variance.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gan_command_refuses_an_unknown_generator(command_runs):
    process = command_runs["bad"]
    out, err = process.communicate(timeout=300)
    assert process.returncode == 2 and "generator" in err and "warm" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_seed_interval_is_students_t():
    # mean 2, sample sd 1, t_{0.975, 2} = 4.302653: half-width 4.302653/√3
    interval = gan.seed_interval([1.0, 2.0, 3.0])
    assert interval["mean"] == 2.0 and interval["n"] == 3
    assert interval["high"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert gan.seed_interval([5.0]) == {"n": 1, "mean": 5.0, "low": 5.0, "high": 5.0, "values": [5.0]}
    assert gan.seed_interval([None, 1.0, 1.0])["high"] == 1.0


@pytest.mark.slow
def test_fig_gan_draws_a_finished_run(command_runs, tmp_path):
    from tests.helpers import draw

    assert command_runs["ring"].wait(timeout=300) == 0
    numbers = draw("fig_gan", command_runs["tmp"] / "ring", tmp_path)
    frozen = numbers["regimes"]["frozen"]
    summary = json.loads((command_runs["tmp"] / "ring" / "gan.json").read_text())
    assert frozen["seeds"] == [3] and frozen["steps"] == 30
    assert frozen["high_quality"]["final"]["mean"] == summary["final"]["high_quality"]
    assert frozen["ntk_curve"]["step"] == [0, 15, 30]
