"""Maps and projectors of particle types drawn from a density map, and the map's calibration into volts.

The map is a band-limited function sampled on its own voxels (any size, per axis), so its continuous Fourier
transform inside its band is v_x v_y v_z Σ ρ[n] exp(−2πi k·r_n). That sum is evaluated exactly at the frequencies
of whatever grid the simulation needs (the slab map at pixel/2, the projector's padded cube at the pixel) as three
separable matrix products, one per axis: resampling in Fourier space, with the map's own origin as a phase, no
interpolation. Frequencies beyond the map's Nyquist are zero (a raised cosine over its last 10 %), and the pixel's
band limit and interpolation prefilters are those of the atom path (:mod:`difftem.forward.particle_map`).

Potential (V): V(r) = s·ρ(r) − U_ice·(D ∗ G)(r), imaginary part ratio·s·ρ − U_abs·(D ∗ G), where G is the atom
path's displaced-solvent Gaussian (B = 80 Å²) and D the displaced volume's density: by default proportional to the
map, D = ρ·V_d/∫ρ with V_d the mass's volume at 1.35 g/cm³ (atoms displace their own volume where their potential
is; a mask would change the particle's low-resolution shape, where protein and displaced ice nearly cancel), or
with ``displaced: mask`` the molecule's mask (specimen/density.py), so the map displaces as much ice as the same
mass of atoms either way. With ``solvent: included`` the map already is the contrast
against the solvent and nothing is subtracted (its absorption is the ice's ratio times it).

The scale s (V per map unit) comes from the entry's ``calibration``:

* ``scale``: given;
* ``mass``: the map's integral s·Σρ·v³ equals the potential integral of ``mass_kda`` of average protein,
  Σ_e n_e C f_e(0) per Da over the averagine composition (Senko et al. 1995: C 4.9384, H 7.7583, N 1.3577,
  O 1.4773, S 0.0417 per 111.1254 Da; without H when ``hydrogens`` is false), minus U_ice × 1.23 Å³/Da with
  ``solvent: included``;
* ``model``: least squares s = Re Σ ρ̂* V̂ / Σ |ρ̂|² over 0 < |k| ≤ 1/fit_resolution_a on the map's own grid, V̂
  the exact transform of the atomic model's potential (form factors, B-factors) in the map's frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.elements import atomic_mass_da
from ..core.fft import freq_per_a, irfft3, k2_per_a2, rfft3
from ..specimen.density import VOLUME_A3_PER_DA, DensityMap
from .particle_map import (
    PASSBAND_FRACTION,
    FourierProjector,
    ParticleMap,
    _bspline_dft,
    _soft_band,
    map_side_voxels,
    projector_from_spectrum,
    projector_size,
)
from .potential import IceModel
from .scattering import ScatteringTable

#: averagine: atoms per residue of average mass 111.1254 Da (Senko, Beu & McLafferty 1995)
AVERAGINE = {6: 4.9384, 1: 7.7583, 7: 1.3577, 8: 1.4773, 16: 0.0417}
AVERAGINE_DA = 111.1254
MAP_BAND_EDGE = 0.9  # the map's band: flat to this fraction of its Nyquist, a raised cosine to its Nyquist


def protein_potential_per_da(table: ScatteringTable, hydrogens: bool = True) -> float:
    """∫V d³r per Da of average protein (V·Å³/Da): Σ_e n_e C f_e(0) / mass over the averagine composition."""
    total = sum(n * table.projected_integral_v_a3(z) for z, n in AVERAGINE.items() if hydrogens or z != 1)
    return total / AVERAGINE_DA


def map_spectrum(values: torch.Tensor, voxel_a, origin_a, kz: torch.Tensor, ky: torch.Tensor,
                 kx: torch.Tensor) -> torch.Tensor:
    """(C, Kz, Ky, Kx) continuous Fourier transform (map units·Å³) of (C, Z, Y, X) samples whose voxel [0, 0, 0]
    sits at ``origin_a`` (x, y, z), at the frequencies kz, ky, kx (1/Å): Π v · Σ ρ[n] exp(−2πi k·r_n), three
    matrix products; zero beyond the map's Nyquist (see the module's docstring)."""
    dev = values.device
    z, y, x = values.shape[-3:]

    def axis(k, n, v, o):
        r = o + torch.arange(n, dtype=torch.float64, device=dev) * v
        return torch.exp(-2j * math.pi * k[:, None].double() * r[None, :])  # (K, n)

    vx, vy, vz = (float(v) for v in voxel_a)
    ox, oy, oz = (float(v) for v in origin_a)
    t = torch.einsum("czyx,ux->czyu", values.to(torch.complex128), axis(kx, x, vx, ox))
    t = torch.einsum("czyu,vy->czvu", t, axis(ky, y, vy, oy))
    t = torch.einsum("czvu,wz->cwvu", t, axis(kz, z, vz, oz))
    k = torch.sqrt(kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)
    nyquist = 0.5 / max(vx, vy, vz)
    return t * (vx * vy * vz) * _soft_band(k, MAP_BAND_EDGE * nyquist, nyquist)


def _complex_spectrum(density: DensityMap, kz, ky, kx, origin_a, ice: IceModel | None, absorption_ratio: float,
                      device) -> torch.Tensor:
    """(2, Kz, Ky, Kx): the transforms (V·Å³) of the real and imaginary potential of the calibrated map."""
    displace = ice is not None and ice.thickness_a > 0 and density.settings.solvent == "subtract"
    by_mask = displace and density.settings.displaced == "mask"
    chans = [density.values] + ([density.mask.astype(np.float64)] if by_mask else [])
    vals = torch.as_tensor(np.stack(chans), dtype=torch.float64, device=device)
    spec = map_spectrum(vals, density.voxel_a, origin_a, kz, ky, kx)
    if displace and not by_mask:  # the displaced volume where the density is, as atoms displace it
        spec = torch.cat([spec, spec[:1] * (displaced_volume_a3(density) / density_integral(density))])
    s = density.scale_v
    if density.settings.solvent == "included":
        ratio = ice.absorption_ratio if ice is not None else absorption_ratio
        return torch.stack([s * spec[0], ratio * s * spec[0]])
    re, im = s * spec[0], absorption_ratio * s * spec[0]
    if displace:
        k2 = kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2
        solvent = spec[1] * torch.exp(-ice.solvent_b_a2 * k2 / 4)
        re, im = re - ice.mean_potential_v * solvent, im - ice.absorption_potential_v * solvent
    return torch.stack([re, im])


def displaced_volume_a3(density: DensityMap) -> float:
    """The ice the molecule displaces (Å³): its mass at 1.35 g/cm³, else its mask's volume (threshold)."""
    if density.mass_da is not None:
        return density.mass_da * VOLUME_A3_PER_DA
    return float(density.mask.sum()) * density.voxel_volume_a3


def density_integral(density: DensityMap) -> float:
    """Σρ·v³ (map units·Å³) of the flattened map."""
    return float(density.values.sum()) * density.voxel_volume_a3


def build_density_map(density: DensityMap, *, pixel_size_a: float, oversampling: float = 2.0,
                      passband_fraction: float = PASSBAND_FRACTION, ice: IceModel | None, absorption_ratio: float,
                      device=None, dtype: torch.dtype = torch.float32) -> ParticleMap:
    """The :class:`ParticleMap` (V, voxel pixel/oversampling) of a calibrated density map, for slab sampling."""
    device = torch.device(device or "cpu")
    v = pixel_size_a / oversampling
    nyquist = 0.5 / pixel_size_a
    d, radius = map_side_voxels(density.radius_a, v, pixel_size_a)
    kz = freq_per_a(d, v, device=device)
    kx = freq_per_a(d, v, half=True, device=device)
    # the cube's voxel d//2 is the type origin: positions relative to its voxel 0
    spec = _complex_spectrum(density, kz, kz, kx, density.origin_a + (d // 2) * v, ice, absorption_ratio, device)
    k = torch.sqrt(k2_per_a2((d, d, d), v, half=True, device=device))
    interp = _bspline_dft(kz, v)[:, None, None] * _bspline_dft(kz, v)[None, :, None] * _bspline_dft(kx, v)[None, None]
    spec = spec * (_soft_band(k, passband_fraction * nyquist, nyquist) / interp)
    vol = irfft3(spec, (d, d, d)) / v**3
    return ParticleMap(vol.to(dtype), v, radius, nyquist)


def build_density_projector(density: DensityMap, *, pixel_size_a: float,
                            passband_fraction: float = PASSBAND_FRACTION, ice: IceModel | None,
                            absorption_ratio: float, device=None, pad: float = 2.0) -> FourierProjector:
    """The :class:`FourierProjector` of a calibrated density map (whole-copy projections)."""
    device = torch.device(device or "cpu")
    p = pixel_size_a
    nyquist = 0.5 / p
    n, support = projector_size(density.radius_a, p, pad)
    k1 = freq_per_a(n, p, device=device)
    spec = _complex_spectrum(density, k1, k1, k1, density.origin_a, ice, absorption_ratio, device)
    spec = spec * _soft_band(torch.sqrt(k2_per_a2((n, n, n), p, device=device)), passband_fraction * nyquist,
                             nyquist)
    solvent_subtracted = ice is not None and ice.thickness_a > 0 and density.settings.solvent == "subtract"
    proportional = (density.settings.solvent == "included" or not solvent_subtracted
                    or abs(ice.absorption_ratio - absorption_ratio) < 1e-12)
    return projector_from_spectrum(spec, p, support, absorption_ratio if density.settings.solvent == "subtract"
                                   else (ice.absorption_ratio if ice is not None else absorption_ratio), proportional)


# ---------------------------------------------------------------------------------------------- calibration
def model_spectrum(atoms, table: ScatteringTable, kz: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor,
                   origin_a, ice: IceModel | None = None) -> torch.Tensor:
    """(Kz, Ky, Kx) exact transform (V·Å³) of the atoms' potential (positions relative to ``origin_a``), minus the
    ice they displace when ``ice`` is given; per element, Σ_a w_a e^{−B_a k²/4} e^{−2πik·r_a} as a product of
    per-axis factors (the Debye–Waller Gaussian is separable too), summed by one einsum."""
    dev = kz.device
    pos = torch.as_tensor(atoms.positions_a - np.asarray(origin_a), dtype=torch.float64, device=dev)
    b = torch.as_tensor(atoms.b_iso_a2, dtype=torch.float64, device=dev)
    w = torch.as_tensor(atoms.occupancy, dtype=torch.float64, device=dev)
    k = torch.sqrt(kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)
    out = torch.zeros(k.shape, dtype=torch.complex128, device=dev)
    zs = np.asarray(atoms.atomic_number)

    def axis(kk, c, sel):
        return torch.exp(-b[sel][None, :] * kk[:, None] ** 2 / 4 - 2j * math.pi * kk[:, None] * pos[sel, c][None, :])

    chunk = max(1, 2_000_000 // max(1, len(kz) * len(ky)))  # atoms per batch: a (Kz, Ky, batch) temporary
    for z in np.unique(zs):
        every = np.flatnonzero(zs == z)
        structure = torch.zeros(k.shape, dtype=torch.complex128, device=dev)
        for lo in range(0, len(every), chunk):
            sel = torch.as_tensor(every[lo:lo + chunk], device=dev)
            ez = axis(kz, 2, sel) * w[sel][None, :]
            structure += torch.einsum("wva,ua->wvu", ez[:, None, :] * axis(ky, 1, sel)[None], axis(kx, 0, sel))
        ff = table.projected_form_factor(int(z), k**2)
        if ice is not None:
            ff = ff - ice.mean_potential_v * float(atomic_mass_da(np.array([z]))[0]) * VOLUME_A3_PER_DA \
                * torch.exp(-ice.solvent_b_a2 * k**2 / 4)
        out += ff * structure
    return out


def calibrate(density: DensityMap, table: ScatteringTable, ice: IceModel) -> float:
    """Set and return ``density.scale_v`` (V per map unit) from the entry's calibration; the record (method,
    scale, and the numbers it came from) goes into ``density.calibration``."""
    cfg = density.settings
    rec = density.calibration
    included = cfg.solvent == "included"
    integral = density_integral(density)
    if cfg.calibration == "scale":
        s = float(cfg.scale_v)
    elif cfg.calibration == "mass":
        per_da = protein_potential_per_da(table, cfg.hydrogens) - (ice.mean_potential_v * VOLUME_A3_PER_DA
                                                                   if included else 0.0)
        target = per_da * density.mass_da
        if not integral > 0:
            raise _calibration_error(density, f"the map's integral is {integral:.4g} (not positive) after its "
                                              "solvent level was removed; use calibration scale or model")
        s = target / integral
        rec.update(target_integral_v_a3=target, potential_per_da_v_a3=per_da)
    else:
        s = _least_squares_scale(density, table, ice if included else None, rec)
    if not (math.isfinite(s) and s > 0):
        raise _calibration_error(density, f"the calibration gives a scale of {s:.4g} V per map unit; the map and "
                                          "the model do not agree in sign (check the map's hand and frame)")
    rec.update(method=cfg.calibration, scale_v_per_unit=s, map_integral_units_a3=integral,
               potential_integral_v_a3=s * integral)
    density.scale_v = s
    return s


def _least_squares_scale(density: DensityMap, table: ScatteringTable, ice: IceModel | None, rec: dict) -> float:
    vals = torch.as_tensor(density.values, dtype=torch.float64)
    nz, ny, nx = vals.shape
    vx, vy, vz = density.voxel_a
    kz, ky = freq_per_a(nz, float(vz)), freq_per_a(ny, float(vy))
    kx = freq_per_a(nx, float(vx), half=True)
    k_fit = 1.0 / density.settings.fit_resolution_a
    # only the frequencies of the fit: a box of them on each axis
    sz, sy, sx = (torch.nonzero(k.abs() <= k_fit).squeeze(1) for k in (kz, ky, kx))
    # the map's transform with voxel [0, 0, 0] at its origin: the DFT times the voxel volume and the origin's phase
    rho = rfft3(vals)[sz][:, sy][:, :, sx] * float(np.prod(density.voxel_a))
    kz, ky, kx = kz[sz], ky[sy], kx[sx]
    model = model_spectrum(density.model, table, kz, ky, kx, density.origin_a, ice)
    k = torch.sqrt(kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)
    weight = ((k > 0) & (k <= k_fit)).double() * torch.where(kx[None, None, :] > 0, 2.0, 1.0)  # rfft half: ×2
    num = float((weight * (rho.conj() * model).real).sum())
    den = float((weight * rho.abs() ** 2).sum())
    s = num / den if den > 0 else float("nan")
    resid = float((weight * (model - s * rho).abs() ** 2).sum() / (weight * model.abs() ** 2).sum())
    rec.update(fit_resolution_a=density.settings.fit_resolution_a, fit_relative_residual=math.sqrt(resid),
               model_atoms=len(density.model))
    return s


def _calibration_error(density: DensityMap, detail: str):
    from ..core.errors import ConfigError

    return ConfigError(f"map {density.source}: {detail}")
