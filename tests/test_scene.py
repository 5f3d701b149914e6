"""Scenes: symmetry builders, random placement, pose conventions, per-type maps, tiles."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from conftest import STRUCTURES

from difftem import simulate
from difftem.config import config_from_dict
from difftem.core.errors import ConfigError
from difftem.core.fft import fft2, ifft2
from difftem.core.grid import Grid
from difftem.core.rotations import (
    euler_zyz_from_matrix,
    random_rotations,
    relion_angles,
    relion_matrix,
    rotation_zyz_deg,
)
from difftem.forward.particle_map import build_fourier_projector, build_particle_map, sample_slab
from difftem.forward.potential import IceModel, SlicedPotential, antialias_mask, atoms_to_tensors
from difftem.forward.scattering import get_table
from difftem.specimen.build import builtin_structure, scene_of
from difftem.specimen.scene import bounding_capsule, helical_assembly, overlapping_pairs, segment_distances
from difftem.specimen.structure import read_structure

UBI = "builtin:1ubi"
UBI_PATH = builtin_structure("1ubi")


def base(**sections):
    d = {"seed": 5, "beam": {"voltage_kv": 300, "dose_e_per_a2": 20},
         "detector": {"shape_px": [256, 256], "pixel_size_a": 2.0, "noise": "none"},
         "sample": {"ice_thickness_nm": 30, "particles": [{"structure": UBI, "random": {"count": 10}}],
                    "ice_structure": {"mode": "off"}},  # the continuum: scenes compared with exact references
         "simulation": {"slice_thickness_a": 10.0}}
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(d)


# ------------------------------------------------------------------------------------------------ rotations
def test_euler_and_relion_round_trips():
    rng = np.random.default_rng(0)
    rots = random_rotations(200, rng)
    assert np.allclose(np.einsum("nij,nkj->nik", rots, rots), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rots), 1.0)
    zyz = euler_zyz_from_matrix(rots)
    back = np.stack([rotation_zyz_deg(*e) for e in zyz])
    assert np.allclose(back, rots, atol=1e-9)
    rel = relion_angles(rots)
    assert np.allclose(relion_matrix(rel[:, 0], rel[:, 1], rel[:, 2]), rots, atol=1e-9)
    # gimbal cases
    for r in (rotation_zyz_deg(30, 0, 20), rotation_zyz_deg(30, 180, 20)):
        assert np.allclose(rotation_zyz_deg(*euler_zyz_from_matrix(r)), r, atol=1e-9)
        a = relion_angles(r)
        assert np.allclose(relion_matrix(*a), r, atol=1e-9)
    # RELION's own published matrix element: A[0, 2] = -cos(psi) sin(tilt)
    a = relion_matrix(10.0, 40.0, 70.0)
    assert a[0, 2] == pytest.approx(-np.cos(np.radians(70)) * np.sin(np.radians(40)))


def test_uniform_rotations_are_uniform():
    rots = random_rotations(20000, np.random.default_rng(1))
    z = rots[:, :, 2]  # image of the z axis: uniform on the sphere → each coordinate uniform on [-1, 1]
    assert abs(z[:, 2].mean()) < 0.02 and z[:, 2].var() == pytest.approx(1 / 3, abs=0.01)


# ------------------------------------------------------------------------------------------------ geometry
def test_segment_distance_against_brute_force():
    rng = np.random.default_rng(2)
    t = np.linspace(0, 1, 401)
    for _ in range(30):
        p1, q1, p2, q2 = rng.normal(size=(4, 3)) * 5
        if rng.random() < 0.2:
            q2 = p2.copy()  # a point (sphere)
        a = p1 + t[:, None] * (q1 - p1)
        b = p2 + t[:, None] * (q2 - p2)
        brute = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min()
        assert segment_distances(p1, q1, p2, q2) == pytest.approx(brute, abs=0.05)


def test_helix_reproduces_rise_and_twist(shared_data):
    sub = read_structure(STRUCTURES / "2om3_tmv_cssmol.pdb.gz", centre="none")
    rod = helical_assembly(sub, 1.408, 22.04, 49)
    assert len(rod) == 49 * len(sub)
    cents = rod.positions_a.reshape(49, len(sub), 3).mean(1)
    assert np.allclose(np.diff(cents[:, 2]), 1.408, atol=1e-9)
    phi = np.unwrap(np.arctan2(cents[:, 1], cents[:, 0]))
    assert np.allclose(np.degrees(np.diff(phi)), 22.04, atol=1e-9)
    # 49 subunits make 3 turns: subunit 49 would sit above subunit 0
    assert pytest.approx(3 * 360, abs=0.1) == 49 * 22.04
    r = np.hypot(rod.positions_a[:, 0], rod.positions_a[:, 1])
    assert r.min() > 15 and r.max() < 100  # the TMV coat: inner channel ~2 nm, outer radius ~9 nm
    assert bounding_capsule(rod.centred("bbox").positions_a).half_length_a == 0  # 7 nm long, 18 wide: a sphere
    long_rod = helical_assembly(sub, 1.408, 22.04, 400).centred("bbox")  # 56 nm: a capsule along the axis
    caps = bounding_capsule(long_rod.positions_a)
    assert caps.half_length_a > 150 and abs(abs(caps.axis[2]) - 1) < 1e-3 and caps.radius_a < 105


def test_helix_config_and_length(shared_data):
    cfg = base(sample={"particles": [{"structure": str(STRUCTURES / "2om3_tmv_cssmol.pdb.gz"),
                                      "helix": {"rise_a": 1.408, "twist_deg": 22.04, "length_a": 140.8}}]})
    scene = scene_of(cfg)
    assert len(scene.types[0].atoms) == 100 * 6395 and len(scene.placement) == 1  # 5 models × 1279 atoms, occupancy 0.2


def test_random_placement_does_not_overlap_and_stays_inside(shared_data):
    cfg = base(detector={"shape_px": [256, 256], "pixel_size_a": 4.0},
               sample={"ice_thickness_nm": 40,
                       "particles": [{"structure": UBI, "random": {"count": 60, "min_gap_a": 4.0}},
                                     {"structure": str(STRUCTURES / "2om3_tmv_cssmol.pdb.gz"),
                                      "helix": {"rise_a": 1.408, "twist_deg": 22.04, "n_subunits": 98},
                                      "random": {"count": 3}}]})
    scene = scene_of(cfg)
    assert np.bincount(scene.placement.type_index).tolist() == [60, 3]
    bounds = [t.bounds for t in scene.types]
    assert overlapping_pairs(bounds, scene.placement, gap_a=4.0 - 1e-6) == []
    half_field, half_ice = 128 * 4.0, 200.0
    for t, ptype in enumerate(scene.types):
        for i in np.flatnonzero(scene.placement.type_index == t):
            pos = ptype.atoms.positions_a @ scene.placement.rotations[i].T + scene.placement.positions_a[i]
            assert np.abs(pos[:, :2]).max() < half_field and np.abs(pos[:, 2]).max() < half_ice
    # the same seed gives the same scene; another seed another
    again = scene_of(cfg)
    assert np.array_equal(again.placement.positions_a, scene.placement.positions_a)
    cfg.seed = 6
    assert not np.allclose(scene_of(cfg).placement.positions_a, scene.placement.positions_a)


def test_too_many_particles_is_a_clear_error(shared_data):
    cfg = base(detector={"shape_px": [64, 64], "pixel_size_a": 2.0},
               sample={"particles": [{"structure": UBI, "random": {"count": 500}}]})
    with pytest.raises(ConfigError, match=r"placed only \d+ of 500"):
        scene_of(cfg)


def test_explicit_overlaps_warn_with_pairs():
    cfg = base(sample={"particles": [{"structure": UBI, "positions_a": [[0, 0, 0], [10, 0, 0], [150, 0, 0]]}]})
    r = simulate(cfg)
    assert any("overlap" in w and "#0/#1" in w for w in r.metadata["warnings"])


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="positions_a or random"):
        base(sample={"particles": [{"structure": UBI, "positions_a": [[0, 0, 0]], "random": {"count": 2}}]})
    with pytest.raises(ConfigError, match="count or density"):
        base(sample={"particles": [{"structure": UBI, "random": {}}]})
    with pytest.raises(ConfigError, match="n_subunits or length_a"):
        base(sample={"particles": [{"structure": UBI, "helix": {"rise_a": 1, "twist_deg": 2}}]})


# ------------------------------------------------------------------------------------------------ maps
@pytest.fixture(scope="module")
def ubiquitin():
    from difftem.specimen.build import builtin_structure

    return read_structure(builtin_structure("1ubi"), centre="mass")


def _exact_projection(atoms, grid, table, ice):
    """The exact atom-path projected potential over the whole (periodic) field, no box truncation."""
    sp = SlicedPotential(*atoms_to_tensors(atoms, dtype=torch.float64), grid, table, 1e4, ice, margin_a=1e5,
                         dtype=torch.complex128)
    return sp.project() - sp.total_uniform_potential()


@pytest.mark.parametrize("pixel_a, euler, shift", [(4.0, (30, 50, 70), (3.3, -2.1, 0.0)), (2.0, (0, 0, 0), (0, 0, 0)),
                                                   (2.0, (-110, 20, 5), (-7.7, 1.2, 0.0))])
def test_fourier_projector_matches_exact_potential(ubiquitin, pixel_a, euler, shift):
    table, ice = get_table("peng"), IceModel(300.0, 4.8775, 0.7591)
    fp = build_fourier_projector(ubiquitin, table, pixel_size_a=pixel_a, ice=ice, absorption_ratio=ice.absorption_ratio)
    n = 128
    grid = Grid((n, n), pixel_a)
    rot = rotation_zyz_deg(*euler)
    ref = _exact_projection(ubiquitin.transformed(rot, np.array(shift)), grid, table, ice)
    box = fp.box_px()
    cx, cy = n // 2 + shift[0] / pixel_a, n // 2 + shift[1] / pixel_a
    x0, y0 = int(np.floor(cx - box / 2 + 0.5)), int(np.floor(cy - box / 2 + 0.5))
    out = fp.project(torch.as_tensor(rot)[None], torch.tensor([[(cx - x0) * pixel_a, (cy - y0) * pixel_a]]), box)
    field = torch.zeros(2, n, n, dtype=torch.float64)
    field[:, y0:y0 + box, x0:x0 + box] += out[0]
    ap = antialias_mask(grid.k2(dtype=torch.float64), pixel_a)
    for ch, part in ((0, ref.real), (1, ref.imag)):
        a = ifft2(fft2(part) * ap).real
        b = ifft2(fft2(field[ch]) * ap).real
        assert float((a - b).norm() / a.norm()) < 1e-3
        assert float(b.sum()) == pytest.approx(float(a.sum()), rel=1e-4)


def test_slab_map_matches_exact_potential(ubiquitin):
    table, ice = get_table("kirkland"), IceModel(300.0, 4.8775, 0.7591)
    p = 2.0
    pm = build_particle_map(ubiquitin, table, pixel_size_a=p, ice=ice, absorption_ratio=ice.absorption_ratio)
    n = 128
    grid = Grid((n, n), p)
    rot = rotation_zyz_deg(10, 70, -40)
    shift = np.array([1.7, 3.1, 0.0])
    ref = _exact_projection(ubiquitin.transformed(rot, shift), grid, table, ice)
    support = float(np.sqrt((ubiquitin.positions_a ** 2).sum(1)).max()) + 24
    box = 2 * int(np.ceil(support / p)) + 3
    centre = torch.tensor([[n // 2 + shift[0] / p, n // 2 + shift[1] / p, 0.0]], dtype=torch.float64)
    field = torch.zeros(2, n, n, dtype=torch.float64)
    # the copy cut into 7 slabs and summed = its whole projection (slabs tile z exactly)
    edges = np.linspace(-support, support, 8)
    for z0, z1 in pairwise(edges):
        patch, corner = sample_slab(pm, torch.as_tensor(rot)[None], centre, p, float(z0), float(z1), box)
        y0, x0 = corner[0].tolist()
        field[:, y0:y0 + box, x0:x0 + box] += patch[0]
    ap = antialias_mask(grid.k2(dtype=torch.float64), p)
    a = ifft2(fft2(ref.real) * ap).real
    b = ifft2(fft2(field[0]) * ap).real
    assert float((a - b).norm() / a.norm()) < 2e-3


@pytest.mark.parametrize("pixel_a, expect_auto", [(2.0, "slab"), (4.0, "projection")])
def test_map_and_atom_representations_give_the_same_image(pixel_a, expect_auto):
    """Same scene, atoms vs maps. Measured differences of the image contrast: at 2 Å/px slab 1.5 % (projection
    2.8 %: the defocus spread inside the particle, which auto avoids here); at 4 Å/px projection 0.8 %, slab
    0.6 %. The rest is the potential above 2/3 Nyquist (the atom path keeps the grid's square band, the maps
    a smooth spherical one) entering exp(iσV)."""
    def run(rep, placement="auto"):
        return simulate(base(detector={"pixel_size_a": pixel_a},
                             sample={"particles": [{"structure": UBI, "random": {"count": 6}, "representation": rep}]},
                             simulation={"map_placement": placement}))

    atoms, auto = run("atoms"), run("map")
    assert auto.metadata["particle_types"][0]["mode"] == expect_auto
    ref = atoms.noiseless - atoms.noiseless.mean()
    tolerance = {"slab": 0.03, "projection": 0.02}[expect_auto]
    assert float((auto.noiseless - atoms.noiseless).norm() / ref.norm()) < tolerance


def test_ground_truth_poses_reproduce_the_image():
    """Rebuild the scene from the written ground truth alone (RELION angles, pixel coordinates) with the
    exact atom path: its projected potential equals the simulated one."""
    cfg = base(sample={"particles": [{"structure": UBI, "random": {"count": 8}}]})
    r = simulate(cfg, keep_potential=True)
    rows = r.metadata["particles"]
    assert len(rows) == 8
    from difftem.specimen.build import builtin_structure
    from difftem.specimen.structure import Atoms

    ubi = read_structure(builtin_structure("1ubi"), centre="mass")
    parts = []
    for row in rows:
        rot = relion_matrix(row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"])
        pos = np.array([(row["rlnCoordinateX"] - 128) * 2.0, (row["rlnCoordinateY"] - 128) * 2.0,
                        row["difftemPositionZA"]])
        parts.append(ubi.transformed(rot, pos))
    grid = Grid((256, 256), 2.0)
    ice = IceModel(300.0, 4.8775, 0.7591)
    rebuilt = _exact_projection(Atoms.concatenate(parts), grid, get_table("kirkland"), ice).real.float()
    sim = (r.projected_potential.real - complex(r.projected_potential[0, 0]).real).float()
    ap = antialias_mask(grid.k2(), 2.0)
    a, b = ifft2(fft2(rebuilt) * ap).real, ifft2(fft2(sim) * ap).real
    a, b = a - a.mean(), b - b.mean()
    corr = float((a * b).sum() / (a.norm() * b.norm()))
    assert corr > 0.999, corr


def test_tiled_equals_untiled():
    """Tiles with a 128 px margin against the whole periodic field (soft band edge: see antialias_taper_fraction).
    Measured: 6e-7 of the wave, 3e-4 of its scattered part (64 px margins: 1.5e-5 and 7e-3)."""
    common = dict(detector={"shape_px": [384, 384], "pixel_size_a": 4.0},
                  sample={"particles": [{"structure": UBI, "random": {"count": 30}, "representation": "map"}]})
    whole = simulate(base(**common, simulation={"window": "off", "antialias_taper_fraction": 0.15}))
    tiled = simulate(base(**common, simulation={"window": "off", "antialias_taper_fraction": 0.15, "tile_px": 96,
                                                "tile_margin_px": 128}))
    assert tiled.metadata["tiles"] == 16 and tiled.metadata["particle_types"][0]["mode"] == "projection"
    a, b = whole.exit_wave, tiled.exit_wave
    assert float((a - b).norm() / a.norm()) < 1e-5
    assert float((a - b).norm() / (a - a[0, 0]).norm()) < 1e-3
    assert float((whole.noiseless - tiled.noiseless).norm() / whole.noiseless.norm()) < 1e-5


def test_potential_volume_is_the_scene_in_3d():
    """The ground-truth volume: a particle's mass centre where it was placed, and its integral equal to the
    projected potential's (both net of the ice the particle displaces)."""
    from difftem.simulate.pipeline import potential_volume

    cfg = base(detector={"shape_px": [96, 96], "pixel_size_a": 4.0},
               sample={"ice_thickness_nm": 20, "particles": [{"structure": UBI, "positions_a": [[20, -12, 15]]}]})
    vol, v = potential_volume(cfg)
    assert v == 4.0 and vol.shape[1:] == (96, 96)
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in vol.shape), indexing="ij")
    w = vol.double().clamp(min=0)
    centre = [float((w * g).sum() / w.sum()) for g in (xx, yy, zz)]
    assert (centre[0] - 48) * v == pytest.approx(20, abs=1.0)
    assert (centre[1] - 48) * v == pytest.approx(-12, abs=1.0)
    assert (centre[2] - vol.shape[0] // 2) * v == pytest.approx(15, abs=1.5)
    proj = simulate(cfg, keep_potential=True).projected_potential.real
    assert float(vol.sum()) * v**3 == pytest.approx(float((proj - proj[0, 0]).sum()) * v**2, rel=1e-3)


def test_bounding_capsule_holds_every_atom():
    """A synthetic rod (points on its axis) with atoms at its corners (off the axis, level with its ends), and a
    16-subunit helical rod of ubiquitin: every atom lies within the capsule (distance to the segment ≤ radius);
    the old shortened segment left the corner atoms outside by up to (√2 − 1)·r."""
    from difftem.specimen.scene import capsule_distances_a

    rng = np.random.default_rng(0)
    z = np.linspace(-200.0, 200.0, 201)
    ring = np.stack([30 * np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)),
                     30 * np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))], 1)
    corners = np.concatenate([np.c_[ring, np.full(24, 200.0)], np.c_[ring, np.full(24, -200.0)]])
    rod = np.concatenate([np.c_[np.zeros((201, 2)), z], corners, rng.uniform(-10, 10, (300, 3))])
    rot = rotation_zyz_deg(30.0, 50.0, 70.0)
    for pts in (rod, rod @ rot.T + np.array([5.0, -3.0, 8.0])):
        caps = bounding_capsule(pts, "capsule")
        d = capsule_distances_a(pts, caps)
        assert (d <= caps.radius_a + 1e-9).all()
        assert caps.half_length_a > 100 and caps.radius_a == pytest.approx(30.0, abs=1.0)
        # the old rule (segment shortened by the radius, radius unchanged) left the corners outside by ~(√2 − 1)·r
        r = caps.radius_a
        short = type(caps)(caps.centre_a, caps.axis, 200.0 - r, r)
        assert capsule_distances_a(pts, short).max() - r == pytest.approx((math.sqrt(2) - 1) * r, rel=0.05)
    ubi = read_structure(UBI_PATH).positions_a
    helix = helical_assembly(read_structure(UBI_PATH, centre="none"), 30.0, 60.0, 16,
                             axis_point_a=(20.3, 28.8, 0.0)).centred("bbox").positions_a
    for pts in (ubi, helix):
        for shape in ("auto", "capsule", "sphere"):
            caps = bounding_capsule(pts, shape)
            assert (capsule_distances_a(pts, caps) <= caps.radius_a + 1e-9).all(), shape
