"""A run's output folder is all or nothing; files honour the umask; SIGKILL at any moment leaves --out absent or
complete.

`difftem simulate` writes into a hidden staging folder beside --out and renames it into place at the end; a folder
that holds files is refused unless --overwrite, which replaces it whole; staging folders left by killed runs are
removed by the next run into the same folder.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from difftem.cli import app
from difftem.core.errors import ArgumentError, DifftemError
from difftem.io import files
from difftem.io.files import atomic_path, clean_stale_folders, file_mode, staging_folder, write_json
from difftem.simulate import output
from difftem.simulate.output import prepare_out, run_and_write, write_simulation, write_tilt_series
from difftem.simulate.pipeline import simulate, simulate_tilt_series

runner = CliRunner()

TINY = {"seed": 2, "detector": {"shape_px": [64, 64], "pixel_size_a": 2.0},
        "sample": {"ice_thickness_nm": 10, "particles": [{"structure": "builtin:1ubi"}]},
        "simulation": {"slice_thickness_a": 20.0, "device": "cpu"}}


@pytest.fixture(scope="module")
def result():
    return simulate(TINY)


def _host() -> str:
    return files._host()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def assert_complete(out: Path) -> dict:
    """run.json present, every output it lists present and readable, nothing else in the folder."""
    run = json.loads((out / "run.json").read_text())
    assert sorted(os.listdir(out)) == sorted(run["outputs"]), (sorted(os.listdir(out)), run["outputs"])
    for name in run["outputs"]:
        path = out / name
        if name.endswith(".mrc"):
            with mrcfile.open(path) as m:
                assert np.isfinite(m.data).all() and m.data.size > 0
        elif name.endswith(".png"):
            with Image.open(path) as im:
                im.verify()
        elif name.endswith(".npy"):
            assert np.load(path).size > 0
        else:
            assert path.read_text().strip()
    return run


def siblings(out: Path) -> set[str]:
    return {p.name for p in out.parent.iterdir()} - {out.name}


# --- files and the umask ---------------------------------------------------------------------------------------

def test_files_and_run_folders_honour_the_umask(tmp_path):
    code = """
import os, sys
os.umask(0o027)
from difftem.io.files import write_json, staging_folder
write_json(sys.argv[1] + "/one.json", {"a": 1})
with staging_folder(sys.argv[1] + "/run") as tmp:
    write_json(tmp / "run.json", {"outputs": ["run.json"]})
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / "one.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "run" / "run.json").stat().st_mode & 0o777 == 0o640
    # this process: whatever its umask, a new file gets 0o666 less it (mkstemp alone would give 0o600)
    mask = os.umask(0o022)
    os.umask(mask)
    assert file_mode() == 0o666 & ~mask
    write_json(tmp_path / "two.json", {})
    assert (tmp_path / "two.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_path_leaves_nothing_on_an_exception(tmp_path):
    (tmp_path / "x.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")
    assert os.listdir(tmp_path) == ["x.json"] and (tmp_path / "x.json").read_text() == "old"


# --- the library: all or nothing --------------------------------------------------------------------------------

def test_a_run_folder_appears_whole(result, tmp_path):
    out = tmp_path / "new" / "run"  # parents are created
    run = write_simulation(result, out)
    assert_complete(out) == run and siblings(out) == set()
    # an existing empty folder is fine and keeps its permissions
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    os.chmod(empty, 0o700)
    write_simulation(result, empty)
    assert_complete(empty)
    assert empty.stat().st_mode & 0o777 == 0o700


def test_a_folder_with_files_is_refused_unless_overwrite(result, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.mrc").write_bytes(b"an older run")
    with pytest.raises(ArgumentError, match=r"^out .*run: is not empty \(stale.mrc\).*overwrite") as exc:
        write_simulation(result, out)
    assert exc.value.argument == "out"
    assert os.listdir(out) == ["stale.mrc"] and siblings(out) == set()
    write_simulation(result, out, overwrite=True)  # replaced whole: the stale file is gone
    assert "stale.mrc" not in os.listdir(out) and assert_complete(out)
    assert siblings(out) == set()


def test_a_file_is_refused_and_bad_paths_are_one_line_errors(result, tmp_path):
    (tmp_path / "f").write_text("a file")
    for overwrite in (False, True):
        with pytest.raises(ArgumentError, match="exists and is not a folder"):
            write_simulation(result, tmp_path / "f", overwrite=overwrite)
    assert (tmp_path / "f").read_text() == "a file"
    for bad in (str(tmp_path / "nul\0byte"), str(tmp_path / ("x" * 5000))):
        with pytest.raises(ArgumentError, match="cannot use this path") as exc:
            prepare_out(bad)
        assert "\n" not in str(exc.value) and len(str(exc.value)) < 400


def test_a_failed_write_leaves_nothing_and_keeps_the_old_run(result, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise DifftemError("preview failed")

    out = tmp_path / "run"
    monkeypatch.setattr(output, "write_panels_png", broken)
    with pytest.raises(DifftemError, match="preview failed"):
        write_simulation(result, out)
    assert os.listdir(tmp_path) == []  # no folder, no staging, no .part file
    monkeypatch.undo()
    write_simulation(result, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(output, "write_panels_png", broken)
    with pytest.raises(DifftemError):
        write_simulation(result, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and siblings(out) == set()


def test_overwrite_without_an_atomic_exchange(result, tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is missing: the old folder is renamed aside, the new one in, the old one
    deleted; a run killed between the two renames gets the old folder back at the next run."""
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    write_simulation(result, out)
    (out / "extra.txt").write_text("old")
    write_simulation(result, out, overwrite=True)
    assert_complete(out) and siblings(out) == set()
    # the state a SIGKILL between the two renames leaves: no run folder, the old one aside
    aside = tmp_path / f".run.replaced-{_host()}-{_dead_pid()}-abcd1234"
    os.rename(out, aside)
    removed, foreign = clean_stale_folders(out)
    assert removed == [aside] and foreign == [] and assert_complete(out) and siblings(out) == set()


def test_staging_folders_of_killed_runs_are_removed_by_the_next_run(result, tmp_path):
    out = tmp_path / "run"
    dead = tmp_path / f".run.staging-{_host()}-{_dead_pid()}-k1ll3d00"
    dead.mkdir()
    (dead / ".micrograph.mrc.x1y2.part").write_bytes(b"")
    (dead / "micrograph.mrc").write_bytes(b"half")
    foreign = tmp_path / ".run.staging-otherhost-12-abcd1234"
    foreign.mkdir()
    unrelated = tmp_path / ".other.staging-x-1-abcd1234"
    unrelated.mkdir()
    assert prepare_out(out) == [foreign]  # another host's run may still be writing: named, left alone
    assert not dead.exists()
    dead.mkdir()
    write_simulation(result, out)
    assert not dead.exists() and foreign.exists() and unrelated.exists()
    assert siblings(out) == {foreign.name, unrelated.name}
    # a live process's staging folder (a concurrent run into the same folder) is left alone too
    live = tmp_path / f".run.staging-{_host()}-{os.getppid()}-abcd1234"
    live.mkdir()
    write_simulation(result, out, overwrite=True)
    assert live.exists()


def test_tilt_series_and_run_and_write_are_staged_too(tmp_path):
    cfg = {**TINY, "tilt_series": {"scheme": "list", "angles_deg": [-20, 0, 20], "total_dose_e_per_a2": 30}}
    out = tmp_path / "series"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ArgumentError, match="not empty"):
        run_and_write(yaml_cfg(cfg), out)  # refused before simulating
    write_tilt_series(simulate_tilt_series(cfg), out, overwrite=True)
    assert_complete(out)["angles_deg"] == [-20.0, 0.0, 20.0] and siblings(out) == set()
    with staging_folder(tmp_path / "plain") as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (tmp_path / "plain").exists()
    assert os.listdir(tmp_path / "plain") == ["a.txt"]


def yaml_cfg(d):
    from difftem.config import config_from_dict

    return config_from_dict(d)


# --- the command line ---------------------------------------------------------------------------------------------

def _cfg_file(tmp_path, d=None) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(d or TINY))
    return path


def test_cli_refuses_a_file_and_a_full_folder_and_replaces_with_overwrite(tmp_path):
    cfg = _cfg_file(tmp_path)
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(cfg)])
    assert res.exit_code == 2 and "--out" in res.output and "not a folder" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(out)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "--out" in text and "not empty (notes.txt)" in text and "--overwrite" in text
    assert os.listdir(out) == ["notes.txt"]
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert_complete(out) and siblings(out) == {"cfg.yaml"}


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--device", "gpu", "--device 'gpu': choose one of auto, cpu, cuda"),
    ("--seed", "-1", "--seed -1: must be between 0 and 2^63 - 1"),
    ("--seed", str(2**64), f"--seed {2**64}: must be between 0 and 2^63 - 1"),
])
def test_cli_overrides_are_checked_and_named(tmp_path, flag, value, message):
    res = runner.invoke(app, ["simulate", str(_cfg_file(tmp_path)), "--out", str(tmp_path / "o"), flag, value])
    assert res.exit_code == 2 and message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


# --- SIGKILL at random moments ------------------------------------------------------------------------------------

KILL_CFG = {"seed": 1, "detector": {"shape_px": [96, 96], "pixel_size_a": 2.0},
            "sample": {"ice_thickness_nm": 20, "particles": [
                {"structure": "builtin:1ubi", "positions_a": [[0, 0, 0], [30, -30, 30], [-30, 30, -30]]}]},
            "simulation": {"slice_thickness_a": 10.0, "device": "cpu"}}
# A fork server: imports the command line once, then runs each `difftem simulate` in a forked child of its own
# (a separate process, SIGKILLed from the test), so twenty runs do not pay twenty interpreter start-ups.
FORK_SERVER = """
import os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot, mpl_toolkits.axes_grid1.anchored_artists  # what the preview needs
# the writers' libraries too: an interrupt landing inside a C extension's initialisation in a forked child
# (matplotlib's Agg) aborts it, a hazard of forking a half-imported process, not of the command
import starfile, matplotlib.backends.backend_agg
import gemmi, PIL.ImageDraw, PIL.ImageFont  # the structure reader's and the preview's (gemmi_ext, _imagingft)
import difftem.simulate.output, difftem.simulate.pipeline, difftem.specimen.build
from difftem.cli import app
args = sys.argv[1:]
for line in sys.stdin:
    if line.strip() == "run":
        pid = os.fork()
        if pid == 0:
            try:  # a Ctrl-C before the command's own handling ends as under the console script's entry (130)
                sys.stdin.close()
                app(args, prog_name="difftem")
            except KeyboardInterrupt:  # (on a busy machine the child may not have run a line yet)
                os._exit(130)
            except SystemExit as exc:
                os._exit(exc.code if isinstance(exc.code, int) else 1)
            os._exit(0)
        print(pid, flush=True)
    elif line.strip() == "wait":
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Runs:
    """`difftem simulate CFG --out OUT --overwrite`, one forked process per run."""

    def __init__(self, cfg: Path, out: Path):
        self.server = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER, "simulate", str(cfg), "--out", str(out), "--overwrite"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def _ask(self, what: str) -> int:
        self.server.stdin.write(what + "\n")
        self.server.stdin.flush()
        return int(self.server.stdout.readline())

    def start(self) -> int:
        return self._ask("run")

    def wait(self) -> int:
        return self._ask("wait")

    def done(self, pid: int) -> bool:
        try:  # a zombie (finished, not yet reaped by the server) reads as state Z
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


def _staging(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.staging-")]


def _check_after_kill(out: Path, allowed: set[str], what: str) -> None:
    if out.exists():
        try:
            assert_complete(out)
        except (AssertionError, OSError, ValueError) as exc:
            raise AssertionError(f"{what}: --out is incomplete: {exc!r}") from None
    stray = {n for n in siblings(out) - allowed
             if not n.startswith((f".{out.name}.staging-", f".{out.name}.replaced-"))}
    assert not stray, f"{what}: stray files beside --out: {stray}"


def _time_runs(runs, out: Path) -> tuple[float, float]:
    """(total, t_write) s: how long an uninterrupted run takes, and when it starts writing (the faster of two), so
    that interrupts are timed to land inside runs however fast the machine or the simulator is."""
    timings = []
    for _ in range(2):
        t0, pid, t_write = time.monotonic(), runs.start(), None
        while not runs.done(pid):
            if t_write is None and _staging(out):
                t_write = time.monotonic() - t0
            time.sleep(0.0005)
        total = time.monotonic() - t0
        assert runs.wait() == 0
        assert_complete(out)
        timings.append((total, t_write if t_write is not None else 0.8 * total))
    return min(timings)


def run_kills(tmp_path: Path, n_kills: int, seed: int) -> list[str]:
    cfg = _cfg_file(tmp_path, KILL_CFG)
    out = tmp_path / "run"
    rng = random.Random(seed)
    runs = Runs(cfg, out)
    try:
        total, t_write = _time_runs(runs, out)
        moments = []
        for k in range(n_kills):
            t0, pid = time.monotonic(), runs.start()
            if k % 3 == 2:  # while writing: from the staging folder's appearance to the end
                while not _staging(out) and not runs.done(pid) and time.monotonic() - t0 < 20 * total:
                    time.sleep(0.0005)
                delay = rng.uniform(0.0, 1.2 * max(total - t_write, 0.05))
                what = f"kill {k}: {delay:.3f} s after the staging folder appeared"
            else:
                delay = rng.uniform(0.0, 1.1 * total)
                what = f"kill {k}: {delay:.3f} s after the start"
            time.sleep(delay)
            finished = runs.done(pid)
            os.kill(pid, signal.SIGKILL)  # the server has not reaped it yet: the pid is still this run's
            code = runs.wait()
            assert code in (0, -signal.SIGKILL), f"{what}: exit code {code}"
            moments.append(what + (" (the run had finished)" if finished else ""))
            _check_after_kill(out, {"cfg.yaml"}, what)
    finally:
        runs.close()
    assert sum("finished" in m for m in moments) <= n_kills // 2, moments  # most kills cut a run short
    # the next complete run (the real command line) removes what the killed ones left
    res = subprocess.run([sys.executable, "-m", "difftem.cli", "simulate", str(cfg), "--out", str(out),
                          "--overwrite"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_complete(out)
    assert siblings(out) == {"cfg.yaml"}, siblings(out)
    return moments


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signal timing test: Linux")
def test_ctrl_c_during_simulate_exits_130_and_leaves_nothing_partial(tmp_path):
    cfg = _cfg_file(tmp_path, KILL_CFG)
    out = tmp_path / "run"
    runs = Runs(cfg, out)
    rng, codes = random.Random(3), []
    try:
        # delays within a run as long as this machine's (a fixed 0–0.3 s outlasted the faster runs: 2 of 6 cut)
        total, t_write = _time_runs(runs, out)
        for k in range(6):
            t0, pid = time.monotonic(), runs.start()
            if k % 2:  # while writing
                while not _staging(out) and not runs.done(pid) and time.monotonic() - t0 < 60:
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0.0, 1.2 * max(total - t_write, 0.05)))
            else:
                time.sleep(rng.uniform(0.0, 0.9 * total))
            os.kill(pid, signal.SIGINT)
            code = runs.wait()
            assert code in (0, 130), code
            codes.append(code)
            assert _staging(out) == [] and siblings(out) <= {"cfg.yaml"}  # Ctrl-C removes the staging folder
            if out.exists():
                assert_complete(out)
    finally:
        runs.close()
    assert codes.count(130) >= 3, codes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL timing test: Linux")
def test_sigkill_at_20_random_moments_leaves_out_absent_or_complete(tmp_path):
    moments = run_kills(tmp_path, 20, seed=14)
    assert sum("staging" in m for m in moments) >= 6  # a third of the kills land while the run writes


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL timing test: Linux")
def test_sigkill_at_100_random_moments(tmp_path):
    run_kills(tmp_path, 100, seed=int(time.time()))



@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_unwritable_output_location_is_one_line(tmp_path, where, shared_data):
    """--out inside a file (or inside /proc, where nothing can be made): the staging folder, a file's folder and the
    commands that made their folder themselves (fit-mtf, denoise, export) used to end in a traceback from mkdir."""
    from difftem.core.errors import OutputError

    (tmp_path / "f").write_text("a file")
    out = tmp_path / "f" / "run" if where == "under_a_file" else Path("/proc/difftem-test-out")
    for make in (lambda: staging_folder(out).__enter__(), lambda: atomic_path(out / "x.json").__enter__(),
                 lambda: files.make_folder(out)):
        with pytest.raises(OutputError, match="cannot be written") as exc:
            make()
        assert str(out) in str(exc.value) and "\n" not in str(exc.value)
    curve = shared_data / "mtf" / "mtf_k2_300kV_FL2.star"
    res = CliRunner().invoke(app, ["fit-mtf", "--curve", str(curve), "--out", str(out)])
    # the folder check before the work (prepare_out) or the staging folder says it, in one line naming the path
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and ("cannot be written" in text or "cannot use this path" in text), res.output
    assert str(out) in text and "Traceback" not in res.output
    assert (tmp_path / "f").read_text() == "a file"


def test_a_folder_given_as_an_output_file_is_refused_before_the_work(tmp_path, shared_data):
    """reconstruct, render and score write one file (and sidecars): --out naming a folder failed after the whole
    reconstruction, with a traceback from the final rename; now it is refused first, in one line."""
    tilts = shared_data / "tilts"
    runs = {"reconstruct": ["reconstruct", str(tilts / "ribosome_particle_tilts_bin8.mrcs.gz"), "--metadata",
                            str(tilts / "ribosome_particle_tilts_bin8.star")],
            "render": ["render", str(tmp_path / "vol.mrc")],
            "score": ["score", str(tmp_path / "vol.mrc"), str(tmp_path / "vol.mrc")]}
    for name, args in runs.items():
        res = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
        assert res.exit_code == 2 and "is a folder; give a file name" in res.output, (name, res.output)
    assert list(tmp_path.iterdir()) == []


def test_an_output_file_must_carry_its_format(tmp_path):
    """render and score write PNG (score's numbers beside it as .json): -o r.mrc wrote a PNG under an MRC name, and
    -o s.json wrote the plot and the numbers to one path (the plot was lost)."""
    for args in (["render", str(tmp_path / "vol.mrc"), "--out", str(tmp_path / "r.mrc")],
                 ["render", str(tmp_path / "vol.mrc"), "--out", str(tmp_path / "r.png"), "--gif", str(tmp_path / "t")],
                 ["score", str(tmp_path / "vol.mrc"), str(tmp_path / "vol.mrc"), "--out", str(tmp_path / "s.json")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "give a name ending in" in res.output, (args, res.output)


def test_calibrate_pixel_size_zero_is_refused(tmp_path):
    res = CliRunner().invoke(app, ["calibrate", str(tmp_path / "mic.mrc"), "--out", str(tmp_path / "cal"),
                                   "--pixel-size", "0"])
    assert res.exit_code == 2 and "--pixel-size: 0.0 Å is outside 0.05–100 Å" in res.output, res.output


def test_fit_mtf_and_denoise_refuse_a_full_folder_unless_overwrite(tmp_path, shared_data):
    """Like simulate and fit-ctf: a folder with files is kept (it was silently overwritten), --overwrite replaces it
    whole, and the check comes before the work."""
    curve = shared_data / "mtf" / "mtf_k2_300kV_FL2.star"
    out = tmp_path / "mtf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(app, ["fit-mtf", "--curve", str(curve), "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output and (out / "keep.txt").read_text() == "mine"
    res = CliRunner().invoke(app, ["fit-mtf", "--curve", str(curve), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0 and sorted(p.name for p in out.iterdir()) == ["mtf_fit.json", "mtf_fit.png",
                                                                          "mtf_fit.star"]
    res = CliRunner().invoke(app, ["denoise", str(tmp_path / "missing.mrc"), "--no-mtf", "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output and (out / "mtf_fit.json").is_file()
