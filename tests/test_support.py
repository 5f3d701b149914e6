"""Support films (forward/support.py, specimen/support.py) and gold fiducials (specimen/fiducials.py): the film's mean
inner potential from its atoms, Beer–Lambert through it along each pixel's ray (holes, tilts), the bead's
projected potential against a uniform gold sphere, the beads in the ground truth and at their tilted positions."""

import math

import numpy as np
import pytest
import torch

from difftem import simulate, simulate_tilt_series
from difftem.config import config_from_dict
from difftem.core.errors import ConfigError
from difftem.core.fft import fft2, ifft2
from difftem.core.grid import Grid
from difftem.core.rotations import tilt_rotation
from difftem.forward.beam import interaction_constant
from difftem.forward.potential import ice_absorption_potential_v
from difftem.forward.scattering import get_table
from difftem.forward.support import malis_mean_free_path_nm, mean_inner_potential_v
from difftem.io.star import read_star
from difftem.simulate.output import write_tilt_series
from difftem.specimen.build import scene_of
from difftem.specimen.fiducials import GOLD_LATTICE_A, gold_bead_atoms
from difftem.specimen.scene import _segments, segment_distances
from tests.helpers import sliced

N_A = 0.602214076
KAPPA = ice_absorption_potential_v(300) / 4.8775  # the atoms' (and the film's) absorption ratio by default


def _carbon_u(density=2.0):
    """Independent-atom mean inner potential of carbon, written out: n · C f_e(0)."""
    return density / 12.011 * N_A * get_table("kirkland").projected_integral_v_a3(6)


def test_mean_inner_potentials_from_the_atoms():
    table = get_table("kirkland")
    # the ice continuum's 4.8775 V is water at 1 g/cm³ by the same formula
    assert mean_inner_potential_v([8, 1], [1, 2], 1.0, table) == pytest.approx(4.8775, rel=2e-3)
    u_c = mean_inner_potential_v([6], [1], 2.0, table)
    assert u_c == pytest.approx(_carbon_u(), rel=1e-3)
    assert mean_inner_potential_v([6], [1], 1.0, table) == pytest.approx(u_c / 2, rel=1e-12)
    # literature: amorphous carbon 9.09 V at 1.75 g/cm³ by holography (Wanner et al. 2006); neutral independent atoms
    # ignore bonding and come out above it (measured 10.55 V, +16 %); at 2.0 g/cm³ 12.06 V, every table within 0.2 %
    u_175 = mean_inner_potential_v([6], [1], 1.75, table)
    assert 1.10 < u_175 / 9.09 < 1.20
    for name in ("peng", "peng_s2"):
        assert mean_inner_potential_v([6], [1], 2.0, get_table(name)) == pytest.approx(u_c, rel=2e-3)
    # gold: 4 atoms per fcc cell of 4.078 Å is 19.3 g/cm³; its mean inner potential is 25–35 V (independent atoms)
    gold_density_g_cm3 = 4 / GOLD_LATTICE_A**3 * 196.96657 / N_A
    assert gold_density_g_cm3 == pytest.approx(19.32, rel=2e-3)
    assert 25 < mean_inner_potential_v([79], [1], 19.32, table) < 35
    assert 180 < malis_mean_free_path_nm(300, 6) < 200


P_A, N = 4.0, 128
HOLES = {"thickness_nm": 20.0, "hole_diameter_nm": 30.0, "pitch_nm": 60.0, "lattice": "hexagonal",
         "hole_offset_a": [40.0, -20.0]}


def _cfg(support, ice_nm=10.0, **extra):
    cfg = {"seed": 1, "beam": {"voltage_kv": 300, "dose_e_per_a2": 100.0}, "optics": {"defocus_um": 0.0},
           "detector": {"shape_px": [N, N], "pixel_size_a": P_A, "noise": "none"},
           "sample": {"ice_thickness_nm": ice_nm, "ice_structure": {"mode": "off"}, "support": support}}
    cfg.update(extra)
    return cfg


def _hex_nodes(pitch_a, offset_a, n=4):
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    x = i * pitch_a + j * pitch_a / 2 + offset_a[0]
    y = j * pitch_a * math.sqrt(3) / 2 + offset_a[1]
    return np.stack([x.ravel(), y.ravel()], -1)


@pytest.mark.parametrize("lattice", ["square", "hexagonal"])
def test_nearest_hole_is_the_nearest_lattice_node(lattice):
    from difftem.specimen.support import SupportGeometry

    g = SupportGeometry(100.0, 100.0, 600.0, lattice, (37.0, -11.0), "top")
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(3000, generator=gen, dtype=torch.float64) * 1e4 - 5e3 for _ in range(2))
    cx, cy = g.nearest_hole(x, y)
    i, j = np.meshgrid(np.arange(-14, 15), np.arange(-14, 15))
    if lattice == "square":
        nodes = np.stack([i.ravel() * 600.0 + 37.0, j.ravel() * 600.0 - 11.0], -1)
    else:
        nodes = _hex_nodes(600.0, (37.0, -11.0), 14)
    brute = np.sqrt((x.numpy()[:, None] - nodes[:, 0]) ** 2 + (y.numpy()[:, None] - nodes[:, 1]) ** 2).min(1)
    assert np.allclose(torch.hypot(x - cx, y - cy).numpy(), brute, atol=1e-9)


def _film_paths_a(angle_deg, z0_a, z1_a, n_steps=100):
    """(each pixel's path through film material (Å), pixels whose ray passes within 4 px of a hole's edge inside the
    film; the film's edge is smoothed over ~2 px), marching along the straight ray in the specimen frame against every
    hole centre (brute force)."""
    r = tilt_rotation(angle_deg, 0.0)
    d = r.T @ np.array([0.0, 0.0, 1.0])
    g = Grid((N, N), P_A)
    oy, ox = g.origin_a
    xx, yy = np.meshgrid(np.arange(N) * P_A - ox, np.arange(N) * P_A - oy)
    zt = -(r[0, 2] * xx + r[1, 2] * yy) / r[2, 2]
    p0 = np.stack([xx, yy, zt], -1) @ r  # the ray's mid-plane crossing, Rᵀ v
    nodes = _hex_nodes(600.0, (40.0, -20.0), 2)
    s = z0_a / d[2] + (np.arange(n_steps) + 0.5) / n_steps * (z1_a - z0_a) / d[2]
    ds = (z1_a - z0_a) / d[2] / n_steps
    path, edge = np.zeros((N, N)), np.full((N, N), np.inf)
    for si in s:
        pt = p0 + si * d
        dist = np.sqrt(((pt[..., None, :2] - nodes) ** 2).sum(-1)).min(-1)
        path += (dist > 150.0) * ds
        edge = np.minimum(edge, np.abs(dist - 150.0))
    return path, edge < 6 * P_A / math.cos(math.radians(angle_deg))


def _check_beer_lambert(intensity, ice_path_a, film_path_a, rim):
    expected = np.exp(-2 * interaction_constant(300) * (ice_absorption_potential_v(300) * ice_path_a
                                                         + KAPPA * _carbon_u() * film_path_a))
    err = np.abs(intensity / expected - 1)
    assert float(np.median(err)) < 0.002, float(np.median(err))
    assert float(err[~rim].max()) < 0.01, float(err[~rim].max())
    assert expected.max() / expected.min() > 1.3  # the film is there and the holes are open
    return err


def test_counts_across_the_hole_edges_follow_beer_lambert_through_the_film():
    r = simulate(_cfg(HOLES))
    path, rim = _film_paths_a(0.0, 50.0, 250.0, 2)  # bottom face: below 10 nm of ice
    assert 0.2 < (path == 0).mean() < 0.8 and rim.mean() < 0.3
    _check_beer_lambert(r.noiseless.double().numpy() / (100.0 * P_A**2), 100.0, path, rim)
    assert r.metadata["support"]["mean_inner_potential_v"] == pytest.approx(_carbon_u(), rel=1e-3)


def test_tilted_film_edges_move_with_depth():
    """At 35° on the top face the hole's edge shifts by 20 nm · tan 35° = 14 nm through the film: each pixel against
    the path marched along its ray."""
    cfg = _cfg({**HOLES, "face": "top"}, tilt_series={"scheme": "list", "angles_deg": [35.0], "damage": "none"})
    r = simulate_tilt_series(cfg)
    path, rim = _film_paths_a(35.0, -250.0, -50.0)
    full = path.max()
    assert full == pytest.approx(200.0 / math.cos(math.radians(35.0)), rel=1e-3)
    assert ((path > 0.05 * full) & (path < 0.95 * full)).mean() > 0.05  # rays that cross an edge inside the film
    _check_beer_lambert(r.noiseless[0].double().numpy() / (100.0 * P_A**2), 100.0 / math.cos(math.radians(35.0)),
                        path, rim)


def test_film_path_grows_as_one_over_cos_tilt():
    cfg = _cfg({"material": "gold", "thickness_nm": 2.0, "hole_diameter_nm": 0.0}, ice_nm=0.0,
               tilt_series={"scheme": "list", "angles_deg": [0.0, 30.0, 60.0], "damage": "none"})
    r = simulate_tilt_series(cfg)
    optical_depth = -np.log(r.noiseless.double().numpy().mean((1, 2)) / (100.0 * P_A**2))
    cos = np.cos(np.radians(r.angles_deg))
    assert np.allclose(optical_depth * cos, optical_depth[0], rtol=1e-3)
    u_au = mean_inner_potential_v([79], [1], 19.32, get_table("kirkland"))
    assert optical_depth[0] == pytest.approx(2 * interaction_constant(300) * KAPPA * u_au * 20.0, rel=1e-3)


def test_potential_volume_holds_the_film():
    from difftem.simulate.pipeline import potential_volume

    vol, v = potential_volume(_cfg(HOLES))
    nz = vol.shape[0]
    zc = (np.arange(nz) - nz // 2) * v  # voxel centres (Å)
    layer = (zc - v / 2 >= 50) & (zc + v / 2 <= 250)  # voxels wholly inside the film's depth
    assert (zc[layer].min(), zc[layer].max()) == (52.0, 248.0)  # the default span reaches through the film
    path, _ = _film_paths_a(0.0, 50.0, 250.0, 2)
    mean = vol[torch.as_tensor(layer)].double().mean(0).numpy()
    # per voxel column its mean inner potential where there is film; the area covered to 0.5 %
    assert float(mean.max()) == pytest.approx(_carbon_u(), rel=1e-3)
    assert mean.mean() / _carbon_u() == pytest.approx((path > 0).mean(), rel=5e-3)
    assert float(vol[torch.as_tensor(zc < -60)].abs().max()) < 1e-6  # nothing above the ice (the film is below)


def test_explicit_loss_with_a_filter_removes_the_films_inelastic_electrons():
    """optics.electron_loss explicit: no absorption potential; behind an energy filter the film passes
    exp(−t/(Λ cos θ)), Λ from Malis et al.'s formula (188 nm for carbon at 300 kV); without a filter everything."""
    loss = {"model": "explicit", "energy_filter": True}
    cfg = _cfg({"thickness_nm": 20.0, "hole_diameter_nm": 0.0}, ice_nm=0.0,
               optics={"defocus_um": 0.0, "electron_loss": loss},
               tilt_series={"scheme": "list", "angles_deg": [0.0, 40.0], "damage": "none"})
    r = simulate_tilt_series(cfg)
    mean = r.noiseless.double().numpy().mean((1, 2)) / (100.0 * P_A**2)
    mfp_a = malis_mean_free_path_nm(300, 6) * 10.0
    assert np.allclose(mean, np.exp(-200.0 / mfp_a / np.cos(np.radians(r.angles_deg))), rtol=1e-4)
    cfg["optics"]["electron_loss"] = {"model": "explicit", "energy_filter": False}
    assert np.allclose(simulate_tilt_series(cfg).noiseless.double().numpy().mean((1, 2)) / (100.0 * P_A**2), 1.0,
                       rtol=1e-4)


def test_gold_bead_projects_as_a_uniform_gold_sphere_at_low_resolution():
    atoms = gold_bead_atoms(50.0)
    n = 4 / GOLD_LATTICE_A**3
    assert len(atoms) == pytest.approx(n * 4 / 3 * math.pi * 25.0**3, rel=0.05)
    table = get_table("kirkland")
    c_f0 = table.projected_integral_v_a3(79)
    proj = sliced(atoms, shape=(96, 96), pixel_a=1.0, slice_a=10.0).project().real
    # the bead's projected potential integrates to its atom count × C f_e(0)
    assert float(proj.sum()) == pytest.approx(len(atoms) * c_f0, rel=1e-6)
    # low-passed (Gaussian, σ = 4 Å) it is the projection of a ball of gold's mean inner potential n·C f_e(0)
    r_eff = (3 * len(atoms) / (4 * math.pi * n)) ** (1 / 3)
    k2 = Grid((96, 96), 1.0).k2(None, torch.float64)
    x = 2 * math.pi * torch.sqrt(k2) * r_eff
    ball = torch.where(x > 1e-6, 3 * (torch.sin(x) - x * torch.cos(x)) / x.clamp(min=1e-6) ** 3, torch.ones_like(x))
    lowpass = torch.exp(-2 * math.pi**2 * 16.0 * k2)
    u_au = n * c_f0
    analytic = ifft2(torch.complex(u_au * 4 / 3 * math.pi * r_eff**3 * ball * lowpass, torch.zeros_like(x))).real
    # the grid's origin is pixel [48, 48]: move the analytic ball (centred at [0, 0]) there
    analytic = torch.roll(analytic, (48, 48), (0, 1))
    measured = ifft2(fft2(proj.to(torch.complex128)) * lowpass).real
    assert float(measured[48, 48]) == pytest.approx(float(analytic[48, 48]), rel=0.01)
    assert float(analytic[48, 48]) == pytest.approx(2 * u_au * r_eff, rel=0.05)  # ≈ U·2R through the centre
    err = (measured - analytic).abs().max() / analytic.max()  # over the whole field
    assert float(err) < 0.015, float(err)


FID = {"diameter_nm": 5.0, "count": 4, "faces": "both"}


def test_fiducials_in_the_ground_truth_and_at_their_tilted_positions(tmp_path):
    cfg = {"seed": 5, "beam": {"voltage_kv": 300, "dose_e_per_a2": 100.0}, "optics": {"defocus_um": 0.0},
           "detector": {"shape_px": [N, N], "pixel_size_a": P_A, "noise": "none"},
           "sample": {"ice_thickness_nm": 30.0, "ice_structure": {"mode": "off"}, "fiducials": FID},
           "tilt_series": {"scheme": "list", "angles_deg": [-40.0, 0.0, 40.0], "damage": "none"}}
    r = simulate_tilt_series(cfg)
    write_tilt_series(r, tmp_path / "run")
    star = read_star(tmp_path / "run" / "particles.star")["particles"]
    beads = star[star["difftemParticleType"] == "gold_bead_5nm"]
    assert len(beads) == 4
    pos = beads[["difftemPositionXA", "difftemPositionYA", "difftemPositionZA"]].to_numpy(float)
    assert np.allclose(np.abs(pos[:, 2]), 150.0 - 25.0, atol=0.1)  # touching an ice face from inside
    found = 0
    for k, angle in enumerate(r.angles_deg):
        img = r.noiseless[k].double().numpy()
        bg = np.median(img)
        for q in pos @ tilt_rotation(angle, 0.0).T:
            fx, fy = q[0] / P_A + N // 2, q[1] / P_A + N // 2
            ix, iy = int(round(fx)), int(round(fy))
            if not (8 <= ix < N - 8 and 8 <= iy < N - 8):
                continue  # moved out of (or to the edge of) the field at this tilt
            dark = np.clip(1 - img[iy - 6:iy + 7, ix - 6:ix + 7] / bg, 0, None)
            yy, xx = np.mgrid[iy - 6:iy + 7, ix - 6:ix + 7]
            assert dark.max() > 0.1  # a dark spot
            assert abs((dark * xx).sum() / dark.sum() - fx) < 0.15
            assert abs((dark * yy).sum() / dark.sum() - fy) < 0.15
            found += 1
    assert found >= 8


def test_fiducials_keep_clear_of_particles():
    cfg = config_from_dict({
        "seed": 2, "detector": {"shape_px": [N, N], "pixel_size_a": P_A},
        "sample": {"ice_thickness_nm": 10.0, "fiducials": {"diameter_nm": 5.0, "count": 12, "min_gap_a": 5.0},
                   "particles": [{"structure": "builtin:1ubi", "random": {"count": 30}}]}})
    scene = scene_of(cfg)
    names = [t.name for t in scene.types]
    bead_t = names.index("gold_bead_5nm")
    pl = scene.placement
    a, b, rad = _segments([t.bounds for t in scene.types], pl)
    is_bead = pl.type_index == bead_t
    assert is_bead.sum() == 12 and (~is_bead).sum() == 30
    from difftem.simulate.setup import Setup

    labels = [load.label for load in Setup.build(cfg, scene).type_loads()]
    assert labels == ["sample.particles.0 (1ubi_ubiquitin)", "sample.fiducials (gold_bead_5nm)"]
    for i in np.flatnonzero(is_bead):
        d = segment_distances(a[i], b[i], a[~is_bead], b[~is_bead])
        assert (d >= rad[i] + rad[~is_bead] + 5.0 - 1e-9).all()
        others = np.flatnonzero(is_bead & (np.arange(len(pl)) != i))
        assert (np.linalg.norm(pl.positions_a[others] - pl.positions_a[i], axis=1) >= 2 * rad[i] + 5.0).all()


@pytest.mark.parametrize("sample, field", [
    ({"support": {"hole_diameter_nm": 3000, "pitch_nm": 2000}}, "sample.support"),
    ({"support": {"material": "iron"}}, "sample.support.material"),
    ({"support": {"thickness_nm": 0}}, "sample.support.thickness_nm"),
    ({"fiducials": {"count": -1}}, "sample.fiducials.count"),
    ({"fiducials": {"diameter_nm": 100}}, "sample.fiducials.diameter_nm"),
])
def test_config_errors_name_the_field(sample, field):
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"sample": sample})
    assert field in str(exc.value) and "\n" not in str(exc.value)


def test_too_many_beads_is_one_line_naming_the_count():
    cfg = config_from_dict({"detector": {"shape_px": [64, 64], "pixel_size_a": 2.0},
                            "sample": {"fiducials": {"diameter_nm": 10.0, "count": 200}}})
    with pytest.raises(ConfigError, match="sample.fiducials.count"):
        scene_of(cfg)


def test_differentiable_simulator_refuses_a_film_in_one_line():
    from difftem import DifferentiableSimulator

    with pytest.raises(ConfigError, match="sample.support"):
        DifferentiableSimulator({"sample": {"support": {"thickness_nm": 10.0}}})


def test_tiles_join_the_film_as_the_whole_field():
    whole = simulate(_cfg(HOLES)).noiseless
    tiled = simulate(_cfg(HOLES, simulation={"tile_px": 64})).noiseless
    assert float((tiled - whole).abs().max() / whole.mean()) < 1e-3  # measured 1.7e-4


def test_no_support_and_no_fiducials_by_default():
    cfg = config_from_dict({})
    assert cfg.sample.support is None and cfg.sample.fiducials is None
    assert len(scene_of(cfg).types) == 0
