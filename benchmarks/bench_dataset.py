#!/usr/bin/env python
"""Dataset generation throughput: Dask LocalCluster (1 and 2 workers) against a plain loop.

Every method produces the same items — 512² micrographs of three ubiquitins (bundled 1UBI) with
random poses near the field centre in 30 nm of ice, 1 Å slices, random defocus and dose — with one
torch thread per item, and writes them to a Zarr store. Reported per method:

* items/min in steady state (first completion to last, so cluster start-up and the first item's
  imports are excluded) and over the whole run (start-up included);
* scheduling overhead: each worker's idle gap between finishing one item and starting the next
  (Dask's task stream) relative to the item's compute time — insensitive to how fast the shared
  CPU happens to be — and the steady-state time per item of a 1-worker cluster over the plain loop's;
* memory: the peak RSS of every worker process (from the item records) and of this client.

All methods use the same glibc allocator thresholds (the ones difftem sets in Dask workers, whose
nanny default would otherwise make items ~2.5x slower). Methods run interleaved (loop, 1 worker,
2 workers, in-process build; repeated) so a change in machine load hits them alike. Prints a table
and writes JSON to benchmarks/results/.

    python benchmarks/bench_dataset.py [--n-items 12] [--repeats 1] [--size 512]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_spec(n_items: int, size: int) -> dict:
    return {
        "seed": 1,
        "n_items": n_items,
        "base": {
            "beam": {"voltage_kv": 300},
            "detector": {"shape_px": [size, size], "pixel_size_a": 1.0, "noise": "poisson", "dqe": 0.8,
                         "mtf": {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}},
            "sample": {"ice_thickness_nm": 30,
                       "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]] * 3}]},
            "simulation": {"slice_thickness_a": 1.0, "device": "cpu"},
        },
        "vary": {
            "optics.defocus_um": {"uniform": [1.0, 3.0]},
            "beam.dose_e_per_a2": {"choice": [20, 40, 60]},
            "sample.particles.0.positions_a": {"uniform": {"low": [-40, -40, -10], "high": [40, 40, 10],
                                                           "size": 3}},
            "sample.particles.0.euler_zyz_deg": {"rotations_zyz_deg": {"n": 3}},
        },
        "outputs": ["micrograph", "noiseless"],
    }


def steady_interval_s(times: list[float]) -> float:
    times = sorted(times)
    return (times[-1] - times[0]) / (len(times) - 1)


def run_loop(spec, out: Path) -> dict:
    """The baseline: simulate and write each item in a plain Python loop, no scheduler, no manifest."""
    import torch

    from difftem.dataset import simulate_item
    from difftem.dataset.store import Store

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = Store(out, "zarr")
    store.create({"format": "zarr", "fingerprint": spec.fingerprint, "n_items": spec.n_items})
    t0 = time.perf_counter()
    done, busy = [], []
    for i in range(spec.n_items):
        t = time.perf_counter()
        cfg, _ = spec.item_config(i)
        item = simulate_item(cfg, spec.outputs)
        store.write_item(i, item.arrays, {"index": i}, cfg.detector.pixel_size_a)
        done.append(time.perf_counter())
        busy.append(done[-1] - t)
    torch.set_num_threads(threads)
    return {"total_s": time.perf_counter() - t0, "completions": done, "busy_s": busy, "workers": {}}


def run_build(spec, out: Path, workers: int) -> dict:
    """``difftem.dataset.build``: in-process (workers=0) or on a LocalCluster configured as build's own,
    recording Dask's task stream to time the gaps each worker spends between items."""
    from difftem.dataset import build

    done = []
    t0 = time.perf_counter()
    gaps, computes = [], []
    if workers == 0:
        report = build(spec, out, workers=0, progress=lambda s: done.append(time.perf_counter()))
    else:
        import logging

        from distributed import Client, LocalCluster, get_task_stream

        with (LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR) as cluster, Client(cluster) as client,
              get_task_stream(client) as stream):
            report = build(spec, out, client=client, progress=lambda s: done.append(time.perf_counter()))
        by_worker: dict[str, list] = {}
        for task in stream.data:
            for ss in task["startstops"]:
                if ss["action"] == "compute":
                    by_worker.setdefault(task["worker"], []).append((ss["start"], ss["stop"]))
        for spans in by_worker.values():
            spans.sort()
            computes += [b - a for a, b in spans]
            gaps += [spans[k + 1][0] - spans[k][1] for k in range(len(spans) - 1)]
    total = time.perf_counter() - t0
    assert not report.failed, report.failed
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    busy = [float(r["seconds"]) for r in rows]
    peak: dict[str, float] = {}
    for r in rows:
        peak[r["worker"]] = max(peak.get(r["worker"], 0.0), float(r["worker_peak_rss_mb"]))
    return {"total_s": total, "completions": done, "busy_s": busy, "workers": peak, "gaps_s": gaps,
            "compute_s": computes}


def summarise(name: str, runs: list[dict], n_workers: int) -> dict:
    intervals = [steady_interval_s(r["completions"]) for r in runs]
    per_item = float(np.median(intervals))
    busy = float(np.median([np.median(r["busy_s"][1:]) for r in runs]))  # first item pays the imports
    out = {
        "method": name, "workers": n_workers, "runs": len(runs),
        "steady_s_per_item": per_item, "steady_items_per_min": 60.0 / per_item,
        "whole_run_items_per_min": float(np.median([60.0 * len(r["completions"]) / r["total_s"] for r in runs])),
        "whole_run_s": float(np.median([r["total_s"] for r in runs])),
        "median_item_busy_s": busy,
        "worker_peak_rss_mb": {k: round(v, 1) for r in runs for k, v in r["workers"].items()},
    }
    gaps = [g for r in runs for g in r.get("gaps_s", [])]
    if gaps:  # from Dask's task stream: a worker's idle time between finishing one item and starting the next
        compute = float(np.median([c for r in runs for c in r["compute_s"]]))
        out.update(median_gap_ms=1e3 * float(np.median(gaps)), max_gap_ms=1e3 * float(np.max(gaps)),
                   median_task_s=compute, gap_fraction_of_item=float(np.median(gaps)) / compute)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-items", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dataset.json")
    args = ap.parse_args()

    from difftem.dataset import spec_from_dict
    from difftem.dataset.build import set_malloc_thresholds

    # Dask workers run with the allocator thresholds difftem sets there (see build._tune_malloc);
    # give the plain loop and the in-process build the same, so only scheduling differs.
    malloc_tuned = set_malloc_thresholds()
    spec = spec_from_dict(make_spec(args.n_items, args.size))
    scratch = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    # name: (runner, build's workers argument, processes executing items)
    methods = {"plain loop": (run_loop, None, 1), "dask 1 worker": (run_build, 1, 1),
               "dask 2 workers": (run_build, 2, 2), "build in-process": (run_build, 0, 1)}
    results: dict[str, list[dict]] = {m: [] for m in methods}
    try:
        for rep in range(args.repeats):
            for name, (fn, w, _) in methods.items():
                out = scratch / f"{name.replace(' ', '_')}_{rep}"
                t = time.perf_counter()
                results[name].append(fn(spec, out) if w is None else fn(spec, out, w))
                print(f"  {name:18s} repeat {rep}: {time.perf_counter() - t:6.1f} s", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rows = [summarise(name, runs, methods[name][2]) for name, runs in results.items()]
    loop = rows[0]["steady_s_per_item"]
    for r in rows:
        r["steady_time_vs_loop"] = r["steady_s_per_item"] * r["workers"] / loop
    one = next(r for r in rows if r["method"] == "dask 1 worker")
    two = next(r for r in rows if r["method"] == "dask 2 workers")
    summary = {
        "steady_time_per_item_1_worker_vs_loop": one["steady_s_per_item"] / loop - 1.0,
        "scheduling_gap_fraction_1_worker": one["gap_fraction_of_item"],
        "scheduling_gap_fraction_2_workers": two["gap_fraction_of_item"],
        "speedup_2_workers_vs_loop": loop / two["steady_s_per_item"],
        "client_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "malloc_thresholds_set": malloc_tuned,
    }
    print(f"\n{args.n_items} items of {args.size}² per run, {args.repeats} repeat(s), medians; "
          f"one torch thread per item")
    print(f"{'method':18s} {'items/min':>10s} {'(whole run)':>12s} {'s/item':>8s} {'busy s':>8s} "
          f"{'peak RSS per worker (MB)':>26s}")
    for r in rows:
        rss = ", ".join(f"{v:.0f}" for v in sorted(r["worker_peak_rss_mb"].values())) or "-"
        print(f"{r['method']:18s} {r['steady_items_per_min']:10.1f} {r['whole_run_items_per_min']:12.1f} "
              f"{r['steady_s_per_item']:8.3f} {r['median_item_busy_s']:8.3f} {rss:>26s}")
    for r in (one, two):
        print(f"{r['method']}: worker idle between items median {r['median_gap_ms']:.1f} ms (max "
              f"{r['max_gap_ms']:.1f} ms) = {100 * r['gap_fraction_of_item']:.2f} % of the median item "
              f"({r['median_task_s']:.3f} s)")
    print(f"steady time per item, 1 worker vs plain loop: "
          f"{100 * summary['steady_time_per_item_1_worker_vs_loop']:+.1f} %; 2 workers vs plain loop: "
          f"{summary['speedup_2_workers_vs_loop']:.2f}x; client peak RSS {summary['client_peak_rss_mb']:.0f} MB")
    print("(shared-CPU timings are noisy: re-measure on an idle machine)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "dataset generation", "n_items": args.n_items, "size_px": args.size,
        "repeats": args.repeats, "spec": make_spec(args.n_items, args.size), "methods": rows, "summary": summary,
        "machine": {"python": platform.python_version(), "cpus": len(__import__("os").sched_getaffinity(0)),
                    "load_average": list(__import__("os").getloadavg())},
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
