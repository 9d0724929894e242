"""Reusable, serializable Keras layers."""

from keras_astro.layers.photometry import PhotometryImputer

__all__ = ["PhotometryImputer"]
