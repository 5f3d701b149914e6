#!/usr/bin/env python
"""Reproduce the seed paper's MTF-estimation experiments (its Table 1 / Figure 6) and compare estimators.

For each MTF parameter set (TMV; K3 fit; the paper's synthetic set), simulated background-only crops
(flat ice background, Poisson shot noise, then the MTF — the paper's forward model) are fitted by
- Algorithm 1 as published: MSE, and MSE + focal frequency loss with α ∈ {0, 0.5, 1, 2};
- the noise-power-spectrum estimator (difftem's default), with the scale free ("nps") or fixed by the
  known counts per pixel ("nps+dose": NPS = λ·MTF², as Algorithm 1 also knows Ĩ);
with 5, 10, 20 and 50 crops. Metrics, as in the paper, on a noise-free TMV-like projection
(a helical rod of PDB 2OM3 simulated by difftem) filtered by the true and by the fitted MTF, each
scaled to 0–255: mean and max absolute pixel difference; plus the RMS difference of the curves over
[0, 0.5] cycles/px and the per-band table over [0, 0.02), …, [0.48, 0.5). From background crops only
the shape MTF(ω)/MTF(0) is identifiable (scale and sign fold into the gain), so curves are compared
normalised to MTF(0) = 1; for the synthetic set MTF(0) = −0.88, so its raw images are inverted.

    python benchmarks/mtf_paper.py [--crop 256] [--steps 300] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))

from difftem.core.grid import Grid  # noqa: E402
from difftem.core.rotations import rotation_zyz_deg  # noqa: E402
from difftem.forward.beam import interaction_constant, wavelength_a  # noqa: E402
from difftem.forward.detector import MTFParams, apply_mtf, expected_counts  # noqa: E402
from difftem.forward.multislice import multislice  # noqa: E402
from difftem.forward.optics import Optics, image_intensity, transfer_function  # noqa: E402
from difftem.forward.potential import IceModel, SlicedPotential, atoms_to_tensors  # noqa: E402
from difftem.forward.scattering import get_table  # noqa: E402
from difftem.learn.mtf_fit import curve_rms, fit_algorithm1, fit_nps, normalised_curve  # noqa: E402
from difftem.specimen.structure import Atoms, read_structure  # noqa: E402

SETS = {
    "TMV": MTFParams(0.7, 0.2, 0.1, 10, 40),
    "K3": MTFParams(0.6, 1.24, -0.84, 0.97, 0.97),
    "synthetic": MTFParams(-2.86, 2.113, -0.1318, 57.288, 25.429),
}
BANDS = np.arange(0, 0.5 + 1e-9, 0.02)


def tmv_rod(length_a: float = 300.0) -> Atoms:
    """A TMV-like rod: 2OM3's subunit (first model) repeated with 1.408 Å rise and 22.04° twist, lying along x."""
    unit = read_structure(SHARED / "structures" / "2om3_tmv_cssmol.pdb.gz", models="first", centre="none")
    n = int(length_a / 1.408)
    parts = [unit.transformed(rotation_zyz_deg(22.04 * k, 0, 0), np.array([0.0, 0.0, 1.408 * k])) for k in range(n)]
    rod = Atoms.concatenate(parts).centred("bbox")
    return rod.transformed(rotation_zyz_deg(0, 90, 0))  # helix axis z → x


def noise_free_projection(n_px: int = 256, pixel_a: float = 2.0, dose: float = 40.0) -> torch.Tensor:
    """Expected counts before the MTF of the TMV-like rod in 20 nm ice at 300 kV, 2 µm underfocus."""
    atoms = tmv_rod()
    grid = Grid((n_px, n_px), pixel_a)
    ice = IceModel(thickness_a=200.0)
    pot = SlicedPotential(*atoms_to_tensors(atoms), grid, get_table("kirkland"), 4.0, ice)
    lam, sigma = wavelength_a(300), interaction_constant(300)
    with torch.no_grad():
        wave = multislice(pot, lam, sigma)
        z_exit = pot.z_start_a + pot.n_slices * pot.slice_thickness_a
        h = transfer_function(grid, lam, 300, Optics(defocus_a=20000.0 + z_exit, cs_mm=2.7, cc_mm=2.7,
                                                     energy_spread_ev=0.8, illumination_semiangle_mrad=0.02))
        return expected_counts(image_intensity(wave, h), dose, pixel_a).double()


def to_255(x: torch.Tensor) -> torch.Tensor:
    return 255 * (x - x.min()) / (x.max() - x.min())


def projection_metrics(image: torch.Tensor, truth: MTFParams, fit: MTFParams) -> tuple[float, float]:
    """Mean/max |true − fitted| of the noise-free projection after each MTF, both scaled to 0–255
    (curves normalised to MTF(0) = 1, the identifiable part)."""
    norm = lambda p: MTFParams(*(v / float(p(torch.zeros((), dtype=torch.float64))) for v in (p.a, p.b, p.c)),  # noqa: E731
                               p.alpha, p.beta)
    a = to_255(apply_mtf(image, norm(truth), normalize_dc=False))
    b = to_255(apply_mtf(image, norm(fit), normalize_dc=False))
    d = (a - b).abs()
    return float(d.mean()), float(d.max())


def band_errors(truth: MTFParams, fit: MTFParams) -> list[float]:
    out = []
    for lo, hi in pairwise(BANDS):
        w = torch.linspace(lo, hi, 9, dtype=torch.float64)
        out.append(float((normalised_curve(truth, w) - normalised_curve(fit, w)).abs().mean()))
    return out


def band_contribution(image: torch.Tensor) -> list[float]:
    """Fraction of the projection's spectral magnitude in each band (the paper's 'contribution')."""
    from difftem.core.fft import rfft2
    from difftem.forward.detector import radial_frequency_per_px

    mag = rfft2(image - image.mean()).abs()
    w = radial_frequency_per_px(tuple(image.shape))
    tot = float(mag[w < 0.5].sum())
    return [float(mag[(w >= lo) & (w < hi)].sum()) / tot for lo, hi in pairwise(BANDS)]


def background(mtf: MTFParams, n: int, crop: int, counts: float, seed: int) -> torch.Tensor:
    """Crops cut from the middle of larger simulated detector images (like crops of a real micrograph)."""
    g = torch.Generator().manual_seed(seed)
    rate = torch.full((n, 2 * crop, 2 * crop), counts, dtype=torch.float64)
    full = apply_mtf(torch.poisson(rate, generator=g), mtf, normalize_dc=False)
    return full[:, crop // 2:crop // 2 + crop, crop // 2:crop // 2 + crop]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--counts", type=float, default=100.0, help="background counts per pixel (40 e/Å² × 2² Å² × ice)")
    ap.add_argument("--quick", action="store_true", help="5 and 50 crops, α ∈ {1} only")
    ap.add_argument("--alg1-crops", type=int, nargs="+", default=None,
                    help="crop counts at which Algorithm 1 runs (default: all); the NPS estimator runs at every count")
    ap.add_argument("--nps-only", action="store_true", help="only the NPS estimator (fast)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.out is None:
        a.out = ROOT / "benchmarks" / "results" / ("mtf_paper_nps.json" if a.nps_only else "mtf_paper.json")
    torch.set_num_threads(2)
    t = time.perf_counter()
    image = noise_free_projection()
    print(f"noise-free TMV-like projection: {tuple(image.shape)} in {time.perf_counter() - t:.1f} s")
    contribution = band_contribution(image)
    counts_list = [5, 50] if a.quick else [5, 10, 20, 50]
    alphas = [1.0] if a.quick else [0.0, 0.5, 1.0, 2.0]
    rows = []
    head = f"{'set':<10} {'crops':>5} {'method':<22} {'curve RMS':>9} {'mean|Δ|':>8} {'max|Δ|':>8} {'time s':>7}"
    print(head)
    print("-" * len(head))
    for name, truth in SETS.items():
        for n in counts_list:
            crops = background(truth, n, a.crop, a.counts, seed=n)
            fits = [("nps", lambda crops=crops: fit_nps(crops)),
                    ("nps+dose", lambda crops=crops: fit_nps(crops, counts_per_px=a.counts))]
            if not a.nps_only and (a.alg1_crops is None or n in a.alg1_crops):
                def alg1(al, crops=crops):
                    return fit_algorithm1(crops, a.counts, ffl_alpha=al, steps=a.steps,
                                          generator=torch.Generator().manual_seed(0))

                fits.append(("alg1 MSE", lambda alg1=alg1: alg1(None)))
                fits += [(f"alg1 MSE+FFL a={al:g}", lambda al=al, alg1=alg1: alg1(al)) for al in alphas]
            for label, run in fits:
                fit = run()
                rms = curve_rms(fit.params, truth)
                mean_d, max_d = projection_metrics(image, truth, fit.params)
                rows.append({"set": name, "crops": n, "method": label, "params": fit.params.__dict__,
                             "curve_rms": rms, "mean_abs_diff_255": mean_d, "max_abs_diff_255": max_d,
                             "seconds": fit.seconds, "band_abs_error": band_errors(truth, fit.params)})
                print(f"{name:<10} {n:>5} {label:<22} {rms:9.4f} {mean_d:8.3f} {max_d:8.3f} {fit.seconds:7.1f}",
                      flush=True)
    print("\nper-band |ΔMTF/MTF(0)| with 50 crops (NPS+dose estimator | best Algorithm-1 variant) "
          "and the band's share of the projection's spectral magnitude")
    print(f"{'band (cycles/px)':<16} {'share':>6} " + " ".join(f"{s:>17}" for s in SETS))
    best = {}
    for s in SETS:
        r50 = [r for r in rows if r["set"] == s and r["crops"] == max(counts_list)]
        alg = [r for r in r50 if not r["method"].startswith("nps")]
        nps = next(r for r in r50 if r["method"] == "nps+dose")
        best[s] = (nps, min(alg, key=lambda r: r["curve_rms"]) if alg else nps)
    for i, (lo, hi) in enumerate(pairwise(BANDS)):
        cells = " ".join(f"{best[s][0]['band_abs_error'][i]:8.4f}|{best[s][1]['band_abs_error'][i]:8.4f}" for s in SETS)
        print(f"[{lo:.2f}, {hi:.2f})     {contribution[i]:6.3f} {cells}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"crop_px": a.crop, "steps": a.steps, "background_counts": a.counts,
                                 "band_edges": BANDS.tolist(), "band_share": contribution, "rows": rows}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
