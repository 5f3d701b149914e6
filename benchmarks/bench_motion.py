#!/usr/bin/env python
"""Frame alignment at 1 e/Å² per frame: how close `denoise.motion.align_frames` gets to the true global drift, by
field size, against the older spatial-domain aligner.

The exposure's noise-free image (apoferritins at the docs' density, 30 per 1024², 20 nm of ice, 2.5 µm
underfocus; the bundled ubiquitin without ../shared/data) is simulated once per size and cached; each repeat then
draws a 40-frame movie from it (drift 12 Å fast + 0.2 Å/frame, new directions and noise per repeat, the
summed-image detector with DQE 0.8 and the docs' MTF) and aligns it.

    python benchmarks/bench_motion.py --size 1024 --repeats 3
    python benchmarks/bench_motion.py --size 2048 --repeats 2 --legacy   # also the older aligner (slow)
    python benchmarks/bench_motion.py --size 4096 --tile 2048            # 4096² mosaic of a 2048² exposure

``--tile N`` (size = 2N) simulates an N² exposure and fills the field with four copies turned so that no two hold
the same or conjugate Fourier components (the image, its transpose, and both turned by 90°): a quick route to a
large field with the same signal per area. Plain periodic copies would not do: their spectra add coherently, which
at these doses (where the noise-times-noise term of the correlation dominates) overstates the precision by up to the
number of copies. Writes JSON to benchmarks/results/motion_<size>[_mosaic].json.

Errors are reported two ways: against the truth as RELION states it (relative to the first frame, so the first
frame's own error enters every frame), and about the mean offset (what an aligned sum depends on); also after
:func:`~difftem.denoise.motion.smooth_trajectory`.
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


def config_dict(size: int, seed: int = 1, particles: int | None = None) -> dict:
    apo = DATA / "structures" / "6z6u_apoferritin.pdb.gz"
    count = particles or max(1, int(30 * (size / 1024) ** 2))
    particle = ({"structure": str(apo), "assembly": "1", "random": {"count": count}} if apo.exists()
                else {"structure": "builtin:1ubi", "random": {"count": 6 * count}})
    return {"seed": seed, "beam": {"dose_e_per_a2": 40}, "optics": {"defocus_um": 2.5},
            "detector": {"shape_px": [size, size], "pixel_size_a": 1.0, "dqe": 0.8,
                         "mtf": {"a": 0.6, "b": 1.24, "c": -0.84, "alpha": 0.97, "beta": 0.97}},
            "sample": {"ice_thickness_nm": 20, "ice_structure": {"mode": "off"}, "particles": [particle]},
            "simulation": {"map_placement": "projection"},
            "movie": {"n_frames": 40, "damage": "none", "drift": {"fast_a": 12, "slow_a_per_frame": 0.2}}}


def exposure(size: int, cache: Path, particles: int | None = None) -> tuple[np.ndarray, float]:
    """The noise-free intensity of a size² field (cached), and the seconds it took."""
    if cache.exists():
        return np.load(cache), 0.0
    import difftem
    from difftem.config import config_from_dict

    cfg = config_from_dict({**config_dict(size, particles=particles), "movie": None})
    t = time.perf_counter()
    r = difftem.simulate(cfg)
    took = time.perf_counter() - t
    out = r.intensity.double().cpu().numpy()
    np.save(cache, out)
    return out, took


def _figure(path: str, size: int, truth: np.ndarray, found: np.ndarray, smooth: np.ndarray, row: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2), dpi=90)
    ax[0].plot(truth[:, 0], truth[:, 1], "k.-", label="truth")
    ax[0].plot(found[:, 0], found[:, 1], "r.", label=f"align_frames ({row['rms_per_axis_px']:.2f} px rms)")
    ax[0].plot(smooth[:, 0], smooth[:, 1], "b-", lw=1,
               label=f"smoothed ({row['smoothed']['rms_per_axis_about_offset_px']:.2f} px about the offset)")
    ax[0].set(xlabel="shift x (px)", ylabel="shift y (px)", title=f"40 frames × 1 e/Å², {size}², apoferritins")
    ax[0].axis("equal")
    ax[0].legend(fontsize=8)
    t = np.arange(len(truth))
    for j, name in enumerate("xy"):
        ax[1].plot(t, found[:, j] - truth[:, j], ".-", lw=0.8, label=f"error {name}")
    ax[1].axhline(0.2, color="grey", lw=0.5)
    ax[1].axhline(-0.2, color="grey", lw=0.5)
    ax[1].set(xlabel="frame", ylabel="measured − truth (px)", title="per-frame error (±0.2 px marked)")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tile", type=int, default=None, help="simulate this size and tile it to --size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--particles", type=int, default=None,
                   help="apoferritins in the field (default: the docs' density, 30 per 1024²)")
    p.add_argument("--seed0", type=int, default=100, help="the first repeat's seed (drift directions, noise)")
    p.add_argument("--intensity", default=None,
                   help="align frames drawn from this noise-free exposure instead (.npy, or bench_movie's .npz with "
                        "'intensity'; its size must be --size)")
    p.add_argument("--legacy", action="store_true", help="also run the older spatial-domain aligner")
    p.add_argument("--no-gaussian", action="store_true", help="skip the Gaussian-weighted comparison")
    p.add_argument("--cache", default="/tmp/difftem_bench_motion")
    p.add_argument("--exposure-only", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--figure", default=None, help="PNG of the first repeat's trajectories (truth, measured, smoothed)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from difftem.config import config_from_dict
    from difftem.denoise.motion import FrameSpectra, align_frames, smooth_trajectory
    from difftem.simulate.movie import make_movie

    Path(args.cache).mkdir(parents=True, exist_ok=True)
    base = args.tile or args.size
    tag = f"_{args.particles}p" if args.particles else ""
    if args.intensity:  # e.g. bench_movie's 100-ubiquitin field in structured ice
        loaded = np.load(args.intensity)
        intensity = loaded["intensity"] if hasattr(loaded, "files") else loaded
        intensity, t_exposure, tag = np.asarray(intensity, dtype=np.float64), 0.0, "_" + Path(args.intensity).stem
    else:
        intensity, t_exposure = exposure(base, Path(args.cache) / f"intensity_{base}{tag}.npy", args.particles)
    print(f"exposure {base}²: {t_exposure:.1f} s", flush=True)
    if args.exposure_only:
        return
    if args.tile:
        if args.size != 2 * base:
            raise SystemExit("--tile N needs --size 2N")
        t = intensity.T
        intensity = np.block([[intensity, np.rot90(intensity)], [t, np.rot90(t)]])
    field = torch.as_tensor(np.ascontiguousarray(intensity))
    rows = []

    def errors(found: np.ndarray, truth: np.ndarray) -> dict:
        e = found - truth
        c = e - e.mean(0)
        return {"rms_per_axis_px": float(np.sqrt((e**2).mean())), "max_px": float(np.sqrt((e**2).sum(1)).max()),
                "rms_per_axis_about_offset_px": float(np.sqrt((c**2).mean()))}

    for rep in range(args.repeats):
        cfg = config_from_dict(config_dict(args.size, seed=args.seed0 + rep))
        movie = make_movie(cfg, field, np.zeros((0, 2)), np.zeros(0))
        truth = movie.source.truth.global_px
        t = time.perf_counter()
        spectra = FrameSpectra(movie.frame(f) for f in range(movie.n_frames))  # frames drawn and transformed
        row = {"repeat": rep, "frames_and_spectra_s": time.perf_counter() - t}
        t = time.perf_counter()
        found = align_frames(spectra, max_shift_px=24)
        row["align_s"] = time.perf_counter() - t
        row.update(errors(found, truth))
        smooth, lam = smooth_trajectory(found)
        row["smoothed"] = {**errors(smooth, truth), "lambda": lam}
        t = time.perf_counter()
        row["signal_weighting"] = errors(align_frames(spectra, max_shift_px=24, weighting="signal"), truth)
        row["signal_align_s"] = time.perf_counter() - t
        if not args.no_gaussian:
            t = time.perf_counter()
            row["gaussian_0.05"] = errors(align_frames(spectra, max_shift_px=24, weighting="gaussian"), truth)
            row["gaussian_align_s"] = time.perf_counter() - t
        if args.legacy:
            from difftem.denoise.motion import align_frames_spatial

            frames = torch.stack([movie.frame(f) for f in range(movie.n_frames)])
            t = time.perf_counter()
            row["legacy"] = errors(align_frames_spatial(frames, max_shift_px=24), truth)
            row["legacy_align_s"] = time.perf_counter() - t
        print(json.dumps(row), flush=True)
        rows.append(row)
        if rep == 0 and args.figure:
            _figure(args.figure, args.size, truth, found, smooth, row)
    particles = None if args.intensity else args.particles or config_dict(base)["sample"]["particles"][0]["random"][
        "count"]  # with --intensity: whatever that exposure holds
    out = {"size": args.size, "tile": args.tile, "particles": particles, "intensity": args.intensity,
           "seed0": args.seed0, "exposure_s": t_exposure,
        "threads": torch.get_num_threads(), "rows": rows}
    res = ROOT / "benchmarks" / "results" / f"motion_{args.size}{'_mosaic' if args.tile else ''}{tag}.json"
    res.write_text(json.dumps(out, indent=1))
    print(res)


if __name__ == "__main__":
    main()
