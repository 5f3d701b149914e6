"""Curved helical filaments (specimen/filaments.py): worm-like-chain statistics, subunit spacing, the straight limit
against helical_assembly, confinement to the ice and field, obstacles, labels and where a tilted projection puts
the density."""

import math

import numpy as np
import pytest
import torch

from difftem import simulate_tilt_series
from difftem.config import config_from_dict
from difftem.core.errors import ConfigError
from difftem.core.rotations import rotation_zyz_deg, tilt_rotation
from difftem.specimen.build import resolve_structure, scene_of
from difftem.specimen.filaments import (
    filament_obstacles,
    langevin_kappa,
    obstacle_capsules,
    worm_like_chain,
)
from difftem.specimen.labels import label_volumes
from difftem.specimen.scene import _segments, helical_assembly, segment_distances
from difftem.specimen.structure import read_structure

UBI = "builtin:1ubi"
UBI_CENTRE_A = (30.3, 28.8, 15.4)  # the mean atom position of 1ubi's file frame
# an actin-like stand-in: ubiquitin 20 Å off the axis, 27.5 Å rise, −166.7° twist (a two-start long-pitch helix)
ACTIN_LIKE = {"rise_a": 27.5, "twist_deg": -166.7, "axis_point_a": [10.3, 28.8, 15.4]}


def base(filament: dict, *, ice_nm=40.0, shape=(128, 128), px=4.0, more_particles=(), **sections):
    d = {"seed": 3, "beam": {"voltage_kv": 300, "dose_e_per_a2": 20},
         "detector": {"shape_px": list(shape), "pixel_size_a": px, "noise": "none"},
         "sample": {"ice_thickness_nm": ice_nm, "ice_structure": {"mode": "off"},
                    "particles": [{"structure": UBI, "filament": {**ACTIN_LIKE, **filament}}, *more_particles]},
         "simulation": {"slice_thickness_a": 10.0}}
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(d)


def subunit_atoms(scene, rows):
    """Every atom of the copies ``rows`` in the scene frame, (len(rows), atoms, 3)."""
    pl, t = scene.placement, scene.types[int(scene.placement.type_index[rows[0]])]
    return np.einsum("nij,aj->nai", pl.rotations[rows], t.atoms.positions_a) + pl.positions_a[rows][:, None]


# ------------------------------------------------------------------------------------------------ the chain
@pytest.mark.parametrize("lp_a", [60.0, 600.0])
def test_tangent_correlation_is_exponential(lp_a):
    """⟨t(0)·t(s)⟩ over many chains equals exp(−s/Lp) within 4 standard errors at every lag (the vMF step's
    concentration makes ⟨cos θ⟩ = exp(−step/Lp) exactly)."""
    rng = np.random.default_rng(11)
    n_chains, n_nodes, step = 1500, 60, 3.0
    corr = np.empty((n_chains, n_nodes))
    for c in range(n_chains):
        _, frames = worm_like_chain(n_nodes, step, lp_a, rng)
        t = frames[:, :, 2]
        corr[c] = t @ t[0]
    s = np.arange(n_nodes) * step
    se = corr.std(0)[1:] / math.sqrt(n_chains)
    z = (corr.mean(0)[1:] - np.exp(-s[1:] / lp_a)) / se
    assert np.abs(z).max() < 4.0, np.abs(z).max()
    # and the estimate is informative: at s = Lp/3 (or the longest lag) it is pinned to a few per cent
    k = min(n_nodes - 1, int(lp_a / 3 / step))
    assert corr.mean(0)[k] == pytest.approx(math.exp(-s[k] / lp_a), abs=0.03)


def test_chain_geometry_and_kappa():
    """Nodes one step apart, frames orthonormal and right-handed, no spin about the tangent between consecutive
    frames (rotation-minimising), and κ inverting the Langevin function."""
    for m in (0.1, 0.5, 0.9, 0.999, 1 - 1e-9):
        k = langevin_kappa(m)
        lang = 1 / math.tanh(k) - 1 / k if k < 50 else 1 - 1 / k
        assert lang == pytest.approx(m, rel=1e-9, abs=1e-12)
    nodes, frames = worm_like_chain(500, 2.5, 200.0, np.random.default_rng(2))
    assert np.allclose(np.linalg.norm(np.diff(nodes, axis=0), axis=1), 2.5, atol=1e-12)
    assert np.allclose(frames.transpose(0, 2, 1) @ frames, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(frames), 1.0)
    # rotation-minimising: the relative turn between consecutive frames has no component about the tangent
    rel = frames[:-1].transpose(0, 2, 1) @ frames[1:]  # body-frame increments
    spin = rel[:, 1, 0] - rel[:, 0, 1]  # 2 sin(angle)·axis_z
    assert np.abs(spin).max() < 1e-12


# ------------------------------------------------------------------------------------------------ subunits
def test_straight_filament_is_the_helical_assembly():
    """A straight filament's atoms are helical_assembly's (same rise, twist, axis, axis point) moved rigidly, to 1e-6 Å,
    with an oblique helix axis in the file frame."""
    fil = {"rise_a": 27.5, "twist_deg": -166.7, "axis": [1.0, 1.0, 2.0], "axis_point_a": [12.0, 20.0, 5.0],
           "length_nm": 30.0, "persistence_length_nm": "straight", "count": 1}
    cfg = base(fil, ice_nm=60)
    scene = scene_of(cfg)
    n = int(scene.filaments.n_subunits[0])
    assert n == round(300 / 27.5)
    got = subunit_atoms(scene, np.arange(n)).reshape(-1, 3)
    unit = read_structure(resolve_structure(UBI), centre="none")
    ref = helical_assembly(unit, 27.5, -166.7, n, (1.0, 1.0, 2.0), (12.0, 20.0, 5.0)).positions_a
    # the rigid motion between them (Kabsch), then the residual
    gc, rc = got.mean(0), ref.mean(0)
    u, _, vt = np.linalg.svd((ref - rc).T @ (got - gc))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1, 1, d]) @ u.T
    assert d > 0  # a proper rotation: the helix keeps its hand
    assert np.abs((ref - rc) @ r.T + gc - got).max() < 1e-6


def test_curved_filament_spacing_and_twist():
    """Consecutive subunits' axis points are one rise apart along the chain, and consecutive poses differ by the twist
    about the local axis plus a small bend (the bend ≈ √(2·rise/Lp))."""
    cfg = base({"length_nm": 200.0, "persistence_length_nm": 150.0, "count": 1}, ice_nm=60, shape=(160, 160))
    scene = scene_of(cfg)
    fil = scene.filaments
    nodes = fil.centrelines_a[0]
    assert np.allclose(np.linalg.norm(np.diff(nodes, axis=0), axis=1), 27.5, atol=1e-9)
    # the axis point recovered from each pose: c_k − R_k·(type origin − axis point) in the file frame
    ptype = scene.types[0]
    offset = ptype.unit_offset_a - np.array(ACTIN_LIKE["axis_point_a"])
    n = len(nodes)
    pl = scene.placement
    axis_points = pl.positions_a[:n] - np.einsum("nij,j->ni", pl.rotations[:n], offset)
    assert np.allclose(axis_points, nodes, atol=1e-9)
    # relative rotation between subunits k and k+1 (in the unit's frame): twist about the helix axis (z of file)
    rel = np.einsum("nji,njk->nik", pl.rotations[:n - 1], pl.rotations[1:n])
    angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    bend = np.degrees(np.sqrt(2 * 27.5 / 1500.0))
    assert np.median(np.abs(angle - 166.7)) < 3 * bend
    # the chain curves: end-to-end distance below the contour length
    assert np.linalg.norm(nodes[-1] - nodes[0]) < 0.995 * 27.5 * (n - 1)


def test_filaments_stay_inside_and_clear_of_others():
    """Long curved filaments in thin ice (folded back at the faces) keep every atom inside the slab and the field,
    stay clear of each other and of randomly placed particles, which avoid them; obstacles are exposed."""
    cfg = base({"length_nm": 100.0, "length_sd_nm": 20.0, "length_min_nm": 60, "length_max_nm": 150,
                "persistence_length_nm": 300.0, "count": 4}, ice_nm=16, shape=(160, 160), px=8.0,
               more_particles=[{"structure": UBI, "random": {"count": 40, "min_gap_a": 5.0}}])
    scene = scene_of(cfg)
    fil = scene.filaments
    assert len(fil) == 4 and fil.first_copy[0] == 0
    rows = np.flatnonzero(scene.placement.type_index == 0)
    assert len(rows) == fil.n_subunits.sum()
    atoms = subunit_atoms(scene, rows)
    assert np.abs(atoms[..., 2]).max() <= 80.0 + 1e-9  # 16 nm of ice
    assert np.abs(atoms[..., :2]).max() <= 640.0 + 1e-9
    zspan = np.array([np.ptp(c[:, 2]) for c in fil.centrelines_a])
    xyspan = np.array([np.ptp(c[:, :2], axis=0).max() for c in fil.centrelines_a])
    assert (xyspan > zspan).all()  # long filaments in a thin slab lie mostly in plane
    # no filament within its radius of another
    caps = [obstacle_capsules(type(fil)(fil.type_index[[i]], [fil.centrelines_a[i]], fil.radius_a[[i]],
                                        fil.axial_a[[i]], fil.persistence_length_nm[[i]], fil.first_copy[[i]]))
            for i in range(len(fil))]
    for i in range(len(caps)):
        for j in range(i):
            d = segment_distances(caps[i][0][:, None], caps[i][1][:, None], caps[j][0][None], caps[j][1][None])
            assert d.min() >= caps[i][2][0] + caps[j][2][0]
    # the random ubiquitins clear the filaments' capsules (they were placed against the subunits' own capsules)
    others = np.flatnonzero(scene.placement.type_index == 1)
    assert len(others) == 40
    sub = scene.placement.__class__(scene.placement.type_index[others], scene.placement.positions_a[others],
                                    scene.placement.rotations[others])
    ea, eb, er = _segments([t.bounds for t in scene.types], sub)
    a, b, r = obstacle_capsules(fil)
    d = segment_distances(ea[:, None], eb[:, None], a[None], b[None])
    # the subunit capsules are tighter than the filament's swept radius: allow the helix's groove
    assert (d > er[:, None]).all()
    obs = filament_obstacles(fil)
    assert len(obs) == 4 and all(p.shape[1] == 3 and rad > 20 for p, rad in obs)


def test_same_seed_same_filaments_and_labels():
    cfg = base({"length_nm": 40.0, "persistence_length_nm": 100.0, "count": 2})
    a, b = scene_of(cfg), scene_of(cfg)
    assert all(np.array_equal(x, y) for x, y in zip(a.filaments.centrelines_a, b.filaments.centrelines_a,
                                                     strict=True))
    # one instance per filament: the label of its first subunit
    cls, inst = label_volumes(a, (100, 128, 128), 4.0)
    firsts = set((a.filaments.first_copy + 1).tolist())
    assert set(np.unique(inst).tolist()) == {0} | firsts
    assert set(np.unique(cls).tolist()) == {0, 1}


# ------------------------------------------------------------------------------------------------ images
def _profile_centroid(img: np.ndarray, pts_px: np.ndarray, half: int = 10) -> float:
    """Centroid (px) of the mean |contrast| across a projected polyline (sampled along its normals), above half
    its peak."""
    t = np.gradient(pts_px, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    nrm = np.stack([-t[:, 1], t[:, 0]], 1)
    offs = np.arange(-half, half + 1)
    p = pts_px[:, None, :] + offs[None, :, None] * nrm[:, None, :]  # (n, offsets, xy)
    bg = np.median(img)
    tt = torch.as_tensor(np.abs(img - bg) / bg, dtype=torch.float64)[None, None]
    h, w = img.shape
    grid = torch.as_tensor(np.stack([2 * p[..., 0] / (w - 1) - 1, 2 * p[..., 1] / (h - 1) - 1], -1))[None]
    v = torch.nn.functional.grid_sample(tt, grid, align_corners=True).numpy()[0, 0]  # (n, offsets)
    prof = v.mean(0)
    prof = prof - prof.min()
    prof = np.where(prof > 0.5 * prof.max(), prof, 0.0)  # the peak above half its height: the tails do not bias it
    return float((prof * offs).sum() / prof.sum())


def test_tilted_projection_lands_on_the_centreline(shared_data):
    """A noise-free phase-plate tilt series (−30°, 0°, +30°) of one curved filament, the tilt axis along the
    filament's mean direction (so the tilt moves its image sideways): the density's profile across the centreline
    projected by tilt_rotation is centred on it (within 1.5 px) at every tilt, while across the untilted
    centreline it sits > 3 px off, on the side tilt_rotation predicts."""
    px = 4.0
    fil = {"length_nm": 40.0, "persistence_length_nm": 80.0, "count": 1}
    scene = scene_of(base(fil, ice_nm=60, seed=2))  # a seed whose filament moves > 5 px sideways at ±30°
    nodes = scene.filaments.centrelines_a[0]
    d = nodes[-1, :2] - nodes[0, :2]
    axis_deg = math.degrees(math.atan2(-d[0], d[1]))  # the y axis turned by α is (−sin α, cos α)
    cfg = base(fil, ice_nm=60, seed=2, optics={"defocus_um": 0.0, "phase_shift_deg": 90.0},
               tilt_series={"scheme": "list", "angles_deg": [-30.0, 0.0, 30.0], "damage": "none",
                            "tilt_axis_deg": axis_deg})
    result = simulate_tilt_series(cfg, scene=scene)
    dense = np.concatenate([np.linspace(nodes[i], nodes[i + 1], 6, endpoint=False) for i in range(len(nodes) - 1)])
    flat = dense[:, :2] / px + 64
    t = np.gradient(flat, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    normal = np.stack([-t[:, 1], t[:, 0]], 1)
    for j, angle in enumerate(result.angles_deg):
        img = result.noiseless[j].double().numpy()
        p = dense @ tilt_rotation(angle, axis_deg).T
        pts = p[:, :2] / px + 64
        assert abs(_profile_centroid(img, pts)) < 1.5, (angle, _profile_centroid(img, pts))
        if angle != 0:
            shift = float(((pts - flat) * normal).sum(1).mean())  # predicted sideways move (px)
            assert abs(shift) > 3  # the check below tells the tilted place from the untilted one
            off = _profile_centroid(img, flat, half=16)
            assert abs(off) > 3 and np.sign(off) == np.sign(shift)  # the untilted place misses, to the predicted side


def test_written_run_round_trips_through_starfile(tmp_path):
    """A written run: filaments.star read back by starfile names each filament's rows of particles.star, whose
    positions (read back too) put every subunit's axis point on the written centreline; labels_instance.mrc has one
    value per filament."""
    import mrcfile
    import starfile

    from difftem.simulate.output import run_and_write

    cfg = base({"length_nm": 30.0, "persistence_length_nm": 100.0, "count": 2}, labels={"voxel_size_a": 8.0})
    run_and_write(cfg, tmp_path / "run")
    fil = starfile.read(tmp_path / "run" / "filaments.star")
    rows, lines = fil["filaments"], fil["centrelines"]
    parts = starfile.read(tmp_path / "run" / "particles.star")
    parts = parts["particles"] if isinstance(parts, dict) else parts
    assert len(parts) == rows["difftemSubunits"].sum()
    scene = scene_of(cfg)
    offset = scene.types[0].unit_offset_a - np.array(ACTIN_LIKE["axis_point_a"])
    for _, r in rows.iterrows():
        sel = parts.iloc[r["difftemFirstParticleRow"] - 1:r["difftemFirstParticleRow"] - 1 + r["difftemSubunits"]]
        pos = sel[["difftemPositionXA", "difftemPositionYA", "difftemPositionZA"]].to_numpy()
        rots = np.stack([rotation_zyz_deg(*e) for e in sel[["difftemEulerZyzPhi", "difftemEulerZyzTheta",
                                                             "difftemEulerZyzPsi"]].to_numpy()])
        axis_points = pos - rots @ offset
        line = lines[lines["difftemFilamentIndex"] == r["difftemFilamentIndex"]]
        written = line[["difftemCentreXA", "difftemCentreYA", "difftemCentreZA"]].to_numpy()
        assert np.allclose(axis_points[line["difftemSubunitIndex"].to_numpy()], written, atol=1e-3)
    inst = mrcfile.open(tmp_path / "run" / "labels_instance.mrc").data
    assert set(np.unique(inst).tolist()) == {0} | set(rows["difftemInstanceLabel"].tolist())


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("bad, field", [
    ({"rise_a": 0}, "rise_a"),
    ({"persistence_length_nm": -5}, "persistence_length_nm"),
    ({"persistence_length_nm": "bendy"}, "persistence_length_nm"),
    ({"length_nm": 500, "length_max_nm": 100}, "length_nm"),
    ({"length_min_nm": 50, "length_max_nm": 10, "length_nm": 20}, "length_min_nm"),
    ({"axis": [0, 0, 0]}, "axis"),
    ({"count": -1}, "count"),
    ({"wiggle": 1}, "wiggle"),
])
def test_bad_filament_configs_are_one_line_errors(bad, field):
    with pytest.raises(ConfigError) as e:
        base({"length_nm": 40.0, **bad})
    msg = str(e.value)
    assert "\n" not in msg and field in msg and "filament" in msg


def test_filament_excludes_other_placements_and_too_thin_ice():
    with pytest.raises(ConfigError, match="filament") as e:
        config_from_dict({"sample": {"particles": [{"structure": UBI, "random": {"count": 2},
                                                    "filament": {**ACTIN_LIKE, "length_nm": 40}}]}})
    assert "\n" not in str(e.value)
    cfg = base({"length_nm": 40.0}, ice_nm=5)
    with pytest.raises(ConfigError, match="ice_thickness_nm") as e:
        scene_of(cfg)
    assert "\n" not in str(e.value)
    cfg = base({"length_nm": 400.0, "count": 20, "persistence_length_nm": "straight"}, shape=(64, 64))
    with pytest.raises(ConfigError, match="placed only") as e:
        scene_of(cfg)
    assert "\n" not in str(e.value)
