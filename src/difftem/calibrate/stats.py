"""Detector and ice statistics of a real micrograph, in the simulator's own terms.

The simulator's detector gives, per pixel, mean m = g·λ and noise power NPS(f) = g²·λ/DQE·MTF(f)² (g output units
per electron, λ expected electrons per pixel, MTF(0) = 1). The noise level at f → 0 of background crops therefore
measures g/DQE = NPS(0)/m, the MTF's shape comes from the noise spectrum (fit-mtf's NPS estimator), and for a
chosen DQE the gain and the counts follow: g = DQE·NPS(0)/m, λ = m/g. Dose and ice thickness are tied by the
transmission T = λ/(dose · pixel area): with a nominal dose, T gives the thickness through the simulator's own
loss model (measured on a small ice-only simulation, so it is the loss the calibrated config will produce).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..core.errors import ArgumentError
from ..core.fft import radial_freq_per_px
from ..forward.detector import MeasuredMTF, MTFParams
from ..learn.mtf_fit import extract_crops, fit_nps, noise_power_spectrum, select_background_crops

#: Band (cycles/px) where the noise level is read: beyond 2/3 Nyquist, where the specimen (and the simulator) put
#: the least signal.
NOISE_BAND_PER_PX = (0.36, 0.48)


@dataclass(frozen=True)
class DetectorStats:
    mean_units: float            # mean of the background crops (data units per pixel)
    noise_power_zero: float      # NPS extrapolated to f = 0 with the fitted MTF (units² per pixel)
    gain_over_dqe: float         # NPS(0)/mean: output units per electron over the DQE
    mtf: MTFParams | MeasuredMTF  # the noise's MTF (fitted, normalised to MTF(0) = 1, or the one given)
    n_crops: int
    crop_px: int

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "mtf"}
        d["mtf"] = mtf_config(self.mtf)
        return d

    def detector(self, dqe: float) -> tuple[float, float]:
        """(gain in units per electron, expected electrons per pixel λ) for the chosen DQE."""
        if not (0 < dqe <= 1):
            raise ArgumentError("dqe", f" {dqe}: give a DQE in (0, 1]")
        gain = dqe * self.gain_over_dqe
        return gain, self.mean_units / gain


def mtf_config(mtf: MTFParams | MeasuredMTF) -> dict:
    """The config's ``detector.mtf`` for an MTF: the formula's parameters, or the STAR file it was read from."""
    if isinstance(mtf, MeasuredMTF):
        return {"star": mtf.source}
    return {k: float(v) for k, v in asdict(mtf).items()}


def detector_statistics(image: np.ndarray, crop_px: int = 128, n_crops: int = 20,
                        mtf: MTFParams | MeasuredMTF | None = None) -> DetectorStats:
    """Mean, noise level and MTF shape from the emptiest crops of a micrograph in its own units: the MTF given
    (your camera's curve) or fit-mtf's NPS estimator for its shape, and the level as the median of NPS/MTF² over
    the noise band. A specimen with much power (thick or strongly scattering ice at fine pixels) biases the fitted
    shape; give the camera's MTF then."""
    img = np.asarray(image, dtype=np.float64)
    corners = select_background_crops(img, crop_px, n_crops)
    crops = extract_crops(img, corners, crop_px)
    mean = float(crops.mean())
    if not mean > 0:
        raise ArgumentError("micrograph", f": its background mean is {mean:g}; calibration needs positive detector "
                                          "units (counts or a scaled count), not a normalised image")
    if mtf is None:
        mtf = _merge_twins(fit_nps(crops).params)
    nps = noise_power_spectrum(crops, detrend="plane")
    omega = radial_freq_per_px((crop_px, crop_px), half=True)
    band = (omega >= NOISE_BAND_PER_PX[0]) & (omega <= NOISE_BAND_PER_PX[1])
    curve = mtf(omega[band]) / mtf(torch.zeros((), dtype=torch.float64))
    nps0 = float(torch.median(nps[band] / curve**2))
    return DetectorStats(mean_units=mean, noise_power_zero=nps0, gain_over_dqe=nps0 / mean, mtf=mtf,
                         n_crops=len(corners), crop_px=crop_px)


def _merge_twins(p: MTFParams) -> MTFParams:
    """Two Lorentzians of (nearly) one width are one: a + b over that width. The fit may return them as huge
    opposite amplitudes that cancel, which the config's sanity check rightly refuses."""
    if abs(p.alpha - p.beta) <= 1e-2 * max(p.alpha, p.beta):
        return MTFParams(p.a + p.b, 0.0, p.c, p.alpha, p.alpha)
    return p


def thickness_from_transmission(transmission: float, attenuation_length_nm: float) -> float:
    """Ice thickness (nm) for a transmitted fraction under Beer–Lambert loss."""
    if not (0 < transmission <= 1):
        raise ArgumentError("dose", f": the measured counts are {transmission:.3g} × the nominal dose; the transmitted "
                                    "fraction must lie in (0, 1] — check the nominal dose or the DQE")
    return -attenuation_length_nm * math.log(transmission)


def tilt_doses(means_units, angles_deg, gain_units_per_e: float, pixel_size_a: float, thickness_nm: float,
               attenuation_length_nm: float) -> list[dict]:
    """Per tilt of a series: the detected electrons per pixel (mean / gain) and the dose that gives them through
    the ice's path t/cos θ at the tilt (the same loss law as the untilted image)."""
    out = []
    for m, a in zip(means_units, angles_deg, strict=True):
        counts = float(m) / gain_units_per_e
        path_nm = thickness_nm / math.cos(math.radians(float(a)))
        dose = counts / (pixel_size_a**2 * math.exp(-path_nm / attenuation_length_nm))
        out.append({"tilt_deg": float(a), "counts_per_px": counts, "ice_path_nm": path_nm, "dose_e_per_a2": dose})
    return out
