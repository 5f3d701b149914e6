"""Crowded placement (specimen/crowding.py): volume fractions reached, no overlaps (checked independently with a k-d
tree and exact segment distances), clear of vesicle shells and filament tubes, inside the field and the ice, fast,
seeded, and unreachable targets refused in one line naming the field."""

import math
import time

import numpy as np
import pytest
from scipy.spatial import cKDTree

from difftem.config import config_from_dict
from difftem.core.errors import ConfigError
from difftem.specimen.build import scene_of
from difftem.specimen.crowding import CrowdTarget, Obstacles, capsule_volume_a3, covering_bounds, crowded_placement
from difftem.specimen.geometry import IceProfile
from difftem.specimen.scene import _segments, segment_distances

RING6 = {"rise_a": 0, "twist_deg": 60, "n_subunits": 6, "axis_point_a": [0.3, 28.8, 0]}
ROD = {"rise_a": 30, "twist_deg": 60, "n_subunits": 8, "axis_point_a": [20.3, 28.8, 0]}


def _config(fractions=(0.06, 0.06, 0.06), shape=300, ice_nm=60, vesicles=None, crowding=None, seed=4):
    """Ubiquitin, a ring of six and a rod of eight (all from the bundled 1UBI) at the given capsule fractions."""
    parts = [{"name": "ubi", "structure": "builtin:1ubi", "volume_fraction": fractions[0]},
             {"name": "ring6", "structure": "builtin:1ubi", "helix": RING6, "volume_fraction": fractions[1]},
             {"name": "rod", "structure": "builtin:1ubi", "helix": ROD, "volume_fraction": fractions[2]}]
    sample = {"ice_thickness_nm": ice_nm, "particles": [p for p, f in zip(parts, fractions, strict=True) if f]}
    if vesicles:
        sample["vesicles"] = vesicles
    if crowding:
        sample["crowding"] = crowding
    return config_from_dict({"seed": seed, "detector": {"shape_px": [shape, shape], "pixel_size_a": 4.0},
                             "sample": sample})


def _overlaps(scene, gap_a=0.0):
    """Pairs of copies whose bounding capsules come closer than ``gap_a``: k-d tree on the capsules' midpoints
    (radius twice the largest reach), exact segment distances for those pairs — independent of the placer's hash."""
    a, b, r = _segments([t.bounds for t in scene.types], scene.placement)
    reach = 0.5 * np.linalg.norm(b - a, axis=1) + r
    pairs = cKDTree(0.5 * (a + b)).query_pairs(2 * reach.max() + gap_a, output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    d = segment_distances(a[i], b[i], a[j], b[j])
    return int((d < r[i] + r[j] + gap_a - 1e-6).sum()), len(pairs)


def test_fractions_reached_without_overlap_inside_the_ice():
    """Three types at 6 % each (capsules): every type within 1 % (relative) of its target, no two capsules within the
    gap, every capsule (and atom) inside the field and the 60 nm slab; about 9,000 copies in under a few seconds."""
    cfg = _config(shape=600)
    t0 = time.perf_counter()
    scene = scene_of(cfg)
    wall = time.perf_counter() - t0
    rep = scene.crowding
    assert rep["copies"] > 8_000 and len(scene.placement) == rep["copies"]
    for row in rep["types"]:
        assert row["capsule_fraction"] == pytest.approx(0.06, rel=0.01), row
    # the fraction, recomputed from the placement itself
    free = 2400.0**2 * 600.0
    for t, ptype in enumerate(scene.types):
        n = scene.copies_of(t)
        assert n * capsule_volume_a3(covering_bounds(ptype)) / free == pytest.approx(0.06, rel=0.01)
    bad, checked = _overlaps(scene, gap_a=2.0)
    assert checked > 1000 and bad == 0
    for t, ptype in enumerate(scene.types):  # every atom inside the field and the slab (the capsules hold them)
        sel = np.flatnonzero(scene.placement.type_index == t)[:300]
        atoms = np.einsum("mij,aj->mai", scene.placement.rotations[sel], ptype.atoms.positions_a)
        atoms = atoms + scene.placement.positions_a[sel, None]
        assert (np.abs(atoms[..., 2]) <= 300.0).all() and (np.abs(atoms[..., :2]) <= 1200.0).all()
    a, b, r = _segments([t.bounds for t in scene.types], scene.placement)
    for end in (a, b):
        assert (np.abs(end[:, 2]) + r <= 300.0 + 1e-6).all()
        assert (np.abs(end[:, :2]) + r[:, None] <= 1200.0 + 1e-6).all()
    assert rep["seconds"] < 5.0, rep["seconds"]  # measured ~0.5 s on a loaded 2-core machine
    assert wall < 15.0


def test_seeded_and_reproducible():
    one, two = scene_of(_config(seed=9)), scene_of(_config(seed=9))
    assert np.array_equal(one.placement.positions_a, two.placement.positions_a)
    assert np.array_equal(one.placement.rotations, two.placement.rotations)
    other = scene_of(_config(seed=9, crowding={"seed_offset": 1}))
    assert not np.array_equal(one.placement.positions_a[:10], other.placement.positions_a[:10])


def _vesicle_clearance(scene):
    """Per copy: (distance from each vesicle centre to its capsule segment, farthest end) and the capsule radii."""
    a, b, r = _segments([t.bounds for t in scene.types], scene.placement)
    c = scene.vesicles.centres_a[None]
    near = segment_distances(a[:, None], b[:, None], c, c)
    far = np.maximum(np.linalg.norm(a[:, None] - c, axis=-1), np.linalg.norm(b[:, None] - c, axis=-1))
    return near, far, r[:, None]


@pytest.mark.parametrize("lumen", [False, True])
def test_clear_of_vesicles(lumen):
    """No capsule crosses a bilayer (its extent ± half_extent about the mid-plane radius); without ``lumen`` none lies
    inside a vesicle either, with it some do."""
    cfg = _config((0.05, 0.05, 0.0), shape=320, ice_nm=100,
                  vesicles={"count": 3, "radius_nm": 18, "min_gap_a": 10}, crowding={"lumen": lumen})
    scene = scene_of(cfg)
    ves = scene.vesicles
    near, far, r = _vesicle_clearance(scene)
    half = ves.bilayer.half_extent_a
    outer, inner = ves.radii_a[None] + half, ves.radii_a[None] - half
    outside = near >= outer + r
    inside = far <= inner - r
    assert (outside | inside).all()
    assert inside.any() == lumen
    assert len(scene.placement) > 1000


def test_filaments_as_obstacles():
    """A curved tube given as a centreline polyline (the filaments' hook): no copy within its radius."""
    t = np.linspace(0, 1, 40)
    line = np.stack([-500 + 1000 * t, 300 * np.sin(2 * np.pi * t), 80 * np.cos(3 * np.pi * t)], 1)
    obst = Obstacles.from_polylines([line], 60.0)
    scene = scene_of(_config((0.05, 0.05, 0.0)))  # the types, and a reference count without the tube
    targets = [CrowdTarget(i, ty.name, f"t{i}", 0.05) for i, ty in enumerate(scene.types)]
    placement, rep = crowded_placement(scene.types, targets, field_a=(1200.0, 1200.0),
                                       profile=IceProfile("flat", 600.0), rng=np.random.default_rng(1),
                                       obstacles=obst, gap_a=2.0)
    a, b, r = _segments([t.bounds for t in scene.types], placement)
    d = segment_distances(a[:, None], b[:, None], line[None, :-1], line[None, 1:])  # the given line, not the chords
    assert (d >= r[:, None] + 60.0 + 2.0 - 0.5).all()  # chords a radius long cut the arc by < 0.5 Å here
    # the tube's volume (its length × πr², its two end caps once) is taken out of the free volume
    tube = sum(math.pi * 60.0**2 * np.linalg.norm(q - p) for p, q in zip(line[:-1], line[1:], strict=True))
    assert scene.crowding["free_volume_um3"] - rep["free_volume_um3"] == pytest.approx(
        (tube + 4 / 3 * math.pi * 60.0**3) * 1e-12, rel=0.01)


def test_unreachable_targets_are_refused_in_one_line():
    with pytest.raises(ConfigError) as up_front:  # 3 × 15 %: over the packing limit before placing
        scene_of(_config((0.15, 0.15, 0.15)))
    msg = str(up_front.value)
    assert "\n" not in msg and "volume_fraction" in msg and "jams" in msg
    with pytest.raises(ConfigError) as jammed:  # one shape at 37 %: random packing stops short of it
        scene_of(_config((0.0, 0.37, 0.0), shape=200, ice_nm=40))
    msg = str(jammed.value)
    assert "\n" not in msg and msg.startswith("sample.particles.") and "volume_fraction: reached" in msg


def test_config_errors():
    with pytest.raises(ConfigError, match="volume_fraction"):
        config_from_dict({"sample": {"particles": [{"structure": "builtin:1ubi", "volume_fraction": 0.1,
                                                    "random": {"count": 3}}]}})
    with pytest.raises(ConfigError, match="volume_fraction"):
        config_from_dict({"sample": {"particles": [{"structure": "builtin:1ubi", "volume_fraction": 0.7}]}})
    with pytest.raises(ConfigError, match="needs ice"):
        scene_of(_config(ice_nm=0))


def test_molecular_basis_counts_the_molecules():
    """basis molecular: copies × mass/1.35 g/cm³ fill the fraction (ubiquitin, 8.6 kDa: 10.6 nm³ each)."""
    scene = scene_of(_config((0.02, 0.0, 0.0), crowding={"basis": "molecular"}))
    row = scene.crowding["types"][0]
    assert row["molecular_fraction"] == pytest.approx(0.02, rel=0.01)
    assert row["molecular_volume_nm3"] == pytest.approx(scene.types[0].mass_da / (1.35 * 602.214), rel=1e-6)


def test_example_config_builds():
    from difftem.cli.simulate import _example_config

    cfg = _example_config("cellular")
    assert cfg.tilt_series is not None and cfg.labels is not None and cfg.sample.fiducials.count > 0
    scene = scene_of(cfg)
    assert len(scene.vesicles) == cfg.sample.vesicles.count
    assert len(scene.filaments) == 4
    rows = {r["type"]: r for r in scene.crowding["types"]}
    assert len(rows) == 4 and scene.crowding["copies"] >= 2000
    for p in cfg.sample.particles:
        if p.volume_fraction is not None:
            assert rows[p.name]["capsule_fraction"] == pytest.approx(p.volume_fraction, rel=0.02)


def test_example_names_on_the_command_line():
    from pathlib import Path

    from difftem.cli.simulate import _load_any_config

    assert _load_any_config(Path("example:cellular")).sample.crowding is not None
    with pytest.raises(ConfigError, match="example:nope: unknown example; available: cellular"):
        _load_any_config(Path("example:nope"))


def test_crowd_around_curved_filaments():
    """With filaments in the scene (sample.particles[].filament), the crowd keeps clear of their tubes and of their
    subunits, and the report counts the tubes' volume once."""
    from difftem.specimen.filaments import filament_obstacles

    actin_like = {"rise_a": 27.5, "twist_deg": -166.7, "axis_point_a": [10.3, 28.8, 15.4], "count": 4,
                  "length_nm": 80, "persistence_length_nm": 200}
    cfg = config_from_dict({"seed": 2, "detector": {"shape_px": [300, 300], "pixel_size_a": 4.0},
                            "sample": {"ice_thickness_nm": 60, "particles": [
                                {"name": "fil", "structure": "builtin:1ubi", "filament": actin_like},
                                {"name": "ubi", "structure": "builtin:1ubi", "volume_fraction": 0.08},
                                {"name": "ring6", "structure": "builtin:1ubi", "helix": RING6,
                                 "volume_fraction": 0.08}]}})
    scene = scene_of(cfg)
    assert len(scene.filaments) == 4
    crowd = np.isin(scene.placement.type_index, [1, 2])
    a, b, r = _segments([t.bounds for t in scene.types], scene.placement)
    for pts, rad in filament_obstacles(scene.filaments):
        d = segment_distances(a[crowd, None], b[crowd, None], pts[None, :-1], pts[None, 1:]).min(1)
        assert (d >= r[crowd] + rad + 2.0 - 0.5).all()
    sub = ~crowd  # the filaments' own subunits: no crowd capsule holds any of their atoms
    d = segment_distances(a[crowd, None], b[crowd, None], a[None, sub], b[None, sub])
    qi, si = np.nonzero(d < r[crowd, None] + r[None, sub])  # capsules that touch (the tubes hold the atoms, not these)
    ci, su = np.flatnonzero(crowd)[qi], np.flatnonzero(sub)[si]
    pl, atoms = scene.placement, scene.types[0].atoms.positions_a
    pts = np.einsum("pij,aj->pai", pl.rotations[su], atoms) + pl.positions_a[su, None]
    dist = segment_distances(pts, pts, a[ci, None], b[ci, None])
    assert (dist >= r[ci, None]).all()
    for row in scene.crowding["types"]:
        assert row["capsule_fraction"] == pytest.approx(0.08, rel=0.01)
