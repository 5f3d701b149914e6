"""Frame alignment on the frames' spectra: exact on noise-free shifted frames (any iterable of frames), the
signal weighting and the trajectory smoothing against known truth on synthetic movies."""

import numpy as np
import torch

from difftem.core.fft import fft2, freq_grid_per_px, ifft2
from difftem.denoise.motion import FrameSpectra, align_frames, signal_weight, smooth_trajectory
from difftem.forward.movie import drift_trajectory_a


def _movie(n=20, size=128, dose=None, seed=0):
    """A smooth random image moved along a fast-then-slow drift (px), Poisson counts at ``dose`` per px."""
    g = torch.Generator().manual_seed(seed)
    fy, fx = freq_grid_per_px((size, size))
    spec = fft2(torch.randn(size, size, generator=g, dtype=torch.float64).to(torch.complex128))
    spec = spec * torch.exp(-(fx**2 + fy**2) / (2 * 0.08**2))
    truth = drift_trajectory_a(n, 6.0, 3.0, 0.2, 0.4, 2.0)
    frames = []
    for sx, sy in truth:
        img = ifft2(spec * torch.exp(-2j * np.pi * (fx * sx + fy * sy))).real
        img = 1 + 0.3 * img / img.std()
        frames.append(img if dose is None else torch.poisson((dose * img).clamp(min=0), generator=g))
    return torch.stack(frames), truth


def test_noise_free_frames_are_aligned_to_a_fiftieth_of_a_pixel_from_an_iterator():
    frames, truth = _movie(size=256)
    found = align_frames(iter(list(frames)), max_shift_px=12)  # any iterable: frames read once
    assert np.abs(found - truth).max() < 0.02  # the taper's pull: 0.4 % of the shift at 256²
    grouped = align_frames(frames, max_shift_px=12, group=3)  # the window's mean shift at its centre
    e = (grouped - truth)[1:]
    # frame 0, extrapolated from the windows' centres through the fast phase, offsets the others alike; beyond
    # that, the windows' mean against their centre on the curved trajectory
    print(f"groups of 3, noise-free: offset {np.round(e.mean(0), 3)}, rest up to {np.abs(e - e.mean(0)).max():.3f} px")
    assert np.abs(e.mean(0)).max() < 0.4 and np.abs(e - e.mean(0)).max() < 0.15


def test_signal_weight_follows_the_frames_spectrum_and_alignment_works_at_low_dose():
    frames, truth = _movie(n=24, size=192, dose=3.0, seed=1)
    spectra = FrameSpectra(frames, 0.3)
    w = signal_weight(spectra, truth)
    r = spectra.radius
    low, high = float(w[(r > 0.02) & (r < 0.08)].mean()), float(w[r > 0.25].mean())
    assert low > 0.3 and high < 1e-3  # the image's Gaussian spectrum (σ 0.08): power e^-9.8 of its peak at 0.25
    found = align_frames(spectra, max_shift_px=12)
    plain = align_frames(spectra, max_shift_px=12, weighting="gaussian", lowpass_cycles_per_px=0.03)
    e, ep = found - truth, plain - truth
    print(f"rms error: signal weighting {np.sqrt((e**2).mean()):.3f} px, Gaussian 0.03 {np.sqrt((ep**2).mean()):.3f}")
    assert np.sqrt((e**2).mean()) < 0.25


def test_smoothing_averages_independent_errors_and_keeps_the_drift():
    rng = np.random.default_rng(0)
    truth = drift_trajectory_a(40, 12.0, 3.0, 0.2, 0.3, 1.9)
    raw, smooth = [], []
    for _ in range(20):
        noisy = truth + rng.normal(0, 0.5, truth.shape)
        z, lam = smooth_trajectory(noisy)
        e_raw, e_s = noisy - truth, z - truth
        raw.append(np.sqrt(((e_raw - e_raw.mean(0)) ** 2).mean()))
        smooth.append(np.sqrt(((e_s - e_s.mean(0)) ** 2).mean()))
    print(f"rms error about the mean offset: raw {np.mean(raw):.3f} px, smoothed {np.mean(smooth):.3f} px")
    assert np.mean(smooth) < 0.5 * np.mean(raw)
