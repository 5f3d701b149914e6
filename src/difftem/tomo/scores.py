"""Volume scores: Fourier shell correlation (with 0.143 / 0.5 resolutions) and normalised cross-correlation.

Both are plain torch functions of two volumes of the same shape (differentiable). The FSC uses the
real-to-complex spectrum (Hermitian pairs counted twice, so sums equal full-spectrum sums); shells
are 1/(N_max·v) wide, N_max the longest edge, out to Nyquist 1/(2v). A resolution is where the curve
first falls below the threshold after the zero shell, interpolated linearly between shells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import fft as dfft
from ..io.files import atomic_path
from .errors import TomoError


@dataclass
class FSCResult:
    frequency_per_a: np.ndarray  # shell centres (1/Å)
    curve: np.ndarray  # FSC per shell
    n_voxels: np.ndarray  # Fourier voxels per shell (full spectrum)
    resolution_0143_a: float | None  # None: never below 0.143 up to Nyquist
    resolution_05_a: float | None
    voxel_size_a: float

    @property
    def resolutions_a(self) -> dict:
        return {"0.143": self.resolution_0143_a, "0.5": self.resolution_05_a}

    def as_dict(self) -> dict:
        return {"voxel_size_a": self.voxel_size_a, "frequency_per_a": self.frequency_per_a.tolist(),
                "fsc": self.curve.tolist(), "n_voxels": self.n_voxels.tolist(),
                "resolution_0143_a": self.resolution_0143_a, "resolution_05_a": self.resolution_05_a,
                "nyquist_a": 2 * self.voxel_size_a}


def _check_pair(vol_a, vol_b) -> tuple[torch.Tensor, torch.Tensor]:
    a = vol_a if torch.is_tensor(vol_a) else torch.as_tensor(np.asarray(vol_a))
    b = vol_b if torch.is_tensor(vol_b) else torch.as_tensor(np.asarray(vol_b))
    if a.ndim != 3 or b.ndim != 3:
        raise TomoError(f"volumes: expected two 3-D volumes (Z, Y, X), got shapes {tuple(a.shape)} and "
                        f"{tuple(b.shape)}")
    if a.shape != b.shape:
        raise TomoError(f"volumes: shapes {tuple(a.shape)} and {tuple(b.shape)} differ; resample or crop one to the "
                        f"other's grid first")
    if not a.is_floating_point():
        a = a.float()
    if not b.is_floating_point():
        b = b.float()
    return a, b.to(device=a.device, dtype=a.dtype)


def ncc(vol_a, vol_b, mask=None) -> torch.Tensor:
    """Normalised cross-correlation (Pearson) of two volumes/images of one shape, optionally within ``mask``."""
    a = vol_a if torch.is_tensor(vol_a) else torch.as_tensor(np.asarray(vol_a), dtype=torch.float64)
    b = vol_b if torch.is_tensor(vol_b) else torch.as_tensor(np.asarray(vol_b), dtype=torch.float64)
    if a.shape != b.shape:
        raise TomoError(f"ncc: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    b = b.to(device=a.device, dtype=a.dtype)
    if mask is not None:
        m = torch.as_tensor(mask, device=a.device).to(torch.bool).expand_as(a)
        a, b = a[m], b[m]
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp(min=torch.finfo(a.dtype).tiny)


def spectrum_3d(vol: torch.Tensor) -> torch.Tensor:
    """Unnormalised 3-D DFT of (Z, Y, X), half spectrum along X: (Z, Y, X//2+1), via the difftem.fft helpers."""
    half = dfft.rfft2(vol)  # (Z, Y, Xh): transform over y and x
    cols = half.permute(1, 2, 0).unsqueeze(-1)  # (Y, Xh, Z, 1): a 2-D transform over (Z, 1) is 1-D along z
    return dfft.fft2(cols)[..., 0].permute(2, 0, 1)


def _crossing(freq: np.ndarray, curve: np.ndarray, threshold: float) -> float | None:
    below = np.nonzero(curve[1:] < threshold)[0]
    if below.size == 0:
        return None
    i = int(below[0]) + 1
    f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
    f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 != c1 else f1
    return float(1.0 / f) if f > 0 else None


def fsc(vol_a, vol_b, voxel_size_a: float, *, mask=None) -> FSCResult:
    """Fourier shell correlation of two volumes (Z, Y, X) with isotropic voxels of ``voxel_size_a`` Å."""
    if not voxel_size_a or voxel_size_a <= 0:
        raise TomoError(f"fsc: voxel size {voxel_size_a} Å must be > 0")
    a, b = _check_pair(vol_a, vol_b)
    if mask is not None:
        m = torch.as_tensor(mask, device=a.device, dtype=a.dtype)
        a, b = a * m, b * m
    shape = a.shape
    with torch.no_grad():
        fa, fb = spectrum_3d(a.detach().to(torch.float64)), spectrum_3d(b.detach().to(torch.float64))
        radius_px = dfft.radial_freq_per_px(tuple(shape), half=True, device=a.device)  # cycles/voxel
        n_max = max(shape)
        shell = torch.round(radius_px * n_max).long()
        n_shells = n_max // 2 + 1
        # conjugate pairs: columns 0 < kx < Nyquist stand for two Fourier voxels
        weight = torch.full((shape[2] // 2 + 1,), 2.0, dtype=torch.float64, device=a.device)
        weight[0] = 1.0
        if shape[2] % 2 == 0:
            weight[-1] = 1.0
        weight = weight.expand_as(radius_px)
        inside = shell < n_shells
        idx, w = shell[inside], weight[inside]

        def shell_sum(v):
            return torch.zeros(n_shells, dtype=torch.float64, device=a.device).index_add_(0, idx, v[inside] * w)

        cross = shell_sum((fa * fb.conj()).real)
        pa, pb = shell_sum(fa.abs() ** 2), shell_sum(fb.abs() ** 2)
        count = shell_sum(torch.ones_like(radius_px))
        curve = (cross / torch.sqrt(pa * pb).clamp(min=1e-300)).cpu().numpy()
    freq = np.arange(n_shells) / (n_max * voxel_size_a)
    return FSCResult(freq, curve, count.cpu().numpy().round().astype(np.int64), _crossing(freq, curve, 0.143),
                     _crossing(freq, curve, 0.5), float(voxel_size_a))


def plot_fsc(path: str | Path, curves: dict[str, FSCResult], title: str = "") -> Path:
    """PNG of one or more FSC curves with the 0.143 and 0.5 thresholds and the resolutions in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for label, res in curves.items():
        beyond = f"Nyquist {2 * res.voxel_size_a:.1f} Å not crossed"
        r143 = f"{res.resolution_0143_a:.1f} Å" if res.resolution_0143_a else beyond
        r05 = f"{res.resolution_05_a:.1f} Å" if res.resolution_05_a else beyond
        ax.plot(res.frequency_per_a, res.curve, lw=1.5, label=f"{label}: {r143} (0.143), {r05} (0.5)")
    for thr, style in ((0.143, ":"), (0.5, "--")):
        ax.axhline(thr, color="grey", ls=style, lw=1)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("Fourier shell correlation")
    ax.set_ylim(-0.2, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
