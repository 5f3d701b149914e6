"""Structured vitreous ice: the density fluctuations of amorphous water as a Gaussian random field of potential.

The continuum (:class:`~difftem.forward.potential.IceModel`) carries the mean potential and the absorption; this
module adds what the mean leaves out. For molecules of number density n whose centres have the structure factor
S(q) (q = 2π|k|), the potential's 3-D power spectrum is (V² Å³)

    P₃(k) = n C² [ F₂(k) − F₁(k)² + F₁(k)² S(q) ],

with C = h²/(2π m₀ e) = 47.878 V·Å² (turns a scattering factor in Å into V·Å³), F₁ the orientation-averaged
amplitude of one water molecule about its oxygen, F₁ = f_O + 2 f_H j₀(q r_OH), and F₂ the orientation average of
its squared amplitude (Debye), F₂ = f_O² + 2 f_H² + 4 f_O f_H j₀(q r_OH) + 2 f_H² j₀(q r_HH) (independent-atom
electron scattering factors from the run's table; water geometry r_OH = 0.9572 Å, H–O–H 104.52°). Without
intramolecular structure (f_H = 0) this is the textbook n C² f² S(q).

The structure factor of low-density amorphous (LDA, vitreous) ice, :func:`amorphous_ice_structure_factor`, is a
parametrisation of published diffraction features (not a fit to one data set):
- the first sharp diffraction peak at q₁ = 1.70 Å⁻¹ (d = 2π/q₁ = 3.70 Å), X-ray and neutron diffraction of LDA
  (Bellissent-Funel et al., J. Chem. Phys. 87, 2231 (1987); Finney et al., Phys. Rev. Lett. 88, 225503 (2002))
  and the 3.7 Å ring of electron diffraction from vitreous ice (Dubochet et al., Q. Rev. Biophys. 21, 129 (1988));
- the second peak near 3.0 Å⁻¹ and the trough between them near 2.3 Å⁻¹ (same sources);
- S(0) ≈ 0.02 at q → 0: LDA is nearly hyperuniform (Martelli et al., Phys. Rev. Lett. 119, 136002 (2017), S(0) of
  order 10⁻²; liquid water at 300 K has n k_B T κ_T = 0.064);
- S → 1 at high q. Density 0.94 g/cm³ (LDA), n = 0.03142 Å⁻³.
Peak heights and widths are approximate (± 20 %); ``amplitude`` (config ``sample.ice_structure.amplitude``)
scales the whole field (power ∝ amplitude²) for calibration against real micrographs.

A slab of thickness T projects to a 2-D field whose power spectrum is T·P₃(kx, ky, 0) (exact for T ≫ the
correlation length, ~1 nm): :func:`projected_ice_power_spectrum`. The multislice adds, per group of slices of
thickness Δz, either an independent 2-D realisation with spectrum Δz·P₃(kx, ky, 0) (``slices``: the projection of
any stack of them has the slab's spectrum) or samples of one 3-D realisation in the specimen frame (``3d``: every
tilt of a series is a projection of the same ice). Fields are seeded from the run's seed, band-limited to the
multislice's band and multiplied by ``amplitude`` last, so the image is differentiable in it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.fft import freq_grid_per_a, freq_per_a, irfft2, irfft3, rfft3
from ..core.grid import Grid
from .beam import POTENTIAL_CONSTANT_V_A2
from .potential import antialias_mask
from .scattering import ScatteringTable, radial_lookup

#: molecules per Å³ of LDA ice at 0.94 g/cm³ (M = 18.015 g/mol)
LDA_NUMBER_DENSITY_PER_A3 = 0.94 / 18.015 * 0.602214076
R_OH_A = 0.9572
R_HH_A = 2 * R_OH_A * math.sin(math.radians(104.52 / 2))

#: S(q) parametrisation of LDA ice (q in Å⁻¹): S(q) = 1 − (1 − S₀) exp(−q²/2w₀²) + Σ a_i exp(−(q − q_i)²/2w_i²)
S0_LDA = 0.02
LOW_Q_WIDTH_PER_A = 1.2
PEAKS_LDA = ((1.30, 1.70, 0.17),  # first sharp diffraction peak, d = 3.70 Å
             (-0.40, 2.35, 0.25),  # trough
             (0.35, 3.00, 0.30),  # second peak
             (-0.15, 3.90, 0.35),
             (0.08, 4.80, 0.40))
#: the 3-D realisation's voxel: slightly off the pixel so that no view samples it on its nodes (every view then
#: sees the same mean interpolation response, which the spectrum pre-compensates)
VOXEL_DETUNE = 1.0 / 1.03


def amorphous_ice_structure_factor(q_per_a: torch.Tensor) -> torch.Tensor:
    """S(q) of the molecular centres of LDA ice (dimensionless), q = 2π|k| in Å⁻¹ (see the module docstring)."""
    q = q_per_a
    s = 1 - (1 - S0_LDA) * torch.exp(-q * q / (2 * LOW_Q_WIDTH_PER_A**2))
    for a, q0, w in PEAKS_LDA:
        s = s + a * torch.exp(-(q - q0) ** 2 / (2 * w * w))
    return s.clamp_min(0.0)


def _j0(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() < 1e-8, torch.ones_like(x), torch.sin(x) / torch.where(x == 0, 1.0, x))


def water_molecule_factors(k2_per_a2: torch.Tensor, table: ScatteringTable) -> tuple[torch.Tensor, torch.Tensor]:
    """(F₁ in Å, F₂ in Å²): a water molecule's orientation-averaged amplitude about O and squared amplitude."""
    f_o, f_h = table.f_e(8, k2_per_a2), table.f_e(1, k2_per_a2)
    q = 2 * math.pi * torch.sqrt(k2_per_a2)
    j_oh, j_hh = _j0(q * R_OH_A), _j0(q * R_HH_A)
    f1 = f_o + 2 * f_h * j_oh
    f2 = f_o**2 + 2 * f_h**2 + 4 * f_o * f_h * j_oh + 2 * f_h**2 * j_hh
    return f1, f2


def ice_power_spectrum_3d(k2_per_a2: torch.Tensor, table: ScatteringTable, *,
                          density_per_a3: float = LDA_NUMBER_DENSITY_PER_A3) -> torch.Tensor:
    """P₃(k) in V²·Å³: the 3-D power spectrum of vitreous ice's potential fluctuations at |k|² (1/Å²)."""
    k2 = k2_per_a2.double()
    f1, f2 = water_molecule_factors(k2, table)
    s = amorphous_ice_structure_factor(2 * math.pi * torch.sqrt(k2))
    return density_per_a3 * POTENTIAL_CONSTANT_V_A2**2 * (f2 - f1**2 + f1**2 * s)


def projected_ice_power_spectrum(k2_per_a2: torch.Tensor, thickness_a: float, table: ScatteringTable, *,
                                 amplitude: float = 1.0) -> torch.Tensor:
    """Power spectrum (V²·Å⁴, i.e. (V·Å)² per 1/Å²) of the projected ice potential through ``thickness_a`` Å at
    in-plane |k|² (1/Å²): T·P₃(kx, ky, 0) × amplitude². Its integral over k is the projected variance (V·Å)²."""
    return thickness_a * amplitude**2 * ice_power_spectrum_3d(k2_per_a2, table)


def _seed(*parts) -> int:
    """A 63-bit seed from the parts (stable across runs and platforms)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _hermitian_columns(spec: torch.Tensor, nx: int) -> torch.Tensor:
    """Make the kx = 0 (and, for even nx, the Nyquist) column of an rfft half spectrum Hermitian in ky, keeping
    E|X|² (independent complex Gaussians there would lose half their power in the inverse transform)."""
    cols = [0] + ([nx // 2] if nx % 2 == 0 else [])
    for c in cols:
        col = spec[..., c]
        flipped = torch.roll(torch.flip(col, dims=[-1]), 1, dims=-1)  # X[-ky]
        spec[..., c] = (col + flipped.conj()) / math.sqrt(2)
    return spec


@dataclass
class IceStructureModel:
    """Everything a run's structured ice needs, built once per config (``mode``: ``slices`` or ``3d``)."""

    table: ScatteringTable
    pixel_size_a: float
    seed: int
    amplitude: float | torch.Tensor = 1.0
    mode: str = "slices"
    chunk_a: float = 10.0  # thickness of ice merged into one field
    absorption_ratio: float = 0.0  # imaginary/real part of the fluctuation (the ice's own ratio)
    antialias_fraction: float = 2 / 3
    taper_fraction: float = 0.04

    def filter_2d(self, grid: Grid, device, rdtype) -> torch.Tensor:
        """sqrt(P₃(kx, ky, 0)/p²) × band on the rfft half plane of ``grid`` (per Å of thickness)."""
        k2 = grid.k2(device, torch.float64, half=True)
        band = antialias_mask(k2, grid.pixel_size_a, self.antialias_fraction, self.taper_fraction)
        return (torch.sqrt(ice_power_spectrum_3d(k2, self.table)) / grid.pixel_size_a * band).to(rdtype)


class ViewIce:
    """The structured ice of one view on one grid (the field, a window or a tile), chunk by chunk.

    Chunk c covers slices [c·m, (c+1)·m) of the view's slicing (m = ceil(chunk_a / Δz)); its field is the ice's
    projected potential fluctuation over the chunk (V·Å, complex: absorption in proportion), the same whatever
    sub-grid asks (tiles cut it from the field's realisation), so tiles join seamlessly.
    """

    def __init__(self, model: IceStructureModel, field_grid: Grid, view_key, *, volume: IceVolume | None = None,
                 rotation: np.ndarray | None = None, device=None, rdtype=torch.float32,
                 thickness_a: torch.Tensor | None = None, profile=None, continuum_v: complex = 0j,
                 max_half_a: float = 0.0, fluctuations: bool = True):
        self.model, self.field_grid, self.view_key = model, field_grid, view_key
        # a thickness tensor (the differentiable simulator's parameter): each chunk's field is scaled by
        # sqrt(its ice thickness at that value / at the built one), 1 in value, its derivative in the gradient
        self.thickness_a = thickness_a
        self.volume, self.rotation = volume, (np.eye(3) if rotation is None else rotation)
        self.device, self.rdtype = torch.device(device or "cpu"), rdtype
        # a thickness profile (specimen.geometry.IceProfile, not flat): the multislice's uniform ice is the thinnest
        # part; each chunk adds the continuum (mean + i absorption, V) over the rest of the ice its rays cross
        self.profile, self.continuum_v, self.max_half_a = profile, continuum_v, max_half_a
        self.fluctuations = fluctuations
        self._filter = None
        self.n_fields = 0

    def plan(self, z_start_a: float, slice_thickness_a: float, n_slices: int, ice_thickness_a: float):
        """The view's slicing; ``ice_thickness_a``: the uniform slab the multislice applies itself."""
        self.z_start_a, self.dz, self.n_slices = z_start_a, slice_thickness_a, n_slices
        self.uniform_half = 0.5 * ice_thickness_a
        self.half_ice = max(self.uniform_half, self.max_half_a)
        self.per_chunk = max(1, math.ceil(self.model.chunk_a / slice_thickness_a - 1e-9))
        return self

    def chunk_of(self, k: int) -> int | None:
        z0 = self.z_start_a + k * self.dz
        if self.half_ice <= 0 or z0 >= self.half_ice or z0 + self.dz <= -self.half_ice:
            return None
        return k // self.per_chunk

    def last_slice(self, c: int) -> int:
        """The chunk's last slice that holds ice (its field is applied there unless an atom slice comes first)."""
        last = min(self.n_slices, (c + 1) * self.per_chunk) - 1
        while last > c * self.per_chunk and self.chunk_of(last) is None:
            last -= 1
        return last

    def _z_range(self, c: int, half: float | None = None) -> tuple[float, float]:
        half = self.half_ice if half is None else half
        z0 = self.z_start_a + c * self.per_chunk * self.dz
        z1 = self.z_start_a + min(self.n_slices, (c + 1) * self.per_chunk) * self.dz
        return max(z0, -half), min(z1, half)

    def ice_length(self, c: int, grid: Grid, step_a: float = 1.0) -> torch.Tensor:
        """(H, W) Å of ice each pixel's ray crosses inside chunk c: per sub-step of at most ``step_a`` along a tilted
        ray (one step untilted), the overlap of its depths with ±t/(2 cos θ), t the profile's thickness where the
        ray is at the sub-step's middle (a meniscus can be steep: the faces are found to ~ step·tan θ)."""
        z0, z1 = self._z_range(c)
        cos_t = float(self.rotation[2, 2])
        n_sub = 1 if cos_t > 1 - 1e-12 else max(1, math.ceil((z1 - z0) / step_a))
        edges = [z0 + (z1 - z0) * j / n_sub for j in range(n_sub + 1)]
        out = torch.zeros(grid.shape_px, dtype=torch.float64, device=self.device)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            xs, ys, _ = ray_points(self.rotation, grid, 0.5 * (a + b), self.device)
            half = self.profile.thickness_at(xs, ys) / (2 * cos_t)
            out += torch.clamp(torch.minimum(half, torch.full_like(half, b)) - torch.maximum(-half, torch.full_like(
                half, a)), min=0.0)
        return out

    def field(self, c: int, grid: Grid) -> torch.Tensor:
        """Chunk c's complex projected potential (V·Å) on ``grid`` (a sub-grid of the field): the fluctuations
        and, with a profile, the continuum beyond the uniform slab."""
        z0, z1 = self._z_range(c)
        length = self.ice_length(c, grid) if self.profile is not None else None
        real = torch.zeros(grid.shape_px, dtype=self.rdtype, device=self.device)
        if self.fluctuations:
            if self.volume is not None:
                real = self.volume.project(self.rotation, grid, z0, z1, 2 * self.half_ice, profile=self.profile)
            else:
                real = self._slice_realisation(c, 1.0 if length is not None else z1 - z0)
                fy, fx = self.field_grid.origin_px or (self.field_grid.ny // 2, self.field_grid.nx // 2)
                gy, gx = grid.origin_px or (grid.ny // 2, grid.nx // 2)
                y0, x0 = fy - gy, fx - gx
                if (y0, x0, grid.shape_px) != (0, 0, self.field_grid.shape_px):
                    iy = torch.remainder(torch.arange(y0, y0 + grid.ny, device=self.device), self.field_grid.ny)
                    ix = torch.remainder(torch.arange(x0, x0 + grid.nx, device=self.device), self.field_grid.nx)
                    real = real[iy][:, ix]
                if length is not None:  # variance ∝ the ice crossed
                    real = real * torch.sqrt(length).to(real.dtype)
            real = real * self.model.amplitude
        self.n_fields += 1
        if self.thickness_a is not None and torch.is_tensor(self.thickness_a) and self.thickness_a.requires_grad:
            lo, hi = self._z_range(c)
            half = self.thickness_a / 2
            z0 = self.z_start_a + c * self.per_chunk * self.dz
            z1 = self.z_start_a + min(self.n_slices, (c + 1) * self.per_chunk) * self.dz
            t = torch.clamp(torch.minimum(half, half.new_tensor(z1)) - torch.maximum(-half, half.new_tensor(z0)), min=0)
            real = real * torch.sqrt(t / max(hi - lo, 1e-12)).to(real.dtype)
        imag = self.model.absorption_ratio * real
        if length is not None:
            u0, u1 = self._z_range(c, self.uniform_half)
            excess = (length - max(0.0, u1 - u0)).to(real.dtype)
            real = real + self.continuum_v.real * excess
            imag = imag + self.continuum_v.imag * excess
        return torch.complex(real, imag)

    def _slice_realisation(self, c: int, thickness_a: float) -> torch.Tensor:
        """An independent 2-D realisation over the field with spectrum thickness·P₃(kx, ky, 0) (one inverse FFT)."""
        g = self.field_grid
        if self._filter is None:
            self._filter = self.model.filter_2d(g, self.device, self.rdtype)
        gen = torch.Generator(device=self.device).manual_seed(_seed(self.model.seed, self.view_key, c))
        shape = (g.ny, g.nx // 2 + 1)
        noise = torch.complex(torch.randn(shape, generator=gen, device=self.device, dtype=self.rdtype),
                              torch.randn(shape, generator=gen, device=self.device, dtype=self.rdtype))
        n = g.ny * g.nx
        # E|X|² = N, as the transform of unit white noise
        spec = _hermitian_columns(noise * math.sqrt(n / 2), g.nx) * (self._filter * math.sqrt(thickness_a))
        return irfft2(spec, g.shape_px)


class IceVolume:
    """One 3-D realisation of the ice in the specimen frame (voxel ≈ pixel, periodic in x and y, float16), sampled
    by every view along its rotated rays (trilinear, with the mean interpolation loss pre-compensated)."""

    def __init__(self, model: IceStructureModel, shape_zyx: tuple[int, int, int], voxel_a: float, device=None):
        self.model, self.shape, self.voxel_a = model, shape_zyx, voxel_a
        self.device = torch.device(device or "cpu")
        nz, ny, nx = shape_zyx
        gen = torch.Generator(device=self.device).manual_seed(_seed(model.seed, "volume"))
        white = torch.randn(shape_zyx, generator=gen, device=self.device, dtype=torch.float32)
        spec = rfft3(white)
        del white
        kz, ky, kx = freq_grid_per_a(shape_zyx, voxel_a, half=True, device=self.device, dtype=torch.float64)

        def interp_gain(k):  # mean |H|² of linear interpolation at uniformly random offsets
            return 1 - (1 - torch.cos(2 * math.pi * k * voxel_a)) / 3

        ky, kx = ky[0], kx[0]  # (ny, 1), (1, nx//2 + 1)
        # P₃ is radial: tabulated once along |k| rather than the scattering factors evaluated on every plane
        k_max = float(torch.sqrt(kz.abs().max() ** 2 + ky.abs().max() ** 2 + kx.abs().max() ** 2)) * 1.001

        def p3_of_k2(k2):
            return ice_power_spectrum_3d(k2, model.table)

        for iz in range(nz):  # plane by plane: the filter's temporaries stay the size of one plane
            k2 = kz[iz, 0, 0] ** 2 + ky**2 + kx**2
            band = antialias_mask(k2, model.pixel_size_a, model.antialias_fraction, model.taper_fraction)
            gain = interp_gain(kz[iz, 0, 0]) * interp_gain(ky) * interp_gain(kx)
            p3 = radial_lookup(p3_of_k2, torch.sqrt(k2), k_max, 8193)
            spec[iz] *= (torch.sqrt(p3 / gain) / voxel_a**1.5 * band).to(torch.float32)
        values = irfft3(spec, shape_zyx)
        del spec
        self.values = values.to(torch.float16).reshape(-1)  # V

    @property
    def nbytes(self) -> int:
        return self.values.numel() * 2

    def project(self, rotation: np.ndarray, grid: Grid, z0_a: float, z1_a: float, view_ice_a: float,
                profile=None) -> torch.Tensor:
        """∫ V dz over view depths [z0, z1) (inside the ice) at ``grid``'s pixel centres (V·Å), along the view's
        rays through the real (tilted) slab: view depth z′ maps to specimen depth z′·cos θ, so the view's
        horizontal slab of thickness T/cos θ is the tilted slab crossed along the beam. ``profile``: only where
        the ray is inside the ice of that thickness profile."""
        p, v = grid.pixel_size_a, self.voxel_a
        n_sub = max(1, math.ceil((z1_a - z0_a) / p - 1e-9))
        step = (z1_a - z0_a) / n_sub
        out = torch.zeros(grid.shape_px, dtype=torch.float32, device=self.device)
        nz, ny, nx = self.shape
        for j in range(n_sub):
            xs, ys, zs = ray_points(rotation, grid, z0_a + (j + 0.5) * step, self.device)
            sample = self._trilinear(xs / v + nx // 2, ys / v + ny // 2, zs / v + nz / 2 - 0.5)
            if profile is not None:
                sample = sample * (2 * zs.abs() <= profile.thickness_at(xs, ys)).float()
            out += sample
        return out * step

    def _trilinear(self, fx: torch.Tensor, fy: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """Periodic trilinear interpolation at fractional voxel coordinates (x, y, z)."""
        nz, ny, nx = self.shape
        x0, y0, z0 = torch.floor(fx), torch.floor(fy), torch.floor(fz)
        tx, ty, tz = (fx - x0).float(), (fy - y0).float(), (fz - z0).float()
        ix0, iy0, iz0 = x0.long(), y0.long(), z0.long()
        out = torch.zeros(fx.shape, dtype=torch.float32, device=self.device)
        for dz, wz in ((0, 1 - tz), (1, tz)):
            iz = torch.remainder(iz0 + dz, nz) * (ny * nx)
            for dy, wy in ((0, 1 - ty), (1, ty)):
                iy = torch.remainder(iy0 + dy, ny) * nx
                for dx, wx in ((0, 1 - tx), (1, tx)):
                    ix = torch.remainder(ix0 + dx, nx)
                    out += wz * wy * wx * self.values[iz + iy + ix].float()
        return out


def ray_points(rotation: np.ndarray, grid: Grid, z_view_a: float, device=None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Specimen-frame (x, y, z) Å, (H, W) each, where the rays through ``grid``'s pixel centres cross view depth
    ``z_view_a`` of the tilted slab: the point v = (x, y, z_t) with specimen depth (Rᵀ v)_z = z′ cos θ."""
    r = torch.as_tensor(np.asarray(rotation), dtype=torch.float64, device=device)
    p = grid.pixel_size_a
    oy, ox = grid.origin_a
    y = (torch.arange(grid.ny, dtype=torch.float64, device=device) * p - oy)[:, None]
    x = (torch.arange(grid.nx, dtype=torch.float64, device=device) * p - ox)[None, :]
    cos_t = r[2, 2]
    zt = z_view_a - (r[0, 2] * x + r[1, 2] * y) / cos_t
    xs = r[0, 0] * x + r[1, 0] * y + r[2, 0] * zt  # Rᵀ v
    ys = r[0, 1] * x + r[1, 1] * y + r[2, 1] * zt
    return xs, ys, torch.full_like(xs, z_view_a) * cos_t


def volume_shape(field_shape_px: tuple[int, int], pixel_size_a: float, ice_thickness_a: float,
                 max_tilt_deg: float) -> tuple[tuple[int, int, int], float]:
    """((nz, ny, nx), voxel Å) of the 3-D realisation a tilt series needs: every view's rays through the slab stay
    inside one period in x and y (extent W/cos θ_max + T·tan θ_max in both, whatever the axis), z covers the ice
    plus a margin so that the top and bottom faces (periodic in z) are uncorrelated."""
    v = pixel_size_a * VOXEL_DETUNE
    c, t = math.cos(math.radians(max_tilt_deg)), math.tan(math.radians(abs(max_tilt_deg)))
    extent = max(field_shape_px) * pixel_size_a / c + ice_thickness_a * t + 8 * pixel_size_a
    n_xy = int(math.ceil(extent / v))
    n_xy += n_xy % 2
    nz = int(math.ceil(ice_thickness_a / v)) + 16
    return (nz, n_xy, n_xy), v


def volume_bytes(shape_zyx: tuple[int, int, int]) -> int:
    """Peak bytes to build the realisation and keep it: float32 noise and its half complex spectrum (≈ 4 + 4 per
    voxel), then the spectrum and the float32 field, then the field and its float16 copy (kept)."""
    n = shape_zyx[0] * shape_zyx[1] * shape_zyx[2]
    return int(n * (4 + 4 + 2) + 2 * n)

#: bytes per pixel a view's structured ice works with: its complex field, and the ray sampling's float64
#: coordinates, indices and weights (3d) or the noise and its spectrum (slices)
ICE_FIELD_BYTES_PER_PX = 16
ICE_SAMPLING_BYTES_PER_PX = {"3d": 256, "slices": 48}


def radial_power_spectrum(image: torch.Tensor, pixel_size_a: float, n_bins: int = 200
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(s in 1/Å, mean |FFT|² per ring) of a (H, W) image, its mean removed (bins up to Nyquist)."""
    from ..core.fft import fft2

    img = image.double() - image.double().mean()
    power = (fft2(img).abs() ** 2).cpu().numpy()
    ky = freq_per_a(img.shape[0], pixel_size_a).numpy()[:, None]
    kx = freq_per_a(img.shape[1], pixel_size_a).numpy()[None, :]
    k = np.sqrt(ky**2 + kx**2)
    edges = np.linspace(0, 0.5 / pixel_size_a, n_bins + 1)
    idx = np.digitize(k.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < n_bins)
    sums = np.bincount(idx[ok], power.ravel()[ok], n_bins)
    counts = np.bincount(idx[ok], None, n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), sums / np.maximum(counts, 1)
