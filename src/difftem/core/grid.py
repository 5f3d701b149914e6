"""The sampling grid shared by every stage."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fft import fftfreq_2d, good_fft_size


@dataclass(frozen=True)
class Grid:
    """A (H, W) = (ny, nx) pixel grid with square pixels of ``pixel_size_a`` Å.

    Pixel [iy, ix] has its centre at x = ix·p, y = iy·p in grid coordinates. The scene origin
    (x = y = 0 in scene coordinates) sits at pixel ``origin_px``, by default [ny // 2, nx // 2];
    a window cut from a larger field keeps the field's scene frame through its own origin_px.
    """

    shape_px: tuple[int, int]
    pixel_size_a: float
    origin_px: tuple[int, int] | None = None

    @property
    def ny(self) -> int:
        return self.shape_px[0]

    @property
    def nx(self) -> int:
        return self.shape_px[1]

    @property
    def origin_a(self) -> tuple[float, float]:
        """Grid coordinates (y, x) in Å of the scene origin."""
        oy, ox = self.origin_px if self.origin_px is not None else (self.ny // 2, self.nx // 2)
        return oy * self.pixel_size_a, ox * self.pixel_size_a

    def window(self, y0: int, x0: int, shape_px: tuple[int, int]) -> Grid:
        """The sub-grid of shape ``shape_px`` whose pixel [0, 0] is this grid's pixel [y0, x0]."""
        oy, ox = self.origin_px if self.origin_px is not None else (self.ny // 2, self.nx // 2)
        return Grid(tuple(shape_px), self.pixel_size_a, (oy - y0, ox - x0))

    @property
    def nyquist_per_a(self) -> float:
        return 0.5 / self.pixel_size_a

    def frequencies(self, device=None, dtype=torch.float32, half=False):
        """(ky, kx) in 1/Å, broadcastable to (H, W) (or the rfft half spectrum)."""
        return fftfreq_2d(self.shape_px, self.pixel_size_a, half=half, device=device, dtype=dtype)

    def k2(self, device=None, dtype=torch.float32, half=False) -> torch.Tensor:
        ky, kx = self.frequencies(device, dtype, half)
        return ky**2 + kx**2


def centred_span(lo_a: float, hi_a: float, pixel_size_a: float, margin_px: int, n: int) -> tuple[int, int] | None:
    """(start, size): pixels [start, start + size) covering [lo_a, hi_a] Å plus ``margin_px`` on each side,
    of a fast FFT size and centred on the content; None if it would not fit inside ``n`` pixels."""
    lo = math.floor(lo_a / pixel_size_a) - margin_px
    hi = math.ceil(hi_a / pixel_size_a) + margin_px
    size = good_fft_size(hi - lo + 1)
    start = lo - (size - (hi - lo + 1)) // 2
    if size >= n or start < 0 or start + size > n:
        return None
    return start, size
