"""Tomography sets (IMOD, RELION-5, copick) written from a simulated tilt series, read back with the field's own
readers (mrcfile, starfile, mdocfile, zarr/JSON for copick's layout), and reconstructed from those files alone:
tilt axis, per-tilt defocus and astigmatism, CTF correction, handedness and subtomogram averaging."""

import json
import math
from pathlib import Path

import mdocfile
import mrcfile
import numpy as np
import pytest
import starfile
import torch
from typer.testing import CliRunner

import difftem
from difftem.cli import app
from difftem.core.rotations import relion_matrix, rotation_about_axis, tilt_rotation
from difftem.io import imod
from difftem.io.copick_project import read_picks, read_tomogram
from difftem.io.relion5 import read_particles_star
from difftem.simulate.export import export_tilt_series, parse_formats, read_run
from difftem.simulate.output import write_tilt_series
from difftem.simulate.pipeline import potential_volume
from difftem.tomo import ncc
from difftem.tomo.ctf import TiltCTF, ctf_2d, ctf_correct, defocus_offsets_a
from difftem.tomo.series import find_metadata, particle_tilt_series, tilts_from_poses

runner = CliRunner()
AXIS_DEG = 20.0
DEFOCI_UM = [1.4, 1.45, 1.5, 1.55, 1.6, 1.65, 1.7, 1.75, 1.8]  # per tilt, acquisition order
TILTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tilts"


def _config(axis_deg=AXIS_DEG, noise="none", count=6, shape=64, seed=1):
    return {"seed": seed, "beam": {"voltage_kv": 300},
            "optics": {"defocus_um": 1.5, "astigmatism_um": 0.2, "astigmatism_angle_deg": 30},
            "detector": {"shape_px": [shape, shape], "pixel_size_a": 3.0, "noise": noise, "mtf": None},
            "sample": {"ice_thickness_nm": 20, "ice_structure": {"mode": "off"},  # conventions, not the ice
                       "particles": [{"structure": "builtin:1ubi", "random": {"count": count}}]},
            "simulation": {"slice_thickness_a": 10},
            "tilt_series": {"scheme": "dose_symmetric", "min_deg": -40, "max_deg": 40, "step_deg": 10,
                            "total_dose_e_per_a2": 60, "tilt_axis_deg": axis_deg, "defocus_um": DEFOCI_UM,
                            "damage": "none"}}  # see docs/tomography.md: damaged high frequencies defy the CTF sign


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    cfg = difftem.config.config_from_dict(_config())
    series = difftem.simulate_tilt_series(cfg)
    write_tilt_series(series, root / "run")
    done = export_tilt_series(root / "run", root / "exp", "imod,relion5,copick",
                              tomogram=np.arange(12 * 64 * 64, dtype=np.float32).reshape(12, 64, 64),
                              tomogram_voxel_a=3.0)
    return {"root": root, "series": series, "cfg": cfg, "done": done, "rec": read_run(root / "run")}


def _stack_order_defoci_a(series):
    """The configured per-tilt defocus (acquisition order) in the stack's (ascending-angle) order."""
    order = sorted(range(len(DEFOCI_UM)), key=lambda i: difftem.forward.tilt.acquisition_angles(
        series.config.tilt_series)[i])
    return np.array([DEFOCI_UM[i] for i in order]) * 1e4


# ----------------------------------------------------------------------------------------------- read-back
def test_formats_parse_as_a_comma_list():
    assert parse_formats("relion5, imod,relion5") == ["relion5", "imod"]
    with pytest.raises(difftem.core.errors.ArgumentError, match="cryosparc"):
        parse_formats("imod,cryosparc")


def test_imod_set_reads_back_with_mrcfile_and_mdocfile(sim):
    d, s = sim["root"] / "exp" / "imod", sim["series"]
    with mrcfile.open(d / "run.mrc") as m:
        np.testing.assert_array_equal(m.data, s.tilts.numpy())
        assert float(m.voxel_size.x) == pytest.approx(3.0)
    for suffix in (".rawtlt", ".tlt"):
        np.testing.assert_allclose(imod.read_tlt(d / f"run{suffix}"), s.angles_deg, atol=0.01)
    xf = imod.read_xf(d / "run.xf")
    assert xf.shape == (9, 2, 3) and np.all(xf[:, :, 2] == 0)
    np.testing.assert_allclose(imod.xf_tilt_axis_deg(xf), AXIS_DEG, atol=1e-4)
    # the rotation part turns the tilt axis (−sin α, cos α) onto +y
    np.testing.assert_allclose(xf[0, :, :2] @ [-math.sin(math.radians(AXIS_DEG)), math.cos(math.radians(AXIS_DEG))],
                               [0, 1], atol=1e-6)
    md = mdocfile.read(d / "run.mrc.mdoc").sort_values("ZValue")
    rows = s.tilt_rows
    np.testing.assert_allclose(md["TiltAngle"], s.angles_deg)
    np.testing.assert_allclose(md["ExposureDose"], [r["difftemDoseEPerA2"] for r in rows], rtol=1e-6)
    np.testing.assert_allclose(md["PriorRecordDose"], [r["rlnMicrographPreExposure"] for r in rows], rtol=1e-6)
    np.testing.assert_allclose(md["PixelSpacing"], 3.0)
    np.testing.assert_allclose(-md["Defocus"] * 1e4, _stack_order_defoci_a(s), atol=1.0)  # SerialEM: − = under
    np.testing.assert_allclose(md["RotationAngle"], AXIS_DEG)
    order = [r["difftemAcquisitionOrder"] for r in rows]
    assert list(np.argsort(md["DateTime"].to_numpy())) == list(np.argsort(order))  # acquired in dose order


def test_xf_writer_and_reader_carry_true_alignment_errors(tmp_path):
    shifts = np.array([[1.5, -2.25], [0.0, 3.125]])
    t = imod.axis_transforms(2, -85.0, shifts)
    back = imod.read_xf(imod.write_xf(tmp_path / "a.xf", t))
    np.testing.assert_allclose(back, t, atol=1e-6)
    np.testing.assert_allclose(imod.xf_tilt_axis_deg(back), -85.0, atol=1e-5)
    (tmp_path / "bad.xf").write_text("1 0 0 1 0\n")
    with pytest.raises(difftem.core.errors.FormatError, match="bad.xf.*line 1"):
        imod.read_xf(tmp_path / "bad.xf")


def test_relion5_set_reads_back_with_starfile(sim):
    d, s, rec = sim["root"] / "exp" / "relion5", sim["series"], sim["rec"]
    tomo = starfile.read(d / "tomograms.star")
    assert list(tomo["rlnTomoName"]) == ["run"]
    row = tomo.iloc[0]
    assert row["rlnVoltage"] == 300 and row["rlnSphericalAberration"] == pytest.approx(2.7)
    assert row["rlnAmplitudeContrast"] == pytest.approx(rec.amplitude_contrast, abs=1e-6)
    assert row["rlnTomoTiltSeriesPixelSize"] == row["rlnMicrographOriginalPixelSize"] == pytest.approx(3.0)
    assert (row["rlnTomoSizeX"], row["rlnTomoSizeY"], row["rlnTomoSizeZ"]) == (64, 64, rec.thickness_px())
    assert row["rlnTomoHand"] == 1
    ts = starfile.read(d / row["rlnTomoTiltSeriesStarFile"])
    assert list(ts["rlnMicrographName"]) == [f"{i + 1}@run.mrcs" for i in range(9)]
    np.testing.assert_allclose(ts["rlnTomoNominalStageTiltAngle"], s.angles_deg)
    np.testing.assert_allclose(ts["rlnTomoYTilt"], s.angles_deg)
    np.testing.assert_allclose(ts["rlnTomoZRot"], AXIS_DEG)
    np.testing.assert_allclose(ts["rlnTomoXTilt"], 0)
    np.testing.assert_allclose(ts[["rlnTomoXShiftAngst", "rlnTomoYShiftAngst"]], 0)
    mean = _stack_order_defoci_a(s)
    np.testing.assert_allclose(ts["rlnDefocusU"], mean + 1000, atol=0.01)  # U − V = the 0.2 µm astigmatism
    np.testing.assert_allclose(ts["rlnDefocusV"], mean - 1000, atol=0.01)
    np.testing.assert_allclose(ts["rlnDefocusAngle"], 30)
    np.testing.assert_allclose(ts["rlnMicrographPreExposure"], [r["rlnMicrographPreExposure"] for r in s.tilt_rows],
                               atol=1e-5)
    np.testing.assert_allclose(ts["rlnCtfScalefactor"], np.cos(np.radians(s.angles_deg)), atol=1e-6)
    with mrcfile.open(d / "tilt_series" / "run.mrcs") as m:
        np.testing.assert_array_equal(m.data, s.tilts.numpy())
    parts = starfile.read(d / "particles.star")
    assert parts["optics"]["rlnAmplitudeContrast"].iloc[0] == pytest.approx(rec.amplitude_contrast, abs=1e-6)
    p = parts["particles"]
    turn = rotation_about_axis(np.array([0, 0, 1.0]), -math.radians(AXIS_DEG))  # into the tilt-axis-along-y frame
    np.testing.assert_allclose(p[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy(),
                               rec.positions_a @ turn.T, atol=1e-4)
    a = relion_matrix(p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"])
    np.testing.assert_allclose(a, turn @ rec.rotations, atol=1e-5)
    pos, rot, names = read_particles_star(d / "particles.star", AXIS_DEG)
    np.testing.assert_allclose(pos, rec.positions_a, atol=1e-4)
    np.testing.assert_allclose(rot, rec.rotations, atol=1e-5)
    assert names == ["run"] * 6


def test_zero_particle_relion5_particles_star_has_the_same_columns(sim, tmp_path):
    """With no particles, particles.star had one placeholder column (rlnMicrographName): now the RELION-5 columns
    of a run with particles, and no rows."""
    cfg = _config(shape=32)
    cfg["sample"]["particles"] = []
    write_tilt_series(difftem.simulate_tilt_series(cfg), tmp_path / "run")
    export_tilt_series(tmp_path / "run", tmp_path / "exp", "relion5")
    empty = starfile.read(tmp_path / "exp" / "relion5" / "particles.star")
    full = starfile.read(sim["root"] / "exp" / "relion5" / "particles.star")
    assert len(empty["particles"]) == 0 and len(full["particles"]) == 6
    assert list(empty["particles"].columns) == list(full["particles"].columns)
    assert empty["optics"].equals(full["optics"])


def test_relion5_projection_convention_matches_the_simulator(sim):
    """Rz(ZRot)·Ry(YTilt) applied to the written centred coordinates gives the simulator's tilted positions."""
    rec = sim["rec"]
    p = starfile.read(sim["root"] / "exp" / "relion5" / "particles.star")["particles"]
    r_tomo = p[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
    for theta in (-45.0, 30.0):
        ry = rotation_about_axis(np.array([0, 1.0, 0]), math.radians(theta))
        rz = rotation_about_axis(np.array([0, 0, 1.0]), math.radians(AXIS_DEG))
        np.testing.assert_allclose(r_tomo @ (rz @ ry).T, rec.positions_a @ tilt_rotation(theta, AXIS_DEG).T,
                                   atol=1e-4)


def test_copick_layout_reads_back(sim):
    d, rec = sim["root"] / "exp" / "copick", sim["rec"]
    cfg = json.loads((d / "copick_config.json").read_text())
    assert cfg["config_type"] == "filesystem" and cfg["overlay_root"].startswith("local://")
    obj = cfg["pickable_objects"][0]
    assert obj["name"] == "1ubi-ubiquitin" and obj["is_particle"] and obj["label"] == 1
    picks = d / "ExperimentRuns" / "run" / "Picks" / "difftem_0_1ubi-ubiquitin.json"
    loc, tr, doc = read_picks(picks)
    assert doc["run_name"] == "run" and doc["voxel_spacing"] == 3.0 and doc["pickable_object_name"] == obj["name"]
    corner = np.array([32, 32, 6]) * 3.0  # voxel [Z//2, Y//2, X//2] of the (12, 64, 64) tomogram is the origin
    np.testing.assert_allclose(loc - corner, rec.positions_a, atol=1e-6)
    np.testing.assert_allclose(tr[:, :3, :3], rec.rotations, atol=1e-9)
    np.testing.assert_array_equal(tr[:, 3], np.tile([0, 0, 0, 1.0], (6, 1)))
    vol, voxel = read_tomogram(d / "ExperimentRuns" / "run" / "VoxelSpacing3.000" / "wbp.zarr")
    assert voxel == 3.0 and vol.shape == (12, 64, 64) and vol[5, 6, 7] == 5 * 4096 + 6 * 64 + 7
    low, v2 = read_tomogram(d / "ExperimentRuns" / "run" / "VoxelSpacing3.000" / "wbp.zarr", level=1)
    assert low.shape == (6, 32, 32) and v2 == 6.0
    zattrs = json.loads((d / "ExperimentRuns" / "run" / "VoxelSpacing3.000" / "wbp.zarr" / ".zattrs").read_text())
    assert [a["name"] for a in zattrs["multiscales"][0]["axes"]] == ["z", "y", "x"]


# ----------------------------------------------------------------------------------------------- metadata
def test_metadata_round_trips_per_tilt_defocus_and_astigmatism(sim):
    """simulate → tilts.star/run.json, RELION-5 STAR, mdoc → the reconstruction's metadata, tilt by tilt."""
    root, s = sim["root"], sim["series"]
    mean = _stack_order_defoci_a(s)
    run = find_metadata(root / "run" / "tilt_series.mrc")
    r5 = find_metadata(root / "exp" / "relion5" / "tilt_series" / "run.mrcs",
                       root / "exp" / "relion5" / "tomograms.star")
    md = find_metadata(root / "exp" / "imod" / "run.mrc")  # run.mrc.mdoc beside it
    for meta in (run, r5, md):
        np.testing.assert_allclose(meta.angles_deg, s.angles_deg, atol=1e-6)
        assert meta.tilt_axis_deg == pytest.approx(AXIS_DEG)
    for meta in (run, r5):
        np.testing.assert_allclose(meta.ctf.defocus_u_a, mean + 1000, atol=0.01)
        np.testing.assert_allclose(meta.ctf.defocus_v_a, mean - 1000, atol=0.01)
        np.testing.assert_allclose(meta.ctf.defocus_angle_deg, 30)
        assert meta.thickness_a == pytest.approx(sim["rec"].thickness_px() * 3.0)
    assert r5.ctf.amplitude_contrast == pytest.approx(run.ctf.amplitude_contrast, abs=1e-6)
    np.testing.assert_allclose(md.ctf.defocus_u_a, mean, atol=1.0)  # an mdoc holds one defocus per tilt
    xf = find_metadata(root / "exp" / "imod" / "run.mrc", root / "exp" / "imod" / "run.xf")
    assert xf.tilt_axis_deg == pytest.approx(AXIS_DEG, abs=1e-4) and xf.shifts_px is None


def test_defocus_offsets_follow_the_tilt_geometry():
    """The mid-plane point seen at image position p' has depth z' = −p' tan θ (Rodrigues), and Δf = Δf₀ + z'."""
    h, w, px = 9, 11, 10.0
    for theta, alpha in ((30.0, 0.0), (-50.0, 20.0), (40.0, -85.0)):
        off = defocus_offsets_a((h, w), px, theta, alpha).numpy()
        r = tilt_rotation(theta, alpha)
        for x, y in ((30.0, 0.0), (-20.0, 40.0), (0.0, -30.0)):
            moved = r @ np.array([x, y, 0.0])  # a mid-plane point after the tilt
            # find the pixel it projects to and compare the offset there, by interpolating the linear map
            p = np.array([moved[0], moved[1]])
            a = math.radians(alpha)
            want = moved[2]
            got = -(p[0] * math.cos(a) + p[1] * math.sin(a)) * math.tan(math.radians(theta))
            assert got == pytest.approx(want, abs=1e-9)
        assert off[h // 2, w // 2] == 0.0


def test_phase_flip_sign_matches_the_forward_model():
    """A random object imaged through C(k) (the contrast CTF, forward/optics sign) and phase-flipped correlates
    positively with the object in every frequency band; flipping with the opposite sign anticorrelates."""
    from difftem.core import fft as dfft

    g = torch.Generator().manual_seed(0)
    obj = torch.randn(1, 96, 96, generator=g, dtype=torch.float64)
    c = ctf_2d((96, 96), 2.0, 20000.0, 19000.0, 40.0, 300.0, 2.7, 0.1)
    img = dfft.ifft2(dfft.fft2(obj) * c).real
    ctf = TiltCTF([20000.0], [19000.0], [40.0], 300.0, 2.7, 0.1)
    flipped, _ = ctf_correct(img, [0.0], ctf, 2.0, mode="phase_flip")
    k = torch.sqrt(dfft.k2_per_a2((96, 96), 2.0))
    fo, ff = dfft.fft2(obj)[0], dfft.fft2(flipped)[0]
    for lo in np.arange(0.0, 0.24, 0.03):
        band = (k > lo) & (k <= lo + 0.03)
        assert float((fo[band] * ff[band].conj()).real.sum()) > 0
    wrong = TiltCTF([-20000.0], [-19000.0], [40.0], 300.0, 2.7, 0.1)
    anti, _ = ctf_correct(img, [0.0], wrong, 2.0, mode="phase_flip")
    assert float((obj * flipped).sum()) > 0.5 * float((obj * obj).sum()) > 0 > float((obj * anti).sum())


def test_ctf_strips_are_narrower_at_high_tilt():
    ctf = TiltCTF([15000.0] * 2, [15000.0] * 2, [0.0] * 2, 300.0, 2.7, 0.07)
    _, rec = ctf_correct(torch.zeros(2, 256, 256), [0.0, 60.0], ctf, 3.0, defocus_tolerance_a=100.0)
    assert rec["levels_per_tilt"][0] == 1 and rec["levels_per_tilt"][1] == pytest.approx(
        round(2 * 128 * 3.0 * math.tan(math.radians(60)) / 200) + 1, abs=1)


# ----------------------------------------------------------------------------------------------- reconstruction
def _truth(cfg, thickness_a):
    return potential_volume(cfg, thickness_a=thickness_a)[0]


def _reconstruct(args, out):
    res = runner.invoke(app, ["reconstruct", *map(str, args), "--out", str(out), "--device", "cpu", "--invert"])
    assert res.exit_code == 0, res.output
    with mrcfile.open(out) as m:
        assert m.header.mz == m.data.shape[0] and m.is_volume()  # a volume, z voxel size in the header
        data = torch.from_numpy(m.data.copy())
    return data, json.loads(out.with_suffix(".json").read_text()), res.output


def test_reconstruct_from_a_run_needs_no_flags_and_recovers_the_tilted_object(sim, tmp_path):
    """Tilt axis round trip: α = 20° in the config → run.json/tilts.star → reconstruct with no flags; the axis,
    angles, per-tilt CTF and the volume's depth come from the files, and the object comes back (vs the same
    series reconstructed with the axis forced to 0, and vs its mirror image: handedness)."""
    root = sim["root"]
    vol, record, output = _reconstruct([root / "run" / "tilt_series.mrc"], tmp_path / "v.mrc")
    assert record["tilt_axis_deg"] == AXIS_DEG and record["tilt_axis_source"].endswith("run.json")
    assert record["ctf_correction"]["mode"] == "phase_flip"
    np.testing.assert_allclose(record["ctf_correction"]["defocus_angle_deg"], 30)
    assert vol.shape[0] == sim["rec"].thickness_px()
    truth = _truth(sim["cfg"], vol.shape[0] * 3.0)
    good = float(ncc(vol, truth))
    wrong_axis, _, _ = _reconstruct([root / "run" / "tilt_series.mrc", "--tilt-axis-deg", 0], tmp_path / "w.mrc")
    assert good > 0.3 and good > float(ncc(wrong_axis, truth)) + 0.15
    assert good > float(ncc(vol, truth.flip(0))) + 0.15  # the z-mirror (the other hand) correlates much less


def test_reconstruct_from_relion5_and_imod_sets_matches_the_run(sim, tmp_path):
    root = sim["root"]
    ref, _, _ = _reconstruct([root / "run" / "tilt_series.mrc"], tmp_path / "a.mrc")
    r5, rec5, _ = _reconstruct([root / "exp" / "relion5" / "tilt_series" / "run.mrcs", "--metadata",
                                root / "exp" / "relion5" / "tomograms.star"], tmp_path / "b.mrc")
    assert rec5["tilt_axis_deg"] == AXIS_DEG and rec5["ctf_correction"]["mode"] == "phase_flip"
    assert float(ncc(r5, ref)) > 0.999
    im, rec_im, _ = _reconstruct([root / "exp" / "imod" / "run.mrc", "--thickness-vox", ref.shape[0]],
                                 tmp_path / "c.mrc")  # angles, axis and defocus from run.mrc.mdoc beside it
    assert rec_im["tilt_axis_deg"] == AXIS_DEG and rec_im["ctf_correction"]["source"].endswith(".mdoc")
    assert float(ncc(im, ref)) > 0.98  # the mdoc carries the mean defocus, not the astigmatism


def test_ctf_correction_improves_a_noise_free_reconstruction(sim, tmp_path):
    root = sim["root"]
    stack = root / "run" / "tilt_series_noiseless.mrc"
    plain, _, _ = _reconstruct([stack, "--metadata", root / "run" / "run.json", "--ctf-correction", "none"],
                               tmp_path / "n.mrc")
    flip, _, _ = _reconstruct([stack, "--metadata", root / "run" / "run.json"], tmp_path / "f.mrc")
    wiener, _, _ = _reconstruct([stack, "--metadata", root / "run" / "run.json", "--ctf-correction", "wiener",
                                 "--wiener-snr", "100"], tmp_path / "w.mrc")
    truth = _truth(sim["cfg"], plain.shape[0] * 3.0)
    scores = [float(ncc(v, truth)) for v in (plain, flip, wiener)]
    assert scores[1] > scores[0] + 0.05 and scores[2] > scores[0], scores  # measured 0.24, 0.34, 0.26


# ----------------------------------------------------------------------------------------------- real data
def test_real_ribosome_particle_tilts_reconstruct_from_their_star(tmp_path):
    star = TILTS / "ribosome_particle_tilts_bin8.star"
    stack = TILTS / "ribosome_particle_tilts_bin8.mrcs.gz"
    if not star.is_file() or not stack.is_file():
        pytest.skip(f"real particle tilt series not found in {TILTS}")
    meta, groups = particle_tilt_series(star)
    assert len(groups) == 6 and len(meta.angles_deg) == 39
    scale = starfile.read(star)
    first = scale[scale["rlnGroupName"] == groups[0]]
    # |θ| from the (refined) poses agrees with rlnCtfScalefactor = cos θ: median within 0.5°, all within 5°
    diff = np.abs(np.abs(meta.angles_deg) - np.degrees(np.arccos(first["rlnCtfScalefactor"].clip(-1, 1))))
    assert np.median(diff) < 0.5 and diff.max() < 5.0
    assert len(set(np.sign(meta.angles_deg[np.abs(meta.angles_deg) > 1]))) == 2  # both sides of the series
    assert 70 < abs(meta.tilt_axis_deg) < 100  # the usual ~85° axis of this microscope
    vol, record, _ = _reconstruct([stack, "--metadata", star, "--group", 1, "--pixel-size", 15.68,
                                   "--thickness-vox", 64], tmp_path / "ribo.mrc")
    assert vol.shape == (64, 64, 64) and record["n_tilts"] == 39 and record["ctf_correction"]["mode"] == "phase_flip"
    assert record["metadata_sources"]["group"] == groups[1]


def test_tilts_from_poses_recovers_a_known_series():
    pose = relion_matrix(30.0, 70.0, -40.0)
    angles = np.array([0.0, 3.0, -3.0, 6.0, -6.0, 30.0, -45.0])
    a = np.stack([tilt_rotation(t, -84.0) @ pose for t in angles])
    got, axis = tilts_from_poses(a, 0)
    assert axis == pytest.approx(-84.0, abs=1e-6) or axis == pytest.approx(96.0, abs=1e-6)
    np.testing.assert_allclose(got * (1 if axis < 0 else -1), angles, atol=1e-5)


# ----------------------------------------------------------------------------------------------- averaging
def test_subtomogram_average_at_written_relion5_poses_matches_the_map(tmp_path):
    """20 ubiquitins, noise-free 41-tilt series at α = 15°, Wiener-corrected WBP; the average at the RELION-5
    particles' coordinates and angles correlates with the molecule's own potential at ≥ 0.9 below 20 Å (measured
    0.915), and with its mirror image less."""
    from difftem.tomo import reconstruct
    from difftem.tomo.subtomo import average_subtomograms, lowpass_correlation

    cfg = _config(axis_deg=15.0, count=20, shape=128, seed=5)
    cfg["optics"] = {"defocus_um": 2.0}
    cfg["sample"]["ice_thickness_nm"] = 15
    cfg["tilt_series"] = {"scheme": "dose_symmetric", "min_deg": -60, "max_deg": 60, "step_deg": 3,
                          "total_dose_e_per_a2": 100, "tilt_axis_deg": 15.0, "damage": "none"}
    series = difftem.simulate_tilt_series(difftem.config.config_from_dict(cfg))
    write_tilt_series(series, tmp_path / "run")
    export_tilt_series(tmp_path / "run", tmp_path / "exp", "relion5")
    r5 = tmp_path / "exp" / "relion5"
    meta = find_metadata(r5 / "tilt_series" / "run.mrcs", r5 / "tomograms.star")
    pos, rot, _ = read_particles_star(r5 / "particles.star", meta.tilt_axis_deg)
    st = series.noiseless
    st = -(st - st.mean(dim=(-2, -1), keepdim=True)) / st.mean(dim=(-2, -1), keepdim=True)
    data, _ = ctf_correct(st, meta.angles_deg, meta.ctf, 3.0, tilt_axis_deg=meta.tilt_axis_deg, mode="wiener",
                          wiener_snr=100)
    vol = reconstruct(data, meta.angles_deg, pixel_size_a=3.0, tilt_axis_deg=meta.tilt_axis_deg,
                      thickness_a=meta.thickness_a, device="cpu").volume
    one = dict(cfg, sample={"ice_thickness_nm": 0, "ice_structure": {"mode": "off"},
                            "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]]}]})
    one["detector"] = dict(cfg["detector"], shape_px=[48, 48])
    one.pop("tilt_series")
    truth = potential_volume(difftem.config.config_from_dict(one), thickness_a=48 * 3.0)[0]
    avg = average_subtomograms(vol, 3.0, pos, rot, 48)
    score = lowpass_correlation(avg, truth, 3.0, 20.0)
    print(f"STA correlation below 20 A: {score:.3f}")
    assert score >= 0.9
    assert score > lowpass_correlation(avg, truth.flip(0), 3.0, 20.0) + 0.03


def test_export_command_and_simulate_formats(sim, tmp_path):
    res = runner.invoke(app, ["export", str(sim["root"] / "run"), "--out", str(tmp_path / "x"), "--formats",
                              "relion5,copick"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x" / "relion5" / "tomograms.star").is_file() and not (tmp_path / "x" / "imod").exists()
    vol, voxel = read_tomogram(tmp_path / "x" / "copick" / "ExperimentRuns" / "run" / "VoxelSpacing3.000" / "wbp.zarr")
    assert voxel == 3.0 and vol.shape == (sim["rec"].thickness_px(), 64, 64) and np.isfinite(vol).all()
    bad = runner.invoke(app, ["export", str(sim["root"] / "run"), "--out", str(tmp_path / "y"), "--formats", "x"])
    assert bad.exit_code == 2 and "--formats: unknown format 'x'" in bad.output
    cfg = tmp_path / "c.yaml"
    import yaml

    small = _config()
    small["tilt_series"].update(min_deg=-20, max_deg=20, step_deg=20, defocus_um=None)
    cfg.write_text(yaml.safe_dump(small))
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(tmp_path / "s"), "--formats", "imod"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "imod" / "s.mrc.mdoc").is_file() and (tmp_path / "s" / "run.json").is_file()


def test_reconstruct_errors_are_one_line(sim, tmp_path):
    imod_stack = sim["root"] / "exp" / "imod" / "run.mrc"
    tlt = sim["root"] / "exp" / "imod" / "run.tlt"
    res = runner.invoke(app, ["reconstruct", str(imod_stack), "--tlt", str(tlt), "--out", str(tmp_path / "v.mrc"),
                              "--ctf-correction", "phase-flip", "--device", "cpu"])
    assert res.exit_code == 2 and "no per-tilt defocus known" in res.output and not (tmp_path / "v.mrc").exists()
    (tmp_path / "m.txt").write_text("x")
    res = runner.invoke(app, ["reconstruct", str(imod_stack), "--metadata", str(tmp_path / "m.txt"), "--out",
                              str(tmp_path / "v.mrc")])
    assert res.exit_code == 2 and "--metadata" in res.output and "unknown metadata file kind" in res.output
    res = runner.invoke(app, ["reconstruct", str(imod_stack), "--ctf-correction", "magic", "--out",
                              str(tmp_path / "v.mrc")])
    assert res.exit_code == 2 and "--ctf-correction: unknown mode 'magic'" in res.output


def test_damaged_runs_are_named_and_one_tilt_exports(sim, tmp_path):
    """A run.json cut or edited by hand (a KeyError traceback before) and a tilts.star that lists other tilts than
    the stack holds (sets of mismatched lengths were written) are one-line FormatErrors naming the file; a series of
    one tilt, whose MRC holds a single section, exports."""
    import shutil

    from difftem.core.errors import FormatError

    run = tmp_path / "run"
    shutil.copytree(sim["root"] / "run", run)
    (run / "run.json").write_text(json.dumps({"config": {"tilt_series": {"scheme": "list"}}}))
    with pytest.raises(FormatError, match=r"run\.json.*lacks or garbles 'beam'"):
        read_run(run)
    shutil.copy(sim["root"] / "run" / "run.json", run / "run.json")
    star = starfile.read(run / "tilts.star", always_dict=True)
    block = next(iter(star))
    star[block] = star[block].iloc[:-1]
    starfile.write(star, run / "tilts.star", overwrite=True)
    n = len(sim["series"].angles_deg)
    with pytest.raises(FormatError, match=f"tilts.star.*{n - 1} tilts listed for the {n} images"):
        read_run(run)
    cfg = _config(shape=48, count=2)
    cfg["tilt_series"] = {"scheme": "list", "angles_deg": [0.0], "damage": "none"}
    write_tilt_series(difftem.simulate_tilt_series(difftem.config.config_from_dict(cfg)), tmp_path / "one")
    rec = read_run(tmp_path / "one")
    assert rec.stack.shape == (1, 48, 48) and list(rec.angles_deg) == [0.0]
    export_tilt_series(tmp_path / "one", tmp_path / "one_sets", "imod,relion5")
    assert (tmp_path / "one_sets" / "imod").is_dir() and (tmp_path / "one_sets" / "relion5").is_dir()


def test_export_is_all_or_nothing_and_replaces_sets_whole(sim, tmp_path, monkeypatch):
    """export wrote set after set into OUT: a failure left the earlier sets, and a second export into the same OUT
    silently overwrote and mixed them with the first run's files. Now the sets appear together or not at all, an OUT
    that holds a set is refused without --overwrite, and --overwrite replaces each set whole."""
    import importlib
    import shutil

    ex = importlib.import_module("difftem.simulate.export")  # `difftem.simulate` is also the function
    run = tmp_path / "runA"
    shutil.copytree(sim["root"] / "run", run)
    out = tmp_path / "sets"
    res = runner.invoke(app, ["export", str(run), "--out", str(out), "--formats", "imod,relion5,copick"])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "copick" / "copick_config.json").read_text())
    assert config["overlay_root"] == f"local://{(out / 'copick').resolve()}"  # the final place, not the staging one
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    again = runner.invoke(app, ["export", str(run), "--out", str(out), "--formats", "imod"])
    assert again.exit_code == 2 and "already holds imod/" in again.output and "--overwrite" in again.output
    other = tmp_path / "runB"
    shutil.copytree(run, other)
    res = runner.invoke(app, ["export", str(other), "--out", str(out), "--formats", "imod,relion5", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert {p.name.split(".")[0] for p in (out / "imod").iterdir()} == {"runB"}  # runA's files went with the old set
    assert "runA" in (out / "copick" / "copick_config.json").read_text()  # a set not asked for is left alone
    empty = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "none"), "--formats", ""])
    assert empty.exit_code == 2 and "--formats" in empty.output

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex, "write_copick", full_disk)
    failed = tmp_path / "failed"
    with pytest.raises(difftem.core.errors.OutputError, match="nothing was exported"):
        ex.export_tilt_series(run, failed, "imod,relion5,copick")
    assert list(failed.iterdir()) == []  # neither the imod and relion5 sets written before the failure nor staging
