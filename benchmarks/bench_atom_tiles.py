#!/usr/bin/env python
"""The atom path tile by tile: exposure time of the movie benchmarks' fields with the slice's structure factor built
over its whole box (``ATOM_TILE_PX`` out of reach: the earlier path) and tile by tile (the default), each run in
its own process, interleaved (variant × threads × repeats), and how far the two images differ.

    python benchmarks/bench_atom_tiles.py                       # bench_movie's 2048² field and bench_motion's 512²
    python benchmarks/bench_atom_tiles.py --cases movie:1024 --repeats 1

Writes benchmarks/results/atom_tiles.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> None:
    import numpy as np
    import torch

    import difftem
    import difftem.forward.potential as potential
    from difftem.config import config_from_dict

    sys.path.insert(0, str(ROOT / "benchmarks"))
    torch.set_num_threads(args.threads)
    kind, size = args.case.split(":")
    size = int(size)
    if kind == "movie":
        import bench_movie

        d = bench_movie.config_dict(size, 40, max(1, round(100 * (size / 4096) ** 2)))
    else:
        import bench_motion

        d = bench_motion.config_dict(size)
    d["movie"] = None
    if args.variant == "box":
        potential.ATOM_TILE_PX = 10**9
    cfg = config_from_dict(d)
    t = time.perf_counter()
    r = difftem.simulate(cfg)
    dt = time.perf_counter() - t
    np.save(args.save, r.intensity.double().cpu().numpy())
    print(json.dumps({"seconds": dt, "modes": [p["mode"] for p in r.metadata["particle_types"]]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="movie:2048,motion:512")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="bench_atom_tiles_"))
    record = {"machine": {"cpus": os.cpu_count(), "note": "2 cores shared with other sessions (loaded)"},
              "cases": {}}
    out = ROOT / "benchmarks" / "results" / "atom_tiles.json"
    for case in args.cases.split(","):
        runs = []
        for rep in range(args.repeats):
            for threads in (1, 2):
                for variant in ("box", "tiles"):
                    save = work / f"{variant}.npy"
                    cmd = [sys.executable, __file__, "--child", "--case", case, "--variant", variant,
                           "--threads", str(threads), "--save", str(save)]
                    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
                    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                                     .stdout.strip().splitlines()[-1])
                    runs.append({"variant": variant, "threads": threads, "repeat": rep, **res})
                    print(case, runs[-1], flush=True)
        a, b = np.load(work / "box.npy"), np.load(work / "tiles.npy")
        c = a - a.mean()
        summary = {}
        for variant in ("box", "tiles"):
            for threads in (1, 2):
                t = [r["seconds"] for r in runs if r["variant"] == variant and r["threads"] == threads]
                summary[f"{variant}_{threads}_threads"] = {"min_s": min(t), "median_s": statistics.median(t)}
        record["cases"][case] = {
            "runs": runs, "summary": summary,
            "difference": {"max_abs": float(np.abs(a - b).max()),
                           "rms_over_rms_contrast": float(np.sqrt(((a - b) ** 2).mean() / (c**2).mean()))}}
        out.write_text(json.dumps(record, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
