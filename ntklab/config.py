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
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import II, MISSING, OmegaConf

from ntklab.errors import MAX_SEED, ConfigError, check_choice, check_seed
from ntklab.quantities import DEFAULT, OPTIONAL
from ntklab.spec import ArchSpec

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
# torch.compile's modes for the training step (TrainConfig.compile); null compiles nothing
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LR_UNITS = ("absolute", "eta_max", "eta_max_empirical")
LR_WIDTH_SCALINGS = ("none", "inverse")
QUANTITIES = OPTIONAL                   # the choices of track.quantities (ntklab.quantities)
DEFAULT_QUANTITIES = DEFAULT           # its default: the spectral quantities are opt-in
PLOT_FORMATS = ("png", "pdf", "svg")    # of the spectrum and phase figures


@dataclass
class MLPConfig:
    """``model=mlp``: the fully connected net (:class:`ntklab.ArchSpec`); out_dim comes from the data's targets."""

    name: str = "mlp"
    depth: int = II("depth")
    width: int = II("width")
    activation: str = "relu"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    bias: bool = True
    parametrization: str = II("parametrization")
    alpha: Optional[float] = None       # lazy scale: train α(f − f_0) on L/α² (Chizat et al. 2019)


@dataclass
class CNNConfig:
    """``model=cnn``: the convolutional net of :func:`ntklab.nets.cnn_layers` on images (N, C, H, W).

    ``width`` is the channels of every conv layer and ``depth`` the number of conv blocks, both from
    the top level, so the sweep presets over width and depth apply unchanged.
    """

    name: str = "cnn"
    depth: int = II("depth")            # conv blocks (conv + activation [+ 2×2 avg pool])
    width: int = II("width")            # channels
    kernel_size: int = 3
    strides: List[int] = field(default_factory=list)       # one per block; empty: all 1
    padding: str = "same"
    pool_after: List[int] = field(default_factory=list)    # blocks (1..depth) followed by a 2×2 avg pool
    readout: str = "gap"                # gap (global average pool) | flatten
    activation: str = "relu"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    bias: bool = True
    parametrization: str = II("parametrization")
    alpha: Optional[float] = None       # lazy scale, as for the MLP


MODEL_SCHEMAS = {"mlp": MLPConfig, "cnn": CNNConfig}


def wants_images(model_cfg) -> bool:
    """Whether the model config takes images (N, C, H, W) rather than vectors."""
    return model_cfg.get("name", "mlp") == "cnn"


@dataclass
class DataConfig:
    """Arguments of :func:`ntklab.data.load_dataset` (see its docstring for each), but ``images``:
    the model decides whether the inputs arrive as images (:func:`wants_images`)."""

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
    balanced: bool = True               # real sets: each split balanced over the classes
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
    # rows per forward/backward pass: a step's gradient is summed over chunks of its (mini-)batch, the
    # same step up to rounding, and the measurements' outputs are computed in chunks too. None:
    # automatic (on the CPU, chunks whose largest layer output is at most 16 MiB, resources.CHUNK_BYTES;
    # on CUDA, the whole batch at once). Nets with batch_norm always take the batch whole.
    chunk_size: Optional[int] = None
    momentum: float = 0.0
    divergence_factor: float = 1e6      # diverged when the loss exceeds this × its initial value
    # steps between reads of the losses back to the host (each a GPU sync): the losses stay on the
    # device in between, and the exact step of a divergence is recovered from them (1: every step)
    divergence_check_every: int = 16


@dataclass
class TrackConfig:
    """What is measured at the log steps and how often the run is checkpointed."""

    quantities: List[str] = field(default_factory=lambda: list(DEFAULT_QUANTITIES))   # any of QUANTITIES
    probe_size: int = 64                # first points of the train set, for kernel_change/kernel_to_limit
    # the opt-in spectral quantities (ntk_top_eigenvalues, sharpness, gauss_newton_share):
    spectrum_points: Optional[int] = None   # on the first this-many train points; null: all of them
    top_eigenvalues: int = 1            # how many of the top eigenvalues of Θ̂ and of the Hessian to record
    lanczos_steps: int = 20             # most Hessian-vector products per measurement; it stops earlier once
    lanczos_tol: float = 0.01           # each top Hessian eigenvalue's estimated error is at most this × λ_max
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
    model: Any = MISSING                # MLPConfig (model=mlp) or CNNConfig (model=cnn)
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    track: TrackConfig = MISSING
    device: str = "auto"
    dtype: str = "float32"              # of the network; kernels and predictions are float64
    seed: int = 0                       # the network's initialisation
    # train the nets of seeds seed, seed+1, ..., seed+seeds-1 at once (torch.func.vmap), each into
    # its own run directory RUN_DIR/seed_<s>, as separate runs with seed=<s> would (1: one run in RUN_DIR)
    seeds: int = 1
    stop_after: Optional[int] = None    # end this invocation after this many steps (resumable)
    # torch.compile the step's forward and backward with this mode (COMPILE_MODES; "reduce-overhead"
    # adds CUDA graphs on a GPU); null: eager, the default, whose numbers are the same bits on every
    # run. Compiled steps fuse operations, so their losses differ from eager ones in the last bits.
    compile: Optional[str] = None


@dataclass
class RegressConfig:
    """The composed config of ``python -m ntklab regress``: kernel regression (t = ∞) with the analytic
    NNGP and NTK of ``model`` on ``data`` (see :mod:`ntklab.commands.regress`)."""

    width: int = 1024                   # enters the kernels under "standard" and "mup" only
    depth: int = 2
    parametrization: str = "ntk"
    model: Any = MISSING                # MLPConfig (model=mlp) or CNNConfig (model=cnn)
    data: DataConfig = MISSING
    device: str = "auto"
    dtype: str = "float64"              # of the kernel arithmetic; float32 only for speed
    ridge: float = 0.0                  # σ² = ridge × mean diagonal of the train kernel (neural-tangents' diag_reg)
    ridges: List[float] = field(default_factory=list)  # candidates chosen on a held-out part of the train set
    validation_fraction: float = 0.2    # the held-out part's share when ridges are given
    solver: str = "auto"                # eigh | cholesky | auto (eigh up to 20,000 train points, Cholesky above)
    block_size: int = 256               # inputs per side of a saved kernel block
    block_elements: Optional[int] = None  # kernel entries per analytic_kernels pass (memory, speed); None: by device
    seed: int = 0                       # of the held-out split
    progress: bool = True               # tqdm progress bar over the kernel blocks; without it a line in the log a minute
    stop_after_blocks: Optional[int] = None   # end this invocation after this many new blocks (resumable)


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    # The group options (configs/model/*.yaml, ...) merge into TrainConfig's typed fields, so they
    # are checked against ModelConfig, DataConfig, ... without a schema of their own.
    store.store(name="train_schema", node=TrainConfig)
    # configs/model/<name>.yaml names its schema in its defaults list, so model=cnn is typed as a CNNConfig
    for name, schema in MODEL_SCHEMAS.items():
        store.store(group="model", name=f"{name}_schema", node=schema)
    store.store(name="spectrum_schema", node=SpectrumConfig)
    store.store(name="phase_schema", node=PhaseConfig)
    store.store(name="chaos_schema", node=ChaosConfig)
    store.store(name="gan_schema", node=GanConfig)
    store.store(name="regress_schema", node=RegressConfig)
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


# the model config's field behind a layer's error ("conv: stride must be ..." → model.strides)
_LAYER_ARGUMENTS = {"out_channels": "width", "out_dim": "width", "stride": "strides"}


def build_arch(model_cfg, in_shape, out_dim: int):
    """The model config as (architecture, ArchSpec or None) for inputs of shape ``in_shape``.

    model=mlp lowers its :class:`ArchSpec` (:func:`ntklab.nets.mlp_layers`); model=cnn builds
    :func:`ntklab.nets.cnn_layers`. The architecture is bound to ``in_shape`` here, so a net that
    does not fit its inputs (images for an MLP, a "valid" kernel larger than the image) fails now,
    as a ConfigError naming the model field and the layer.
    """
    from ntklab.layers import bind
    from ntklab.nets import cnn_layers, mlp_layers

    in_shape = tuple(int(n) for n in in_shape)
    name = model_cfg.get("name", "mlp")
    if name == "mlp":
        if len(in_shape) != 1:
            raise ConfigError("model", f"model=mlp takes vectors, but the data are images of shape {in_shape}; "
                                       "use model=cnn for images")
        spec = build_spec(model_cfg, out_dim)
        return mlp_layers(spec), spec
    check_choice("model.name", name, tuple(MODEL_SCHEMAS))
    if len(in_shape) != 3:
        raise ConfigError("model", f"model=cnn takes images (C, H, W), but the data are vectors of shape {in_shape}; "
                                   "use an image data set (digits, mnist, fashion_mnist, cifar10)")
    try:
        arch = cnn_layers(model_cfg.depth, model_cfg.width, out_dim, kernel_size=model_cfg.kernel_size,
                          strides=list(model_cfg.strides), padding=model_cfg.padding,
                          pool_after=list(model_cfg.pool_after), readout=model_cfg.readout,
                          activation=model_cfg.activation, sigma_w=model_cfg.sigma_w, sigma_b=model_cfg.sigma_b,
                          bias=model_cfg.bias, parametrization=model_cfg.parametrization)
    except ValueError as err:
        raise _model_error(str(err)) from None
    try:
        bind(arch, in_shape)
    except ValueError as err:       # "layer 4 (conv(...)): the 3x3 kernel is larger than the 2x2 input ..."
        raise ConfigError("model", f"does not fit inputs of shape {in_shape}: {err}") from None
    return arch, None


def _model_error(message: str) -> ConfigError:
    """A layer's or cnn_layers' ValueError as a ConfigError on the model field it is about: the
    messages start with the argument ("readout must be ...") or the layer and argument ("conv: stride ...")."""
    layer, _, rest = message.partition(": ")
    if layer in ("conv", "dense", "activation") and rest:
        if layer == "activation":
            return ConfigError("model.activation", rest.removeprefix("activation: "))
        argument = rest.split(" ")[0]
        detail = re.sub(r"^\(\w+\) ", "", rest[len(argument):].lstrip())     # "(channels) must be ..."
        return ConfigError(f"model.{_LAYER_ARGUMENTS.get(argument, argument)}", detail)
    argument = message.split(" ")[0]
    return ConfigError(f"model.{argument}", message[len(argument):].lstrip())


def _at_least(field_name: str, value, minimum, kind: str = "an integer") -> None:
    if value < minimum:
        raise ConfigError(field_name, f"must be {kind} >= {minimum}, got {value!r}")


_GROUPS = {"data": DataConfig, "optim": OptimConfig, "track": TrackConfig}


def _group_schema(key: str, node):
    """The schema of config group ``key`` (the model's by its name), or None for a plain field."""
    if key == "model":
        return MODEL_SCHEMAS.get(node.get("name", "mlp"), MLPConfig)
    return _GROUPS.get(key)


def check_known_keys(cfg, schema, prefix: str = "") -> None:
    """Refuse keys the schema does not have (``+foo=1`` adds one past Hydra's struct mode)."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(schema)]
    for key in cfg.keys():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}", "is not a config field", allowed=fields)
        if key == "model" and not prefix and cfg[key] is not None:
            _check_model_name(cfg[key])
        nested = _group_schema(key, cfg[key]) if not prefix and cfg[key] is not None else None
        if nested is not None:
            check_known_keys(cfg[key], nested, f"{key}.")


def _check_model_name(node) -> None:
    """The model group's ``name`` must be the model its fields were composed for: ``model.name=cnn``
    on the default MLP would ask an MLP's fields for a kernel size."""
    name = node.get("name", "mlp")
    check_choice("model.name", name, tuple(MODEL_SCHEMAS))
    composed = OmegaConf.get_type(node)
    if composed in MODEL_SCHEMAS.values() and composed is not MODEL_SCHEMAS[name]:
        group = next(group for group, schema in MODEL_SCHEMAS.items() if schema is composed)
        raise ConfigError("model.name", f"is {name!r}, but the fields are model={group}'s; choose the model with the "
                                        f"group override model={name} (model.name only names the group chosen)")


def validate(cfg) -> None:
    """Reject values that type-check but make no sense; raises :class:`ConfigError`.

    Model and data fields are validated where they are used (``ArchSpec``, ``load_dataset``),
    so the allowed values are defined in one place; this checks the trainer's own fields.
    """
    check_known_keys(cfg, TrainConfig)
    check_choice("device", cfg.device, DEVICES)
    check_choice("dtype", cfg.dtype, DTYPES)
    check_seed("seed", cfg.seed)
    _at_least("seeds", cfg.seeds, 1)
    if cfg.get("compile") is not None:
        check_choice("compile", cfg.compile, COMPILE_MODES)
    if cfg.seeds > 1 and cfg.seed + cfg.seeds - 1 > MAX_SEED:     # every seed of the group follows the one rule
        raise ConfigError("seeds", f"seed + seeds - 1 must be at most 2**62 - 1, got {cfg.seed} + {cfg.seeds} - 1")
    optim, track = cfg.optim, cfg.track
    _at_least("optim.steps", optim.steps, 1)
    if not (math.isfinite(optim.lr) and optim.lr > 0):
        raise ConfigError("optim.lr", f"must be a finite number > 0, got {optim.lr!r}")
    check_choice("optim.lr_unit", optim.lr_unit, LR_UNITS)
    check_choice("optim.lr_width_scaling", optim.lr_width_scaling, LR_WIDTH_SCALINGS)
    _at_least("optim.base_width", optim.base_width, 1)
    if optim.batch_size is not None:
        _at_least("optim.batch_size", optim.batch_size, 1)
    if optim.get("chunk_size") is not None:
        _at_least("optim.chunk_size", optim.chunk_size, 1)
    if not 0 <= optim.momentum < 1:
        raise ConfigError("optim.momentum", f"must be in [0, 1), got {optim.momentum!r}")
    if not optim.divergence_factor > 1:
        raise ConfigError("optim.divergence_factor", f"must be > 1, got {optim.divergence_factor!r}")
    _at_least("optim.divergence_check_every", optim.divergence_check_every, 1)
    for name in track.quantities:
        check_choice("track.quantities", name, QUANTITIES)
    _at_least("track.probe_size", track.probe_size, 1)
    if track.spectrum_points is not None:
        _at_least("track.spectrum_points", track.spectrum_points, 1)
    _at_least("track.top_eigenvalues", track.top_eigenvalues, 1)
    if not (math.isfinite(track.lanczos_tol) and track.lanczos_tol > 0):
        raise ConfigError("track.lanczos_tol", f"must be a finite number > 0, got {track.lanczos_tol!r}")
    if track.lanczos_steps < track.top_eigenvalues:
        raise ConfigError("track.lanczos_steps", f"must be at least track.top_eigenvalues = {track.top_eigenvalues} "
                          f"(one Hessian-vector product per Lanczos step), got {track.lanczos_steps!r}")
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
    model: MLPConfig = MISSING
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


# ----------------------------------------------------------------------------- chaos
# Values validated by ntklab.commands.chaos.validate.

@dataclass
class ChaosTrainConfig:
    """``train``: full-batch gradient descent to a fixed loss on the probe inputs (``python -m ntklab chaos``)."""

    archs: List[str] = field(default_factory=lambda: ["mlp"])   # which archs are trained (all get the prediction)
    seeds: int = 2                      # the first this many of the seeds are trained
    max_steps: int = 200                # "not reached" beyond
    loss_fraction: float = 0.01         # the target: L_t <= loss_fraction * L_0
    lr_fraction: float = 0.5            # η = lr_fraction * η_max, η_max = 2N/λ_max of the net's NTK at init


@dataclass
class ChaosConfig:
    """The composed config of ``python -m ntklab chaos``: freeze and chaos of finite nets against depth."""

    activation: str = "erf"
    sigma_w2: float = 2.5
    sigma_b2: List[float] = field(default_factory=lambda: [0.05, 0.5, 2.0])
    archs: List[str] = field(default_factory=lambda: ["mlp", "cnn"])
    norms: List[str] = field(default_factory=lambda: ["none", "layer_norm", "batch_norm"])
    norm_position: str = "pre"          # pre: dense/conv, norm, φ;  post: dense/conv, φ, norm
    depths: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 50])
    width: int = 256                    # MLP hidden units
    cnn_channels: int = 32              # CNN channels
    image_size: int = 6                 # CNN inputs (1, image_size, image_size)
    kernel_size: int = 3
    dim: int = 16                       # MLP inputs
    correlations: List[float] = field(default_factory=lambda: [0.9, 0.5, 0.0, -0.5])
    n_random: int = 7                   # random probe inputs beside the anchor and its partners
    seeds: int = 3                      # nets per setting: seed .. seed + seeds - 1
    seed: int = 0
    data_seed: int = 0                  # probe inputs and regression targets
    dtype: str = "float64"
    memory_budget_gb: float = 2.0       # working memory of an empirical NTK (batch_norm: the whole-batch Jacobian)
    train: ChaosTrainConfig = field(default_factory=ChaosTrainConfig)
    progress: bool = True
    plots: bool = True
    plot_correlation: float = 0.5       # the pair drawn in the normalised-NTK figure
    plot_formats: List[str] = field(default_factory=lambda: ["png"])    # any of png, pdf, svg


# ----------------------------------------------------------------------------- gan
# Values validated by ntklab.commands.gan.validate.

@dataclass
class GanRegime:
    """A generator setting: every affine layer at the phase-diagram point (σ_w², σ_b²), the
    activation, and a normalisation after each hidden affine layer (none | layer_norm | batch_norm)."""

    activation: str = "erf"
    sigma_w2: float = 1.0
    sigma_b2: float = 2.0
    norm: str = "none"


def _gan_regimes() -> Dict[str, GanRegime]:
    return {"frozen": GanRegime("erf", 1.0, 2.0, "none"), "chaotic": GanRegime("erf", 3.5, 0.05, "none"),
            "layer_norm": GanRegime("erf", 1.0, 2.0, "layer_norm"),
            "batch_norm": GanRegime("erf", 1.0, 2.0, "batch_norm")}


@dataclass
class GanRingConfig:
    """``dataset=ring``: the 2-D mixture and the MLP generator and critic trained on it."""

    n_modes: int = 8
    radius: float = 2.0
    std: float = 0.05
    latent_dim: int = 16
    g_width: int = 128
    g_depth: int = 8                    # hidden blocks dense → [norm] → φ
    d_width: int = 128
    d_depth: int = 2
    batch_size: int = 256


@dataclass
class GanImageConfig:
    """``dataset=digits`` or ``mnist``: real images and the deconvolution generator (ntklab.gan.image_generator)."""

    n_train: int = 1500                 # GAN training images (and the coverage classifier's)
    n_test: int = 200                   # held out: the coverage classifier's accuracy
    image_size: int = 16                # resized (bilinear) to image_size × image_size
    upsamplings: int = 2                # stride-2 transposed convolutions
    kernel_size: int = 3
    root: Optional[str] = None          # mnist's files (ntklab.data.readers)
    latent_dim: int = 32
    g_width: int = 32                   # channels
    g_depth: int = 3                    # stride-1 blocks at the lowest resolution
    d_width: int = 256
    d_depth: int = 2
    batch_size: int = 64


@dataclass
class GanConfig:
    """The composed config of ``python -m ntklab gan``: one GAN run, one generator (regime), one seed."""

    dataset: str = "ring"               # ring | digits | mnist
    generator: str = "frozen"           # a key of generators
    generators: Dict[str, GanRegime] = field(default_factory=_gan_regimes)
    seed: int = 0
    steps: int = 3000
    lr_g: float = 1e-3                  # Adam
    lr_d: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    parametrization: str = "standard"   # standard | ntk, of G and D (Adam moves standard-parametrized nets faster)
    log_every: int = 500                # metrics and the generator's NTK every this many steps (and at 0 and the end)
    n_eval: int = 2000                  # generated samples per evaluation
    ntk_latents: int = 16               # latent vectors of the normalised NTK
    pixel_latents: int = 8              # latent vectors of the pixel variance maps (images)
    cover_share: float = 0.02           # a mode (class) is covered with at least this share of the samples
    ring: GanRingConfig = field(default_factory=GanRingConfig)
    images: GanImageConfig = field(default_factory=GanImageConfig)
    progress: bool = True
    plots: bool = True
    plot_formats: List[str] = field(default_factory=lambda: ["png"])    # any of png, pdf, svg
