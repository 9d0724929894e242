"""FNet, the quasar-redshift 1-D ResNet of Rastegar Nia et al. (Sec 3.2, Fig. 2).

Input: a spectrum of 4,618 pixels uniform in log λ over 360–1032.5 nm, zero mean and unit norm
(Sec 3.1; ``keras_astro.preprocess.spectra.fnet_normalise``). Eight residual blocks (the authors'
code: 5 of 32 channels, 1 of 64, 1 of 32, 1 of 1), each

    x ─ conv k=500 → BN → ReLU → conv k=200 → BN → ReLU → conv k=15 → BN ─(+)─ ReLU
    └──────────── shortcut: identity, or 1×1 conv → BN in a stage's first block ─┘

keep the length ('same' padding) — 24 convolutions with kernels 500/200/15. The last block's
(4,618 × 1) output is flattened into dense layers of 796 and 199 ReLU units and one linear unit:
the redshift scaled to [0, 1] with the training set's min and max.

``build_fnet(config, conv_impl=...)`` builds the same network, with the same variables in the
same order, from ``keras.layers.Conv1D`` (``"direct"``), from the FFT convolution
:class:`keras_astro.layers.fft_conv.FFTConv1D` (``"fft"``), or FFT for kernels of at least
``config.fft_min_kernel`` taps and direct below (``"auto"``), so weights move between them with
``set_weights(get_weights())``; ``data_format="channels_first"`` (with ``"fft"``) keeps the
activations as (batch, channels, pixels), which the FFT layers prefer. On a CPU the FFT forms are
several times faster; for inference,
``with keras_astro.layers.fft_conv.frozen_kernel_spectra(model): model.predict(...)`` also
reuses the kernels' spectra (``benchmarks/fnet_conv.py``: about 10× the direct model's speed on
2 cores with ``conv_impl="auto"``).

Training (Sec 3.2): MSE, Adam (lr 2.4e-4, β 0.9 / 0.999), L2 weight decay 1e-5, gradient
clipping, learning rate × 0.1 after epochs 75, 85 and 90 (:class:`EpochStepDecay`); or the code's
ReduceLROnPlateau variant (``FNetConfig.preset("code")``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from keras_astro import specs
from keras_astro.layers.fft_conv import FFTConv1D

_SPEC = specs.load_spec("fnet")
_NET = _SPEC["network"]
_TRAIN = _SPEC["training"]
_CODE = _TRAIN["code"]

#: FNet's input length, Sec 3.1 (``data_specs/spectra.yaml`` grids.fnet).
INPUT_LENGTH: int = int(specs.load_spec("spectra")["grids"]["fnet"]["n_pixels"])

CONV_IMPLS: tuple[str, ...] = ("direct", "fft", "auto")
LR_SCHEDULES: tuple[str, ...] = ("step", "plateau", "constant")

# Small network for tests and CPU smoke runs (ours): every code path of the full model — FFT and
# direct convolutions under "auto", projection and identity shortcuts, a one-channel last stage.
_TINY: dict[str, Any] = dict(
    input_length=256,
    kernels=(64, 16, 5),
    stages=((8, 2), (16, 1), (8, 1), (1, 1)),
    dense_units=(32, 8),
    batch_size=16,
    epochs=3,
)

# The paper's network with a quarter of the channels (ours): ``--quick`` on two CPU cores.
_NARROW: dict[str, Any] = dict(stages=((8, 5), (16, 1), (8, 1), (1, 1)))


def _stages(value) -> tuple[tuple[int, int], ...]:
    return tuple((int(c), int(n)) for c, n in value)


@dataclass(frozen=True)
class FNetConfig:
    """Hyper-parameters of FNet; defaults are the paper's (Sec 3.2) and the authors' code's.

    Values neither the paper nor the code fixes are marked *(ours)*; see
    ``docs/fidelity_fnet_model.md``.

    Attributes
    ----------
    input_length
        Pixels per spectrum, 4,618 (Sec 3.1).
    flat_input
        ``True``: the model takes (L,) spectra and adds the channel axis itself; ``False``: (L, 1).
    kernels
        Kernel sizes of the three convolutions of a residual block, (500, 200, 15) (Sec 3.2).
    stages
        ``(channels, blocks)`` per stage; the code's ((32, 5), (64, 1), (32, 1), (1, 1)).
        A stage's first block has a 1×1 projection shortcut, the others the identity.
    dense_units
        Hidden dense layers after the flatten, (796, 199) (code); one linear output follows.
    conv_bias
        Bias in the convolutions *(ours: PyTorch's Conv1d default)*; BN follows each one.
    bn_momentum, bn_epsilon
        Batch normalisation *(ours: PyTorch's BatchNorm1d defaults, momentum 0.1 ≡ Keras 0.9)*.
    weight_decay
        The paper's "weight decay of L2 penalty" 1e-5, in PyTorch's sense (adds
        ``weight_decay · w`` to the gradient). Applied as ``keras.regularizers.L2(weight_decay/2)``
        on every conv and dense kernel, which adds exactly that gradient.
    learning_rate, beta_1, beta_2
        Adam, Sec 3.2.
    adam_epsilon
        Adam's ε *(ours: PyTorch's default 1e-8; Keras' default is 1e-7)*.
    clipnorm
        Gradient clipping threshold on the global norm of all gradients *(ours: the paper names
        clipping, Pascanu et al. 2013, without a value; 1.0)*; ``None`` disables clipping.
    lr_schedule
        ``"step"`` (Sec 3.2: × ``lr_drop_factor`` after each of ``lr_drop_epochs``),
        ``"plateau"`` (the code: ReduceLROnPlateau, see :func:`fnet_callbacks`) or ``"constant"``.
    lr_drop_epochs, lr_drop_factor
        (75, 85, 90) and 0.1, Sec 3.2.
    plateau_factor, plateau_patience, plateau_monitor
        ReduceLROnPlateau settings *(ours: PyTorch's defaults 0.1 and 10 epochs on the
        validation loss; the code's values are not recorded)*.
    batch_size
        128 (code; the paper gives none).
    epochs
        100 *(ours: the length of the Fig. 3 runs; the step schedule's last drop is at 90)*.
    fft_min_kernel
        Under ``conv_impl="auto"`` kernels with at least this many taps use the FFT
        (measured cross-over on 2 CPU cores: between 15 and 200 taps, see the benchmark).
    seed
        Seed of the weight initialisers (``None``: Keras' global seed).
    """

    input_length: int = INPUT_LENGTH
    flat_input: bool = True
    kernels: tuple[int, ...] = tuple(int(k) for k in _NET["kernels"])
    stages: tuple[tuple[int, int], ...] = _stages(_NET["stages"])
    dense_units: tuple[int, ...] = tuple(int(u) for u in _NET["dense_units"])
    conv_bias: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    weight_decay: float = float(_TRAIN["weight_decay"])
    learning_rate: float = float(_TRAIN["learning_rate"])
    beta_1: float = float(_TRAIN["beta_1"])
    beta_2: float = float(_TRAIN["beta_2"])
    adam_epsilon: float = 1e-8
    clipnorm: float | None = 1.0
    lr_schedule: str = "step"
    lr_drop_epochs: tuple[int, ...] = tuple(int(e) for e in _TRAIN["lr_drop_epochs"])
    lr_drop_factor: float = float(_TRAIN["lr_drop_factor"])
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    plateau_monitor: str = "val_loss"
    batch_size: int = int(_CODE["batch_size"])
    epochs: int = 100
    fft_min_kernel: int = 64
    seed: int | None = None

    def __post_init__(self):
        if self.input_length < 1:
            raise ValueError(f"FNetConfig.input_length must be >= 1, got {self.input_length}")
        if len(self.kernels) < 1 or any(int(k) < 1 for k in self.kernels):
            raise ValueError(f"FNetConfig.kernels must be positive integers, got {self.kernels}")
        if not self.stages or any(c < 1 or n < 1 for c, n in self.stages):
            raise ValueError(f"FNetConfig.stages must be (channels >= 1, blocks >= 1) pairs, got {self.stages}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"FNetConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if list(self.lr_drop_epochs) != sorted(self.lr_drop_epochs):
            raise ValueError(f"FNetConfig.lr_drop_epochs must be increasing, got {self.lr_drop_epochs}")
        if self.clipnorm is not None and self.clipnorm <= 0:
            raise ValueError(f"FNetConfig.clipnorm must be > 0 or None, got {self.clipnorm}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "FNetConfig":
        """A named configuration, with optional overrides of any field.

        ``paper`` — the defaults (code's 8 blocks, Sec 3.2 training);
        ``paper_caption`` — Fig. 2 caption's 21 blocks of 32 then 64, 32, 16 channels (72 convs);
        ``code`` — the authors' code's training: lr 2e-5 with ReduceLROnPlateau, batch 128;
        ``tiny`` — 256 pixels, kernels (64, 16, 5), few channels: the same code paths for CPU tests;
        ``narrow`` — the paper's grid, kernels and 24-layer layout with a quarter of the channels
        (8 × 5, 16, 8, 1): ``--quick`` runs on a CPU (ours, docs/fidelity.md).
        """
        presets: dict[str, dict[str, Any]] = {
            "paper": {},
            "paper_caption": {"stages": _stages(_SPEC["presets"]["paper_caption"]["stages"])},
            "code": {"learning_rate": float(_CODE["learning_rate"]), "lr_schedule": str(_CODE["lr_schedule"])},
            "tiny": dict(_TINY),
            "narrow": dict(_NARROW),
        }
        if name not in presets:
            raise ValueError(f"unknown FNet preset {name!r}; known: {sorted(presets)}")
        base = dict(presets[name])
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> "FNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def n_conv_layers(self) -> int:
        """Convolutions on the main path (1×1 shortcuts excluded): 24 for the code's layout."""
        return len(self.kernels) * sum(n for _, n in self.stages)

    @property
    def l2_factor(self) -> float:
        """Keras L2 factor equal to PyTorch's ``weight_decay`` (L2(a) adds 2·a·w to the gradient)."""
        return self.weight_decay / 2.0


def _uses_fft(kernel_size: int, conv_impl: str, fft_min_kernel: int) -> bool:
    if kernel_size <= 1:
        return False
    return conv_impl == "fft" or (conv_impl == "auto" and kernel_size >= fft_min_kernel)


class _Init:
    """He-normal initialisers (untruncated, fan-in: PyTorch's kaiming_normal_), one seed per layer."""

    def __init__(self, seed: int | None):
        self.seed = seed
        self.count = 0

    def __call__(self) -> keras.initializers.Initializer:
        seed = None if self.seed is None else self.seed + self.count
        self.count += 1
        return keras.initializers.VarianceScaling(
            scale=2.0, mode="fan_in", distribution="untruncated_normal", seed=seed
        )


def build_fnet(
    config: FNetConfig | None = None,
    conv_impl: str = "direct",
    name: str = "fnet",
    *,
    data_format: str = "channels_last",
) -> keras.Model:
    """Build FNet (uncompiled) with the Functional API.

    Parameters
    ----------
    config
        :class:`FNetConfig`; default the paper's network.
    conv_impl
        ``"direct"`` (``keras.layers.Conv1D``), ``"fft"`` (:class:`FFTConv1D` for every main-path
        convolution) or ``"auto"`` (FFT when the kernel has ≥ ``config.fft_min_kernel`` taps).
        1×1 shortcut convolutions are direct (with ``channels_first``: an :class:`FFTConv1D` that
        applies a 1-tap kernel as a matmul). The variables and their order do not depend on
        ``conv_impl`` or ``data_format``.
    name
        Model name.
    data_format
        Layout of the activations between layers: ``"channels_last"`` (batch, L, C), Keras'
        default, or ``"channels_first"`` (batch, C, L), which only ``conv_impl="fft"`` supports
        and which spares the FFT layers two transposes each (10–20 % of the inference time on
        2 CPU cores). Input and output shapes, variables and results are the same either way.

    Returns
    -------
    keras.Model mapping (batch, L) — or (batch, L, 1) with ``flat_input=False`` — normalised
    flux to (batch, 1) scaled redshift.
    """
    cfg = config or FNetConfig()
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
    cf = data_format == "channels_first"
    if cf and conv_impl != "fft":
        raise ValueError(
            f"data_format='channels_first' needs conv_impl='fft', got {conv_impl!r} (TensorFlow's CPU "
            "Conv1D supports channels_first only through oneDNN)"
        )
    reg = keras.regularizers.L2(cfg.l2_factor) if cfg.weight_decay else None
    init = _Init(cfg.seed)
    length = cfg.input_length

    def conv(x, filters: int, k: int, name: str):
        cls = FFTConv1D if cf or _uses_fft(k, conv_impl, cfg.fft_min_kernel) else layers.Conv1D
        return cls(
            filters,
            k,
            padding="same",
            use_bias=cfg.conv_bias,
            kernel_initializer=init(),
            kernel_regularizer=reg,
            data_format=data_format,
            name=name,
        )(x)

    def bn(x, name: str):
        return layers.BatchNormalization(
            axis=1 if cf else -1, momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon, name=name
        )(x)

    if cfg.flat_input:
        inputs = keras.Input(shape=(length,), name="flux")
        x = layers.Reshape((1, length) if cf else (length, 1), name="add_channel")(inputs)
    else:
        inputs = keras.Input(shape=(length, 1), name="flux")
        x = layers.Reshape((1, length), name="to_channels_first")(inputs) if cf else inputs
    channels = 1
    block = 0
    for filters, n_blocks in cfg.stages:
        for i in range(n_blocks):
            block += 1
            p = f"block{block}"
            shortcut = x
            if i == 0 or channels != filters:
                shortcut = conv(shortcut, filters, 1, f"{p}_shortcut_conv")
                shortcut = bn(shortcut, f"{p}_shortcut_bn")
            y = x
            for j, k in enumerate(cfg.kernels, start=1):
                y = conv(y, filters, k, f"{p}_conv{j}")
                y = bn(y, f"{p}_bn{j}")
                if j < len(cfg.kernels):
                    y = layers.ReLU(name=f"{p}_relu{j}")(y)
            x = layers.Add(name=f"{p}_add")([y, shortcut])
            x = layers.ReLU(name=f"{p}_out")(x)
            channels = filters
    if cf and channels > 1:  # flatten in channels-last order, so the dense weights fit either layout
        x = layers.Permute((2, 1), name="to_channels_last")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(cfg.dense_units, start=1):
        x = layers.Dense(units, activation="relu", kernel_initializer=init(), kernel_regularizer=reg, name=f"fc{i}")(x)
    outputs = layers.Dense(1, kernel_initializer=init(), kernel_regularizer=reg, name="redshift")(x)
    return keras.Model(inputs, outputs, name=name)


def conv_layers(model: keras.Model, *, include_shortcuts: bool = False) -> list[keras.layers.Conv1D]:
    """The model's convolutions (direct and FFT) in order; 1×1 shortcuts only if asked."""
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv1D)]
    if include_shortcuts:
        return convs
    return [c for c in convs if not c.name.endswith("_shortcut_conv")]


@keras.saving.register_keras_serializable(package="keras_astro")
class EpochStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate × ``factor`` after each of ``drop_epochs`` completed epochs (FNet Sec 3.2).

    ``lr(step) = initial_learning_rate · factor ** #{e in drop_epochs : step // steps_per_epoch ≥ e}``,
    with ``step`` the optimiser's 0-based iteration count: with drops at (75, 85, 90) epochs
    0–74 run at lr₁, 75–84 at 0.1 lr₁, 85–89 at 0.01 lr₁ and 90 onwards at 0.001 lr₁.
    """

    def __init__(
        self, initial_learning_rate: float, drop_epochs, factor: float, steps_per_epoch: int, name: str | None = None
    ):
        super().__init__()
        if int(steps_per_epoch) < 1:
            raise ValueError(f"EpochStepDecay: steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.drop_epochs = tuple(int(e) for e in drop_epochs)
        self.factor = float(factor)
        self.steps_per_epoch = int(steps_per_epoch)
        self.name = name

    def __call__(self, step):
        ops = keras.ops
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        n_drops = ops.zeros((), "float32")
        for e in self.drop_epochs:
            n_drops = n_drops + ops.cast(ops.greater_equal(epoch, e), "float32")
        return self.initial_learning_rate * ops.power(ops.cast(self.factor, "float32"), n_drops)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "drop_epochs": list(self.drop_epochs),
            "factor": self.factor,
            "steps_per_epoch": self.steps_per_epoch,
            "name": self.name,
        }


def learning_rate(config: FNetConfig | None = None, steps_per_epoch: int | None = None):
    """The optimiser's learning rate: an :class:`EpochStepDecay` for ``lr_schedule="step"``, else a float."""
    cfg = config or FNetConfig()
    if cfg.lr_schedule != "step":
        return cfg.learning_rate
    if steps_per_epoch is None:
        raise ValueError("the 'step' schedule (FNet Sec 3.2) needs steps_per_epoch (training spectra / batch size)")
    return EpochStepDecay(cfg.learning_rate, cfg.lr_drop_epochs, cfg.lr_drop_factor, steps_per_epoch)


def fnet_optimizer(config: FNetConfig | None = None, steps_per_epoch: int | None = None) -> keras.optimizers.Adam:
    """Adam with the Sec 3.2 settings and global-norm gradient clipping."""
    cfg = config or FNetConfig()
    return keras.optimizers.Adam(
        learning_rate=learning_rate(cfg, steps_per_epoch),
        beta_1=cfg.beta_1,
        beta_2=cfg.beta_2,
        epsilon=cfg.adam_epsilon,
        global_clipnorm=cfg.clipnorm,
    )


def compile_fnet(
    model: keras.Model,
    config: FNetConfig | None = None,
    *,
    steps_per_epoch: int | None = None,
    metrics: list | None = None,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Compile with MSE and Adam (Sec 3.2); L2 weight decay is already in the kernels' regularisers.

    ``steps_per_epoch`` is required for the step schedule (``config.lr_schedule == "step"``).
    """
    cfg = config or FNetConfig()
    model.compile(
        optimizer=fnet_optimizer(cfg, steps_per_epoch),
        loss=keras.losses.MeanSquaredError(),
        metrics=metrics,
        jit_compile=jit_compile,
    )
    return model


def fnet_callbacks(config: FNetConfig | None = None) -> list[keras.callbacks.Callback]:
    """Callbacks the schedule needs: ReduceLROnPlateau for ``lr_schedule="plateau"``, else none."""
    cfg = config or FNetConfig()
    if cfg.lr_schedule == "plateau":
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor=cfg.plateau_monitor, factor=cfg.plateau_factor, patience=cfg.plateau_patience, verbose=0
            )
        ]
    return []
