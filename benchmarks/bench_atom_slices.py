#!/usr/bin/env python
"""Per-slice cost of building bench_movie's 4096² field's potential (100 ubiquitins in 20 nm of ice, 4 Å slices):
as slab maps (what the earlier resource estimate chose at 4096²), on the atom path over the slice's whole box (the
earlier atom path) and tile by tile (now). Times ``slice_patch`` of the four slices holding the most atoms, each
variant in its own process, interleaved (repeats × threads × variant); the rest of the exposure (FFTs, ice,
detection) is the same for all three and is not run.

    python benchmarks/bench_atom_slices.py --repeats 2

Writes benchmarks/results/atom_slices_4096.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Done(Exception):
    pass


def child(args) -> None:
    import torch

    import difftem
    import difftem.forward.multislice as multislice
    import difftem.forward.potential as potential
    from difftem.config import config_from_dict

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_movie

    torch.set_num_threads(args.threads)
    d = bench_movie.config_dict(args.size, 40, args.particles)
    d["movie"] = None
    d["sample"]["particles"][0]["representation"] = "map" if args.variant == "slab" else "atoms"
    if args.variant == "slab":
        d["simulation"]["map_placement"] = "slab"
    if args.variant == "box":
        potential.ATOM_TILE_PX = 10**9
    out = {}

    def run(self, incident=None, progress=None):
        pot = self.potential
        busy = [k for k in range(pot.n_slices) if pot.has_atoms(k)]
        mid = len(busy) // 2
        t = time.perf_counter()
        for k in busy[mid - 2:mid + 2]:
            pot.slice_patch(k)
        out.update(per_slice_s=(time.perf_counter() - t) / 4, busy_slices=len(busy))
        raise _Done

    multislice.Multislice.run = run
    with contextlib.suppress(_Done):
        difftem.simulate(config_from_dict(d))
    print(json.dumps({"variant": args.variant, "threads": args.threads, **out}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--particles", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    runs = []
    out = ROOT / "benchmarks" / "results" / f"atom_slices_{args.size}.json"
    for rep in range(args.repeats):
        for threads in (1, 2):
            for variant in ("slab", "box", "tiles"):
                cmd = [sys.executable, __file__, "--child", "--variant", variant, "--threads", str(threads),
                       "--size", str(args.size), "--particles", str(args.particles)]
                res = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                runs.append({**json.loads(res.stdout.strip().splitlines()[-1]), "repeat": rep})
                print(runs[-1], flush=True)
                summary = {f"{v}_{t}_threads": {"min_s": min(x), "median_s": statistics.median(x)}
                           for v in ("slab", "box", "tiles") for t in (1, 2)
                           if (x := [r["per_slice_s"] for r in runs if r["variant"] == v and r["threads"] == t])}
                out.write_text(json.dumps({"case": {"size_px": args.size, "particles": args.particles,
                                                    "config": "bench_movie.config_dict", "slices_timed": 4},
                                           "machine": {"cpus": os.cpu_count(),
                                                       "note": "2 cores shared with other sessions (loaded)"},
                                           "runs": runs, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
