"""Tilt geometry of difftem (see the project's geometry conventions) and in-plane resampling.

A specimen point r = (x, y, z) (Å, origin at the field centre / ice mid-plane) is rotated actively,
right-handed, by the tilt θ about u = (−sin α, cos α, 0) — the +y axis turned by the tilt-axis angle α
about +z — and projected along z. Because that rotation is Rz(α) Ry(θ) Rz(−α) and projection along z
commutes with Rz, a stack rotated in-plane by −α is the α = 0 problem of a volume rotated by −α:
each image row (constant y) then sees an independent x–z slice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import rotations


def tilt_rotation(angle_deg: float, tilt_axis_deg: float = 0.0, *, dtype=torch.float64) -> torch.Tensor:
    """:func:`difftem.core.rotations.tilt_rotation` as a 3×3 tensor."""
    return torch.as_tensor(rotations.tilt_rotation(angle_deg, tilt_axis_deg), dtype=dtype)


def project_points(xyz_a: torch.Tensor, angles_deg, tilt_axis_deg: float = 0.0) -> torch.Tensor:
    """Image coordinates (x', y') in Å of points ``xyz_a`` (..., 3) at each tilt: (n_tilts, ..., 2)."""
    xyz = torch.as_tensor(xyz_a, dtype=torch.float64)
    rots = torch.stack([tilt_rotation(float(t), tilt_axis_deg) for t in angles_deg])  # (T, 3, 3)
    moved = torch.einsum("tij,...j->t...i", rots, xyz)
    return moved[..., :2]


def pixel_coordinate_px(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centre of each pixel/voxel along an axis of length ``n``, in pixels from the origin index n//2."""
    return torch.arange(n, device=device, dtype=dtype) - (n // 2)


def _normalised(coord_px: torch.Tensor, n: int) -> torch.Tensor:
    """Pixel offsets from index n//2 → grid_sample coordinates (align_corners=True: ±1 at the end centres)."""
    return 2.0 * (coord_px + (n // 2)) / max(n - 1, 1) - 1.0


def covering_shape(shape_yx: tuple[int, int], angle_deg: float) -> tuple[int, int]:
    """(H, W) of a grid, centred like ``shape_yx``, that holds a ``shape_yx`` field turned by ``angle_deg``."""
    h, w = shape_yx
    c, s = abs(math.cos(math.radians(angle_deg))), abs(math.sin(math.radians(angle_deg)))
    # +2: the rotated corners must stay inside the grid's outermost pixel centres
    return int(math.ceil(s * w + c * h - 1e-6)) + 2, int(math.ceil(c * w + s * h - 1e-6)) + 2


def rotate_inplane(images: torch.Tensor, angle_deg: float, out_shape: tuple[int, int], *,
                   padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``images`` (..., H, W) on an (h, w) grid at q ↦ Rz(angle)·q: out(q) = in(Rz(angle) q).

    Both grids have their origin at pixel [n//2, n//2] and the same pixel size; bilinear and
    differentiable (an exact copy for angle 0 and the same shape).
    """
    h_in, w_in = images.shape[-2:]
    if angle_deg == 0.0 and tuple(out_shape) == (h_in, w_in):
        return images
    lead = images.shape[:-2]
    dtype, device = images.dtype, images.device
    a = math.radians(angle_deg)
    qy = pixel_coordinate_px(out_shape[0], device=device, dtype=dtype)[:, None]
    qx = pixel_coordinate_px(out_shape[1], device=device, dtype=dtype)[None, :]
    src_x = math.cos(a) * qx - math.sin(a) * qy
    src_y = math.sin(a) * qx + math.cos(a) * qy
    grid = torch.stack([_normalised(src_x, w_in), _normalised(src_y, h_in)], dim=-1)[None]
    flat = images.reshape(1, -1, h_in, w_in)  # one grid for every channel
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out.reshape(*lead, *out_shape)


def angular_weights_rad(angles_deg: torch.Tensor) -> torch.Tensor:
    """Angular interval each tilt stands for (rad): half the gap to each neighbour, one-sided at the ends."""
    theta = torch.deg2rad(angles_deg.to(torch.float64))
    n = theta.numel()
    if n == 1:
        return torch.full((1,), math.pi, dtype=torch.float64)
    order = torch.argsort(theta)
    s = theta[order]
    gaps = s[1:] - s[:-1]
    w = torch.empty_like(s)
    w[1:-1] = 0.5 * (gaps[1:] + gaps[:-1])
    w[0], w[-1] = gaps[0], gaps[-1]
    out = torch.empty_like(w)
    out[order] = w
    return out


def turned_frame(volume_yx: tuple[int, int], image_yx: tuple[int, int], tilt_axis_deg: float):
    """Grids of the turned (α = 0) problem: (rows, volume width) holding the volume, and the detector width
    holding the images."""
    if tilt_axis_deg == 0.0:
        return volume_yx, max(volume_yx[1], image_yx[1])
    vol = covering_shape(volume_yx, tilt_axis_deg)
    return vol, max(vol[1], covering_shape(image_yx, tilt_axis_deg)[1])
