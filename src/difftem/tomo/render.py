"""Headless direct volume rendering: emission–absorption ray casting with a threshold/opacity transfer function.

The volume (Z, Y, X) is resampled (trilinear, ``grid_sample``) on a cube of ``size_px``³ samples that
holds the whole volume for any view, turned by the view rotation, and composited front to back along
the viewing axis. The view: the volume is turned actively by ``azimuth_deg`` about its y axis (the same
sense as a tilt with α = 0), then by ``elevation_deg`` about x, and looked at along +z (the beam
direction) — azimuth = elevation = 0 shows the x–y plane as a projection image shows it (rows = y).

Transfer function: values are mapped to t = clamp((v − threshold) / (top − threshold), 0, 1), ``top``
the 99.9th percentile (default threshold: the 90th percentile, since protein occupies a small
fraction of a tomogram and its potential is positive; reconstructions of under-focused images show
protein dark: pass ``invert=True``). Extinction per voxel length is −ln(1 − opacity)·t, colour
colormap(t); the background is black. ``mode="mip"`` gives a maximum-intensity projection instead.
Everything is torch (CPU/CUDA) and differentiable in the volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.files import atomic_path
from .errors import TomoError

MODES = ("ea", "mip")


@dataclass
class TransferFunction:
    threshold: float  # values at or below are transparent
    top: float  # values at or above get full opacity and the top colour
    opacity: float  # alpha of one voxel length at the top of the range
    colormap: str = "inferno"


def check_volume(volume) -> torch.Tensor:
    v = volume if torch.is_tensor(volume) else torch.as_tensor(np.asarray(volume))
    if v.ndim != 3:
        raise TomoError(f"volume: expected a 3-D volume (Z, Y, X), got shape {tuple(v.shape)}")
    if min(v.shape) < 2:
        raise TomoError(f"volume: every edge must be at least 2 voxels, got shape {tuple(v.shape)}")
    if not v.is_floating_point():
        v = v.float()
    if not torch.isfinite(v).all():
        raise TomoError("volume: contains nan/inf values")
    return v


def percentiles(volume: torch.Tensor, qs) -> list[float]:
    """Percentiles of a (strided) subsample of at most 4 M voxels (torch.quantile's size limit)."""
    flat = volume.detach().reshape(-1)
    step = max(1, flat.numel() // 4_000_000)
    sample = flat[::step].to(torch.float64)
    return [float(v) for v in torch.quantile(sample, torch.tensor([q / 100 for q in qs], dtype=torch.float64,
                                                                  device=sample.device))]


def default_transfer(volume: torch.Tensor, *, threshold: float | None = None, threshold_percentile: float = 90.0,
                     top_percentile: float = 99.9, opacity: float = 0.1, colormap: str = "inferno") -> TransferFunction:
    if not 0 <= threshold_percentile < 100 or not 0 < top_percentile <= 100:
        raise TomoError("threshold percentile must be in [0, 100) and the top percentile in (0, 100]")
    if not 0 < opacity < 1:
        raise TomoError(f"opacity: {opacity} must lie in (0, 1) (alpha of one voxel length at full density)")
    thr_p, top = percentiles(volume, [threshold_percentile, top_percentile])
    thr = float(threshold) if threshold is not None else thr_p
    if top <= thr:
        top = float(volume.max())
    if top <= thr:
        top = thr + 1.0  # nothing above the threshold: render transparent, not fail
    return TransferFunction(thr, top, float(opacity), colormap)


def colormap_lut(name: str, n: int = 256) -> torch.Tensor:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise TomoError(f"colormap: unknown matplotlib colormap {name!r} (e.g. inferno, viridis, gray)") from None
    return torch.as_tensor(cmap(np.linspace(0, 1, n))[:, :3], dtype=torch.float32)


def _lookup(t: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Linear interpolation in an (n, 3) table at t ∈ [0, 1]: (..., 3)."""
    pos = t.clamp(0, 1) * (lut.shape[0] - 1)
    i0 = pos.detach().floor().long().clamp(max=lut.shape[0] - 2)
    frac = (pos - i0)[..., None]
    return lut[i0] * (1 - frac) + lut[i0 + 1] * frac


def view_rotation(azimuth_deg: float, elevation_deg: float, *, dtype=torch.float64) -> torch.Tensor:
    """R = Rx(elevation) · Ry(azimuth), both active and right-handed."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=dtype)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]], dtype=dtype)
    return rx @ ry


def render_volume(volume, *, azimuth_deg: float = 30.0, elevation_deg: float = 20.0, size_px: int = 256,
                  threshold: float | None = None, threshold_percentile: float = 90.0, top_percentile: float = 99.9,
                  opacity: float = 0.1, colormap: str = "inferno", invert: bool = False, mode: str = "ea",
                  depth_chunk: int = 32, transfer: TransferFunction | None = None) -> torch.Tensor:
    """RGB image (size_px, size_px, 3) in [0, 1] of ``volume`` (Z, Y, X) seen from the given view.

    The render cube's edge is the volume's diagonal, so the whole volume is in view for any angle;
    each render pixel is diagonal/size_px voxels wide. Memory is bounded by compositing
    ``depth_chunk`` depth planes at a time (front to back).
    """
    if mode not in MODES:
        raise TomoError(f"mode: unknown render mode {mode!r}; choose from {list(MODES)}")
    if int(size_px) < 8:
        raise TomoError(f"size: {size_px} px is too small (at least 8)")
    vol = check_volume(volume)
    vol = -vol if invert else vol
    tf = transfer or default_transfer(vol, threshold=threshold, threshold_percentile=threshold_percentile,
                                      top_percentile=top_percentile, opacity=opacity, colormap=colormap)
    device, dtype = vol.device, vol.dtype if vol.dtype in (torch.float32, torch.float64) else torch.float32
    t_vol = ((vol.to(dtype) - tf.threshold) / (tf.top - tf.threshold)).clamp(0, 1)  # 0 outside: padding = empty
    n_z, n_y, n_x = vol.shape
    n = int(size_px)
    diag_vox = math.sqrt(n_x**2 + n_y**2 + n_z**2)
    step_vox = diag_vox / n  # voxel lengths per render sample (also the ray step)
    c = (torch.arange(n, device=device, dtype=torch.float64) - (n - 1) / 2) * step_vox
    rot = view_rotation(azimuth_deg, elevation_deg).to(device)
    sigma_max = -math.log(1.0 - tf.opacity)
    lut = colormap_lut(tf.colormap).to(device=device, dtype=dtype)
    colour = torch.zeros((n, n, 3), device=device, dtype=dtype)
    trans = torch.ones((n, n), device=device, dtype=dtype)
    best = torch.zeros((n, n), device=device, dtype=dtype)
    scale = torch.tensor([2.0 / max(n_x - 1, 1), 2.0 / max(n_y - 1, 1), 2.0 / max(n_z - 1, 1)],
                         device=device, dtype=torch.float64)
    offset = torch.tensor([n_x // 2, n_y // 2, n_z // 2], device=device, dtype=torch.float64)
    for k0 in range(0, n, int(depth_chunk)):
        d = c[k0:k0 + int(depth_chunk)]
        xyz = _view_points(c, d) @ rot  # row vectors: r = Rᵀ q (view frame → volume frame), (D, n, n, 3)
        grid = ((xyz + offset) * scale - 1.0).to(dtype)
        samples = F.grid_sample(t_vol[None, None], grid[None], mode="bilinear", padding_mode="zeros",
                                align_corners=True)[0, 0]  # (D, n, n)
        if mode == "mip":
            best = torch.maximum(best, samples.amax(0))
            continue
        alpha = 1.0 - torch.exp(-sigma_max * samples * step_vox)
        before = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1.0 - alpha[:-1]]), 0)  # within chunk
        weight = trans[None] * before * alpha  # (D, n, n)
        colour = colour + (weight[..., None] * _lookup(samples, lut)).sum(0)
        trans = trans * torch.prod(1.0 - alpha, 0)
    if mode == "mip":
        return _lookup(best, lut)
    return colour.clamp(0, 1)


def _view_points(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(D, n, n, 3) view-frame points (x, y, z): image column → x, row → y, depth → z."""
    z, y, x = torch.meshgrid(d, c, c, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def orthoslices(volume: torch.Tensor) -> dict[str, np.ndarray]:
    """Central sections: XY at z = Z//2, XZ at y = Y//2 (rows z), YZ at x = X//2 (rows z)."""
    v = volume.detach().float().cpu()
    n_z, n_y, n_x = v.shape
    return {"XY": v[n_z // 2].numpy(), "XZ": v[:, n_y // 2, :].numpy(), "YZ": v[:, :, n_x // 2].numpy()}


def _png_bytes_rgb(image: np.ndarray, path: Path) -> Path:
    from PIL import Image


    arr = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr, mode="RGB").save(tmp, format="PNG")
    return Path(path)


def write_render_png(path: str | Path, image: torch.Tensor) -> Path:
    """The render alone, one PNG pixel per render pixel."""
    return _png_bytes_rgb(image.detach().cpu().numpy(), Path(path))


def write_panel_png(path: str | Path, volume: torch.Tensor, image: torch.Tensor, voxel_size_a: float | None,
                    title: str = "", *, invert: bool = False, figure_px: tuple[int, int] = (800, 1200)) -> Path:
    """Panel PNG of exactly ``figure_px`` = (height, width) pixels: render + XY/XZ/YZ central orthoslices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    dpi = 100
    fig = plt.figure(figsize=(figure_px[1] / dpi, figure_px[0] / dpi), dpi=dpi)
    grid = fig.add_gridspec(2, 3, width_ratios=[1.3, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image.detach().cpu().numpy().clip(0, 1))
    ax.set_title("volume rendering", fontsize=9)
    ax.axis("off")
    slices = orthoslices(-volume if invert else volume)
    lo, hi = np.percentile(np.concatenate([s.ravel() for s in slices.values()]), [0.5, 99.5])
    hi = hi if hi > lo else lo + 1
    v = voxel_size_a or 1.0
    unit = "Å" if voxel_size_a else "voxels"
    n_z, n_y, n_x = volume.shape
    extents = {"XY": (-(n_x // 2) * v, (n_x - 1 - n_x // 2) * v, (n_y - 1 - n_y // 2) * v, -(n_y // 2) * v),
               "XZ": (-(n_x // 2) * v, (n_x - 1 - n_x // 2) * v, (n_z - 1 - n_z // 2) * v, -(n_z // 2) * v),
               "YZ": (-(n_y // 2) * v, (n_y - 1 - n_y // 2) * v, (n_z - 1 - n_z // 2) * v, -(n_z // 2) * v)}
    labels = {"XY": ("x", "y", "z = 0"), "XZ": ("x", "z", "y = 0"), "YZ": ("y", "z", "x = 0")}
    for (name, sl), cell in zip(slices.items(), (grid[0, 1:], grid[1, 1], grid[1, 2]), strict=True):
        a = fig.add_subplot(cell)
        a.imshow(sl, cmap="gray", vmin=lo, vmax=hi, extent=extents[name], aspect="equal")
        h, vv, where = labels[name]
        a.set_title(f"{name} section at {where}", fontsize=9)
        a.set_xlabel(f"{h} ({unit})", fontsize=8)
        a.set_ylabel(f"{vv} ({unit})", fontsize=8)
        a.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def turntable_frames(volume, n_frames: int, **kwargs) -> list[torch.Tensor]:
    """``n_frames`` renders with the azimuth stepping once round (360°/n_frames apart)."""
    if int(n_frames) < 2:
        raise TomoError(f"turntable: {n_frames} frames; give at least 2")
    start = kwargs.pop("azimuth_deg", 0.0)
    vol = check_volume(volume)
    invert = kwargs.pop("invert", False)
    vol = -vol if invert else vol
    tf = kwargs.pop("transfer", None) or default_transfer(
        vol, threshold=kwargs.pop("threshold", None), threshold_percentile=kwargs.pop("threshold_percentile", 90.0),
        top_percentile=kwargs.pop("top_percentile", 99.9), opacity=kwargs.pop("opacity", 0.1),
        colormap=kwargs.pop("colormap", "inferno"))
    for k in ("threshold", "threshold_percentile", "top_percentile", "opacity", "colormap"):
        kwargs.pop(k, None)
    return [render_volume(vol, azimuth_deg=start + 360.0 * i / int(n_frames), transfer=tf, **kwargs)
            for i in range(int(n_frames))]


def write_gif(path: str | Path, frames: list[torch.Tensor], duration_ms: int = 80) -> Path:
    from PIL import Image


    images = [Image.fromarray((np.clip(f.detach().cpu().numpy(), 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")
              for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return Path(path)
