"""A particle type's potential as a cached 3-D map, so that thousands of copies cost samples, not atoms.

The map is the particle's complex potential (V; real = electrostatic minus the ice it displaces,
imaginary = absorption) on a cubic voxel grid, band-limited to the *image* pixel's Nyquist
frequency, so that rotated copies can be sampled at pixel spacing without aliasing. It is built
once per type by gridding (the non-uniform FFT idea): every atom is spread as a small Gaussian
of variance σ_s² + B/(8π²) on the voxel grid, the grid is Fourier transformed, the spreading
Gaussian exp(−2π²σ_s²k²) is divided out and the exact per-element form factor C·f_e(|k|) applied.
What remains is the exact structure factor (with each atom's Debye–Waller factor) up to the
aliasing of the spreading Gaussian, which is below 1e-3 inside the band.

Copies are placed by trilinear interpolation of the map (``grid_sample``) at pixel centres and
at z steps of one voxel inside each multislice slab; the map is pre-divided by the mean transfer
of trilinear interpolation (Π sinc²(k_i v)), so interpolation does not soften it. Voxels are
``pixel / oversampling`` (2 by default), which keeps the band limit at half the map's Nyquist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.complex_ops import polar
from ..core.elements import atomic_mass_da
from ..core.fft import fft3, fftshift, freq_per_a, good_fft_size, ifft3, irfft2, irfft3, k2_per_a2, rfft3
from ..specimen.structure import Atoms
from . import native
from .potential import IceModel, displaced_volume_a3
from .scattering import RadialGrid, ScatteringTable

SPREAD_SIGMA_VOXELS = 0.8  # σ_s of the spreading Gaussian: aliasing e^{-π²σ²·…} vs deapodisation gain
SPREAD_HALF_WIDTH = 3  # voxels each side (3.75 σ_s: truncation below 1e-3 of the peak)
MAP_MARGIN_A = 24.0  # potential tails and the displaced-ice Gaussian beyond the outermost atom
MAP_MARGIN_PX = 12  # ringing of the band limit's taper decays within this many pixels
# flat band (fraction of Nyquist) = the multislice aperture; a cosine beyond keeps ringing short
PASSBAND_FRACTION = 2 / 3
INTERP_POWER = 1


@dataclass
class ParticleMap:
    """A complex potential map in the particle's own frame, centred on its origin.

    ``volume`` is (2, D, D, D): real and imaginary potential in V; voxel [i, j, k] = (z, y, x)
    has its centre at ((k − D//2)·v, (j − D//2)·v, (i − D//2)·v) Å.
    """

    volume: torch.Tensor
    voxel_a: float
    radius_a: float  # radius of the sphere (about the origin) outside which the map is ~0
    band_limit_per_a: float

    @property
    def size(self) -> int:
        return int(self.volume.shape[-1])

    @property
    def nbytes(self) -> int:
        return self.volume.numel() * self.volume.element_size()

    def filtered(self, transfer) -> ParticleMap:
        """A copy with an isotropic filter H(|k|) applied (k in 1/Å), e.g. radiation damage."""
        d = self.size
        k2 = k2_per_a2((d, d, d), self.voxel_a, half=True, device=self.volume.device)
        spec = rfft3(self.volume.double()) * transfer(torch.sqrt(k2))
        vol = irfft3(spec, (d, d, d)).to(self.volume.dtype)
        return ParticleMap(vol, self.voxel_a, self.radius_a, self.band_limit_per_a)


def _element_factors(table, z: int, mass_da: float, k: RadialGrid, absorption_ratio: float, ice: IceModel | None,
                     imaginary: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(real, imaginary) 3-D form factors (V·Å³) of element z on the grid ``k``: C·f_e, minus displaced ice (the
    imaginary part None unless ``imaginary``)."""
    def real(k2):
        ff = table.projected_form_factor(z, k2)
        if ice is not None:
            ff = ff - ice.mean_potential_v * displaced_volume_a3(z, mass_da) * torch.exp(-ice.solvent_b_a2 * k2 / 4)
        return ff

    def imag(k2):
        ff = absorption_ratio * table.projected_form_factor(z, k2)
        if ice is not None:
            displaced_a3 = displaced_volume_a3(z, mass_da)
            ff = ff - ice.absorption_potential_v * displaced_a3 * torch.exp(-ice.solvent_b_a2 * k2 / 4)
        return ff

    return k(real), (k(imag) if imaginary else None)


def _bspline_dft(k, voxel_a):
    return (2 + torch.cos(2 * math.pi * k * voxel_a)) / 3


def map_size_voxels(atoms: Atoms, voxel_a: float, pixel_size_a: float) -> tuple[int, float]:
    """(cube side in voxels, radius in Å) for a map holding the atoms plus the potential's tails and the
    ringing of the band limit (which decays over a few pixels)."""
    r = float(np.sqrt((atoms.positions_a**2).sum(1)).max()) if len(atoms) else 0.0
    return map_side_voxels(r, voxel_a, pixel_size_a)


def map_side_voxels(radius_a: float, voxel_a: float, pixel_size_a: float) -> tuple[int, float]:
    """(cube side in voxels, radius in Å) of the map of atoms within ``radius_a`` of its centre (see
    :func:`map_size_voxels`); the memory estimate sizes maps with it before any is built."""
    radius = radius_a + max(MAP_MARGIN_A, MAP_MARGIN_PX * pixel_size_a)
    side = 2 * math.ceil(radius / voxel_a) + 2
    return good_fft_size(side), radius


def _spread(grid_flat: torch.Tensor, pos_vox: torch.Tensor, sigma_vox: torch.Tensor, weight: torch.Tensor,
            d: int, max_entries: int = 8_000_000) -> None:
    """Add Σ_j w_j N(r; r_j, σ_j²) (normalised per voxel volume) into a flat (D³,) grid.

    Atoms are taken in order of width, in chunks whose kernels reach 3.75 σ of their widest atom,
    so narrow kernels stay cheap and no atom loses more than 1e-3 of its weight to truncation.
    """
    order = torch.argsort(sigma_vox)
    pos_vox, sigma_vox, weight = pos_vox[order], sigma_vox[order], weight[order]
    chunks = list(_spread_chunks(sigma_vox, max_entries))
    if native.applies(grid_flat, pos_vox, sigma_vox, weight) and grid_flat.dtype == torch.float64:
        half = torch.cat([torch.full((hi - lo,), float(h), dtype=torch.float64) for lo, hi, h in chunks]) \
            if chunks else torch.zeros(0, dtype=torch.float64)
        native.spread_gaussians(grid_flat, d, pos_vox, sigma_vox, weight, half)
        return
    for lo, hi, half in chunks:
        offs = torch.arange(-half, half + 1, device=pos_vox.device)
        p, s, w = pos_vox[lo:hi], sigma_vox[lo:hi], weight[lo:hi]
        idx = torch.round(p).long()[:, :, None] + offs  # (n, 3, W) voxel indices, (z, y, x)
        sd = s[:, None, None]
        g = torch.exp(-0.5 * ((idx - p[:, :, None]) / sd) ** 2) / (math.sqrt(2 * math.pi) * sd)
        gz, gy, gx = g[:, 0], g[:, 1], g[:, 2]
        vals = w[:, None, None, None] * gz[:, :, None, None] * gy[:, None, :, None] * gx[:, None, None, :]
        iz, iy, ix = torch.remainder(idx, d).unbind(1)  # periodic: far tails wrap instead of overflowing
        flat = (iz[:, :, None, None] * d + iy[:, None, :, None]) * d + ix[:, None, None, :]
        grid_flat.index_add_(0, flat.reshape(-1), vals.reshape(-1).to(grid_flat.dtype))


def _spread_chunks(sigma_sorted: torch.Tensor, max_entries: int):
    """(lo, hi, half) of :func:`_spread`'s chunks: atoms lo:hi (by width) with kernels reaching ``half`` voxels, at most
    ``max_entries`` kernel values at a time."""
    lo, n = 0, sigma_sorted.shape[0]
    while lo < n:
        half = max(SPREAD_HALF_WIDTH, math.ceil(3.75 * float(sigma_sorted[min(n - 1, lo + 1023)])))
        chunk = max(1024, max_entries // (2 * half + 1) ** 3)
        hi = min(n, lo + chunk)
        yield lo, hi, max(SPREAD_HALF_WIDTH, math.ceil(3.75 * float(sigma_sorted[hi - 1])))
        lo = hi


def build_particle_map(atoms: Atoms, table: ScatteringTable, *, pixel_size_a: float, oversampling: float = 2.0,
                       passband_fraction: float = PASSBAND_FRACTION, ice: IceModel | None, absorption_ratio: float,
                       device=None, dtype: torch.dtype = torch.float32) -> ParticleMap:
    """The complex potential map (V) of ``atoms`` (their own frame, origin at the map centre).

    Voxels are ``pixel_size_a / oversampling``. The band is flat up to ``passband_fraction`` × the
    pixel's Nyquist frequency (the multislice aperture) and falls to zero at Nyquist with a raised
    cosine: a smooth edge keeps the band limit's ringing short, so a small cube holds it.
    ``ice``: when given (and thicker than 0), each atom displaces the ice of its volume, as in
    :class:`~difftem.potential.SlicedPotential`; ``absorption_ratio``: atoms' imaginary/real potential.
    """
    device = torch.device(device or "cpu")
    voxel_a = pixel_size_a / oversampling
    nyquist = 0.5 / pixel_size_a
    d, radius = map_size_voxels(atoms, voxel_a, pixel_size_a)
    centre = d // 2
    pos_vox = torch.as_tensor(atoms.positions_a[:, ::-1].copy(), dtype=torch.float64, device=device) / voxel_a + centre
    b = torch.as_tensor(atoms.b_iso_a2, dtype=torch.float64, device=device)
    sigma_s = SPREAD_SIGMA_VOXELS
    weight = torch.as_tensor(atoms.occupancy, dtype=torch.float64, device=device)
    z_all = np.asarray(atoms.atomic_number)
    k2 = k2_per_a2((d, d, d), voxel_a, half=True, device=device)
    k = torch.sqrt(k2)
    # divide out the spreading Gaussian and the mean trilinear-interpolation transfer; keep the band
    deapodise = torch.exp(2 * math.pi**2 * (sigma_s * voxel_a) ** 2 * k2)
    kz = freq_per_a(d, voxel_a, device=device)
    kx = freq_per_a(d, voxel_a, half=True, device=device)
    # cubic B-spline coefficients: divide by the sampled spline's transfer (2 + cos 2πkv)/3 per axis
    interp = _bspline_dft(kz, voxel_a)[:, None, None] * _bspline_dft(kz, voxel_a)[None, :, None] \
        * _bspline_dft(kx, voxel_a)[None, None, :]
    band = _soft_band(k, passband_fraction * nyquist, nyquist)
    common = deapodise * band / interp  # DFT of the spread grid × this ≈ Σ_j w_j e^{-B_j k²/4} e^{-2πik·r_j}
    spectrum = torch.zeros((2,) + k2.shape, dtype=torch.complex128, device=device)
    masses = atomic_mass_da(np.arange(0, 93))
    displace = ice is not None and ice.thickness_a > 0
    k_grid = RadialGrid(k, nyquist)
    for z in np.unique(z_all):
        sel = torch.as_tensor(np.flatnonzero(z_all == z), device=device)
        # the element's smallest B goes to Fourier space; only the excess widens the spread kernels
        b_floor = float(b[sel].min())
        sigma_vox = torch.sqrt(sigma_s**2 + (b[sel] - b_floor) / (8 * math.pi**2) / voxel_a**2)
        grid = torch.zeros(d * d * d, dtype=torch.float64, device=device)
        _spread(grid, pos_vox[sel], sigma_vox, weight[sel], d)
        structure = rfft3(grid.reshape(d, d, d)) * (common * torch.exp(-b_floor * k2 / 4))
        ff_re, ff_im = _element_factors(table, int(z), float(masses[z]), k_grid, absorption_ratio,
                                        ice if displace else None)
        spectrum[0] += ff_re * structure
        spectrum[1] += ff_im * structure
    vol = irfft3(spectrum, (d, d, d)) / voxel_a**3
    return ParticleMap(vol.to(dtype), voxel_a, radius, nyquist)


def _soft_band(k: torch.Tensor, k_pass: float, k_stop: float) -> torch.Tensor:
    """1 up to k_pass, raised cosine down to 0 at k_stop."""
    edge = 0.5 * (1 + torch.cos(torch.pi * (k - k_pass) / max(k_stop - k_pass, 1e-12)))
    return torch.where(k <= k_pass, torch.ones_like(k), torch.where(k >= k_stop, torch.zeros_like(k), edge))


def cubic_bspline_sample(coeffs: torch.Tensor, index_xyz: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline interpolation of a (C, D, H, W) coefficient volume at fractional voxel indices
    (..., 3) ordered (x, y, z), as 8 trilinear look-ups (each axis' four weights folded into two
    linear fetches, one ``grid_sample`` call for all eight); returns (C, ...). Outside the volume the
    coefficients are zero."""
    dt = coeffs.dtype
    x = index_xyz.to(dt)
    i = torch.floor(x)
    a = x - i
    a2, a3 = a * a, a * a * a
    w0, w1 = (1 - a) ** 3 / 6, (4 - 6 * a2 + 3 * a3) / 6
    w2, w3 = (1 + 3 * a + 3 * a2 - 3 * a3) / 6, a3 / 6
    g = torch.stack([w0 + w1, w2 + w3])  # (2, ..., 3): weights of the two fetches per axis
    h = torch.stack([i - 1 + w1 / g[0], i + 1 + w3 / g[1]])  # their positions (voxel index)
    half = torch.tensor(coeffs.shape[:0:-1], dtype=dt, device=coeffs.device) / 2  # (W, H, D) / 2
    h = (h + 0.5) / half - 1  # align_corners=False: voxel centres
    sel = torch.tensor([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], device=coeffs.device)
    ax = torch.arange(3, device=coeffs.device)
    shape = index_xyz.shape[:-1]
    flat_h = h.reshape(2, -1, 3)
    flat_g = g.reshape(2, -1, 3)
    grid = flat_h[sel, :, ax].permute(0, 2, 1)  # (8, M, 3): per combination, per point, per axis
    wgt = flat_g[sel, :, ax].prod(1)  # (8, M)
    m = grid.shape[1]
    out = F.grid_sample(coeffs[None], grid.reshape(1, 8, m, 1, 3), mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0, :, :, :, 0]  # (C, 8, M)
    return (out * wgt).sum(1).reshape((coeffs.shape[0],) + shape)


#: zero rows and columns after each tiled plane: a cubic B-spline reaches voxels i − 1 … i + 2 of a point whose floor is
#: i, and points with i from −2 to the side length still touch the volume, so taps from −3 to side + 2 must read zeros
PLANE_PAD = 3
#: a Fourier slice is sampled out to this many projector voxels past the band's end: beyond, the cubic B-spline's
#: coefficients are the prefilter's ringing of a band that tapers to zero, below 1e-6 of the slice
BAND_REACH_VOXELS = 3
#: projectors up to this size also keep their coefficients as tiled planes (CPU): twice the memory, half the time
PLANES_MAX_BYTES = 64 * 2**20


def tile_planes(coeffs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A (C, D, H, W) volume's z planes side by side as one (1, C, rows, cols) image, ``ncol`` planes per row of
    tiles, each followed by PLANE_PAD zero rows and columns (see :func:`cubic_bspline_sample_planes`)."""
    c, d, h, w = coeffs.shape
    ncol = math.ceil(math.sqrt(d))
    nrow = math.ceil(d / ncol)
    vol = F.pad(coeffs, (0, PLANE_PAD, 0, PLANE_PAD, 0, nrow * ncol - d))
    image = vol.reshape(c, nrow, ncol, h + PLANE_PAD, w + PLANE_PAD).permute(0, 1, 3, 2, 4)
    return image.reshape(1, c, nrow * (h + PLANE_PAD), ncol * (w + PLANE_PAD)).contiguous(), ncol


def cubic_bspline_sample_planes(planes: torch.Tensor, ncol: int, shape_dhw: tuple[int, int, int],
                                index_xyz: torch.Tensor) -> torch.Tensor:
    """:func:`cubic_bspline_sample` of the volume that :func:`tile_planes` laid out as ``planes``: the same spline,
    as four z taps of two-by-two bilinear fetches in (x, y), all through one 2-D ``grid_sample`` (its CPU kernel is
    vectorised, the 3-D one is not: about twice as fast for the Fourier slices of small projectors). Returns (C, ...);
    outside the volume the coefficients are zero."""
    d, h, w = shape_dhw
    dt = planes.dtype
    x = index_xyz.reshape(-1, 3).to(dt)
    m = x.shape[0]
    i = torch.floor(x)
    a = x - i
    a2 = a * a
    a3 = a2 * a
    b = 1 - a
    w0, w3 = b * b * b / 6, a3 / 6  # the spline's four weights; w2 = 1 − w0 − w1 − w3
    w1 = a3.mul(0.5).sub_(a2).add_(2 / 3)
    g0 = w0 + w1  # the two fetches per axis: weights g0, 1 − g0 at voxel positions h0, h1
    h0 = w1.div(g0).add_(i).sub_(1)
    h1 = w3.div(1 - g0).add_(i).add_(1)
    rows, cols = planes.shape[-2:]
    # align_corners=False: pixel j of the tiled image at (2j + 1)/size − 1
    scale = torch.tensor([2.0 / cols, 2.0 / rows], dtype=dt, device=x.device)
    reach = torch.tensor([w + 2.0, h + 2.0], dtype=dt, device=x.device)
    fxy = torch.minimum(torch.stack([h0[:, :2], h1[:, :2]]).clamp_(min=-3.0), reach).mul_(scale)  # (2, M, (x, y))
    taps = i[:, 2].long() + torch.arange(-1, 3, device=x.device)[:, None]  # (4, M) z planes
    # a point whose x or y floor lies outside [−2, side] touches no voxel (and would read a neighbouring tile)
    inside = (i[:, 0] >= -2) & (i[:, 0] <= w) & (i[:, 1] >= -2) & (i[:, 1] <= h)
    wz = torch.stack([w0[:, 2], w1[:, 2], 1 - g0[:, 2] - w3[:, 2], w3[:, 2]]) * ((taps >= 0) & (taps < d) & inside)
    tile = torch.arange(d, device=x.device)
    origin = torch.stack([(tile % ncol) * (w + PLANE_PAD), (tile // ncol) * (h + PLANE_PAD)], 1).to(dt) * scale \
        + (scale / 2 - 1)  # (d, (x, y)) each plane's tile origin
    org = origin.index_select(0, taps.clamp_(0, d - 1).view(-1)).view(4, 1, 1, m, 2)
    # (y fetch, x fetch, point, (x, y)), then one broadcast sum (z tap, y fetch, x fetch, point, (x, y))
    pair = torch.stack([fxy[None, :, :, 0].expand(2, 2, m), fxy[:, None, :, 1].expand(2, 2, m)], -1)
    grid = org + pair
    gx, gy = torch.stack([g0[:, 0], 1 - g0[:, 0]]), torch.stack([g0[:, 1], 1 - g0[:, 1]])
    wgt = wz.view(4, 1, m) * (gy[:, None, :] * gx[None, :, :]).view(1, 4, m)
    out = F.grid_sample(planes, grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # (1, C, 1, 16·M)
    c = planes.shape[1]
    return out.view(c, 16, m).mul_(wgt.view(16, m)).sum(1).reshape((c,) + index_xyz.shape[:-1])


def sample_slab(pmap: ParticleMap, rotations: torch.Tensor, centres_px: torch.Tensor, pixel_size_a: float,
                z0_a: float, z1_a: float, box_px: int, n_z: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected potential (V·Å) of copies of ``pmap`` inside the slab z ∈ [z0, z1), per copy on a box.

    rotations: (B, 3, 3) active rotations (particle frame → scene); centres_px: (B, 3) copy centres
    as (x, y) in field pixels (fractional) and z in Å. Returns (patches (B, 2, box, box) real/imag,
    corners (B, 2) integer (y0, x0) field pixel of each box's [0, 0]).
    """
    dev = pmap.volume.device
    nb = rotations.shape[0]
    v = pmap.voxel_a
    # z steps of at most one pixel: the map holds no frequency above the pixel's Nyquist, so the
    # midpoint sum is exact for whole copies and close for the slab's share of one
    nz = n_z or max(1, math.ceil((z1_a - z0_a) / pixel_size_a - 1e-9))
    dz = (z1_a - z0_a) / nz
    zs = z0_a + (torch.arange(nz, device=dev, dtype=torch.float64) + 0.5) * dz  # (nz,) absolute z, Å
    corner = torch.floor(centres_px[:, :2] - box_px / 2 + 0.5).long()  # (B, 2) as (x0, y0)
    j = torch.arange(box_px, device=dev, dtype=torch.float64)
    # scene-frame offsets (Å) of each sample from the copy centre
    dx = (corner[:, 0:1].double() + j[None, :] - centres_px[:, 0:1]) * pixel_size_a  # (B, box)
    dy = (corner[:, 1:2].double() + j[None, :] - centres_px[:, 1:2]) * pixel_size_a
    dzs = zs[None, :] - centres_px[:, 2:3]  # (B, nz)
    rel = torch.stack(torch.broadcast_tensors(dx[:, None, None, :], dy[:, None, :, None], dzs[:, :, None, None]), -1)
    # particle frame: r_p = Rᵀ r  (row vectors: r_p = r @ R)
    local = (rel.reshape(nb, -1, 3) @ rotations.double()).reshape(-1, 3)  # (B·nz·box², 3) in Å, (x, y, z)
    # sample only where the map holds anything (its sphere, plus the spline's reach): a slab cuts caps off
    # copies, and a sphere fills half its box
    keep = torch.nonzero((local * local).sum(1) <= (pmap.radius_a + 2 * v) ** 2).squeeze(1)
    samples = torch.zeros((pmap.volume.shape[0], local.shape[0]), dtype=pmap.volume.dtype, device=dev)
    if keep.numel():
        samples[:, keep] = cubic_bspline_sample(pmap.volume, local[keep] / v + pmap.size // 2)
    proj = samples.reshape(2, nb, nz, box_px, box_px).sum(2) * dz
    return proj.transpose(0, 1), torch.stack([corner[:, 1], corner[:, 0]], 1)


# ---------------------------------------------------------------------------------------------- projections
@dataclass
class FourierProjector:
    """Whole-particle projections by the Fourier-slice theorem, for copies thin enough (in units of the
    Fresnel spread) to sit in one multislice slice.

    ``coeffs`` (C, N, N, N): cubic B-spline coefficients of the particle's 3-D Fourier transform
    V̂(k) (V·Å³; channels Re/Im of the real potential's transform, then — C = 4 — of the
    absorption's), on a grid of spacing 1/(N·p) with k = 0 at index N//2: the transform of the map
    zero-padded to twice its support, so that interpolating it is accurate. When atoms and ice
    absorb in the same proportion the absorption is ``absorption_ratio`` × the potential and C = 2.
    A copy's projected potential is the central slice V̂(Rᵀk) on the half plane kx ≥ 0 (the
    potential is real), times a phase ramp for its sub-pixel position, inverse-transformed.
    """

    coeffs: torch.Tensor
    pixel_size_a: float
    support_a: float  # radius holding the particle's potential (atoms + tails)
    absorption_ratio: float | None = None  # set when C = 2
    band_limit_per_a: float | None = None  # where the transform's band ends (None: sample every frequency)
    _planes: tuple | None = field(default=None, init=False, repr=False, compare=False)
    _padded: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)  # for native.spline_slices
    _slices: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        return int(self.coeffs.shape[-1])

    @property
    def nbytes(self) -> int:
        held = self._planes[0] if self._planes is not None else None
        padded = 0 if self._padded is None else self._padded.nbytes
        return padded + sum(t.numel() * t.element_size() for t in (self.coeffs, held) if t is not None)

    def planes(self) -> tuple[torch.Tensor, int] | None:
        """The coefficients as tiled planes for :func:`cubic_bspline_sample_planes` (made on first use), or None for
        a projector above PLANES_MAX_BYTES (sampled by :func:`cubic_bspline_sample`: no second copy)."""
        if self._planes is None and self.coeffs.numel() * self.coeffs.element_size() <= PLANES_MAX_BYTES \
                and self.coeffs.device.type == "cpu":
            self._planes = tile_planes(self.coeffs)
        return self._planes

    def sample(self, index_xyz: torch.Tensor) -> torch.Tensor:
        """The coefficients' cubic B-spline at fractional indices (..., 3) (x, y, z); (C, ...)."""
        planes = self.planes()
        if planes is None:
            return cubic_bspline_sample(self.coeffs, index_xyz)
        return cubic_bspline_sample_planes(planes[0], planes[1], tuple(self.coeffs.shape[1:]), index_xyz)

    def box_px(self) -> int:
        return projection_box_px(self.support_a, self.pixel_size_a)

    def slice_frequencies(self, box_px: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The frequencies a copy's slice samples on a ``box_px`` box: ((K, 2) (kx, ky) in 1/Å, float64; (K,) their
        flat index in the (box, box//2 + 1) half plane). Past the band's end and the spline's reach
        (BAND_REACH_VOXELS) the slice is zero, so only the disc inside is sampled; made once per box."""
        cached = self._slices.get(box_px)
        if cached is None:
            dev, p, n = self.coeffs.device, self.pixel_size_a, self.size
            ky, kx = torch.meshgrid(freq_per_a(box_px, p, device=dev), freq_per_a(box_px, p, half=True, device=dev),
                                    indexing="ij")
            k = torch.stack([kx.reshape(-1), ky.reshape(-1)], 1)
            if self.band_limit_per_a is None:
                flat = torch.arange(k.shape[0], device=dev)
            else:
                reach = self.band_limit_per_a + BAND_REACH_VOXELS / (n * p)
                flat = torch.nonzero((k * k).sum(1) <= reach * reach).squeeze(1)
            cached = self._slices[box_px] = (k[flat].contiguous(), flat)
        return cached

    def project(self, rotations: torch.Tensor, offsets_a: torch.Tensor, box_px: int,
                transfer=None) -> torch.Tensor:
        """(B, 2, box, box) projected potential (V·Å; real, imaginary) of B copies.

        rotations (B, 3, 3) type → scene; offsets_a (B, 2) (x, y) of each copy centre from its box's
        pixel [0, 0], in Å. ``transfer``: optional isotropic H(|k|) (e.g. radiation damage).
        """
        p, n = self.pixel_size_a, self.size
        k, flat = self.slice_frequencies(box_px)
        nb, half = rotations.shape[0], box_px // 2 + 1
        full = torch.zeros((nb, self.coeffs.shape[0] // 2, box_px * half), dtype=torch.complex64, device=k.device)
        tr = transfer(k.norm(dim=1)).float() if transfer is not None else torch.ones(k.shape[0], device=k.device)
        # 1/p² makes the inverse DFT a projected potential (V·Å)
        if native.applies(self.coeffs, rotations, offsets_a, tr) and self.coeffs.numel() * 4 <= PLANES_MAX_BYTES:
            if self._padded is None:
                self._padded = native.padded_channels_last(self.coeffs)
            full[:, :, flat] = native.spline_slices(self._padded, n, k, rotations, offsets_a, tr / (p * p), n * p,
                                                    n // 2)
        else:
            # Rᵀk of the scene's (kx, ky, 0) as row vectors: k @ R's first two rows
            index = (k @ rotations[:, :2, :].double()) * (n * p) + n // 2  # (B, K, 3) projector voxels
            c = self.sample(index)  # (C, B, K)
            spec = torch.complex(c[0::2].float(), c[1::2].float())  # (C/2, B, K)
            if transfer is not None:
                spec = spec * tr
            # the copy's sub-pixel position as a phase ramp
            angle = (offsets_a.double() @ k.T).mul_(-2 * math.pi).float()  # (B, K)
            ramp = polar(torch.full_like(angle, 1 / (p * p)), angle)
            full[:, :, flat] = (spec * ramp).transpose(0, 1)
        out = irfft2(full.view(nb, -1, box_px, half), (box_px, box_px))
        if out.shape[1] == 1:
            out = torch.cat([out, self.absorption_ratio * out], 1)
        return out


def projector_size(radius_a: float, pixel_size_a: float, pad: float = 2.0) -> tuple[int, float]:
    """(padded cube side N, support radius in Å) of the projector of atoms within ``radius_a`` of its centre; a
    copy's projection box is :meth:`FourierProjector.box_px` of that support."""
    support = radius_a + max(MAP_MARGIN_A, 8 * pixel_size_a)
    return good_fft_size(math.ceil(pad * (2 * support / pixel_size_a + 2))), support


def projection_box_px(support_a: float, pixel_size_a: float) -> int:
    """The box (px) a copy's projection is computed on."""
    return good_fft_size(2 * math.ceil(support_a / pixel_size_a) + 4)


def build_fourier_projector(atoms: Atoms, table: ScatteringTable, *, pixel_size_a: float,
                            passband_fraction: float = PASSBAND_FRACTION, ice: IceModel | None, absorption_ratio: float,
                            device=None, pad: float = 2.0) -> FourierProjector:
    """The particle's 3-D transform on a padded cube of voxel = pixel (see :class:`FourierProjector`).

    Gridding as in :func:`build_particle_map` but with a wider spreading Gaussian (σ = 1 voxel:
    aliasing below 2e-3 up to the pass band at one voxel per pixel)."""
    device = torch.device(device or "cpu")
    p = pixel_size_a
    nyquist = 0.5 / p
    r = float(np.sqrt((atoms.positions_a**2).sum(1)).max()) if len(atoms) else 0.0
    n, support = projector_size(r, p, pad)
    sigma_s = 1.0
    pos_vox = torch.as_tensor(atoms.positions_a[:, ::-1].copy(), dtype=torch.float64, device=device) / p
    b = torch.as_tensor(atoms.b_iso_a2, dtype=torch.float64, device=device)
    weight = torch.as_tensor(atoms.occupancy, dtype=torch.float64, device=device)
    # the grid is real: its transform's half spectrum (kx ≥ 0) holds it all
    k2 = k2_per_a2((n, n, n), p, half=True, device=device)
    k = torch.sqrt(k2)
    k_grid = RadialGrid(k, nyquist)
    band = _soft_band(k, passband_fraction * nyquist, nyquist)
    common = band * torch.exp(2 * math.pi**2 * (sigma_s * p) ** 2 * k2)
    masses = atomic_mass_da(np.arange(0, 93))
    z_all = np.asarray(atoms.atomic_number)
    displace = ice is not None and ice.thickness_a > 0
    proportional = not displace or abs(ice.absorption_ratio - absorption_ratio) < 1e-12
    # proportional: the absorption is absorption_ratio × the potential, one channel holds both
    spectrum = torch.zeros((1 if proportional else 2,) + k2.shape, dtype=torch.complex128, device=device)
    for z in np.unique(z_all):
        sel = torch.as_tensor(np.flatnonzero(z_all == z), device=device)
        b_floor = float(b[sel].min())
        sigma_vox = torch.sqrt(sigma_s**2 + (b[sel] - b_floor) / (8 * math.pi**2) / p**2)
        grid = torch.zeros(n * n * n, dtype=torch.float64, device=device)
        _spread(grid, pos_vox[sel], sigma_vox, weight[sel], n)  # origin at voxel 0, periodic
        structure = rfft3(grid.reshape(n, n, n)).mul_(common * torch.exp(-b_floor * k2 / 4))
        ff_re, ff_im = _element_factors(table, int(z), float(masses[z]), k_grid, absorption_ratio,
                                        ice if displace else None, imaginary=not proportional)
        spectrum[0] += ff_re * structure
        if not proportional:
            spectrum[1] += ff_im * structure
    del grid, structure
    projector = projector_from_spectrum(spectrum, p, support, absorption_ratio, proportional, half=True)
    projector.band_limit_per_a = nyquist  # the soft band ends there
    return projector


def projector_from_spectrum(spectrum: torch.Tensor, pixel_size_a: float, support_a: float, absorption_ratio: float,
                            proportional: bool, *, half: bool = False) -> FourierProjector:
    """The projector of a (C, n, n, n) transform (C = 2: real, imaginary potential; C ≥ 1 when ``proportional``;
    k = 0 at index 0, band-limited; ``half``: the (C, n, n, n//2 + 1) half spectrum of real potentials): cubic
    B-spline prefiltered, centred; one complex channel when the absorption is ``absorption_ratio`` × it."""
    n = spectrum.shape[-2]
    # cubic B-spline prefilter along k = division by the sampled spline's transform in the dual (real) domain
    m = torch.arange(n, device=spectrum.device, dtype=torch.float64)
    bhat = (2 + torch.cos(2 * math.pi * m / n)) / 3
    dual = irfft3(spectrum, (n, n, n)) if half else ifft3(spectrum)
    dual = dual / (bhat[:, None, None] * bhat[None, :, None] * bhat[None, None, :])
    spectrum = fft3(dual[:1] if proportional else dual)
    del dual
    # proportional: the absorption is a multiple of the potential, one complex channel; centred (k = 0 at n//2)
    coeffs = torch.stack([part for c in spectrum for part in (c.real, c.imag)]).float()
    return FourierProjector(fftshift(coeffs, dim=(-3, -2, -1)).contiguous(), pixel_size_a, support_a,
                            absorption_ratio if proportional else None)
