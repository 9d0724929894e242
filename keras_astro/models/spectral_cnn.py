"""The flux-only 1-D CNN of the spectral-classification thesis, tuned with keras-tuner (Sec 6).

Csepreghy (2020), Sec 6.3 and Appendix 10.4 (``CNN._build_model``). The search space is the
appendix code's, with its hyperparameter names, so a trial table reads like Tables 4–5:

- ``n_conv_layers``: Int 2–6 (default 2), the number of Conv1D layers;
- ``conv_layer_<i>_filters``: {64, 128, 256, 512} for i ≤ 3, {64, 128, 256} for i ≥ 4 (default 256);
- ``conv_layer_<i>_kernel_size``: {3, 5, 7} (default 3);
- ``max_pool_size``: Int 1–4 (default 1), one size shared by the MaxPooling1D after conv layers
  2, 3 and 4 (1 = no pooling);
- ``n_dense_layers``: Int 2–6 (default 2), *counting the softmax layer*: hidden Dense layers
  ``dense_layer_1 … dense_layer_<n−1>``;
- ``dense_layer_<j>_nodes``: {64, 128, 256, 512} (default 256);
- ``learning_rate``: {1e-3, 1e-4} (default 1e-3), Adam.

Architecture (one point of the space)::

    flux (L, 1) ─ [Conv1D(f_i, k_i, ReLU, 'valid') → Dropout 0.1 → MaxPool(p) if i ∈ {2, 3, 4}]
                  for i = 1 … n_conv_layers
                ─ Flatten ─ [Dense(u_j, ReLU) → Dropout 0.5] for j = 1 … n_dense_layers − 1
                ─ Dense(n_classes, softmax)

Parameters of layers a trial does not use are declared under
:meth:`keras_tuner.HyperParameters.conditional_scope`, so a trial's values hold only the active
ones (the thesis's code left them registered and listed; Tables 4–5 show the consequences, see
``docs/fidelity_thesis_models.md``).

Input: standardised fluxes (sklearn's ``StandardScaler`` fitted on the training split, as in the
thesis), shape ``(input_length, 1)`` float32; with ``flat_input=True`` the model takes
``(input_length,)`` and adds the channel axis with a ``Reshape`` layer.

Departures, all in ``docs/fidelity_thesis_models.md``: hidden Dense layers use ReLU (Fig. 10 and
the authors' retrained best model; the tuning code had none: ``space={"dense_activation": None}``); the loss
is sparse categorical cross-entropy on integer labels (the code one-hot encodes and uses
categorical cross-entropy: ``one_hot_labels=True``); the two losses give the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import keras
import keras_tuner as kt
from keras import layers

from keras_astro import specs

__all__ = [
    "SpectralCNNSpace",
    "SpectralCNNHyperModel",
    "build_spectral_cnn",
    "resolve_hparams",
    "flatten_length",
    "min_input_length",
    "tuner_settings",
    "BEST_HPARAMS",
    "BEST_TRIAL_AS_TUNED",
    "INPUT_LENGTH",
]

_SPEC = specs.load_spec("thesis_models")["spectral_cnn"]
_SPACE = _SPEC["search_space"]

#: Pixels of the thesis's flux grid (Sec 4.2; ``data_specs/spectra.yaml`` grids.thesis).
INPUT_LENGTH: int = int(specs.load_spec("spectra")["grids"]["thesis"]["n_pixels"])

#: The thesis's best trial, Table 5 trial 13 (val. accuracy 0.982), as printed: 6 conv layers and
#: 5 hidden dense layers (``n_dense_layers`` = 6 in the code's counting, which includes the
#: softmax layer). This is also the network the authors retrained for 60 epochs (test accuracy
#: 0.989, Sec 6.4).
BEST_HPARAMS: dict[str, Any] = dict(_SPEC["best_trial"]["hparams"])

#: The same trial as the tuner actually built it: the authors' keras-tuner log records
#: ``n_conv_layers = 5`` (``conv_layer_6_*`` were registered by an earlier trial but inactive).
BEST_TRIAL_AS_TUNED: dict[str, Any] = {
    k: v for k, v in {**BEST_HPARAMS, **_SPEC["best_trial"]["as_tuned"]}.items() if not k.startswith("conv_layer_6")
}


@dataclass(frozen=True)
class SpectralCNNSpace:
    """The search space and the fixed parts of the architecture (Appendix 10.4).

    Defaults come from ``data_specs/thesis_models.yaml`` (``spectral_cnn.search_space``).

    Attributes
    ----------
    n_conv_layers
        (min, max) of the number of Conv1D layers.
    conv_filters, deep_conv_filters, deep_from_layer, filters_default
        Filter choices of conv layers ``1 … deep_from_layer − 1`` and of the deeper ones, and the
        default (256).
    kernel_sizes
        Kernel-size choices of every conv layer (default: the first).
    conv_activation, conv_padding, conv_dropout
        Fixed: ReLU, 'valid' (Keras default, as in the code), Dropout 0.1 after every conv.
    max_pool_size
        (min, max) of the shared pool size; 1 means no pooling (Fig. 10 caption).
    pool_after_conv_layers
        Conv layers (1-based) followed by the pooling layer: 2, 3, 4 (code: ``if i < 5``).
    n_dense_layers
        (min, max) of the number of Dense layers *including* the softmax output.
    dense_nodes, nodes_default, dense_dropout, dense_activation
        Hidden Dense choices, default 256, Dropout 0.5 after each, ReLU (``None`` = linear, as in
        the tuning code).
    learning_rates
        Adam step-size choices (default: the first).
    """

    n_conv_layers: tuple[int, int] = (int(_SPACE["n_conv_layers"]["min"]), int(_SPACE["n_conv_layers"]["max"]))
    conv_filters: tuple[int, ...] = tuple(int(v) for v in _SPACE["conv_filters"])
    deep_conv_filters: tuple[int, ...] = tuple(int(v) for v in _SPACE["deep_conv_filters"])
    deep_from_layer: int = int(_SPACE["deep_from_layer"])
    filters_default: int = int(_SPACE["filters_default"])
    kernel_sizes: tuple[int, ...] = tuple(int(v) for v in _SPACE["conv_kernel_sizes"])
    conv_activation: str = str(_SPACE["conv_activation"])
    conv_padding: str = str(_SPACE["conv_padding"])
    conv_dropout: float = float(_SPACE["conv_dropout"])
    max_pool_size: tuple[int, int] = (int(_SPACE["max_pool_size"]["min"]), int(_SPACE["max_pool_size"]["max"]))
    pool_after_conv_layers: tuple[int, ...] = tuple(int(v) for v in _SPACE["pool_after_conv_layers"])
    n_dense_layers: tuple[int, int] = (int(_SPACE["n_dense_layers"]["min"]), int(_SPACE["n_dense_layers"]["max"]))
    dense_nodes: tuple[int, ...] = tuple(int(v) for v in _SPACE["dense_nodes"])
    nodes_default: int = int(_SPACE["nodes_default"])
    dense_dropout: float = float(_SPACE["dense_dropout"])
    dense_activation: str | None = _SPACE["dense_activation"]
    learning_rates: tuple[float, ...] = tuple(float(v) for v in _SPACE["learning_rate"])

    def __post_init__(self):
        for name in ("n_conv_layers", "max_pool_size", "n_dense_layers"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"SpectralCNNSpace.{name}: expected 1 <= min <= max, got {(lo, hi)}")
        if self.n_dense_layers[0] < 1:
            raise ValueError("SpectralCNNSpace.n_dense_layers: the count includes the softmax layer, so min >= 1")
        for name in ("conv_filters", "deep_conv_filters", "kernel_sizes", "dense_nodes", "learning_rates"):
            if not getattr(self, name):
                raise ValueError(f"SpectralCNNSpace.{name}: needs at least one value")

    def replace(self, **changes) -> "SpectralCNNSpace":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def filter_choices(self, layer: int) -> tuple[int, ...]:
        """Filter choices of conv layer ``layer`` (1-based)."""
        return self.conv_filters if layer < self.deep_from_layer else self.deep_conv_filters


def _as_space(space: SpectralCNNSpace | Mapping[str, Any] | None) -> SpectralCNNSpace:
    if space is None:
        return SpectralCNNSpace()
    if isinstance(space, SpectralCNNSpace):
        return space
    if isinstance(space, Mapping):
        known = {f.name for f in dataclasses.fields(SpectralCNNSpace)}
        bad = sorted(set(space) - known)
        if bad:
            raise ValueError(f"unknown search-space fields {bad}; SpectralCNNSpace has {sorted(known)}")
        return SpectralCNNSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in space.items()})
    raise TypeError(f"space must be a SpectralCNNSpace, a mapping of its fields or None, not {type(space).__name__}")


@dataclass(frozen=True)
class _Architecture:
    conv: tuple[tuple[int, int], ...]  # (filters, kernel) per conv layer
    pool: int
    dense: tuple[int, ...]  # hidden units
    learning_rate: float


def _scope(hp: kt.HyperParameters, parent: str, needed: int, bounds: tuple[int, int]):
    """Conditional scope 'parent >= needed' (none when always true)."""
    lo, hi = bounds
    if needed <= lo:
        return contextlib.nullcontext()
    return hp.conditional_scope(parent, list(range(needed, hi + 1)))


def _choice(hp: kt.HyperParameters, name: str, values: tuple, default=None):
    default = default if default in values else None
    return hp.Choice(name, values=list(values), default=default)


def _declare(hp: kt.HyperParameters, space: SpectralCNNSpace) -> _Architecture:
    """Declare the whole space on ``hp`` (in the code's order) and return the active point."""
    n_conv = hp.Int("n_conv_layers", *space.n_conv_layers)
    conv = []
    for i in range(1, space.n_conv_layers[1] + 1):
        with _scope(hp, "n_conv_layers", i, space.n_conv_layers):
            f = _choice(hp, f"conv_layer_{i}_filters", space.filter_choices(i), space.filters_default)
            k = _choice(hp, f"conv_layer_{i}_kernel_size", space.kernel_sizes)
        if i <= n_conv and f is not None and k is not None:  # None: inactive (or an out-of-space count)
            conv.append((int(f), int(k)))
        if i == 1:
            n_dense = hp.Int("n_dense_layers", *space.n_dense_layers)
            lr = _choice(hp, "learning_rate", space.learning_rates)
    first_pool = min(space.pool_after_conv_layers, default=None)
    pool = 1
    if first_pool is not None and first_pool <= space.n_conv_layers[1]:
        with _scope(hp, "n_conv_layers", first_pool, space.n_conv_layers):
            p = hp.Int("max_pool_size", *space.max_pool_size)
        pool = 1 if p is None else int(p)
    dense = []
    for j in range(1, space.n_dense_layers[1]):
        with _scope(hp, "n_dense_layers", j + 1, space.n_dense_layers):
            u = _choice(hp, f"dense_layer_{j}_nodes", space.dense_nodes, space.nodes_default)
        if j < n_dense and u is not None:
            dense.append(int(u))
    return _Architecture(conv=tuple(conv), pool=pool, dense=tuple(dense), learning_rate=float(lr))


def _flatten_length(arch: _Architecture, space: SpectralCNNSpace, input_length: int) -> int:
    n = int(input_length)
    for i, (_, k) in enumerate(arch.conv, start=1):
        n = n - k + 1 if space.conv_padding == "valid" else n
        if n < 1:
            return 0
        if i in space.pool_after_conv_layers and arch.pool > 1:
            n //= arch.pool
    return n


def flatten_length(hparams: Mapping[str, Any] | kt.HyperParameters, input_length: int, *, space=None) -> int:
    """Length of the last conv block's output for one point (0 = the input is too short)."""
    sp = _as_space(space)
    arch, _ = _resolve(hparams, sp)
    return _flatten_length(arch, sp, input_length)


def min_input_length(space: SpectralCNNSpace | Mapping[str, Any] | None = None) -> int:
    """Shortest input for which every point of the space has a non-empty conv output.

    The worst case is the deepest network with the largest kernels and pools: 964 pixels for the
    thesis's space (its 3,736-pixel grid is far above).
    """
    sp = _as_space(space)
    worst = _Architecture(
        conv=tuple((1, max(sp.kernel_sizes)) for _ in range(sp.n_conv_layers[1])),
        pool=sp.max_pool_size[1],
        dense=(),
        learning_rate=0.0,
    )
    n = 1
    while _flatten_length(worst, sp, n) < 1:
        n += 1
    return n


def _resolve(
    hparams: Mapping[str, Any] | kt.HyperParameters | None, space: SpectralCNNSpace
) -> tuple[_Architecture, kt.HyperParameters]:
    """Validate ``hparams`` against the space; missing values take the space's defaults."""
    given = dict(hparams.values if isinstance(hparams, kt.HyperParameters) else (hparams or {}))
    hp = kt.HyperParameters()
    hp.values.update(given)
    arch = _declare(hp, space)
    declared = {h.name: h for h in hp.space}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; the thesis's search space has {sorted(declared)}")
    for name, value in given.items():
        h = declared[name]
        if not hp.is_active(h):
            continue  # a value for an unused layer (the thesis's trial tables list those): ignored
        allowed = getattr(h, "values", None)
        if allowed is not None:
            ok = any(_same(value, a) for a in allowed)
            expect = f"one of {list(allowed)}"
        else:
            ok = float(value) == int(value) and h.min_value <= int(value) <= h.max_value
            expect = f"an integer in [{h.min_value}, {h.max_value}]"
        if not ok:
            raise ValueError(f"hyperparameter {name!r} = {value!r} is outside the search space: expected {expect}")
    return arch, hp


def _same(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return a == b


def resolve_hparams(hparams: Mapping[str, Any] | kt.HyperParameters | None = None, *, space=None) -> dict[str, Any]:
    """The complete set of *active* hyperparameter values of a point (defaults filled in).

    Values of layers the point does not use are dropped, so the result reads like a clean row
    of Tables 4–5.
    """
    _, hp = _resolve(hparams, _as_space(space))
    return {h.name: hp.values[h.name] for h in hp.space if hp.is_active(h)}


def _assemble(
    arch: _Architecture,
    space: SpectralCNNSpace,
    *,
    input_length: int,
    n_classes: int,
    flat_input: bool,
    one_hot_labels: bool,
    compile: bool,
    name: str,
) -> keras.Model:
    if _flatten_length(arch, space, input_length) < 1:
        raise ValueError(
            f"input_length {input_length} is too short for conv layers {list(arch.conv)} with pool size "
            f"{arch.pool} after layers {list(space.pool_after_conv_layers)}: the feature map would be empty"
        )
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if flat_input:
        inputs = keras.Input(shape=(input_length,), name="flux")
        x = layers.Reshape((input_length, 1), name="add_channel")(inputs)
    else:
        inputs = keras.Input(shape=(input_length, 1), name="flux")
        x = inputs
    for i, (f, k) in enumerate(arch.conv, start=1):
        x = layers.Conv1D(f, k, activation=space.conv_activation, padding=space.conv_padding, name=f"conv_layer_{i}")(x)
        x = layers.Dropout(space.conv_dropout, name=f"conv_dropout_{i}")(x)
        if i in space.pool_after_conv_layers and arch.pool > 1:
            x = layers.MaxPooling1D(pool_size=arch.pool, name=f"max_pool_{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    for j, u in enumerate(arch.dense, start=1):
        x = layers.Dense(u, activation=space.dense_activation, name=f"dense_layer_{j}")(x)
        x = layers.Dropout(space.dense_dropout, name=f"dense_dropout_{j}")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="class_probabilities")(x)
    model = keras.Model(inputs, outputs, name=name)
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=arch.learning_rate),
            loss="categorical_crossentropy" if one_hot_labels else "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model


class SpectralCNNHyperModel(kt.HyperModel):
    """keras-tuner HyperModel of the thesis's CNN search (Sec 6.3, Appendix 10.4).

    Parameters
    ----------
    input_length
        Pixels per spectrum (3,736 on the thesis grid, ``INPUT_LENGTH``).
    n_classes
        Output classes (3: GALAXY, QSO, STAR).
    space
        A :class:`SpectralCNNSpace` or a mapping of fields to override (e.g. a smaller space for
        quick runs); default: the thesis's.
    flat_input
        Take ``(input_length,)`` instead of ``(input_length, 1)``.
    one_hot_labels
        Categorical cross-entropy on one-hot labels (the code) instead of the sparse form on
        integer labels (default).
    name
        Model name.

    Every built model is compiled (Adam with the trial's ``learning_rate``, ``accuracy``) as the
    tuner needs. Objective and budget of the thesis: :func:`tuner_settings`.
    """

    def __init__(
        self,
        input_length: int,
        n_classes: int,
        *,
        space: SpectralCNNSpace | Mapping[str, Any] | None = None,
        flat_input: bool = False,
        one_hot_labels: bool = False,
        name: str = "spectral_cnn",
        tunable: bool = True,
    ):
        super().__init__(name=name, tunable=tunable)
        self.input_length = int(input_length)
        self.n_classes = int(n_classes)
        self.space = _as_space(space)
        self.flat_input = bool(flat_input)
        self.one_hot_labels = bool(one_hot_labels)
        need = min_input_length(self.space)
        if self.input_length < need:
            raise ValueError(
                f"input_length {self.input_length} is too short for the search space: its deepest point "
                f"(n_conv_layers={self.space.n_conv_layers[1]}, kernels {max(self.space.kernel_sizes)}, "
                f"max_pool_size={self.space.max_pool_size[1]}) needs at least {need} pixels; "
                "shrink the space with space={...}"
            )

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        arch = _declare(hp, self.space)
        return _assemble(
            arch,
            self.space,
            input_length=self.input_length,
            n_classes=self.n_classes,
            flat_input=self.flat_input,
            one_hot_labels=self.one_hot_labels,
            compile=True,
            name=self.name,
        )


def build_spectral_cnn(
    hparams: Mapping[str, Any] | kt.HyperParameters | None = None,
    *,
    input_length: int = INPUT_LENGTH,
    n_classes: int = 3,
    space: SpectralCNNSpace | Mapping[str, Any] | None = None,
    flat_input: bool = False,
    one_hot_labels: bool = False,
    compile: bool = True,
    name: str = "spectral_cnn",
) -> keras.Model:
    """Build one point of the search space without a tuner.

    Parameters
    ----------
    hparams
        Hyperparameter values by the thesis's names (e.g. :data:`BEST_HPARAMS`, a trial's
        ``hyperparameters.values`` or a ``HyperParameters``). Missing values take the space's
        defaults; values for layers the point does not use are ignored; unknown names and values
        outside the space raise ``ValueError``. ``None``: the space's default point.
    input_length, n_classes, space, flat_input, one_hot_labels, name
        As for :class:`SpectralCNNHyperModel`.
    compile
        Compile with Adam (the point's ``learning_rate``), the cross-entropy and ``accuracy``.

    The result is the architecture :meth:`SpectralCNNHyperModel.build` gives for the same values.
    """
    sp = _as_space(space)
    arch, _ = _resolve(hparams, sp)
    return _assemble(
        arch,
        sp,
        input_length=int(input_length),
        n_classes=int(n_classes),
        flat_input=flat_input,
        one_hot_labels=one_hot_labels,
        compile=compile,
        name=name,
    )


def tuner_settings() -> dict[str, Any]:
    """The thesis's search protocol (``thesis_models.yaml`` spectral_cnn.tuner).

    RandomSearch on ``val_accuracy``, 40 trials of 12 epochs, EarlyStopping(val_accuracy,
    patience 4), batch 32; the best point is retrained for 60 epochs.
    """
    return dict(_SPEC["tuner"])
