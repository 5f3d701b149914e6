"""Whole-frame motion correction of a movie: each frame's shift against the sum of the others.

A frame at 1 e/Å² holds about one electron per pixel, so it is aligned against a reference made of all the other
frames (leave-one-out: the frame's own noise does not correlate with itself). Everything happens on the frames'
spectra, transformed once (tapered at the edges) and kept only up to ``max_frequency_per_px``: moving a frame is a
phase ramp, the reference is a sum of spectra, and the cross-correlation is evaluated where it is needed — on a
coarse grid by one small inverse FFT in the first pass, then near each frame's peak by a matrix DFT (an upsampled
DFT: any sub-pixel sampling, no interpolation), refined to 0.01 px by a parabola through the finest samples.

Weighting. At such doses nearly every Fourier component is noise, and the product of the frame's noise with the
reference's noise is what limits the precision. The first pass uses a Gaussian low-pass (the unaligned sum is
blurred by the drift); later passes weight each frequency by what the data say of it: the frames' signal power
S² — the radially averaged cross-power of the even and odd frames' aligned sums, whose noise does not correlate;
bands where it is not significant get no weight — over the variance of a frame's product with the reference,
N²·(N² + (n − 1)·S²), N² a frame's noise power per ring (``weighting="fisher"``, the default). Each ring then
counts by its signal over its noise in the correlation (the Fisher information of the shift), so the weighting
follows the Thon rings of the data and undoes the colouring of the noise: a detector's MTF damps the counts'
noise as much as the signal, and weights ∝ S² alone (``weighting="signal"``, the earlier default; the matched
filter only for white noise) underweight the frequencies the MTF damps. At 2048², 40 frames of 1 e/Å², the
Fisher weighting gave 0.133 px rms per axis where the signal power gave 0.191 (docs/acquisition.md).

Convention: shifts are (x, y) in pixels of a frame's content relative to the first frame, as RELION's
``rlnMicrographShiftX/Y``: frame i(r) ≈ frame 0(r − s_i); :func:`aligned_sum` shifts each frame by −s_i.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from ..core.fft import freq_grid_per_px, freq_index, irfft2, rfft2
from ..core.threads import intra_op_threads
from .align import _taper, measure_shift, shift_image

__all__ = ["FrameSpectra", "align_frames", "align_frames_spatial", "aligned_sum", "smooth_trajectory"]


def aligned_sum(frames: torch.Tensor, shifts_xy_px: np.ndarray) -> torch.Tensor:
    """Σ_i frame_i shifted by −s_i (Fourier phase ramps, periodic)."""
    out = torch.zeros(frames.shape[-2:], dtype=torch.float64, device=frames.device)
    for f, (sx, sy) in zip(frames, np.asarray(shifts_xy_px), strict=True):
        out += shift_image(f.double(), (-float(sy), -float(sx)))
    return out


class FrameSpectra:
    """The frames' tapered, mean-free spectra on the rfft half plane, kept for |fy|, fx ≤ ``max_frequency_per_px``
    (complex64, (n, rows, cols)), with the frequencies (cycles/px) of the kept rows and columns. Frames are read
    one at a time, so an iterator of frames needs memory for the kept spectra only."""

    def __init__(self, frames: Iterable[torch.Tensor], max_frequency_per_px: float = 0.25):
        spectra = []
        for frame in frames:
            frame = torch.as_tensor(frame)
            if not spectra:
                self.shape = tuple(frame.shape[-2:])
                fy, fx = freq_grid_per_px(self.shape, half=True, device=frame.device)
                self.rows = torch.nonzero(fy[:, 0].abs() <= max_frequency_per_px).flatten()
                self.cols = torch.nonzero(fx[0] <= max_frequency_per_px).flatten()
                self.fy, self.fx = fy[self.rows, 0].double(), fx[0, self.cols].double()
                self.taper = _taper(self.shape, frame.device, torch.float32)
            f = frame.float()
            spec = rfft2((f - f.mean()) * self.taper)
            spectra.append(spec[self.rows][:, self.cols].to(torch.complex64))
        if not spectra:
            raise ValueError("align_frames: no frames")
        self.spectra = torch.stack(spectra)
        # each half-plane column but kx = 0 stands for itself and its mirror
        self.half_weight = torch.where(self.fx == 0, 1.0, 2.0).to(torch.float64)
        self.radius = torch.sqrt(self.fy[:, None] ** 2 + self.fx[None, :] ** 2)

    def __len__(self) -> int:
        return int(self.spectra.shape[0])

    def mean_power(self) -> torch.Tensor:
        """The frames' mean |F|² on the kept half plane (float64), computed once."""
        if getattr(self, "_mean_power", None) is None:
            total = torch.zeros(self.spectra.shape[1:], dtype=torch.float64, device=self.spectra.device)
            for spec in self.spectra:  # a frame at a time: no stack-sized temporary
                total += spec.abs().double() ** 2
            self._mean_power = total / len(self)
        return self._mean_power

    def ramp(self, shift_xy: np.ndarray) -> torch.Tensor:
        """exp(+2πi f·s): multiplies a spectrum to move its content by −s (undoes a shift s)."""
        sx, sy = (float(v) for v in shift_xy)
        ey = torch.exp(2j * math.pi * self.fy * sy)
        ex = torch.exp(2j * math.pi * self.fx * sx)
        return (ey[:, None] * ex[None, :]).to(torch.complex64)


def _correlation_at(x: torch.Tensor, fy: torch.Tensor, fx: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor
                    ) -> torch.Tensor:
    """c(y, x) = Σ Re[X(f) e^{2πi f·(x, y)}] on the grid ys × xs (px) by a matrix DFT (X carries the half-plane
    weights)."""
    ey = torch.exp(2j * math.pi * ys[:, None] * fy[None, :])  # (My, rows)
    ex = torch.exp(2j * math.pi * fx[:, None] * xs[None, :])  # (cols, Mx)
    return (ey @ x @ ex).real


def _coarse_peak(x: torch.Tensor, spectra: FrameSpectra, max_shift_px: float) -> tuple[float, float]:
    """The correlation's highest sample within ``max_shift_px`` from one inverse FFT of the kept spectrum (a grid of
    H/rows by W/(2·cols − 1) px)."""
    ny, nx = len(spectra.rows), len(spectra.cols)
    small = (ny, 2 * nx - 1)
    # the kept rows are 0…r then −r…−1: the FFT layout of length 2r + 1; columns 0…c: rfft of length 2c + 1
    cc = irfft2(x.to(torch.complex128) / spectra.half_weight, small) * (small[0] * small[1])
    h, w = spectra.shape
    dy = freq_index(small[0], device=cc.device)[:, None] * (h / small[0])  # px each sample stands for
    dx = freq_index(small[1], device=cc.device)[None, :] * (w / small[1])
    cc = torch.where(dy**2 + dx**2 <= max_shift_px**2, cc, torch.full_like(cc, -math.inf))
    k = int(torch.argmax(cc))
    return float(dx[0, k % small[1]]), float(dy[k // small[1], 0])


def _refine_peak(x: torch.Tensor, spectra: FrameSpectra, start_xy: tuple[float, float], reach_px: float
                 ) -> tuple[float, float]:
    """The correlation's peak near ``start_xy``: samples every 1/4, then 1/20 px (matrix DFTs), then a parabola
    through the finest 3 × 3 around the best sample."""
    x = x.to(torch.complex128)
    cx, cy = start_xy
    for step, half in ((0.25, int(math.ceil(reach_px / 0.25))), (0.05, 5)):
        off = torch.arange(-half, half + 1, dtype=torch.float64, device=x.device) * step
        c = _correlation_at(x, spectra.fy, spectra.fx, cy + off, cx + off)
        k = int(torch.argmax(c))
        iy, ix = divmod(k, c.shape[1])
        iy, ix = min(max(iy, 1), c.shape[0] - 2), min(max(ix, 1), c.shape[1] - 2)
        cy, cx = cy + float(off[iy]), cx + float(off[ix])
    fit = c[iy - 1:iy + 2, ix - 1:ix + 2]

    def vertex(m: float, z: float, p: float) -> float:
        d = m - 2 * z + p
        return 0.0 if d >= 0 else max(-0.5, min(0.5, 0.5 * (m - p) / d))

    return cx + step * vertex(*fit[1].tolist()), cy + step * vertex(*fit[:, 1].tolist())


def signal_weight(spectra: FrameSpectra, shifts_xy: np.ndarray, *, n_bands: int = 48, min_snr: float = 2.0,
                  whiten: bool = False) -> torch.Tensor:
    """The frames' signal power by radius: Re[A·B*] of the even and odd frames' aligned sums, averaged in rings
    (their noises are independent, so only the signal survives), zero where not significant at ``min_snr``
    standard errors; interpolated back onto the kept half plane, normalised to a maximum of 1.

    ``whiten``: divide by the variance of a frame's product with the reference, so the weight is the signal over
    that product's noise (the Fisher weighting of a shift): with S² a frame's signal power and N² its noise power
    per ring (a frame's mean power minus S²), S² / (N²·(N² + (n − 1)·S²)). Detector noise is coloured as the
    signal is (the MTF acts on the counts), so the plain signal power underweights the frequencies the MTF damps."""
    ramps = [spectra.ramp(s) for s in shifts_xy]
    a = sum(spectra.spectra[i] * ramps[i] for i in range(0, len(spectra), 2))
    b = sum(spectra.spectra[i] * ramps[i] for i in range(1, len(spectra), 2))
    cross = (a * b.conj()).real.double() * spectra.half_weight
    r = spectra.radius
    edges = torch.linspace(0, float(r.max()) + 1e-9, n_bands + 1, dtype=torch.float64)
    band = torch.bucketize(r, edges[1:-1])
    wsum = torch.zeros(n_bands, dtype=torch.float64).index_add_(0, band.flatten(),
                                                                 spectra.half_weight.expand_as(r).flatten())
    mean = torch.zeros(n_bands, dtype=torch.float64).index_add_(0, band.flatten(), cross.flatten()) / wsum
    sq = torch.zeros(n_bands, dtype=torch.float64).index_add_(0, band.flatten(),
                                                              (cross**2 / spectra.half_weight).flatten()) / wsum
    stderr = torch.sqrt((sq - mean**2).clamp(min=0) / wsum.clamp(min=1))
    power = torch.where(mean > min_snr * stderr, mean, torch.zeros_like(mean))
    power[0] = 0.0  # the lowest ring: the taper and the illumination, not the specimen
    if whiten:
        n_a, n_b = (len(spectra) + 1) // 2, len(spectra) // 2
        s2 = power / (n_a * n_b)  # one frame's signal power per ring
        total = spectra.mean_power() * spectra.half_weight
        frame_power = torch.zeros(n_bands, dtype=torch.float64).index_add_(0, band.flatten(), total.flatten()) / wsum
        n2 = (frame_power - s2).clamp(min=1e-30)
        power = s2 / (n2 * (n2 + (len(spectra) - 1) * s2))
    weight = power[band]
    return weight / weight.max() if float(weight.max()) > 0 else weight


def _at_times(values: np.ndarray, times: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
    """(n, 2) samples at ``at`` (default 0…n−1) interpolated linearly to ``times``, extrapolated linearly."""
    at = np.arange(len(values), dtype=np.float64) if at is None else np.asarray(at, dtype=np.float64)
    if len(at) == 1:
        return np.repeat(values[:1], len(times), axis=0)
    out = np.stack([np.interp(times, at, values[:, j]) for j in range(2)], 1)
    for side, (a, b) in ((times < at[0], (0, 1)), (times > at[-1], (-2, -1))):
        slope = (values[b] - values[a]) / (at[b] - at[a])
        out[side] = values[a] + (np.asarray(times)[side, None] - at[a]) * slope
    return out


def _gaussian(spectra: FrameSpectra, sigma_per_px: float) -> torch.Tensor:
    return torch.exp(-0.5 * (spectra.radius / sigma_per_px) ** 2)


def align_frames(frames, *, lowpass_cycles_per_px: float = 0.05, iterations: int = 10,
                 max_shift_px: float | None = None, group: int = 1, weighting: str = "fisher",
                 max_frequency_per_px: float = 0.25) -> np.ndarray:
    """(n, 2) shifts (x, y) px of a movie's frames relative to its first frame.

    ``frames``: an (n, H, W) tensor or any iterable of (H, W) frames (read once; memory then holds only the
    kept spectra). The first pass finds each frame's peak within ``max_shift_px`` (default a quarter of the
    smaller side) under a Gaussian low-pass of σ = ``lowpass_cycles_per_px``/2; later passes refine near the
    peaks, weighted by the measured signal over noise (``weighting="fisher"``), the measured signal power alone
    (``"signal"``) or the Gaussian of σ = ``lowpass_cycles_per_px`` (``"gaussian"``), until no shift moves by
    0.001 px.

    ``group`` > 1 measures windows of that many consecutive frames, summed as recorded (as motion correction
    programs group frames at low dose), against the sum of the frames outside the window; each window's shift
    stands at its centre time, and the frames' shifts are interpolated (extrapolated linearly at the ends).

    The edge taper, fixed in each frame, pulls shifts slightly towards the reference's mean position: noise-free,
    1.9 % of the shift on 128² frames, 0.4 % on 256², 0.09 % on 512², 0.025 % on 1024² (∝ 1/size²).
    Precision at 1 e/Å² per frame: docs/acquisition.md (benchmarks/bench_motion.py).
    """
    spectra = frames if isinstance(frames, FrameSpectra) else FrameSpectra(frames, max_frequency_per_px)
    # one intra-op thread: the passes are many small products (measured at 2048², 40 frames, on 2 loaded cores:
    # 3.3 s on one thread, 22 s on two)
    with intra_op_threads(1):
        return _align(spectra, lowpass_cycles_per_px, iterations, max_shift_px, group, weighting)


def _align(spectra: FrameSpectra, lowpass_cycles_per_px: float, iterations: int, max_shift_px: float | None,
           group: int, weighting: str) -> np.ndarray:
    n = len(spectra)
    h, w = spectra.shape
    limit = max_shift_px if max_shift_px is not None else min(h, w) / 4
    size = max(1, min(group, n))
    starts = np.arange(n - size + 1)  # windows of ``size`` frames; their shifts stand at their centre times
    centres = starts + (size - 1) / 2
    shifts = np.zeros((n, 2))
    weight = _gaussian(spectra, lowpass_cycles_per_px / 2)
    for it in range(max(1, iterations)):
        ramps = [spectra.ramp(s) for s in shifts]
        aligned = [spectra.spectra[i] * ramps[i] for i in range(n)]
        total = sum(aligned)
        measured = np.zeros((len(starts), 2))
        weight_c = (weight * spectra.half_weight).to(torch.complex64)
        for k, lo in enumerate(starts):
            hi = lo + size
            # the window's frames as recorded (neighbours barely move between frames) against the others,
            # aligned: peaks at the window's mean shift, without feedback from the neighbours' estimates
            raw = spectra.spectra[lo] if size == 1 else spectra.spectra[lo:hi].sum(0)
            x = (total - sum(aligned[lo:hi])).conj() * raw * weight_c
            if it == 0:
                start = _coarse_peak(x, spectra, limit)
                reach = 2 * max(h / len(spectra.rows), w / (2 * len(spectra.cols) - 1))
            else:
                start, reach = tuple(_at_times(shifts, centres[k:k + 1])[0]), 1.0
            measured[k] = _refine_peak(x, spectra, start, reach)
        new = measured if size == 1 else _at_times(measured, np.arange(n), centres)
        done = it >= 2 and np.abs(new - shifts).max() < 1e-3
        shifts = new
        if done:
            break
        if weighting in ("signal", "fisher"):
            weight = signal_weight(spectra, shifts, whiten=weighting == "fisher")
            if float(weight.max()) == 0:  # nothing significant: keep the low-pass
                weight = _gaussian(spectra, lowpass_cycles_per_px)
        else:
            weight = _gaussian(spectra, lowpass_cycles_per_px)
    return shifts - shifts[0]


def smooth_trajectory(shifts_xy: np.ndarray, smoothing: float | None = None, order: int = 2
                      ) -> tuple[np.ndarray, float]:
    """Whittaker smoothing of a measured trajectory: z minimising |z − s|² + λ·|D z|² (D the second difference,
    i.e. a penalty on acceleration), per axis, with λ chosen by generalised cross-validation (GCV: n·RSS/(n − tr
    H)², H = (I + λDᵀD)⁻¹) unless ``smoothing`` gives it. Beam-induced drift is smooth in time (a fast phase
    decaying over frames, then slow), while per-frame errors at low dose are independent: the smoother averages
    the errors of neighbouring frames and keeps the trajectory. Returns (smoothed (n, 2), λ), relative to the
    first frame."""
    s = np.asarray(shifts_xy, dtype=np.float64)
    n = len(s)
    if n < 4:
        return s - s[0], 0.0
    d = np.diff(np.eye(n), order, axis=0)
    penalty = d.T @ d

    def fit(lam: float) -> tuple[np.ndarray, float]:
        hat = np.linalg.inv(np.eye(n) + lam * penalty)
        z = hat @ s
        rss = float(((z - s) ** 2).sum())
        return z, 2 * n * rss / (2 * n - 2 * np.trace(hat)) ** 2  # both axes: 2n data, 2·tr(H) parameters

    if smoothing is None:
        grid = 10.0 ** np.arange(-2, 6.01, 0.25)
        smoothing = float(min(grid, key=lambda lam: fit(lam)[1]))
    z, _ = fit(smoothing)
    return z - z[0], smoothing


def align_frames_spatial(frames: torch.Tensor, *, lowpass_cycles_per_px: float = 0.05, iterations: int = 5,
                         max_shift_px: float | None = None, group: int = 1) -> np.ndarray:
    """The earlier aligner, kept for comparison (benchmarks/bench_motion.py): each pass shifts every frame and
    correlates full-size images with :func:`difftem.denoise.align.measure_shift` (Gaussian low-pass, parabola
    through the integer samples). Same convention and arguments as :func:`align_frames`."""
    frames = torch.as_tensor(frames).double()
    n = frames.shape[0]
    shifts = np.zeros((n, 2))
    half = max(0, (group - 1) // 2)
    schedule = [lowpass_cycles_per_px / 2] + [lowpass_cycles_per_px] * max(1, iterations - 1)
    for it, lowpass in enumerate(schedule):
        moved = torch.stack([shift_image(f, (-float(s[1]), -float(s[0]))) for f, s in zip(frames, shifts,
                                                                                              strict=True)])
        total = moved.sum(0)
        new = np.zeros_like(shifts)
        for i in range(n):
            lo, hi = max(0, i - half), min(n, i + half + 1)
            window = moved[lo:hi].sum(0)  # aligned; moved back by frame i's shift below
            dy, dx = measure_shift(total - window, shift_image(window, (float(shifts[i, 1]), float(shifts[i, 0]))),
                                   lowpass, max_shift_px)
            new[i] = (dx, dy)
        done = it >= 1 and np.abs(new - shifts).max() < 1e-3
        shifts = new
        if done:
            break
    return shifts - shifts[0]
