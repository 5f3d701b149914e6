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
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.fft import freq_grid_per_a, freq_per_a, irfft2, irfft3
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
                          density_per_a3: float = LDA_NUMBER_DENSITY_PER_A3, structure_factor=None) -> torch.Tensor:
    """P₃(k) in V²·Å³: the 3-D power spectrum of vitreous ice's potential fluctuations at |k|² (1/Å²).
    ``structure_factor``: S(q) of the molecular centres (q = 2π|k| in Å⁻¹); default LDA ice's (the pseudo-water
    cross-check passes an explicit configuration's own)."""
    k2 = k2_per_a2.double()
    f1, f2 = water_molecule_factors(k2, table)
    s = (structure_factor or amorphous_ice_structure_factor)(2 * math.pi * torch.sqrt(k2))
    return density_per_a3 * POTENTIAL_CONSTANT_V_A2**2 * (f2 - f1**2 + f1**2 * s)


def projected_ice_power_spectrum(k2_per_a2: torch.Tensor, thickness_a: float, table: ScatteringTable, *,
                                 amplitude: float = 1.0) -> torch.Tensor:
    """Power spectrum (V²·Å⁴, i.e. (V·Å)² per 1/Å²) of the projected ice potential through ``thickness_a`` Å at
    in-plane |k|² (1/Å²): T·P₃(kx, ky, 0) × amplitude². Its integral over k is the projected variance (V·Å)²."""
    return thickness_a * amplitude**2 * ice_power_spectrum_3d(k2_per_a2, table)


#: Fresnel phase (rad) at the band edge allowed across one chunk of ice (its fluctuations applied at one depth)
CHUNK_FRESNEL_RAD = 0.1
MIN_CHUNK_A = 10.0


def auto_chunk_a(pixel_size_a: float, wavelength_a: float, antialias_fraction: float = 2 / 3) -> float:
    """The ice depth (Å) one field may stand for: where π λ Δz k_max² reaches 0.1 rad at the band edge k_max, at
    least 10 Å (15 Å at 1 Å/px and 300 kV, 360 Å at 5 Å/px: coarse pixels need few ice fields)."""
    k_max = antialias_fraction * 0.5 / pixel_size_a
    return max(MIN_CHUNK_A, CHUNK_FRESNEL_RAD / (math.pi * wavelength_a * k_max**2))


def middle_slice(layers, c: int) -> int:
    """Of chunk c's slices that ``layers.chunk_of`` assigns to it, the one whose entrance is nearest their middle."""
    lo, hi = c * layers.per_chunk, min(layers.n_slices, (c + 1) * layers.per_chunk) - 1
    while hi > lo and layers.chunk_of(hi) is None:
        hi -= 1
    while lo < hi and layers.chunk_of(lo) is None:
        lo += 1
    return min(hi, lo + (hi - lo + 1) // 2)


def _seed(*parts) -> int:
    """A 63-bit seed from the parts (stable across runs and platforms)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _hermitian_columns(spec: torch.Tensor, nx: int) -> torch.Tensor:
    """Make the kx = 0 (and, for even nx, the Nyquist) column (2-D) or plane (3-D) of an rfft half spectrum
    Hermitian in the other frequencies, keeping E|X|² (independent complex Gaussians there would lose half their
    power in the inverse transform)."""
    dims = list(range(spec.dim() - 1))
    for c in [0] + ([nx // 2] if nx % 2 == 0 else []):
        col = spec[..., c]
        mirrored = torch.roll(torch.flip(col, dims=dims), [1] * len(dims), dims=dims)  # X[−ky] or X[−kz, −ky]
        spec[..., c] = (col + mirrored.conj()) / math.sqrt(2)
    return spec


def _white_half_spectrum(shape_zyx: tuple[int, int, int], seed: int, device) -> torch.Tensor:
    """The rfft half spectrum (complex64) of unit white noise on ``shape_zyx``, drawn directly (E|X|² = N, the
    kx = 0 and Nyquist planes Hermitian in (kz, ky)): no forward transform of a real volume."""
    nz, ny, nx = shape_zyx
    gen = torch.Generator(device=device).manual_seed(seed)
    half = (nz, ny, nx // 2 + 1)
    spec = torch.complex(torch.randn(half, generator=gen, device=device), torch.randn(half, generator=gen,
                                                                                      device=device))
    spec *= math.sqrt(nz * ny * nx / 2)
    return _hermitian_columns(spec, nx)


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
    _filters: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def filter_2d(self, grid: Grid, device, rdtype) -> torch.Tensor:
        """sqrt(P₃(kx, ky, 0)/p²) × band on the rfft half plane of ``grid`` (per Å of thickness); made once per
        grid and kept (every view of a series asks for the same one)."""
        key = (grid.shape_px, grid.pixel_size_a, str(device), rdtype)
        if key not in self._filters:
            k2 = grid.k2(device, torch.float64, half=True)
            band = antialias_mask(k2, grid.pixel_size_a, self.antialias_fraction, self.taper_fraction)
            self._filters[key] = (torch.sqrt(ice_power_spectrum_3d(k2, self.table)) / grid.pixel_size_a
                                  * band).to(rdtype)
        return self._filters[key]


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

    def apply_slice(self, c: int) -> int:
        """The slice chunk c's field is applied in: the one whose entrance is nearest the middle of the chunk's
        slices that hold ice (a chunk's ice then acts at its mean depth, so coarse chunks make no focus error)."""
        return middle_slice(self, c)

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
                real = self.volume.project(self.rotation, grid, z0, z1, profile=self.profile)
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
    """One 3-D realisation of the ice in the specimen frame (voxel ≈ pixel, periodic, float16), every view's chunk a
    sum over the voxel planes its rays cross (bilinear within a plane, its mean loss pre-compensated).

    The volume's axes are turned in-plane by the tilt axis angle ``axis_deg`` (its y along the axis), so that a tilt
    series' rays stretch it along x only: a W × H field needs W/cos θ along x but only H along y."""

    def __init__(self, model: IceStructureModel, shape_zyx: tuple[int, int, int], voxel_a: float, device=None, *,
                 axis_deg: float = 0.0):
        self.model, self.shape, self.voxel_a = model, shape_zyx, voxel_a
        self.device = torch.device(device or "cpu")
        a = math.radians(axis_deg)
        self.cos_axis, self.sin_axis = math.cos(a), math.sin(a)
        nz, ny, nx = shape_zyx
        spec = _white_half_spectrum(shape_zyx, _seed(model.seed, "volume"), self.device)
        kz, ky, kx = freq_grid_per_a(shape_zyx, voxel_a, half=True, device=self.device, dtype=torch.float64)

        def interp_gain(k):  # mean |H|² of linear interpolation at uniformly random offsets
            return 1 - (1 - torch.cos(2 * math.pi * k * voxel_a)) / 3

        ky, kx = ky[0], kx[0]  # (ny, 1), (1, nx//2 + 1)
        # planes are sampled on their nodes in z and bilinearly within: only x and y lose power
        gain = interp_gain(ky) * interp_gain(kx)
        # P₃ is radial: tabulated once along |k| rather than the scattering factors evaluated on every plane
        k_max = float(torch.sqrt(kz.abs().max() ** 2 + ky.abs().max() ** 2 + kx.abs().max() ** 2)) * 1.001

        def p3_of_k2(k2):
            return ice_power_spectrum_3d(k2, model.table)

        for iz in range(nz):  # plane by plane: the filter's temporaries stay the size of one plane
            k2 = kz[iz, 0, 0] ** 2 + ky**2 + kx**2
            band = antialias_mask(k2, model.pixel_size_a, model.antialias_fraction, model.taper_fraction)
            p3 = radial_lookup(p3_of_k2, torch.sqrt(k2), k_max, 8193)
            spec[iz] *= (torch.sqrt(p3 / gain) / voxel_a**1.5 * band).to(torch.float32)
        values = irfft3(spec, shape_zyx)
        del spec
        self.values = values.to(torch.float16)  # V, (nz, ny, nx)

    @property
    def nbytes(self) -> int:
        return self.values.numel() * 2

    def _to_volume_frame(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Specimen (x, y) Å → fractional voxel (x, y) of the volume (turned by the tilt axis)."""
        c, s = self.cos_axis, self.sin_axis
        _, ny, nx = self.shape
        return (c * xs + s * ys) / self.voxel_a + nx // 2, (-s * xs + c * ys) / self.voxel_a + ny // 2

    def project(self, rotation: np.ndarray, grid: Grid, z0_a: float, z1_a: float, *, profile=None,
                planes_per_call: int = 8) -> torch.Tensor:
        """∫ V dz over view depths [z0, z1) (inside the ice) at ``grid``'s pixel centres (V·Å), along the view's
        rays through the real (tilted) slab: view depth z′ is specimen depth z′·cos θ, so the chunk holds the voxel
        planes of specimen depths [z0 cos θ, z1 cos θ); each is sampled where the rays cross it and weighted by the
        ray length in its slab (its overlap with the chunk / cos θ). ``profile``: only where the ray is inside the
        ice of that thickness profile."""
        r = np.asarray(rotation, dtype=np.float64)
        cos_t, v = float(r[2, 2]), self.voxel_a
        nz, ny, nx = self.shape
        out = torch.zeros(grid.shape_px, dtype=torch.float32, device=self.device)
        lo, hi = sorted((z0_a * cos_t, z1_a * cos_t))
        # plane iz holds specimen depths (iz − nz/2 + [0, 1))·v
        first, last = math.floor(lo / v + nz / 2), math.ceil(hi / v + nz / 2) - 1
        planes = np.arange(first, last + 1)
        top = (planes - nz / 2) * v
        weights = (np.minimum(top + v, hi) - np.maximum(top, lo)) / cos_t
        keep = weights > 1e-12 * v
        planes, weights = planes[keep], weights[keep]
        if not len(planes):
            return out
        xs0, ys0, _ = ray_points(rotation, grid, 0.0, self.device)
        fx0, fy0 = self._to_volume_frame(xs0, ys0)
        base = torch.stack([fx0, fy0], -1).float()  # (H, W, 2) voxel (x, y) where the rays cross depth 0
        flat = base.reshape(-1, 2)
        bounds = flat.amin(0).double().cpu().numpy(), flat.amax(0).double().cpu().numpy()
        c, s = self.cos_axis, self.sin_axis  # the ray's move per Å of view depth, in voxels
        step = np.array([(c * r[2, 0] + s * r[2, 1]) / v, (-s * r[2, 0] + c * r[2, 1]) / v])
        grid_buf = torch.empty((planes_per_call,) + grid.shape_px + (2,), dtype=torch.float32, device=self.device)
        for j in range(0, len(planes), planes_per_call):
            iz, w = planes[j:j + planes_per_call], weights[j:j + planes_per_call]
            depth = (iz - nz / 2 + 0.5) * v / cos_t
            sample = self._bilinear(iz, base, bounds, depth[:, None] * step, grid_buf[:len(iz)])
            if profile is not None:
                d = torch.as_tensor(depth, dtype=torch.float64, device=self.device)[:, None, None]
                inside = 2 * (d * cos_t).abs() <= profile.thickness_at(xs0 + float(r[2, 0]) * d,
                                                                        ys0 + float(r[2, 1]) * d)
                sample = sample * inside.float()
            out += torch.einsum("n,nhw->hw", torch.as_tensor(w, dtype=torch.float32, device=self.device), sample)
        return out

    def _bilinear(self, planes: np.ndarray, base: torch.Tensor, bounds, shift: np.ndarray,
                  grid_buf: torch.Tensor) -> torch.Tensor:
        """(n, H, W) values of the n consecutive ``planes`` at fractional voxel (x, y) = ``base`` (H, W, 2, within
        ``bounds``) + ``shift`` (n, 2), periodic: the planes' crop the points fall in (indices wrapped), in float32,
        sampled by one ``grid_sample`` (its sampling grid written into ``grid_buf``)."""
        nz, ny, nx = self.shape
        lo = np.floor(bounds[0] + shift.min(0)).astype(int)
        (x_lo, y_lo), (w, h) = lo, np.floor(bounds[1] + shift.max(0)).astype(int) - lo + 2
        z_lo, z_hi = int(planes[0]), int(planes[-1]) + 1
        if z_lo >= 0 and z_hi <= nz and x_lo >= 0 and x_lo + w <= nx and y_lo >= 0 and y_lo + h <= ny:
            crop = self.values[z_lo:z_hi, y_lo:y_lo + h, x_lo:x_lo + w]
        else:
            iz = torch.as_tensor(np.remainder(planes, nz), device=self.device)
            iy = torch.remainder(torch.arange(y_lo, y_lo + h, device=self.device), ny)
            ix = torch.remainder(torch.arange(x_lo, x_lo + w, device=self.device), nx)
            crop = self.values[iz][:, iy][:, :, ix]
        # align_corners: −1 and 1 are the crop's first and last nodes
        scale = np.array([2 / max(w - 1, 1), 2 / max(h - 1, 1)])
        offset = torch.as_tensor((shift - lo) * scale - 1, dtype=torch.float32, device=self.device)
        torch.add((base * torch.as_tensor(scale, dtype=torch.float32, device=self.device))[None],
                  offset[:, None, None, :], out=grid_buf)
        return torch.nn.functional.grid_sample(crop.float()[:, None], grid_buf, mode="bilinear",
                                               padding_mode="border", align_corners=True)[:, 0]


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
                 max_tilt_deg: float, axis_deg: float = 0.0) -> tuple[tuple[int, int, int], float]:
    """((nz, ny, nx), voxel Å) of the 3-D realisation a tilt series about the axis at ``axis_deg`` needs, in the
    volume's frame (y along the axis): one period holds each view's pixels at any one depth, W⊥/cos θ_max across
    the axis and H∥ along it (W⊥, H∥: the field's extents across and along the axis), so no two pixels of a view
    see the same ice (a ray may wrap: its depths differ); z covers the ice plus a margin so that the top and
    bottom faces (periodic in z) are uncorrelated."""
    v = pixel_size_a * VOXEL_DETUNE
    c = math.cos(math.radians(max_tilt_deg))
    a = math.radians(axis_deg)
    h_a, w_a = (n * pixel_size_a for n in field_shape_px)
    across = w_a * abs(math.cos(a)) + h_a * abs(math.sin(a))
    along = w_a * abs(math.sin(a)) + h_a * abs(math.cos(a))

    def even(extent_a):
        n = int(math.ceil((extent_a + 8 * pixel_size_a) / v))
        return n + n % 2

    nz = int(math.ceil(ice_thickness_a / v)) + 16
    return (nz, even(along), even(across / c)), v


def volume_bytes(shape_zyx: tuple[int, int, int]) -> int:
    """Peak bytes to build the realisation and keep it: its half complex spectrum (≈ 4 per voxel) and the inverse
    transform's complex intermediate (≈ 4) and float32 field (4), then the field and its float16 copy (kept)."""
    n = shape_zyx[0] * shape_zyx[1] * shape_zyx[2]
    return int(n * (4 + 4 + 2) + 2 * n)

#: seconds per unit of work on one CPU thread (measured on the 2-core machine, benchmarks/bench_ice.py): building
#: the 3-D volume, per voxel·log2(voxels); sampling it, per voxel plane crossed and pixel; one per-slice field, per
#: chunk, pixel and log2(pixels)
T_ICE_VOLUME = 2e-9
T_ICE_PLANE_PX = 1.2e-8
T_ICE_FIELD = 1e-9


def ice_seconds(mode: str, field_shape_px: tuple[int, int], ice_thickness_a: float, n_views: int, chunk_a: float,
                volume_shape_zyx: tuple[int, int, int] | None = None, voxel_a: float = 1.0) -> float:
    """Estimated single-thread seconds of a run's structured ice (``3d`` or ``slices``) over ``n_views`` views of
    a ``field_shape_px`` field through ``ice_thickness_a`` Å (the views' extra path at tilt left out)."""
    px = field_shape_px[0] * field_shape_px[1]
    if mode == "3d":
        n = math.prod(volume_shape_zyx)
        return T_ICE_VOLUME * n * math.log2(n) + n_views * T_ICE_PLANE_PX * px * ice_thickness_a / voxel_a
    chunks = max(1, math.ceil(ice_thickness_a / chunk_a))
    return n_views * T_ICE_FIELD * chunks * px * math.log2(max(px, 2))


#: bytes per pixel a view's structured ice works with: its complex field, and the plane sampling's float64
#: coordinates, grid, float32 crop and samples for 8 planes at a time (3d) or the noise and its spectrum (slices)
ICE_FIELD_BYTES_PER_PX = 16
ICE_SAMPLING_BYTES_PER_PX = {"3d": 320, "slices": 48}


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
