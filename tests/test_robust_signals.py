"""Ctrl-C at any moment of `difftem dataset` — during the Dask cluster's start-up, just after it, or while items
run — exits 130 with a consistent store, stops every worker, and a resumed run gives the uninterrupted dataset.

During the start-up the command holds SIGINT (its main thread blocks it, so the workers it spawns inherit it
blocked and stay deaf to a Ctrl-C sent to the whole process group) and acts on it once the cluster exists and can
be closed. The tests find that window through /proc (the main thread's blocked-signal mask).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("distributed")
pytest.importorskip("zarr")
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")

from test_dataset_cluster import n_done, session_processes  # noqa: E402

from difftem.dataset import DatasetReader, build, load_spec  # noqa: E402
from difftem.dataset.store import Store  # noqa: E402

N_ITEMS = 6
SPEC = {
    "seed": 5,
    "n_items": N_ITEMS,
    "base": {
        "detector": {"shape_px": [128, 128], "pixel_size_a": 1.0, "noise": "poisson"},
        "sample": {"ice_thickness_nm": 20, "particles": [
            {"structure": "builtin:1ubi", "positions_a": [[0, 0, 0], [30, -30, 40], [-30, 30, -40]]}]},
        "simulation": {"slice_thickness_a": 0.5, "device": "cpu"},
    },
    "vary": {"optics.defocus_um": {"uniform": [1.0, 3.0]}, "beam.dose_e_per_a2": {"choice": [20, 40, 60]}},
    "outputs": ["micrograph", "noiseless"],
}
ARRAYS = ("micrograph", "noiseless")
SIGINT_BIT = 1 << (signal.SIGINT - 1)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.fixture(scope="module")
def reference(spec_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    report = build(spec_path, out, workers=0)
    assert len(report.done) == N_ITEMS and not report.failed
    return out


def blocked_mask(pid: int) -> int | None:
    """The main thread's blocked signals (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigBlk:"):
                    return int(line.split()[1], 16)
    except OSError:
        return None
    return None


def in_start_up(pid: int) -> bool:
    # SIGINT alone: the start-up window (the instant between fork and exec blocks every signal, not this)
    return blocked_mask(pid) == SIGINT_BIT


def wait_until(proc, condition, what, timeout_s=180.0):
    t0 = time.time()
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stdout.read()}"
        assert time.time() - t0 < timeout_s, f"no {what} within {timeout_s} s"
        time.sleep(0.001)


def assert_consistent(out) -> set[int]:
    """The store, if any, holds complete items only and its manifest agrees with them; its finished items."""
    import csv

    if not out.exists():
        return set()
    assert not any((out / ".partial").iterdir())
    done = Store(out, "zarr").done_indices()
    if (out / "manifest.csv").exists():
        with open(out / "manifest.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {int(r["index"]) for r in rows if r["status"] == "done"} == done
    return done


def assert_consistent_then_resume(out, reference, spec_path):
    """The store is consistent (:func:`assert_consistent`); resuming completes it into the uninterrupted dataset,
    bit for bit."""
    done = assert_consistent(out)
    report = build(load_spec(spec_path), out, workers=0)
    assert report.skipped == len(done) and len(report.done) == N_ITEMS - len(done) and not report.failed
    a, b = DatasetReader(out), DatasetReader(reference)
    assert a.indices == b.indices == list(range(N_ITEMS))
    sa, sb = Store(out, "zarr"), Store(reference, "zarr")
    for i in a.indices:
        x, y = a.item(i), b.item(i)
        assert all(torch.equal(x[n], y[n]) for n in ARRAYS), i
        ax, ay = sa.read_attrs(i), sb.read_attrs(i)
        ax.pop("record"), ay.pop("record")
        assert ax == ay, i


MOMENTS = {
    "start-up begins": lambda proc, out: wait_until(proc, lambda: in_start_up(proc.pid), "start-up"),
    "mid start-up": lambda proc, out: (wait_until(proc, lambda: in_start_up(proc.pid), "start-up"),
                                       time.sleep(0.3)),
    "start-up over": lambda proc, out: (wait_until(proc, lambda: in_start_up(proc.pid), "start-up"),
                                        wait_until(proc, lambda: not in_start_up(proc.pid), "the end of start-up")),
    "first item done": lambda proc, out: wait_until(proc, lambda: n_done(out) >= 1, "a finished item"),
}


def _until_sigint_is_caught(pid: int, timeout_s: float = 30.0) -> None:
    """Wait until process ``pid`` has a handler for SIGINT (its /proc status SigCgt mask), i.e. Python's own."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.001)


def interrupt_dataset(command: list[str], spec_path, out, wait) -> tuple[subprocess.Popen, str]:
    """Start ``command dataset SPEC --out OUT --workers 2`` in its own session, ``wait(proc)``, then send SIGINT to
    the whole group (what a terminal sends to the foreground group); returns the finished process and its output."""
    proc = subprocess.Popen([*command, "dataset", str(spec_path), "--out", str(out), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        wait(proc)
        os.killpg(proc.pid, signal.SIGINT)
        text, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc, text


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_at_any_moment_exits_130_with_a_consistent_store(spec_path, reference, tmp_path, moment):
    out = tmp_path / "store"
    proc, text = interrupt_dataset([sys.executable, "-m", "difftem.cli"], spec_path, out,
                                   lambda proc: MOMENTS[moment](proc, out))
    assert proc.returncode == 130, text
    assert "interrupted" in text and "rerun the same command to resume" in text, text
    assert "Traceback" not in text and "Error" not in text, text
    assert session_processes(proc.pid) == []  # workers were shut down, not orphaned
    assert n_done(out) < N_ITEMS  # the run was stopped, not finished
    assert_consistent_then_resume(out, reference, spec_path)


def test_import_difftem_does_not_import_torch():
    """The package's names load on first use, so the command's first moments (and a Ctrl-C in them) are light."""
    code = ("import sys, difftem, difftem.cli; assert 'torch' not in sys.modules and 'typer' not in sys.modules; "
            "from difftem import simulate, DifferentiableSimulator; import difftem.simulate.output; "
            "assert callable(difftem.simulate) and simulate is difftem.simulate and 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("delay_s", [0.05, 0.2, 0.5, 1.0, 2.0])
def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(spec_path, tmp_path, delay_s):
    """A Ctrl-C while Python still imports typer, torch and Dask (the console script's first seconds) ends as
    later ones do: one line, exit code 130, no traceback, no worker left, and no store or a consistent one.
    (Only the interpreter's own start-up, its first ~10 ms before any difftem code runs, is out of reach.)"""
    script = os.path.join(os.path.dirname(sys.executable), "difftem")
    if not os.path.exists(script):
        pytest.skip("the difftem console script is not installed")
    out = tmp_path / "store"

    def wait(proc):  # from the moment the interpreter handles SIGINT (on a busy machine its start-up alone takes 50 ms)
        _until_sigint_is_caught(proc.pid)
        time.sleep(delay_s)

    proc, text = interrupt_dataset([script], spec_path, out, wait)
    assert proc.returncode == 130, text
    assert "interrupted" in text, text
    assert "Traceback" not in text and "Error" not in text, text
    assert session_processes(proc.pid) == []
    assert n_done(out) < N_ITEMS
    assert_consistent(out)


@pytest.mark.parametrize("ignored", [False, True])
def test_a_ctrl_c_while_torch_loads_is_held_until_it_has(tmp_path, ignored):
    """A KeyboardInterrupt raised inside torch's C++ start-up (Python called back through pybind11) aborted the
    process (exit −6) instead of exit 130. The console script now imports torch with SIGINT held and raises the
    KeyboardInterrupt once the import has finished; a SIGINT the process was started to ignore stays ignored.
    Here a stand-in 'torch' sends itself SIGINT halfway through its import."""
    (tmp_path / "torch.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                       "time.sleep(0.2)\nLOADED = True\n")
    code = ("import signal, sys\n"
            f"{'signal.signal(signal.SIGINT, signal.SIG_IGN)' if ignored else ''}\n"
            "from difftem.cli import _load_torch\n"
            "try:\n    _load_torch()\n"
            "except KeyboardInterrupt:\n    print('held, then raised', sys.modules['torch'].LOADED)\n"
            "else:\n    print('no interrupt', sys.modules['torch'].LOADED)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ("no interrupt True" if ignored else "held, then raised True"), res.stdout
