"""Structured configs of the ``python -m ntklab train`` app: one dataclass per config group.

:class:`TrainConfig` is registered in Hydra's ConfigStore as ``train_schema``; the YAML under
the top-level ``configs/`` (installed as the package ``ntklab.configs``) extends it and its group
options merge into its typed fields, so a wrong type or an unknown key such as ``width=abc``
fails when Hydra composes the config. Values that type-check but make no sense
(an unknown activation, width 0, a negative learning rate, a seed outside [0, 2**62 − 1]) and keys
the schema does not have (``+foo=1``, which Hydra's ``+`` adds past struct mode) are rejected by
:func:`validate`, which raises :class:`ntklab.errors.ConfigError` naming the field and the allowed values.

``width``, ``depth`` and ``parametrization`` live at the top level and the model group
interpolates them, so ``width=4096`` works as users type it (``model.width=4096`` works too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import II, MISSING

from ntklab.errors import ConfigError, check_choice, check_seed
from ntklab.quantities import OPTIONAL
from ntklab.spec import ArchSpec

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
LR_UNITS = ("absolute", "eta_max", "eta_max_empirical")
LR_WIDTH_SCALINGS = ("none", "inverse")
QUANTITIES = OPTIONAL                   # the choices of track.quantities (ntklab.quantities)
PLOT_FORMATS = ("png", "pdf", "svg")    # of the spectrum and phase figures


@dataclass
class ModelConfig:
    """The architecture (:class:`ntklab.ArchSpec`); out_dim comes from the data's targets."""

    depth: int = II("depth")
    width: int = II("width")
    activation: str = "relu"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    bias: bool = True
    parametrization: str = II("parametrization")
    alpha: Optional[float] = None       # lazy scale: train α(f − f_0) on L/α² (Chizat et al. 2019)


@dataclass
class DataConfig:
    """Arguments of :func:`ntklab.data.load_dataset` (see its docstring for each)."""

    name: str = "sphere"
    n_train: int = 256
    n_test: int = 256
    dim: int = 10
    target: str = "teacher"
    degree: int = 3
    parity_bits: int = 2
    teacher_depth: int = 1
    teacher_width: int = 256
    teacher_activation: str = "erf"
    noise: float = 0.0
    normalize: str = "default"
    center_targets: bool = False
    targets: str = "scalar"
    classes: Optional[List[int]] = None
    root: Optional[str] = None
    seed: int = 0


@dataclass
class OptimConfig:
    """Gradient descent θ ← θ − η ∇L (optionally mini-batch and momentum) on L = 1/(2Nk)Σ‖f − y‖².

    The step size is η = lr × unit × width factor:
      unit: ``absolute`` → 1; ``eta_max`` → η_max = 2Nk/λ_max of the analytic NTK on the train
        set; ``eta_max_empirical`` → the same with the network's empirical NTK at init (its full
        (N,N,k,k) form while N·k ≤ track.full_kernel_limit, else the per-output mean kernel).
      width factor: ``inverse`` → base_width / max hidden width (the lr ∝ 1/width rule that
        "standard" needs with a fixed lr); ``none`` → 1.
    """

    steps: int = 1000
    lr: float = 0.5
    lr_unit: str = "eta_max"
    lr_width_scaling: str = "none"
    base_width: int = 1
    batch_size: Optional[int] = None    # None: full batch
    momentum: float = 0.0
    divergence_factor: float = 1e6      # diverged when the loss exceeds this × its initial value


@dataclass
class TrackConfig:
    """What is measured at the log steps and how often the run is checkpointed."""

    quantities: List[str] = field(default_factory=lambda: list(QUANTITIES))
    probe_size: int = 64                # first points of the train set, for kernel_change/kernel_to_limit
    log_steps: int = 40                 # log-spaced log steps in [1, steps], plus step 0
    checkpoint_every: int = 250         # steps; 0 disables checkpoints
    full_kernel_limit: int = 2048       # linear prediction uses the full (N,N,k,k) NTK while N·k ≤ this
    plots: bool = True
    save_kernels: bool = True
    progress: bool = True               # tqdm progress bar


@dataclass
class TrainConfig:
    """The composed config of ``python -m ntklab train``."""

    width: int = 1024
    depth: int = 2
    parametrization: str = "ntk"
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    track: TrackConfig = MISSING
    device: str = "auto"
    dtype: str = "float32"              # of the network; kernels and predictions are float64
    seed: int = 0                       # the network's initialisation
    stop_after: Optional[int] = None    # end this invocation after this many steps (resumable)


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    # The group options (configs/model/*.yaml, ...) merge into TrainConfig's typed fields, so they
    # are checked against ModelConfig, DataConfig, ... without a schema of their own.
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="spectrum_schema", node=SpectrumConfig)
    store.store(name="phase_schema", node=PhaseConfig)
    # hydra/launcher=local (configs/hydra/launcher/local.yaml) is ntklab's own launcher plugin.
    # Hydra finds plugins by scanning the hydra_plugins namespace, which an editable install's
    # import hook hides from that scan, so it is registered here as well.
    from hydra.core.plugins import Plugins
    try:
        from hydra_plugins.ntklab_launcher.local_launcher import NtklabLocalLauncher
    except ImportError:     # an install made before the plugin existed: only hydra/launcher=local needs it
        return
    Plugins.instance().register(NtklabLocalLauncher)


def build_spec(model_cfg, out_dim: int) -> ArchSpec:
    """The ArchSpec of the model config; ArchSpec's own validation errors become ConfigErrors."""
    try:
        return ArchSpec(depth=model_cfg.depth, width=model_cfg.width, activation=model_cfg.activation,
                        sigma_w=model_cfg.sigma_w, sigma_b=model_cfg.sigma_b, bias=model_cfg.bias,
                        parametrization=model_cfg.parametrization, out_dim=out_dim)
    except ValueError as err:
        # ArchSpec's messages start with the field's name ("width must be ...", "activation: ...").
        message = str(err)
        name = message.split(" ")[0].rstrip(":")
        raise ConfigError(f"model.{name}", message[len(name):].lstrip(": ")) from None


def _at_least(field_name: str, value, minimum, kind: str = "an integer") -> None:
    if value < minimum:
        raise ConfigError(field_name, f"must be {kind} >= {minimum}, got {value!r}")


_GROUPS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "track": TrackConfig}


def check_known_keys(cfg, schema, prefix: str = "") -> None:
    """Refuse keys the schema does not have (``+foo=1`` adds one past Hydra's struct mode)."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(schema)]
    for key in cfg.keys():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}", "is not a config field", allowed=fields)
        nested = _GROUPS.get(key) if not prefix else None
        if nested is not None and cfg[key] is not None:
            check_known_keys(cfg[key], nested, f"{key}.")


def validate(cfg) -> None:
    """Reject values that type-check but make no sense; raises :class:`ConfigError`.

    Model and data fields are validated where they are used (``ArchSpec``, ``load_dataset``),
    so the allowed values are defined in one place; this checks the trainer's own fields.
    """
    check_known_keys(cfg, TrainConfig)
    check_choice("device", cfg.device, DEVICES)
    check_choice("dtype", cfg.dtype, DTYPES)
    check_seed("seed", cfg.seed)
    optim, track = cfg.optim, cfg.track
    _at_least("optim.steps", optim.steps, 1)
    if not (math.isfinite(optim.lr) and optim.lr > 0):
        raise ConfigError("optim.lr", f"must be a finite number > 0, got {optim.lr!r}")
    check_choice("optim.lr_unit", optim.lr_unit, LR_UNITS)
    check_choice("optim.lr_width_scaling", optim.lr_width_scaling, LR_WIDTH_SCALINGS)
    _at_least("optim.base_width", optim.base_width, 1)
    if optim.batch_size is not None:
        _at_least("optim.batch_size", optim.batch_size, 1)
    if not 0 <= optim.momentum < 1:
        raise ConfigError("optim.momentum", f"must be in [0, 1), got {optim.momentum!r}")
    if not optim.divergence_factor > 1:
        raise ConfigError("optim.divergence_factor", f"must be > 1, got {optim.divergence_factor!r}")
    for name in track.quantities:
        check_choice("track.quantities", name, QUANTITIES)
    _at_least("track.probe_size", track.probe_size, 1)
    _at_least("track.log_steps", track.log_steps, 1)
    _at_least("track.checkpoint_every", track.checkpoint_every, 0)
    _at_least("track.full_kernel_limit", track.full_kernel_limit, 0)
    if cfg.model.alpha is not None and not (math.isfinite(cfg.model.alpha) and cfg.model.alpha > 0):
        raise ConfigError("model.alpha", f"must be a finite number > 0 (or null for plain f), got {cfg.model.alpha!r}")
    if cfg.stop_after is not None:
        _at_least("stop_after", cfg.stop_after, 1)


# ----------------------------------------------------------------------------- spectrum and phase
# Their values are validated by the commands (ntklab.commands.spectrum.validate, ntklab.commands.phase.validate).

def check_plot_formats(formats) -> None:
    """``plot_formats`` of the spectrum and phase configs: one or more of :data:`PLOT_FORMATS`."""
    if not formats:
        raise ConfigError("plot_formats", "must name at least one format", allowed=PLOT_FORMATS)
    for name in formats:
        check_choice("plot_formats", name, PLOT_FORMATS)


@dataclass
class SpectrumConfig:
    """The composed config of ``python -m ntklab spectrum``: the kernels of ``model`` by degree."""

    width: int = 1024                   # enters the kernels of "standard", "mup" (NNGP) and "meanfield"
    depth: int = 2
    parametrization: str = "ntk"
    model: ModelConfig = MISSING
    kind: str = "both"                  # nngp | ntk | both
    domain: str = "boolean_cube"        # boolean_cube ({±1}^d) | sphere (radius √d in R^d)
    d: int = 128                        # input dimension
    max_degree: int = 20                # sphere: degrees 0..max_degree (the cube has all of 0..d)
    max_depth: int = 20                 # fractional-variance sweep over depths 1..max_depth; 0: none
    plot_degrees: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    plots: bool = True
    plot_formats: List[str] = field(default_factory=lambda: ["png"])    # any of png, pdf, svg


@dataclass
class PhasePoint:
    """One (σ_w², σ_b²) setting."""

    sigma_w2: float = 1.0
    sigma_b2: float = 0.0


@dataclass
class PhaseConfig:
    """The composed config of ``python -m ntklab phase``: freeze and chaos of ``activation``."""

    activation: str = "erf"
    sigma_w2_range: List[float] = field(default_factory=lambda: [0.25, 4.0])
    sigma_b2_range: List[float] = field(default_factory=lambda: [0.0, 2.0])
    resolution: int = 41                # grid points per axis
    max_depth: int = 100                # depths 1..max_depth for the two example settings
    frozen: PhasePoint = field(default_factory=lambda: PhasePoint(1.0, 1.0))
    chaotic: PhasePoint = field(default_factory=lambda: PhasePoint(3.5, 0.05))
    correlation: float = 0.5            # x·x'/n_0 of the two inputs of the normalised kernels
    n_inputs: int = 8                   # inputs of the condition number (the pair + random points)
    dim: int = 10                       # their dimension n_0
    seed: int = 0                       # of the random inputs
    plots: bool = True
    plot_formats: List[str] = field(default_factory=lambda: ["png"])    # any of png, pdf, svg
