"""keras_astro: four astronomy deep-learning studies rebuilt in Keras 3 / TensorFlow.

Studies
-------
agn      Chen et al. 2021, AGN recognition from 44-band NEPW photometry (seed 000).
claran   Wu et al. 2019, CLARAN radio-source detection (seed 001).
fnet     Rastegar Nia et al., FNet quasar redshifts (seed 002).
spectra  Csepreghy 2020, SDSS spectral classification (seed 003).

Importing the package is cheap: TensorFlow is imported by the submodules that need it.
"""

__version__ = "0.1.0"
