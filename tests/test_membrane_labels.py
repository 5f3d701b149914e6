"""Membrane labels: the vesicles' bilayers as a mask volume, a class and one instance per vesicle, on the label frame
(the frame of potential_volume and of `difftem reconstruct`), against the configured radius and bilayer and against
the simulator's own potential volume of the same vesicles."""

import json
import math

import mrcfile
import numpy as np
import pytest
from conftest import STRUCTURES

from difftem.config import config_from_dict
from difftem.simulate.labels import make_labels
from difftem.simulate.output import run_and_write
from difftem.simulate.pipeline import potential_volume
from difftem.specimen.build import scene_of

CENTRES_A = [[120.0, 0.0, 30.0], [-190.0, -120.0, -30.0]]  # the second crosses the field's −x edge (wraps)


def _config(voxel_a=4.0, particles=(), tilt=False, shape=128, pixel=4.0, centres=CENTRES_A, radius_nm=8.0):
    return config_from_dict({
        "seed": 2, "detector": {"shape_px": [shape, shape], "pixel_size_a": pixel, "noise": "none",
                                "model": "perfect"},
        "sample": {"ice_thickness_nm": 35, "ice_structure": {"mode": "off"}, "particles": list(particles),
                   "vesicles": {"centres_a": centres, "radius_nm": radius_nm}},
        "simulation": {"device": "cpu"}, "labels": {"voxel_size_a": voxel_a},
        **({"tilt_series": {"scheme": "list", "angles_deg": [-30, 0, 30]}} if tilt else {})})


def _centres_a(shape, v):
    nz, ny, nx = shape
    return ((np.arange(nz) - nz // 2) * v, (np.arange(ny) - ny // 2) * v, (np.arange(nx) - nx // 2) * v)


def _radii(lab, centre, field_a):
    """Each voxel's distance (Å) from ``centre``, x and y by the minimum image (the field is periodic)."""
    z, y, x = _centres_a(lab.classes.shape, lab.voxel_a)
    dx = (x - centre[0] + field_a / 2) % field_a - field_a / 2
    dy = (y - centre[1] + field_a / 2) % field_a - field_a / 2
    return np.sqrt(dx[None, None, :] ** 2 + dy[None, :, None] ** 2 + (z - centre[2])[:, None, None] ** 2)


@pytest.mark.parametrize("voxel_a", [3.2, 6.4])  # neither the 4 Å pixel; each divides the 512 Å field
def test_membrane_shell_has_the_configured_radius_and_bilayer_thickness(voxel_a):
    """Each vesicle's labelled shell spans R ± (D_HH/2 + √(2 ln 2) σ_H) of its configured radius and head-group
    profile to within a voxel at each face, and holds the shell's volume (3 % at 3.2 Å, 6 % at 6.4 Å voxels)."""
    cfg = _config(voxel_a)
    scene = scene_of(cfg)
    lab = make_labels(scene, cfg)
    prof = cfg.sample.vesicles.profile
    radius = cfg.sample.vesicles.radius_nm * 10
    half = prof.headgroup_separation_nm * 10 / 2 + math.sqrt(2 * math.log(2)) * prof.headgroup_sigma_a
    assert lab.membrane_half_thickness_a == pytest.approx(half) and half == pytest.approx(22.53, abs=0.01)
    field_a = cfg.detector.shape_px[0] * cfg.detector.pixel_size_a
    np.testing.assert_allclose(scene.vesicles.centres_a, CENTRES_A)
    for j, centre in enumerate(CENTRES_A):
        r = _radii(lab, centre, field_a)
        mine = lab.membranes == j + 1
        inner, outer = r[mine].min(), r[mine].max()
        assert radius - half <= inner < radius - half + voxel_a * math.sqrt(3) / 2
        assert radius + half - voxel_a * math.sqrt(3) / 2 < outer <= radius + half
        shell = 4 / 3 * math.pi * ((radius + half) ** 3 - (radius - half) ** 3)
        assert mine.sum() * voxel_a**3 == pytest.approx(shell, rel=0.03 if voxel_a < 4 else 0.06)
        # every voxel of the shell is labelled: class = membrane, instance = copies + row of vesicles.star
        within = np.abs(r - radius) <= half
        np.testing.assert_array_equal(mine, within)
        assert (lab.classes[mine] == lab.membrane_class).all() and lab.membrane_class == len(scene.types) + 1
        assert (lab.instances[mine] == len(scene.placement.positions_a) + j + 1).all()
    assert not lab.mask.any()  # the particle mask leaves membranes out


def test_membrane_mask_holds_the_simulators_bilayer_potential():
    """The simulator's own potential volume of the vesicles (its ΔV relative to the ice, forward/membranes.py, slab
    means over each voxel) lies ≥ 90 % (by |ΔV|; the head groups' outer tails make the rest) inside the membrane mask
    on the same voxels; the mask moved by one voxel along any axis holds less, and mirrored in z (the other hand)
    far less; the head-group peaks sit at R ± D_HH/2."""
    v = 4.0
    cfg = _config(v)
    scene = scene_of(cfg)
    lab = make_labels(scene, cfg)
    vol, voxel = potential_volume(cfg, voxel_size_a=v, thickness_a=lab.classes.shape[0] * v, scene=scene,
                                  include_ice=False)
    signed = vol.numpy()
    vol = np.abs(signed)
    assert voxel == v and vol.shape == lab.classes.shape
    mask = lab.membranes > 0

    def held(m):
        return float(vol[m].sum() / vol.sum())

    inside = held(mask)
    moved = [held(np.roll(mask, s, axis)) for axis in range(3) for s in (-1, 1)]
    assert inside >= 0.9 and max(moved) < inside and held(mask[::-1]) < 0.5, (inside, moved, held(mask[::-1]))
    # radial profile of the first vesicle: the head-group peaks at R ± D_HH/2 (± a voxel)
    r = _radii(lab, CENTRES_A[0], 128 * 4.0)
    edges = np.arange(40.0, 121.0, 2.0)
    prof = np.array([signed[(r >= a) & (r < a + 2)].mean() for a in edges[:-1]])  # heads > 0, core < 0
    mid = edges[:-1] + 1
    d = cfg.sample.vesicles.profile.headgroup_separation_nm * 10
    lo_peak = mid[mid < 80][np.argmax(prof[mid < 80])]
    hi_peak = mid[mid > 80][np.argmax(prof[mid > 80])]
    assert abs(lo_peak - (80 - d / 2)) <= v and abs(hi_peak - (80 + d / 2)) <= v, (lo_peak, hi_peak)


def test_membrane_labels_written_beside_a_tilt_series_with_particles(shared_data, tmp_path):
    """A tilt series with vesicles and particles: labels_membrane.mrc beside the other volumes on the
    reconstruction's grid; the legend names the membrane class; instances of membranes follow the copies; a particle
    keeps its own labels where it meets a bilayer."""
    from typer.testing import CliRunner

    from difftem.cli import app

    particles = [{"structure": str(STRUCTURES / "1ubi_ubiquitin.pdb.gz"), "random": {"count": 3}}]
    cfg = _config(None, particles, tilt=True, shape=64, pixel=6.0, centres=[[30.0, -20.0, 25.0]], radius_nm=9.0)
    run = run_and_write(cfg, tmp_path / "run")
    out = tmp_path / "run"
    assert "labels_membrane.mrc" in run["outputs"]
    legend = json.loads((out / "labels.json").read_text())
    assert legend["classes"] == {"0": "background", "1": "1ubi_ubiquitin", "2": "membrane"}
    assert legend["files"]["membrane"] == "labels_membrane.mrc" and "22.53 A" in legend["membrane"]
    with mrcfile.open(out / "labels_membrane.mrc") as m:
        assert m.is_volume() and m.data.dtype == np.int8 and float(m.voxel_size.z) == pytest.approx(6.0)
        membrane = m.data.copy()
    with mrcfile.open(out / "labels_class.mrc") as m:
        classes = m.data.copy()
    with mrcfile.open(out / "labels_instance.mrc") as m:
        inst = m.data.copy()
    assert membrane.any() and membrane.shape == classes.shape
    free = (membrane > 0) & (classes != 1)
    assert (classes[free] == 2).all() and (inst[free] == 4).all()  # 3 copies, then vesicle row 1
    assert set(np.unique(inst)) <= {0, 1, 2, 3, 4} and 4 in set(np.unique(inst))
    vesicles = (out / "vesicles.star").read_text()
    assert "30" in vesicles  # the vesicle's truth is beside its labels
    rec = tmp_path / "rec.mrc"
    res = CliRunner().invoke(app, ["reconstruct", str(out / "tilt_series.mrc"), "--out", str(rec), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with mrcfile.open(rec) as m:
        assert m.data.shape == membrane.shape
