"""Peak memory and wall time of `difftem reconstruct` on a large synthetic tilt series, old code against new.

    python benchmarks/bench_reconstruct_memory.py                       # the cellular case: 41 × 2500², bin 3
    python benchmarks/bench_reconstruct_memory.py --shape 1000 --src /work/main/src --src src

The stack is the cellular series' size (``--tilts`` × ``--shape``² float32 at 4 Å/px, ±60°, 4 µm underfocus, tilt
axis 0; docs/cellular.md) filled with seeded noise, written one tilt at a time through a memory map, with a SerialEM
``.mdoc`` beside it (angles, per-tilt defocus, pixel size), so `difftem reconstruct` finds its geometry and phase-flips
each tilt as it does for a simulated run. Each ``--src`` (a difftem source tree) runs ``difftem reconstruct --binning 3
--thickness-vox 139 --device cpu`` in its own subprocess, ``--repeats`` times interleaved; the peak resident set of
that child comes from ``os.wait4`` (its own ru_maxrss). Writes benchmarks/results/reconstruct_memory[_TAG].json.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_series(folder: Path, n_tilts: int, shape_px: int, pixel_size_a: float = 4.0, defocus_a: float = 40000.0,
                 seed: int = 0) -> Path:
    """stack.mrc (n_tilts × shape² float32, noise about 1) and stack.mrc.mdoc beside it; returns the stack."""
    import mrcfile

    sys.path.insert(0, str(ROOT / "src"))
    from difftem.io.imod import mdoc_frame, write_mdoc

    folder.mkdir(parents=True, exist_ok=True)
    stack = folder / "stack.mrc"
    angles = np.linspace(-60.0, 60.0, n_tilts)
    rng = np.random.default_rng(seed)
    with mrcfile.new_mmap(stack, shape=(n_tilts, shape_px, shape_px), mrc_mode=2, overwrite=True) as mrc:
        for t in range(n_tilts):  # one tilt in memory at a time
            mrc.data[t] = 1.0 + 0.1 * rng.standard_normal((shape_px, shape_px), dtype=np.float32)
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size_a
    frame = mdoc_frame(angles, pixel_size_a=pixel_size_a, image_shape_yx=(shape_px, shape_px), tilt_axis_deg=0.0,
                       exposure_e_per_a2=np.full(n_tilts, 3.0), prior_dose_e_per_a2=np.zeros(n_tilts),
                       defocus_a=np.full(n_tilts, defocus_a), voltage_kv=300.0, image_file=stack.name)
    write_mdoc(folder / "stack.mrc.mdoc", frame)
    return stack


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def _first_to_go() -> None:
    """In the child: if memory runs out, the kernel kills this process before anyone else's (a shared machine)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")


def run_reconstruct(src: Path, stack: Path, out: Path, binning: int, thickness_vox: int, threads: int,
                    min_available_gib: float) -> dict:
    """One `difftem reconstruct` in a child process: wall time, its own peak RSS (GiB) and CPU seconds. The child is
    stopped (``killed``) if the machine's available memory falls below ``min_available_gib``."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "difftem.cli", "reconstruct", str(stack), "-o", str(out), "--binning", str(binning),
           "--thickness-vox", str(thickness_vox), "--device", "cpu"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    log = out.with_suffix(".log").open("w+b")  # a file, not a pipe: the loop below does not drain it
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_first_to_go)
    killed, lowest = False, mem_available_gib()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        lowest = min(lowest, mem_available_gib())
        if lowest < min_available_gib and not killed:
            proc.kill()  # this benchmark's own child, by its id
            killed = True
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    log.seek(0)
    err = log.read().decode(errors="replace")
    log.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if status != 0 and not killed:
        raise SystemExit(f"{src}: reconstruct failed (status {status}):\n{err[-3000:]}")
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20, "cpu_s": usage.ru_utime + usage.ru_stime,
            "load_before": load, "lowest_available_gib": lowest, "killed": killed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tilts", type=int, default=41)
    ap.add_argument("--shape", type=int, default=2500, help="image side (px)")
    ap.add_argument("--binning", type=int, default=3)
    ap.add_argument("--thickness-vox", type=int, default=139, help="the cellular case's 150 nm at 12 Å, + margin")
    ap.add_argument("--src", type=Path, action="append", help="difftem source trees to compare (default: ./src)")
    ap.add_argument("--threads", type=int, action="append", help="OMP threads (default 2)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/difftem_reconstruct_memory"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--min-available-gib", type=float, default=1.0,
                    help="stop a run when the machine's available memory falls below this (shared machines)")
    args = ap.parse_args()
    srcs = [p.resolve() for p in (args.src or [ROOT / "src"])]
    stack = write_series(args.work, args.tilts, args.shape)
    runs = []
    for rep in range(args.repeats):
        for threads in args.threads or [2]:
            for i, src in enumerate(srcs):  # interleaved, so load drifts hit every tree alike
                out = args.work / f"rec_{i}.mrc"
                r = {"src": str(src), "threads": threads, "repeat": rep,
                     **run_reconstruct(src, stack, out, args.binning, args.thickness_vox, threads,
                                         args.min_available_gib)}
                runs.append(r)
                print(f"{src}  {threads} thr  {r['wall_s']:7.1f} s  peak {r['peak_rss_gib']:6.2f} GiB  "
                      f"cpu {r['cpu_s']:7.1f} s  (load {r['load_before']:.2f}, "
                      f"available ≥ {r['lowest_available_gib']:.1f} GiB)"
                      f"{'  KILLED (memory)' if r['killed'] else ''}", flush=True)
    if len(srcs) > 1 and not any(r["killed"] for r in runs):
        import mrcfile

        with mrcfile.mmap(args.work / "rec_0.mrc", mode="r") as a, mrcfile.mmap(args.work / f"rec_{len(srcs) - 1}.mrc",
                                                                                 mode="r") as b:
            diff = float(np.abs(a.data - b.data).max())
            scale = float(np.abs(a.data).max())
        print(f"largest difference between the first and last tree's volumes: {diff:.3g} (of {scale:.3g})")
    summary = {}
    for src in srcs:
        for threads in args.threads or [2]:
            rows = [r for r in runs if r["src"] == str(src) and r["threads"] == threads]
            walls, peaks = [r["wall_s"] for r in rows], [r["peak_rss_gib"] for r in rows]
            summary[f"{src} @{threads}"] = {"wall_min_s": min(walls), "wall_median_s": statistics.median(walls),
                                            "peak_rss_gib_max": max(peaks), "killed": sum(r["killed"] for r in rows)}
    record = {"case": {"tilts": args.tilts, "shape_px": args.shape, "binning": args.binning,
                       "thickness_vox": args.thickness_vox, "pixel_size_a": 4.0, "ctf_correction": "phase flip"},
              "runs": runs, "summary": summary, "cpus": os.cpu_count()}
    out_json = ROOT / "benchmarks" / "results" / f"reconstruct_memory{'_' + args.tag if args.tag else ''}.json"
    out_json.write_text(json.dumps(record, indent=1))
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
