"""Preview figures: images side by side, each on its own axes in physical units, with a scale bar and a title."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import atomic_path


def length_unit(extent_a: float) -> tuple[str, float]:
    """(unit, Å per unit) for axes spanning ``extent_a`` Å: nm from 20 nm up, else Å."""
    return ("nm", 10.0) if extent_a >= 200 else ("Å", 1.0)


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above ``target`` (> 0)."""
    base = 10.0 ** math.floor(math.log10(target))
    return max(m * base for m in (1, 2, 5) if m * base <= target)


def _add_scale_bar(ax, width_units: float, unit: str) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = nice_length(width_units / 5)
    bar = AnchoredSizeBar(ax.transData, length, f"{length:g} {unit}", "lower left", pad=0.3, borderpad=0.5,
                          sep=3, color="white", frameon=True, size_vertical=width_units / 100, label_top=True,
                          fontproperties={"size": 8})
    bar.patch.set_facecolor("black")
    bar.patch.set_edgecolor("none")
    bar.patch.set_alpha(0.5)
    ax.add_artist(bar)


def write_panels_png(path: str | Path, panels: Sequence[tuple[np.ndarray, str]], pixel_size_a: float,
                     suptitle: str = "", ncols: int | None = None, panel_inches: float = 4.0) -> Path:
    """One grey-scale panel per (image, title): axes in nm or Å, a scale bar, contrast clipped to the 0.5–99.5
    percentiles of each image, and ``suptitle`` over the figure. Written atomically as PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend to load, no global figure state

    if not panels:
        raise ValueError("write_panels_png: no panels")
    n = len(panels)
    ncols = min(n, ncols or n)
    nrows = math.ceil(n / ncols)
    h, w = np.asarray(panels[0][0]).shape[-2:]
    unit, per_unit = length_unit(max(h, w) * pixel_size_a)
    fig = Figure(dpi=100, figsize=(panel_inches * ncols, panel_inches * nrows * h / w + (0.6 if suptitle else 0.3)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (image, title) in zip(axes.flat, panels, strict=False):
        image = np.asarray(image, dtype=np.float64)
        ih, iw = image.shape
        extent = (0, iw * pixel_size_a / per_unit, ih * pixel_size_a / per_unit, 0)
        lo, hi = np.percentile(image, [0.5, 99.5]) if np.isfinite(image).any() else (0.0, 1.0)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, extent=extent, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"x ({unit})", fontsize=8)
        ax.set_ylabel(f"y ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        _add_scale_bar(ax, extent[1], unit)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
