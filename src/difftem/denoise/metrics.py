"""Image-quality metrics of the seed paper's denoising study: SSIM, PSNR, MSE and focal frequency loss.

SSIM and PSNR come from torchmetrics (Gaussian window σ = 1.5, 11 px, the scikit-image/Wang et al.
setting; ``data_range`` always passed), FFL from :func:`difftem.learn.losses.focal_frequency_loss`
(α = 1, as the paper). Images are first put on a common scale (``normalise``):

``"reference"`` (default against ground truth)
    Both images go through the affine map that sends the reference's [min, max] to [0, 1]. The
    metrics then equal PSNR/MSE in counts with ``data_range`` = the reference's range, are
    comparable across doses, and do not reward an estimate for rescaling itself.
``"minmax"`` (the paper's evaluation; the default for pairwise tables of real images)
    Each image is min-max normalised on its own, so images in different units can be compared.
``None``
    Raw values, ``data_range`` = the reference's range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..core.errors import ConfigError
from ..learn.losses import focal_frequency_loss, minmax_normalise

NORMALISATIONS = ("reference", "minmax", None)
METRICS = ("ssim", "psnr", "mse", "ffl")


def _pair(estimate, reference, normalise) -> tuple[torch.Tensor, torch.Tensor, float]:
    x = torch.as_tensor(estimate).to(torch.float64)
    r = torch.as_tensor(reference).to(torch.float64)
    if x.shape != r.shape or x.ndim < 2:
        raise ConfigError(f"metrics: estimate {tuple(x.shape)} and reference {tuple(r.shape)} must be images "
                          "of the same (…, H, W) shape")
    if normalise == "reference":
        lo, hi = r.amin(dim=(-2, -1), keepdim=True), r.amax(dim=(-2, -1), keepdim=True)
        span = (hi - lo).clamp_min(1e-30)
        return (x - lo) / span, (r - lo) / span, 1.0
    if normalise == "minmax":
        return minmax_normalise(x), minmax_normalise(r), 1.0
    if normalise is None:
        return x, r, float((r.max() - r.min()).clamp_min(1e-30))
    raise ConfigError(f"metrics: normalise must be one of {NORMALISATIONS}, got {normalise!r}")


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 1, *x.shape[-2:])


def ssim(estimate, reference, normalise: str | None = "reference") -> float:
    """Structural similarity (Gaussian window σ = 1.5 px, 11 px), mean over the image (and batch)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, r, data_range = _pair(estimate, reference, normalise)
    return float(structural_similarity_index_measure(_nchw(x), _nchw(r), gaussian_kernel=True, sigma=1.5,
                                                     kernel_size=11, data_range=data_range))


def mse(estimate, reference, normalise: str | None = "reference") -> float:
    """Mean squared error after ``normalise``."""
    x, r, _ = _pair(estimate, reference, normalise)
    return float(((x - r) ** 2).mean())


def psnr(estimate, reference, normalise: str | None = "reference") -> float:
    """Peak signal-to-noise ratio (dB) with ``data_range`` 1 after normalisation; inf for identical images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, r, data_range = _pair(estimate, reference, normalise)
    if float(((x - r) ** 2).mean()) == 0.0:
        return math.inf
    return float(peak_signal_noise_ratio(_nchw(x), _nchw(r), data_range=data_range))


def ffl(estimate, reference, normalise: str | None = "reference", alpha: float = 1.0) -> float:
    """Focal frequency loss (α = 1) after ``normalise`` (lower is better)."""
    x, r, _ = _pair(estimate, reference, normalise)
    return float(focal_frequency_loss(x, r, alpha=alpha))


def compare(estimate, reference, normalise: str | None = "reference") -> dict[str, float]:
    """All four metrics of ``estimate`` against ``reference``."""
    return {"ssim": ssim(estimate, reference, normalise), "psnr": psnr(estimate, reference, normalise),
            "mse": mse(estimate, reference, normalise), "ffl": ffl(estimate, reference, normalise)}


def pairwise_table(images: Mapping[str, torch.Tensor], normalise: str | None = "minmax") -> dict:
    """The seed paper's Table 4: every metric for every ordered pair of named images.

    Returns ``{"names": [...], "ssim": [[...]], "psnr": ..., "mse": ..., "ffl": ...}``; row i, column j
    scores image i against image j as the reference (PSNR on the diagonal is inf).
    """
    names = list(images)
    table: dict = {"names": names, "normalise": normalise}
    for metric in METRICS:
        table[metric] = [[None] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            values = compare(images[a], images[b], normalise)
            for metric in METRICS:
                table[metric][i][j] = values[metric]
    return table


def format_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.4g}") -> str:
    """Plain-text table of dicts (for benchmark printouts)."""
    cells = [[str(c) for c in columns]]
    for row in rows:
        cells.append([floatfmt.format(row[c]) if isinstance(row.get(c), float) else str(row.get(c, ""))
                      for c in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells)
