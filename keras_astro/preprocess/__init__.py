"""Pure numpy/astropy transforms (no TensorFlow)."""
