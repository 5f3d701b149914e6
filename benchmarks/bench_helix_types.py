"""Long helical types cost one subunit before the first tilt: 4 straight TMV rods (``helix``, 2OM3 subunit,
rise 1.408 Å, twist 22.04°) lying in a 512² field at 5 Å/px, 50 nm ice, 300 kV, a 2-tilt series.

Each run is a child process; it reports the time until the first tilt is done (setup + first tilt), the total and
the peak RSS. ``--src`` names source trees to compare (e.g. a ``git archive`` of an older commit and ``src``);
runs are interleaved (tree A, tree B, A, B, …) at each thread count, and min and median are printed.

    python benchmarks/bench_helix_types.py --src /tmp/old_src,src --repeats 2 --threads 1,2
    python benchmarks/bench_helix_types.py --case rods --src /tmp/old_src,src --repeats 2 --threads 1
Writes benchmarks/results/helix_types.json (--out to change).
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

ROOT = Path(__file__).resolve().parents[1]
TMV = ROOT / ".." / "shared" / "data" / "structures" / "2om3_tmv_cssmol.pdb.gz"
RESULTS = ROOT / "benchmarks" / "results"


def tmv_config(n_rods: int = 4, length_nm: float = 200.0, shape_px: int = 512, pixel_a: float = 5.0,
               angles_deg=(0.0, 3.0)) -> dict:
    """Rods in the x-y plane (Euler θ = 90° turns the helix axis z into the image plane), 0.2 field apart in y."""
    ys = [(-0.3 + 0.2 * i) * shape_px * pixel_a for i in range(n_rods)]
    return {"seed": 0, "beam": {"voltage_kv": 300, "dose_e_per_a2": 60}, "optics": {"defocus_um": 3.0},
            "detector": {"shape_px": [shape_px, shape_px], "pixel_size_a": pixel_a, "noise": "poisson"},
            "sample": {"ice_thickness_nm": 50,
                       "particles": [{"structure": str(TMV), "name": "tmv",
                                      "helix": {"rise_a": 1.408, "twist_deg": 22.04, "length_a": length_nm * 10},
                                      "positions_a": [[0.0, y, 0.0] for y in ys],
                                      "euler_zyz_deg": [[10.0 * i, 90.0, 0.0] for i in range(n_rods)]}]},
            "simulation": {"slice_thickness_a": 50.0},
            "tilt_series": {"scheme": "list", "angles_deg": list(angles_deg), "total_dose_e_per_a2": 60}}


def _rods_child(threads: int) -> None:
    """bench_filaments.py's four straight helix rods (10–15 M atoms each), one micrograph: scene build, simulate."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_filaments

    from difftem import simulate
    from difftem.specimen.build import scene_of

    cfg = bench_filaments.configs()[0]["straight helix rods"]
    t0 = time.perf_counter()
    scene = scene_of(cfg)
    t1 = time.perf_counter()
    r = simulate(cfg, scene=scene)
    print("RESULT " + json.dumps({"first_tilt_done_s": t1 - t0, "total_s": time.perf_counter() - t0,
                                  "scene_s": t1 - t0, "simulate_s": time.perf_counter() - t1,
                                  "mode": r.metadata["particle_types"][0]["mode"],
                                  "atoms_per_rod": r.metadata["particle_types"][0]["atoms"],
                                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  "threads": threads}))


def _child(threads: int, length_nm: float) -> None:
    import torch

    torch.set_num_threads(threads)
    import difftem

    t0 = time.perf_counter()
    first: list[float] = []

    def progress(done, total):
        if not first:
            first.append(time.perf_counter() - t0)

    r = difftem.simulate_tilt_series(tmv_config(length_nm=length_nm), progress=progress)
    out = {"first_tilt_done_s": first[0], "total_s": time.perf_counter() - t0,
           "per_tilt_s": r.metadata["timings"]["per_tilt_s"], "mode": r.metadata["particle_types"][0]["mode"],
           "atoms_per_rod": r.metadata["particle_types"][0]["atoms"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": threads}
    print("RESULT " + json.dumps(out))


def run_child(src: str, threads: int, length_nm: float, case: str = "tilts") -> dict:
    return _run_child(__file__, ["--child", str(threads), "--length-nm", str(length_nm), "--case", case], src)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="src", help="comma-separated source trees (PYTHONPATH of each child)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--length-nm", type=float, default=200.0)
    ap.add_argument("--out", default=str(RESULTS / "helix_types.json"))
    ap.add_argument("--case", choices=["tilts", "rods"], default="tilts",
                    help="tilts: the 2-tilt series above; rods: bench_filaments.py's four straight helix rods, one "
                         "micrograph at 1024² (first tilt = the scene build)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        (_rods_child(args.child) if args.case == "rods" else _child(args.child, args.length_nm))
        return
    srcs = args.src.split(",")
    runs = []
    for threads in (int(t) for t in args.threads.split(",")):
        for rep in range(args.repeats):
            for src in srcs:
                r = {"src": src, "repeat": rep, "load_1min": os.getloadavg()[0],
                     **run_child(src, threads, args.length_nm, args.case)}
                runs.append(r)
                print(f"{src:>28} {threads} thr  first tilt done {r['first_tilt_done_s']:6.1f} s  total "
                      f"{r['total_s']:6.1f} s  peak {r['peak_rss_mib']:6.0f} MiB  load {r['load_1min']:.1f}",
                      flush=True)
    print(f"\n{'tree':>28} {'thr':>3} {'first tilt min/med s':>21} {'total min/med s':>17} {'peak MiB':>9}")
    for threads in sorted({r["threads"] for r in runs}):
        for src in srcs:
            sel = [r for r in runs if r["src"] == src and r["threads"] == threads]
            f = [r["first_tilt_done_s"] for r in sel]
            t = [r["total_s"] for r in sel]
            print(f"{src:>28} {threads:>3} {min(f):>10.1f}/{statistics.median(f):<10.1f} {min(t):>8.1f}/"
                  f"{statistics.median(t):<8.1f} {max(r['peak_rss_mib'] for r in sel):>9.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": tmv_config(length_nm=args.length_nm), "runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
