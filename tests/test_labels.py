"""Label volumes: on the ground-truth frame (instance centroids at the copies' centres, overlap with the simulator's
own potential volume), at any voxel size, written beside a tilt series and read back with mrcfile."""

import json

import mrcfile
import numpy as np
import pytest
from conftest import STRUCTURES

from difftem.config import config_from_dict
from difftem.simulate.labels import default_thickness_a, make_labels
from difftem.simulate.output import run_and_write
from difftem.simulate.pipeline import potential_volume
from difftem.specimen.build import scene_of


def _config(voxel_a=None, tilt=False, shape=64, pixel=4.0):
    return config_from_dict({
        "seed": 3, "detector": {"shape_px": [shape, shape], "pixel_size_a": pixel, "noise": "none"},
        "sample": {"ice_thickness_nm": 20, "ice_structure": {"mode": "off"}, "particles": [
            {"structure": str(STRUCTURES / "1ubi_ubiquitin.pdb.gz"), "random": {"count": 6}},
            {"structure": str(STRUCTURES / "1ake_adk_chimerax.cif.gz"), "random": {"count": 3}}]},
        "simulation": {"device": "cpu"},
        "labels": {"voxel_size_a": voxel_a},
        **({"tilt_series": {"scheme": "list", "angles_deg": [-30, 0, 30]}} if tilt else {})})


def _centres_a(shape, v):
    nz, ny, nx = shape
    return ((np.arange(nz) - nz // 2) * v, (np.arange(ny) - ny // 2) * v, (np.arange(nx) - nx // 2) * v)


@pytest.mark.parametrize("voxel_a", [3.0, 7.0])
def test_instance_centroids_land_on_the_ground_truth_centres(shared_data, voxel_a):
    """Each copy's label voxels (at 3 Å and 7 Å, neither the 4 Å pixel) are centred on its ground-truth centre to
    within half a voxel plus 1.5 Å, and carry its type's class."""
    cfg = _config(voxel_a)
    scene = scene_of(cfg)
    lab = make_labels(scene, cfg)
    z, y, x = _centres_a(lab.classes.shape, voxel_a)
    assert lab.classes.shape[0] == round(default_thickness_a(scene, cfg) / voxel_a)
    for i, (pos, t) in enumerate(zip(scene.placement.positions_a, scene.placement.type_index, strict=True)):
        iz, iy, ix = np.nonzero(lab.instances == i + 1)
        assert len(iz) > 0 and (lab.classes[iz, iy, ix] == t + 1).all()
        centroid = np.array([x[ix].mean(), y[iy].mean(), z[iz].mean()])
        assert np.abs(centroid - pos).max() < 0.5 * voxel_a + 1.5, (i, centroid, pos)
        # the volume is the type's mass at 1.35 g/cm³
        volume = len(iz) * voxel_a**3
        assert volume == pytest.approx(scene.types[t].mass_da * 1.66054 / 1.35, rel=0.35)


def test_labels_overlap_the_thresholded_potential_volume(shared_data):
    """Dice ≥ 0.8 between the particle mask and the simulator's own potential volume (same voxel, axes, origin and
    depth) thresholded to the same number of voxels, at a coarse 6 Å voxel."""
    v = 6.0
    cfg = _config(v)
    scene = scene_of(cfg)
    lab = make_labels(scene, cfg)
    truth, voxel = potential_volume(cfg, voxel_size_a=v, thickness_a=lab.classes.shape[0] * v, scene=scene)
    assert voxel == v and tuple(truth.shape) == lab.classes.shape
    mask = lab.mask
    n = int(mask.sum())
    flat = truth.numpy().ravel()
    cut = np.partition(flat, flat.size - n)[flat.size - n]
    hot = truth.numpy() >= cut
    dice = 2 * (hot & mask).sum() / (hot.sum() + mask.sum())
    mirrored = 2 * (hot & mask[::-1]).sum() / (hot.sum() + mask.sum())  # the other hand (z flipped)
    assert dice >= 0.8 and mirrored < dice - 0.3, (dice, mirrored)


def test_labels_written_beside_a_tilt_series(shared_data, tmp_path):
    cfg = _config(8.0, tilt=True, shape=48)
    run = run_and_write(cfg, tmp_path / "run")
    out = tmp_path / "run"
    for name in ("labels_class.mrc", "labels_instance.mrc", "labels_mask.mrc", "labels.json"):
        assert name in run["outputs"] and (out / name).exists()
    legend = json.loads((out / "labels.json").read_text())
    assert legend["classes"] == {"0": "background", "1": "1ubi_ubiquitin", "2": "1ake_adk_chimerax"}
    with mrcfile.open(out / "labels_class.mrc") as m:
        assert m.is_volume() and m.data.dtype == np.int8 and float(m.voxel_size.z) == pytest.approx(8.0)
        classes = m.data.copy()
    with mrcfile.open(out / "labels_instance.mrc") as m:
        assert m.data.dtype == np.uint16
        inst = m.data.copy()
    with mrcfile.open(out / "labels_mask.mrc") as m:
        np.testing.assert_array_equal(m.data > 0, classes > 0)
    assert list(legend["shape_zyx"]) == list(classes.shape)
    assert set(np.unique(inst)) == set(range(10))  # 9 copies and background
    from difftem.io.star import read_star

    rows = read_star(out / "particles.star")["particles"]
    names = {v: k for k, v in legend["classes"].items()}
    for k, name in enumerate(rows["difftemParticleType"], start=1):  # instance k: row k, with its type's class
        assert (classes[inst == k] == int(names[name])).all()


def test_map_particles_are_labelled_by_their_mask(shared_data, tmp_path):
    """A density-map type's copies are labelled from the map's own mask (the mass's volume)."""
    from difftem.io.files import write_volume

    rng = np.random.default_rng(0)
    g = np.arange(32) - 16
    blob = np.exp(-(g[:, None, None] ** 2 + g[None, :, None] ** 2 + (g[None, None, :] / 2) ** 2) / 30)
    path = tmp_path / "blob.mrc"
    write_volume(path, blob + 0.001 * rng.standard_normal(blob.shape), 2.0)
    cfg = config_from_dict({
        "detector": {"shape_px": [48, 48], "pixel_size_a": 4.0}, "sample": {"ice_thickness_nm": 10, "particles": [
            {"map": {"file": str(path), "mass_kda": 50}, "positions_a": [[-40, 20, 5], [30, -30, -5]],
             "euler_zyz_deg": [[0, 90, 0]]}]}, "labels": {"voxel_size_a": 4.0}})
    lab = make_labels(scene_of(cfg), cfg)
    z, y, x = _centres_a(lab.classes.shape, 4.0)
    for i, pos in enumerate(([-40, 20, 5], [30, -30, -5])):
        iz, iy, ix = np.nonzero(lab.instances == i + 1)
        assert len(iz) * 64 == pytest.approx(50e3 * 1.66054 / 1.35, rel=0.2)
        np.testing.assert_allclose([x[ix].mean(), y[iy].mean(), z[iz].mean()], pos, atol=2.5)
        # turned by 90° about y: the map's long axis (x) now lies along z
        assert np.ptp(z[iz]) > 1.5 * np.ptp(x[ix])


def test_labels_share_the_grid_of_difftem_reconstruct(shared_data, tmp_path):
    """`difftem reconstruct` of the run (no flags: geometry and depth from run.json) gives a volume of exactly the
    labels' shape at the pixel (the content's frame is shown against potential_volume above, and potential_volume's
    against reconstruct in test_tomo_sets)."""
    from typer.testing import CliRunner

    from difftem.cli import app

    cfg = _config(None, tilt=True, shape=48)
    run_and_write(cfg, tmp_path / "run")
    out = tmp_path / "rec.mrc"
    res = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "run" / "tilt_series.mrc"), "--out", str(out),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with mrcfile.open(out) as m, mrcfile.open(tmp_path / "run" / "labels_class.mrc") as lab:
        assert m.data.shape == lab.data.shape
        assert float(m.voxel_size.x) == pytest.approx(float(lab.voxel_size.x))
