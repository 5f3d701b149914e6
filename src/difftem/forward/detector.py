"""Detector: dose → expected counts, shot noise with a DQE, MTF, gain.

Order (as the seed paper and TEM-simulator): expected counts λ = dose · pixel area · I;
shot noise counts ~ Poisson(DQE·λ) / DQE (mean λ, variance λ/DQE, so DQE(0) = SNR²_out/SNR²_in);
then the MTF acts on the counts in Fourier space (noise power ∝ MTF²); then the gain.
The noise-free image is the same chain without the Poisson draw, i.e. its expectation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import MTFFormula, MTFStar, config_path_fix
from ..core.errors import ConfigError
from ..core.fft import irfft2, radial_freq_per_px, rfft2
from ..io.star import MTF_MISSING_FIX, read_mtf_curve
from . import native


@dataclass(frozen=True)
class MTFParams:
    """The seed paper's MTF(ω) = a/(1+αω²) + b/(1+βω²) + c, ω in cycles/pixel."""

    a: float
    b: float
    c: float
    alpha: float
    beta: float

    def __call__(self, omega: torch.Tensor) -> torch.Tensor:
        w2 = omega**2
        return self.a / (1 + self.alpha * w2) + self.b / (1 + self.beta * w2) + self.c


@dataclass(frozen=True)
class MeasuredMTF:
    """A tabulated MTF curve (e.g. RELION STAR), linearly interpolated, held constant past its end."""

    frequency_per_px: np.ndarray
    value: np.ndarray
    source: str = ""

    def __call__(self, omega: torch.Tensor) -> torch.Tensor:
        f = torch.as_tensor(self.frequency_per_px, dtype=omega.dtype, device=omega.device)
        v = torch.as_tensor(self.value, dtype=omega.dtype, device=omega.device)
        w = omega.clamp(min=float(f[0]), max=float(f[-1]))
        i = torch.searchsorted(f, w.contiguous(), right=True).clamp(1, len(f) - 1)
        f0, f1, v0, v1 = f[i - 1], f[i], v[i - 1], v[i]
        return v0 + (v1 - v0) * (w - f0) / (f1 - f0)


def read_mtf_star(path: str | Path, *, missing: str = MTF_MISSING_FIX) -> MeasuredMTF:
    """The measured MTF of a RELION MTF STAR file (``_rlnResolutionInversePixel``, ``_rlnMtfValue``), read by
    :func:`difftem.io.star.read_mtf_curve` (``missing``: the fix for a missing file)."""
    return MeasuredMTF(*read_mtf_curve(path, missing=missing), str(path))


def radial_frequency_per_px(shape: tuple[int, int], device=None, dtype=torch.float64) -> torch.Tensor:
    """|ω| in cycles/pixel on the rfft half-spectrum layout of an (H, W) image."""
    return radial_freq_per_px(shape, half=True, device=device, dtype=dtype)


def mtf_transfer(mtf, shape: tuple[int, int], *, device=None, dtype=torch.float64,
                 normalize_dc: bool = False) -> torch.Tensor | None:
    """The MTF sampled on the rfft half-spectrum of an (H, W) image (None for the identity).

    ``mtf`` maps |ω| (cycles/pixel) to values, or has such a ``curve`` method (a learnable MTF module,
    whose parameters then receive gradients). ``normalize_dc`` divides by MTF(0) so counts are kept.
    """
    if mtf is None:
        return None
    curve = getattr(mtf, "curve", mtf)
    omega = radial_frequency_per_px(tuple(shape), device)
    transfer = curve(omega)
    if normalize_dc:
        transfer = transfer / curve(torch.zeros((), dtype=omega.dtype, device=omega.device))
    return transfer.to(dtype)


def apply_mtf(image: torch.Tensor, mtf, normalize_dc: bool = True) -> torch.Tensor:
    """Filter (..., H, W) images by MTF(|ω|) in Fourier space (periodic boundaries)."""
    shape = tuple(image.shape[-2:])
    transfer = mtf_transfer(mtf, shape, device=image.device, dtype=image.dtype, normalize_dc=normalize_dc)
    if transfer is None:
        return image
    return irfft2(rfft2(image) * transfer, shape)


def expected_counts(intensity: torch.Tensor, dose_e_per_a2: float, pixel_size_a: float) -> torch.Tensor:
    """Mean electrons per pixel: dose (e/Å²) × pixel area (Å²) × relative intensity."""
    return intensity * (dose_e_per_a2 * pixel_size_a**2)


def shot_noise(expected: torch.Tensor, dqe: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Counts ~ Poisson(DQE·λ)/DQE: mean λ, variance λ/DQE."""
    if not 0 < dqe <= 1:
        raise ConfigError(f"detector.dqe must be in (0, 1], got {dqe}")
    return poisson_counts((expected * dqe).clamp(min=0), generator) / dqe


def poisson_counts(rate: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Poisson draws of mean ``rate`` (≥ 0): the compiled kernel on the CPU (3–4× faster than torch.poisson at a few
    counts a pixel), torch.poisson on a GPU or without the kernels."""
    if native.applies(rate) and rate.dtype in (torch.float32, torch.float64):
        return native.poisson(rate, generator)
    return torch.poisson(rate, generator=generator)


@dataclass(frozen=True)
class Detector:
    """A detector: pixel size (Å), DQE at zero frequency, gain (output units per electron), MTF (a formula, a
    measured curve or None), whether the MTF is normalised to 1 at zero frequency, and the noise ("poisson" or
    "none"). DQE and gain may be 0-dim tensors that require grad."""

    pixel_size_a: float
    dqe: float = 1.0
    gain: float = 1.0
    mtf: MTFParams | MeasuredMTF | None = None
    normalize_mtf: bool = True
    noise: str = "poisson"

    @classmethod
    def from_config(cls, config) -> Detector:
        """From a config's ``detector`` section; a measured MTF curve is read here, once."""
        det = config.detector
        return cls(det.pixel_size_a, det.dqe, det.gain, make_mtf(config), det.normalize_mtf, det.noise)

    #: MTF transfers already sampled, by (shape, device, dtype): a series' tilts and both of a tilt's images share
    #: one (the formula costs 0.7 ms a 400² image, a quarter of the filtering itself)
    _transfers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def noiseless(self, expected: torch.Tensor) -> torch.Tensor:
        """The expected image: MTF and gain applied to the expected counts."""
        return self._apply_mtf(expected) * self.gain

    def detect(self, expected: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One detected image: shot noise (unless ``noise`` is "none"), then MTF and gain."""
        counts = shot_noise(expected, self.dqe, generator) if self.noise == "poisson" else expected
        return self._apply_mtf(counts) * self.gain

    def _apply_mtf(self, image: torch.Tensor) -> torch.Tensor:
        """:func:`apply_mtf` with this detector's MTF, its transfer sampled once per image shape (unless the MTF's
        parameters are tensors that may carry gradients: then every time)."""
        if not _fixed(self.mtf):
            return apply_mtf(image, self.mtf, self.normalize_mtf)
        shape = tuple(image.shape[-2:])
        key = (shape, image.device, image.dtype)
        transfer = self._transfers.get(key)
        if transfer is None:
            transfer = self._transfers[key] = mtf_transfer(self.mtf, shape, device=image.device, dtype=image.dtype,
                                                           normalize_dc=self.normalize_mtf)
        return image if transfer is None else irfft2(rfft2(image) * transfer, shape)


def _fixed(mtf) -> bool:
    """Whether an MTF is plain numbers (a formula of floats, a measured curve, none), so its transfer can be kept."""
    if mtf is None or isinstance(mtf, MeasuredMTF):
        return True
    return isinstance(mtf, MTFParams) and not any(torch.is_tensor(v) for v in vars(mtf).values())


def make_mtf(config) -> MTFParams | MeasuredMTF | None:
    """The detector MTF a config asks for: the formula's parameters, a measured curve read from its STAR file, or
    none."""
    mtf = config.detector.mtf
    if isinstance(mtf, MTFFormula):
        return MTFParams(mtf.a, mtf.b, mtf.c, mtf.alpha, mtf.beta)
    if isinstance(mtf, MTFStar):
        return read_mtf_star(mtf.star, missing=config_path_fix(mtf, "star", "detector.mtf.star", MTF_MISSING_FIX))
    return None
