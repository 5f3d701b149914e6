"""Fourier slices of a projector on the CPU in one compiled pass (numba), when no gradient flows through them.

Per copy and frequency, :meth:`FourierProjector.project <difftem.forward.particle_map.FourierProjector.project>`
needs the cubic B-spline of the projector's coefficients at the rotated frequency (64 coefficients per channel),
an optional transfer factor and the copy's phase ramp. As torch operations that is sixteen bilinear fetches through
``grid_sample`` plus a dozen element-wise passes over (copies × frequencies) temporaries: the largest share of a
tilt series' CPU time (TEM-simulator's TMV example: ~30 ms of ~60 ms per tilt). Fused into one loop that reads the
64 coefficients of each channel straight from a zero-padded channel-last copy of the coefficients, it is about
3× faster and accumulates in float64. The torch path stays for CUDA, for gradients, and where numba is missing.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

#: zero voxels on each side of the channel-last copy: a point whose floor lies in [−2, N] reads taps floor − 1 …
#: floor + 2, i.e. padded indices floor + 2 … floor + 5, all inside N + 2·PAD; points outside that range read nothing
PAD = 3


def padded_channels_last(coeffs: torch.Tensor) -> np.ndarray:
    """(C, N, N, N) coefficients as a (N + 6, N + 6, N + 6, C) float32 array, zero-padded by PAD on each side."""
    c = coeffs.detach().to("cpu", torch.float32).permute(1, 2, 3, 0).numpy()
    return np.ascontiguousarray(np.pad(c, ((PAD, PAD), (PAD, PAD), (PAD, PAD), (0, 0))))


@cache
def _compiled():
    """The compiled kernel, or None without numba (then the torch path runs). Compiled on first use and cached
    on disk beside this module (numba's cache; about 1 s once, then ~0.05 s to load)."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; a platform without its wheels falls back
        return None

    @numba.njit(cache=True, fastmath=True, boundscheck=False, nogil=True)
    def slices(vol, k, flat, rot, offsets, transfer, scale, centre, amp, out):  # pragma: no cover - compiled
        n = vol.shape[2] - 2 * PAD
        nc = vol.shape[3]
        two_pi = 2.0 * math.pi
        for b in range(rot.shape[0]):
            r00, r01, r02 = rot[b, 0, 0], rot[b, 0, 1], rot[b, 0, 2]
            r10, r11, r12 = rot[b, 1, 0], rot[b, 1, 1], rot[b, 1, 2]
            ox, oy = offsets[b, 0], offsets[b, 1]
            for q in range(k.shape[0]):
                kx, ky = k[q, 0], k[q, 1]
                px = (kx * r00 + ky * r10) * scale + centre  # Rᵀk in projector voxels (x, y, z)
                py = (kx * r01 + ky * r11) * scale + centre
                pz = (kx * r02 + ky * r12) * scale + centre
                fx, fy, fz = math.floor(px), math.floor(py), math.floor(pz)
                if fx < -2 or fx > n or fy < -2 or fy > n or fz < -2 or fz > n:
                    continue  # no coefficient within reach: the slice is zero here (out holds zeros)
                ix, iy, iz = int(fx) + PAD - 1, int(fy) + PAD - 1, int(fz) + PAD - 1
                a = px - fx
                x0, x1, x3 = (1 - a) ** 3 / 6, 0.5 * a**3 - a * a + 2 / 3, a**3 / 6
                x2 = 1 - x0 - x1 - x3
                a = py - fy
                y0, y1, y3 = (1 - a) ** 3 / 6, 0.5 * a**3 - a * a + 2 / 3, a**3 / 6
                wy = (y0, y1, 1 - y0 - y1 - y3, y3)
                a = pz - fz
                z0, z1, z3 = (1 - a) ** 3 / 6, 0.5 * a**3 - a * a + 2 / 3, a**3 / 6
                wz = (z0, z1, 1 - z0 - z1 - z3, z3)
                phase = -two_pi * (ox * kx + oy * ky)
                gain = amp * transfer[q]
                cr, ci = gain * math.cos(phase), gain * math.sin(phase)
                for j in range(nc // 2):
                    re = 0.0
                    im = 0.0
                    for dz in range(4):
                        sre = 0.0
                        sim = 0.0
                        for dy in range(4):
                            row = vol[iz + dz, iy + dy]
                            w = wy[dy]
                            sre += w * (x0 * row[ix, 2 * j] + x1 * row[ix + 1, 2 * j]
                                        + x2 * row[ix + 2, 2 * j] + x3 * row[ix + 3, 2 * j])
                            sim += w * (x0 * row[ix, 2 * j + 1] + x1 * row[ix + 1, 2 * j + 1]
                                        + x2 * row[ix + 2, 2 * j + 1] + x3 * row[ix + 3, 2 * j + 1])
                        re += wz[dz] * sre
                        im += wz[dz] * sim
                    out[b, j, flat[q], 0] = re * cr - im * ci
                    out[b, j, flat[q], 1] = re * ci + im * cr

    return slices


def available() -> bool:
    """Whether the compiled kernel can run (numba importable)."""
    return _compiled() is not None


def fourier_slices(vol: np.ndarray, k: torch.Tensor, flat: torch.Tensor, rotations: torch.Tensor,
                   offsets_a: torch.Tensor, transfer: torch.Tensor | None, *, size: int, pixel_size_a: float,
                   box_px: int) -> torch.Tensor:
    """(B, C/2, box, box//2 + 1) complex64 half spectra of B copies: the spline of ``vol`` (from
    :func:`padded_channels_last`, C channels Re/Im pairs) on the slices Rᵀ(kx, ky, 0) at the (K, 2) frequencies ``k``
    (1/Å) placed at ``flat`` in the half plane, times ``transfer`` (K,) and the phase ramp of ``offsets_a`` (B, 2),
    scaled by 1/p² (the inverse DFT then gives V·Å); zero elsewhere."""
    kernel = _compiled()
    nb, nc = rotations.shape[0], vol.shape[3]
    half = box_px // 2 + 1
    full = torch.zeros((nb, nc // 2, box_px * half), dtype=torch.complex64)
    kk = k.detach().to("cpu", torch.float64).contiguous().numpy()
    gain = (np.ones(kk.shape[0]) if transfer is None
            else transfer.detach().to("cpu", torch.float64).reshape(-1).contiguous().numpy())
    kernel(vol, kk, flat.to("cpu", torch.int64).contiguous().numpy(),
           rotations[:, :2, :].detach().to("cpu", torch.float64).contiguous().numpy(),
           offsets_a.detach().to("cpu", torch.float64).contiguous().numpy(), np.ascontiguousarray(gain),
           float(size * pixel_size_a), float(size // 2), 1.0 / (pixel_size_a * pixel_size_a),
           torch.view_as_real(full).numpy())
    return full.view(nb, nc // 2, box_px, half)
