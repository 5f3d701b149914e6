"""Subtomogram extraction and averaging at given centres and poses.

Positions are in Å in the volume's frame (origin at voxel [Z//2, Y//2, X//2], difftem's scene frame) and poses
map the particle's own frame to the volume's (difftem's R, which is RELION's A; see
:func:`difftem.io.relion5.read_particles_star`). A subtomogram is the volume sampled at p + R·q for every point q
of a cubic box in the particle's frame (trilinear), so averaging subtomograms rotates every copy back into one
frame — the missing wedge of each copy lands in a different direction and the average fills it in.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import TomoError


def extract_subtomograms(volume: torch.Tensor, voxel_size_a: float, positions_a, rotations, box_px: int
                         ) -> torch.Tensor:
    """(N, box, box, box) subvolumes (z, y, x in the particle's frame) of a (Z, Y, X) volume."""
    vol = torch.as_tensor(volume)
    if vol.ndim != 3:
        raise TomoError(f"subtomograms: a (Z, Y, X) volume expected, got shape {tuple(vol.shape)}")
    if int(box_px) < 2:
        raise TomoError(f"subtomograms: box of {box_px} voxels is too small")
    dtype = vol.dtype if vol.is_floating_point() else torch.float32
    pos = torch.as_tensor(np.asarray(positions_a, dtype=np.float64), dtype=dtype).reshape(-1, 3)
    rot = torch.as_tensor(np.asarray(rotations, dtype=np.float64), dtype=dtype).reshape(-1, 3, 3)
    if pos.shape[0] != rot.shape[0]:
        raise TomoError(f"subtomograms: {pos.shape[0]} positions but {rot.shape[0]} poses")
    n = int(box_px)
    c = (torch.arange(n, dtype=dtype) - n // 2) * voxel_size_a
    qz, qy, qx = torch.meshgrid(c, c, c, indexing="ij")
    q = torch.stack([qx, qy, qz], dim=-1).reshape(-1, 3)  # (M, 3) x, y, z in the particle frame
    pts = pos[:, None, :] + torch.einsum("nij,mj->nmi", rot, q)  # (N, M, 3) in the volume frame, Å
    zdim, ydim, xdim = vol.shape
    idx = pts / voxel_size_a + torch.tensor([xdim // 2, ydim // 2, zdim // 2], dtype=dtype)  # voxel indices
    sizes = torch.tensor([xdim, ydim, zdim], dtype=dtype)
    grid = 2.0 * idx / (sizes - 1).clamp(min=1) - 1.0  # align_corners=True
    grid = grid.reshape(1, -1, n, n * n, 3)
    out = F.grid_sample(vol.to(dtype)[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(-1, n, n, n)


def average_subtomograms(volume: torch.Tensor, voxel_size_a: float, positions_a, rotations, box_px: int
                         ) -> torch.Tensor:
    """The mean of :func:`extract_subtomograms` (a (box, box, box) map in the particle's frame)."""
    return extract_subtomograms(volume, voxel_size_a, positions_a, rotations, box_px).mean(dim=0)


def lowpass_correlation(a: torch.Tensor, b: torch.Tensor, voxel_size_a: float, resolution_a: float) -> float:
    """Correlation of two maps over the Fourier coefficients with 0 < |k| ≤ 1/resolution (Å⁻¹)."""
    from ..core import fft as dfft

    fa, fb = dfft.fft3(torch.as_tensor(a, dtype=torch.float64)), dfft.fft3(torch.as_tensor(b, dtype=torch.float64))
    k2 = dfft.k2_per_a2(tuple(a.shape), voxel_size_a)
    band = (k2 > 0) & (k2 <= 1.0 / resolution_a**2)
    num = (fa[band] * fb[band].conj()).real.sum()
    den = torch.sqrt((fa[band].abs() ** 2).sum() * (fb[band].abs() ** 2).sum())
    return float(num / den) if float(den) > 0 else 0.0
