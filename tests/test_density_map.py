"""Particles from density maps: Fourier resampling, calibration into volts, images against the atom path, bad maps."""

import math

import mrcfile
import numpy as np
import pytest
import torch
from conftest import STRUCTURES

from difftem.config import config_from_dict
from difftem.core.errors import ConfigError, FormatError
from difftem.core.fft import freq_per_a, irfft3, k2_per_a2
from difftem.forward.density_map import map_spectrum, model_spectrum
from difftem.forward.particle_map import _soft_band
from difftem.forward.scattering import get_table
from difftem.io.files import write_volume
from difftem.simulate.pipeline import simulate
from difftem.specimen.structure import read_structure

UBI = STRUCTURES / "1ubi_ubiquitin.pdb.gz"
SCALE = 37.5  # the map's arbitrary units: potential (V) / SCALE, plus an offset (its solvent level)
OFFSET = 0.3
VOXEL_A = 0.7  # the map's voxel: neither the pixel (2 Å) nor the slab map's (1 Å)


def _potential_map(atoms, voxel_a, n, k_pass, k_stop):
    """Samples (V) of the atoms' exact potential, band-limited, on n³ voxels centred on their mean; (map, origin)."""
    origin = atoms.positions_a.mean(0) - (n // 2) * voxel_a
    kz, kx = freq_per_a(n, voxel_a), freq_per_a(n, voxel_a, half=True)
    spec = model_spectrum(atoms, get_table("kirkland"), kz, kz, kx, origin)
    spec = spec * _soft_band(torch.sqrt(k2_per_a2((n, n, n), voxel_a, half=True)), k_pass, k_stop)
    return (irfft3(spec, (n, n, n)) / voxel_a**3).numpy(), origin


@pytest.fixture(scope="module")
def ubi_map(shared_data, tmp_path_factory):
    """Ubiquitin's potential at 0.7 Å voxels (band to 0.6 Å⁻¹) in arbitrary units, in the model file's frame."""
    atoms = read_structure(UBI, centre="none")
    vol, origin = _potential_map(atoms, VOXEL_A, 80, 0.45, 0.6)
    path = tmp_path_factory.mktemp("maps") / "ubi.mrc"
    write_volume(path, vol / SCALE + OFFSET, VOXEL_A, origin_a=tuple(origin))
    return path


def _config(particle, ice_nm=0.0, placement="projection"):
    return config_from_dict({
        "seed": 1, "detector": {"shape_px": [64, 64], "pixel_size_a": 2.0, "noise": "none"},
        "optics": {"defocus_um": 1.0},
        "sample": {"ice_thickness_nm": ice_nm, "particles": [particle], "ice_structure": {"mode": "off"}},
        "simulation": {"device": "cpu", "map_placement": placement}})


POSE = {"centre": "none", "euler_zyz_deg": [[20, 30, 40]], "positions_a": [[3, -2, 0]]}


def _contrast_rel(a, b):
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a - b).norm() / a.norm())


def _map_particle(path, **cal):
    return {"map": {"file": str(path), **(cal or {"calibration": "model", "model": str(UBI)})}, **POSE}


def test_fourier_resampling_of_a_sampled_gaussian_is_its_analytic_transform():
    """A Gaussian sampled on anisotropic voxels, off-centre: map_spectrum at arbitrary frequencies equals
    (2πσ²)^{3/2} exp(−2π²σ²k²) exp(−2πik·c) inside the map's band."""
    vox = np.array([0.8, 0.9, 1.0])
    sigma, c = 2.5, np.array([1.3, -0.7, 0.4])
    origin = -np.array([20, 18, 16]) * vox
    z, y, x = (origin[i] + np.arange(n) * vox[i] for i, n in zip((2, 1, 0), (33, 37, 41), strict=True))
    r2 = (x[None, None] - c[0]) ** 2 + (y[None, :, None] - c[1]) ** 2 + (z[:, None, None] - c[2]) ** 2
    vals = torch.as_tensor(np.exp(-r2 / (2 * sigma**2)))[None]
    k = torch.linspace(-0.25, 0.25, 11, dtype=torch.float64)  # well inside the 0.5 Å⁻¹ band, off the DFT grid
    got = map_spectrum(vals, vox, origin, k, k * 0.7, k * 1.1)[0]
    kz, ky, kx = k[:, None, None], 0.7 * k[None, :, None], 1.1 * k[None, None, :]
    want = (2 * math.pi * sigma**2) ** 1.5 * torch.exp(-2 * math.pi**2 * sigma**2 * (kx**2 + ky**2 + kz**2)) \
        * torch.exp(-2j * math.pi * (kx * c[0] + ky * c[1] + kz * c[2]))
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6


def test_model_calibration_recovers_the_scale_and_the_image_matches_the_atoms(ubi_map):
    """The map (0.7 Å voxels, ×1/37.5 + 0.3) simulated as a particle at 2 Å/px: the least-squares calibration
    finds 37.5 V per unit (measured 37.500001), and the noise-free image's contrast equals the exact atom path's to
    the projection mode's own error (measured 1.3 %, as for the same atoms in projection mode)."""
    atoms_exact = simulate(_config({"structure": str(UBI), "representation": "atoms", **POSE}))
    res = simulate(_config(_map_particle(ubi_map)))
    record = res.metadata["particle_types"][0]
    assert record["mode"] == "projection" and record["atoms"] == 0
    assert record["map"]["scale_v_per_unit"] == pytest.approx(SCALE, rel=1e-5)
    assert record["map"]["solvent_level"] == pytest.approx(OFFSET, abs=1e-4)
    assert _contrast_rel(atoms_exact.noiseless, res.noiseless) < 0.03


@pytest.mark.slow
def test_map_particle_equals_the_atoms_in_the_same_mode(ubi_map):
    """Against the same atoms made into a projector (the map path's own reference): 0.2 % (measured 0.027 %)."""
    atoms_proj = simulate(_config({"structure": str(UBI), "representation": "map", **POSE}))
    res = simulate(_config(_map_particle(ubi_map)))
    assert _contrast_rel(atoms_proj.noiseless, res.noiseless) < 2e-3


def test_scale_and_mass_calibrations(ubi_map):
    """scale: as given; mass: the averagine potential per Da × the model's mass (without hydrogens, as the
    model has none) gives the true scale to within the composition's difference (measured −6.8 %)."""
    from difftem.forward.density_map import calibrate
    from difftem.specimen.build import load_particle_type

    table = get_table("kirkland")
    atoms = read_structure(UBI, centre="none")
    mass_kda = float(atoms.occupancy @ np.asarray([{6: 12.011, 7: 14.007, 8: 15.999, 16: 32.06}.get(int(z), 1.008)
                                                    for z in atoms.atomic_number])) / 1e3
    cfg = _config(_map_particle(ubi_map, calibration="scale", scale_v=12.5, mass_kda=mass_kda))
    ptype = load_particle_type(cfg.sample.particles[0], lambda s: s)
    from difftem.forward.potential import IceModel

    assert calibrate(ptype.density, table, IceModel()) == 12.5
    cfg = _config(_map_particle(ubi_map, calibration="mass", mass_kda=mass_kda, hydrogens=False))
    ptype = load_particle_type(cfg.sample.particles[0], lambda s: s)
    s = calibrate(ptype.density, table, IceModel())
    assert s == pytest.approx(SCALE, rel=0.1)  # measured −6.8 %: ubiquitin vs the average composition
    # the model's own Σ C f_e(0) over its atoms is what the map integrates to
    exact = sum(table.projected_integral_v_a3(int(z)) * float(atoms.occupancy[atoms.atomic_number == z].sum())
                for z in np.unique(atoms.atomic_number))
    assert ptype.density.calibration["map_integral_units_a3"] * SCALE == pytest.approx(exact, rel=2e-3)


def test_an_external_like_blurred_density_at_its_resolution(shared_data, tmp_path):
    """A Gaussian-blurred atom density (σ = 1.5 Å, weight Z, 1.1 Å voxels, arbitrary units): after the model
    calibration the image agrees with the atoms' at the map's resolution (both low-passed to 1/10 Å⁻¹; the blur
    halves amplitudes at 1/8 Å⁻¹)."""
    atoms = read_structure(UBI, centre="none")
    vox, n, sigma = 1.1, 64, 1.5
    origin = atoms.positions_a.mean(0) - (n // 2) * vox
    g = origin[None, :] + np.arange(n)[:, None] * vox  # (n, 3): x, y, z axes
    w = np.asarray(atoms.atomic_number, np.float64)
    e = [np.exp(-(g[:, i][None, :] - atoms.positions_a[:, i][:, None]) ** 2 / (2 * sigma**2)) for i in range(3)]
    rho = np.einsum("a,az,ay,ax->zyx", w, e[2], e[1], e[0]) * 0.01
    path = tmp_path / "blurred.mrc"
    write_volume(path, rho, vox, origin_a=tuple(origin))
    res = simulate(_config(_map_particle(path)))
    ref = simulate(_config({"structure": str(UBI), "representation": "atoms", **POSE}))
    from difftem.core.fft import fft2, ifft2

    k = torch.sqrt(k2_per_a2((64, 64), 2.0))

    def low(img):
        return ifft2(fft2(img.double()) * (k <= 1 / 10)).real

    assert res.metadata["particle_types"][0]["map"]["fit_relative_residual"] < 0.2
    assert _contrast_rel(low(ref.noiseless), low(res.noiseless)) < 0.1


@pytest.mark.slow
def test_map_in_ice_displaces_its_volume_like_the_atoms(ubi_map):
    """In 10 nm of ice the map's particle displaces the ice of its mass where its density is: the image agrees with
    the atoms' (same mode) to the composition's difference (measured 11 %: a map does not know which atoms displace
    how much), and its projected potential's integral to 0.2 %."""
    ref = simulate(_config({"structure": str(UBI), "representation": "map", **POSE}, ice_nm=10.0),
                   keep_potential=True)
    res = simulate(_config(_map_particle(ubi_map), ice_nm=10.0), keep_potential=True)
    pr, pm = ref.projected_potential.real.double(), res.projected_potential.real.double()
    assert float((pm - pm[0, 0]).sum()) == pytest.approx(float((pr - pr[0, 0]).sum()), rel=2e-3)
    assert _contrast_rel(ref.noiseless, res.noiseless) < 0.15


@pytest.mark.slow
def test_slab_mode_matches_the_atoms_slab_mode(ubi_map):
    """Slab sampling of the map against the same atoms' slab map: measured 0.067 %."""
    ref = simulate(_config({"structure": str(UBI), "representation": "map", **POSE}, placement="slab"))
    res = simulate(_config(_map_particle(ubi_map), placement="slab"))
    assert res.metadata["particle_types"][0]["mode"] == "slab"
    assert _contrast_rel(ref.noiseless, res.noiseless) < 5e-3


# ------------------------------------------------------------------------------------------------ bad maps
def _write_raw(path, data, voxel):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, np.float32))
        m.voxel_size = voxel


@pytest.mark.parametrize("kind, words", [
    ("2d", "3-D volume"), ("no_voxel", "voxel size"), ("nan", "NaN"), ("huge", "voxels"), ("zeros", "zeros")])
def test_bad_maps_are_one_line_format_errors_naming_the_file(tmp_path, kind, words):
    path = tmp_path / f"{kind}.mrc"
    if kind == "2d":
        _write_raw(path, np.ones((16, 16)), 1.0)
    elif kind == "no_voxel":
        _write_raw(path, np.ones((8, 8, 8)), 0.0)
    elif kind == "nan":
        a = np.ones((8, 8, 8))
        a[2, 3, 4] = np.nan
        _write_raw(path, a, 1.0)
    elif kind == "huge":
        with mrcfile.new_mmap(path, shape=(401, 400, 400), mrc_mode=0, overwrite=True) as m:
            m.voxel_size = 1.0
    else:
        _write_raw(path, np.zeros((8, 8, 8)), 1.0)
    with pytest.raises(FormatError) as err:
        simulate(_config({"map": {"file": str(path), "calibration": "scale", "scale_v": 1.0, "mass_kda": 10}}))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and words in msg


def test_map_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"sample\.particles\.0\.map\.scale_v: calibration scale needs scale_v"):
        _config({"map": {"file": "x.mrc", "calibration": "scale"}})
    with pytest.raises(ConfigError, match="exactly one of structure or map"):
        _config({"structure": "a.pdb", "map": {"file": "x.mrc", "mass_kda": 10}})
    with pytest.raises(ConfigError, match=r"sample\.particles\.0\.helix"):
        _config({"map": {"file": "x.mrc", "mass_kda": 10}, "helix": {"rise_a": 1, "twist_deg": 1, "n_subunits": 2}})
    path = tmp_path / "m.mrc"
    _write_raw(path, np.random.default_rng(0).random((8, 8, 8)), 1.0)
    with pytest.raises(ConfigError, match=r"sample\.particles\.0\.map: give mass_kda"):
        simulate(_config({"map": {"file": str(path), "calibration": "scale", "scale_v": 1.0}}))


def test_random_map_copies_that_cannot_fit_are_refused_before_placement(ubi_map):
    cfg = _config({"map": {"file": str(ubi_map), "mass_kda": 8.5}, "random": {"count": 5000}}, ice_nm=5.0)
    with pytest.raises(ConfigError, match=r"sample\.particles\.0\.random\.count: 5,000 copies"):
        simulate(cfg)
