"""A QuasarNET-style baseline for FNet's comparison (Fig. 4c).

FNet Sec 5 describes QuasarNET (Busca & Balland 2018) as four convolutional layers of kernel
size 10 and one fully connected layer feeding seven line-finder units. This baseline keeps the
convolutional trunk (4 × Conv1D, 100 filters, kernel 10, stride 2, batch norm, ReLU) and the
16-unit fully connected layer, and regresses the scaled redshift directly instead of locating
lines — so both networks can be trained on the same data and compared on one page. It is a
baseline, not a re-implementation of QuasarNET (see docs/fidelity.md).
"""

from __future__ import annotations

import keras

__all__ = ["build_quasarnet_baseline"]


def build_quasarnet_baseline(
    input_length: int = 4618,
    *,
    filters: int = 100,
    kernel_size: int = 10,
    n_conv: int = 4,
    dense: int = 16,
    seed: int | None = None,
) -> keras.Model:
    """Functional model: (L,) normalised flux → scaled redshift (1 value)."""
    if input_length < kernel_size * 2**n_conv:
        raise ValueError(
            f"input_length {input_length} too short for {n_conv} stride-2 convolutions of size {kernel_size}"
        )
    init = keras.initializers.HeNormal(seed=seed)
    inp = keras.Input((input_length,), name="flux")
    x = keras.layers.Reshape((input_length, 1))(inp)
    for i in range(n_conv):
        x = keras.layers.Conv1D(
            filters, kernel_size, strides=2, padding="same", kernel_initializer=init, name=f"conv{i + 1}"
        )(x)
        x = keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense, activation="relu", kernel_initializer=init, name="fc")(x)
    out = keras.layers.Dense(1, name="z_scaled")(x)
    return keras.Model(inp, out, name="quasarnet_baseline")
