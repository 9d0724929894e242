"""The mixed-input (CNN + MLP) classifier of the spectral-classification thesis (Sec 7, Fig. 16).

Csepreghy (2020), Sec 7; layers from the authors' code (``MixedInputModel._build_cnn``,
``_build_mlp``, ``_build_models``; ``data_specs/thesis_models.yaml`` mixed_input)::

    flux (L,) raw ─ Normalization ─ Reshape (L, 1)
        ─ Conv1D 256 k5 → MaxPool 2 → Dropout .1 ─ Conv1D 128 k5 → MaxPool 2 → Dropout .1
        ─ Conv1D 64 k3 → MaxPool 2 → Dropout .1 ─ Flatten ─ Dense 64 → Dropout .5 ─ Dense 32 ─┐
    tabular (T,) raw ─ NaN → −99 ─ Normalization                                            ├ concat
        ─ Dense 128 (he_uniform) → Dropout .5 ─ Dense 64 (he_uniform) ───────────────────────┘
        ─ Dense 128 ─ Dense n_classes softmax

All activations ReLU, convolutions 'valid'. Adam 1e-3, batch 32, 60 epochs (Sec 7.3).

The standardisation the thesis did with sklearn's ``StandardScaler`` (fitted on the training
split, per flux pixel and per tabular column) lives *inside* the model as two
``keras.layers.Normalization(axis=-1)`` layers, adapted with :func:`adapt_normalizers`; a missing
tabular value (NaN) becomes −99 first (:class:`MissingToValue`), the thesis's code for a line whose
equivalent width could not be measured. So a saved or exported model takes raw inputs:
``{"flux": (N, L) float32 fluxes, "tabular": (N, T) float32 in the order of tabular_columns()}``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from keras_astro import specs

__all__ = [
    "MISSING_VALUE",
    "MixedInputConfig",
    "MissingToValue",
    "adapt_normalizers",
    "build_mixed_input",
    "compile_mixed_input",
    "tabular_columns",
]

log = logging.getLogger(__name__)

_SPEC = specs.load_spec("thesis_models")["mixed_input"]
_CNN = _SPEC["cnn_branch"]
_MLP = _SPEC["mlp_branch"]
_HEAD = _SPEC["head"]
_SPECTRA = specs.load_spec("spectra")

#: Missing-value code of the tabular inputs (thesis code; ``spectra.yaml`` equivalent_width_missing).
MISSING_VALUE: float = float(_SPECTRA["equivalent_width_missing"])


def _of(block: list[dict], kind: str, key: str) -> tuple:
    return tuple(entry[key] for entry in block if entry["layer"] == kind)


def tabular_columns(with_equivalent_widths: bool = False) -> list[str]:
    """Names of the tabular inputs, in input order.

    ``z, zErr, petroMag_u … petroMag_z, petroMagErr_u … petroMagErr_z`` (Sec 7.1), then — if
    asked — the 14 equivalent-width features under the line names of ``data_specs/spectra.yaml``
    (``keras_astro.specs.spectral_lines()``): 12 or 26 columns.
    """
    cols = [str(c) for c in _SPEC["tabular_base_columns"]]
    if with_equivalent_widths:
        cols += [str(line["name"]) for line in specs.spectral_lines()]
    return cols


@dataclass(frozen=True)
class MixedInputConfig:
    """Shape and training settings of the mixed-input network; defaults are the authors' code.

    Attributes
    ----------
    n_classes
        Output classes: 3 (GALAXY, QSO, STAR), 8 galaxy subclasses or 15 star groups (Sec 7.3).
    input_length
        Flux pixels (3,736 on the thesis grid, ``spectra.yaml`` grids.thesis).
    n_tabular
        Tabular columns: 12 without, 26 with the equivalent widths (:func:`tabular_columns`).
    conv_filters, conv_kernels, pool_sizes, conv_dropout
        CNN branch: Conv1D → MaxPooling1D → Dropout blocks.
    cnn_dense_units, cnn_dense_dropout
        CNN branch head: Dense 64 → Dropout 0.5 → Dense 32.
    mlp_units, mlp_dropout, mlp_initializer
        MLP branch: Dense 128 → Dropout 0.5 → Dense 64, He-uniform initialised.
    head_units
        Dense layers after the concatenation, before the softmax.
    activation, conv_padding
        ReLU everywhere but the output; 'valid' convolutions (Keras default, as in the code).
    missing_value
        Value that replaces NaN in the tabular input (−99, the thesis's code).
    learning_rate, batch_size, epochs
        Adam 1e-3, batch 32, 60 epochs (Sec 7.3).
    one_hot_labels
        Categorical cross-entropy on one-hot labels (the code) instead of the sparse form on
        integer labels (default; same numbers).
    """

    n_classes: int = len(_SPECTRA["classes"])
    input_length: int = int(_SPECTRA["grids"]["thesis"]["n_pixels"])
    n_tabular: int = len(_SPEC["tabular_base_columns"])
    conv_filters: tuple[int, ...] = tuple(int(v) for v in _of(_CNN, "Conv1D", "filters"))
    conv_kernels: tuple[int, ...] = tuple(int(v) for v in _of(_CNN, "Conv1D", "kernel_size"))
    pool_sizes: tuple[int, ...] = tuple(int(v) for v in _of(_CNN, "MaxPooling1D", "pool_size"))
    conv_dropout: float = float(_of(_CNN, "Dropout", "rate")[0])
    cnn_dense_units: tuple[int, ...] = tuple(int(v) for v in _of(_CNN, "Dense", "units"))
    cnn_dense_dropout: float = float(_of(_CNN, "Dropout", "rate")[-1])
    mlp_units: tuple[int, ...] = tuple(int(v) for v in _of(_MLP, "Dense", "units"))
    mlp_dropout: float = float(_of(_MLP, "Dropout", "rate")[0])
    mlp_initializer: str = str(_of(_MLP, "Dense", "kernel_initializer")[0])
    head_units: tuple[int, ...] = tuple(int(v) for v in _of(_HEAD, "Dense", "units") if v != "n_classes")
    activation: str = "relu"
    conv_padding: str = "valid"
    missing_value: float = MISSING_VALUE
    learning_rate: float = float(_SPEC["optimizer"]["learning_rate"])
    batch_size: int = int(_SPEC["batch_size"])
    epochs: int = int(_SPEC["epochs"])
    one_hot_labels: bool = False

    def __post_init__(self):
        if not (len(self.conv_filters) == len(self.conv_kernels) == len(self.pool_sizes)):
            raise ValueError(
                "MixedInputConfig: conv_filters, conv_kernels and pool_sizes need one entry per conv block, got "
                f"{len(self.conv_filters)}, {len(self.conv_kernels)}, {len(self.pool_sizes)}"
            )
        if self.n_classes < 2 or self.n_tabular < 1 or self.input_length < 1:
            raise ValueError(
                f"MixedInputConfig: need n_classes >= 2, n_tabular >= 1, input_length >= 1; got "
                f"{self.n_classes}, {self.n_tabular}, {self.input_length}"
            )
        if self.conv_output_length() < 1:
            raise ValueError(
                f"MixedInputConfig: input_length {self.input_length} is too short for the conv blocks "
                f"(kernels {self.conv_kernels}, pools {self.pool_sizes})"
            )

    @classmethod
    def for_tabular(cls, with_equivalent_widths: bool, **overrides) -> "MixedInputConfig":
        """Config whose ``n_tabular`` matches :func:`tabular_columns` (12 or 26 columns)."""
        return cls(n_tabular=len(tabular_columns(with_equivalent_widths)), **overrides)

    def conv_output_length(self) -> int:
        """Length of the CNN branch's last feature map (464 for 3,736 pixels)."""
        n = int(self.input_length)
        for k, p in zip(self.conv_kernels, self.pool_sizes):
            n = n - int(k) + 1 if self.conv_padding == "valid" else n
            n = n // int(p) if n >= 1 else 0
        return n

    def replace(self, **changes) -> "MixedInputConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@keras.saving.register_keras_serializable(package="keras_astro")
class MissingToValue(keras.layers.Layer):
    """Replace NaN entries by a constant (the thesis's −99 for missing tabular values).

    Input and output: any shape, float. ``value`` is applied element-wise; finite values pass
    unchanged. The numpy equivalent is ``np.where(np.isnan(x), value, x)``.
    """

    def __init__(self, value: float = MISSING_VALUE, **kwargs):
        super().__init__(**kwargs)
        self.value = float(value)

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        return ops.where(ops.isnan(x), ops.full_like(x, self.value), x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        cfg = super().get_config()
        cfg.update(value=self.value)
        return cfg


def _check_2d(name: str, x, width: int, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name}: expected shape (N, {width}) ({what}), got {a.shape}")
    if a.shape[0] < 1:
        raise ValueError(f"{name}: no rows to adapt on")
    return a


def _unit_variance_where_constant(norm: layers.Normalization) -> None:
    """StandardScaler's rule: a constant column is centred but not scaled (scale 1)."""
    var = np.asarray(keras.ops.convert_to_numpy(norm.adapt_variance))
    if np.any(var == 0):
        norm.adapt_variance.assign(np.where(var == 0, 1.0, var).astype(var.dtype))
        norm.finalize_state()


def adapt_normalizers(
    config: MixedInputConfig | None, flux_train, tabular_train
) -> tuple[layers.Normalization, layers.Normalization]:
    """Normalization layers adapted on the training split, as the thesis's StandardScalers.

    Parameters
    ----------
    config
        Gives the expected widths (``input_length``, ``n_tabular``) and the missing value.
    flux_train
        (N, input_length) raw fluxes of the training split; must be finite.
    tabular_train
        (N, n_tabular) raw tabular values of the training split, NaN for missing; NaN is
        replaced by ``config.missing_value`` before the statistics are taken, as in the thesis.

    Returns
    -------
    (flux_norm, tabular_norm)
        ``keras.layers.Normalization(axis=-1)`` layers named ``flux_standardise`` and
        ``tabular_standardise``: per-pixel and per-column mean and population variance; a
        constant column gets variance 1 (sklearn's rule) instead of Keras's division by ε.
    """
    cfg = config or MixedInputConfig()
    flux = _check_2d("flux_train", flux_train, cfg.input_length, "raw fluxes, one row per spectrum")
    tab = _check_2d(
        "tabular_train", tabular_train, cfg.n_tabular, "raw tabular values in the order of tabular_columns()"
    )
    if not np.all(np.isfinite(flux)):
        raise ValueError("flux_train: fluxes must be finite (the thesis drops spectra with missing fluxes, Sec 4.2)")
    tab = np.where(np.isnan(tab), np.float32(cfg.missing_value), tab)
    flux_norm = layers.Normalization(axis=-1, name="flux_standardise")
    tab_norm = layers.Normalization(axis=-1, name="tabular_standardise")
    flux_norm.adapt(flux)
    tab_norm.adapt(tab)
    _unit_variance_where_constant(flux_norm)
    _unit_variance_where_constant(tab_norm)
    return flux_norm, tab_norm


def compile_mixed_input(model: keras.Model, config: MixedInputConfig | None = None) -> keras.Model:
    """Compile with Adam (``config.learning_rate``), cross-entropy and accuracy (the code's)."""
    cfg = config or MixedInputConfig()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
        loss="categorical_crossentropy" if cfg.one_hot_labels else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_mixed_input(
    config: MixedInputConfig | None = None,
    *,
    flux_normalizer: layers.Normalization | None = None,
    tabular_normalizer: layers.Normalization | None = None,
    adapt_data: tuple[Any, Any] | None = None,
    compile: bool = True,
    name: str = "mixed_input",
) -> keras.Model:
    """Build the Sec 7 network on raw inputs ``{"flux": (L,), "tabular": (T,)}``.

    Parameters
    ----------
    config
        :class:`MixedInputConfig`; default: the authors' network for 3 classes, 3,736 pixels and
        the 12 photometric/redshift columns.
    flux_normalizer, tabular_normalizer
        Normalization layers from :func:`adapt_normalizers`.
    adapt_data
        ``(flux_train, tabular_train)``: adapt the normalizers here instead (not together with
        the two layers).
    compile
        Compile with :func:`compile_mixed_input`.
    name
        Model name.

    Without normalizers or ``adapt_data`` the Normalization layers start as the identity (mean
    0, variance 1) and must be adapted (``model.get_layer("flux_standardise").adapt(...)``) or
    loaded with weights before use; a warning says so.
    """
    cfg = config or MixedInputConfig()
    if adapt_data is not None:
        if flux_normalizer is not None or tabular_normalizer is not None:
            raise ValueError("pass either adapt_data or the two normalizers, not both")
        flux_normalizer, tabular_normalizer = adapt_normalizers(cfg, *adapt_data)
    if flux_normalizer is None or tabular_normalizer is None:
        log.warning("build_mixed_input: normalizers not adapted; inputs pass unscaled until they are")
    flux_norm = flux_normalizer or layers.Normalization(axis=-1, name="flux_standardise")
    tab_norm = tabular_normalizer or layers.Normalization(axis=-1, name="tabular_standardise")

    flux_in = keras.Input(shape=(cfg.input_length,), name="flux")
    tab_in = keras.Input(shape=(cfg.n_tabular,), name="tabular")

    # CNN branch on the fluxes (MixedInputModel._build_cnn).
    x = flux_norm(flux_in)
    x = layers.Reshape((cfg.input_length, 1), name="flux_channel")(x)
    for i, (f, k, p) in enumerate(zip(cfg.conv_filters, cfg.conv_kernels, cfg.pool_sizes), start=1):
        x = layers.Conv1D(f, k, activation=cfg.activation, padding=cfg.conv_padding, name=f"cnn_conv_{i}")(x)
        x = layers.MaxPooling1D(pool_size=p, name=f"cnn_pool_{i}")(x)
        x = layers.Dropout(cfg.conv_dropout, name=f"cnn_dropout_{i}")(x)
    x = layers.Flatten(name="cnn_flatten")(x)
    for j, u in enumerate(cfg.cnn_dense_units, start=1):
        x = layers.Dense(u, activation=cfg.activation, name=f"cnn_dense_{j}")(x)
        if j < len(cfg.cnn_dense_units):
            x = layers.Dropout(cfg.cnn_dense_dropout, name=f"cnn_dense_dropout_{j}")(x)

    # MLP branch on the tabular values (MixedInputModel._build_mlp).
    t = MissingToValue(cfg.missing_value, name="tabular_missing")(tab_in)
    t = tab_norm(t)
    for j, u in enumerate(cfg.mlp_units, start=1):
        t = layers.Dense(u, activation=cfg.activation, kernel_initializer=cfg.mlp_initializer, name=f"mlp_dense_{j}")(t)
        if j < len(cfg.mlp_units):
            t = layers.Dropout(cfg.mlp_dropout, name=f"mlp_dropout_{j}")(t)

    # Head (MixedInputModel._build_models): the code concatenates [cnn, mlp].
    h = layers.Concatenate(name="concatenate")([x, t])
    for j, u in enumerate(cfg.head_units, start=1):
        h = layers.Dense(u, activation=cfg.activation, name=f"head_dense_{j}")(h)
    out = layers.Dense(cfg.n_classes, activation="softmax", name="class_probabilities")(h)

    model = keras.Model(inputs={"flux": flux_in, "tabular": tab_in}, outputs=out, name=name)
    if compile:
        compile_mixed_input(model, cfg)
    return model
