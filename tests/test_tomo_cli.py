"""`difftem reconstruct`, `render`, `score`: outputs, headers, and one-line errors that write nothing."""

import json

import mrcfile
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from difftem.cli import app
from difftem.io.files import write_mrc, write_volume
from difftem.tomo import parse_tlt, project, write_tlt

runner = CliRunner()
SHAPE = (12, 20, 28)  # (Z, Y, X) of the phantom, voxel 2 Å
ANGLES = np.arange(-60.0, 61.0, 5.0)


def phantom():
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2 for n in SHAPE), indexing="ij")
    return (((x - 4) ** 2 + (y + 3) ** 2 + (z - 2) ** 2) <= 16).astype(np.float32)


@pytest.fixture
def series(tmp_path):
    stack = project(torch.from_numpy(phantom()), ANGLES).numpy()
    write_mrc(tmp_path / "tilts.mrc", stack, 2.0)
    write_tlt(tmp_path / "tilts.tlt", ANGLES)
    write_volume(tmp_path / "truth.mrc", phantom(), 2.0)
    return tmp_path


def test_reconstruct_writes_volume_record_and_scores(series):
    out = series / "rec" / "vol.mrc"
    res = runner.invoke(app, ["reconstruct", str(series / "tilts.mrc"), "--tlt", str(series / "tilts.tlt"),
                              "--out", str(out), "--thickness-vox", str(SHAPE[0]), "--method", "sirt",
                              "--iterations", "5", "--device", "cpu", "--reference", str(series / "truth.mrc")])
    assert res.exit_code == 0, res.output
    with mrcfile.open(out) as m:
        assert m.data.shape == SHAPE and m.data.dtype == np.float32
        assert float(m.voxel_size.x) == pytest.approx(2.0)
    record = json.loads((series / "rec" / "vol.json").read_text())
    assert record["method"] == "sirt" and len(record["residuals"]) == 6 and record["voxel_size_a"] == 2.0
    assert record["scores"]["ncc"] > 0.7 and len(record["scores"]["fsc"]["fsc"]) == max(SHAPE) // 2 + 1
    assert (series / "rec" / "vol_fsc.png").read_bytes()[:4] == b"\x89PNG"


def test_reconstruct_binning_and_thickness_in_angstrom(series):
    out = series / "bin.mrc"
    res = runner.invoke(app, ["reconstruct", str(series / "tilts.mrc"), "--tlt", str(series / "tilts.tlt"),
                              "--out", str(out), "--binning", "2", "--thickness-a", "24", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with mrcfile.open(out) as m:
        assert m.data.shape == (6, 10, 14) and float(m.voxel_size.x) == pytest.approx(4.0)


def test_render_and_score_commands(series):
    vol = series / "truth.mrc"
    res = runner.invoke(app, ["render", str(vol), "--out", str(series / "r.png"), "--size", "48", "--turntable", "3",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with Image.open(series / "r.png") as im:
        assert im.size == (1200, 800)
    with Image.open(series / "r.gif") as im:
        assert im.n_frames == 3 and im.size == (48, 48)
    res = runner.invoke(app, ["render", str(vol), "--out", str(series / "only.png"), "--size", "40", "--layout",
                              "render", "--mode", "mip", "--invert"])
    assert res.exit_code == 0, res.output
    with Image.open(series / "only.png") as im:
        assert im.size == (40, 40)
    assert "warning" not in res.output  # a volume's header
    write_volume(series / "nopx.mrc", phantom(), 0.0)  # no voxel size: rendering still works, axes in voxels
    res = runner.invoke(app, ["render", str(series / "nopx.mrc"), "--out", str(series / "n.png"), "--size", "32"])
    assert res.exit_code == 0, res.output
    # a stack's header (particle or tilt images): drawn, with a warning that it is not a volume
    write_mrc(series / "stack.mrcs", phantom(), 2.0)
    res = runner.invoke(app, ["render", str(series / "stack.mrcs"), "--out", str(series / "k.png"), "--size", "32"])
    assert res.exit_code == 0 and "header marks an image stack (mz = 1), not a volume" in " ".join(res.output.split())
    res = runner.invoke(app, ["score", str(vol), str(vol), "--out", str(series / "s.png")])
    assert res.exit_code == 0, res.output
    scores = json.loads((series / "s.json").read_text())
    assert scores["ncc"] == pytest.approx(1.0) and scores["fsc"]["resolution_0143_a"] is None


def test_tlt_parsing_is_robust(tmp_path):
    text = "# angles from the scope\n\n -60.0\n-58.5  # first pair\n\t0\n+3e1\n\n"
    np.testing.assert_allclose(parse_tlt(text), [-60.0, -58.5, 0.0, 30.0])


def _fails(args, match, series, out):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "Traceback" not in res.output and match in text, res.output
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_bad_inputs_fail_in_one_line_and_write_nothing(series):
    out = series / "bad" / "vol.mrc"
    base = ["reconstruct", str(series / "tilts.mrc"), "--out", str(out), "--device", "cpu"]
    short = series / "short.tlt"
    write_tlt(short, ANGLES[:-1])
    _fails(base + ["--tlt", str(short)], "24 angles for a stack of 25 images", series, out)
    wide = series / "wide.tlt"
    write_tlt(wide, np.linspace(-95, 95, len(ANGLES)))
    _fails(base + ["--tlt", str(wide)], "beyond ±90°", series, out)
    junk = series / "junk.tlt"
    junk.write_text("0\n10 20\n")
    _fails(base + ["--tlt", str(junk)], "line 2 has 2 values", series, out)
    _fails(base + ["--tlt", str(series / "missing.tlt")], "not found", series, out)
    _fails(["reconstruct", str(series / "none.mrc"), "--out", str(out)],
           "none.mrc: tilt series not found; give the tilt series' MRC stack (n_tilts, H, W): difftem simulate "
           "writes tilt_series.mrc", series, out)
    # no voxel size in the header and no --pixel-size
    write_mrc(series / "nopx.mrc", mrcfile.read(series / "tilts.mrc"), 0.0)
    nopx = ["reconstruct", str(series / "nopx.mrc"), "--tlt", str(series / "tilts.tlt"), "--out", str(out)]
    _fails(nopx, "no pixel size in its header", series, out)
    assert runner.invoke(app, nopx + ["--pixel-size", "2.0", "--device", "cpu"]).exit_code == 0
    out.unlink()
    out.with_suffix(".json").unlink()
    # a single image is not a tilt series; a reference on another grid is refused before anything is written
    write_mrc(series / "one.mrc", np.zeros((20, 28), np.float32), 2.0)
    _fails(["reconstruct", str(series / "one.mrc"), "--tlt", str(series / "tilts.tlt"), "--out", str(out)],
           "expected a stack", series, out)
    _fails(base + ["--tlt", str(series / "tilts.tlt"), "--reference", str(series / "truth.mrc")],
           "has shape (12, 20, 28) but the volume is (5, 20, 28)", series, out)
    _fails(base + ["--tlt", str(series / "tilts.tlt"), "--method", "art"], "unknown method", series, out)
    _fails(["render", str(series / "tilts.mrc"), "--out", str(series / "x.png"), "--opacity", "2"], "opacity",
           series, series / "x.png")
    _fails(["score", str(series / "truth.mrc"), str(series / "tilts.mrc"), "--out", str(series / "s.png")],
           "reference: " + str(series / "tilts.mrc") + " has shape (25, 20, 28)", series, series / "s.png")


def test_stack_without_angles_points_at_the_files_beside_it(tmp_path):
    """A stack with no .tlt or tilts.star beside it but a STAR file that may describe it (a particle's tilt images):
    the error names --tlt and --metadata with that file; with none beside it, --tlt alone."""
    stack = tmp_path / "particles.mrcs"
    write_mrc(stack, np.zeros((3, 16, 16), np.float32), 2.0)
    out = tmp_path / "vol.mrc"
    res = runner.invoke(app, ["reconstruct", str(stack), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 2 and "pass --tlt ANGLES.tlt" in res.output and "--metadata" not in res.output
    (tmp_path / "particles.star").write_text("data_\n")
    res = runner.invoke(app, ["reconstruct", str(stack), "--out", str(out), "--device", "cpu"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "or --metadata with the file that describes it (particles.star lie" in text
    assert not out.exists()


def test_default_thickness_is_noted(series):
    """No --thickness-a/--thickness-vox and none in the metadata: the default (a quarter of the width) is said, with
    the options that change it; given either, nothing is said."""
    out = series / "d.mrc"
    res = runner.invoke(app, ["reconstruct", str(series / "tilts.mrc"), "--tlt", str(series / "tilts.tlt"),
                              "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with mrcfile.open(out) as m:
        z = m.data.shape[0]
    assert z == min(SHAPE[1:]) // 4
    text = " ".join(res.output.split())
    assert f"volume thickness {z} voxels ({z * 2} Å), the default" in text and "--thickness-a" in text
    res = runner.invoke(app, ["reconstruct", str(series / "tilts.mrc"), "--tlt", str(series / "tilts.tlt"),
                              "--out", str(out), "--device", "cpu", "--thickness-vox", "6"])
    assert res.exit_code == 0 and "the default" not in res.output


def test_pixel_size_option_range_and_override_note(series):
    """--pixel-size outside the simulator's 0.01–100 Å is refused; one that replaces a header's pixel size says so
    (score used to override the 2 Å header silently, its help saying 'when the MRC headers have none')."""
    vol = series / "truth.mrc"
    out = series / "s.png"
    _fails(["score", str(vol), str(vol), "--out", str(out), "--pixel-size", "1000"], "outside 0.01–100 Å", series,
           out)
    res = runner.invoke(app, ["score", str(vol), str(vol), "--out", str(out), "--pixel-size", "3"])
    assert res.exit_code == 0, res.output
    assert "--pixel-size 3 Å replaces the 2 Å in truth.mrc's header" in " ".join(res.output.split())
    res = runner.invoke(app, ["score", str(vol), str(vol), "--out", str(out), "--pixel-size", "2"])
    assert res.exit_code == 0 and "replaces" not in res.output
