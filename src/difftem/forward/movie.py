"""Dose-fractionated movies: frames of one exposure with per-frame dose, damage and beam-induced motion.

The noise-free image of the exposure (relative intensity, vacuum = 1) is computed once; each frame is that
image
  * damaged: its contrast I − ⟨I⟩ filtered by the Grant–Grigorieff exposure filter averaged over the frame's
    own dose window [N₀ + f·ΔN, N₀ + (f+1)·ΔN] (weak-phase: the image's Fourier components follow the potential's;
    the frames' filters, weighted by their doses, sum exactly to the whole exposure's filter);
  * moved globally by the drift s_f (an exact Fourier phase ramp, in the same transform as the damage);
  * moved locally by a smooth field d_f(r): a zero-mean quadratic (doming-like) field growing with the fast
    phase, plus each particle's own random walk under a Gaussian window of the particle's radius, applied as
    one bicubic warp (``grid_sample``);
then detected with its dose (shot noise per frame).

Conventions: a frame's content is displaced by +s: frame(r) = image(r − s − d(r)); shifts are (x, y) in Å or px
with x along columns; the ground-truth global shifts are relative to the first frame (RELION's
``rlnMicrographShiftX/Y``: correct a frame by shifting it by −s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.fft import freq_grid_per_px, irfft2, radial_freq_per_px, rfft2
from .tilt import exposure_filter


def drift_trajectory_a(n_frames: int, fast_a: float, fast_frames: float, slow_a_per_frame: float,
                       direction_rad: float, slow_direction_rad: float) -> np.ndarray:
    """(n_frames, 2) global positions (x, y) in Å at the frames' mid-times, relative to the first frame:
    s(t) = fast_a·(1 − e^{−t/τ})·u + slow·t·v."""
    t = np.arange(n_frames, dtype=np.float64) + 0.5
    fast = fast_a * (1 - np.exp(-t / fast_frames))
    slow = slow_a_per_frame * t
    u = np.array([math.cos(direction_rad), math.sin(direction_rad)])
    v = np.array([math.cos(slow_direction_rad), math.sin(slow_direction_rad)])
    s = fast[:, None] * u + slow[:, None] * v
    return s - s[0]


def quadratic_basis(shape: tuple[int, int], device=None, dtype=torch.float64) -> torch.Tensor:
    """(5, H, W) zero-mean monomials u², v², uv, u, v of the normalised coordinates u, v ∈ [−1, 1)."""
    h, w = shape
    v = (torch.arange(h, device=device, dtype=dtype) - h // 2) / (h / 2)
    u = (torch.arange(w, device=device, dtype=dtype) - w // 2) / (w / 2)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    basis = torch.stack([uu**2, vv**2, uu * vv, uu, vv])
    return basis - basis.mean(dim=(-2, -1), keepdim=True)


def local_field_px(coeffs: np.ndarray, shape: tuple[int, int], device=None) -> torch.Tensor:
    """(2, H, W) displacement (dx, dy) in px of the quadratic field with (2, 5) coefficients."""
    basis = quadratic_basis(shape, device)
    c = torch.as_tensor(coeffs, dtype=basis.dtype, device=device)
    return torch.einsum("ck,khw->chw", c, basis)


def draw_local_coeffs(rng: np.random.Generator, amplitude_px: float, shape: tuple[int, int]) -> np.ndarray:
    """Random (2, 5) quadratic coefficients scaled so the field's largest |d| is ``amplitude_px``."""
    if amplitude_px <= 0:
        return np.zeros((2, 5))
    c = rng.standard_normal((2, 5))
    c[:, 3:] *= 0.3  # mostly curvature (doming); a little shear
    peak = float(local_field_px(c, shape).norm(dim=0).max())
    return c * (amplitude_px / peak)


def fast_profile(n_frames: int, fast_frames: float) -> np.ndarray:
    """The local field's growth over the frames: the fast phase, 0 at the first frame and 1 at the last."""
    t = np.arange(n_frames, dtype=np.float64) + 0.5
    g = 1 - np.exp(-t / fast_frames)
    g = g - g[0]
    return g / g[-1] if g[-1] > 0 else g


def jitter_walks_px(rng: np.random.Generator, n_particles: int, n_frames: int, step_px: float) -> np.ndarray:
    """(n_frames, n_particles, 2) per-particle random walks (x, y) in px, 0 at the first frame."""
    if step_px <= 0 or n_particles == 0:
        return np.zeros((n_frames, n_particles, 2))
    steps = rng.standard_normal((n_frames, n_particles, 2)) * step_px
    steps[0] = 0
    return np.cumsum(steps, axis=0)


def particle_field_px(walk_px: np.ndarray, centres_px: np.ndarray, radii_px: np.ndarray, shape: tuple[int, int],
                      device=None) -> torch.Tensor:
    """(2, H, W) displacement of particles moving by ``walk_px`` (n, 2) under Gaussian windows of σ = radius,
    centred at ``centres_px`` (n, 2: x, y in px); a window's weight is 1 at the particle's centre."""
    h, w = shape
    out = torch.zeros((2, h, w), dtype=torch.float64, device=device)
    if len(walk_px) == 0:
        return out
    y = torch.arange(h, dtype=torch.float64, device=device)
    x = torch.arange(w, dtype=torch.float64, device=device)
    c = torch.as_tensor(centres_px, dtype=torch.float64, device=device)
    s = torch.as_tensor(radii_px, dtype=torch.float64, device=device).clamp(min=1.0)
    gy = torch.exp(-0.5 * ((y[None, :] - c[:, 1:2]) / s[:, None]) ** 2)  # (n, H)
    gx = torch.exp(-0.5 * ((x[None, :] - c[:, 0:1]) / s[:, None]) ** 2)  # (n, W)
    d = torch.as_tensor(walk_px, dtype=torch.float64, device=device)  # (n, 2)
    for k in range(2):  # separable: Σ_p d_pk · gy_p ⊗ gx_p as one matrix product (float32: a smooth field)
        out[k] = ((gy * d[:, k:k + 1]).T.float() @ gx.float()).double()
    return out


def warp(image: torch.Tensor, displacement_px: torch.Tensor) -> torch.Tensor:
    """out(r) = image(r − d(r)) for an (H, W) image and a (2, H, W) displacement (dx, dy) in px, bicubic,
    edges clamped."""
    h, w = image.shape[-2:]
    y = torch.arange(h, dtype=displacement_px.dtype, device=image.device)
    x = torch.arange(w, dtype=displacement_px.dtype, device=image.device)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    sx = xx - displacement_px[0]
    sy = yy - displacement_px[1]
    # float32 sampling: the bicubic weights need no more, and it halves the cost of the largest step
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)[None].float()
    return F.grid_sample(image[None, None].float(), grid, mode="bicubic", padding_mode="border",
                         align_corners=False)[0, 0].to(image.dtype)


def phase_ramp(shape: tuple[int, int], shift_px: tuple[float, float], device=None) -> torch.Tensor:
    """exp(−2πi(fx·sx + fy·sy)) on the rfft layout: multiplies a spectrum to translate by (sx, sy) px."""
    fy, fx = freq_grid_per_px(shape, half=True, device=device)
    # separable: two 1-D exponentials and an outer product instead of H·W complex exponentials
    return torch.exp(-2j * math.pi * fy * shift_px[1]) * torch.exp(-2j * math.pi * fx * shift_px[0])


class FrameDoseFilters:
    """Frame f's exposure filter on the rfft layout, averaged over its dose window [N₀ + f·ΔN, N₀ + (f+1)·ΔN];
    computed when asked (a stack of them would be n_frames spectra)."""

    def __init__(self, n_frames: int, prior_e_per_a2: float, frame_dose_e_per_a2: float, voltage_kv: float,
                 shape: tuple[int, int], pixel_size_a: float, device=None):
        self.n_frames, self.prior, self.dose = n_frames, prior_e_per_a2, frame_dose_e_per_a2
        self.voltage_kv = voltage_kv
        self.k_per_a = radial_freq_per_px(shape, half=True, device=device) / pixel_size_a

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, f: int) -> torch.Tensor:
        return exposure_filter(self.prior + f * self.dose, self.dose, self.voltage_kv)(self.k_per_a)


def frame_dose_filters(n_frames: int, prior_e_per_a2: float, frame_dose_e_per_a2: float, voltage_kv: float,
                       shape: tuple[int, int], pixel_size_a: float, device=None) -> FrameDoseFilters:
    """The frames' exposure filters (``filters[f]``), each averaged over its frame's dose window."""
    return FrameDoseFilters(n_frames, prior_e_per_a2, frame_dose_e_per_a2, voltage_kv, shape, pixel_size_a, device)


@dataclass
class MotionTruth:
    """The ground truth of a movie's motion (px unless named otherwise)."""

    global_px: np.ndarray  # (n, 2) x, y relative to frame 0
    local_coeffs_px: np.ndarray  # (2, 5) quadratic field at the last frame
    local_profile: np.ndarray  # (n,) its growth
    jitter_px: np.ndarray  # (n, n_particles, 2)
    centres_px: np.ndarray  # (n_particles, 2) x, y
    radii_px: np.ndarray  # (n_particles,)

    def residual_field_px(self, f: int, shape: tuple[int, int], device=None) -> torch.Tensor | None:
        """Frame f's displacement beyond the global shift: (2, H, W) or None when zero."""
        d = None
        if self.local_profile[f] != 0 and np.any(self.local_coeffs_px):
            key = (tuple(shape), str(device))
            if getattr(self, "_unit", (None,))[0] != key:  # the field at the last frame, built once
                self._unit = (key, local_field_px(self.local_coeffs_px, shape, device).float())
            d = self._unit[1].double() * float(self.local_profile[f])
        if self.jitter_px.size and np.any(self.jitter_px[f]):
            p = particle_field_px(self.jitter_px[f], self.centres_px, self.radii_px, shape, device)
            d = p if d is None else d + p
        return d

    def local_field_stack_px(self, shape: tuple[int, int]) -> np.ndarray:
        """(n, 2, H, W) float32 full local displacement (local + particles) per frame, without the global."""
        n = len(self.global_px)
        out = np.zeros((n, 2) + tuple(shape), dtype=np.float32)
        for f in range(n):
            d = self.residual_field_px(f, shape)
            if d is not None:
                out[f] = d.cpu().numpy()
        return out


class FrameSource:
    """Frames of one exposure, one at a time (memory: a few images, whatever the number of frames).

    ``intensity``: the exposure's noise-free image (H, W); ``expected_per_frame(frame_intensity)`` turns a frame's
    intensity into its expected electrons per pixel; ``read(expected, generator)`` draws the detected frame."""

    def __init__(self, intensity: torch.Tensor, truth: MotionTruth, filters: torch.Tensor | None,
                 frame_dose_e_per_a2: float, pixel_size_a: float):
        self.shape = tuple(intensity.shape[-2:])
        self.mean = float(intensity.double().mean())
        self.spectrum = rfft2(intensity.double() - self.mean)
        self.truth = truth
        self.filters = filters
        self.counts_per_unit = frame_dose_e_per_a2 * pixel_size_a**2

    @property
    def n_frames(self) -> int:
        return len(self.truth.global_px)

    def intensity(self, f: int) -> torch.Tensor:
        """Frame f's noise-free intensity: damaged, moved by the drift, warped by the local field."""
        spec = self.spectrum
        if self.filters is not None:
            spec = spec * self.filters[f]
        sx, sy = self.truth.global_px[f]
        if sx or sy:
            spec = spec * phase_ramp(self.shape, (float(sx), float(sy)), device=spec.device)
        img = irfft2(spec, self.shape) + self.mean
        d = self.truth.residual_field_px(f, self.shape, device=img.device)
        return warp(img, d) if d is not None else img

    def expected_counts(self, f: int) -> torch.Tensor:
        return self.intensity(f) * self.counts_per_unit
