"""The 41-tilt spike-virion series of bench_scenes.py (c) (10 virions covered with 24 spike trimers each, 1024² at
5 Å/px, 300 kV, 250 nm ice, ±60° in 3° steps), timed per source tree and thread count, interleaved.

Each run is a child process (``PYTHONPATH`` = the tree, ``torch.set_num_threads(n)``); it reports the total wall
time, the per-tilt times (median) and the peak RSS. Runs go tree A, tree B, A, B, … at each thread count; min and
median are printed with the 1-minute load average at each run's start (the machine may be shared).

    python benchmarks/bench_spike_series.py --src /tmp/old_src,src --threads 1,2 --repeats 2
Writes benchmarks/results/spike_series.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def run_child(src: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    proc = subprocess.run([sys.executable, __file__, "--child", str(threads)], capture_output=True, text=True,
                          env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{src} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="src", help="comma-separated source trees")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "spike_series.json"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child)
        return
    srcs, runs = args.src.split(","), []
    for rep in range(args.repeats):
        for threads in (int(t) for t in args.threads.split(",")):
            for src in srcs:
                r = {"src": src, "repeat": rep, "load_1min": os.getloadavg()[0], **run_child(src, threads)}
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
