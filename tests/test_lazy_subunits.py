"""A type made of copies of one unit (a helix, a transforms file) is never expanded to every atom unless a path needs
them all: its centre, bounds, radius, mass, slab count, edge warnings, labels and ground-truth volume come from the
unit and its operators, and equal what the whole type's atoms give."""

from pathlib import Path

import numpy as np
import pytest
from test_subunits import HELIX, UBI, config  # the same small helix cases

from difftem import simulate
from difftem.config import config_from_dict
from difftem.forward.resources import TypeLoad
from difftem.simulate.pipeline import potential_volume
from difftem.simulate.setup import Setup, scene_warnings
from difftem.specimen.build import load_particle_type, resolve_structure, scene_of
from difftem.specimen.crowding import covering_bounds
from difftem.specimen.labels import label_volumes
from difftem.specimen.scene import ParticleType, Scene, Subunits, bounding_capsule, helical_assembly
from difftem.specimen.structure import Atoms, read_structure

TMV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "structures" / "2om3_tmv_cssmol.pdb.gz"


def full_atoms(particle: dict, ops_file: Path | None = None) -> Atoms:
    """The type's atoms as they were built before: every copy concatenated, then centred."""
    unit = read_structure(resolve_structure(particle["structure"]), centre="none",
                          models=particle.get("models", "auto"))
    if ops_file is not None:
        from difftem.io.tables import read_transforms_file

        ops = read_transforms_file(ops_file)
        unit = Atoms.concatenate([unit.transformed(op[:, :3], op[:, 3]) for op in ops])
        unit.notes.append(f"{len(ops)} copies from {ops_file.name}")
    if "helix" in particle:
        h = particle["helix"]
        n = h.get("n_subunits") or round(h["length_a"] / abs(h["rise_a"]))
        unit = helical_assembly(unit, h["rise_a"], h["twist_deg"], n, h.get("axis", (0, 0, 1)),
                                h.get("axis_point_a", (0, 0, 0)))
    return unit.centred(particle.get("centre", "mass"))


def ops_file(tmp_path: Path) -> Path:
    ops = tmp_path / "ops.txt"  # TEM-simulator's 6-column transforms: t (Å), phi theta psi (deg)
    ops.write_text("3 6\n0 0 0 0 0 0\n25 -4 7 90 30 0\n-10 20 5 10 -60 45\n")
    return ops


def assert_same_bounds(a, b, tol_a=1e-5):
    # the covering step (every atom inside: scene.covering_capsule) turns 1e-13 Å differences in the principal axis
    # into up to 1e-6 Å of length or radius (a square root near zero); anything visible would be ≥ 1e-2 Å
    assert a.half_length_a == pytest.approx(b.half_length_a, abs=tol_a)
    assert a.radius_a == pytest.approx(b.radius_a, abs=tol_a)
    np.testing.assert_allclose(a.centre_a, b.centre_a, atol=1e-8)
    assert abs(abs(float(a.axis @ b.axis)) - 1) < 1e-9  # the same axis (either sign)


@pytest.mark.parametrize("centre", ["mass", "bbox", "none"])
@pytest.mark.parametrize("kind", ["helix", "transforms", "both"])
def test_lazy_quantities_equal_the_full_atoms(tmp_path, centre, kind):
    ops = ops_file(tmp_path) if kind != "helix" else None
    particle = {"structure": UBI, "centre": centre, **({"helix": HELIX} if kind != "transforms" else {}),
                **({"transforms_file": str(ops)} if ops is not None else {})}
    for shape in ("auto", "sphere", "capsule"):
        entry = config({**particle, "random": {"count": 1, "bounding": shape}})
        entry["sample"]["particles"][0].pop("positions_a")
        ptype = load_particle_type(config_from_dict(entry).sample.particles[0], resolve_structure)
        old = full_atoms(particle, ops)
        assert not ptype.atoms_built and ptype.n_atoms == len(old)
        assert_same_bounds(ptype.bounds, bounding_capsule(old.positions_a, shape))
        # the sphere, and the covering capsule (the crowd's) of a capsule with a segment, hold every atom
        cb = covering_bounds(ptype)
        if shape == "sphere" or cb.half_length_a > 0:
            rel = old.positions_a - cb.centre_a
            t = np.clip(rel @ cb.axis, -cb.half_length_a, cb.half_length_a)
            assert np.sqrt(((rel - t[:, None] * cb.axis) ** 2).sum(1)).max() <= cb.radius_a + 1e-9
    reference = ParticleType("old", old, bounding_capsule(old.positions_a), subunits=ptype.subunits)
    assert ptype.radius_a == pytest.approx(reference.radius_a, abs=1e-9)
    assert ptype.mass_da == pytest.approx(reference.mass_da, rel=1e-12)
    assert ptype.notes == old.notes
    # (√(r² − d²) near r = d turns rounding of 1e-13 Å² into 1e-6 Å)
    assert_same_bounds(covering_bounds(ptype), covering_bounds(reference), tol_a=1e-5)
    lazy, full = TypeLoad.of(ptype, 3, "x", 20.0), TypeLoad.of(reference, 3, "x", 20.0)
    assert (lazy.n_atoms, lazy.n_elements, lazy.slab_atoms, lazy.n_units) == (
        full.n_atoms, full.n_elements, full.slab_atoms, full.n_units)
    assert not ptype.atoms_built  # none of the above built the atoms
    built = ptype.atoms  # the atom path's: the same atoms, in the same order
    assert ptype.atoms_built
    np.testing.assert_allclose(built.positions_a, old.positions_a, atol=1e-9)
    for name in ("atomic_number", "b_iso_a2", "occupancy"):
        np.testing.assert_array_equal(getattr(built, name), getattr(old, name))
    assert built.notes == old.notes and built.source == old.source


def test_tmv_rod_bounds_from_the_unit(shared_data):
    """A 70 nm TMV rod (500 subunits of 6395 atoms): bounds, radius and slab count as from its 3.2 M atoms."""
    particle = {"structure": str(TMV), "helix": {"rise_a": 1.408, "twist_deg": 22.04, "n_subunits": 500}}
    ptype = scene_of(config_from_dict(config(particle))).types[0]
    old = full_atoms(particle)
    assert not ptype.atoms_built and ptype.n_atoms == len(old) == 500 * 6395
    assert_same_bounds(ptype.bounds, bounding_capsule(old.positions_a))
    assert ptype.bounds.half_length_a > 200  # a capsule along the rod
    assert ptype.radius_a == pytest.approx(float(np.sqrt((old.positions_a**2).sum(1)).max()), abs=1e-9)
    reference = ParticleType("old", old, ptype.bounds, subunits=ptype.subunits)
    assert TypeLoad.of(ptype, 1, "x", 50.0).slab_atoms == TypeLoad.of(reference, 1, "x", 50.0).slab_atoms
    assert not ptype.atoms_built


def test_subunit_run_never_builds_the_atoms_and_warnings_count_the_same():
    """The subunits mode's image, its estimate and its warnings need only the unit; the edge warnings count what
    the whole type's atoms count (here the helix pokes out of 6 nm of ice)."""
    cfg = config_from_dict(config({"helix": HELIX, "representation": "map"}, sample={"ice_thickness_nm": 6}))
    setup = Setup.build(cfg)
    assert setup.modes == ["subunits"]
    scene = setup.scene
    lazy = scene_warnings(scene, setup.grid, setup.ice.thickness_a)
    assert not scene.types[0].atoms_built
    ptype = scene.types[0]
    built = Scene([ParticleType("t", ptype.atoms, ptype.bounds)], scene.placement)
    full = scene_warnings(built, setup.grid, setup.ice.thickness_a)
    assert lazy == full and any("stick out" in w for w in full)
    result = simulate(cfg, scene=scene_of(cfg))
    assert result.metadata["particle_types"][0]["mode"] == "subunits"


def test_atom_path_image_equals_the_full_types():
    """representation: atoms builds the atoms from the units: the image of the type built the old way (every
    copy's atoms concatenated, centred) is the same to float rounding."""
    particle = {"helix": HELIX, "representation": "atoms"}
    cfg = config_from_dict(config(particle))
    lazy_scene = scene_of(cfg)
    ptype = lazy_scene.types[0]
    old = full_atoms({"structure": UBI, **particle})
    old_scene = Scene([ParticleType(ptype.name, old, bounding_capsule(old.positions_a), "atoms")],
                      lazy_scene.placement)
    a = simulate(cfg, scene=lazy_scene).noiseless
    b = simulate(cfg, scene=old_scene).noiseless
    assert lazy_scene.types[0].atoms_built
    assert float((a - b).abs().max() / b.mean()) < 1e-5


@pytest.mark.slow
def test_ground_truth_volume_from_the_unit():
    """The potential volume places the unit's map at every unit (unit_slab): the whole type's map to 0.15 %
    (measured; the maps differ by interpolation) without building the type's atoms (2–20 s, idle to loaded)."""
    cfg = config_from_dict(config({"helix": HELIX, "representation": "map"}))
    scene = scene_of(cfg)
    ptype = scene.types[0]
    vol_units, _ = potential_volume(cfg, scene=scene, voxel_size_a=4.0)
    assert not ptype.atoms_built
    whole = Scene([ParticleType(ptype.name, ptype.atoms, ptype.bounds, "map")], scene.placement)
    vol_whole, _ = potential_volume(cfg, scene=whole, voxel_size_a=4.0)
    err = float((vol_units - vol_whole).norm() / vol_whole.norm())
    assert err < 0.005, err
    assert float(vol_units.sum() / vol_whole.sum()) == pytest.approx(1.0, abs=1e-3)


def test_labels_from_the_unit():
    """The labels place the unit's molecular volume at every unit: the whole type's volume but where units touch
    and on the grids' boundaries (measured IoU 0.90, voxel counts within 0.6 %), one instance per copy."""
    cfg = config_from_dict(config({"helix": HELIX, "representation": "map"}))
    scene = scene_of(cfg)
    ptype = scene.types[0]
    whole = Scene([ParticleType(ptype.name, ptype.atoms, ptype.bounds, "map")], scene.placement)
    lazy = Scene([ParticleType(ptype.name, None, ptype.bounds, "map", ptype.subunits)], scene.placement)
    shape, v = (40, 128, 128), 2.0
    cls_u, inst_u = label_volumes(lazy, shape, v)
    assert not lazy.types[0].atoms_built
    cls_w, inst_w = label_volumes(whole, shape, v)
    a, b = cls_u > 0, cls_w > 0
    assert float((a & b).sum() / (a | b).sum()) > 0.85
    assert a.sum() == pytest.approx(b.sum(), rel=0.02)
    assert set(np.unique(inst_u)) == set(np.unique(inst_w)) == {0, 1}


def test_hull_candidates_keep_every_extreme_point():
    """The atoms kept for extents hold every vertex of the convex hull: maxima of convex functions (coordinates,
    distances from random points and lines) over them equal those over all atoms; TMV's unit keeps ~3 % of them."""
    from difftem.specimen.scene import hull_candidates

    rng = np.random.default_rng(0)
    clouds = [read_structure(resolve_structure(UBI)).positions_a, rng.normal(size=(5000, 3)) * [30, 10, 5],
              rng.uniform(-1, 1, (3000, 3)) * 20, np.c_[rng.normal(size=(500, 2)), np.zeros(500)]]  # the last flat
    if TMV.exists():
        clouds.append(read_structure(TMV, centre="none").positions_a)
    for pos in clouds:
        keep = pos[hull_candidates(pos)]
        assert len(keep) <= len(pos)
        for _ in range(20):
            p, u = rng.normal(size=3) * 50, rng.normal(size=3)
            u /= np.linalg.norm(u)
            for f in (lambda x, p=p: ((x - p) ** 2).sum(1), lambda x, u=u: x @ u,
                      lambda x, p=p, u=u: (((x - p) - ((x - p) @ u)[:, None] * u) ** 2).sum(1)):
                assert f(keep).max() == f(pos).max()
    assert len(hull_candidates(clouds[-1])) < 0.05 * len(clouds[-1]) or not TMV.exists()


@pytest.mark.parametrize("step", [1, 3, 7, 50, 1000])
def test_every_nth_position_is_the_expanded_atoms_every_nth(step):
    """The slab estimate's even subsample, unit by unit, equals slicing the expanded atoms (steps that split
    units, that skip whole units, that take one atom)."""
    rng = np.random.default_rng(4)
    n = 37
    unit = Atoms(np.full(n, 6), rng.normal(size=(n, 3)) * 10, np.full(n, 20.0), np.ones(n))
    rots = np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(11)])
    units = Subunits(unit, rots, rng.normal(size=(11, 3)) * 50)
    want = units.expanded().positions_a[::step]
    got = units.every_nth_position(step)
    assert got.shape == want.shape
    assert np.allclose(got, want, rtol=0, atol=1e-12)
