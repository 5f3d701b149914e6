#!/usr/bin/env python
"""Threads on a shared machine: each stage's wall and CPU time at 1 and 2 torch threads, with OpenMP's default
(spinning) and passive waiting, on an idle machine and on one loaded with busy processes.

torch's CPU kernels run on an OpenMP pool; by default its threads spin while they wait for each other, which on a
loaded machine (dataset workers, CI, shared cluster nodes) makes small parallel stages wait for descheduled peers.
``OMP_WAIT_POLICY=PASSIVE`` makes them sleep instead; difftem sets it (unless already set) before torch loads.
This benchmark decides that default from data: OpenMP's own default (no variable: spin a while, then sleep),
passive, and a short spin (``GOMP_SPINCOUNT=10000``). Each configuration runs in its own process (the OpenMP runtime
reads its settings once, when torch loads); configurations are interleaved and repeated; the load is ``--load``
processes spinning on the CPUs for the whole measurement.

Stages, each as the pipeline runs it at the thread count set (``threads_for``: a field under 512² keeps its
per-image stages on one thread; a larger field, and a map or projector build, take every thread set that finds an
idle core): the optics and detector of one 400²
image (``expose``), the multislice of a 400² field through 5 slices of projected copies, one 400² micrograph of
the helix, a 5-tilt series of a ubiquitin helix at 400² (subunit projections, tilts side by side), the Fourier
projector of a 25,600-atom block (3-D FFTs of 90³), and one 1024² and one 2048² micrograph of 10 ubiquitins
(large FFTs).
Prints a table (min / median wall and median CPU per stage) and writes JSON.

    python benchmarks/bench_threads.py [--repeats 3] [--load 2] [--policies PASSIVE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UBI = "builtin:1ubi"
HELIX = {"rise_a": 12.0, "twist_deg": 40.0, "n_subunits": 30, "axis_point_a": [18.0, 0.0, 0.0]}


def stages():
    """name → a callable running the stage once (after one warm-up run)."""
    import numpy as np
    import torch

    from difftem import simulate, simulate_tilt_series
    from difftem.config import config_from_dict
    from difftem.core.threads import large_work, threads_for
    from difftem.forward.detector import Detector
    from difftem.forward.image import expose
    from difftem.forward.optics import Optics
    from difftem.forward.particle_map import build_fourier_projector
    from difftem.forward.potential import IceModel
    from difftem.forward.scattering import get_table
    from difftem.forward.scene_build import SceneView
    from difftem.simulate.pipeline import view_exit_wave
    from difftem.simulate.setup import Setup
    from difftem.specimen.structure import Atoms

    helix = {"seed": 1, "beam": {"voltage_kv": 300, "dose_e_per_a2": 60},
             "detector": {"shape_px": [400, 400], "pixel_size_a": 3.0},
             "sample": {"ice_thickness_nm": 30, "particles": [
                 {"structure": UBI, "helix": HELIX, "representation": "map",
                  "positions_a": [[-300, 0, 0], [0, 100, 0], [300, -100, 0]],
                  "euler_zyz_deg": [[0, 90, 0], [40, 90, 10], [-60, 80, 0]]}]},
             "simulation": {"slice_thickness_a": 60.0}}
    cfg = config_from_dict(helix)
    setup = Setup.build(cfg)
    view = SceneView(np.eye(3), setup.ice.thickness_a, None)
    ew = view_exit_wave(setup, view)
    optics, detector = Optics.from_config(cfg.optics), Detector.from_config(cfg)
    gen = torch.Generator().manual_seed(0)
    series = config_from_dict({**helix, "tilt_series": {"scheme": "list", "angles_deg": [-40, -20, 0, 20, 40],
                                                        "total_dose_e_per_a2": 60}})
    def micrograph(n: int):
        return config_from_dict({"seed": 2, "detector": {"shape_px": [n, n], "pixel_size_a": 1.5},
                                 "sample": {"ice_thickness_nm": 20, "particles": [{"structure": UBI,
                                                                                   "random": {"count": 10}}]},
                                 "simulation": {"slice_thickness_a": 20.0}})

    big, mid, small = micrograph(2048), micrograph(1024), micrograph(256)
    rng = np.random.default_rng(0)
    pos = rng.uniform(-1, 1, (60000, 3))
    pos = pos[(pos**2).sum(1) < 1][:25600] * 62  # a TMV block's size: its projector is 90³ at 5 Å pixels
    block = Atoms(rng.choice([1, 6, 7, 8, 16], len(pos)), pos, rng.uniform(10, 60, len(pos)), np.ones(len(pos)))
    ice = IceModel(500.0, 4.8775, 0.7591)

    def as_pipeline(fn, pixels=400 * 400):
        def run():
            with threads_for(pixels):
                return fn()
        return run

    def projector():
        with threads_for(400 * 400), large_work():
            return build_fourier_projector(block, get_table("kirkland"), pixel_size_a=5.0, ice=ice,
                                           absorption_ratio=ice.absorption_ratio)

    return {
        "expose_400": as_pipeline(lambda: expose(ew.wave, setup.grid, setup.wavelength_a, cfg.beam.voltage_kv, optics,
                                                 detector, exit_plane_a=ew.exit_plane_a, dose_e_per_a2=60.0,
                                                 generator=gen)),
        "multislice_400": as_pipeline(lambda: view_exit_wave(setup, view)),
        "micrograph_400": lambda: simulate(cfg, scene=setup.scene),
        "tilt_series_5x400": lambda: simulate_tilt_series(series, scene=setup.scene),
        "projector_90": projector,
        "micrograph_1024": (lambda: simulate(small), lambda: simulate(mid)),  # warm-up on a small field
        "micrograph_2048": (lambda: simulate(small), lambda: simulate(big)),
    }


def worker(threads: int, rounds: int) -> dict:
    """Each stage's wall and CPU times: ``rounds`` rounds through all stages (interleaved, so that a slow spell of
    the machine touches every stage), a short stage called several times in a row per round (≥ 0.25 s)."""
    import torch  # before difftem, so that difftem leaves this process's OpenMP settings as given

    torch.set_num_threads(threads)
    fns, calls = {}, {}
    for name, fn in stages().items():
        warm, fn = fn if isinstance(fn, tuple) else (fn, fn)
        warm()  # kernels, caches, maps
        t = time.perf_counter()
        fn()
        fns[name], calls[name] = fn, max(1, min(10, math.ceil(0.25 / max(time.perf_counter() - t, 1e-3))))
    out = {name: {"wall_s": [], "cpu_s": []} for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls[name]):
                t, c = time.perf_counter(), time.process_time()
                fn()
                out[name]["wall_s"].append(time.perf_counter() - t)
                out[name]["cpu_s"].append(time.process_time() - c)
    return out


def _spin(stop):
    while not stop.is_set():
        pass


POLICIES = {"default": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin10k": {"GOMP_SPINCOUNT": "10000"}}


def run_config(threads: int, policy: str, rounds: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    cmd = [sys.executable, __file__, "--worker", str(threads), "--rounds", str(rounds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="processes per configuration (interleaved)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds through the stages in each process")
    ap.add_argument("--load", type=int, default=2, help="busy processes for the loaded measurements")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--policies", default=",".join(POLICIES), help="OpenMP wait policies, comma-separated: "
                    + ", ".join(POLICIES) + " (difftem's own default is PASSIVE)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads_policies.json")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.rounds)))
        return
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if unknown := set(policies) - set(POLICIES):
        sys.exit(f"--policies: unknown {sorted(unknown)}; choose from {', '.join(POLICIES)}")
    configs = [(t, p) for t in map(int, args.threads.split(",")) for p in policies]
    runs: dict = {}
    for load in ("idle", "loaded"):
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load if load == "loaded"
                                                                                      else 0)]
        for p in spinners:
            p.start()
        try:
            for rep, (threads, policy) in itertools.product(range(args.repeats), configs):
                res = run_config(threads, policy, args.rounds)
                runs.setdefault(f"{load}|{threads}|{policy}", []).append(res)
                print(f"  {load} rep {rep} threads {threads} {policy}: "
                      + ", ".join(f"{k} {statistics.median(v['wall_s']):.3f}" for k, v in res.items()), flush=True)
        finally:
            stop.set()
            for p in spinners:
                p.join()
    table = {}
    for key, reps in runs.items():
        table[key] = {name: {"wall_min_s": min(w for r in reps for w in r[name]["wall_s"]),
                             "wall_median_s": statistics.median(w for r in reps for w in r[name]["wall_s"]),
                             "cpu_median_s": statistics.median(c for r in reps for c in r[name]["cpu_s"]),
                             "samples": sum(len(r[name]["wall_s"]) for r in reps)}
                      for name in reps[0]}
    names = list(next(iter(table.values())))
    print(f"\n{'load':7s} {'thr':>3s} {'OpenMP wait':11s} " + " ".join(f"{n:>26s}" for n in names))
    print(f"{'':23s}" + " ".join(f"{'wall min/med, cpu (s)':>26s}" for _ in names))
    for key, row in table.items():
        load, threads, policy = key.split("|")
        print(f"{load:7s} {threads:>3s} {policy:11s} " + " ".join(
            f"{row[n]['wall_min_s']:8.3f} {row[n]['wall_median_s']:8.3f} {row[n]['cpu_median_s']:8.3f}" for n in names))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "machine": platform.machine(), "load": args.load,
                                    "repeats": args.repeats, "rounds": args.rounds, "table": table, "runs": runs},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
