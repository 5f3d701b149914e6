"""Explicit pseudo-water against the structured ice's spectrum formula: water molecules as atoms in a relaxed
periodic box (O–O contact 2.75 Å, 0.0334 molecules/Å³, random orientations), their own S(q) put into
P₃ = n C² [F₂ − F₁² + F₁² S(q)], against the power spectrum of the same atoms projected by the exact atom path.

    PYTHONPATH=src python examples/pseudo_water.py --out docs/img/pseudo_water.png

Prints the per-band ratio explicit / formula (what tests/test_pseudo_water.py checks) and the configuration's ring
beside LDA ice's.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from difftem.core.grid import Grid  # noqa: E402
from difftem.forward.camera import radial_bands  # noqa: E402
from difftem.forward.ice import (  # noqa: E402
    LDA_NUMBER_DENSITY_PER_A3,
    amorphous_ice_structure_factor,
    ice_power_spectrum_3d,
)
from difftem.forward.scattering import get_table  # noqa: E402
from difftem.forward.water_spectra import pseudo_water_spectra  # noqa: E402

S_EDGES = np.arange(0.0, 0.8501, 0.0125)
BANDS = np.r_[0.10, np.arange(0.20, 0.7501, 0.05)]


def one_box(box, pixel_a, seed, table):
    """A box's explicit and formula spectra (its own S), the formula with the LDA ice's S, its S, the grid shape."""
    explicit, own, s_band = pseudo_water_spectra(box, pixel_a, seed, table, S_EDGES)
    shape = (round(box[1] / pixel_a), round(box[0] / pixel_a))
    k2 = Grid(shape, pixel_a).k2("cpu", torch.float64, half=True)
    lda = box[2] * ice_power_spectrum_3d(k2, table, density_per_a3=LDA_NUMBER_DENSITY_PER_A3)
    return explicit, own, lda, s_band, shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/pseudo_water.png"))
    ap.add_argument("--box-a", type=float, nargs=3, default=(40.0, 40.0, 30.0))
    ap.add_argument("--boxes", type=int, default=6)
    args = ap.parse_args()
    box, p, table = tuple(args.box_a), 0.5, get_table("kirkland")
    t0 = time.perf_counter()
    runs = [one_box(box, p, seed, table) for seed in range(args.boxes)]
    shape = runs[0][4]
    fine = np.arange(0.05, 0.8001, 0.025)
    e_f, o_f, l_f = (np.mean([radial_bands(r[i], shape, fine * p) for r in runs], 0) for i in range(3))
    e_b, o_b = (np.mean([radial_bands(r[i], shape, BANDS * p) for r in runs], 0) for i in range(2))
    s_mean = np.mean([r[3] for r in runs], 0)
    ratio = e_b / o_b
    k_mid = 0.5 * (S_EDGES[1:] + S_EDGES[:-1])
    q_peak = 2 * math.pi * k_mid[np.argmax(s_mean)]
    q = torch.linspace(0.3, 5.3, 2000, dtype=torch.float64)
    s_lda = amorphous_ice_structure_factor(q).numpy()
    q_lda = float(q[np.argmax(s_lda)])
    kf = 0.5 * (fine[1:] + fine[:-1])
    print(f"{args.boxes} boxes of {box} Å, {time.perf_counter() - t0:.1f} s")
    print("explicit / formula per band (1/Å):")
    for lo, hi, r in zip(BANDS[:-1], BANDS[1:], ratio, strict=True):
        print(f"  {lo:.2f}–{hi:.2f}  {r:.3f}")
    print(f"ratio range {ratio.min():.3f}–{ratio.max():.3f}, mean {ratio.mean():.3f}")
    print(f"S(q) first peak: pseudo-water q = {q_peak:.2f} 1/Å (d = {2 * math.pi / q_peak:.2f} Å, S = "
          f"{s_mean.max():.2f}); LDA ice q = {q_lda:.2f} 1/Å (d = {2 * math.pi / q_lda:.2f} Å)")
    print(f"projected spectrum peak: explicit at d = {1 / kf[np.argmax(e_f)]:.2f} Å, "
          f"LDA field at d = {1 / kf[np.argmax(l_f)]:.2f} Å")

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    low = k_mid >= 0.05  # the box holds too few vectors below (its first shells)
    ax[0].plot(2 * math.pi * k_mid[low], s_mean[low], label="pseudo-water (measured)")
    ax[0].plot(q.numpy(), s_lda, label="LDA ice (default field)")
    ax[0].set(xlabel="q (1/Å)", ylabel="S(q)", title="structure factor of the molecular centres")
    ax[0].legend(fontsize=8)
    ax[1].semilogy(kf, e_f, "o", ms=3, label="explicit atoms, exact projection")
    ax[1].semilogy(kf, o_f, label="formula with its own S(q)")
    ax[1].semilogy(kf, l_f, "--", label="formula with LDA S(q) (default)")
    ax[1].set(xlabel="k (1/Å)", ylabel="T·P₃ (V²Å⁴)", title=f"projected potential, {box[2]:g} Å deep")
    ax[1].legend(fontsize=8)
    mid_b = 0.5 * (BANDS[1:] + BANDS[:-1])
    ax[2].plot(mid_b, ratio, "o-")
    ax[2].axhspan(0.88, 1.12, color="0.9")
    ax[2].axhline(1, color="k", lw=0.5)
    ax[2].set(xlabel="k (1/Å)", ylabel="explicit / formula", ylim=(0.7, 1.3),
              title=f"per band, {args.boxes} boxes (test ±12 %)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
