"""Small serializable layers that put spectral preprocessing inside exported graphs."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["UnitNormSpectrum", "Rescale"]


@keras.saving.register_keras_serializable(package="keras_astro")
class UnitNormSpectrum(keras.layers.Layer):
    """FNet Sec 3.1: subtract each spectrum's mean, then divide by its L2 norm (last axis).

    Matches :func:`keras_astro.preprocess.spectra.fnet_normalise`; non-finite fluxes become 0
    first so a raw spectrum with a NaN pixel still yields a finite input.
    """

    def __init__(self, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, x):
        x = ops.cast(x, "float32")
        x = ops.where(ops.isfinite(x), x, ops.zeros_like(x))
        x = x - ops.mean(x, axis=-1, keepdims=True)
        norm = ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True))
        return x / ops.maximum(norm, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="keras_astro")
class Rescale(keras.layers.Layer):
    """``y = offset + scale · x`` (e.g. undo FNet's min/max redshift scaling: offset z_min, scale z_max − z_min)."""

    def __init__(self, offset: float = 0.0, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = float(offset)
        self.scale = float(scale)

    def call(self, x):
        return self.offset + self.scale * ops.cast(x, "float32")

    def get_config(self):
        return {**super().get_config(), "offset": self.offset, "scale": self.scale}
