"""Vesicles in the multislice: each chunk's projected potential of the bilayers along the view's rays.

A view turns the specimen by R: a vesicle centred at c (specimen frame) sits at R c, and the beam runs along the
view's z. Chunk [z0, z1) of the view's slicing (the same depths the atoms are sliced at) receives, per pixel (x, y),

    P(x, y) = ∫_{z0}^{z1} ΔV(√(d² + (z − c_z)²) − R) dz,    d² = (x − c_x)² + (y − c_y)²

(V·Å), a sphere's projection whatever the tilt. Only the parts of the ray within the shell |r − R| ≤ W (W the
profile's half extent) are integrated: per pixel two intervals in z (entering and leaving the shell) cut to the
chunk, each split into sub-intervals of at most ``step_a`` (default 2σ, σ the narrowest feature) with
two-point Gauss–Legendre nodes in each (exact for cubics; against a fine 3-D integration of the profile the
projection agrees to 1e-4, tests/test_membranes.py). Pixels whose ray misses the shell within the chunk are not
touched. Pixels larger than the profile's features would alias its lines: the profile is first widened by a Gaussian
of σ = p/√12 (a pixel's box, its variance), which is what the area average over a pixel does to a line.

The field is complex: ΔV (1 + i·absorption ratio), the atoms' ratio, so lipids absorb as the atoms and the ice do
(the core, less dense than water, absorbs less than the ice it displaces).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.grid import Grid
from ..specimen.membranes import Bilayer, Vesicles

GAUSS2 = 0.5 / math.sqrt(3.0)  # two-point Gauss–Legendre nodes on a unit sub-interval, about its middle
TABLE_STEP_A = 0.01  # the tabulated profile's spacing (Å)
BLOCK = 1 << 16  # pixels per vectorised block (bounds memory: BLOCK × nodes × 8 bytes per array)


def pixel_blur_a(pixel_size_a: float) -> float:
    """σ (Å) of a pixel's box (p/√12): the widening that area averaging gives a line."""
    return pixel_size_a / math.sqrt(12.0)


def lipid_field(real: torch.Tensor | None, absorption_ratio: float, cdtype=torch.complex64) -> torch.Tensor | None:
    """A bilayer's projected ΔV (V·Å) as the complex field ΔV·(1 + i ratio): lipids absorb as the atoms do."""
    if real is None:
        return None
    real = real.to(cdtype.to_real())
    return torch.complex(real, absorption_ratio * real)


class ViewVesicles:
    """The vesicles of one view: centres turned into the view frame, the profile widened for the pixel."""

    def __init__(self, vesicles: Vesicles, rotation, pixel_size_a: float, absorption_ratio: float, *,
                 device=None, step_a: float | None = None, blur: bool = True):
        self.vesicles, self.absorption_ratio = vesicles, absorption_ratio
        self.device = torch.device(device or "cpu")
        self.centres_a = vesicles.centres_a @ np.asarray(rotation, dtype=np.float64).T  # view frame
        self.bilayer: Bilayer = vesicles.bilayer.blurred(pixel_blur_a(pixel_size_a) if blur else 0.0)
        self.step_a = step_a or 2 * self.bilayer.finest_sigma_a  # a Gauss pair per 2σ of path: 1e-4 (tests)
        self.outer_a = vesicles.radii_a + self.bilayer.half_extent_a
        # ΔV tabulated finely (linear interpolation error ≈ du²/8 · ΔV'' ≈ 1e-5 of the peaks): a gather and a lerp
        # per node instead of five transcendental functions
        w = self.bilayer.half_extent_a
        n = int(math.ceil(2 * w / TABLE_STEP_A)) + 1
        u = torch.linspace(-w, w, n, dtype=torch.float64)
        table = self.bilayer.potential_v(u)
        self._table = torch.cat([table, table.new_zeros(2)]).to(torch.float32).to(self.device)  # zeros beyond W
        self._du = 2 * w / (n - 1)
        self._n_table = n
        self._grid_key, self._cache = None, {}

    def _profile(self, u_a: torch.Tensor) -> torch.Tensor:
        """ΔV (V, float32) at ``u_a`` from the table; zero beyond the profile's extent."""
        x = (u_a + self.bilayer.half_extent_a) / self._du
        outside = (x < 0) | (x > self._n_table - 1)
        x = torch.where(outside, torch.full_like(x, self._n_table), x)  # the zero padding
        i = x.floor().clamp(max=self._n_table).long()
        f = x - i
        lo = self._table[i]
        return lo + f * (self._table[i + 1] - lo)

    def z_range_a(self) -> tuple[float, float] | None:
        """The view depths (z) the vesicles span; None without any."""
        if not len(self.outer_a):
            return None
        return float((self.centres_a[:, 2] - self.outer_a).min()), float((self.centres_a[:, 2] + self.outer_a).max())

    def touches(self, z0_a: float, z1_a: float) -> bool:
        return bool(((self.centres_a[:, 2] - self.outer_a < z1_a) & (self.centres_a[:, 2] + self.outer_a > z0_a)).any())

    def spans(self, grid: Grid, z0_a: float, z1_a: float) -> list[tuple[int, int, int, int]]:
        """Pixel rows and columns [y0, y1) × [x0, x1) of the vesicles that reach into view depths [z0, z1)."""
        p = grid.pixel_size_a
        oy, ox = grid.origin_a
        out = []
        for (cx, cy, cz), ro in zip(self.centres_a, self.outer_a, strict=True):
            if cz - ro < z1_a and cz + ro > z0_a:
                out.append((math.floor((cy - ro + oy) / p), math.ceil((cy + ro + oy) / p) + 1,
                            math.floor((cx - ro + ox) / p), math.ceil((cx + ro + ox) / p) + 1))
        return out

    def _footprint(self, i: int, grid: Grid):
        """Vesicle i's disc on ``grid``: (flat pixel indices, d², and the half chords h_in, h_out of the shell's
        inner and outer spheres), float32, computed once per grid (the last grid asked is kept)."""
        key = (grid.shape_px, grid.origin_px, grid.pixel_size_a)
        if self._grid_key != key:
            self._grid_key, self._cache = key, {}
        if i not in self._cache:
            p = grid.pixel_size_a
            oy, ox = grid.origin_a
            (cx, cy, _), radius, ro = self.centres_a[i], self.vesicles.radii_a[i], self.outer_a[i]
            ix0, ix1 = max(0, math.ceil((cx - ro + ox) / p)), min(grid.nx, math.floor((cx + ro + ox) / p) + 1)
            iy0, iy1 = max(0, math.ceil((cy - ro + oy) / p)), min(grid.ny, math.floor((cy + ro + oy) / p) + 1)
            if ix1 <= ix0 or iy1 <= iy0:
                self._cache[i] = None
                return None
            xs = torch.arange(ix0, ix1, dtype=torch.float64, device=self.device) * p - ox - cx
            ys = torch.arange(iy0, iy1, dtype=torch.float64, device=self.device) * p - oy - cy
            d2 = (ys[:, None] ** 2 + xs[None, :] ** 2).reshape(-1)
            inside = torch.nonzero(d2 < ro * ro).squeeze(1)
            d2 = d2[inside]
            ri = max(radius - self.bilayer.half_extent_a, 0.0)
            h_out = torch.sqrt(ro * ro - d2)
            h_in = torch.sqrt(torch.clamp(ri * ri - d2, min=0.0))
            bw = ix1 - ix0
            flat = (inside // bw + iy0) * grid.nx + (inside % bw + ix0)
            self._cache[i] = (flat, d2.float(), h_in.float(), h_out.float())
        return self._cache[i]

    def projected_v_a(self, grid: Grid, z0_a: float, z1_a: float) -> torch.Tensor | None:
        """(H, W) float64 V·Å: the vesicles' ΔV integrated along each pixel's ray over view depths [z0, z1);
        None when no vesicle reaches into the range."""
        out = None
        for i, ((_, _, cz), radius, ro) in enumerate(zip(self.centres_a, self.vesicles.radii_a, self.outer_a,
                                                         strict=True)):
            a, b = max(z0_a, cz - ro) - cz, min(z1_a, cz + ro) - cz
            if b <= a or (fp := self._footprint(i, grid)) is None:
                continue
            flat, d2, h_in, h_out = fp
            # the ray's two passes through the shell, [h_in, h_out] and [−h_out, −h_in], cut to the chunk
            for start, end in ((h_in, h_out), (-h_out, -h_in)):
                sel = torch.nonzero((start < b) & (end > a)).squeeze(1)
                if not sel.numel():
                    continue
                lo = torch.clamp(start[sel], min=a)
                ln = torch.clamp(end[sel], max=b) - lo
                m = max(1, math.ceil(float(ln.max()) / self.step_a))  # sub-intervals, two nodes each
                j = torch.arange(m, dtype=torch.float64, device=self.device) + 0.5
                t = (torch.stack([j - GAUSS2, j + GAUSS2], 1).reshape(-1) / m).float()
                n = 2 * m
                vals = torch.empty(sel.numel(), dtype=torch.float64, device=self.device)
                block = max(1, BLOCK // n)
                for s in range(0, sel.numel(), block):
                    # float32 nodes (r to ~1e-4 Å), sums in float64
                    z = lo[s:s + block, None] + ln[s:s + block, None] * t  # (m, n) nodes
                    u = torch.sqrt(d2[sel[s:s + block]][:, None] + z * z) - radius
                    vals[s:s + block] = self._profile(u).sum(1, dtype=torch.float64) * (ln[s:s + block] / n)
                if out is None:
                    out = torch.zeros(grid.shape_px, dtype=torch.float64, device=self.device)
                out.view(-1).index_add_(0, flat[sel], vals)
        return out

    def field(self, grid: Grid, z0_a: float, z1_a: float, cdtype=torch.complex64) -> torch.Tensor | None:
        """The complex projected potential (V·Å) of view depths [z0, z1): ΔV·(1 + i ratio); None if untouched."""
        return lipid_field(self.projected_v_a(grid, z0_a, z1_a), self.absorption_ratio, cdtype)


def add_to_volume(volume: torch.Tensor, vesicles: Vesicles, grid: Grid, z0_a: float, voxel_a: float) -> None:
    """Add the vesicles' ΔV (V, untilted) to ``volume`` (Z, Y, X) in place: voxel [iz, iy, ix] centred at the grid's
    pixel (ix, iy) and depth z0 + (iz + ½)·voxel; the profile widened by the voxel's box (σ = v/√12), as in the
    images. Only each vesicle's bounding box is evaluated, one plane at a time."""
    bilayer = vesicles.bilayer.blurred(pixel_blur_a(voxel_a))
    oy, ox = grid.origin_a
    nz = volume.shape[0]
    dev = volume.device
    for (cx, cy, cz), radius in zip(vesicles.centres_a, vesicles.radii_a, strict=True):
        ro = radius + bilayer.half_extent_a
        ix0, ix1 = max(0, math.ceil((cx - ro + ox) / voxel_a)), min(grid.nx, math.floor((cx + ro + ox) / voxel_a) + 1)
        iy0, iy1 = max(0, math.ceil((cy - ro + oy) / voxel_a)), min(grid.ny, math.floor((cy + ro + oy) / voxel_a) + 1)
        iz0 = max(0, math.ceil((cz - ro - z0_a) / voxel_a - 0.5))
        iz1 = min(nz, math.floor((cz + ro - z0_a) / voxel_a - 0.5) + 1)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        xs = torch.arange(ix0, ix1, dtype=torch.float64, device=dev) * voxel_a - ox - cx
        ys = torch.arange(iy0, iy1, dtype=torch.float64, device=dev) * voxel_a - oy - cy
        d2 = ys[:, None] ** 2 + xs[None, :] ** 2
        for iz in range(iz0, iz1):
            dz = z0_a + (iz + 0.5) * voxel_a - cz
            u = torch.sqrt(d2 + dz * dz) - radius
            volume[iz, iy0:iy1, ix0:ix1] += bilayer.potential_v(u).to(volume.dtype)
