#!/usr/bin/env python
"""Cost of a value-and-gradient versus a forward run (apoferritin 6Z6U, 512², 1 Å/px, 2 Å slices, 300 kV).

The loss is the mean squared difference between the simulated image intensity (multislice + CTF)
and a fixed target; gradients are taken w.r.t. every atom's position, B-factor and occupancy.
Each mode runs in its own process (peak RSS is its own): forward without autograd, value-and-grad
with per-slice checkpointing (default), and without it. Prints a table and writes JSON.

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


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(mode: str, n: int, repeats: int) -> dict:
    import torch

    from difftem.beam import interaction_constant, wavelength_a
    from difftem.grid import Grid
    from difftem.multislice import multislice, plan_window
    from difftem.optics import Optics, image_intensity, transfer_function
    from difftem.potential import IceModel, SlicedPotential, atoms_to_tensors
    from difftem.scattering import get_table
    from difftem.structure import read_structure

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    atoms = read_structure(STRUCTURE)
    lam, sigma = wavelength_a(300), interaction_constant(300)
    grid = Grid((n, n), 1.0)
    z, pos, b, occ = atoms_to_tensors(atoms)
    win = plan_window(grid, pos, float(pos[:, 2].max() - pos[:, 2].min()) + 2, lam)
    g = win.grid if win else grid
    h = transfer_function(g, lam, 300, Optics(defocus_a=15000.0))
    target = torch.ones(g.shape_px)

    def run():
        grad = mode != "forward"
        p, bb, oo = (t.clone().requires_grad_(grad) for t in (pos, b, occ))
        with torch.set_grad_enabled(grad):
            pot = SlicedPotential(z, p, bb, oo, g, get_table("kirkland"), 2.0, IceModel(0.0))
            wave = multislice(pot, lam, sigma, checkpoint=(mode == "grad_checkpoint"))
            loss = ((image_intensity(wave, h) - target) ** 2).mean()
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
    return {"mode": mode, "n": n, "window_px": list(g.shape_px), "cold_s": times[0], "warm_s": min(times[1:]),
            "baseline_rss_mib": base, "peak_rss_mib": peak, "working_mib": peak - base}


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
