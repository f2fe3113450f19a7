"""Least squares for training-free layer repair: the solves (:mod:`.solve`), the one driver over a model's
layers (:mod:`.sites`: rows sampled, samples held back, tensors streamed) and piecewise evaluation from cached
activations (:mod:`.segments`). Channel recovery, the sensitivity curves and the sparsity re-fit all use them."""

from .sites import HELD_BACK, Site, fit_samples, stream
from .solve import (DEFAULT_RIDGE, RIDGES, ConvGeometry, Fit, GramSystem, Patches, conv_geometry, fit_gram,
                    fit_toward, holdout, im2col, masked_fit, ridge_path, sq_error)

__all__ = ["DEFAULT_RIDGE", "HELD_BACK", "RIDGES", "ConvGeometry", "Fit", "GramSystem", "Patches", "Site",
           "conv_geometry", "fit_gram", "fit_samples", "fit_toward", "holdout", "im2col", "masked_fit",
           "ridge_path", "sq_error", "stream"]
