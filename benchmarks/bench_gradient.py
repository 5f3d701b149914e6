#!/usr/bin/env python
"""Cost of a value-and-gradient versus a forward run: apoferritin (6Z6U) in 15 nm ice, 512² at 1 Å/px, 2 Å slices
(64 slices hold atoms), 300 kV, K3-like MTF, through the config-level DifferentiableSimulator.

The loss is the exact expected squared error (over shot noise) between the simulated detector image and a
fixed noisy image; gradients are taken w.r.t. every atom's position, B-factor and occupancy, and the
defocus, ice thickness, dose, DQE, gain and MTF parameters. Each mode runs in its own process (peak RSS is
its own): forward without autograd, value-and-grad with per-slice checkpointing (default), and without it.
Prints a table and writes JSON.

    python benchmarks/bench_gradient.py [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRUCTURE = ROOT.parent / "shared" / "data" / "structures" / "6z6u_apoferritin.pdb.gz"
MODES = ("forward", "grad_checkpoint", "grad_no_checkpoint")
GRAD = ["positions_a", "b_iso_a2", "occupancy", "defocus_a", "ice_thickness_a", "dose_e_per_a2", "dqe", "gain", "mtf"]


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def config(n: int) -> dict:
    return {"seed": 0, "beam": {"voltage_kv": 300, "dose_e_per_a2": 40.0},
            "detector": {"shape_px": [n, n], "pixel_size_a": 1.0, "dqe": 0.8,
                         "mtf": {"a": 0.6, "b": 1.24, "c": -0.84, "alpha": 0.97, "beta": 0.97}},
            "optics": {"defocus_um": 1.5},
            "sample": {"ice_thickness_nm": 15.0,
                       "particles": [{"structure": str(STRUCTURE), "positions_a": [[0, 0, 0]]}]},
            "simulation": {"slice_thickness_a": 2.0, "device": "cpu"}}


def worker(mode: str, n: int, repeats: int) -> dict:
    import torch

    from difftem import DifferentiableSimulator

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    sim = DifferentiableSimulator(config(n), checkpoint=(mode == "grad_checkpoint"))
    with torch.no_grad():
        truth = sim.parameters()
        truth["defocus_a"] = truth["defocus_a"] + 200.0
        out = sim(truth)
        data = torch.poisson(out.noiseless.clamp_min(0), generator=torch.Generator().manual_seed(1))

    def run():
        grad = mode != "forward"
        p = sim.parameters(requires_grad=GRAD if grad else [])
        with torch.set_grad_enabled(grad):
            loss = sim.loss(data, p)
            if grad:
                loss.backward()
        return float(loss)

    base = rss_mib()
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "n": n, "atoms": sim.n_atoms, "cold_s": times[0], "warm_s": min(times[1:]),
            "warm_all_s": times[1:], "baseline_rss_mib": base, "peak_rss_mib": peak, "working_mib": peak - base}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gradient_apoferritin.json")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.repeats)))
        return 0
    env = {**os.environ, "BENCH_THREADS": str(a.threads)}
    rows = []
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, str(a.size), "--repeats", str(a.repeats)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{mode}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    fwd = next(r for r in rows if r["mode"] == "forward")
    print(f"{'mode':<20} {'warm s':>8} {'x forward':>9} {'peak MiB':>9} {'work MiB':>9} {'x fwd work':>10}")
    for r in rows:
        r["time_ratio"] = r["warm_s"] / fwd["warm_s"]
        r["working_ratio"] = r["working_mib"] / max(fwd["working_mib"], 1e-9)
        r["peak_ratio"] = r["peak_rss_mib"] / fwd["peak_rss_mib"]
        print(f"{r['mode']:<20} {r['warm_s']:8.2f} {r['time_ratio']:9.2f} {r['peak_rss_mib']:9.0f} "
              f"{r['working_mib']:9.0f} {r['working_ratio']:10.2f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"size": a.size, "threads": a.threads, "rows": rows}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
