"""The 1-D convolutional autoencoder of the spectral-classification thesis (Sec 9.1).

Csepreghy (2020), Sec 9.1 listing and Appendix 10.5 (``AutoEncoder.build_model``;
``data_specs/thesis_models.yaml`` autoencoder)::

    spectrum (1792, 1)
      encoder  Conv1D 256 k7 → MaxPool 4   (448)     every Conv1D: ReLU, 'same'
               Conv1D 128 k5 → MaxPool 4   (112)
               Conv1D  64 k5 → MaxPool 2   (56)
               Conv1D  32 k3 → MaxPool 2   (28)
               Conv1D  32 k3 → MaxPool 2   (14)
               Conv1D   1 k3               (14, 1)  ← the 14-value code (Sec 9.1, Figs. 33/37)
               MaxPool 2, 'same'           (7, 1)   ← what the decoder receives
      decoder  Conv1D   1 k3 → UpSampling 2 (14)
               Conv1D  32 k3 → UpSampling 2 (28)
               Conv1D  32 k3 → UpSampling 2 (56)
               Conv1D  64 k5 → UpSampling 2 (112)
               Conv1D 128 k5 → UpSampling 4 (448)
               Conv1D 256 k7 → UpSampling 4 (1792)
               Conv1D 1 k1, tanh            (1792, 1)
    loss MSE, Adam (Keras default step 1e-3)

The printed layer list pools six times (4·4·2·2·2·2 = 128), so the tensor passed to the decoder
has 1792 / 128 = 7 values, not the 14 of the text. The authors read their "14-dimensional latent
space" from the last encoder convolution (``get_bottleneck_values``: layer ``conv1d_5``), before
the final pooling — 1792 / 64 = 14 values. keras_astro keeps the code's network unchanged and
its ``encoder`` returns those 14 values, flattened to (14,), as the thesis's pair plots use them.
The ``decoder`` takes the 14-value code, applies the (weightless) final pooling and the decoder
layers, so ``decoder(encoder(x)) == autoencoder(x)``. ``docs/fidelity_thesis_models.md`` has the
details.

Input: standardised fluxes (StandardScaler on the training split; Appendix 10.5), every second
pixel of the stored spectrum with every 25th of those dropped, first 1,792 kept
(``thesis_models.yaml`` autoencoder.input_selection). The tanh output can only reach (−1, 1).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import keras
from keras import layers

from keras_astro import specs

__all__ = [
    "AutoencoderConfig",
    "AutoencoderParts",
    "build_autoencoder",
    "build_autoencoder_parts",
    "compile_autoencoder",
    "encoder_from",
    "decoder_from",
]

_SPEC = specs.load_spec("thesis_models")["autoencoder"]


def _ints(key: str) -> tuple[int, ...]:
    return tuple(int(v) for v in _SPEC[key])


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape and training settings of the autoencoder; defaults are Sec 9.1 / Appendix 10.5.

    Attributes
    ----------
    input_length
        Pixels per spectrum (1,792).
    code_size
        Length of the code, the last encoder convolution's output: ``input_length`` divided by
        all encoder pools but the last (14). Checked against the layer list.
    encoder_filters, encoder_kernels, encoder_pools
        Conv1D (ReLU, 'same') → MaxPooling1D blocks; the last pool is 'same'-padded.
    decoder_filters, decoder_kernels, decoder_upsampling
        Conv1D (ReLU, 'same') → UpSampling1D blocks, mirroring the encoder.
    output_kernel, output_activation
        Final Conv1D with one filter: kernel 1, tanh.
    activation
        Activation of every other convolution (ReLU).
    flat_input
        Take and return ``(input_length,)`` instead of ``(input_length, 1)`` (ours).
    learning_rate, batch_size, epochs, early_stopping_patience
        Adam 1e-3 (Keras default of ``optimizer='adam'``), batch 32, 50 epochs (Sec 9.1),
        EarlyStopping on val_loss with patience 8 (code).
    """

    input_length: int = int(_SPEC["input_length"])
    code_size: int = int(_SPEC["code_size"])
    encoder_filters: tuple[int, ...] = _ints("encoder_filters")
    encoder_kernels: tuple[int, ...] = _ints("encoder_kernels")
    encoder_pools: tuple[int, ...] = _ints("encoder_pools")
    decoder_filters: tuple[int, ...] = _ints("decoder_filters")
    decoder_kernels: tuple[int, ...] = _ints("decoder_kernels")
    decoder_upsampling: tuple[int, ...] = _ints("decoder_upsampling")
    output_kernel: int = int(_SPEC["output"]["kernel_size"])
    output_activation: str = str(_SPEC["output"]["activation"])
    activation: str = str(_SPEC["activation"])
    flat_input: bool = False
    learning_rate: float = float(_SPEC["optimizer"]["learning_rate"])
    batch_size: int = int(_SPEC["batch_size"])
    epochs: int = int(_SPEC["epochs"])
    early_stopping_patience: int = int(_SPEC["early_stopping"]["patience"])

    def __post_init__(self):
        enc = (self.encoder_filters, self.encoder_kernels, self.encoder_pools)
        dec = (self.decoder_filters, self.decoder_kernels, self.decoder_upsampling)
        if len({len(v) for v in enc}) != 1 or len({len(v) for v in dec}) != 1 or not self.encoder_pools:
            raise ValueError(
                "AutoencoderConfig: encoder_filters/kernels/pools and decoder_filters/kernels/upsampling need one "
                f"entry per block; got encoder {[len(v) for v in enc]}, decoder {[len(v) for v in dec]}"
            )
        pre = math.prod(self.encoder_pools[:-1])
        if self.input_length % pre:
            raise ValueError(
                f"AutoencoderConfig: input_length {self.input_length} is not divisible by the encoder pools "
                f"{self.encoder_pools[:-1]} (product {pre})"
            )
        if self.input_length // pre != self.code_size:
            raise ValueError(
                f"AutoencoderConfig: the encoder pools {self.encoder_pools[:-1]} turn {self.input_length} pixels into "
                f"a code of {self.input_length // pre} values, not code_size={self.code_size}"
            )
        out = self.bottleneck_length * math.prod(self.decoder_upsampling)
        if out != self.input_length:
            raise ValueError(
                f"AutoencoderConfig: the decoder up-samples the {self.bottleneck_length}-value bottleneck by "
                f"{self.decoder_upsampling} to {out} pixels, not input_length={self.input_length}"
            )

    @property
    def bottleneck_length(self) -> int:
        """Length after the last ('same'-padded) encoder pool: what the decoder receives (7)."""
        return math.ceil(self.code_size / self.encoder_pools[-1])

    def replace(self, **changes) -> "AutoencoderConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class AutoencoderParts(NamedTuple):
    """The autoencoder and its two halves, sharing layers (and so weights)."""

    autoencoder: keras.Model
    encoder: keras.Model
    decoder: keras.Model


def _n_blocks(model: keras.Model, prefix: str) -> int:
    names = {layer.name for layer in model.layers}
    n = 0
    while f"{prefix}_{n + 1}" in names:
        n += 1
    return n


def compile_autoencoder(model: keras.Model, config: AutoencoderConfig | None = None) -> keras.Model:
    """Compile with MSE and Adam (``config.learning_rate``), as ``compile(loss='mse', optimizer='adam')``."""
    cfg = config or AutoencoderConfig()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate), loss="mse")
    return model


def _build(cfg: AutoencoderConfig, name: str) -> keras.Model:
    L = cfg.input_length
    if cfg.flat_input:
        inputs = keras.Input(shape=(L,), name="spectrum")
        x = layers.Reshape((L, 1), name="add_channel")(inputs)
    else:
        inputs = keras.Input(shape=(L, 1), name="spectrum")
        x = inputs
    n_enc = len(cfg.encoder_filters)
    for i, (f, k, p) in enumerate(zip(cfg.encoder_filters, cfg.encoder_kernels, cfg.encoder_pools), start=1):
        x = layers.Conv1D(f, k, activation=cfg.activation, padding="same", name=f"enc_conv_{i}")(x)
        last = i == n_enc
        x = layers.MaxPooling1D(
            p, padding="same" if last else "valid", name="bottleneck_pool" if last else f"enc_pool_{i}"
        )(x)
    for i, (f, k, u) in enumerate(zip(cfg.decoder_filters, cfg.decoder_kernels, cfg.decoder_upsampling), start=1):
        x = layers.Conv1D(f, k, activation=cfg.activation, padding="same", name=f"dec_conv_{i}")(x)
        x = layers.UpSampling1D(u, name=f"dec_upsample_{i}")(x)
    x = layers.Conv1D(1, cfg.output_kernel, activation=cfg.output_activation, padding="same", name="reconstruction")(x)
    if cfg.flat_input:
        x = layers.Reshape((L,), name="drop_channel")(x)
    return keras.Model(inputs, x, name=name)


def encoder_from(autoencoder: keras.Model, name: str = "encoder") -> keras.Model:
    """The encoder of a built or loaded autoencoder: spectrum → (code_size,) code.

    The code is the output of the last encoder convolution, flattened (the authors'
    ``get_bottleneck_values``). Layers are shared with ``autoencoder``.
    """
    last = autoencoder.get_layer(f"enc_conv_{_n_blocks(autoencoder, 'enc_conv')}")
    code = layers.Flatten(name="code")(last.output)
    return keras.Model(autoencoder.input, code, name=name)


def decoder_from(autoencoder: keras.Model, name: str = "decoder") -> keras.Model:
    """The decoder of a built or loaded autoencoder: (code_size,) code → reconstructed spectrum.

    It applies the final encoder pooling (no weights) and the decoder layers of ``autoencoder``
    (shared), so ``decoder(encoder(x))`` equals ``autoencoder(x)``.
    """
    last = autoencoder.get_layer(f"enc_conv_{_n_blocks(autoencoder, 'enc_conv')}")
    code_size = int(last.output.shape[1])
    code = keras.Input(shape=(code_size,), name="code")
    x = layers.Reshape((code_size, int(last.output.shape[2])), name="code_channel")(code)
    x = autoencoder.get_layer("bottleneck_pool")(x)
    for i in range(1, _n_blocks(autoencoder, "dec_conv") + 1):
        x = autoencoder.get_layer(f"dec_conv_{i}")(x)
        x = autoencoder.get_layer(f"dec_upsample_{i}")(x)
    x = autoencoder.get_layer("reconstruction")(x)
    if "drop_channel" in {layer.name for layer in autoencoder.layers}:
        x = autoencoder.get_layer("drop_channel")(x)
    return keras.Model(code, x, name=name)


def build_autoencoder_parts(
    config: AutoencoderConfig | None = None, *, compile: bool = True, name: str = "autoencoder"
) -> AutoencoderParts:
    """Build (autoencoder, encoder, decoder), all three sharing weights.

    Only the autoencoder is compiled (MSE, Adam): it is the model that trains.
    """
    cfg = config or AutoencoderConfig()
    ae = _build(cfg, name)
    if compile:
        compile_autoencoder(ae, cfg)
    return AutoencoderParts(ae, encoder_from(ae), decoder_from(ae))


def build_autoencoder(
    config: AutoencoderConfig | None = None, *, compile: bool = True, name: str = "autoencoder"
) -> tuple[keras.Model, keras.Model]:
    """Build the Sec 9.1 autoencoder and its encoder (shared weights): ``(autoencoder, encoder)``.

    The autoencoder maps ``(input_length, 1)`` standardised fluxes to their reconstruction; the
    encoder maps them to the ``(code_size,)`` code. :func:`build_autoencoder_parts` also returns
    the decoder.
    """
    parts = build_autoencoder_parts(config, compile=compile, name=name)
    return parts.autoencoder, parts.encoder
