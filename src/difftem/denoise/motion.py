"""Whole-frame motion correction of a movie: each frame's shift against the sum of the others.

A frame at 1 e/Å² holds about one electron per pixel, so it is aligned against a reference made of all the other
frames (leave-one-out: the frame's own noise does not correlate with itself), with the low-pass cross-correlation
and parabolic sub-pixel peak of :mod:`difftem.denoise.align` (whitened phase correlation fails at such doses).
The reference is rebuilt from the aligned frames and the shifts measured again, a few times.

Convention: shifts are (x, y) in pixels of a frame's content relative to the first frame, as RELION's
``rlnMicrographShiftX/Y``: frame i(r) ≈ frame 0(r − s_i); :func:`aligned_sum` shifts each frame by −s_i.
"""

from __future__ import annotations

import numpy as np
import torch

from .align import measure_shift, shift_image

__all__ = ["align_frames", "aligned_sum"]


def aligned_sum(frames: torch.Tensor, shifts_xy_px: np.ndarray) -> torch.Tensor:
    """Σ_i frame_i shifted by −s_i (Fourier phase ramps, periodic)."""
    out = torch.zeros(frames.shape[-2:], dtype=torch.float64, device=frames.device)
    for f, (sx, sy) in zip(frames, np.asarray(shifts_xy_px), strict=True):
        out += shift_image(f.double(), (-float(sy), -float(sx)))
    return out


def align_frames(frames: torch.Tensor, *, lowpass_cycles_per_px: float = 0.05, iterations: int = 5,
                 max_shift_px: float | None = None, group: int = 1) -> np.ndarray:
    """(n, 2) shifts (x, y) px of an (n, H, W) movie's frames relative to its first frame.

    Coarse to fine: the first pass low-pass filters at half ``lowpass_cycles_per_px`` (the first reference, the
    unaligned sum, is blurred by the drift: only its low frequencies correlate), the others at it; it stops
    when no shift changes by 0.001 px.

    Precision is noise-limited at 1 e/Å² per frame: on 512² frames of 7 apoferritins (2.5 µm underfocus) one
    frame against a noise-free reference is off by 0.81 px rms (σ = 0.05 cycles/px; 0.18 px at 0.12), but
    against the sum of the 39 other frames, even aligned by the true shifts, by 1.4-1.7 px: the reference's own
    noise dominates, and falls only as the square root of the field's area.

    ``group`` > 1 measures each frame with its neighbours (a window of that many frames, summed, as motion
    correction programs group frames at low dose) against the sum of the frames outside the window; the shift
    found is the window's mean, assigned to its centre frame."""
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
