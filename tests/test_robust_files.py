"""Malformed input files through the commands that read them: every outcome is exit code 2 and one line starting
"error:" that names the file, never a traceback; errors never echo another file's content; messages are plain text
(no emoji codes, no markup)."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

from difftem.cli import app
from difftem.cli._console import one_line
from difftem.io.files import write_mrc
from difftem.io.tlt import write_tlt

sys.path.insert(0, str(Path(__file__).parent))
from test_temsim import EVERY_SECTION, write_every_section  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile warns while writing the NaN files
runner = CliRunner()
MTF_FLAG = "0.7,0.2,0.1,10,40"
ANGLES = [-30.0, 0.0, 30.0]
RNG = np.random.default_rng(14)
MTF_HEAD = "data_mtf\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n"
PASSWD_LINE = "root:x:0:0:root:/root:/bin/bash"


def one_error(args, named: str) -> str:
    """Run the CLI; it must exit 2 with one 'error:' line (the last; notes and warnings may come before) naming
    ``named``."""
    res = runner.invoke(app, [str(a) for a in args])
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out and (res.exception is None or isinstance(res.exception, SystemExit)), out
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out
    assert all(line.startswith(("error:", "note:", "warning:")) for line in lines), out
    assert named in errors[0], out
    return errors[0]


# ---------------------------------------------------------------------------------------------- corpora
def _header_int(raw: bytes, word: int, value: int) -> bytes:
    return raw[:4 * word] + np.int32(value).tobytes() + raw[4 * word + 4:]


def mrc_corpus(folder: Path, good: np.ndarray) -> dict[str, Path]:
    """Corrupted variants of an MRC file holding ``good`` (2 Å pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_mrc(folder / "good.mrc", good, 2.0)
    raw = (folder / "good.mrc").read_bytes()
    variants = {
        "empty": b"",
        "short_header": raw[:100],
        "truncated": raw[: 1024 + (len(raw) - 1024) // 2],
        "garbage": RNG.bytes(4096),
        "text": b"hello, not an image\n" * 100,
        "wrong_magic": raw[:208] + b"XXXX" + raw[212:],
        "bad_mode": _header_int(raw, 3, 77),
        "zero_dims": _header_int(raw, 0, 0),
        "negative_dims": _header_int(raw, 1, -5),
        "huge_dims": _header_int(_header_int(_header_int(raw, 0, 2**20), 1, 2**20), 2, 2**20),
        "huge_ext_header": _header_int(raw, 23, 2**31 - 1),
        "gz_truncated": gzip.compress(raw)[:300],
        "gz_garbage": b"\x1f\x8b" + RNG.bytes(2000),
    }
    paths = {}
    for name, data in variants.items():
        paths[name] = folder / f"{name}.mrc"
        paths[name].write_bytes(data)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = good.copy()
        bad.reshape(-1)[5] = value
        write_mrc(folder / f"{name}.mrc", bad, 2.0)
        paths[name] = folder / f"{name}.mrc"
    write_mrc(folder / "one_d.mrc", np.ones((1, 64), np.float32), 2.0)
    paths["one_d"] = folder / "one_d.mrc"
    with mrcfile.new(folder / "complex.mrc") as m:
        m.set_data(good.astype(np.complex64))
    paths["complex"] = folder / "complex.mrc"
    (folder / "directory.mrc").mkdir()
    paths["directory"] = folder / "directory.mrc"
    paths["missing"] = folder / "missing.mrc"
    return paths


def star_corpus(folder: Path) -> dict[str, Path]:
    """Malformed RELION MTF STAR files."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "0 1\n0.25 0.6\n0.5 0.3\n"
    texts = {
        "empty": "",
        "garbage": "hello world\nthis is not STAR\n",
        "no_rows": MTF_HEAD,
        "one_row": MTF_HEAD + "0 1\n",
        "ragged": MTF_HEAD + "0 1\n0.25\n0.5 0.3\n",
        "extra_column": MTF_HEAD + "0 1\n0.25 0.6 7\n0.5 0.3\n",
        "non_numeric": MTF_HEAD + "0 1\nabc 0.6\n0.5 0.3\n",
        "second_curve": MTF_HEAD + rows + "\ndata_other\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n" + rows,
        "duplicate_block": MTF_HEAD + rows + "\ndata_mtf\nloop_\n_rlnFoo\n1\n",
        "second_table": MTF_HEAD.replace("loop_\n", "_rlnVersion 1\nloop_\n") + rows,
        "label_after_rows": MTF_HEAD + "0 1\n_rlnExtra\n0.5 0.3\n",
        "other_columns": "data_\nloop_\n_rlnFoo\n_rlnBar\n0 1\n0.5 0.2\n",
        "pairs_only": "data_x\n_rlnResolutionInversePixel 0\n_rlnMtfValue 1\n",
        "nan_frequency": MTF_HEAD + "0 1\nnan 0.6\n0.5 0.3\n",
        "negative_frequency": MTF_HEAD + "-0.1 1\n0.25 0.6\n0.5 0.3\n",
        "non_monotonic": MTF_HEAD + "0 1\n0.5 0.3\n0.25 0.6\n",
        "duplicate_frequency": MTF_HEAD + "0 1\n0.25 0.6\n0.25 0.3\n",
        "inf_value": MTF_HEAD + "0 1\n0.25 inf\n0.5 0.3\n",
        "nan_value": MTF_HEAD + "0 1\n0.25 nan\n0.5 0.3\n",
        "huge_value": MTF_HEAD + "0 1\n0.25 1e300\n0.5 0.3\n",
        "zero_at_dc": MTF_HEAD + "0 0\n0.25 0.6\n0.5 0.3\n",
        "huge_line": MTF_HEAD + "0 1\n0.25 " + "9" * 1_000_000 + "\n0.5 0.3\n",
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / f"{name}.star"
        paths[name].write_text(text)
    for name, data in (("binary", RNG.bytes(3000)), ("nul", MTF_HEAD.encode() + b"0 1\x00\n0.5 0.3\n"),
                       ("latin1", MTF_HEAD.encode() + b"0 1\n0.5 0.3 # \xe9t\xe9\n")):
        paths[name] = folder / f"{name}.star"
        paths[name].write_bytes(data)
    (folder / "directory.star").mkdir()
    paths["directory"] = folder / "directory.star"
    paths["missing"] = folder / "missing.star"
    return paths


def tlt_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"empty": "", "comments_only": "# nothing\n\n", "nan": "-30\nnan\n30\n", "inf": "-30\ninf\n30\n",
             "two_values": "-30\n0 1\n30\n", "words": "-30\nzero\n30\n",
             "huge_line": "-30\n" + "1" * 1_000_000 + "\n30\n"}
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / f"{name}.tlt"
        paths[name].write_text(text)
    for name, data in (("binary", RNG.bytes(500)), ("latin1", b"-30\n0\xb0\n30\n"), ("nul", b"-30\n0\x00\n30\n")):
        paths[name] = folder / f"{name}.tlt"
        paths[name].write_bytes(data)
    (folder / "directory.tlt").mkdir()
    paths["directory"] = folder / "directory.tlt"
    return paths


def inp_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"empty": "", "garbage": "hello world\n", "heading_only": "=== nonsense ===\n",
             "no_equals": "=== optics ===\nmagnification 50000\n",
             "huge_line": "=== optics ===\n" + "x" * 1_000_000 + "\n",
             "huge_value": "=== optics ===\nmagnification = " + "9" * 100_000 + "\n",
             "nan_value": EVERY_SECTION.replace("cs = 2.7", "cs = nan")}
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / f"{name}.inp"
        paths[name].write_text(text)
    for name, data in (("binary", RNG.bytes(2000)), ("latin1", b"=== optics ===\n# d\xe9focus\n"),
                       ("nul", b"=== optics ===\ncs = 2.7\x00\n")):
        paths[name] = folder / f"{name}.inp"
        paths[name].write_bytes(data)
    (folder / "directory.inp").mkdir()
    paths["directory"] = folder / "directory.inp"
    return paths


TABLES = {
    "empty": "",
    "garbage": "hello world\n",
    "passwd": PASSWD_LINE + "\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    "short_row": "2 6\n0 0 0 0 0 0\n1 2 3\n",
    "missing_rows": "2 6\n0 0 0 0 0 0\n",
    "non_numeric": "2 6\n0 0 0 0 0 0\n1 2 x 4 5 6\n",
    "nan": "2 6\n0 0 0 0 0 0\n1 2 nan 4 5 6\n",
    "inf": "2 6\n0 0 0 0 0 0\n1 2 3 inf 5 6\n",
    "huge_size": "1000000000 6\n0 0 0 0 0 0\n",
    "huge_columns": "2 1000000000\n1 2\n",
    "negative_size": "-2 6\n",
    "huge_line": "2 6\n" + "x" * 1_000_000 + "\n0 0 0 0 0 0\n",
}


# ---------------------------------------------------------------------------------------------- MRC inputs
@pytest.fixture(scope="module")
def mrc_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrc")
    image = (100 + RNG.normal(0, 10, (64, 64))).astype(np.float32)
    stack = (100 + RNG.normal(0, 10, (3, 32, 32))).astype(np.float32)
    write_tlt(root / "angles.tlt", ANGLES)
    return root, mrc_corpus(root / "image", image), mrc_corpus(root / "stack", stack)


def test_corrupt_mrc_through_every_reader(mrc_files, tmp_path):
    root, images, stacks = mrc_files
    for path in images.values():
        one_error(["denoise", path, "--out", tmp_path / "d", "--mtf", MTF_FLAG], str(path))
        one_error(["fit-mtf", path, "--out", tmp_path / "f", "--crop-size", "32"], str(path))
    for path in stacks.values():
        one_error(["reconstruct", path, "--tlt", root / "angles.tlt", "--out", tmp_path / "r" / "v.mrc",
                   "--device", "cpu"], str(path))
        one_error(["score", root / "stack" / "good.mrc", path, "--out", tmp_path / "s.png"], str(path))
    assert not any((tmp_path / d).exists() for d in ("d", "f", "r", "s.png"))


def test_corrupt_box_files(mrc_files, tmp_path):
    good = mrc_files[0] / "image" / "good.mrc"
    for i, data in enumerate((b"", b"# none\n", b"10 x\n", b"nan 3\n", b"1e300 5\n", b"5\n", RNG.bytes(300),
                              b"0 0\n\xff\xfe\n")):
        boxes = tmp_path / f"boxes{i}.txt"
        boxes.write_bytes(data)
        one_error(["fit-mtf", good, "--boxes", boxes, "--crop-size", "32", "--out", tmp_path / "f"], str(boxes))
    assert not (tmp_path / "f").exists()


def test_corrupt_fit_mtf_results(mrc_files, tmp_path):
    good = mrc_files[0] / "image" / "good.mrc"
    params = '{"fits": {"nps": {"params": {"a": A, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}}}, "primary": "nps"}'
    for i, data in enumerate((b"", b"[1, 2", b"[]", b'"text"', b"{}", params.replace("A", "NaN").encode(),
                              params.replace("A", "Infinity").encode(), params.replace("A", '"x"').encode(),
                              b"[" * 100_000, RNG.bytes(300), b'{"fits": "\xff"}')):
        path = tmp_path / f"mtf_fit{i}.json"
        path.write_bytes(data)
        one_error(["denoise", good, "--mtf-fit", path, "--gain", "1", "--out", tmp_path / "d"], str(path))
    (tmp_path / "dir.json").mkdir()
    one_error(["denoise", good, "--mtf-fit", tmp_path / "dir.json", "--out", tmp_path / "d"], "dir.json")
    assert not (tmp_path / "d").exists()


def test_nan_pixels_are_counted(mrc_files, tmp_path):
    _, images, _ = mrc_files
    line = one_error(["denoise", images["nan"], "--out", tmp_path / "d", "--mtf", MTF_FLAG], str(images["nan"]))
    assert "1 NaN or infinite pixel" in line


# ---------------------------------------------------------------------------------------------- MTF STAR files
def test_corrupt_mtf_star_through_every_reader(tmp_path, mrc_files):
    good = mrc_files[0] / "image" / "good.mrc"
    for path in star_corpus(tmp_path / "star").values():
        one_error(["fit-mtf", "--curve", path, "--out", tmp_path / "f"], str(path))
        one_error(["fit-mtf", good, "--reference", path, "--out", tmp_path / "f"], str(path))
        one_error(["denoise", good, "--mtf", path, "--gain", "1", "--out", tmp_path / "d"], str(path))
    assert not (tmp_path / "f").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", ["ragged", "binary", "non_monotonic", "second_curve", "directory"])
def test_simulate_with_a_corrupt_mtf_star(tmp_path, name):
    path = star_corpus(tmp_path / "star")[name]
    config = tmp_path / "sim.yaml"
    config.write_text(f"detector: {{shape_px: [32, 32], mtf: {{star: '{path}'}}}}\nsample: {{ice_thickness_nm: 5}}\n")
    one_error(["simulate", config, "--out", tmp_path / "run"], str(path))


def test_star_errors_name_the_line(tmp_path):
    paths = star_corpus(tmp_path / "star")
    assert f"{paths['ragged']}:6: " in one_error(["fit-mtf", "--curve", paths["ragged"], "--out", tmp_path / "o"],
                                                 str(paths["ragged"]))
    assert f"{paths['latin1']}:6: not UTF-8" in one_error(["fit-mtf", "--curve", paths["latin1"], "--out",
                                                             tmp_path / "o"], str(paths["latin1"]))


def test_a_missing_file_names_where_it_was_looked_for_and_the_fix(tmp_path, monkeypatch):
    """"STAR file not found" said neither where a relative path was looked for nor what to do."""
    monkeypatch.chdir(tmp_path)
    error = one_error(["fit-mtf", "--curve", "curve.star", "--out", "o"], "curve.star")
    assert error.endswith(f"curve.star: STAR file not found (looked for {tmp_path / 'curve.star'}); give the path of "
                          "a RELION MTF STAR file (columns _rlnResolutionInversePixel, _rlnMtfValue; difftem fit-mtf "
                          "writes one, mtf_fit.star)"), error
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"config": {}}')
    error = one_error(["extract", "run", "--out", "x", "--box", "32"], "micrograph.mrc")
    assert "micrograph not found" in error and error.endswith("run is not a complete run; simulate it again with "
                                                              "difftem simulate"), error


def test_every_missing_input_says_what_to_give(mrc_files, tmp_path, monkeypatch):
    """Each file a user names, when missing, gets where it was looked for and what the command wants there, not
    the bare "check the path"."""
    root, _, _ = mrc_files
    image, stack, angles = root / "image" / "good.mrc", root / "stack" / "good.mrc", root / "angles.tlt"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parts.star").write_text("data_\nloop_\n_rlnImageName\n_rlnMicrographName\n1@p.mrcs m1\n")
    (tmp_path / "tomograms.star").write_text("data_global\nloop_\n_rlnTomoName\n_rlnTomoTiltSeriesStarFile\n"
                                             "ts1 ts/ts1.star\n")
    cases = [
        (["fit-ctf", "none.mrc", "--pixel-size", "1"], "none.mrc", "give the path of a micrograph or a tilt-series "
                                                                   "stack"),
        (["fit-ctf", "none.star"], "none.star", "give the path of a RELION STAR file of particle images (columns "
                                                "rlnImageName, rlnMicrographName)"),
        (["fit-ctf", "parts.star", "--pixel-size", "1"], "p.mrcs", "parts.star's rlnImageName names 'p.mrcs', read "
                                                                   "relative to the STAR file's folder"),
        (["fit-ctf", "parts.star", "--stack", "none.mrcs"], "none.mrcs", "the MRC stack that the STAR file's "
                                                                         "rlnImageName refers to"),
        (["fit-ctf", stack, "--tilts", "none.tlt"], "none.tlt", "give a .tlt file: one tilt angle (degrees) per line"),
        (["calibrate", "none.mrc"], "none.mrc", "give the path of a real micrograph or tilt-series stack"),
        (["fit-mtf", "none.mrc"], "none.mrc", "give the path of a micrograph (MRC, .gz ok)"),
        (["fit-mtf", image, "--boxes", "none.txt"], "none.txt", "one 'y x' (pixels) per line"),
        (["denoise", "none.mrc", "--no-mtf"], "none.mrc", "give the path of an MRC image or stack"),
        (["denoise", image, "--mtf-fit", "none.json"], "none.json", "give the mtf_fit.json that difftem fit-mtf "
                                                                    "writes"),
        (["reconstruct", stack, "--tlt", "none.tlt"], "none.tlt", "one tilt angle (degrees) per line"),
        (["reconstruct", stack, "--metadata", "none.star"], "none.star", "give a file describing the series"),
        (["reconstruct", stack, "--metadata", "tomograms.star"], "ts/ts1.star",
         "tomograms.star's rlnTomoTiltSeriesStarFile names 'ts/ts1.star', read relative to its folder"),
        (["reconstruct", stack, "--tlt", angles, "--xf", "none.xf"], "none.xf", "give an IMOD .xf file"),
        (["reconstruct", stack, "--tlt", angles, "--reference", "none.mrc"], "none.mrc", "give the path of a "
                                                                                        "reference volume"),
        (["render", "none.mrc"], "none.mrc", "give the path of a volume (MRC, Z sections)"),
        (["score", stack, "none.mrc"], "none.mrc", "give the path of a reference volume"),
        (["convert", "none.inp"], "none.inp", "give the path of a TEM-simulator 1.3 input file (.inp)"),
    ]
    for args, missing, fix in cases:
        out = ["--out", "o.png" if args[0] in ("render", "score") else "o.mrc" if args[0] == "reconstruct" else "o"]
        error = one_error(args + (out if args[0] != "convert" else []), missing)
        assert f"(looked for {tmp_path / missing}); " in error and fix in error, (args, error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.star", "tomograms.star"]  # nothing written


def test_a_missing_file_a_config_names_says_which_folder_it_was_read_from(tmp_path, monkeypatch):
    """A config's relative paths are read from the config file's folder, not the working folder: a missing one's
    error names the field, the path as written, that folder and what the file must be."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    folder = (tmp_path / "cfg").resolve()
    cases = {
        "detector: {shape_px: [32, 32], mtf: {star: curves/k3.star}}\n":
            ("curves/k3.star", "STAR file", "detector.mtf.star", "a RELION MTF STAR file (columns "
             "_rlnResolutionInversePixel, _rlnMtfValue"),
        "sample: {particles: [{structure: builtin:1ubi, transforms_file: copies.txt}]}\n":
            ("copies.txt", "transform file", "sample.particles.0.transforms_file", "a TEM-simulator transform file"),
        "sample: {particles: [{map: {file: maps/m.mrc, mass_kda: 50}}]}\n":
            ("maps/m.mrc", "density map", "sample.particles.0.map.file", "a density map: an MRC volume"),
        "sample: {particles: [{structure: models/none.pdb}]}\n":
            ("models/none.pdb", "structure file", "sample.particles.0.structure", "a PDB or mmCIF file"),
    }
    for text, (given, what, field, give) in cases.items():
        (tmp_path / "cfg" / "sim.yaml").write_text(text)
        error = one_error(["simulate", "../cfg/sim.yaml", "--out", "run"], str(folder / given))
        assert f"{folder / given}: {what} not found; {field} {given!r} is read relative to the config file's " \
               f"folder ({folder}); give the path of {give}" in error, error
    assert not (tmp_path / "work" / "run").exists()


def test_a_missing_config_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = one_error(["simulate", "nothere.yaml", "--out", "run"], "nothere.yaml")
    assert f"config file not found (looked for {(tmp_path / 'nothere.yaml').resolve()}); give the path of an " \
           "existing config file" in error, error
    assert not (tmp_path / "run").exists()


def test_denoise_config_without_mtf_names_the_real_fix(tmp_path, mrc_files):
    config = tmp_path / "sim.yaml"
    config.write_text("detector: {shape_px: [64, 64], mtf: null}\n")
    line = one_error(["denoise", mrc_files[0] / "image" / "good.mrc", "--config", config, "--out", tmp_path / "d"],
                     str(config))
    assert "detector.mtf is null" in line and "pass --config" not in line and "give a config" not in line


# ---------------------------------------------------------------------------------------------- .tlt files
def test_corrupt_tlt(mrc_files, tmp_path):
    stack = mrc_files[0] / "stack" / "good.mrc"
    for path in tlt_corpus(tmp_path / "tlt").values():
        line = one_error(["reconstruct", stack, "--tlt", path, "--out", tmp_path / "r" / "v.mrc", "--device", "cpu"],
                         str(path))
        assert "1" * 100 not in line  # the huge line is not echoed
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------- .inp and tables
def test_corrupt_inp(tmp_path):
    for name, path in inp_corpus(tmp_path / "inp").items():
        line = one_error(["convert", path, "--out", tmp_path / "c.yaml"], str(path))
        assert len(line) < 2100 and "x" * 100 not in line
        if name in ("binary", "latin1", "huge_line"):
            one_error(["simulate", path, "--out", tmp_path / "run"], str(path))
    assert not (tmp_path / "c.yaml").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,good", [("coord_file_in", "ubq_coord.txt"), ("pdb_transf_file_in", "ubq_transf.txt")])
def test_corrupt_tables(tmp_path, key, good):
    for name, text in TABLES.items():
        folder = tmp_path / name
        folder.mkdir()
        table = folder / f"bad_{name}.txt"
        table.write_text(text)
        inp = write_every_section(folder, EVERY_SECTION.replace(f"{key} = {good}", f"{key} = {table}"))
        line = one_error(["convert", inp, "--out", folder / "c.yaml"], table.name)
        assert "root:x" not in line and "xxxx" not in line
        assert not (folder / "c.yaml").exists()
    for data in (RNG.bytes(1000), b"2 6\n0 0 0 0 0 0\n1 2 3 4 5 \xff\n"):
        table = tmp_path / "binary.txt"
        table.write_bytes(data)
        inp = write_every_section(tmp_path, EVERY_SECTION.replace(f"{key} = {good}", f"{key} = {table}"))
        one_error(["convert", inp], table.name)


def test_a_system_file_named_as_a_table_is_not_echoed(tmp_path):
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd here")
    first = passwd.read_text(errors="replace").splitlines()[0]
    inp = write_every_section(tmp_path, EVERY_SECTION.replace("coord_file_in = ubq_coord.txt",
                                                              "coord_file_in = /etc/passwd"))
    for command in (["convert", inp], ["simulate", inp, "--out", tmp_path / "run"]):
        line = one_error(command, "/etc/passwd:1:")
        assert first not in line and first.split(":")[0] + ":x" not in line


# ---------------------------------------------------------------------------------------------- messages
def test_messages_are_plain_text_on_one_line(tmp_path):
    weird = tmp_path / "curve :x: [red]loud[/red] [/oops].star"
    line = one_error(["fit-mtf", "--curve", weird, "--out", tmp_path / "o"], str(weird))
    assert ":x:" in line and "❌" not in line and "[red]loud[/red] [/oops]" in line
    if os.name == "posix":  # a newline in a file name stays on the error's one line
        two = tmp_path / "two\nlines.star"
        line = one_error(["fit-mtf", "--curve", two, "--out", tmp_path / "o"], "lines.star")
        assert "two; lines.star" in line
    assert one_line("first\n\n  second  line\n") == "first; second line"
    assert one_line("x" * 5000).endswith("…") and len(one_line("x" * 5000)) == 2001


def test_good_files_still_work(mrc_files, tmp_path):
    """The checks refuse the corpus, not ordinary inputs: a plain and a gzipped MRC, a curve with comments."""
    shutil.copy(mrc_files[0] / "image" / "good.mrc", tmp_path / "g.mrc")
    (tmp_path / "g.mrc.gz").write_bytes(gzip.compress((tmp_path / "g.mrc").read_bytes()))
    star = tmp_path / "ok.star"
    star.write_text("# version 30001\n\n" + MTF_HEAD.replace("_rlnMtfValue", "_rlnMtfValue #2") +
                    "0.0 1.0\n# a comment\n0.1\t0.9\n\n0.2 0.75  # a note\n0.3 0.6\n0.4 0.45\n0.5 0.3\n")
    from difftem.forward.detector import read_mtf_star
    from difftem.io.tlt import read_mrc_checked

    curve = read_mtf_star(star)
    assert curve.frequency_per_px.tolist() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5] and curve.value[2] == 0.75

    for p in (tmp_path / "g.mrc", tmp_path / "g.mrc.gz"):
        data, px = read_mrc_checked(p)
        assert data.shape == (64, 64) and px == 2.0
