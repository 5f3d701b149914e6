"""Membrane sheets (sample.membrane_sheets) as obstacles and labels: random copies, the crowd, fiducials and vesicles
keep clear of each sheet's bilayer (no atom within it: checked atom by atom against the disc's or plane's geometry,
independently of the placer's golden-section search), and the label volumes mark the sheet's voxels where the sheet
is (the membrane mask, class and instance)."""

import math

import numpy as np
import pytest

from difftem.config import config_from_dict
from difftem.simulate.labels import make_labels
from difftem.specimen.build import scene_of
from difftem.specimen.sheets import point_sheet_distances_a, segment_sheet_distances_a

DISC = {"centre_a": [40.0, -30.0, 20.0], "normal": [0.3, 0.2, 1.0], "radius_nm": 25.0}
VERTICAL = {"centre_a": [-250.0, 150.0, 0.0], "normal": [1.0, 0.0, 0.0], "radius_nm": 12.0}
PLANE = {"centre_a": [0.0, 0.0, -180.0], "normal": [0.05, 0.0, 1.0]}


def _config(particles, sheets=(DISC, VERTICAL, PLANE), ice_nm=60, shape=200, extra=None, labels=None):
    sample = {"ice_thickness_nm": ice_nm, "particles": particles, "membrane_sheets": list(sheets), **(extra or {})}
    return config_from_dict({"seed": 3, "detector": {"shape_px": [shape, shape], "pixel_size_a": 4.0},
                             "sample": sample, **({"labels": labels} if labels else {})})


def _atoms(scene, types=None):
    """Every atom of the chosen types' copies in the scene frame, and its copy index."""
    pl = scene.placement
    out, owner = [], []
    for t, ty in enumerate(scene.types):
        if types is not None and t not in types:
            continue
        sel = np.flatnonzero(pl.type_index == t)
        pts = np.einsum("mij,aj->mai", pl.rotations[sel], ty.atoms.positions_a) + pl.positions_a[sel, None]
        out.append(pts.reshape(-1, 3))
        owner.append(np.repeat(sel, len(ty.atoms)))
    return np.concatenate(out), np.concatenate(owner)


def _sheet_clearance(scene, pts):
    """(N,) each point's least distance from every sheet's bilayer (mid-surface distance − half extent W)."""
    sh = scene.sheets
    w = np.array([b.half_extent_a for b in sh.bilayers])
    d = point_sheet_distances_a(pts[:, None], sh.centres_a[None], sh.normals[None], sh.radii_a[None])
    return (d - w[None]).min(1)


def test_segment_distance_matches_dense_sampling():
    """The golden-section distance from segments to discs and planes equals the minimum over 20,001 points along
    each segment (to the sampling's 3e-3 Å), never above it; a segment through a plane is at 0."""
    rng = np.random.default_rng(0)
    n = 1500
    a = rng.uniform(-100, 100, (n, 3))
    b = a + rng.uniform(-60, 60, (n, 3))
    c = rng.uniform(-20, 20, (n, 3))
    nrm = rng.normal(size=(n, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    r = np.where(rng.random(n) < 0.3, np.inf, rng.uniform(10, 80, n))
    d = segment_sheet_distances_a(a, b, c, nrm, r)
    s = np.linspace(0, 1, 20001)
    dense = point_sheet_distances_a(a[:, None] + s[None, :, None] * (b - a)[:, None], c[:, None], nrm[:, None],
                                    r[:, None]).min(1)
    assert (d <= dense + 1e-9).all() and (dense - d).max() < 3e-3
    crossing = ~np.isfinite(r) & ((((a - c) * nrm).sum(1) * ((b - c) * nrm).sum(1)) < 0)
    assert crossing.any() and (d[crossing] == 0).all()


@pytest.mark.parametrize("mode", ["random", "crowd"])
def test_copies_keep_clear_of_sheets(mode):
    """Ubiquitin and a ring of six, random (500 copies) or crowded (8 % each): no atom of any copy lies within
    a sheet's bilayer (mid-plane ± W, W = 31 Å) plus the gap; the sheets took room (with them, copies lie where,
    without them, they would have crossed a sheet)."""
    ring = {"rise_a": 0, "twist_deg": 60, "n_subunits": 6, "axis_point_a": [0.3, 28.8, 0]}
    if mode == "random":
        parts = [{"structure": "builtin:1ubi", "random": {"count": 400, "min_gap_a": 3.0}},
                 {"structure": "builtin:1ubi", "helix": ring, "random": {"count": 100, "min_gap_a": 3.0}}]
        gap = 3.0
    else:
        parts = [{"structure": "builtin:1ubi", "volume_fraction": 0.08},
                 {"structure": "builtin:1ubi", "helix": ring, "volume_fraction": 0.08}]
        gap = 2.0
    scene = scene_of(_config(parts))
    assert len(scene.sheets) == 3 and len(scene.placement) >= 500
    pts, _ = _atoms(scene)
    clear = _sheet_clearance(scene, pts)
    assert clear.min() >= gap - 1e-6, clear.min()
    plain = scene_of(_config(parts, sheets=()))
    pts0, _ = _atoms(plain)
    assert _sheet_clearance(scene, pts0).min() < 0  # without sheets, atoms sit where the bilayers would be
    if mode == "crowd":  # the bilayers' volume leaves the free volume: a disc πR²·2W, the plane its area × 2W
        w = scene.sheets.bilayers[0].half_extent_a
        vol = (math.pi * 250.0**2 + math.pi * 120.0**2 + 800.0**2 / (1 / math.sqrt(1 + 0.05**2))) * 2 * w
        assert (plain.crowding["free_volume_um3"] - scene.crowding["free_volume_um3"]) * 1e12 == pytest.approx(vol)


def test_beads_and_vesicles_keep_clear_of_sheets():
    """Gold beads on the ice faces and vesicles keep clear of the sheets (a bead's or vesicle's whole sphere)."""
    cfg = _config([], sheets=(DISC, VERTICAL), ice_nm=80, extra={
        "fiducials": {"count": 12, "diameter_nm": 5}, "vesicles": {"count": 4, "radius_nm": 8, "radius_sd_nm": 0}})
    scene = scene_of(cfg)
    pts, _ = _atoms(scene)
    assert len(pts) > 0 and _sheet_clearance(scene, pts).min() >= 0
    ves = scene.vesicles
    outer = ves.radii_a + ves.bilayer.half_extent_a
    assert (_sheet_clearance(scene, ves.centres_a) >= outer).all()


def test_labels_mark_the_sheets():
    """The label volume's membrane mask holds a disc's and a plane's voxels exactly where their mid-planes are:
    each labelled voxel centre lies within D_HH/2 + √(2 ln 2)·σ_H (22.5 Å) of the sheet's mid-plane and inside the
    disc's radius, every such voxel is labelled; their class is the membrane class, their instances follow the
    copies (the disc's before the plane's); particle voxels keep their own labels."""
    v = 6.0
    cfg = _config([{"structure": "builtin:1ubi", "random": {"count": 30}}], sheets=(DISC, PLANE), ice_nm=60,
                  labels={"voxel_size_a": v, "thickness_a": 480.0})
    scene = scene_of(cfg)
    lab = make_labels(scene, cfg)
    nz, ny, nx = lab.classes.shape
    z = (np.arange(nz) - nz // 2) * v
    y = (np.arange(ny) - ny // 2) * v
    x = (np.arange(nx) - nx // 2) * v
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    pts = np.stack([xx, yy, zz], -1)
    half = lab.membrane_half_thickness_a
    assert half == pytest.approx(22.53, abs=0.01)
    n_copies = len(scene.placement)
    for k, entry in enumerate((DISC, PLANE)):
        c = np.asarray(entry["centre_a"])
        nrm = np.asarray(entry["normal"]) / np.linalg.norm(entry["normal"])
        u = ((pts - c) * nrm).sum(-1)
        inside = np.abs(u) <= half
        if "radius_nm" in entry:
            inside &= ((pts - c) ** 2).sum(-1) - u * u <= (entry["radius_nm"] * 10) ** 2
        mine = lab.membranes == k + 1
        np.testing.assert_array_equal(mine, inside)
        assert inside.sum() > 1000
        free = mine & (lab.instances <= n_copies) & (lab.classes <= len(scene.types))  # where a particle is
        assert (lab.classes[mine & ~free] == lab.membrane_class).all()
        assert (lab.instances[mine & ~free] == n_copies + k + 1).all()
    assert lab.mask.sum() > 0 and not (lab.mask & (lab.classes == lab.membrane_class)).any()


def test_filaments_and_membrane_proteins_keep_clear_of_sheets():
    """Curved filaments of ubiquitin and ubiquitins embedded in vesicles: no atom of theirs within a sheet's
    bilayer."""
    fil = {"rise_a": 27.5, "twist_deg": -166.7, "axis_point_a": [10.3, 28.8, 15.4], "count": 3, "length_nm": 40,
           "persistence_length_nm": 200}
    cfg = _config([{"name": "fil", "structure": "builtin:1ubi", "filament": fil},
                   {"name": "emb", "structure": "builtin:1ubi", "membrane": {"count": 20, "depth_a": 30}}],
                  sheets=(DISC, VERTICAL, PLANE), ice_nm=80,
                  extra={"vesicles": {"count": 3, "radius_nm": 8, "radius_sd_nm": 0}})
    scene = scene_of(cfg)
    assert scene.copies_of(0) > 20 and scene.copies_of(1) == 20
    pts, _ = _atoms(scene)
    assert _sheet_clearance(scene, pts).min() >= 0
