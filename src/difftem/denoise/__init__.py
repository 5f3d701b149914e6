"""Denoising through the detector model (the seed paper's Algorithm 2 and better variants), baselines, metrics."""

from .algorithm import METHODS, PRIORS, DenoiseResult, denoise

__all__ = ["DenoiseResult", "METHODS", "PRIORS", "denoise"]
