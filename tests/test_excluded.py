"""Excluded shapes of spheres (specimen/excluded.py, sample.crowding.shape: spheres): the spheres hold every atom
with the margin and close enclosed cavities; a crowd excluded by spheres has no two copies' heavy atoms closer than
the gap plus twice the margin (every pair checked with a k-d tree, independently of the placer), reaches its
molecular fraction, and packs an elongated type into less volume than its capsules."""

import numpy as np
import pytest
from conftest import STRUCTURES
from scipy.spatial import cKDTree

from difftem.config import Particle, config_from_dict
from difftem.specimen.build import builtin_structure, load_particle_type, resolve_structure, scene_of
from difftem.specimen.crowding import capsule_volume_a3
from difftem.specimen.excluded import MARGIN_A, cavity_points_a, sphere_cover, union_volume_a3
from difftem.specimen.structure import Atoms

ROD = {"rise_a": 30, "twist_deg": 60, "n_subunits": 8, "axis_point_a": [20.3, 28.8, 0]}


def _type(**kw):
    return load_particle_type(Particle(structure="builtin:1ubi", **kw), resolve_structure)


def test_spheres_hold_every_atom_and_are_tighter_than_the_capsule():
    """Every atom lies inside some sphere by at least the margin; for the 8-subunit rod the union (counted on a grid,
    checked against Monte Carlo) is well below the capsule; the cover is seeded."""
    for ty in (_type(), _type(helix=ROD)):
        cover = sphere_cover(ty, 10.0, 64)
        d = np.linalg.norm(ty.atoms.positions_a[:, None] - cover.centres_a[None], axis=-1) - cover.radii_a[None]
        assert (d.min(1) <= -MARGIN_A + 1e-9).all()
        again = sphere_cover(ty, 10.0, 64)
        np.testing.assert_array_equal(cover.centres_a, again.centres_a)
    rng = np.random.default_rng(0)
    lo = (cover.centres_a - cover.radii_a[:, None]).min(0)
    hi = (cover.centres_a + cover.radii_a[:, None]).max(0)
    p = rng.uniform(lo, hi, (200_000, 3))
    inside = (((p[:, None] - cover.centres_a[None]) ** 2).sum(-1) <= cover.radii_a**2).any(1)
    assert union_volume_a3(cover.centres_a, cover.radii_a) == pytest.approx(inside.mean() * np.prod(hi - lo),
                                                                            rel=0.02)
    rod = _type(helix=ROD)
    assert cover.volume_a3 < 0.75 * capsule_volume_a3(rod.bounds)  # measured 0.6


def test_enclosed_cavities_are_covered():
    """A hollow shell of points (radius 40 Å, 2 Å apart) has its inside found as a cavity, and the spheres cover
    its centre; an open half-shell has none."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(12000, 3))
    shell = 40.0 * v / np.linalg.norm(v, axis=1, keepdims=True)
    cav, g = cavity_points_a(shell)
    assert len(cav) * g**3 == pytest.approx(4 / 3 * np.pi * 37.0**3, rel=0.15)  # inside the probe's 3 Å
    assert len(cavity_points_a(shell[shell[:, 2] > 0])[0]) == 0
    atoms = Atoms(np.full(len(shell), 6), shell, np.zeros(len(shell)), np.ones(len(shell)), "shell", [])
    from difftem.specimen.scene import ParticleType, bounding_capsule

    cover = sphere_cover(ParticleType("shell", atoms, bounding_capsule(shell)), 10.0, 64)
    assert (np.linalg.norm(cover.centres_a, axis=1) - cover.radii_a).min() < 0  # the centre is covered


def test_crowd_by_spheres_keeps_atoms_apart():
    """Ubiquitin at 3 % and the 8-subunit rod at 3.5 % by molecular volume in a 64 × 64 × 50 nm box, excluded by
    spheres where they are smaller than the capsule (the rod; its capsules alone would fill 29 %): no two copies'
    heavy atoms within min_gap_a + 2·margin (3 Å), every pair counted (k-d trees); each type at its fraction."""
    cfg = config_from_dict({"seed": 5, "detector": {"shape_px": [160, 160], "pixel_size_a": 4.0},
                            "sample": {"ice_thickness_nm": 50, "crowding": {"basis": "molecular", "shape": "spheres"},
                                       "particles": [
                                           {"name": "ubi", "structure": "builtin:1ubi", "volume_fraction": 0.03},
                                           {"name": "rod", "structure": "builtin:1ubi", "helix": ROD,
                                            "volume_fraction": 0.035}]}})
    scene = scene_of(cfg)
    rep = scene.crowding
    assert rep["shape"] == "spheres"
    for row, want in zip(rep["types"], (0.035, 0.03), strict=True):  # largest first: the rod, then ubiquitin
        assert row["molecular_fraction"] == pytest.approx(want, rel=0.02)
    rows = {r["type"]: r for r in rep["types"]}
    assert rows["rod"]["spheres"] > 1 and rows["rod"]["shape_volume_nm3"] < 0.75 * rows["rod"]["capsule_volume_nm3"]
    # pairs of heavy atoms within r in the scene, less those within each (rigid) copy: the pairs between copies
    pl = scene.placement
    pts = np.concatenate([(np.einsum("mij,aj->mai", pl.rotations[pl.type_index == t], ty.atoms.positions_a)
                           + pl.positions_a[pl.type_index == t, None]).reshape(-1, 3)
                          for t, ty in enumerate(scene.types)])
    tree = cKDTree(pts)

    def between(r):
        within = sum(scene.copies_of(t) * int(cKDTree(ty.atoms.positions_a).count_neighbors(
            cKDTree(ty.atoms.positions_a), r)) for t, ty in enumerate(scene.types))
        return int(tree.count_neighbors(tree, r)) - within

    limit = cfg.sample.crowding.gap_a + 2 * MARGIN_A
    assert len(pl) > 200 and between(limit) == 0
    assert between(limit + 4.0) > 0  # yet copies come close: measured nearest 6.0 Å


def test_apoferritin_cavity_is_closed(shared_data):
    """Apoferritin (6Z6U, 24 subunits): its 8 nm cavity is found, and the spheres cover the shell's centre, so no
    small protein can be placed inside it."""
    ty = load_particle_type(Particle(structure=str(STRUCTURES / "6z6u_apoferritin.pdb.gz")), resolve_structure)
    cav, g = cavity_points_a(ty.atoms.positions_a)
    assert len(cav) * g**3 > 1e5  # Å³: most of the 8 nm cavity
    cover = sphere_cover(ty, 10.0, 64)
    centre = ty.atoms.positions_a.mean(0)
    assert (np.linalg.norm(cover.centres_a - centre, axis=1) < cover.radii_a).any()
    assert builtin_structure("1ubi").exists()
