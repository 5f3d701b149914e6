"""Denoising through the detector model: the seed paper's Algorithm 2, better variants, baselines, metrics.

``denoise(observations, mtf, method=..., prior=...)`` returns a :class:`DenoiseResult` (denoised image,
the rate before the MTF, loss history, settings). Metrics: :mod:`difftem.denoise.metrics`; baselines:
:mod:`difftem.denoise.baselines`; alignment: :mod:`difftem.denoise.align`; Topaz-Denoise (optional):
:mod:`difftem.denoise.topaz_model`. See docs/denoising.md.
"""

from .algorithm import METHODS, PRIORS, DenoiseResult, denoise
from .align import align_to, measure_shift
from .metrics import compare, ffl, mse, pairwise_table, psnr, ssim

__all__ = ["DenoiseResult", "METHODS", "PRIORS", "align_to", "compare", "denoise", "ffl", "measure_shift", "mse",
           "pairwise_table", "psnr", "ssim"]
