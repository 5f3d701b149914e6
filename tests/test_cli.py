"""CLI: outputs, headers, and one-line errors that leave nothing half-written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml
from conftest import STRUCTURES
from typer.testing import CliRunner

from difftem.cli import app

runner = CliRunner()


def write_cfg(tmp_path, **sections):
    base = {
        "seed": 0,
        "beam": {"voltage_kv": 300, "dose_e_per_a2": 30},
        "detector": {"shape_px": [96, 96], "pixel_size_a": 1.25, "mtf": {"a": 0.7, "b": 0.2, "c": 0.1,
                                                                          "alpha": 10, "beta": 40}},
        "sample": {"ice_thickness_nm": 10, "particles": [{"structure": str(STRUCTURES / "1ubi_ubiquitin.pdb.gz")}]},
    }
    base.update(sections)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


def test_simulate_writes_all_outputs(shared_data, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["simulate", str(write_cfg(tmp_path)), "--out", str(out), "--save",
                              "potential,exit_wave"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert names == {"micrograph.mrc", "noiseless.mrc", "projected_potential.mrc", "exit_wave.npy", "preview.png",
                     "particles.star",
                     "run.json"}
    with mrcfile.open(out / "micrograph.mrc") as m:
        assert m.data.dtype == np.float32 and m.data.shape == (96, 96)
        assert float(m.voxel_size.x) == pytest.approx(1.25)
    wave = np.load(out / "exit_wave.npy")
    assert wave.dtype == np.complex64 and wave.shape == (96, 96)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["detector"]["pixel_size_a"] == 1.25 and run["seed"] == 0
    assert "difftem_version" in run and run["timings"]["total_s"] > 0
    with mrcfile.open(out / "projected_potential.mrc") as m:
        assert float(m.data.max()) > 4.8775 * 100  # ice (100 Å) plus protein


def bad(tmp_path, text=None, cfg_path=None):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "micrograph.mrc").write_bytes(b"previous run")
    if cfg_path is None:
        cfg_path = tmp_path / "bad.yaml"
        cfg_path.write_text(text)
    res = runner.invoke(app, ["simulate", str(cfg_path), "--out", str(out)])
    assert res.exit_code == 2
    assert (out / "micrograph.mrc").read_bytes() == b"previous run"  # nothing overwritten
    assert {p.name for p in out.iterdir()} == {"micrograph.mrc"}  # and nothing partial added
    msg = " ".join(res.output.split())
    assert "Traceback" not in res.output
    return msg


def test_malformed_yaml(tmp_path):
    assert "malformed YAML at line 3" in bad(tmp_path, "beam:\n  voltage_kv: [300\n")


@pytest.mark.parametrize("text", ["", "# beam: {voltage_kv: 300}\n\n"])
def test_empty_config_is_refused_with_the_fix(tmp_path, text):
    """An empty file (or only comments) used to simulate every default without a word."""
    msg = bad(tmp_path, text)
    assert "bad.yaml: the config file is empty (or only comments); give at least a sample section" in msg, msg
    assert "write {} to simulate the defaults" in msg


def test_unknown_field(tmp_path):
    msg = bad(tmp_path, "beam: {voltage_kv: 300, dose: 40}\n")
    assert "beam.dose" in msg and "unknown field" in msg


def test_negative_thickness(tmp_path):
    msg = bad(tmp_path, "sample: {ice_thickness_nm: -5}\n")
    assert "sample.ice_thickness_nm" in msg and "greater than or equal to 0" in msg


def test_missing_structure(tmp_path):
    msg = bad(tmp_path, "sample: {particles: [{structure: nowhere.pdb}]}\n")
    assert "nowhere.pdb" in msg and "file not found" in msg


def test_unknown_element(tmp_path):
    pdb = tmp_path / "x.pdb"
    pdb.write_text("ATOM      1  XX  UNK A   1       1.000   2.000   3.000  1.00 20.00           XX\nEND\n")
    msg = bad(tmp_path, f"sample: {{particles: [{{structure: {pdb}}}]}}\n")
    assert "unknown element" in msg and "x.pdb" in msg


def test_field_too_large_for_memory(tmp_path):
    msg = bad(tmp_path, "detector: {shape_px: [65536, 65536]}\nsimulation: {max_memory_gb: 1}\n")
    assert "detector.shape_px" in msg and "GB" in msg and "reduce" in msg


def test_auto_representation_choice_is_printed_as_a_note(tmp_path):
    """40 ubiquitins at 4 Å: auto moves them to projections; that is information (a note, in run.json's notes),
    not a warning."""
    cfg = tmp_path / "auto.yaml"
    cfg.write_text(yaml.safe_dump({"detector": {"shape_px": [128, 128], "pixel_size_a": 4.0},
                                   "sample": {"particles": [{"structure": "builtin:1ubi", "random": {"count": 40}}]}}))
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "representation auto chose projection" in line]
    assert len(lines) == 1 and lines[0].startswith("note: sample.particles.0"), res.output
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert any("auto chose" in n for n in run["notes"]) and not any("auto chose" in w for w in run["warnings"])


def test_bad_save_item(shared_data, tmp_path):
    res = runner.invoke(app, ["simulate", str(write_cfg(tmp_path)), "--out", str(tmp_path / "o"), "--save", "wave"])
    assert res.exit_code == 2 and "--save" in res.output


def test_info_and_console_script():
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0 and "torch" in res.output
    proc = subprocess.run([sys.executable, "-m", "difftem.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "simulate" in proc.stdout



@pytest.mark.parametrize(("argv", "words"), [
    (["simulate", "x.yaml", "--out", "o", "--bogus"], "error: no such option: --bogus"),
    (["extract", "RUN", "--box", "abc"], "error: invalid value for '--box'"),
    (["extract"], "error: missing argument 'run'"),
    (["bogus"], "error: no such command 'bogus'"),
])
def test_usage_errors_are_one_line_naming_the_help(argv, words):
    """typer showed these as a boxed panel under the usage line: now the one `error:` line of every other error."""
    res = runner.invoke(app, argv, prog_name="difftem")
    command = "difftem" if argv[0] == "bogus" else f"difftem {argv[0]}"
    assert res.exit_code == 2 and res.output.strip().splitlines() == [res.output.strip()], res.output
    assert res.output.startswith(words) and res.output.strip().endswith(f"; see {command} --help"), res.output


def test_usage_error_through_the_console_script_keeps_help_as_it_was():
    bad = subprocess.run([sys.executable, "-m", "difftem.cli", "convert", "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no such option: --bogus"), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "╭" not in bad.stderr
    bare = subprocess.run([sys.executable, "-m", "difftem.cli"], capture_output=True, text=True)
    assert bare.returncode == 2 and "Commands" in bare.stdout + bare.stderr and "error:" not in bare.stderr

def test_console_script_ends_with_the_commands_exit_code_and_its_output(tmp_path):
    """The entry point skips the interpreter's teardown: exit codes and the streams must come through whole."""
    bad = subprocess.run([sys.executable, "-m", "difftem.cli", "simulate", str(tmp_path / "none.yaml"), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 2 and "none.yaml" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detector: {shape_px: [32, 32], pixel_size_a: 2.0, noise: none}\n"
                   "sample: {ice_thickness_nm: 5, ice_structure: {mode: 'off'}}\n")
    ok = subprocess.run([sys.executable, "-m", "difftem.cli", "simulate", str(cfg), "--out", str(tmp_path / "run")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "wrote" in ok.stdout + ok.stderr, ok.stderr
    assert (tmp_path / "run" / "run.json").stat().st_size > 100


def test_demo(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "demo" / "preview.png").stat().st_size > 10_000
    with mrcfile.open(tmp_path / "demo" / "micrograph.mrc") as m:
        assert m.data.shape == (384, 384)


def test_demo_into_the_working_folder(tmp_path, monkeypatch):
    """`demo --out . --overwrite` replaces the working folder itself: the run was written, then resolving '.' for the
    final message failed (exit 1, "No such file or directory"). Now the path is taken before the run. A config kept
    inside the folder that `simulate --overwrite` would replace is refused up front."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "old.txt").write_text("x")
    monkeypatch.chdir(work)
    res = runner.invoke(app, ["demo", "--out", ".", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert f"lookat{work / 'preview.png'}" in "".join(res.output.split())  # the console wraps long paths anywhere
    assert (work / "run.json").is_file() and not (work / "old.txt").exists()
    monkeypatch.chdir(tmp_path)
    cfg = work / "cfg.yaml"
    cfg.write_text("detector: {shape_px: [32, 32]}\n")
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(work), "--overwrite"])
    assert res.exit_code == 2 and "would delete the input" in " ".join(res.output.split()) and cfg.is_file()


def test_unwritable_out_fails_before_the_simulation(tmp_path, monkeypatch):
    """A place the run cannot be staged in is refused up front (it failed only after the whole simulation). The
    check is os.access on the folder beside --out, faked here: the tests may run as root, which a mode bit does not
    stop."""
    import importlib
    import os as os_module

    files = importlib.import_module("difftem.io.files")
    real = os_module.access
    parent = tmp_path / "ro"
    parent.mkdir()
    monkeypatch.setattr(files.os, "access", lambda p, mode: False if Path(p) == parent else real(p, mode))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("detector: {shape_px: [32, 32]}\n")
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(parent / "run")])
    assert res.exit_code == 2 and "cannot write the run there" in " ".join(res.output.split())
    assert "slices" not in res.output  # no progress: nothing was simulated


def test_convert_does_not_load_torch(tmp_path):
    """The console script loads torch before a command (with Ctrl-C held) except for commands that never use it:
    convert took 1.9–2.2 s instead of ~0.45 s when it did."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_temsim import write_every_section

    inp = write_every_section(tmp_path)

    def loads_torch(*args: str) -> list[str]:  # (exit code, whether torch was imported) of the console script
        code = ("import sys\nfrom difftem import cli\n"
                "cli._finish = lambda code: print(code, 'torch' in sys.modules)\n"
                f"sys.argv = ['difftem', *{list(args)!r}]\ncli.main()\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return res.stdout.split()[-2:]

    assert loads_torch("convert", str(inp), "-o", str(tmp_path / "c.yaml")) == ["0", "False"]
    assert loads_torch("info") == ["0", "True"]


def test_start_up_loads_with_the_collector_off_then_freezes_what_it_loaded():
    """The console script imports torch and the app without cyclic collections, then freezes those objects (later
    full collections skip them) and turns the collector back on; a caller that turned it off keeps it off."""
    code = ("import gc, sys\n"
            "from difftem.cli import _start_up_without_collections\n"
            "with _start_up_without_collections():\n"
            "    during = gc.isenabled()\n"
            "    import torch\n"
            "print(during, gc.isenabled(), gc.get_freeze_count() > 100_000)\n"
            "gc.unfreeze(); gc.disable()\n"
            "with _start_up_without_collections():\n"
            "    pass\n"
            "print(gc.isenabled())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True", "True", "False"], res.stdout


@pytest.mark.parametrize("preset,numpy_first,want", [(None, False, "1"), ("3", False, "3"), (None, True, None)])
def test_numpy_blas_gets_one_thread_unless_set_or_loaded(preset, numpy_first, want):
    """The console script asks for one OpenBLAS thread before numpy loads (its spinning threads only burned CPU on
    difftem's small products); a count the user set is kept, and once numpy is loaded nothing is changed."""
    code = ("import os, sys\n"
            f"{'import numpy' if numpy_first else ''}\n"
            "from difftem.core.threads import one_thread_for_numpy_blas\n"
            "one_thread_for_numpy_blas()\n"
            "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(want)
