"""Support films (``sample.support``): amorphous carbon or gold with holes, crossed along each view's rays.

**Potential.** A homogeneous film of number density n (atoms per Å³) has the mean inner potential

    U = n · C · f_e(0)        (V; C = h²/(2π m₀ e) = 47.878 V·Å², f_e(0) the atom's scattering factor at k = 0)

the volume average of independent neutral atoms' potentials (∫ V_atom d³r = C f_e(0)), computed from the run's
scattering table. Water at 1.00 g/cm³ gives 4.880 V this way, the ice continuum's 4.8775 V; amorphous carbon at
2.0 g/cm³ gives 12.06 V, gold (19.32 g/cm³) 29.8 V. Neutral independent atoms ignore bonding, which moves charge
into the bonds and lowers the measured value: electron holography of amorphous carbon gives 9.09 V at 1.75 g/cm³
(Wanner et al., Ultramicroscopy 106, 341 (2006)), where this formula gives 10.55 V (+16 %). The formula is the
same physics as the ice's and the atoms'; ``mean_inner_potential_v`` sets a measured value instead.

**Absorption.** With the default loss model (``optics.electron_loss.model: absorption``) the film absorbs in
proportion to its potential with the atoms' ratio (``sample.absorption_ratio``, by default the ice's,
0.7591/4.8775 at 300 kV), as every atom of the specimen does. With the explicit model the ice and the atoms carry no
absorption potential; the film's inelastic scattering is then removed by an energy filter only (``energy_filter:
true``), as an absorption potential 1/(2σΛ) with Λ its inelastic mean free path from Malis, Cheng & Egerton's
formula (J. Electron Microsc. Tech. 8, 193 (1988); λ = 106 F E₀ / (E_m ln(2βE₀/E_m)) nm, E_m = 7.6 Z^0.36 eV,
β = 10 mrad: carbon 188 nm, gold 87 nm at 300 kV); without a filter the film's inelastic electrons reach the
detector (their blur is not modelled) and its elastic scattering beyond the aperture is not removed.

**In the multislice.** The film adds, per chunk of the view's slicing (the structured ice's chunks), the complex
potential U·L(x, y), L the length of each pixel's ray through film material inside the chunk
(:meth:`~difftem.specimen.support.SupportGeometry.material_fraction` of the segment the ray sweeps in (x, y)): a
tilted film is crossed over t/cos θ and the holes' edges move with depth. The film has no structured component.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.fft import irfft2, rfft2
from ..core.grid import Grid
from ..specimen.support import SupportGeometry
from .beam import interaction_constant
from .ice import middle_slice, ray_points
from .potential import CONTENT_BOX_MARGIN_PX, Patch, content_box
from .scattering import ScatteringTable

AVOGADRO_PER_A3 = 0.602214076  # N_A × 1e-24: (g/cm³)/(g/mol) → atoms per Å³
#: material → (Z, molar mass g/mol, default density g/cm³)
MATERIALS = {"carbon": (6, 12.011, 2.0), "gold": (79, 196.96657, 19.32)}
MALIS_BETA_MRAD = 10.0
SUBSAMPLES = 2  # rays per pixel side for the film's path (an area average)
#: the film's path map is smoothed by a Gaussian of this many pixels: a hole's edge is a phase step (~1.5 rad for
#: 20 nm of carbon) whose transmission exp(iσV), cut at the band edge (2/3 Nyquist), rings for tens of pixels and
#: focuses at a hole's centre. The transmission's spectrum is wider than the potential's (its square has twice the
#: band), so σ = 1 px left 3.2 % at the centre of a 30 nm hole in 20 nm of carbon (4 Å px), σ = 2 px 0.1 %
EDGE_SIGMA_PX = 2.0


def number_density_per_a3(density_g_cm3: float, molar_mass_g: float) -> float:
    return density_g_cm3 / molar_mass_g * AVOGADRO_PER_A3


def mean_inner_potential_v(atomic_numbers, counts, density_g_cm3: float, table: ScatteringTable) -> float:
    """U (V) of a homogeneous material of the given formula (elements ``atomic_numbers`` × ``counts`` per formula
    unit) and density, from independent neutral atoms: n_formula · Σ count · C f_e(0)."""
    from ..core.elements import atomic_mass_da

    zs = np.asarray(atomic_numbers, dtype=np.int64)
    ns = np.asarray(counts, dtype=np.float64)
    molar = float((atomic_mass_da(zs) * ns).sum())
    per_formula = sum(float(n) * table.projected_integral_v_a3(int(z)) for z, n in zip(zs, ns, strict=True))
    return number_density_per_a3(density_g_cm3, molar) * per_formula


def malis_mean_free_path_nm(voltage_kv: float, z_eff: float, beta_mrad: float = MALIS_BETA_MRAD) -> float:
    """Inelastic mean free path (nm) from Malis, Cheng & Egerton (1988)."""
    e_m = 7.6 * z_eff**0.36
    f = (1 + voltage_kv / 1022) / (1 + voltage_kv / 511) ** 2
    return 106.0 * f * voltage_kv / (e_m * math.log(2 * beta_mrad * voltage_kv / e_m))


@dataclass(frozen=True)
class SupportModel:
    """A run's support film: geometry, specimen depth range (Å) and complex potential (V: mean + i absorption)."""

    geometry: SupportGeometry
    depth_range_a: tuple[float, float]
    potential_v: complex
    mean_inner_potential_v: float
    material: str

    @classmethod
    def from_config(cls, config, table: ScatteringTable, *, absorption_ratio: float, ice_face_a: float
                    ) -> SupportModel | None:
        """``absorption_ratio``: the atoms' ratio of the run; ``ice_face_a``: half the thickest ice (Å)."""
        cfg = config.sample.support
        if cfg is None:
            return None
        z, molar, rho0 = MATERIALS[cfg.material]
        rho = cfg.density_g_cm3 if cfg.density_g_cm3 is not None else rho0
        u = (cfg.mean_inner_potential_v if cfg.mean_inner_potential_v is not None
             else mean_inner_potential_v([z], [1], rho, table))
        u_im = absorption_ratio * u
        loss = config.optics.electron_loss
        kv = config.beam.voltage_kv
        if loss.model == "explicit" and loss.energy_filter:
            u_im += 1.0 / (2 * interaction_constant(kv) * malis_mean_free_path_nm(kv, z) * 10.0)
        geometry, depths = SupportGeometry.from_config(cfg, ice_face_a)
        return cls(geometry, depths, complex(u, u_im), u, cfg.material)

    def view_depth_range_a(self, rotation) -> tuple[float, float]:
        """The film's depths in a view's slicing: specimen depth z ↦ view depth z / cos θ."""
        cos_t = float(np.asarray(rotation)[2, 2])
        return self.depth_range_a[0] / cos_t, self.depth_range_a[1] / cos_t

    def metadata(self) -> dict:
        g = self.geometry
        return {"material": self.material, "mean_inner_potential_v": self.mean_inner_potential_v,
                "absorption_potential_v": self.potential_v.imag, "depth_range_a": list(self.depth_range_a),
                "hole_diameter_a": 2 * g.hole_radius_a, "pitch_a": g.pitch_a, "lattice": g.lattice}


def film_length_a(model: SupportModel, rotation, grid: Grid, z0_view_a: float, z1_view_a: float, device=None,
                  subsamples: int = SUBSAMPLES) -> torch.Tensor | None:
    """(H, W) Å of film material crossed between view depths z0 and z1, averaged over each pixel's area
    (``subsamples``² parallel rays; None: the range misses the film). The average makes a hole's edge a ramp
    over one pixel instead of a step at the pixel centres: a sharp edge of a thick film (a phase step of ~1.5 rad
    for 20 nm of carbon) would ring across the band limit for tens of pixels."""
    f0, f1 = model.view_depth_range_a(rotation)
    a, b = max(z0_view_a, f0), min(z1_view_a, f1)
    if b <= a:
        return None
    x0, y0, _ = ray_points(rotation, grid, a, device)
    x1, y1, _ = ray_points(rotation, grid, b, device)
    if model.geometry.hole_radius_a <= 0:
        return torch.full_like(x0, b - a)
    r = np.asarray(rotation, dtype=np.float64)
    c = r[2, 2]
    # specimen (x, y) per view (x, y) at a fixed view depth (ray_points' map, differentiated)
    jac = ((r[0, 0] - r[2, 0] * r[0, 2] / c, r[1, 0] - r[2, 0] * r[1, 2] / c),
           (r[0, 1] - r[2, 1] * r[0, 2] / c, r[1, 1] - r[2, 1] * r[1, 2] / c))
    geo = model.geometry
    # most pixels' rays stay on the film or inside one hole: decided from the segment's middle, its half length and
    # the pixel's reach; only the rest (near an edge) get the exact chords of subsamples² parallel rays
    xm, ym = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    cx, cy = geo.nearest_hole(xm, ym)
    d = torch.sqrt((xm - cx) ** 2 + (ym - cy) ** 2)
    half_px = 0.5 * grid.pixel_size_a * (abs(jac[0][0]) + abs(jac[0][1]) + abs(jac[1][0]) + abs(jac[1][1]))
    reach = 0.5 * torch.sqrt((x1 - x0) ** 2 + (y1 - y0) ** 2) + half_px
    frac = (d > geo.hole_radius_a).to(x0.dtype)
    edge = torch.nonzero(((d - geo.hole_radius_a).abs() <= reach).reshape(-1)).squeeze(1)
    if edge.numel():
        ex0, ey0, ex1, ey1 = (v.reshape(-1)[edge] for v in (x0, y0, x1, y1))
        acc = torch.zeros_like(ex0)
        offsets = [((i + 0.5) / subsamples - 0.5) * grid.pixel_size_a for i in range(subsamples)]
        for dy in offsets:
            for dx in offsets:
                sx, sy = jac[0][0] * dx + jac[0][1] * dy, jac[1][0] * dx + jac[1][1] * dy
                acc += geo.material_fraction(ex0 + sx, ey0 + sy, ex1 + sx, ey1 + sy)
        frac = frac.reshape(-1).index_copy(0, edge, acc / subsamples**2).reshape(x0.shape)
    return (b - a) * frac


def smooth_edges(length_a: torch.Tensor, grid: Grid, sigma_px: float = EDGE_SIGMA_PX) -> torch.Tensor:
    """``length_a`` (H, W) filtered by a Gaussian of ``sigma_px`` pixels (periodic; its mean is kept)."""
    k2 = grid.k2(length_a.device, torch.float64, half=True)
    g = torch.exp(-2 * math.pi**2 * (sigma_px * grid.pixel_size_a) ** 2 * k2).to(length_a.dtype)
    return irfft2(rfft2(length_a) * g, grid.shape_px)


class ViewLayers:
    """The structured ice of one view (:class:`~difftem.forward.ice.ViewIce`, or None), the support film (or None)
    and the vesicles (:class:`~difftem.forward.membranes.ViewVesicles`, or None) as one source of per-chunk fields
    for the multislice (the interface of ViewIce: plan, chunk_of, apply_slice, field)."""

    def __init__(self, ice, support: SupportModel | None, rotation, *, chunk_a: float = 10.0, device=None,
                 cdtype=torch.complex64, vesicles=None, sheets=None):
        self.ice, self.support, self.rotation = ice, support, np.asarray(rotation)
        self.vesicles = vesicles  # forward.membranes.ViewVesicles or None: added at the atoms' depths (view z)
        self.sheets = sheets  # forward.sheets.ViewSheets or None: likewise
        self.chunk_a, self.device, self.cdtype = chunk_a, torch.device(device or "cpu"), cdtype

    def plan(self, z_start_a: float, slice_thickness_a: float, n_slices: int, ice_thickness_a: float):
        self.z_start_a, self.dz, self.n_slices = z_start_a, slice_thickness_a, n_slices
        if self.ice is not None:
            self.ice.plan(z_start_a, slice_thickness_a, n_slices, ice_thickness_a)
            self.per_chunk = self.ice.per_chunk
            self.ice_chunks = {self.ice.chunk_of(k) for k in range(n_slices)} - {None}
        else:
            self.per_chunk = max(1, math.ceil(self.chunk_a / slice_thickness_a - 1e-9))
            self.ice_chunks = set()
        self.film_view_a = self.support.view_depth_range_a(self.rotation) if self.support is not None else (0.0, 0.0)
        return self

    def chunk_of(self, k: int) -> int | None:
        if self.ice is not None and (c := self.ice.chunk_of(k)) is not None:
            return c
        z0 = self.z_start_a + k * self.dz
        f0, f1 = self.film_view_a
        if z0 < f1 and z0 + self.dz > f0:
            return k // self.per_chunk
        if self.vesicles is not None and self.vesicles.touches(z0, z0 + self.dz):
            return k // self.per_chunk
        if self.sheets is not None and self.sheets.touches(z0, z0 + self.dz):
            return k // self.per_chunk
        return None

    def apply_slice(self, c: int) -> int:
        return middle_slice(self, c)

    def patch(self, c: int, grid: Grid) -> Patch:
        """Chunk c's :meth:`field` as a patch: on the box of its vesicles and sheets when the chunk holds neither
        ice nor film and they cover a small part of the field (a tilted lamella's band), else the whole grid."""
        z0, z1 = self._z_range(c)
        f0, f1 = self.film_view_a
        if c in self.ice_chunks or (self.support is not None and z0 < f1 and z1 > f0):
            return Patch(0, 0, self.field(c, grid))
        spans = (self.vesicles.spans(grid, z0, z1) if self.vesicles is not None else []) \
            + (self.sheets.spans(grid, z0, z1) if self.sheets is not None else [])
        box = content_box(spans, grid.shape_px, CONTENT_BOX_MARGIN_PX, periodic=False) if spans else None
        if box is None:
            return Patch(0, 0, self.field(c, grid))
        y0, x0, my, mx = box
        return Patch(y0, x0, self.field(c, grid.window(y0, x0, (my, mx))))

    def _z_range(self, c: int) -> tuple[float, float]:
        return (self.z_start_a + c * self.per_chunk * self.dz,
                self.z_start_a + min(self.n_slices, (c + 1) * self.per_chunk) * self.dz)

    def field(self, c: int, grid: Grid) -> torch.Tensor:
        """Chunk c's complex projected potential (V·Å): the ice's fields and the film's U·L."""
        out = torch.zeros(grid.shape_px, dtype=self.cdtype, device=self.device)
        if c in self.ice_chunks:
            out += self.ice.field(c, grid).to(self.cdtype)
        z0, z1 = self._z_range(c)
        if self.vesicles is not None and (ves := self.vesicles.field(grid, z0, z1, self.cdtype)) is not None:
            out += ves
        if self.sheets is not None and (sheet := self.sheets.field(grid, z0, z1, self.cdtype)) is not None:
            out += sheet
        length = film_length_a(self.support, self.rotation, grid, z0, z1, self.device) if self.support else None
        if length is not None:
            if self.support.geometry.hole_radius_a > 0:
                length = smooth_edges(length, grid)
            u = self.support.potential_v
            out = out + torch.complex(u.real * length, u.imag * length).to(self.cdtype)
        return out
