#!/usr/bin/env python
"""Forward-model benchmark: apoferritin (6Z6U, 24-mer, 32,618 atoms) at 1 Å/px, 2 Å slices, 300 kV.

Times the potential + plane-wave multislice exit wave (what abTEM's `PlaneWave.multislice`
computes) for difftem (windowed default, and forced full field) and abTEM 1.0.11 in the same
run, each engine in its own process so that peak memory (max RSS) is its own. Also reports
difftem's whole `simulate()` (CTF, detector included). Prints a table and writes JSON.

    python benchmarks/bench_forward.py [--sizes 512 2048] [--repeats 3] [--threads 2]

abTEM is optional (`pip install abtem==1.0.11`); without it only difftem rows are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRUCTURE = ROOT.parent / "shared" / "data" / "structures" / "6z6u_apoferritin.pdb.gz"
ENGINES = ("difftem", "difftem_full_field", "difftem_simulate", "abtem")


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def difftem_runner(n: int, window: str, whole: bool):
    import torch

    from difftem.config import config_from_dict
    from difftem.simulate.pipeline import simulate

    cfg = config_from_dict({
        "beam": {"voltage_kv": 300, "dose_e_per_a2": 40},
        "detector": {"shape_px": [n, n], "pixel_size_a": 1.0, "noise": "poisson"},
        "sample": {"ice_thickness_nm": 0, "particles": [{"structure": str(STRUCTURE)}]},
        "simulation": {"slice_thickness_a": 2.0, "parametrization": "kirkland", "device": "cpu", "window": window},
    })
    if whole:
        return lambda: simulate(cfg).micrograph

    from difftem.core.grid import Grid
    from difftem.forward.beam import interaction_constant, wavelength_a
    from difftem.forward.multislice import multislice, plan_window
    from difftem.forward.potential import IceModel, SlicedPotential, atoms_to_tensors
    from difftem.forward.scattering import get_table
    from difftem.specimen.build import scene_atoms

    atoms = scene_atoms(cfg)  # structure reading is not timed (as for abTEM)
    lam, sigma = wavelength_a(300), interaction_constant(300)

    def run():
        tensors = atoms_to_tensors(atoms)
        grid = Grid((n, n), 1.0)
        win = None
        if window == "auto":
            z = atoms.positions_a[:, 2]
            win = plan_window(grid, tensors[1], float(z.max() - z.min()) + 2, lam)
        pot = SlicedPotential(*tensors, win.grid if win else grid, get_table("kirkland"), 2.0, IceModel(0.0))
        with torch.no_grad():
            wave = multislice(pot, lam, sigma)
        if win is not None:
            from difftem.forward.potential import Patch, embed

            wave = embed(Patch(win.y0, win.x0, wave), (n, n), 1.0)
        return wave

    return run


def abtem_runner(n: int):
    import abtem
    import numpy as np
    from ase import Atoms as AseAtoms

    from difftem.forward.scattering import element_symbol
    from difftem.specimen.structure import read_structure

    abtem.config.set({"precision": "float32", "diagnostics.progress_bar": False})
    atoms = read_structure(STRUCTURE)
    pos = atoms.positions_a.copy()
    pos[:, :2] += n / 2  # centre in the (n Å)² cell
    pos[:, 2] -= pos[:, 2].min() - 1.0
    lz = 2.0 * (np.floor((pos[:, 2].max() + 1.0) / 2.0) + 1)
    ase_atoms = AseAtoms([element_symbol(z) for z in atoms.atomic_number], positions=pos, cell=(n, n, lz))

    def run():
        potential = abtem.Potential(ase_atoms, gpts=(n, n), slice_thickness=2.0, parametrization="kirkland",
                                    projection="infinite")
        return abtem.PlaneWave(energy=300e3).multislice(potential, lazy=False).array

    return run


def worker(engine: str, n: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if engine == "abtem":
        run = abtem_runner(n)
    else:
        run = difftem_runner(n, "off" if engine == "difftem_full_field" else "auto", engine == "difftem_simulate")
    base = rss_mib()
    times = []
    for _ in range(repeats + 1):  # the first run is the cold one (JIT, FFT plans, caches)
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    peak = peak_rss_mib()
    return {"engine": engine, "n": n, "cold_s": times[0], "warm_s": min(times[1:]), "all_s": times,
            "baseline_rss_mib": base, "peak_rss_mib": peak, "working_mib": peak - base}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "forward_apoferritin.json")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.repeats)))
        return 0
    if not STRUCTURE.exists():
        sys.exit(f"benchmark structure not found: {STRUCTURE}")
    env = {**os.environ, "BENCH_THREADS": str(a.threads), "OMP_NUM_THREADS": str(a.threads),
           "MKL_NUM_THREADS": str(a.threads), "NUMBA_NUM_THREADS": str(a.threads),
           "OPENBLAS_NUM_THREADS": str(a.threads)}
    rows = []
    for n in a.sizes:
        for engine in a.engines:
            proc = subprocess.run([sys.executable, __file__, "--worker", engine, str(n), "--repeats", str(a.repeats)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"{engine} {n}: skipped ({reason})", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ref = {r["n"]: r for r in rows if r["engine"] == "abtem"}
    head = (f"{'size':>6} {'engine':<20} {'cold s':>8} {'warm s':>8} {'peak MiB':>9} {'work MiB':>9} "
            f"{'abTEM/x time':>12} {'x/abTEM work mem':>16}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ab = ref.get(r["n"])
        speed = f"{ab['warm_s'] / r['warm_s']:.1f}x" if ab else "-"
        mem = f"{r['working_mib'] / ab['working_mib']:.2f}" if ab and ab["working_mib"] > 0 else "-"
        r["speedup_vs_abtem"] = ab["warm_s"] / r["warm_s"] if ab else None
        r["working_memory_ratio_vs_abtem"] = r["working_mib"] / ab["working_mib"] if ab else None
        print(f"{r['n']:>6} {r['engine']:<20} {r['cold_s']:8.2f} {r['warm_s']:8.2f} {r['peak_rss_mib']:9.0f} "
              f"{r['working_mib']:9.0f} {speed:>12} {mem:>16}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"structure": STRUCTURE.name, "pixel_size_a": 1.0, "slice_thickness_a": 2.0, "voltage_kv": 300,
            "threads": a.threads, "repeats": a.repeats, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    a.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
