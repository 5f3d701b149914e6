#!/usr/bin/env python
"""Movies: time and peak memory of a dose-fractionated movie (default: 40 frames of 4096², 100 particles).

The exposure's noise-free image is simulated once (reported, not the subject); then, each in its own process so
peak RSS is its own, the movie stage — every frame damaged, moved (drift phase ramp, doming field, particle
jitter), counted by a camera with a fixed pattern, and written as an MRC stack and an LZW TIFF with the gain
reference, defects and truth — at 1 and 2 torch threads, interleaved repeats. Writes JSON to
benchmarks/results/.

    python benchmarks/bench_movie.py                           # the 4096² × 40 case
    python benchmarks/bench_movie.py --size 1024 --frames 10   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def config_dict(size: int, frames: int, particles: int) -> dict:
    return {"seed": 0, "beam": {"dose_e_per_a2": float(frames)},  # 1 e/Å² per frame
            "optics": {"defocus_um": 2.0},
            "detector": {"shape_px": [size, size], "pixel_size_a": 1.0, "dqe": 0.9,
                         "camera": {"kind": "counting", "pixel_mtf": True, "nps": "curve", "nps_floor": 0.8,
                                    "gain_sigma": 0.03, "gain_column_sigma": 0.01, "dead_pixel_fraction": 1e-4,
                                    "hot_pixel_fraction": 1e-4, "dead_columns": 2, "hot_columns": 1}},
            "sample": {"ice_thickness_nm": 20, "particles": [{"structure": "builtin:1ubi",
                                                              "random": {"count": particles}}]},
            "simulation": {"slice_thickness_a": 4.0},
            "movie": {"n_frames": frames, "local_a": 5.0, "jitter_a": 0.5,
                      "drift": {"fast_a": 15.0, "fast_frames": 3.0, "slow_a_per_frame": 0.3}}}


def child(args) -> None:
    import numpy as np
    import torch

    import difftem  # noqa: F401
    from difftem.config import config_from_dict
    from difftem.simulate.movie import make_movie, write_movie

    torch.set_num_threads(args.threads)
    data = np.load(args.cache)
    cfg = config_from_dict(config_dict(args.size, args.frames, args.particles))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(tempfile.mkdtemp(prefix="bench_movie_", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        movie = make_movie(cfg, torch.as_tensor(data["intensity"]), data["centres"], data["radii"])
        t1 = time.perf_counter()
        files = write_movie(movie, out, ("mrc", "tiff"))
        t2 = time.perf_counter()
        sizes = {p.name: p.stat().st_size for p in files}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"threads": args.threads, "setup_s": t1 - t0, "frames_and_write_s": t2 - t1,
                      "total_s": t2 - t0, "peak_rss_mib": peak, "base_rss_mib": base, "file_bytes": sizes}))


def simulate_exposure(args, cache: Path) -> dict:
    import numpy as np
    import torch

    import difftem
    from difftem.config import config_from_dict

    torch.set_num_threads(2)
    d = config_dict(args.size, args.frames, args.particles)
    d["movie"] = None
    cfg = config_from_dict(d)
    t0 = time.perf_counter()
    r = difftem.simulate(cfg)
    dt = time.perf_counter() - t0
    rows = r.metadata["particles"]
    centres = np.array([[row["rlnCoordinateX"], row["rlnCoordinateY"]] for row in rows])
    np.savez(cache, intensity=r.intensity.cpu().numpy(), centres=centres, radii=np.full(len(rows), 15.0))
    return {"exposure_simulation_s": dt, "n_copies": len(rows), "threads": 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--particles", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tmp", default=None, help="folder for the movie files (removed after each run)")
    p.add_argument("--out", default=None)
    p.add_argument("--reuse", default=None, help="an exposure .npz kept from an earlier run (skips the simulation)")
    p.add_argument("--reuse-seconds", type=float, default=None, help="that earlier run's exposure time (s)")
    p.add_argument("--keep-exposure", default=None,
                   help="copy the exposure .npz here (for --reuse, or bench_motion.py --intensity)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="bench_movie_cache_"))
    cache = work / "exposure.npz"
    try:
        if args.reuse:
            shutil.copy(args.reuse, cache)
            exposure = {"exposure_simulation_s": args.reuse_seconds, "reused": True, "threads": 2}
        else:
            exposure = simulate_exposure(args, cache)
        print(f"exposure {args.size}²: {exposure['exposure_simulation_s']} s", flush=True)
        if args.keep_exposure:
            shutil.copy(cache, args.keep_exposure)
        runs = []
        for rep in range(args.repeats):
            for threads in (1, 2):  # interleaved: a busy spell on the shared machine hits both alike
                cmd = [sys.executable, __file__, "--child", "--threads", str(threads), "--cache", str(cache),
                       "--size", str(args.size), "--frames", str(args.frames), "--particles", str(args.particles)]
                if args.tmp:
                    cmd += ["--tmp", args.tmp]
                env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                                 .stdout.strip().splitlines()[-1])
                res["repeat"] = rep
                runs.append(res)
                print(f"threads {threads} repeat {rep}: {res['total_s']:.1f} s, peak {res['peak_rss_mib']:.0f} MiB",
                      flush=True)
                write_record(args, exposure, runs)  # after each run: a long benchmark cut short keeps its runs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_record(args, exposure: dict, runs: list[dict]) -> None:
    summary = {}
    for threads in (1, 2):
        t = [r["total_s"] for r in runs if r["threads"] == threads]
        m = [r["peak_rss_mib"] for r in runs if r["threads"] == threads]
        if t:
            summary[f"{threads}_threads"] = {"total_s_min": min(t), "total_s_median": statistics.median(t),
                                             "peak_rss_mib_max": max(m), "repeats": len(t)}
    record = {"case": {"size_px": args.size, "frames": args.frames, "particles": args.particles,
                       "dose_e_per_a2_per_frame": 1.0},
              "machine": {"cpus": os.cpu_count(), "note": "2 cores shared with other sessions"},
              "exposure": exposure, "runs": runs, "summary": summary}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"movie_{args.size}_{args.frames}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
