"""Image losses used to fit detector parameters."""

from __future__ import annotations

import torch

from ..core.fft import fft2


def focal_frequency_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Focal frequency loss (Jiang et al., ICCV 2021) of (..., H, W) images.

    Spectra use the orthonormal 2-D DFT; each frequency's squared distance |F_p − F_t|² is weighted by
    |F_p − F_t|^α normalised to [0, 1] per image (the weight is not differentiated), and the weighted
    distances are averaged. α = 0 gives a plain spectral MSE.
    """
    scale = (pred.shape[-1] * pred.shape[-2]) ** -0.5
    fp = fft2(pred.to(torch.complex64 if pred.dtype == torch.float32 else torch.complex128)) * scale
    ft = fft2(target.to(fp.dtype)) * scale
    dist = (fp - ft).abs() ** 2
    with torch.no_grad():
        w = dist.sqrt() ** alpha
        w = w / w.flatten(-2).amax(-1).clamp_min(1e-12)[..., None, None]
        w = torch.nan_to_num(w).clamp(0, 1)
    return (w * dist).mean()


def minmax_normalise(x: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) image to [0, 1] (the seed paper's normalisation of crops)."""
    lo = x.flatten(-2).amin(-1)[..., None, None]
    hi = x.flatten(-2).amax(-1)[..., None, None]
    return (x - lo) / (hi - lo).clamp_min(1e-12)
