"""CTF correction of a tilt series, tilt by tilt, before back-projection.

Conventions as :mod:`difftem.forward.optics` (RELION): defocus > 0 is underfocus, χ = πλΔf k² − ½πCsλ³k⁴, and the
image of a weak object, turned into positive-for-protein contrast (−(I − ⟨I⟩)/⟨I⟩, what ``reconstruct`` wants), is
the object filtered by C(k) = √(1 − A²)·sin χ + A·cos χ = sin(χ + asin A) (A: the amplitude contrast).

The defocus is the value at the specimen's mid-plane on the tilt axis. A point of the mid-plane at signed
distance p' (Å) from the tilt axis in the image, along n = (cos α, sin α) (perpendicular to the axis
(−sin α, cos α)), sits at depth z' = −p' tan θ after the tilt, and z grows downstream, where the lens sees more
underfocus: Δf(p') = Δf₀ − p' tan θ. Each tilt is therefore corrected in strips parallel to the tilt axis: the
image is filtered with the CTF of a few defocus levels Δf₀ + j·δ (δ = twice the allowed defocus error) and each
pixel takes the level nearest its own defocus.

Modes: ``phase_flip`` multiplies by sign C (IMOD ctfphaseflip's operation); ``wiener`` by C / (C² + 1/SNR), which
also restores the amplitudes where the CTF is small (the low frequencies, which carry most of a particle's
contrast), with the SNR given per series (large for noise-free data, ~1 for noisy data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core import fft as dfft
from ..forward.beam import wavelength_a
from .errors import TomoError

MODES = ("none", "phase_flip", "wiener")


@dataclass
class TiltCTF:
    """Per-tilt CTF parameters in stack order (arrays of length n_tilts) and the microscope's constants."""

    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    defocus_angle_deg: np.ndarray
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    phase_shift_deg: float = 0.0

    def __post_init__(self):
        self.defocus_u_a = np.asarray(self.defocus_u_a, dtype=np.float64).reshape(-1)
        n = self.defocus_u_a.size
        self.defocus_v_a = _per_tilt(self.defocus_v_a, n, "defocus_v_a")
        self.defocus_angle_deg = _per_tilt(self.defocus_angle_deg, n, "defocus_angle_deg")
        if not np.all(np.isfinite(self.defocus_u_a)) or not np.all(np.isfinite(self.defocus_v_a)):
            raise TomoError("ctf: defocus values must be finite numbers (Å)")
        if not 0 <= self.amplitude_contrast < 1:
            raise TomoError(f"ctf: amplitude contrast {self.amplitude_contrast} must lie in [0, 1)")

    @property
    def n_tilts(self) -> int:
        return int(self.defocus_u_a.size)

    def as_dict(self) -> dict:
        return {"defocus_u_a": self.defocus_u_a.tolist(), "defocus_v_a": self.defocus_v_a.tolist(),
                "defocus_angle_deg": self.defocus_angle_deg.tolist(), "voltage_kv": self.voltage_kv,
                "cs_mm": self.cs_mm, "amplitude_contrast": self.amplitude_contrast,
                "phase_shift_deg": self.phase_shift_deg}


def _per_tilt(values, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.full(n, float(arr[0]))
    if arr.size != n:
        raise TomoError(f"ctf: {name} has {arr.size} values for {n} tilts")
    return arr


def amplitude_contrast_from_ratio(absorption_ratio: float) -> float:
    """A of a specimen whose imaginary potential is ``absorption_ratio`` × its real potential: the weak-object
    image ∝ sin χ + w cos χ, so A = w / √(1 + w²)."""
    return float(absorption_ratio / math.sqrt(1.0 + absorption_ratio**2))


def ctf_2d(shape_yx: tuple[int, int], pixel_size_a: float, defocus_u_a, defocus_v_a, defocus_angle_deg: float,
           voltage_kv: float, cs_mm: float, amplitude_contrast: float, phase_shift_deg: float = 0.0, *,
           half: bool = False, device=None, dtype=torch.float64) -> torch.Tensor:
    """C(k) = sin(χ(k) + asin A + φ) on the FFT layout of ``shape_yx`` (``half``: the rfft half plane);
    ``defocus_u_a``/``defocus_v_a`` may be (L,) tensors (one CTF per level: (L, H, W)).
    Δf(θ) = (U + V)/2 + (U − V)/2 · cos 2(θ − angle)."""
    terms = ctf_terms(shape_yx, pixel_size_a, defocus_angle_deg, half=half, device=device, dtype=dtype)
    out = ctf_from_terms(terms, defocus_u_a, defocus_v_a, voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg)
    return out if torch.as_tensor(defocus_u_a).ndim else out[0]


def ctf_terms(shape_yx: tuple[int, int], pixel_size_a: float, defocus_angle_deg: float, *, half: bool = False,
              device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(k², cos 2(θ − angle)) on the FFT layout: the parts of :func:`ctf_2d` that do not depend on the defocus."""
    ky, kx = dfft.fftfreq_2d(shape_yx, pixel_size_a, half=half, device=device, dtype=dtype)
    k2 = kx**2 + ky**2
    theta = torch.atan2(ky, kx)
    return k2, torch.cos(2 * (theta - math.radians(defocus_angle_deg)))


def ctf_from_terms(terms: tuple[torch.Tensor, torch.Tensor], defocus_u_a, defocus_v_a, voltage_kv: float,
                   cs_mm: float, amplitude_contrast: float, phase_shift_deg: float = 0.0) -> torch.Tensor:
    """(L, H, W) CTFs of L defocus pairs from :func:`ctf_terms` (one level at a time keeps one image in memory)."""
    k2, cos2 = terms
    u = torch.as_tensor(defocus_u_a, dtype=k2.dtype, device=k2.device).reshape(-1, 1, 1)
    v = torch.as_tensor(defocus_v_a, dtype=k2.dtype, device=k2.device).reshape(-1, 1, 1)
    df = 0.5 * (u + v) + 0.5 * (u - v) * cos2
    lam = wavelength_a(voltage_kv)
    chi = math.pi * lam * df * k2 - 0.5 * math.pi * cs_mm * 1e7 * lam**3 * k2**2
    return torch.sin(chi + math.asin(amplitude_contrast) + math.radians(phase_shift_deg))


def default_defocus_tolerance_a(pixel_size_a: float, voltage_kv: float) -> float:
    """Defocus error whose phase error reaches π/4 at Nyquist: πλe(1/2p)² = π/4 → e = p²/λ."""
    return pixel_size_a**2 / wavelength_a(voltage_kv)


def defocus_offsets_a(shape_yx: tuple[int, int], pixel_size_a: float, angle_deg: float, tilt_axis_deg: float,
                      *, device=None, dtype=torch.float64) -> torch.Tensor:
    """(H, W) defocus change (Å) of the mid-plane seen at each pixel of a tilt: −p' tan θ, p' the signed distance
    (Å) from the tilt axis along (cos α, sin α); pixel [H//2, W//2] is on the axis."""
    h, w = shape_yx
    return _offsets_at(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                       shape_yx, pixel_size_a, angle_deg, tilt_axis_deg)


def _offsets_at(iy: torch.Tensor, ix: torch.Tensor, shape_yx: tuple[int, int], pixel_size_a: float, angle_deg: float,
                tilt_axis_deg: float) -> torch.Tensor:
    """:func:`defocus_offsets_a` at rows ``iy`` and columns ``ix`` (pixel indices) only."""
    h, w = shape_yx
    y = (iy - h // 2)[:, None] * pixel_size_a
    x = (ix - w // 2)[None, :] * pixel_size_a
    a = math.radians(tilt_axis_deg)
    p = x * math.cos(a) + y * math.sin(a)
    return -p * math.tan(math.radians(angle_deg))


def correction_filter(c: torch.Tensor, mode: str, wiener_snr: float) -> torch.Tensor:
    if mode == "phase_flip":
        return torch.where(c >= 0, torch.ones_like(c), -torch.ones_like(c))
    return c / (c * c + 1.0 / wiener_snr)


def ctf_correct(stack: torch.Tensor, angles_deg, ctf: TiltCTF, pixel_size_a: float, *, tilt_axis_deg: float = 0.0,
                mode: str = "phase_flip", defocus_tolerance_a: float | None = None, wiener_snr: float = 10.0,
                ) -> tuple[torch.Tensor, dict]:
    """CTF-correct each tilt of a positive-contrast stack (T, H, W) in strips parallel to the tilt axis.

    ``defocus_tolerance_a``: the largest defocus error a pixel may be corrected with (default
    :func:`default_defocus_tolerance_a`); levels are 2× that apart. Returns the corrected stack (same dtype) and a
    record (mode, tolerance, levels per tilt)."""
    n_t, h, w = stack.shape
    correct, record = ctf_corrector((n_t, h, w), angles_deg, ctf, pixel_size_a, tilt_axis_deg=tilt_axis_deg,
                                    mode=mode, defocus_tolerance_a=defocus_tolerance_a, wiener_snr=wiener_snr)
    if correct is None:
        return stack, record
    out = torch.empty_like(stack)
    for t in range(n_t):
        out[t] = correct(t, stack[t])
    return out, record


def ctf_corrector(shape: tuple[int, int, int], angles_deg, ctf: TiltCTF, pixel_size_a: float, *,
                  tilt_axis_deg: float = 0.0, mode: str = "phase_flip", defocus_tolerance_a: float | None = None,
                  wiener_snr: float = 10.0):
    """(``correct(t, image)`` → tilt t's (H, W) image corrected as :func:`ctf_correct` does it, or None for mode
    none; the record) for a (T, H, W) stack: the same correction one image at a time, so a large series can be
    corrected as it is read. The record's levels per tilt come from the geometry alone."""
    if mode not in MODES:
        raise TomoError(f"ctf correction: unknown mode {mode!r}; choose from {list(MODES)}")
    n_t, h, w = shape
    if ctf.n_tilts != n_t:
        raise TomoError(f"ctf: {ctf.n_tilts} defocus values for a stack of {n_t} tilts; give one per tilt")
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if mode == "none":
        return None, {"mode": "none"}
    if not wiener_snr > 0:
        raise TomoError(f"ctf correction: wiener_snr {wiener_snr} must be > 0")
    tol = float(defocus_tolerance_a or default_defocus_tolerance_a(pixel_size_a, ctf.voltage_kv))
    if not tol > 0:
        raise TomoError(f"ctf correction: defocus tolerance {tol} Å must be > 0")
    step = 2.0 * tol

    def levels(offsets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        index = torch.round(offsets / step)
        return index, int(index.min()), int(index.max())

    def correct(t: int, image: torch.Tensor) -> torch.Tensor:
        dev = image.device
        index, lo, hi = levels(defocus_offsets_a((h, w), pixel_size_a, float(angles[t]), tilt_axis_deg, device=dev))
        defocus = torch.arange(lo, hi + 1, device=dev, dtype=torch.float64) * step
        terms = ctf_terms((h, w), pixel_size_a, float(ctf.defocus_angle_deg[t]), half=True, device=dev)
        spec = dfft.rfft2(image.to(torch.float64))
        tilt = torch.zeros((h, w), dtype=torch.float64, device=dev)
        for j in range(hi - lo + 1):  # one level at a time: memory of one image, not of all levels
            c = ctf_from_terms(terms, ctf.defocus_u_a[t] + defocus[j:j + 1], ctf.defocus_v_a[t] + defocus[j:j + 1],
                               ctf.voltage_kv, ctf.cs_mm, ctf.amplitude_contrast, ctf.phase_shift_deg)[0]
            filtered = dfft.irfft2(spec * correction_filter(c, mode, wiener_snr), (h, w))
            tilt = torch.where(index == lo + j, filtered, tilt)
        return tilt.to(image.dtype)

    # the offsets are linear in the pixel position, so their extremes (and the level range) sit at the corners
    iy, ix = torch.tensor([0.0, h - 1.0], dtype=torch.float64), torch.tensor([0.0, w - 1.0], dtype=torch.float64)
    corners = [levels(_offsets_at(iy, ix, (h, w), pixel_size_a, float(angles[t]), tilt_axis_deg))
               for t in range(n_t)]
    record = {"mode": mode, "defocus_tolerance_a": tol, "levels_per_tilt": [hi - lo + 1 for _, lo, hi in corners],
              **({"wiener_snr": wiener_snr} if mode == "wiener" else {})}
    return correct, record
