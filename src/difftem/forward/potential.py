"""Specimen potential, built slice by slice.

Each slice's projected potential (V·Å, complex: real = electrostatic, imaginary = absorption)
is the exact potential of its atoms band-limited to the pixel grid (every frequency the grid
holds, none aliased): per element, the analytic
projected form factor C·f_e(k) (times each atom's Debye–Waller factor exp(-B s²)) multiplies
the structure factor Σ w exp(-2πi k·r), which is evaluated exactly (no splatting, no
interpolation) as one separable complex matrix product per element. The work is done in a box
around the slice's atoms (plus a margin for the potential's tails), then placed into the field.

Vitreous ice is a continuum of mean potential ``U_ice`` with absorption ``U_im``; each atom
displaces the ice of its own volume (mass / protein density), modelled as a Gaussian of width
``solvent_b_a2``. Atoms carry absorption ``absorption_ratio × potential``.

A second builder integrates Gaussian parametrisations over each pixel in real space (exact
pixel averages, erf form); it is a cross-check and an option, not the default.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..core.complex_ops import polar
from ..core.elements import atomic_mass_da
from ..core.fft import freq_per_a, good_fft_size, irfft2
from ..core.grid import Grid, centred_span
from ..specimen.structure import Atoms
from . import native
from .scattering import ScatteringTable

BuilderName = Literal["fourier", "real_space"]

#: Å³ per Da for protein of density 1.35 g/cm³ (1 Da = 1.66054e-24 g).
PROTEIN_VOLUME_A3_PER_DA = 1.66054 / 1.35

ICE_MEAN_POTENTIAL_V = 4.8775
#: Å³ an atom displaces where protein's density does not apply: gold (fcc, a = 4.078 Å: a³/4 per atom; at protein
#: density a gold atom would displace 14× that and a bead would look lighter than the ice it sits in)
DISPLACED_VOLUME_A3 = {79: 4.078**3 / 4}


def displaced_volume_a3(z: int, mass_da: float) -> float:
    """The ice volume (Å³) one atom of element ``z`` displaces: its own where known, else mass / protein density."""
    return DISPLACED_VOLUME_A3.get(int(z), float(mass_da) * PROTEIN_VOLUME_A3_PER_DA)

MIN_BOX_MARGIN_PX = 32
#: cached per-element form factors of the slices' boxes, beyond those of the current box shape
FF_CACHE_BYTES = 64_000_000
#: a slice's box wider than this many tiles is built tile by tile (without gradients): each tile's atoms in a
#: sub-box of the tile plus the margin, so the structure factor costs atoms × sub-box, not atoms × box
ATOM_TILE_PX = 128
_ICE_ABSORPTION_V = {200.0: 0.8245, 300.0: 0.7591}


def ice_absorption_potential_v(voltage_kv: float) -> float:
    """Imaginary (absorption) potential of vitreous ice in V at 200/300 kV (TEM-simulator values).

    Other voltages interpolate log-log between the two tabulated points.
    """
    if voltage_kv in _ICE_ABSORPTION_V:
        return _ICE_ABSORPTION_V[voltage_kv]
    p = math.log(_ICE_ABSORPTION_V[200.0] / _ICE_ABSORPTION_V[300.0]) / math.log(200.0 / 300.0)
    return _ICE_ABSORPTION_V[300.0] * (voltage_kv / 300.0) ** p


@dataclass(frozen=True)
class IceModel:
    thickness_a: float = 0.0
    mean_potential_v: float = ICE_MEAN_POTENTIAL_V
    absorption_potential_v: float = 0.7591
    solvent_b_a2: float = 80.0  # width of each atom's displaced-solvent Gaussian

    @property
    def absorption_ratio(self) -> float:
        return self.absorption_potential_v / self.mean_potential_v if self.mean_potential_v else 0.0


@dataclass
class Patch:
    """A complex projected potential (V·Å) on a box of the field whose top-left pixel is (y0, x0)."""

    y0: int
    x0: int
    potential: torch.Tensor  # (My, Mx) complex


@dataclass
class SliceContent:
    index: int
    z_start_a: float
    thickness_a: float
    ice_thickness_a: float  # part of the slice inside the ice slab
    patch: Patch | None  # None: the slice holds no atoms


def antialias_mask(k2: torch.Tensor, pixel_size_a: float, fraction: float = 2.0 / 3.0,
                   taper_fraction: float = 0.04) -> torch.Tensor:
    """The multislice anti-aliasing aperture: 1 below ``fraction`` × Nyquist, 0 above, with a raised-cosine
    edge ``taper_fraction`` × Nyquist wide just inside the cut-off (a soft edge rings less)."""
    nyquist = 0.5 / pixel_size_a
    k_cut, taper = fraction * nyquist, taper_fraction * nyquist
    k = torch.sqrt(k2)
    if taper <= 0:
        return (k <= k_cut).to(k2.dtype)
    # the edge's cosine over a clamped phase: 1 inside the flat band (phase 0), 0 beyond the cut-off (phase π)
    phase = k.sub_(k_cut - taper).mul_(1 / taper).clamp_(0, 1).mul_(torch.pi)
    return phase.cos_().add_(1).mul_(0.5)


class SlicedBase:
    """Slice bookkeeping shared by every streamed potential: slice k spans [z_start + kΔz, z_start + (k+1)Δz),
    the ice continuum is uniform inside |z| ≤ thickness/2. Subclasses provide ``slice_patch`` and the
    attributes ice, z_start_a, slice_thickness_a, n_slices, grid, cdtype, device."""

    def slice_content(self, k: int, with_patch: bool = True) -> SliceContent:
        half_ice = 0.5 * self.ice.thickness_a
        z0 = self.z_start_a + k * self.slice_thickness_a
        z1 = z0 + self.slice_thickness_a
        ice_t = max(0.0, min(z1, half_ice) - max(z0, -half_ice)) if self.ice.thickness_a > 0 else 0.0
        return SliceContent(k, z0, self.slice_thickness_a, ice_t, self.slice_patch(k) if with_patch else None)

    def slices(self) -> Iterator[SliceContent]:
        for k in range(self.n_slices):
            yield self.slice_content(k)

    def uniform_potential(self, content: SliceContent) -> complex:
        """Spatially constant part of a slice's projected potential (the ice continuum), V·Å."""
        return complex(self.ice.mean_potential_v * content.ice_thickness_a,
                       self.ice.absorption_potential_v * content.ice_thickness_a)

    @property
    def exit_plane_a(self) -> float:
        """z of the plane the wave leaves through (Å below the ice mid-plane): the bottom of the last slice."""
        return self.z_start_a + self.n_slices * self.slice_thickness_a

    def total_uniform_potential(self) -> complex:
        """Σ over slices of the uniform (ice) projected potential, V·Å."""
        t = self.ice.thickness_a
        return complex(self.ice.mean_potential_v * t, self.ice.absorption_potential_v * t)

    def project(self) -> torch.Tensor:
        """Projected potential summed over all slices, complex (H, W) in V·Å (ice included)."""
        total = torch.zeros(self.grid.shape_px, dtype=self.cdtype, device=self.device)
        for content in self.slices():
            total = total + self.uniform_potential(content)
            if content.patch is not None:
                total = total + embed(content.patch, self.grid.shape_px, 0.0)
        return total


class SlicedPotential(SlicedBase):
    """Streams the complex projected potential of a specimen, one slice at a time.

    Parameters
    ----------
    atoms_z, positions_a, b_iso_a2, occupancy
        Tensors (N,), (N, 3), (N,), (N,) in *scene* coordinates (Å; origin at the field centre
        and the ice mid-plane, z along the beam). Any float tensor may require grad.
    slice_thickness_a
        Δz of every slice.
    """

    def __init__(
        self,
        atomic_number: torch.Tensor,
        positions_a: torch.Tensor,
        b_iso_a2: torch.Tensor,
        occupancy: torch.Tensor,
        grid: Grid,
        table: ScatteringTable,
        slice_thickness_a: float,
        ice: IceModel,
        *,
        absorption_ratio: float | None = None,
        builder: BuilderName = "fourier",
        margin_a: float = 24.0,
        dtype: torch.dtype = torch.complex64,
        z_range_a: tuple[float, float] | None = None,
        form_factor_filter=None,
    ):
        if slice_thickness_a <= 0:
            raise ValueError("slice_thickness_a must be > 0")
        self.grid, self.table, self.ice, self.builder = grid, table, ice, builder
        self.slice_thickness_a = float(slice_thickness_a)
        self.absorption_ratio = ice.absorption_ratio if absorption_ratio is None else float(absorption_ratio)
        # the band limit rings over pixels (not Å): at coarse pixels the box must still be wide in pixels
        self.margin_px = box_margin_px(grid.pixel_size_a, margin_a)
        self.cdtype = dtype
        self.rdtype = dtype.to_real()
        self.device = positions_a.device
        self.form_factor_filter = form_factor_filter  # H(|k|) (k in 1/Å) on the atoms' form factors, e.g. damage
        if form_factor_filter is not None and builder != "fourier":
            raise ValueError("a form-factor filter (radiation damage) needs the fourier builder")

        half_ice = 0.5 * ice.thickness_a
        z = positions_a[:, 2].detach().double().cpu().numpy() if len(atomic_number) else np.zeros(0)
        z_lo = min(-half_ice, float(z.min()) - 1.0) if z.size else -half_ice
        z_hi = max(half_ice, float(z.max()) + 1.0) if z.size else half_ice
        if z_range_a is not None:  # a shared slicing (several potentials stacked on the same slices)
            z_lo, z_hi = min(z_lo, z_range_a[0]), max(z_hi, z_range_a[1])
        if z_hi <= z_lo:  # no ice and no atoms: a single empty slice
            z_hi = z_lo + self.slice_thickness_a
        self.z_start_a = z_lo
        self.n_slices = max(1, math.ceil((z_hi - z_lo) / self.slice_thickness_a - 1e-9))

        # Sort atoms by (slice, in_ice, Z) so each slice's element groups are contiguous ranges.
        slice_idx = np.clip(np.floor((z - z_lo) / self.slice_thickness_a).astype(np.int64), 0, self.n_slices - 1)
        in_ice = (np.abs(z) <= half_ice).astype(np.int64) if ice.thickness_a > 0 else np.zeros_like(slice_idx)
        zz = atomic_number.detach().cpu().numpy().astype(np.int64)
        order = np.lexsort((zz, in_ice, slice_idx))
        self._slice_idx, self._in_ice, self._z = slice_idx[order], in_ice[order], zz[order]
        order_t = torch.as_tensor(order, device=self.device)
        self.positions_a = positions_a[order_t]
        self.b_iso_a2 = b_iso_a2[order_t]
        self.occupancy = occupancy[order_t]
        self.slice_bounds = np.searchsorted(self._slice_idx, np.arange(self.n_slices + 1))
        masses = atomic_mass_da(np.arange(0, 93))
        self._volume_a3 = {int(e): displaced_volume_a3(e, masses[e]) for e in np.unique(zz)}
        self._ff_cache: dict = {}

    # ------------------------------------------------------------------ geometry helpers
    def _grid_xy_a(self, positions_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        oy, ox = self.grid.origin_a
        return positions_a[:, 0] + ox, positions_a[:, 1] + oy

    def _box(self, x_a: torch.Tensor, y_a: torch.Tensor) -> tuple[int, int, int, int]:
        """(y0, x0, My, Mx): a box around the atoms that stays inside the field, or the whole field."""
        out = []
        for c, n in ((y_a, self.grid.ny), (x_a, self.grid.nx)):
            span = centred_span(float(c.detach().min()), float(c.detach().max()), self.grid.pixel_size_a,
                                self.margin_px, n)
            out.append(span or (0, n))  # too big or crossing the edge: use the periodic field itself
        return out[0][0], out[1][0], out[0][1], out[1][1]

    # ------------------------------------------------------------------ Fourier builder
    def _form_factors(self, z: int, in_ice: int, shape: tuple[int, int]):
        """(real, imaginary) effective projected form factors (V·Å³) of element z on a box's rfft grid."""
        key = (z, in_ice, shape)
        if key not in self._ff_cache:
            box = Grid(shape, self.grid.pixel_size_a)
            k2 = box.k2(self.device, torch.float64, half=True)
            ff = self.table.projected_form_factor(z, k2)
            ff_re, ff_im = ff, self.absorption_ratio * ff
            if in_ice:
                solvent = self._volume_a3[z] * torch.exp(-self.ice.solvent_b_a2 * k2 / 4)
                ff_re = ff_re - self.ice.mean_potential_v * solvent
                ff_im = ff_im - self.ice.absorption_potential_v * solvent
            if self.form_factor_filter is not None:
                # the damage filter acts on the contrast the atom makes, protein minus the ice it displaces (as
                # the per-type maps filter their whole difference); filtering the atom alone left the displaced
                # ice unfiltered, which then reversed the contrast where damage had removed the protein's signal
                filt = self.form_factor_filter(torch.sqrt(k2))
                ff_re, ff_im = ff_re * filt, ff_im * filt
            self._ff_cache[key] = torch.stack([ff_re, ff_im]).to(self.rdtype)
            self._trim_ff_cache(shape)
        return self._ff_cache[key]

    def _trim_ff_cache(self, shape: tuple[int, int]) -> None:
        """Keep the cached form factors under FF_CACHE_BYTES: slices whose boxes differ in shape each add a set,
        so drop the oldest of other shapes (the current shape's set is always kept)."""
        total = sum(v.numel() * v.element_size() for v in self._ff_cache.values())
        for key in list(self._ff_cache):
            if total <= FF_CACHE_BYTES:
                break
            if key[2] != shape:
                v = self._ff_cache.pop(key)
                total -= v.numel() * v.element_size()

    def _fourier_patch(self, lo: int, hi: int) -> Patch:
        x_a, y_a = self._grid_xy_a(self.positions_a[lo:hi])
        y0, x0, my, mx = self._box(x_a, y_a)
        p = self.grid.pixel_size_a
        b, w = self.b_iso_a2[lo:hi], self.occupancy[lo:hi]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x_a, y_a, b, w))
        if not grad and (tiles := self.tile_plan(my, mx)) is not None:
            v = self._tiled_potential(lo, hi, (x_a - x0 * p).detach(), (y_a - y0 * p).detach(), b.detach(),
                                      w.detach(), (my, mx), *tiles)
            return Patch(y0, x0, torch.complex(v[0], v[1]))
        ky = freq_per_a(my, p, device=self.device)
        kx = freq_per_a(mx, p, half=True, device=self.device)
        keys = np.stack([self._z[lo:hi], self._in_ice[lo:hi]], 1)
        starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
        ends = np.r_[starts[1:], hi - lo]
        groups = [(int(s), int(e), self._form_factors(int(keys[s, 0]), int(keys[s, 1]), (my, mx)))
                  for s, e in zip(starts, ends, strict=True)]
        args = (x_a - x0 * p, y_a - y0 * p, b, w, ky, kx, groups, self.cdtype)
        spectrum = _StructureFactors.apply(*args) if grad else _structure_factor_spectrum(*args)
        v = irfft2(spectrum, (my, mx)) / (p * p)  # V·Å
        return Patch(y0, x0, torch.complex(v[0], v[1]))

    def tile_plan(self, my: int, mx: int) -> tuple[int, int] | None:
        return atom_tile_plan(my, mx, self.margin_px)

    def _tiled_potential(self, lo: int, hi: int, x_a: torch.Tensor, y_a: torch.Tensor, b: torch.Tensor,
                         w: torch.Tensor, shape: tuple[int, int], tile: int, sub: int) -> torch.Tensor:
        """(2, my, mx) projected potential (V·Å) of atoms lo:hi (x, y Å from the box's pixel [0, 0]), summed tile by
        tile: each tile's exact structure factor on a sub-box of ``sub`` px centred on it, inverse-transformed and
        added in place, periodic over the box as the box's own transform is. Each atom's potential then wraps
        within its sub-box instead of the box: the same approximation as the box itself, whose margin holds the
        potential's tails (the difference is tested to stay below the band-limit's own ringing)."""
        my, mx = shape
        p = self.grid.pixel_size_a
        out = torch.zeros((2, my * mx), dtype=self.rdtype, device=self.device)
        ky = freq_per_a(sub, p, device=self.device)
        kx = freq_per_a(sub, p, half=True, device=self.device)
        ty = torch.clamp(torch.floor(y_a / (tile * p)), 0, (my - 1) // tile).long()
        tx = torch.clamp(torch.floor(x_a / (tile * p)), 0, (mx - 1) // tile).long()
        tile_id = (ty * (mx // tile + 1) + tx).cpu().numpy()
        order = np.argsort(tile_id, kind="stable")  # stable: element groups stay contiguous within a tile
        cuts = np.flatnonzero(np.r_[True, tile_id[order][1:] != tile_id[order][:-1], True])
        keys = np.stack([self._z[lo:hi], self._in_ice[lo:hi]], 1)
        j = torch.arange(sub, device=self.device)
        for s, e in zip(cuts[:-1], cuts[1:], strict=True):
            sel_np = order[s:e]
            sel = torch.as_tensor(sel_np, device=self.device)
            k = keys[sel_np]
            starts = np.flatnonzero(np.r_[True, np.any(k[1:] != k[:-1], axis=1)])
            ends = np.r_[starts[1:], len(sel_np)]
            groups = [(int(a), int(c), self._form_factors(int(k[a, 0]), int(k[a, 1]), (sub, sub)))
                      for a, c in zip(starts, ends, strict=True)]
            # the sub-box's pixel [0, 0] in the box: the tile's centre minus half the sub-box
            oy = int(ty[sel[0]]) * tile + tile // 2 - sub // 2
            ox = int(tx[sel[0]]) * tile + tile // 2 - sub // 2
            spectrum = _structure_factor_spectrum(x_a[sel] - ox * p, y_a[sel] - oy * p, b[sel], w[sel], ky, kx,
                                                  groups, self.cdtype)
            v = irfft2(spectrum, (sub, sub)) / (p * p)
            iy = torch.remainder(oy + j, my)
            ix = torch.remainder(ox + j, mx)
            out.index_add_(1, (iy[:, None] * mx + ix[None, :]).reshape(-1), v.reshape(2, -1))
        return out.reshape(2, my, mx)

    # ------------------------------------------------------------------ real-space builder
    def _real_space_patch(self, lo: int, hi: int) -> Patch:
        x_a, y_a = self._grid_xy_a(self.positions_a[lo:hi])
        y0, x0, my, mx = self._box(x_a, y_a)
        p = self.grid.pixel_size_a
        out = torch.zeros((2, my * mx), dtype=self.rdtype, device=self.device)
        zs, ice_flags = self._z[lo:hi], self._in_ice[lo:hi]
        for z in np.unique(zs):
            for ice_flag in (0, 1):
                sel = np.flatnonzero((zs == z) & (ice_flags == ice_flag))
                if sel.size == 0:
                    continue
                amps, widths = self.table.gaussian_terms(int(z))
                terms = [(a, self.absorption_ratio * a, w) for a, w in zip(amps, widths, strict=True)]
                if ice_flag:
                    v = self._volume_a3[int(z)]
                    terms.append((-self.ice.mean_potential_v * v, -self.ice.absorption_potential_v * v,
                                  self.ice.solvent_b_a2))
                idx = torch.as_tensor(sel, device=self.device) + lo
                xs = x_a[sel] - x0 * p
                ys = y_a[sel] - y0 * p
                for a_re, a_im, b in terms:
                    img = _pixel_integrated_gaussians(xs, ys, self.b_iso_a2[idx] + b, self.occupancy[idx], (my, mx), p)
                    out = out + torch.stack([a_re * img, a_im * img]).reshape(2, -1)
        v = out.reshape(2, my, mx) / (p * p)
        return Patch(y0, x0, torch.complex(v[0], v[1]))

    # ------------------------------------------------------------------ public API
    @property
    def patch_graph_is_small(self) -> bool:
        """The Fourier builder's patches keep only the atoms for their backward (multislice then
        checkpoints the transmission alone)."""
        return self.builder == "fourier"

    def has_atoms(self, k: int) -> bool:
        return int(self.slice_bounds[k + 1]) > int(self.slice_bounds[k])

    def slice_patch(self, k: int) -> Patch | None:
        """Projected potential of slice k's atoms (None if it has none); built on demand, never stored."""
        lo, hi = int(self.slice_bounds[k]), int(self.slice_bounds[k + 1])
        if hi <= lo:
            return None
        return self._fourier_patch(lo, hi) if self.builder == "fourier" else self._real_space_patch(lo, hi)


def box_margin_px(pixel_size_a: float, margin_a: float = 24.0) -> int:
    """The margin (px) a slice's atom box keeps around its atoms: the potential's tails and the band limit's
    ringing (at least :data:`MIN_BOX_MARGIN_PX`: the ringing spans pixels, not Å)."""
    return max(MIN_BOX_MARGIN_PX, math.ceil(margin_a / pixel_size_a))


def atom_tile_plan(my: int, mx: int, margin_px: int) -> tuple[int, int] | None:
    """(tile, sub-box) px when a (my, mx) atom box is built tile by tile, else None: the sub-box holds a tile and
    the margin each side (a fast FFT size); tiling pays only when the box spans over two sub-boxes."""
    sub = good_fft_size(max(ATOM_TILE_PX, 2 * margin_px) + 2 * margin_px)
    if max(my, mx) <= 2 * sub:
        return None
    return sub - 2 * margin_px, sub


def _axis_factors(coord_a: torch.Tensor, b_a2: torch.Tensor, weight: torch.Tensor | None, k: torch.Tensor,
                  rdtype: torch.dtype) -> torch.Tensor:
    """(N, K) complex factors w_j exp(-B_j k²/4) exp(-2πi k x_j) along one axis.

    The phase is reduced modulo one cycle in float64 before the complex dtype is formed, so
    complex64 factors keep full precision however far the atom is from the box origin. On the CPU without gradients
    the compiled kernel forms them (a 512² apoferritin exit wave: 0.15 → 0.03 s of factors).
    """
    if native.applies(*(t for t in (coord_a, b_a2, weight, k) if t is not None)):
        return native.axis_factors(coord_a, b_a2, weight, k, rdtype)
    cycles = torch.remainder(coord_a.detach().double()[:, None] * k, 1.0).to(rdtype)
    mag = torch.exp(-b_a2.detach().to(rdtype)[:, None] * (k.to(rdtype) ** 2 / 4))
    if weight is not None:
        mag = mag * weight.detach().to(rdtype)[:, None]
    return polar(mag, -2 * math.pi * cycles)


def _structure_factor_spectrum(x_a, y_a, b_a2, weight, ky, kx, groups, cdtype) -> torch.Tensor:
    """(2, My, Kx) spectrum Σ_e FF_e(k) · Σ_{j∈e} w_j DW_j(k) exp(-2πi k·r_j) (real and imaginary potential):
    per element group, the exact structure factor as one separable complex matrix product."""
    rdtype = cdtype.to_real()
    ey = _axis_factors(y_a, b_a2, weight, ky, rdtype).transpose(0, 1)  # (My, N)
    ex = _axis_factors(x_a, b_a2, None, kx, rdtype)  # (N, Kx)
    spectrum = torch.zeros((2, len(ky), len(kx)), dtype=cdtype, device=ky.device)
    for s, e, ff in groups:
        spectrum = spectrum + ff * (ey[:, s:e] @ ex[s:e])
    return spectrum


class _StructureFactors(torch.autograd.Function):
    """:func:`_structure_factor_spectrum` with a hand-written backward that keeps only the atoms' coordinates,
    B-factors and weights and rebuilds the per-atom factors when the gradient is needed: the graph of a
    slice's potential costs O(atoms) memory instead of O(atoms × box), and the backward is two matrix
    products per element plus four matrix-vector reductions, with no per-operation autograd nodes.

    With G the incoming gradient of the spectrum and S_e = EY_e @ EX_e, the gradient of S_e is
    Σ_c FF_ce G_c; of EY_e, G_S EX_eᴴ; of EX_e, EY_eᴴ G_S. For EY_kj = w_j e^{-B_j k²/4} e^{-2πi k y_j}:
    ∂L/∂y_j = 2π Σ_k k Im(conj(g_kj) EY_kj), ∂L/∂B_j = −Σ_k (k²/4) Re(conj(g_kj) EY_kj),
    ∂L/∂w_j = Σ_k Re(conj(g_kj) EY_kj)/w_j (evaluated without the division); likewise along x.
    """

    @staticmethod
    def forward(ctx, x_a, y_a, b_a2, weight, ky, kx, groups, cdtype):
        ctx.save_for_backward(x_a, y_a, b_a2, weight, ky, kx)
        ctx.groups, ctx.cdtype = groups, cdtype
        return _structure_factor_spectrum(x_a, y_a, b_a2, weight, ky, kx, groups, cdtype)

    @staticmethod
    def backward(ctx, grad):
        x_a, y_a, b_a2, weight, ky, kx = ctx.saved_tensors
        rdtype = ctx.cdtype.to_real()
        ey = _axis_factors(y_a, b_a2, None, ky, rdtype)  # (N, My), without the weights
        ex = _axis_factors(x_a, b_a2, None, kx, rdtype)  # (N, Kx)
        w = weight.detach().to(rdtype)
        g_ey, g_ex = torch.empty_like(ey), torch.empty_like(ex)
        for s, e, ff in ctx.groups:
            g_s = ff[0] * grad[0] + ff[1] * grad[1]  # (My, Kx); FF is real
            g_ey[s:e] = ex[s:e].conj() @ g_s.transpose(0, 1)  # (G_S EX_eᴴ)ᵀ
            g_ex[s:e] = (ey[s:e] * w[s:e, None]).conj() @ g_s  # EY_eᴴ G_S
        py = g_ey.conj() * ey  # conj(g)·EY/w per atom and frequency
        px = g_ex.conj() * ex
        kyr, kxr = ky.to(rdtype), kx.to(rdtype)
        d_y = d_x = d_b = d_w = None
        if ctx.needs_input_grad[1]:
            d_y = (2 * math.pi) * w * (py.imag @ kyr)
        if ctx.needs_input_grad[0]:
            d_x = (2 * math.pi) * (px.imag @ kxr)
        if ctx.needs_input_grad[2]:
            d_b = -(w * (py.real @ (kyr**2 / 4)) + px.real @ (kxr**2 / 4))
        if ctx.needs_input_grad[3]:
            d_w = py.real.sum(1)
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return (cast(d_x, x_a), cast(d_y, y_a), cast(d_b, b_a2), cast(d_w, weight), None, None, None, None)


def embed(patch: Patch, shape: tuple[int, int], fill: complex | float) -> torch.Tensor:
    """Place a patch into a field of ``shape``, the rest filled with ``fill`` (a patch that is the whole field with
    fill 0 is returned as it is, not copied)."""
    my, mx = patch.potential.shape
    pads = (patch.x0, shape[1] - patch.x0 - mx, patch.y0, shape[0] - patch.y0 - my)
    if fill == 0:
        return patch.potential if not any(pads) else F.pad(patch.potential, pads)
    return F.pad(patch.potential - fill, pads) + fill


#: a slice's content is kept on its own box when the box is at most this share of the field (else the field)
CONTENT_BOX_MAX_FRACTION = 0.6
#: the margin (px) of such a box: the band limit's ringing beyond it is dropped
CONTENT_BOX_MARGIN_PX = 128


def content_box(spans: list[tuple[int, int, int, int]], shape: tuple[int, int], margin_px: int,
                periodic: bool) -> tuple[int, int, int, int] | None:
    """The box (y0, x0, height, width) holding every span [y0, y1) × [x0, x1) of a slice's content with
    ``margin_px`` around it (the band limit's ringing) at fast transform sizes, or None when the whole field
    should be used: the box would be over CONTENT_BOX_MAX_FRACTION of it, or (``periodic``) content wraps across
    the field's edge. Spans of a window (not ``periodic``) are cut to it."""
    ny, nx = shape
    if not spans:
        return None
    a = np.asarray(spans, dtype=np.int64)
    y0, x0 = int(a[:, 0].min()) - margin_px, int(a[:, 2].min()) - margin_px
    y1, x1 = int(a[:, 1].max()) + margin_px, int(a[:, 3].max()) + margin_px
    if periodic and (a[:, 0].min() < 0 or a[:, 2].min() < 0 or a[:, 1].max() > ny or a[:, 3].max() > nx):
        return None
    out = []
    for lo, hi, n in ((y0, y1, ny), (x0, x1, nx)):
        size = good_fft_size(max(1, hi - lo))
        if size >= n:
            lo, size = 0, n
        else:  # centred on the content, kept inside the field
            lo = min(max(0, lo - (size - (hi - lo)) // 2), n - size)
        out.append((lo, size))
    (by, my), (bx, mx) = out
    return None if my * mx > CONTENT_BOX_MAX_FRACTION * ny * nx else (by, bx, my, mx)


def merge_patches(a: Patch | None, b: Patch | None, shape: tuple[int, int]) -> Patch | None:
    """The sum of two patches on the smallest box holding both (the whole field when that box is most of it)."""
    if a is None or b is None:
        return a if b is None else b
    (ya, xa), (ha, wa) = (a.y0, a.x0), a.potential.shape
    (yb, xb), (hb, wb) = (b.y0, b.x0), b.potential.shape
    y0, x0 = min(ya, yb), min(xa, xb)
    y1, x1 = max(ya + ha, yb + hb), max(xa + wa, xb + wb)
    if (y1 - y0) * (x1 - x0) > CONTENT_BOX_MAX_FRACTION * shape[0] * shape[1]:
        y0, x0, y1, x1 = 0, 0, shape[0], shape[1]
    box = (y1 - y0, x1 - x0)
    return Patch(y0, x0, embed(Patch(ya - y0, xa - x0, a.potential), box, 0.0)
                 + embed(Patch(yb - y0, xb - x0, b.potential), box, 0.0))


def _pixel_integrated_gaussians(x_a, y_a, b_a2, weight, shape, pixel_size_a, n_sigma: float = 6.0) -> torch.Tensor:
    """Σ_j w_j ∫_pixel G_j / (∫ G_j) for normalised 2-D Gaussians exp(-4π²ρ²/b_j): pixel fractions (flat H·W).

    Exact pixel integrals (erf differences, separable in x and y); windows of ±n_sigma σ.
    """
    my, mx = shape
    p = pixel_size_a
    sigma = torch.sqrt(b_a2.double() / (8 * math.pi**2))
    half = int(math.ceil(n_sigma * float(sigma.detach().max()) / p)) + 1
    offs = torch.arange(-half, half + 1, device=x_a.device, dtype=torch.float64)
    out = torch.zeros(my * mx, dtype=torch.float64, device=x_a.device)
    for chunk in torch.split(torch.arange(len(x_a), device=x_a.device), max(1, 2_000_000 // (len(offs) ** 2))):
        s = sigma[chunk][:, None] * math.sqrt(2.0)

        def axis(c, chunk=chunk, s=s):
            centre = torch.round(c.double()[chunk] / p)
            idx = centre[:, None] + offs  # pixel indices
            lo = (idx - 0.5) * p - c.double()[chunk][:, None]
            frac = 0.5 * (torch.erf((lo + p) / s) - torch.erf(lo / s))
            return idx.long(), frac

        iy, fy = axis(y_a)
        ix, fx = axis(x_a)
        vals = (fy[:, :, None] * fx[:, None, :]) * weight.double()[chunk][:, None, None]
        flat = (iy % my)[:, :, None] * mx + (ix % mx)[:, None, :]
        out = out.index_add(0, flat.reshape(-1), vals.reshape(-1))
    return out.reshape(my, mx).to(x_a.dtype if x_a.is_floating_point() else torch.float32)


def atoms_to_tensors(atoms: Atoms, device=None, dtype=torch.float32):
    """(atomic_number, positions_a, b_iso_a2, occupancy) tensors for :class:`SlicedPotential`."""
    return (
        torch.as_tensor(atoms.atomic_number, device=device),
        torch.as_tensor(atoms.positions_a, device=device, dtype=dtype),
        torch.as_tensor(atoms.b_iso_a2, device=device, dtype=dtype),
        torch.as_tensor(atoms.occupancy, device=device, dtype=dtype),
    )
