#!/usr/bin/env python
"""Tomographic reconstruction: WBP and SIRT time and peak memory, difftem (torch) vs ASTRA (CPU, 2-D per slice).

A phantom of random spheres in a slab (Z = size/4) is projected at 61 tilts (±60°, 2°) with difftem's
projector; each method then reconstructs the (61, size, size) stack into (size/4, size, size) in its own
process (peak RSS is its own; 'base' is the RSS after imports and data set-up). ASTRA's CPU code is 2-D
only, so it reconstructs image rows one at a time; by default only ``--astra-rows`` central rows are run
and the time is scaled to all rows (rows are independent problems of equal size) — marked in the table.
Prints a table and writes JSON to benchmarks/results/.

    python benchmarks/bench_tomo.py                 # 128² × 61 → 32 × 128², quick
    python benchmarks/bench_tomo.py --size 512      # the full 512² × 61 → 128 × 512² case
    PYTHONPATH=/path/to/astra python benchmarks/bench_tomo.py --size 512 --astra
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


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def phantom(size: int, thickness: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) - n // 2 for n in (thickness, size, size)),
                             indexing="ij")
    vol = torch.zeros(thickness, size, size)
    for _ in range(40):
        r = float(torch.empty(1).uniform_(0.03, 0.08, generator=gen)) * size
        r = min(r, thickness / 2 - 1)
        c = [float(torch.empty(1).uniform_(-0.4 * size, 0.4 * size, generator=gen)) for _ in range(2)]
        cz = float(torch.empty(1).uniform_(-(thickness / 2 - r - 1), thickness / 2 - r - 1, generator=gen))
        amp = float(torch.empty(1).uniform_(0.5, 1.0, generator=gen))
        vol += amp * (((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - cz) ** 2) <= r * r).float()
    return vol


def worker(mode: str, size: int, n_tilts: int, iterations: int, astra_rows: int) -> dict:
    import torch

    from difftem.tomo import ncc, project, reconstruct

    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    thickness = size // 4
    angles = torch.linspace(-60.0, 60.0, n_tilts)
    vol = phantom(size, thickness)
    with torch.no_grad():
        stack = project(vol, angles)
    base = rss_mib()
    out = {"mode": mode, "size": size, "n_tilts": n_tilts, "thickness": thickness, "threads": threads,
           "base_rss_mib": base}
    t = time.perf_counter()
    if mode.startswith("astra"):
        from difftem.tomo.astra_backend import astra_slices

        method = mode.split("_", 1)[1]
        first = size // 2 - astra_rows // 2
        rows = slice(first, first + astra_rows) if astra_rows else slice(None)
        sino = stack[:, rows].permute(1, 0, 2).numpy()
        slices = astra_slices(sino, angles.numpy(), thickness, size, method=method, iterations=iterations)
        seconds = time.perf_counter() - t
        n_rows = sino.shape[0]
        out.update(rows_run=n_rows, seconds_measured=seconds, seconds=seconds * size / n_rows,
                   extrapolated=n_rows < size)
        rec = torch.from_numpy(slices).permute(1, 0, 2)
        ours = reconstruct(stack[:, rows], angles, method=method, iterations=iterations, thickness_px=thickness,
                           device="cpu").volume
        out["ncc_vs_difftem_same_rows"] = float(ncc(rec, ours))
        out["ncc_vs_phantom_same_rows"] = float(ncc(rec, vol[:, rows]))
        out["difftem_ncc_vs_phantom_same_rows"] = float(ncc(ours, vol[:, rows]))
    else:
        method, filt = {"wbp": ("wbp", "ramp"), "wbp_sirtlike": ("wbp", "sirt-like"), "sirt": ("sirt", "ramp")}[mode]
        with torch.no_grad():
            res = reconstruct(stack, angles, method=method, filter=filt, sirt_like_iterations=iterations,
                              iterations=iterations, thickness_px=thickness, device="cpu")
        out["seconds"] = time.perf_counter() - t
        out["extrapolated"] = False
        out["ncc_vs_phantom"] = float(ncc(res.volume, vol))
        if res.residuals:
            out["residual_first_last"] = [res.residuals[0], res.residuals[-1]]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="image edge (px); 512 is the full case")
    ap.add_argument("--tilts", type=int, default=61)
    ap.add_argument("--iterations", type=int, default=20, help="SIRT iterations (and the sirt-like filter's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--astra", action="store_true", help="also run ASTRA (CPU, 2-D per row) if importable")
    ap.add_argument("--astra-rows", type=int, default=16, help="rows ASTRA runs (0: all), time scaled to all rows")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.tilts, args.iterations, args.astra_rows)))
        return
    modes = ["wbp", "wbp_sirtlike", "sirt"]
    if args.astra:
        modes += ["astra_wbp", "astra_sirt"]
    env = {**os.environ, "BENCH_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))}
    rows = []
    for mode in modes:
        cmd = [sys.executable, __file__, "--worker", mode, "--size", str(args.size), "--tilts", str(args.tilts),
               "--iterations", str(args.iterations), "--astra-rows", str(args.astra_rows)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
            print(f"{mode}: failed ({last})")
            rows.append({"mode": mode, "error": proc.stderr.strip()[-2000:]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ref = {r["mode"].split("_")[-1]: r["seconds"] for r in rows if "seconds" in r and not r["mode"].startswith("astra")}
    print(f"\n{args.size}² × {args.tilts} tilts → {args.size // 4} × {args.size}², {args.iterations} SIRT iterations, "
          f"{args.threads} threads (shared machine: re-measure on an idle one)")
    print(f"{'method':<14}{'time (s)':>10}{'vs difftem':>12}{'peak RSS MiB':>14}{'base MiB':>10}{'NCC':>8}  note")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:<14}{'failed':>10}")
            continue
        key = "sirt" if r["mode"].endswith("sirt") else "wbp"
        ratio = r["seconds"] / ref[key] if key in ref else float("nan")
        nc = r.get("ncc_vs_phantom", r.get("ncc_vs_phantom_same_rows", float("nan")))
        note = ""
        if "ncc_vs_difftem_same_rows" in r:
            note = (f"NCC on its rows (difftem's: {r['difftem_ncc_vs_phantom_same_rows']:.3f}); "
                    f"NCC vs difftem {r['ncc_vs_difftem_same_rows']:.4f}")
            if r.get("extrapolated"):
                note = f"scaled from {r['rows_run']} rows ({r['seconds_measured']:.1f} s); " + note
        print(f"{r['mode']:<14}{r['seconds']:>10.2f}{ratio:>12.2f}{r['peak_rss_mib']:>14.0f}{r['base_rss_mib']:>10.0f}"
              f"{nc:>8.3f}  {note}")
    out = ROOT / "benchmarks" / "results" / f"tomo_{args.size}.json"
    sys.path.insert(0, str(ROOT / "src"))
    from difftem.io.files import write_json

    write_json(out, {"size": args.size, "n_tilts": args.tilts, "iterations": args.iterations,
                     "threads": args.threads, "python": sys.version.split()[0], "results": rows,
                     "note": "shared 2-core machine during development; re-measure on an idle machine"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
