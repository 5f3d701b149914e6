"""Scenes at experimental scale: the Zika ladder and a tilt series of spike-covered virions.

(b) Zika ladder: 1, 10, 100, 1000, 5000 random, non-overlapping Zika virions (PDB 5IRE, 60-fold
    assembly, 661,440 atoms each), 4096² at 1 nm/px, 200 kV, 150 nm ice, one micrograph each.
    Wall time and peak memory per run (each in its own process), cost per added virion.
(c) A 41-tilt dose-symmetric series (±60°, 3°) of 10 SARS-CoV-2-sized virions: spike trimers (PDB
    6VXX) on spherical envelopes of radius 45 nm, pointing outwards (no membrane model), 1024² at
    5 Å/px, 300 kV, 250 nm ice: time per tilt.

    python benchmarks/bench_scenes.py --ladder 1,10,100 --tilt          # quick
    python benchmarks/bench_scenes.py --ladder 1,10,100,1000,5000       # the full ladder
Prints tables and writes benchmarks/results/scenes.json. Timings are wall-clock on this machine;
compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import numpy as np
from _child import run_child as _run_child  # benchmarks/_child.py (the scripts run from this folder)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"
RESULTS = Path(__file__).resolve().parent / "results"


def zika_config(n: int, shape_px: int = 4096, device: str = "auto") -> dict:
    return {"seed": 0, "beam": {"voltage_kv": 200, "dose_e_per_a2": 0.5},
            "optics": {"defocus_um": 3.0},
            "detector": {"shape_px": [shape_px, shape_px], "pixel_size_a": 10.0, "noise": "poisson"},
            "sample": {"ice_thickness_nm": 150,
                       "particles": [{"structure": str(SHARED / "5ire_zika.pdb.gz"), "assembly": "1",
                                      "random": {"count": n, "min_gap_a": 20.0}}]},
            "simulation": {"slice_thickness_a": 100.0, "device": device}}


def virion_spikes(n_virions: int, spikes_per_virion: int, radius_a: float, field_a: float, ice_a: float,
                  rng: np.random.Generator):
    """Spike positions and Euler angles on spheres: each spike's 3-fold axis (z) along the local normal."""
    from difftem.core.rotations import euler_zyz_from_matrix

    centres = []
    while len(centres) < n_virions:  # non-overlapping virion centres in the field, mid-plane of the ice
        c = np.array([rng.uniform(-1, 1) * (field_a / 2 - radius_a - 250),
                      rng.uniform(-1, 1) * (field_a / 2 - radius_a - 250),
                      rng.uniform(-1, 1) * max(0.0, ice_a / 2 - radius_a - 250)])
        if all(np.linalg.norm(c - o) > 2 * radius_a + 500 for o in centres):
            centres.append(c)
    # Fibonacci sphere: near-uniform directions
    i = np.arange(spikes_per_virion) + 0.5
    theta = np.arccos(1 - 2 * i / spikes_per_virion)
    phi = math.pi * (1 + 5**0.5) * i
    normals = np.stack([np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)], 1)
    positions, eulers = [], []
    for c in centres:
        spin = rng.uniform(0, 360, spikes_per_virion)
        for nrm, s in zip(normals, spin, strict=True):
            z = nrm / np.linalg.norm(nrm)
            x = np.cross([0.0, 0.0, 1.0], z) if abs(z[2]) < 0.99 else np.array([1.0, 0.0, 0.0])
            x /= np.linalg.norm(x)
            y = np.cross(z, x)
            r = np.stack([x, y, z], 1)  # columns: the spike frame's axes in the scene
            a = math.radians(s)
            spin_m = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
            r = r @ spin_m
            positions.append((c + z * radius_a).tolist())
            eulers.append(euler_zyz_from_matrix(r).tolist())
    return positions, eulers


def spike_tilt_config(n_virions: int = 10, spikes: int = 24, device: str = "auto") -> dict:
    rng = np.random.default_rng(7)
    positions, eulers = virion_spikes(n_virions, spikes, 450.0, 1024 * 5.0, 2500.0, rng)
    return {"seed": 1, "beam": {"voltage_kv": 300, "dose_e_per_a2": 3.0},
            "optics": {"defocus_um": 4.0},
            "detector": {"shape_px": [1024, 1024], "pixel_size_a": 5.0, "noise": "poisson"},
            "sample": {"ice_thickness_nm": 250,
                       "particles": [{"name": "spike_6vxx", "structure": str(SHARED / "6vxx_spike_biovia.pdb.gz"),
                                      "centre": "bbox", "positions_a": positions, "euler_zyz_deg": eulers,
                                      "representation": "map"}]},
            "simulation": {"slice_thickness_a": 50.0, "device": device},
            "tilt_series": {"scheme": "dose_symmetric", "min_deg": -60, "max_deg": 60, "step_deg": 3,
                            "total_dose_e_per_a2": 120, "group_size": 2}}


def _child(kind: str, arg: str, device: str) -> None:
    """Run one simulation in this process and print a JSON line (time, peak RSS)."""
    import torch

    import difftem

    t0 = time.perf_counter()
    if kind == "zika":
        r = difftem.simulate(zika_config(int(arg), device=device))
        out = {"virions": int(arg), "n_atoms": r.metadata["n_atoms"], "mode": r.metadata["particle_types"][0]["mode"],
               "n_slices": r.metadata["n_slices"], "timings": r.metadata["timings"]}
    else:
        r = difftem.simulate_tilt_series(spike_tilt_config(device=device))
        per = r.metadata["timings"]["per_tilt_s"]
        out = {"tilts": len(per), "copies": r.metadata["n_copies"], "mode": r.metadata["particle_types"][0]["mode"],
               "per_tilt_s_mean": float(np.mean(per)), "per_tilt_s_median": float(np.median(per)),
               "first_tilt_s": per[len(per) // 2], "map_bytes": r.metadata["timings"]["map_bytes"]}
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and device != "cpu":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["device"] = device
    out["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(out))


def run_child(kind: str, arg: str, device: str) -> dict:
    return _run_child(__file__, ["--child", kind, arg, "--device", device])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladder", default="1,10,100", help="comma-separated virion counts ('' to skip)")
    ap.add_argument("--tilt", action="store_true", help="also run the 41-tilt spike-virion series")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS / "scenes.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.device)
        return
    report = {"device": args.device, "ladder": [], "tilt_series": None}
    counts = [int(c) for c in args.ladder.split(",") if c.strip()]
    if counts:
        print(f"Zika ladder: 4096² at 1 nm/px, 200 kV, 150 nm ice ({args.device})")
        print(f"{'virions':>8} {'atoms':>14} {'mode':>10} {'wall s':>8} {'potential+multislice s':>23} {'peak MiB':>9}")
        for n in counts:
            r = run_child("zika", str(n), args.device)
            report["ladder"].append(r)
            print(f"{n:>8} {r['n_atoms']:>14,} {r['mode']:>10} {r['wall_s']:>8.1f} "
                  f"{r['timings']['multislice_s']:>23.1f} {r['peak_rss_mib']:>9.0f}")
        if len(report["ladder"]) >= 2:
            a, b = report["ladder"][0], report["ladder"][-1]
            per = (b["wall_s"] - a["wall_s"]) / (b["virions"] - a["virions"])
            report["seconds_per_added_virion"] = per
            print(f"cost per added virion: {per * 1e3:.1f} ms "
                  f"({a['virions']} → {b['virions']} virions: ×{b['wall_s'] / a['wall_s']:.2f} time for "
                  f"×{b['virions'] / a['virions']:.0f} virions)")
    if args.tilt:
        r = run_child("tilt", "10", args.device)
        report["tilt_series"] = r
        print(f"tilt series: {r['tilts']} tilts, {r['copies']} spike copies ({r['mode']}), 1024² at 5 Å/px: "
              f"{r['per_tilt_s_mean']:.2f} s per tilt (median {r['per_tilt_s_median']:.2f}), "
              f"total {r['wall_s']:.0f} s, "
              f"peak {r['peak_rss_mib']:.0f} MiB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
