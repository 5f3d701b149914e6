#!/usr/bin/env python
"""The cost of structured ice: one micrograph with ``sample.ice_structure.mode`` off / slices / 3d, at 1 and 2 torch
threads, repeats interleaved; min and median wall seconds per case.

Cases: the bundled demo (384², 1 Å/px, five ubiquitins in 30 nm) and the demo's particles in a 1024² field; with
``--tilts``, a 5-tilt series (−60…60°) of the demo at each size instead, where ``3d`` is the one 3-D ice every tilt
samples. The run's own ``timings.total_s``. Writes JSON to --out.

    PYTHONPATH=src python benchmarks/bench_ice.py [--repeats 3] [--out benchmarks/results/ice.json]
    PYTHONPATH=src python benchmarks/bench_ice.py --tilts --sizes 256 512 --out benchmarks/results/ice_tilts.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from difftem import simulate, simulate_tilt_series
from difftem.config import load_config
from difftem.io.files import write_json

DEMO = Path(__file__).resolve().parents[1] / "src" / "difftem" / "data" / "demo.yaml"


def case(shape_px: int, mode: str, tilts: bool = False):
    cfg = load_config(DEMO).model_dump(mode="json")
    cfg["detector"]["shape_px"] = [shape_px, shape_px]
    cfg["detector"]["noise"] = "none"
    cfg["sample"]["ice_structure"] = {"mode": mode}
    if tilts:
        cfg["tilt_series"] = {"scheme": "list", "angles_deg": [-60, -30, 0, 30, 60], "damage": "none"}
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[384, 1024])
    ap.add_argument("--modes", nargs="+", default=["off", "slices", "3d"])
    ap.add_argument("--tilts", action="store_true", help="a 5-tilt series per case instead of one micrograph")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ice.json"))
    args = ap.parse_args()
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for size in args.sizes:
                for mode in args.modes:
                    cfg = case(size, mode, args.tilts)
                    r = simulate_tilt_series(cfg) if args.tilts else simulate(cfg)
                    key = f"{size}px/{mode}/{threads}t"
                    times.setdefault(key, []).append(r.metadata["timings"]["total_s"])
                    print(key, f"{times[key][-1]:.2f} s", r.metadata["ice_structure"]["mode"],
                          r.metadata.get("multislice_window_px"), flush=True)
    rows = {k: {"min_s": round(min(v), 3), "median_s": round(statistics.median(v), 3), "runs": v}
            for k, v in times.items()}
    for k, v in rows.items():
        print(f"{k:22s} min {v['min_s']:7.2f} s  median {v['median_s']:7.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    what = "a noise-free 5-tilt series" if args.tilts else "one noise-free micrograph"
    write_json(args.out, {"note": f"shared 2-core machine; timings.total_s of {what}",
                          "results": rows})


if __name__ == "__main__":
    main()
