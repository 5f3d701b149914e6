"""The cost of vesicles: one noise-free micrograph (512² at 2 Å/px, 60 nm structured ice in per-slice fields,
1.5 µm underfocus) without vesicles and with 4 and 10 (radius 12 ± 3 nm, log-normal), at 1 and 2 threads,
interleaved repeats; prints min / median of ``timings.total_s``.

    PYTHONPATH=src python benchmarks/bench_vesicles.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics

import torch

from difftem import simulate


def config(count: int, shape_px: int) -> dict:
    sample = {"ice_thickness_nm": 60.0, "ice_structure": {"mode": "slices"}, "particles": []}
    if count:
        sample["vesicles"] = {"count": count, "radius_nm": 12.0, "radius_sd_nm": 3.0, "radius_min_nm": 7.0,
                              "radius_max_nm": 18.0, "min_gap_a": 0.0}
    return {"seed": 1, "optics": {"defocus_um": 1.5}, "beam": {"dose_e_per_a2": 60},
            "detector": {"shape_px": [shape_px, shape_px], "pixel_size_a": 2.0, "noise": "none"}, "sample": sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape-px", type=int, default=512)
    args = ap.parse_args()
    cases = [(t, c) for t in (1, 2) for c in (0, 4, 10)]
    times: dict = {k: [] for k in cases}
    simulate(config(1, 256))  # warm up (imports, tables)
    for _ in range(args.repeats):
        for threads, count in cases:
            torch.set_num_threads(threads)
            times[(threads, count)].append(simulate(config(count, args.shape_px)).metadata["timings"]["total_s"])
    for (threads, count), ts in times.items():
        print(f"{threads} thread(s), {count:2d} vesicles: min {min(ts):.2f} s, median {statistics.median(ts):.2f} s")


if __name__ == "__main__":
    main()
