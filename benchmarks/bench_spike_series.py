"""The 41-tilt spike-virion series of bench_scenes.py (c) (10 virions covered with 24 spike trimers each, 1024² at
5 Å/px, 300 kV, 250 nm ice, ±60° in 3° steps), timed per source tree and thread count, interleaved.

Each run is a child process (``PYTHONPATH`` = the tree, ``torch.set_num_threads(n)``); it reports the total wall
time, the per-tilt times (median) and the peak RSS. Runs go tree A, tree B, A, B, … at each thread count; min and
median are printed with the 1-minute load average at each run's start (the machine may be shared).

    python benchmarks/bench_spike_series.py --src /tmp/old_src,src --threads 1,2 --repeats 2
    python benchmarks/bench_spike_series.py --case probe --src /tmp/old_src,src --threads 1 --repeats 3
Writes benchmarks/results/spike_series.json (--out to change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from _child import run_child as _run_child  # benchmarks/_child.py (the scripts run from this folder)

RESULTS = Path(__file__).resolve().parent / "results"


def _child(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_scenes import spike_tilt_config

    import difftem

    t0 = time.perf_counter()
    r = difftem.simulate_tilt_series(spike_tilt_config(device="cpu"))
    per = r.metadata["timings"]["per_tilt_s"]
    print("RESULT " + json.dumps({
        "total_s": time.perf_counter() - t0, "per_tilt_median_s": statistics.median(per), "per_tilt_sum_s": sum(per),
        "tilt_workers": r.metadata.get("tilt_workers"), "mode": r.metadata["particle_types"][0]["mode"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": threads,
        "noiseless_sum": float(r.noiseless.double().sum())}))


def _probe_child(threads: int) -> None:
    """The series' setup, then tilts 0° (builds the projector, not counted), 30°, 60°, 0°: CPU and wall seconds of
    the three (exit wave + optics + detector each)."""
    import math

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_scenes import spike_tilt_config

    from difftem.config import config_from_dict
    from difftem.core.rotations import tilt_rotation
    from difftem.forward.detector import Detector
    from difftem.forward.image import expose
    from difftem.forward.optics import Optics
    from difftem.forward.scene_build import SceneView
    from difftem.simulate.pipeline import view_exit_wave
    from difftem.simulate.setup import Setup

    cfg = config_from_dict(spike_tilt_config(device="cpu"))
    setup = Setup.build(cfg)
    det = Detector.from_config(cfg)
    cpu = wall = 0.0
    with torch.no_grad():
        for i, angle in enumerate([0.0, 30.0, 60.0, 0.0]):
            c0, t0 = time.process_time(), time.perf_counter()
            view = SceneView(tilt_rotation(angle, 0.0), setup.ice.thickness_a / math.cos(math.radians(angle)), None)
            ew = view_exit_wave(setup, view, view_index=i)
            expose(ew.wave, setup.grid, setup.wavelength_a, cfg.beam.voltage_kv, Optics.from_config(cfg.optics), det,
                   exit_plane_a=ew.exit_plane_a, dose_e_per_a2=3.0)
            if i:
                cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - t0
    print("RESULT " + json.dumps({"total_s": wall, "per_tilt_median_s": wall / 3, "cpu_s": cpu, "threads": threads,
                                  "tilt_workers": None, "peak_rss_mib": resource.getrusage(
                                      resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(src: str, threads: int, case: str = "series") -> dict:
    return _run_child(__file__, ["--child", str(threads), "--case", case], src)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="src", help="comma-separated source trees")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "spike_series.json"))
    ap.add_argument("--case", choices=["series", "probe"], default="series",
                    help="series: the 41 tilts; probe: three warm tilts (30°, 60°, 0°) with their CPU time")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        (_probe_child if args.case == "probe" else _child)(args.child)
        return
    srcs, runs = args.src.split(","), []
    for rep in range(args.repeats):
        for threads in (int(t) for t in args.threads.split(",")):
            for src in srcs:
                r = {"src": src, "repeat": rep, "load_1min": os.getloadavg()[0], **run_child(src, threads, args.case)}
                runs.append(r)
                print(f"{src:>28} {threads} thr  total {r['total_s']:6.1f} s  per tilt median "
                      f"{r['per_tilt_median_s']:5.2f} s  workers {r['tilt_workers']}  peak {r['peak_rss_mib']:6.0f} MiB"
                      f"  load {r['load_1min']:.1f}", flush=True)
    print(f"\n{'tree':>28} {'thr':>3} {'total min/med s':>16} {'per tilt min/med s':>19}")
    for threads in sorted({r["threads"] for r in runs}):
        for src in srcs:
            sel = [r for r in runs if r["src"] == src and r["threads"] == threads]
            t, p = [r["total_s"] for r in sel], [r["per_tilt_median_s"] for r in sel]
            print(f"{src:>28} {threads:>3} {min(t):>7.1f}/{statistics.median(t):<8.1f} {min(p):>8.2f}/"
                  f"{statistics.median(p):<8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
