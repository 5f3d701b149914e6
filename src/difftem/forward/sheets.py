"""Flat bilayers (specimen/sheets.py) in the multislice: each chunk's projected ΔV of the sheets, in closed form.

In a view (the specimen turned by R) a sheet has centre c and unit normal n (view frame), and along the ray of pixel
(x, y) the distance from its mid-plane is linear in the view depth z: u(z) = s + n_z z, s = n_x(x − c_x) +
n_y(y − c_y) − n_z c_z. The chunk [z0, z1) therefore receives exactly

    P(x, y) = ∫ ΔV(u(z)) dz = (C(u(b)) − C(u(a))) / (u(b) − u(a)) · (b − a)     (V·Å)

with C(u) = ∫_{−W}^{u} ΔV the profile's antiderivative (closed form: erf terms for the Gaussians, x·erf(x) +
e^{−x²}/√π for the core's soft box; u clamped to ±W, where the profile is cut) and [a, b] the part of the chunk
the ray spends in the sheet: for a disc the interval where its in-plane distance from c is within the radius
(a line against a cylinder about n: a quadratic), for an unbounded plane the slab of the ice. Where u barely changes
(a sheet seen edge-on, |u(b) − u(a)| < 1e-3 Å) the integral is ΔV at the middle times the length. Being an
exact integral, any chunking sums to the same projection.

As for vesicles the profile is widened by a pixel's box (σ = p/√12) against aliasing its lines; a disc's hard rim
is softened the same way, as the mean over radii spread uniformly across one pixel (R ± p/2, ``EDGE_SAMPLES``
cylinders). The field is complex, ΔV(1 + i·absorption ratio), as the vesicles' and the atoms'.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.grid import Grid
from ..core.threads import threads_for
from ..specimen.membranes import Bilayer
from ..specimen.sheets import Sheets, disc_half_extents_a
from .membranes import lipid_field, pixel_blur_a

EDGE_SAMPLES = 4  # radii across one pixel that soften a disc's rim
FLAT_DU_A = 1e-3  # below this change of u along the segment, ΔV at its middle times its length
BLOCK = 1 << 20  # pixels per vectorised block
TABLE_STEP_A = 0.01  # the tabulated antiderivative's spacing (Å)


def _e(x: torch.Tensor) -> torch.Tensor:
    """∫ erf: x·erf(x) + exp(−x²)/√π."""
    return x * torch.erf(x) + torch.exp(-x * x) / math.sqrt(math.pi)


def _f(b: Bilayer, u: torch.Tensor) -> torch.Tensor:
    """An antiderivative of the untruncated ΔV (V·Å)."""
    h = b.separation_a / 2
    r2 = math.sqrt(2.0)
    sh, sm, s = b.head_sigma_a, b.methyl_sigma_a, r2 * b.core_sigma_a
    g = math.sqrt(math.pi / 2)
    out = b.head_v * sh * g * (torch.erf((u - h) / (r2 * sh)) + torch.erf((u + h) / (r2 * sh)))
    out = out + b.core_v * (s / 2) * (_e((b.core_half_a + u) / s) - _e((b.core_half_a - u) / s))
    return out + b.methyl_v * sm * g * torch.erf(u / (r2 * sm))


def antiderivative_v_a(b: Bilayer, u_a: torch.Tensor) -> torch.Tensor:
    """C(u) = ∫_{−W}^{u} ΔV (V·Å) of the profile as :meth:`Bilayer.potential_v` cuts it (zero beyond ±W)."""
    w = b.half_extent_a
    return _f(b, u_a.clamp(-w, w)) - _f(b, torch.tensor(-w, dtype=torch.float64)).item()


class ProfileTable:
    """C(u) and ΔV(u) of one bilayer on a ``TABLE_STEP_A`` grid over [−W, W], read back by cubic Hermite
    interpolation (C′ = ΔV at the nodes: error ≈ h⁴·max|ΔV‴|/384, ~1e-12 V·Å): a gather and a cubic per endpoint
    instead of eight transcendental functions."""

    def __init__(self, b: Bilayer, device=None):
        self.bilayer, self.w = b, b.half_extent_a
        self.n = max(2, math.ceil(2 * self.w / TABLE_STEP_A))
        self.h = 2 * self.w / self.n
        u = torch.linspace(-self.w, self.w, self.n + 1, dtype=torch.float64)
        self.c = antiderivative_v_a(b, u).to(device)
        self.v = b.potential_v(u).to(device)

    def antiderivative(self, u_a: torch.Tensor) -> torch.Tensor:
        x = (u_a.clamp(-self.w, self.w) + self.w) / self.h
        i = x.floor().clamp(0, self.n - 1)
        t = x - i
        i = i.long()
        t2, t3 = t * t, t * t * t
        return ((2 * t3 - 3 * t2 + 1) * self.c[i] + (t3 - 2 * t2 + t) * self.h * self.v[i]
                + (3 * t2 - 2 * t3) * self.c[i + 1] + (t3 - t2) * self.h * self.v[i + 1])


def segment_integral_v_a(table: ProfileTable, s: torch.Tensor, n_z: float, lo: torch.Tensor, hi: torch.Tensor
                         ) -> torch.Tensor:
    """∫_{lo}^{hi} ΔV(s + n_z z) dz (V·Å) along flat rays, zero where hi ≤ lo; the profile is evaluated only on
    the rays whose segment reaches the bilayer."""
    out = torch.zeros_like(s)
    u0, u1 = s + n_z * lo, s + n_z * hi
    w = table.w
    hit = torch.nonzero(((hi > lo) & (torch.maximum(u0, u1) > -w) & (torch.minimum(u0, u1) < w)).reshape(-1))
    if not hit.numel():
        return out
    hit = hit.squeeze(1)
    u0, u1 = u0.reshape(-1)[hit], u1.reshape(-1)[hit]
    length = hi.reshape(-1)[hit] - lo.reshape(-1)[hit]
    du = u1 - u0
    steep = du.abs() >= FLAT_DU_A
    val = torch.empty_like(du)
    if steep.any():
        val[steep] = (table.antiderivative(u1[steep]) - table.antiderivative(u0[steep])) / du[steep] * length[steep]
    flat = ~steep
    if flat.any():
        val[flat] = table.bilayer.potential_v(0.5 * (u0[flat] + u1[flat])) * length[flat]
    return out.reshape(-1).index_copy(0, hit, val).reshape(s.shape)


class ViewSheets:
    """The sheets of one view: centres and normals turned into the view frame, the profiles widened for the pixel.
    ``field_grid``: the whole field (the depths an unbounded plane's rays reach are taken over it)."""

    def __init__(self, sheets: Sheets, rotation, pixel_size_a: float, absorption_ratio: float, *, field_grid: Grid,
                 device=None, blur: bool = True):
        self.sheets, self.absorption_ratio = sheets, absorption_ratio
        self.device = torch.device(device or "cpu")
        self.rotation = r = np.asarray(rotation, dtype=np.float64)
        self.centres_a = sheets.centres_a @ r.T
        self.normals = sheets.normals @ r.T
        self.bilayers = [b.blurred(pixel_blur_a(pixel_size_a) if blur else 0.0) for b in sheets.bilayers]
        self.tables = [ProfileTable(b, self.device) for b in self.bilayers]
        k = EDGE_SAMPLES if blur else 1
        self.edge_offsets_a = ((np.arange(k) + 0.5) / k - 0.5) * (pixel_size_a if blur else 0.0)
        self.ranges_a = [self._z_range(i, field_grid) for i in range(len(sheets))]

    def _z_range(self, i: int, grid: Grid) -> tuple[float, float]:
        c, n, b = self.centres_a[i], self.normals[i], self.bilayers[i]
        radius = self.sheets.radii_a[i]
        if math.isfinite(radius):
            ext = disc_half_extents_a(n, radius + self.edge_offsets_a.max(initial=0.0), b.half_extent_a)[2]
            return c[2] - ext, c[2] + ext
        p = grid.pixel_size_a
        oy, ox = grid.origin_a
        xs = np.array([-ox - p, (grid.nx - 1) * p - ox + p])
        ys = np.array([-oy - p, (grid.ny - 1) * p - oy + p])
        x, y = np.meshgrid(xs, ys)
        base = self.rotation[0, 2] * x + self.rotation[1, 2] * y  # specimen z = base + R₂₂ z (view)
        h, r22 = self.sheets.ice_half_a, self.rotation[2, 2]
        lo, hi = ((-h - base) / r22).min(), ((h - base) / r22).max()
        if abs(n[2]) > 1e-9:  # the bilayer's band along the rays
            mid = (n @ c - n[0] * x - n[1] * y) / n[2]
            half = b.half_extent_a / abs(n[2])
            lo, hi = max(lo, (mid - half).min()), min(hi, (mid + half).max())
        return float(lo), float(hi)

    def z_range_a(self) -> tuple[float, float] | None:
        """The view depths the sheets span; None without any."""
        if not self.ranges_a:
            return None
        return min(r[0] for r in self.ranges_a), max(r[1] for r in self.ranges_a)

    def touches(self, z0_a: float, z1_a: float) -> bool:
        return any(lo < z1_a and hi > z0_a for lo, hi in self.ranges_a)

    def spans(self, grid: Grid, z0_a: float, z1_a: float) -> list[tuple[int, int, int, int]]:
        """Pixel rows and columns [y0, y1) × [x0, x1) the sheets reaching into view depths [z0, z1) can cover."""
        boxes = [self._box(i, grid) for i, (lo, hi) in enumerate(self.ranges_a) if lo < z1_a and hi > z0_a]
        return [b for b in boxes if b is not None]

    def _box(self, i: int, grid: Grid) -> tuple[int, int, int, int] | None:
        """Pixel rows and columns [iy0, iy1) × [ix0, ix1) the sheet can reach."""
        radius = self.sheets.radii_a[i]
        if not math.isfinite(radius):
            return 0, grid.ny, 0, grid.nx
        p = grid.pixel_size_a
        oy, ox = grid.origin_a
        c = self.centres_a[i]
        ext = disc_half_extents_a(self.normals[i], radius + self.edge_offsets_a.max(initial=0.0),
                                  self.bilayers[i].half_extent_a)
        ix0, ix1 = max(0, math.floor((c[0] - ext[0] + ox) / p)), min(grid.nx, math.ceil((c[0] + ext[0] + ox) / p) + 1)
        iy0, iy1 = max(0, math.floor((c[1] - ext[1] + oy) / p)), min(grid.ny, math.ceil((c[1] + ext[1] + oy) / p) + 1)
        return (iy0, iy1, ix0, ix1) if ix1 > ix0 and iy1 > iy0 else None

    def _sheet(self, i: int, x: torch.Tensor, y: torch.Tensor, z0_a: float, z1_a: float) -> torch.Tensor:
        """Sheet i's ∫ΔV dz (V·Å) over [z0, z1) along the rays at view (x, y) (flat float64 tensors)."""
        (cx, cy, cz), (nx, ny, nz), b = self.centres_a[i], self.normals[i], self.tables[i]
        radius = self.sheets.radii_a[i]
        s = nx * (x - cx) + ny * (y - cy) - nz * cz  # u = s + n_z z
        lo, hi = torch.full_like(x, z0_a), torch.full_like(x, z1_a)
        if not math.isfinite(radius):  # cut by the ice's slab: specimen z = R₀₂x + R₁₂y + R₂₂z within ±h
            r, h = self.rotation, self.sheets.ice_half_a
            base = r[0, 2] * x + r[1, 2] * y
            lo, hi = torch.maximum(lo, (-h - base) / r[2, 2]), torch.minimum(hi, (h - base) / r[2, 2])
            return segment_integral_v_a(b, s, nz, lo, hi)
        # the in-plane distance along the ray: |q⊥ + z d|², d = e_z − n_z n (|d|² = 1 − n_z²), q = (x, y, 0) − c
        qx, qy, qz = x - cx, y - cy, -cz
        perp2 = qx * qx + qy * qy + qz * qz - s * s
        a2 = 1.0 - nz * nz
        out = torch.zeros_like(x)
        if a2 < 1e-12:  # the beam along the normal: the distance does not change along the ray
            whole = segment_integral_v_a(b, s, nz, lo, hi)
            for dr in self.edge_offsets_a:
                out += torch.where(perp2 <= (radius + dr) ** 2, whole, torch.zeros_like(whole))
            return out / len(self.edge_offsets_a)
        qd = qz - s * nz  # q⊥·d
        zstar, m2 = -qd / a2, perp2 - qd * qd / a2  # closest approach to the axis and its distance²
        for dr in self.edge_offsets_a:
            half = torch.sqrt((((radius + dr) ** 2) - m2).clamp(min=0.0) / a2)
            part = segment_integral_v_a(b, s, nz, torch.maximum(lo, zstar - half), torch.minimum(hi, zstar + half))
            out += torch.where(m2 < (radius + dr) ** 2, part, torch.zeros_like(part))
        return out / len(self.edge_offsets_a)

    def _pixels(self, i: int, grid: Grid, box, z0_a: float, z1_a: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns) of the pixels in ``box`` whose ray can meet sheet i's bilayer within [z0, z1): its
        mid-plane crossing z_c = (n·c − n_x x − n_y y)/n_z within W/|n_z| of the chunk, an interval of columns
        per row (a strip across the field), with a pixel's margin."""
        iy0, iy1, ix0, ix1 = box
        dev = self.device
        rows = torch.arange(iy0, iy1, device=dev)
        (nx, ny, nz), c = self.normals[i], self.centres_a[i]
        lo_c, hi_c = torch.full_like(rows, ix0), torch.full_like(rows, ix1)
        if abs(nz) > 1e-9:
            p = grid.pixel_size_a
            oy, ox = grid.origin_a
            reach = self.tables[i].w / abs(nz)
            k = float(np.dot(self.normals[i], c))
            y = rows.to(torch.float64) * p - oy
            # n_x x lies between k − n_y y − n_z (z1 + reach) and k − n_y y − n_z (z0 − reach)
            g0 = k - ny * y - nz * (z1_a + reach)
            g1 = k - ny * y - nz * (z0_a - reach)
            if abs(nx) > 1e-12:
                a, b = torch.minimum(g0, g1) / nx, torch.maximum(g0, g1) / nx
                xa, xb = torch.minimum(a, b), torch.maximum(a, b)
                lo_c = torch.maximum(lo_c, torch.floor((xa + ox) / p).long() - 1)
                hi_c = torch.minimum(hi_c, torch.ceil((xb + ox) / p).long() + 2)
            else:  # a row is all in or all out
                inside = (torch.minimum(g0, g1) <= 0) & (torch.maximum(g0, g1) >= 0)
                hi_c = torch.where(inside, hi_c, lo_c)
        count = (hi_c - lo_c).clamp(min=0)
        row = torch.repeat_interleave(rows, count)
        start = torch.repeat_interleave(lo_c - (torch.cumsum(count, 0) - count), count)
        return row, start + torch.arange(row.numel(), device=dev)

    def projected_v_a(self, grid: Grid, z0_a: float, z1_a: float) -> torch.Tensor | None:
        """(H, W) float64 V·Å: the sheets' ΔV integrated along each pixel's ray over view depths [z0, z1); None when
        no sheet reaches into the range. Only the pixels whose ray can meet a bilayer within the range are
        evaluated (a strip of the field for a tilted view of a plane)."""
        out = None
        p = grid.pixel_size_a
        oy, ox = grid.origin_a
        for i, (zlo, zhi) in enumerate(self.ranges_a):
            if not (zlo < z1_a and zhi > z0_a) or (box := self._box(i, grid)) is None:
                continue
            if out is None:
                out = torch.zeros(grid.shape_px, dtype=torch.float64, device=self.device)
            rows, cols = self._pixels(i, grid, box, z0_a, z1_a)
            flat = out.view(-1)
            for s in range(0, rows.numel(), BLOCK):
                r, c = rows[s:s + BLOCK], cols[s:s + BLOCK]
                x, y = c.to(torch.float64) * p - ox, r.to(torch.float64) * p - oy
                with threads_for(x.numel()):  # a disc's box is often small: a second thread costs more there
                    val = self._sheet(i, x, y, z0_a, z1_a)
                flat.index_add_(0, r * grid.nx + c, val)
        return out

    def field(self, grid: Grid, z0_a: float, z1_a: float, cdtype=torch.complex64) -> torch.Tensor | None:
        """The complex projected potential (V·Å) of view depths [z0, z1): ΔV·(1 + i ratio); None if untouched."""
        return lipid_field(self.projected_v_a(grid, z0_a, z1_a), self.absorption_ratio, cdtype)


def add_sheets_to_volume(volume: torch.Tensor, sheets: Sheets, grid: Grid, z0_a: float, voxel_a: float) -> None:
    """Add the sheets' ΔV (V, untilted) to ``volume`` (Z, Y, X) in place: each voxel the mean over its z-slab
    [z0 + iz·v, z0 + (iz + 1)·v) at the grid's pixel, the profile widened by the voxel's box as in the images."""
    view = ViewSheets(sheets, np.eye(3), voxel_a, 0.0, field_grid=grid, device=volume.device)
    for iz in range(volume.shape[0]):
        a = z0_a + iz * voxel_a
        if view.touches(a, a + voxel_a) and (p := view.projected_v_a(grid, a, a + voxel_a)) is not None:
            volume[iz] += (p / voxel_a).to(volume.dtype)
