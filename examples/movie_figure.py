"""The figure of docs/acquisition.md: a movie's drift (truth vs frame alignment), the blur of the unaligned sum,
flat-field NPS/DQE against the configured curves, and the gain reference removing the fixed pattern.

    python examples/movie_figure.py --out docs/img/acquisition.png     # about a minute on 2 cores

Uses apoferritin from ../shared/data (falls back to the bundled ubiquitin) and the measured K3 MTF.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import difftem
from difftem.config import config_from_dict
from difftem.core.fft import radial_freq_per_px, rfft2
from difftem.denoise.motion import align_frames, aligned_sum
from difftem.forward.camera import camera_model, nps_curve, radial_bands, transfers
from difftem.forward.detector import make_mtf
from difftem.learn.mtf_fit import noise_power_spectrum

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def movie_config(size: int) -> dict:
    apo = DATA / "structures" / "6z6u_apoferritin.pdb.gz"
    particle = ({"structure": str(apo), "assembly": "1", "random": {"count": 7}} if apo.exists()
                else {"structure": "builtin:1ubi", "random": {"count": 40}})
    return {"seed": 1, "beam": {"dose_e_per_a2": 40}, "optics": {"defocus_um": 2.5},
            "detector": {"shape_px": [size, size], "pixel_size_a": 1.0, "dqe": 0.8,
                         "mtf": {"a": 0.6, "b": 1.24, "c": -0.84, "alpha": 0.97, "beta": 0.97}},
            "sample": {"ice_thickness_nm": 20, "ice_structure": {"mode": "off"},  # as the docs' numbers
                       "particles": [particle]},
            "simulation": {"map_placement": "projection"},
            "movie": {"n_frames": 40, "damage": "none", "drift": {"fast_a": 12, "slow_a_per_frame": 0.2}}}


def flat_fields(camera: dict, lam: float, n: int, size: int = 128):
    mtf = {"star": str(DATA / "mtf" / "mtf_k3_standard_300kV_FL2.star")} if DATA.exists() else None
    camera = {"pixel_mtf": True, **camera}  # as measured for the figure (the curve × the pixel's sinc)
    cfg = config_from_dict({"detector": {"shape_px": [size, size], "dqe": 0.9, "mtf": mtf, "camera": camera}})
    model = camera_model(cfg, make_mtf(cfg), frame_time_s=0.05)
    g = torch.Generator().manual_seed(0)
    frames = torch.stack([model.read(torch.full((size, size), lam, dtype=torch.float64), g) for _ in range(n)])
    return model, frames.double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/img/acquisition.png")
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = {}
    r = difftem.simulate(config_from_dict(movie_config(args.size)))
    frames = torch.stack(list(r.movie.frames())).double()
    truth = r.movie.source.truth.global_px
    found = align_frames(frames, max_shift_px=24)
    err = found - truth
    numbers["align_rms_px"] = float(np.sqrt((err**2).mean()))
    # the blur, seen without noise: the noise-free frames, summed as they are and shifted back by the truth
    clean = torch.stack([r.movie.source.expected_counts(f) for f in range(r.movie.n_frames)]).double()
    plain, fixed = clean.sum(0), aligned_sum(clean, truth)
    edges = np.linspace(0.02, 0.5, 25)
    shape = tuple(plain.shape)
    p_plain = radial_bands(rfft2(plain - plain.mean()).abs() ** 2, shape, edges)
    p_fixed = radial_bands(rfft2(fixed - fixed.mean()).abs() ** 2, shape, edges)

    edges_ff = np.linspace(0.05, 0.5, 10)
    centres = 0.5 * (edges_ff[1:] + edges_ff[:-1])
    model, ff = flat_fields({"nps": "curve", "nps_floor": 0.6, "nps_alpha": 8.0}, 5.0, 48)
    nps = radial_bands(noise_power_spectrum(ff, detrend="mean"), (128, 128), edges_ff) / (0.9 * 5.0)
    om = radial_freq_per_px((128, 128), half=True)
    nps_model = radial_bands(nps_curve(model.camera, om), (128, 128), edges_ff)
    sig, _ = transfers(model.camera, model.mtf, (128, 128))
    s2 = radial_bands(sig**2, (128, 128), edges_ff)
    dqe_meas = float(ff.mean()) ** 2 * s2 / (5.0 * nps * 0.9 * 5.0)
    dqe_model = 0.9 * s2 / nps_model
    numbers["nps_ratio_per_band"] = (nps / nps_model).round(4).tolist()
    numbers["dqe_ratio_per_band"] = (dqe_meas / dqe_model).round(4).tolist()
    gm, gf = flat_fields({"nps": "curve", "nps_floor": 1.0, "pixel_mtf": False, "gain_sigma": 0.05,
                          "gain_column_sigma": 0.05}, 20.0, 32)  # (with the K3 MTF: white noise, MTF on signal)
    level = float(gf.mean())  # the Poisson level: detected events per pixel
    raw = noise_power_spectrum(gf, detrend="mean") / level
    corr = noise_power_spectrum(gf * gm.pattern.gain_reference().double(), detrend="mean") / level

    fig, ax = plt.subplots(2, 3, figsize=(13, 8))
    ax[0, 0].plot(truth[:, 0], truth[:, 1], "k.-", label="truth")
    ax[0, 0].plot(found[:, 0], found[:, 1], "r.", label=f"measured (rms error {numbers['align_rms_px']:.2f} px)")
    ax[0, 0].set(xlabel="shift x (px)", ylabel="shift y (px)", title=f"drift, 40 frames × 1 e/Å², {args.size}²")
    ax[0, 0].legend(fontsize=8)
    c = slice(args.size // 2 - 96, args.size // 2 + 96)
    ax[0, 1].imshow(plain[c, c].numpy(), cmap="gray")
    ax[0, 1].set_title("sum of noise-free frames, not aligned")
    ax[0, 2].imshow(fixed[c, c].numpy(), cmap="gray")
    ax[0, 2].set_title("the same, shifted back by the true drift")
    for a in (ax[0, 1], ax[0, 2]):
        a.axis("off")
    mid = 0.5 * (edges[1:] + edges[:-1])
    ax[1, 0].semilogy(mid, p_plain, label="not aligned")
    ax[1, 0].semilogy(mid, p_fixed, label="aligned")
    ax[1, 0].set(xlabel="cycles/px", ylabel="power", title="power of the noise-free sums")
    ax[1, 0].legend(fontsize=8)
    ax[1, 1].plot(centres, nps, "o", label="NPS measured (flat fields)")
    ax[1, 1].plot(centres, nps_model, "-", label="NPS configured")
    ax[1, 1].plot(centres, dqe_meas, "s", label="DQE measured")
    ax[1, 1].plot(centres, dqe_model, "-", label="DQE = DQE(0)·MTF²/NPS (K3 MTF × sinc)")
    ax[1, 1].set(xlabel="cycles/px", title="counting camera, measured K3 MTF")
    ax[1, 1].legend(fontsize=8)
    rb = radial_bands(raw, (128, 128), np.linspace(0.02, 0.5, 25))
    cb = radial_bands(corr, (128, 128), np.linspace(0.02, 0.5, 25))
    numbers["gain_corrected_nps_over_poisson"] = [round(float(cb.min()), 4), round(float(cb.max()), 4)]
    mid = 0.5 * (np.linspace(0.02, 0.5, 25)[1:] + np.linspace(0.02, 0.5, 25)[:-1])
    ax[1, 2].plot(mid, rb, label=f"raw (ky = 0 line: {float(raw[0, 1:].mean()):.1f})")
    ax[1, 2].plot(mid, cb, label=f"× gain reference (ky = 0 line: {float(corr[0, 1:].mean()):.2f})")
    ax[1, 2].axhline(1, color="k", lw=0.5)
    ax[1, 2].set(xlabel="cycles/px", ylabel="NPS / Poisson", title="flat field: fixed pattern and its removal")
    ax[1, 2].legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    print(json.dumps(numbers, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
