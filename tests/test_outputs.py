"""What difftem writes for other programs: STAR tables (read back by starfile and by difftem), .tlt files, the
tilt geometry `difftem reconstruct` picks up from beside a stack, and the preview figure."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import starfile
import yaml
from PIL import Image
from typer.testing import CliRunner

from difftem.cli import app
from difftem.io.star import read_mtf_curve, read_star, write_mtf_star, write_star
from difftem.io.tlt import angles_beside, tilt_axis_beside, tlt_text, write_tlt
from difftem.simulate.output import write_simulation, write_tilt_series
from difftem.simulate.pipeline import simulate, simulate_tilt_series

runner = CliRunner()
ANGLES = [-30.0, 0.0, 30.0]


def _cfg(**over):
    d = {"seed": 3, "beam": {"voltage_kv": 300, "dose_e_per_a2": 20},
         "optics": {"defocus_um": 1.5, "astigmatism_um": 0.2, "astigmatism_angle_deg": 30},
         "detector": {"shape_px": [64, 64], "pixel_size_a": 3.0, "noise": "poisson"},
         "sample": {"ice_thickness_nm": 10, "particles": [{"structure": "builtin:1ubi", "random": {"count": 2}}]},
         "simulation": {"slice_thickness_a": 20.0, "device": "cpu"},
         "tilt_series": {"scheme": "list", "angles_deg": [0, -30, 30], "total_dose_e_per_a2": 30,
                         "tilt_axis_deg": 30}}
    d.update(over)
    return d


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """An astigmatic tilt series and the folder output.write_tilt_series wrote it into."""
    out = tmp_path_factory.mktemp("series")
    result = simulate_tilt_series(_cfg())
    write_tilt_series(result, out)
    return out, result


@pytest.fixture(scope="module")
def series(written):
    return written[0]


def _same(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        if pd.api.types.is_numeric_dtype(a[col]):
            np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=0, atol=1e-6)
        else:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist()


def _both_readers(path) -> dict:
    """The blocks of a STAR file: starfile's and difftem's reading agree."""
    ours, theirs = read_star(path), starfile.read(path, always_dict=True)
    assert list(ours) == list(theirs)
    for name in ours:
        _same(ours[name], theirs[name])
    return ours


def test_astigmatic_tilt_series_star(series):
    tilts = starfile.read(series / "tilts.star")
    assert tilts["rlnTomoNominalStageTiltAngle"].tolist() == ANGLES
    np.testing.assert_allclose(tilts["rlnDefocusU"] - tilts["rlnDefocusV"], 2000.0, atol=1e-6)
    np.testing.assert_allclose((tilts["rlnDefocusU"] + tilts["rlnDefocusV"]) / 2, 15000.0, atol=1e-6)
    np.testing.assert_allclose(tilts["rlnDefocusAngle"], 30.0)
    np.testing.assert_allclose(tilts["rlnTomoNominalTiltAxisAngle"], 30.0)
    np.testing.assert_allclose(tilts["rlnMicrographPixelSize"], 3.0)
    assert tilts["rlnMicrographName"].tolist() == ["1@tilt_series.mrc", "2@tilt_series.mrc", "3@tilt_series.mrc"]
    assert (series / "tilts.star").read_text().startswith("# difftem tilt series")
    with Image.open(series / "preview.png") as im:
        assert 1.2 * im.size[1] < im.size[0] < 2 * im.size[1]  # three tilts side by side: detected over noise-free


def test_reconstruct_takes_angles_and_tilt_axis_from_beside_the_stack(tmp_path):
    cfg = tmp_path / "ts.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(optics={"defocus_um": 1.5})))
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(tmp_path / "sim")])
    assert res.exit_code == 0, res.output
    stack = tmp_path / "sim" / "tilt_series.mrc"

    def rec(name, *extra):
        out = tmp_path / f"{name}.mrc"
        res = runner.invoke(app, ["reconstruct", str(stack), "--out", str(out), "--thickness-vox", "4",
                                  "--device", "cpu", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(out.with_suffix(".json").read_text()), " ".join(res.output.split())

    record, output = rec("vol")  # the simulation's own record comes first
    assert record["tilt_axis_deg"] == 30.0 and record["angles_deg"] == ANGLES
    assert record["tilt_axis_source"].endswith("run.json")
    assert "tilt axis 30° from" in output
    assert rec("given", "--tilt-axis", "5")[0]["tilt_axis_deg"] == 5.0  # the option wins
    (tmp_path / "sim" / "run.json").unlink()  # then the files beside the stack: .tlt angles, tilts.star axis
    record, output = rec("beside")
    assert record["tilt_axis_deg"] == 30.0 and record["angles_deg"] == ANGLES
    assert record["tilt_axis_source"].endswith("tilts.star") and record["tlt"].endswith("tilt_series.tlt")
    assert "tilt angles from" in output
    (tmp_path / "sim" / "tilt_series.tlt").unlink()
    shutil.move(tmp_path / "sim" / "tilts.star", tmp_path / "tilts.star")
    res = runner.invoke(app, ["reconstruct", str(stack), "--out", str(tmp_path / "x.mrc")])
    assert res.exit_code == 2 and "--tlt: no tilt angles given" in " ".join(res.output.split())
    shutil.move(tmp_path / "tilts.star", tmp_path / "sim" / "tilts.star")
    (tmp_path / "sim" / "tilts.star").write_text((tmp_path / "sim" / "tilts.star").read_text()
                                                 .replace("_rlnTomoNominalTiltAxisAngle", "_difftemAxis"))
    assert rec("default")[0]["tilt_axis_deg"] == 0.0


def test_every_star_file_reads_back(written, tmp_path):
    series, result = written
    # tilt series: tilts.star and particles.star
    tilts = _both_readers(series / "tilts.star")["tilts"]
    rows = result.tilt_rows
    for key in ("rlnTomoNominalStageTiltAngle", "rlnDefocusU", "rlnDefocusV", "rlnMicrographPreExposure"):
        np.testing.assert_allclose(tilts[key], [r[key] for r in rows], atol=1e-6)
    particles = _both_readers(series / "particles.star")["particles"]
    run = json.loads((series / "run.json").read_text())
    assert len(particles) == run["particle_types"][0]["copies"] == 2
    # a micrograph's particles.star against the ground truth it was written from
    result = simulate(_cfg(tilt_series=None, detector={"shape_px": [64, 64], "pixel_size_a": 2.0}))
    write_simulation(result, tmp_path / "mg")
    particles = _both_readers(tmp_path / "mg" / "particles.star")["particles"]
    truth = result.metadata["particles"]
    for key in ("rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        np.testing.assert_allclose(particles[key], [r[key] for r in truth], atol=1e-6)
    assert particles["rlnMicrographName"].tolist() == ["micrograph.mrc"] * len(truth)
    # MTF
    freq, value = np.linspace(0, 0.5, 11), np.linspace(1, 0.1, 11) ** 2
    write_mtf_star(tmp_path / "mtf.star", freq, value)
    mtf = _both_readers(tmp_path / "mtf.star")["mtf"]
    np.testing.assert_allclose(mtf["rlnMtfValue"], value, atol=1e-9)
    got_f, got_v = read_mtf_curve(tmp_path / "mtf.star")
    np.testing.assert_allclose(got_f, freq, atol=1e-9)
    np.testing.assert_allclose(got_v, value, atol=1e-9)
    # an empty table and several blocks stay valid STAR
    write_star(tmp_path / "two.star", {"general": {"rlnTomoName": "ts1"}, "particles": []}, "a\nb")
    both = read_star(tmp_path / "two.star")
    assert both["general"] == {"rlnTomoName": "ts1"} and len(both["particles"]) == 0


def test_a_zero_particle_run_writes_the_particle_columns(series, tmp_path):
    """With no particles, particles.star had one placeholder column (rlnMicrographName), so readers did not find the
    ground truth's columns: now the columns of a run with particles and no rows, for a micrograph and a tilt series;
    the commands that read it take it."""
    from difftem.simulate.export import read_run

    full = _both_readers(series / "particles.star")["particles"]
    assert len(full) == 2
    empty = {"particles": [], "ice_thickness_nm": 5}
    write_simulation(simulate(_cfg(tilt_series=None, sample=empty)), tmp_path / "mg")
    write_tilt_series(simulate_tilt_series(_cfg(sample=empty)), tmp_path / "ts")
    for run in ("mg", "ts"):
        table = _both_readers(tmp_path / run / "particles.star")["particles"]
        assert list(table.columns) == list(full.columns) and len(table) == 0, run
        assert "# Created by difftem\n" in (tmp_path / run / "particles.star").read_text()  # no time stamp
    res = runner.invoke(app, ["extract", str(tmp_path / "mg"), "--out", str(tmp_path / "x"), "--box", "32"])
    assert res.exit_code == 2 and res.output.strip() == "error: no particles to extract: the micrograph's run placed " \
                                                        "none", res.output
    assert read_run(tmp_path / "ts").positions_a.shape == (0, 3)
    res = runner.invoke(app, ["export", str(tmp_path / "ts"), "--out", str(tmp_path / "exp"), "--formats",
                              "imod,relion5,copick"])
    assert res.exit_code == 0, res.output
    assert len(starfile.read(tmp_path / "exp" / "relion5" / "particles.star")["particles"]) == 0
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "ts" / "tilt_series.mrc"), "--out",
                              str(tmp_path / "v.mrc"), "--thickness-vox", "8", "--device", "cpu"])
    assert res.exit_code == 0 and (tmp_path / "v.mrc").is_file(), res.output


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    pytest.importorskip("zarr", reason="the dataset stage needs the `dataset` extra")
    from difftem.dataset import build, spec_from_dict

    root = tmp_path_factory.mktemp("ds") / "store"
    base = _cfg(optics={"defocus_um": 1.5})
    spec = {"seed": 1, "n_items": 1, "base": base, "vary": {}, "outputs": ["micrograph"], "store": "mrc"}
    build(spec_from_dict(spec), root, workers=0)
    return root


def test_dataset_star_files_read_back(dataset):
    mics = _both_readers(dataset / "micrographs.star")["micrographs"]
    assert mics["rlnMicrographName"].tolist() == ["items/000000/micrograph.mrc"]
    np.testing.assert_allclose(mics[["rlnMicrographPixelSize", "rlnVoltage", "rlnDefocusU"]].to_numpy()[0],
                               [3.0, 300.0, 15000.0])
    item = dataset / "items" / "000000"
    tilts = _both_readers(item / "tilts.star")["tilts"]
    assert tilts["rlnTomoNominalStageTiltAngle"].tolist() == ANGLES
    np.testing.assert_allclose(tilts["rlnTomoNominalTiltAxisAngle"], 30.0)
    if (item / "particles.star").exists():
        particles = _both_readers(item / "particles.star")["particles"]
        assert set(particles["rlnMicrographName"]) == {"items/000000/micrograph.mrc"}
    # reconstruct finds the angles (tilts.star) and the tilt axis beside a dataset item's stack
    assert angles_beside(item / "micrograph.mrc")[0].tolist() == ANGLES
    assert tilt_axis_beside(item / "micrograph.mrc")[0] == 30.0


def test_tlt_files_agree(series, dataset, tmp_path):
    simulated = (series / "tilt_series.tlt").read_text()
    assert simulated == (dataset / "items" / "000000" / "tilts.tlt").read_text() == tlt_text(ANGLES)
    assert simulated == "-30.00\n0.00\n30.00\n"
    write_tlt(tmp_path / "a.tlt", [-60.004, 1.5])
    assert (tmp_path / "a.tlt").read_text() == "-60.00\n1.50\n"


def test_dataset_tilt_series_keeps_the_astigmatism(tmp_path):
    """Per-tilt CTF ground truth of an astigmatic tilt series: mean defocus as configured, U − V = astigmatism,
    the same as the tilt rows the simulator writes."""
    pytest.importorskip("zarr", reason="the dataset stage needs the `dataset` extra")
    from difftem.dataset import DatasetReader, build, spec_from_dict

    spec = {"seed": 1, "n_items": 1, "base": _cfg(), "vary": {}, "outputs": ["micrograph"], "store": "mrc"}
    build(spec_from_dict(spec), tmp_path / "store", workers=0)
    ctf = DatasetReader(tmp_path / "store")[0]["ground_truth"]["ctf"]
    assert [c["defocus_um"] for c in ctf] == pytest.approx([1.5] * 3)
    assert [c["defocus_u_um"] - c["defocus_v_um"] for c in ctf] == pytest.approx([0.2] * 3)
    tilts = read_star(tmp_path / "store" / "items" / "000000" / "tilts.star")["tilts"]
    np.testing.assert_allclose(tilts["rlnDefocusU"] - tilts["rlnDefocusV"], 2000.0)
    np.testing.assert_allclose(tilts["rlnDefocusAngle"], 30.0)
