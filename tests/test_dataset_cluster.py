"""Dataset generation on a real 2-worker Dask LocalCluster: SIGKILL part-way, resume, Ctrl-C.

Items are tiny (128², the bundled 1UBI, about 0.2 s each on one idle core) so the file runs in well under
a minute; each run uses one torch thread per item, which makes results bit-for-bit reproducible.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

pytest.importorskip("distributed")
pytest.importorskip("zarr")

from difftem.dataset import DatasetReader, build, load_spec  # noqa: E402
from difftem.dataset.store import Store  # noqa: E402

N_ITEMS, FAILING = 12, 5
SPEC = {
    "seed": 11,
    "n_items": N_ITEMS,
    "base": {
        "detector": {"shape_px": [128, 128], "pixel_size_a": 1.0, "noise": "poisson"},
        "sample": {"ice_thickness_nm": 20, "particles": [
            {"structure": "builtin:1ubi", "positions_a": [[0, 0, 0], [30, -30, 40], [-30, 30, -40]]}]},
        # thin slices through three copies spread in z: enough work per item to kill the run part-way
        "simulation": {"slice_thickness_a": 0.5, "device": "cpu"},
    },
    "vary": {
        "optics.defocus_um": {"uniform": [1.0, 3.0]},
        "beam.dose_e_per_a2": {"choice": [20, 40, 60]},
        "sample.ice_thickness_nm": {"normal": {"mean": 20, "std": 2, "min": 18, "max": 24}},
        "detector.mtf": {"choice": [{"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}, None]},
        "sample.particles.0.euler_zyz_deg": {"rotations_zyz_deg": {"n": 3}},
        # item 5 is refused by the simulator's memory check: a deliberate, realistic failure
        "simulation.max_memory_gb": {"cycle": [None] * FAILING + [1e-9] + [None] * (N_ITEMS - FAILING - 1)},
    },
    "outputs": ["micrograph", "noiseless", "potential"],
}
ARRAYS = ("micrograph", "noiseless", "potential")


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.fixture(scope="module")
def reference(spec_path, tmp_path_factory):
    """An uninterrupted run through the Python API, in this process (no cluster): the cluster runs below
    must reproduce it bit for bit, which also shows results do not depend on where an item ran."""
    out = tmp_path_factory.mktemp("ref") / "store"
    report = build(spec_path, out, workers=0)
    assert len(report.done) == N_ITEMS - 1 and list(report.failed) == [FAILING] and not report.interrupted
    return out


def start_cli(spec_path, out):
    return subprocess.Popen([sys.executable, "-m", "difftem.cli", "dataset", str(spec_path), "--out", str(out),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "COLUMNS": "200"})


def n_done(out):
    items = out / "items"
    return sum(p.name.isdigit() for p in items.iterdir()) if items.exists() else 0


def wait_for_items(proc, out, n, timeout_s=180):
    t0 = time.time()
    while n_done(out) < n:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < timeout_s, "the run made no progress"
        time.sleep(0.005)


def session_processes(sid, wait_s=15.0):
    """Live processes of the run's session (polled: a loaded machine may take a moment to reap them)."""
    psutil = pytest.importorskip("psutil")
    t0 = time.time()
    while True:
        alive = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        if not alive or time.time() - t0 > wait_s:
            return alive
        time.sleep(0.1)


def assert_same_store(out, ref, indices=None):
    """Same items, same arrays bit for bit, same config/seeds/ground truth (only timings may differ)."""
    a, b = DatasetReader(out), DatasetReader(ref)
    assert a.indices == b.indices == [i for i in range(N_ITEMS) if i != FAILING]
    sa, sb = Store(out, "zarr"), Store(ref, "zarr")
    for i in indices or a.indices:
        x, y = a.item(i), b.item(i)
        for name in ARRAYS:
            assert x[name].dtype == torch.float32 and torch.equal(x[name], y[name]), (i, name)
        ax, ay = sa.read_attrs(i), sb.read_attrs(i)
        ax.pop("record"), ay.pop("record")
        assert ax == ay, i


def manifest(out):
    import csv

    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_sigkill_part_way_then_resume_gives_the_uninterrupted_dataset(spec_path, reference, tmp_path):
    out = tmp_path / "store"
    proc = start_cli(spec_path, out)
    wait_for_items(proc, out, 2)
    os.killpg(proc.pid, signal.SIGKILL)  # the client, the scheduler and both workers die at once
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and session_processes(proc.pid) == []
    at_kill = n_done(out)
    assert 2 <= at_kill < N_ITEMS - 1, f"{at_kill} items were done at the kill: the run was not interrupted"
    kept = {i: Store(out, "zarr").read_attrs(i)["record"] for i in Store(out, "zarr").done_indices()}

    res = subprocess.run([sys.executable, "-m", "difftem.cli", "dataset", str(spec_path), "--out", str(out),
                          "--workers", "2"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    text = res.stdout + res.stderr
    assert res.returncode == 1, text  # completed, with one failed item
    assert f"{N_ITEMS - 1 - at_kill} items written, {at_kill} already there, 1 failed" in text, text
    assert f"item {FAILING} failed: ResourceError" in text and "simulation.max_memory_gb" in text
    assert "dashboard: http://" in text or "dashboard: unavailable (install bokeh" in text
    assert not any((out / ".partial").iterdir())
    # items finished before the kill were skipped, not recomputed
    assert {i: Store(out, "zarr").read_attrs(i)["record"] for i in kept} == kept
    assert_same_store(out, reference)
    rows = manifest(out)
    assert [int(r["index"]) for r in rows] == list(range(N_ITEMS))
    assert [r["status"] for r in rows] == ["failed" if i == FAILING else "done" for i in range(N_ITEMS)]
    ref_rows = manifest(reference)
    drop = ("seconds", "worker", "worker_peak_rss_mb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == \
           [{k: v for k, v in r.items() if k not in drop} for r in ref_rows]
    failure = json.loads((out / "failed" / f"{FAILING:06d}.json").read_text())
    assert failure["error"].startswith("ResourceError") and failure["worker"].startswith("tcp://")
    assert all(r["worker"].startswith("tcp://127.0.0.1") for r in rows)  # really ran on the cluster

    # any single item regenerates alone, in this process, bit for bit
    one = tmp_path / "one"
    build(load_spec(spec_path), one, workers=0, only=[7])
    x, y = DatasetReader(one).item(7), DatasetReader(reference).item(7)
    assert all(torch.equal(x[n], y[n]) for n in ARRAYS) and x["config"] == y["config"]


def test_ctrl_c_leaves_a_consistent_store(spec_path, reference, tmp_path):
    out = tmp_path / "store"
    proc = start_cli(spec_path, out)
    wait_for_items(proc, out, 2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the whole foreground group
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "interrupted" in text and "rerun the same command to resume" in text and "Traceback" not in text
    assert session_processes(proc.pid) == []  # workers were shut down, not orphaned
    done = Store(out, "zarr").done_indices()
    assert 2 <= len(done) < N_ITEMS - 1
    rows = manifest(out)  # the manifest written at exit agrees with the items on disk
    assert {int(r["index"]) for r in rows if r["status"] == "done"} == done
    assert not any((out / ".partial").iterdir())
    report = build(load_spec(spec_path), out, workers=0)  # resume in this process
    assert report.skipped == len(done) and len(report.done) == N_ITEMS - 1 - len(done)
    assert_same_store(out, reference)
