"""The AGN recognition network of Chen et al. 2021 (Sec 2.3, Fig. 6).

Input (44, 2, 1): 44 bands × (magnitude, error). Three 'same'-padded convolutions with (1×2)
kernels and 16, 32, 32 filters, each with batch normalisation, ReLU and L2 regularisation, give
feature maps (44, 2, 16) → (44, 2, 32) → (44, 2, 32); flattened to 2,816 values they feed two
fully connected layers of 64 and 16 ReLU units with L2 and dropout, and a single sigmoid unit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
from keras import layers

from keras_astro import specs
from keras_astro.callbacks import MonitorStopping
from keras_astro.layers.photometry import FusedBatchNormalization, ToeplitzConv2D
from keras_astro.losses import BinaryFocalLoss
from keras_astro.metrics import Completeness

_STUDY = specs.load_spec("agn_study")
_NET = _STUDY["network"]
_B = _STUDY["presets"]["B"]

PRESETS: tuple[str, ...] = tuple(_STUDY["presets"])


@dataclass(frozen=True)
class AGNConfig:
    """Hyper-parameters of the AGN network; defaults are the paper's (preset B of Table 1).

    Values the paper does not state are marked *(ours)* and listed in docs/fidelity.md.

    Attributes
    ----------
    input_shape, conv_filters, conv_kernel, dense_units
        Network shape, Sec 2.3 / Fig. 6.
    dropout, l2
        Dropout rate after each dense layer and L2 factor on every kernel *(ours: the paper uses
        both but gives no values)*.
    alpha, gamma
        Focal-loss parameters, Eq. 2 / Table 1.
    M, N, delta
        Termination condition, Eq. 3 / Table 1.
    learning_rate
        Adam step size *(ours: Keras' default, the paper names Adam only)*.
    batch_size
        Per-replica batch size; ``None`` (default) trains full batch, one Adam step per epoch on
        the whole training fold — our reading of Algorithm 1 (docs/fidelity.md).
    max_epochs
        Upper bound on epochs; Sec 3.1 reports the optimum at 1,500–3,000 epochs.
    start_from_epoch
        Warm-up epochs before Eq. 3 is applied *(ours; 0 follows the paper)*.
    missing_strategy
        Missing-band filling of Sec 2.2: ``zero`` (paper), ``band_median``, ``neighbour_median``.
    seed
        Seed of weight initialisation and shuffling.
    """

    input_shape: tuple[int, int, int] = tuple(_NET["input_shape"])
    conv_filters: tuple[int, ...] = tuple(_NET["conv_filters"])
    conv_kernel: tuple[int, int] = tuple(_NET["conv_kernel"])
    dense_units: tuple[int, ...] = tuple(_NET["dense_units"])
    dropout: float = 0.25
    l2: float = 1e-4
    alpha: float = float(_B["alpha"])
    gamma: float = float(_B["gamma"])
    M: int = int(_B["M"])
    N: float = float(_B["N"])
    delta: float = float(_B["delta"])
    learning_rate: float = 1e-3
    batch_size: int | None = None
    max_epochs: int = 3000
    start_from_epoch: int = 0
    missing_strategy: str = "zero"
    seed: int = 0

    @classmethod
    def preset(cls, name: str, **overrides) -> "AGNConfig":
        """Model A, B or C of Table 1, with optional overrides of any field."""
        key = name.upper()
        if key not in _STUDY["presets"]:
            raise ValueError(f"unknown preset {name!r}; Table 1 defines {list(PRESETS)}")
        p = _STUDY["presets"][key]
        base = dict(alpha=float(p["alpha"]), gamma=float(p["gamma"]), M=int(p["M"]), N=float(p["N"]), delta=float(p["delta"]))
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> "AGNConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_agn_cnn(config: AGNConfig | None = None, name: str = "agn_cnn", *, fast_layers: bool = True) -> keras.Model:
    """Build the Sec 2.3 network (uncompiled) with the Functional API.

    ``fast_layers`` (default) builds the convolutions and batch normalisations as
    :class:`~keras_astro.layers.photometry.ToeplitzConv2D` and
    :class:`~keras_astro.layers.photometry.FusedBatchNormalization`: subclasses of
    ``keras.layers.Conv2D`` / ``BatchNormalization`` with the same variables, configuration and
    mathematics that train about twice as fast on CPU (docs/fidelity.md).
    ``fast_layers=False`` builds the stock Keras layers; weights transfer either way.
    """
    cfg = config or AGNConfig()
    conv, bn = (ToeplitzConv2D, FusedBatchNormalization) if fast_layers else (layers.Conv2D, layers.BatchNormalization)
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    inputs = keras.Input(shape=cfg.input_shape, name="photometry")
    x = inputs
    for i, f in enumerate(cfg.conv_filters, start=1):
        x = conv(f, cfg.conv_kernel, padding="same", kernel_regularizer=reg, name=f"conv{i}")(x)
        x = bn(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, u in enumerate(cfg.dense_units, start=1):
        x = layers.Dense(u, activation="relu", kernel_regularizer=reg, name=f"fc{i}")(x)
        x = layers.Dropout(cfg.dropout, name=f"dropout{i}")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="p_agn")(x)
    return keras.Model(inputs, outputs, name=name)


def agn_metrics() -> list[keras.metrics.Metric]:
    """AGN completeness, SFG completeness and accuracy (Eqs. 4–6) as Keras metrics."""
    return [
        Completeness(positive=1, name="agn_completeness"),
        Completeness(positive=0, name="sfg_completeness"),
        keras.metrics.BinaryAccuracy(name="accuracy"),
    ]


def compile_agn_cnn(model: keras.Model, config: AGNConfig | None = None, *, jit_compile="auto") -> keras.Model:
    """Compile with Adam, the focal loss of Eq. 2 and the Table 1 metrics."""
    cfg = config or AGNConfig()
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=BinaryFocalLoss(alpha=cfg.alpha, gamma=cfg.gamma),
        metrics=agn_metrics(),
        jit_compile=jit_compile,
    )
    return model


def stopping_callback(config: AGNConfig | None = None, **kwargs) -> MonitorStopping:
    """The Eq. 3 termination condition configured from ``config``."""
    cfg = config or AGNConfig()
    return MonitorStopping(N=cfg.N, M=cfg.M, delta=cfg.delta, start_from_epoch=cfg.start_from_epoch, **kwargs)
