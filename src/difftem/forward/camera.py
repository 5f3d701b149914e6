"""Camera physics for frames: counting or integrating, frequency-dependent DQE and NPS, coincidence loss,
super-resolution counting, and the fixed pattern a real camera adds (per-pixel and per-column gain, dead and hot
pixels and columns).

Signal and noise take different paths. The electrons of a frame arrive as Poisson(q·λ) events (q = DQE(0), the
detected fraction; λ the expected electrons per pixel). The signal, q·λ, is filtered by the MTF (the configured
curve times the pixel's sinc when ``pixel_mtf``); the noise, the events minus their mean, by √NPS(f), NPS(0) = 1.
So NPS_out(f) = q·λ·NPS(f) and DQE(f) = q·MTF(f)²/NPS(f). A counting camera that places each event in its pixel
has white noise (``nps_floor`` 1): DQE(f) = q·MTF(f)², the classic counting result; ``nps: signal`` filters
noise like signal (NPS = MTF², DQE flat = q), as the summed-image detector of ``forward.detector`` does. With both
transfers the identity the frames are integer event counts.

Coincidence loss (counting at dose rate r electrons/px/s, dead time τ): the counted rate is r/(1 + rτ)
(non-paralysable) or r·exp(−rτ) (paralysable); only the mean is modelled (the dead time's sub-Poisson variance
is not). Super-resolution counting places events on a 2× finer grid (the frame's expected counts Fourier-
interpolated there); Fourier binning crops the spectrum back to the pixel, which drops the noise beyond the
pixel's Nyquist instead of aliasing it. Integrating cameras: ADU = gain·(filtered electrons) + read noise + bias.

The fixed pattern (``pattern_seed``, the same camera across runs) multiplies each pixel by
g = (1 + σ_pixel·N)(1 + σ_column·N_column); dead pixels and columns read 0, hot ones Poisson(hot counts). The
gain reference a camera ships is 1/g (multiply a raw frame by it, as RELION and MotionCor2 do), 1 at defects;
the defects are listed as MotionCor2-style rectangles ``x y w h`` and as a map (1 = bad).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.fft import freq_grid_per_px, irfft2, radial_freq_per_px, rfft2
from .detector import poisson_counts


@dataclass(frozen=True)
class FixedPattern:
    """A camera's per-pixel gain (H, W), its defects (bool maps) and the defect rectangles (x, y, w, h)."""

    gain: torch.Tensor
    dead: torch.Tensor
    hot: torch.Tensor
    rectangles: list[tuple[int, int, int, int]]

    @property
    def defects(self) -> torch.Tensor:
        return self.dead | self.hot

    def gain_reference(self) -> torch.Tensor:
        """What the camera ships: 1/g (multiply raw frames by it), 1 at defects."""
        return torch.where(self.defects, torch.ones_like(self.gain), 1.0 / self.gain)


def fixed_pattern(camera, shape: tuple[int, int], device=None) -> FixedPattern:
    """The camera's fixed pattern on an (H, W) sensor, from its own seed (independent of the run's)."""
    h, w = shape
    rng = np.random.default_rng(np.random.SeedSequence([camera.pattern_seed, 0x6A17]))
    gain = (1 + camera.gain_sigma * rng.standard_normal((h, w))) * (1 + camera.gain_column_sigma
                                                                    * rng.standard_normal((1, w)))
    gain = np.clip(gain, 0.05, None)
    dead = rng.random((h, w)) < camera.dead_pixel_fraction
    hot = (rng.random((h, w)) < camera.hot_pixel_fraction) & ~dead
    cols = rng.choice(w, size=min(w, camera.dead_columns + camera.hot_columns), replace=False)
    dead_cols, hot_cols = cols[:camera.dead_columns], cols[camera.dead_columns:]
    dead[:, dead_cols] = True
    hot[:, dead_cols] = False
    hot[:, hot_cols] = True
    rects = [(int(c), 0, 1, h) for c in sorted(cols)]
    colmask = np.zeros(w, dtype=bool)
    colmask[cols] = True
    ys, xs = np.nonzero((dead | hot) & ~colmask[None, :])
    rects += [(int(x), int(y), 1, 1) for y, x in zip(ys, xs, strict=True)]
    t = lambda a, dt: torch.as_tensor(a, device=device, dtype=dt)  # noqa: E731
    return FixedPattern(t(gain, torch.float32), t(dead, torch.bool), t(hot, torch.bool), rects)


def defects_text(pattern: FixedPattern) -> str:
    """MotionCor2-style defect list: one rectangle ``x y w h`` per line (pixels, x = column, row 0 first)."""
    return "".join(f"{x} {y} {w} {h}\n" for x, y, w, h in pattern.rectangles)


def coincidence_factor(rate_e_per_px_s: torch.Tensor, camera) -> torch.Tensor:
    """Counted / incident rate under the camera's dead-time model."""
    x = rate_e_per_px_s * camera.dead_time_s
    if camera.kind != "counting" or camera.coincidence == "none" or camera.dead_time_s == 0:
        return torch.ones_like(x)
    if camera.coincidence == "paralysable":
        return torch.exp(-x)
    return 1.0 / (1.0 + x)


def sinc_mtf(shape: tuple[int, int], *, half: bool = True, device=None) -> torch.Tensor:
    """The square pixel's MTF sinc(fx)·sinc(fy) (f in cycles/px) on the (r)fft layout."""
    fy, fx = freq_grid_per_px(shape, half=half, device=device)
    return torch.sinc(fy) * torch.sinc(fx)


def nps_curve(camera, omega: torch.Tensor) -> torch.Tensor:
    """The configured NPS shape, 1 at f = 0."""
    floor = camera.nps_floor
    return (1 - floor) / (1 + camera.nps_alpha * omega**2) + floor


def transfers(camera, mtf, shape: tuple[int, int], device=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(signal, noise) transfers on the rfft layout of an (H, W) frame; None where the identity."""
    omega = radial_freq_per_px(shape, half=True, device=device)
    signal = None
    if mtf is not None:
        curve = getattr(mtf, "curve", mtf)
        signal = curve(omega) / curve(torch.zeros((), dtype=omega.dtype, device=omega.device))
    if camera.pixel_mtf:
        pix = sinc_mtf(shape, device=device)
        signal = pix if signal is None else signal * pix
    if camera.nps == "signal":
        return signal, signal
    noise = None if camera.nps_floor == 1.0 else torch.sqrt(nps_curve(camera, omega))
    return signal, noise


def dqe_curve(camera, mtf, dqe0: float, omega: torch.Tensor) -> torch.Tensor:
    """DQE(f) = DQE(0)·MTF(f)²/NPS(f) along a radial frequency axis (cycles/px, ``pixel_mtf`` along x)."""
    signal = torch.ones_like(omega)
    if mtf is not None:
        curve = getattr(mtf, "curve", mtf)
        signal = curve(omega) / curve(torch.zeros((), dtype=omega.dtype))
    if camera.pixel_mtf:
        signal = signal * torch.sinc(omega)
    noise2 = signal**2 if camera.nps == "signal" else nps_curve(camera, omega)
    return dqe0 * signal**2 / noise2


def fourier_resample(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Band-limited resampling of (..., H, W) images to ``shape`` by padding or cropping the spectrum (the sum
    of counts is kept: values scale with the pixel area)."""
    h, w = image.shape[-2:]
    H, W = shape
    spec = rfft2(image)
    out = torch.zeros(image.shape[:-2] + (H, W // 2 + 1), dtype=spec.dtype, device=image.device)
    ny, nx = min(h, H), min(w // 2 + 1, W // 2 + 1)
    top = (ny + 1) // 2
    out[..., :top, :nx] = spec[..., :top, :nx]
    out[..., H - (ny - top):, :nx] = spec[..., h - (ny - top):, :nx]
    return irfft2(out, (H, W))


@dataclass
class CameraModel:
    """A camera ready to read frames: its config, the detector's MTF and DQE(0), the fixed pattern."""

    camera: object
    mtf: object
    dqe0: float
    pattern: FixedPattern | None
    frame_time_s: float = 1.0
    _transfers: dict = field(default_factory=dict, repr=False)  # per (shape, device): computed once

    @property
    def scale(self) -> int:
        return 2 if self.camera.super_resolution else 1

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        if self.camera.super_resolution and not self.camera.bin_super_resolution:
            return (2 * shape[0], 2 * shape[1])
        return tuple(shape)

    def integer_counts(self) -> bool:
        """Whether frames are whole event counts (counting, identity transfers, no gain pattern)."""
        c = self.camera
        sig, noise = transfers(c, self.mtf, (16, 16))
        return (c.kind == "counting" and sig is None and noise is None and not c.super_resolution
                and c.gain_sigma == 0 and c.gain_column_sigma == 0)

    def _sensor_rate(self, expected_e: torch.Tensor) -> torch.Tensor:
        """Expected electrons per sensor pixel after coincidence loss (on the 2× grid for super-resolution)."""
        c = self.camera
        lam = expected_e.float().clamp(min=0)  # float32: counts of a frame need no more (and it halves the FFTs)
        if c.kind == "counting":
            lam = lam * coincidence_factor(lam / self.frame_time_s, c)
        if self.scale == 2:
            shape = tuple(lam.shape[-2:])
            lam = fourier_resample(lam, (2 * shape[0], 2 * shape[1])).clamp(min=0)  # λ/4 per half-pixel
        return lam

    def _transfer_pair(self, fshape: tuple[int, int], device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        key = (fshape, str(device))
        if key not in self._transfers:
            self._transfers[key] = transfers(self.camera, self.mtf, fshape, device=device)
        return self._transfers[key]

    def mean(self, expected_e: torch.Tensor, *, bin_to_pixel: bool = False) -> torch.Tensor:
        """The expected reading of an image with ``expected_e`` electrons per pixel (H, W): the signal path of
        :meth:`read` without the noise and without the fixed pattern (an ideal camera's noise-free image).
        ``bin_to_pixel``: super-resolution output binned to the pixel even when the camera does not bin."""
        c = self.camera
        shape = tuple(expected_e.shape[-2:])
        lam = self._sensor_rate(expected_e)
        fshape = tuple(lam.shape[-2:])
        signal_t, _ = self._transfer_pair(fshape, lam.device)
        m = self.dqe0 * lam
        if signal_t is not None:
            m = irfft2(rfft2(m) * signal_t, fshape)
        if self.scale == 2 and (c.bin_super_resolution or bin_to_pixel):
            m = fourier_resample(m, shape)
        if c.kind == "integrating":
            m = m / self.dqe0 * c.gain_adu_per_e + c.offset_adu
        return m.float()

    def read(self, expected_e: torch.Tensor, generator: torch.Generator, *, bin_to_pixel: bool = False
             ) -> torch.Tensor:
        """One frame from the expected electrons per pixel (H, W) of this frame. ``bin_to_pixel``: a super-
        resolution reading (fixed pattern included) is Fourier-binned to the pixel even when the camera does not
        bin, as motion correction writes a micrograph."""
        c = self.camera
        shape = tuple(expected_e.shape[-2:])
        lam = self._sensor_rate(expected_e)
        q = self.dqe0
        events = poisson_counts(q * lam, generator)
        fshape = tuple(lam.shape[-2:])
        signal_t, noise_t = self._transfer_pair(fshape, lam.device)
        if signal_t is None and noise_t is None:
            frame = events
        elif c.nps == "signal":
            frame = irfft2(rfft2(events) * signal_t, fshape)
        else:
            mean_s = rfft2(q * lam)
            s = mean_s * signal_t if signal_t is not None else mean_s
            n = rfft2(events) - mean_s
            frame = irfft2(s + (n * noise_t if noise_t is not None else n), fshape)
        if self.scale == 2 and c.bin_super_resolution:
            frame = fourier_resample(frame, shape)  # counts per (binned) pixel
        if c.kind == "integrating":
            frame = frame / q * c.gain_adu_per_e + c.offset_adu
            if c.read_noise_adu > 0:
                frame = frame + c.read_noise_adu * torch.randn(frame.shape, generator=generator, dtype=frame.dtype,
                                                               device=frame.device)
        frame = self._apply_pattern(frame.float(), generator)
        if bin_to_pixel and tuple(frame.shape[-2:]) != shape:
            frame = fourier_resample(frame, shape).float()
        return frame

    def _apply_pattern(self, frame: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = self.pattern
        if p is None or p.gain.shape != frame.shape:
            return frame
        frame = frame * p.gain
        frame = torch.where(p.dead, torch.zeros_like(frame), frame)
        if bool(p.hot.any()):
            hot = poisson_counts(torch.full(frame.shape, float(self.camera.hot_pixel_counts), device=frame.device),
                                 generator)
            frame = torch.where(p.hot, hot, frame)
        return frame


def camera_model(config, mtf, frame_time_s: float, device=None) -> CameraModel:
    """The camera of a config's ``detector.camera`` with the detector's MTF and DQE(0); the fixed pattern on the
    output grid."""
    det = config.detector
    cam = det.camera
    model = CameraModel(cam, mtf, float(det.dqe), None, frame_time_s)
    shape = model.output_shape(tuple(det.shape_px))
    has_pattern = (cam.gain_sigma > 0 or cam.gain_column_sigma > 0 or cam.dead_pixel_fraction > 0
                   or cam.hot_pixel_fraction > 0 or cam.dead_columns > 0 or cam.hot_columns > 0)
    model.pattern = fixed_pattern(cam, shape, device) if has_pattern else None
    return model


def radial_bands(nps: torch.Tensor, shape: tuple[int, int], edges_per_px) -> np.ndarray:
    """Mean of an rfft-layout spectrum in radial bands [edges[i], edges[i+1]) (cycles/px), weighting the
    half-plane's duplicated columns once."""
    omega = radial_freq_per_px(shape, half=True)
    u = torch.ones_like(omega)
    u[:, 0] = 0.5
    if shape[1] % 2 == 0:
        u[:, -1] = 0.5
    out = []
    for lo, hi in zip(edges_per_px[:-1], edges_per_px[1:], strict=False):
        m = (omega >= lo) & (omega < hi)
        out.append(float((nps.double() * u)[m].sum() / u[m].sum()))
    return np.asarray(out)


__all__ = ["CameraModel", "FixedPattern", "camera_model", "coincidence_factor", "defects_text", "dqe_curve",
           "fixed_pattern", "fourier_resample", "nps_curve", "radial_bands", "sinc_mtf", "transfers"]
