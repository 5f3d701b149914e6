"""Cost of curved filaments against the straight helical rods of the same subunits (the existing `helix` path).

    PYTHONPATH=src python benchmarks/bench_filaments.py --repeats 3

Four TMV filaments (2OM3 subunit, rise 1.408 Å, twist 22.04°, lengths 250 ± 50 nm, Lp 2 µm) in a 1024² field at
4 Å/px, 60 nm of ice, noise-free; the reference: four straight `helix` rods with the same subunit counts at fixed
positions (along y, side by side in x). Interleaved repeats at 1 and 2 threads; prints min / median of the scene
build and `timings.total_s`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from difftem import simulate
from difftem.config import config_from_dict
from difftem.specimen.build import scene_of

TMV = str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "structures" / "2om3_tmv_cssmol.pdb.gz")
BASE = {"seed": 1, "detector": {"shape_px": [1024, 1024], "pixel_size_a": 4.0, "noise": "none"},
        "optics": {"defocus_um": 3.0}, "simulation": {"slice_thickness_a": 20.0}}
FIL = {"count": 4, "rise_a": 1.408, "twist_deg": 22.04, "length_nm": 250, "length_sd_nm": 50, "length_min_nm": 100,
       "length_max_nm": 350, "persistence_length_nm": 2000}


def configs():
    curved = config_from_dict({**BASE, "sample": {"ice_thickness_nm": 60, "particles": [
        {"structure": TMV, "filament": FIL}]}})
    counts = scene_of(curved).filaments.n_subunits.tolist()
    rods = [{"structure": TMV, "helix": {"rise_a": 1.408, "twist_deg": 22.04, "n_subunits": n},
             "positions_a": [[-1200.0 + 800 * i, 0.0, 0.0]], "euler_zyz_deg": [[90.0, 90.0, 0.0]]}
            for i, n in enumerate(counts)]
    straight = config_from_dict({**BASE, "sample": {"ice_thickness_nm": 60, "particles": rods}})
    return {"curved filaments": curved, "straight helix rods": straight}, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cases, counts = configs()
    print(f"subunits per filament: {counts} ({sum(counts)} in all)")
    times = {(name, th): {"scene": [], "total": []} for name in cases for th in (1, 2)}
    for _ in range(args.repeats):
        for th in (1, 2):
            torch.set_num_threads(th)
            for name, cfg in cases.items():
                t0 = time.perf_counter()
                scene = scene_of(cfg)
                times[name, th]["scene"].append(time.perf_counter() - t0)
                r = simulate(cfg, scene=scene)
                times[name, th]["total"].append(r.metadata["timings"]["total_s"])
    for (name, th), t in times.items():
        s, tot = t["scene"], t["total"]
        print(f"{name:22s} {th} thread(s): scene {min(s):.2f} / {statistics.median(s):.2f} s, simulate "
              f"{min(tot):.1f} / {statistics.median(tot):.1f} s")


if __name__ == "__main__":
    main()
