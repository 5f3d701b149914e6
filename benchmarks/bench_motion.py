#!/usr/bin/env python
"""Frame alignment at 1 e/Å² per frame: how close `denoise.motion.align_frames` gets to the true global drift, by
field size, against the older spatial-domain aligner.

The exposure's noise-free image (apoferritins at the docs' density, 30 per 1024², 20 nm of ice, 2.5 µm
underfocus; the bundled ubiquitin without ../shared/data) is simulated once per size and cached; each repeat then
draws a 40-frame movie from it (drift 12 Å fast + 0.2 Å/frame, new directions and noise per repeat, the
summed-image detector with DQE 0.8 and the docs' MTF) and aligns it.

    python benchmarks/bench_motion.py --size 1024 --repeats 3
    python benchmarks/bench_motion.py --size 2048 --repeats 2 --legacy   # also the older aligner (slow)
    python benchmarks/bench_motion.py --size 4096 --tile 2048            # 4096² field tiled from a 2048² one

``--tile N`` simulates an N² exposure and repeats it periodically to fill the field (a quick route to a large
field: the alignment's precision depends on the signal per area, which tiling keeps; the drift is far below the
tile period). Writes JSON to benchmarks/results/motion_<size>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def config_dict(size: int, seed: int = 1) -> dict:
    apo = DATA / "structures" / "6z6u_apoferritin.pdb.gz"
    count = max(1, int(30 * (size / 1024) ** 2))
    particle = ({"structure": str(apo), "assembly": "1", "random": {"count": count}} if apo.exists()
                else {"structure": "builtin:1ubi", "random": {"count": 6 * count}})
    return {"seed": seed, "beam": {"dose_e_per_a2": 40}, "optics": {"defocus_um": 2.5},
            "detector": {"shape_px": [size, size], "pixel_size_a": 1.0, "dqe": 0.8,
                         "mtf": {"a": 0.6, "b": 1.24, "c": -0.84, "alpha": 0.97, "beta": 0.97}},
            "sample": {"ice_thickness_nm": 20, "ice_structure": {"mode": "off"}, "particles": [particle]},
            "simulation": {"map_placement": "projection"},
            "movie": {"n_frames": 40, "damage": "none", "drift": {"fast_a": 12, "slow_a_per_frame": 0.2}}}


def exposure(size: int, cache: Path) -> tuple[np.ndarray, float]:
    """The noise-free intensity of a size² field (cached), and the seconds it took."""
    if cache.exists():
        return np.load(cache), 0.0
    import difftem
    from difftem.config import config_from_dict

    cfg = config_from_dict({**config_dict(size), "movie": None})
    t = time.perf_counter()
    r = difftem.simulate(cfg)
    took = time.perf_counter() - t
    out = r.intensity.double().cpu().numpy()
    np.save(cache, out)
    return out, took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tile", type=int, default=None, help="simulate this size and tile it to --size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--legacy", action="store_true", help="also run the older spatial-domain aligner")
    p.add_argument("--cache", default="/tmp/difftem_bench_motion")
    p.add_argument("--exposure-only", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from difftem.config import config_from_dict
    from difftem.denoise.motion import align_frames
    from difftem.simulate.movie import make_movie

    Path(args.cache).mkdir(parents=True, exist_ok=True)
    base = args.tile or args.size
    intensity, t_exposure = exposure(base, Path(args.cache) / f"intensity_{base}.npy")
    print(f"exposure {base}²: {t_exposure:.1f} s", flush=True)
    if args.exposure_only:
        return
    reps = args.size // base
    field = torch.as_tensor(np.tile(intensity, (reps, reps)))
    rows = []
    for rep in range(args.repeats):
        cfg = config_from_dict(config_dict(args.size, seed=100 + rep))
        movie = make_movie(cfg, field, np.zeros((0, 2)), np.zeros(0))
        t = time.perf_counter()
        frames = torch.stack([movie.frame(f) for f in range(movie.n_frames)])
        t_frames = time.perf_counter() - t
        truth = movie.source.truth.global_px
        row = {"repeat": rep, "frames_s": t_frames}
        t = time.perf_counter()
        found = align_frames(frames, max_shift_px=24)
        row["align_s"] = time.perf_counter() - t
        err = found - truth
        row["rms_px"] = float(np.sqrt((err**2).sum(1).mean()))
        row["rms_per_axis_px"] = float(np.sqrt((err**2).mean()))
        row["max_px"] = float(np.sqrt((err**2).sum(1)).max())
        if args.legacy:
            from difftem.denoise.motion import align_frames_spatial

            t = time.perf_counter()
            old = align_frames_spatial(frames, max_shift_px=24)
            row["legacy_align_s"] = time.perf_counter() - t
            e = old - truth
            row["legacy_rms_per_axis_px"] = float(np.sqrt((e**2).mean()))
            row["legacy_max_px"] = float(np.sqrt((e**2).sum(1)).max())
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"size": args.size, "tile": args.tile, "exposure_s": t_exposure, "threads": torch.get_num_threads(),
           "rows": rows}
    res = ROOT / "benchmarks" / "results" / f"motion_{args.size}{'_tiled' if args.tile else ''}.json"
    res.write_text(json.dumps(out, indent=1))
    print(res)


if __name__ == "__main__":
    main()
