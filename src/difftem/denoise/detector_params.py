"""Detector parameters for denoising: from a simulation config, a ``fit-mtf`` result, flags, or the data.

Denoising needs the MTF (shape), and the conversion from image units to electrons, i.e. gain/DQE.
A SimulationConfig YAML gives all of them (``detector.mtf``, ``dqe``, ``gain``, ``normalize_mtf``,
``beam.dose_e_per_a2``, ``detector.pixel_size_a``). A ``fit-mtf`` result (``mtf_fit.json``) gives the
MTF shape only (MTF/MTF(0): that is all images identify). Where gain/DQE are unknown they are
estimated from the noise (:func:`estimate_gain_per_dqe`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import load_config
from ..core.errors import ArgumentError, EmptyConfigError, FormatError
from ..core.fft import radial_freq_per_px, rfft2
from ..forward.detector import MeasuredMTF, MTFParams, make_mtf
from ..io.tables import read_text_file
from .algorithm import deconvolve_counts

__all__ = ["DetectorSettings", "estimate_gain_per_dqe", "settings_from_config", "settings_from_mtf_fit"]


@dataclass
class DetectorSettings:
    """What the denoiser needs to know about the detector (None: unknown)."""

    mtf: object = None
    dqe: float = 1.0
    gain: float | None = None
    normalize_mtf: bool = True
    dose_e_per_a2: float | None = None
    pixel_size_a: float | None = None
    sources: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        if isinstance(self.mtf, MTFParams):
            mtf = {"a": self.mtf.a, "b": self.mtf.b, "c": self.mtf.c, "alpha": self.mtf.alpha, "beta": self.mtf.beta}
        elif isinstance(self.mtf, MeasuredMTF):
            mtf = {"star": self.mtf.source}
        else:
            mtf = None
        return {"mtf": mtf, "dqe": self.dqe, "gain": self.gain, "normalize_mtf": self.normalize_mtf,
                "dose_e_per_a2": self.dose_e_per_a2, "pixel_size_a": self.pixel_size_a, "sources": self.sources}


#: What an empty denoise config (or one of only comments) is told to hold: the sections denoise reads. The other
#: ways to give the MTF are argument names (mtf, mtf_fit), shown as the command's flags on the command line.
EMPTY_DENOISE_CONFIG_FIX = (
    "denoise reads a simulation config's detector.mtf (the formula's a, b, c, alpha, beta, or a RELION MTF STAR "
    "file), detector.dqe, detector.gain and beam.dose_e_per_a2: give them (the README's configuration example shows "
    "both sections), or give the MTF without a config (mtf 'a,b,c,alpha,beta' or a STAR file; mtf_fit: a fit-mtf "
    "result)")


def settings_from_config(path: str | Path) -> DetectorSettings:
    """Detector and dose from a simulation config (YAML); an empty one is an :class:`ArgumentError` of ``config``
    that says what denoise reads from it."""
    try:
        cfg = load_config(path, if_empty=EMPTY_DENOISE_CONFIG_FIX)
    except EmptyConfigError as exc:
        raise ArgumentError("config", f" {exc}", mentions=("mtf", "mtf_fit")) from None
    det = cfg.detector
    return DetectorSettings(make_mtf(cfg), det.dqe, det.gain, det.normalize_mtf, cfg.beam.dose_e_per_a2,
                            det.pixel_size_a, [f"config {path}"])


def settings_from_mtf_fit(path: str | Path) -> DetectorSettings:
    """MTF shape from a ``difftem fit-mtf`` result (``mtf_fit.json``: its primary fit)."""
    path = Path(path)
    try:
        text = read_text_file(path, "fit-mtf result", missing=(
            "give the mtf_fit.json that difftem fit-mtf writes into its output folder"))
    except FormatError as exc:
        raise ArgumentError("mtf_fit", f" {exc}") from None
    try:
        report = json.loads(text)
        fits = report["fits"]
        primary = report.get("primary") or next(iter(fits))
        fit = fits.get(primary) or next(f for f in fits.values() if f.get("method") == primary)
        p = fit["params"]
        values = [float(p[k]) for k in ("a", "b", "c", "alpha", "beta")]
    except (ValueError, KeyError, StopIteration, TypeError, AttributeError, RecursionError) as exc:
        why = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ArgumentError("mtf_fit", f" {path}: not a fit-mtf result (mtf_fit.json with fits.<name>.params; "
                                       f"{why})") from None
    if not all(math.isfinite(v) for v in values):
        raise ArgumentError("mtf_fit", f" {path}: the fitted MTF parameters are not all finite numbers; refit")
    params = MTFParams(*values)
    if not params(torch.zeros((), dtype=torch.float64)) > 0:
        raise ArgumentError("mtf_fit", f" {path}: the fitted MTF(0) = {float(params(torch.zeros(()))):.3g} ≤ 0 "
                          "cannot be normalised; refit (e.g. with the nps method)")
    return DetectorSettings(params, normalize_mtf=True, sources=[f"fit-mtf {path} ({primary})"])


def estimate_gain_per_dqe(observations: torch.Tensor, mtf=None, normalize_mtf: bool = True,
                          band: tuple[float, float] = (0.3, 0.5)) -> float:
    r"""Gain/DQE (image units per electron) from the shot noise: variance/mean of the counts.

    With :math:`P = g\,M*(Q/D)`, :math:`Q\sim\mathrm{Poisson}(D\lambda)`, the deconvolved image
    :math:`M^{-1}P` has white noise of variance :math:`g^2\lambda/D` per pixel and mean :math:`g\lambda`,
    so variance/mean = g/D. With ≥ 2 observations the noise is taken from differences of
    observations (no signal at all): :math:`\mathrm{var}(P_i - P_j) = 2 g^2 \lambda / D`. With one, it is
    the power of the deconvolved image in the ``band`` of |ω| (cycles/pixel), where the signal is
    weakest (an overestimate by the signal's share there).
    """
    obs = observations if observations.ndim == 3 else observations[None]
    counts = deconvolve_counts(obs.to(torch.float64), mtf, normalize_mtf)
    mean = float(obs.mean())
    if not mean > 0:
        raise ArgumentError("gain", ": cannot be estimated from the images: their mean is ≤ 0 (no dose, or a "
                                    "background was subtracted); give it (image units per electron)")
    if obs.shape[0] >= 2:
        diff = counts[1:] - counts[:-1]
        variance = float(diff.var()) / 2
    else:
        shape = tuple(counts.shape[-2:])
        spec = rfft2(counts[0] - counts[0].mean())
        w = radial_freq_per_px(shape, half=True, dtype=torch.float64)
        sel = (w >= band[0]) & (w <= band[1])
        variance = float((spec.abs()[sel] ** 2).mean()) / (shape[0] * shape[1])  # white noise: E|F|²/N = σ²
    ratio = variance / mean
    if not (ratio > 0 and math.isfinite(ratio)):
        raise ArgumentError("gain", ": cannot be estimated from the noise (no noise found); give it (image units per "
                                    "electron)")
    return ratio
