"""Lipid vesicles in the ice: the bilayer's potential profile, a noise-free tilt pair (0° and 45°) of seeded vesicles
among ubiquitins (300 kV, 2 Å/px, 1.5 µm underfocus, 70 nm structured ice), the same at 0° with shot noise, and the
two leaflets across a rim in focus (1 Å/px) against the configured head-group separation.

    PYTHONPATH=src python examples/vesicles.py --out docs/img/vesicles.png

Prints the vesicles' ground truth, their outlines' centres at 45° from tilt_rotation, and the leaflet spacing
measured in the in-focus image against the set value.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from difftem import simulate, simulate_tilt_series  # noqa: E402
from difftem.config import config_from_dict  # noqa: E402
from difftem.core.rotations import tilt_rotation  # noqa: E402
from difftem.specimen.membranes import Bilayer  # noqa: E402


def rim_profile(img: np.ndarray, centre_px, pixel_a: float, radius_a: float, step_a: float = 0.25):
    """Radially averaged intensity about ``centre_px``, ±60 Å about ``radius_a`` (bins of ``step_a``)."""
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx]
    d = np.hypot((yy - centre_px[0]) * pixel_a, (xx - centre_px[1]) * pixel_a).ravel()
    sel = np.abs(d - radius_a) < 60
    nb = int(120 / step_a) + 1
    bins = np.round((d[sel] - (radius_a - 60)) / step_a).astype(int)
    total, count = np.bincount(bins, img.ravel()[sel], nb), np.bincount(bins, minlength=nb)
    prof = np.interp(np.arange(nb), np.flatnonzero(count), (total / np.maximum(count, 1))[count > 0])
    k = np.arange(-16, 17) * step_a
    g = np.exp(-0.5 * k**2)  # low-pass: σ = 1 Å
    return radius_a - 60 + np.arange(nb) * step_a, np.convolve(prof, g / g.sum(), mode="same")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/vesicles.png"))
    ap.add_argument("--shape-px", type=int, default=448)
    args = ap.parse_args()
    n, p, dose = args.shape_px, 2.0, 60.0
    ves = {"count": 5, "radius_nm": 12.0, "radius_sd_nm": 3.0, "radius_min_nm": 7.0, "radius_max_nm": 18.0}
    cfg = {"seed": 21, "beam": {"voltage_kv": 300, "dose_e_per_a2": dose}, "optics": {"defocus_um": 1.5},
           "detector": {"shape_px": [n, n], "pixel_size_a": p, "noise": "poisson", "model": "perfect"},
           "sample": {"ice_thickness_nm": 70.0, "ice_structure": {"mode": "slices"},
                      "particles": [{"structure": "builtin:1ubi", "random": {"count": 12}}], "vesicles": ves},
           "tilt_series": {"scheme": "list", "angles_deg": [0.0, 45.0], "damage": "none", "tilt_axis_deg": 0.0}}
    ts = simulate_tilt_series(cfg)
    truth = ts.metadata["vesicles"]
    centres, radii = np.asarray(truth["centres_a"]), np.asarray(truth["radii_a"])
    for c, r in zip(centres, radii, strict=True):
        m = tilt_rotation(45.0, 0.0) @ c
        print(f"vesicle centre ({c[0]:7.1f}, {c[1]:7.1f}, {c[2]:6.1f}) Å, radius {r / 10:5.2f} nm; "
              f"at 45°: ({m[0]:7.1f}, {m[1]:7.1f}) Å")

    # the leaflets in focus at 1 Å/px (noise-free): one vesicle of 15 nm
    sep_nm = 3.8
    focus = simulate({"seed": 3, "optics": {"defocus_um": 0.0}, "beam": {"dose_e_per_a2": 1000},
                      "detector": {"shape_px": [384, 384], "pixel_size_a": 1.0, "noise": "none",
                                   "model": "perfect"},
                      "sample": {"ice_thickness_nm": 50, "ice_structure": {"mode": "off"}, "particles": [],
                                 "vesicles": {"centres_a": [[0.0, 0.0, 20.0]], "radius_nm": 15.0,
                                              "profile": {"headgroup_separation_nm": sep_nm}}}})
    rad, prof = rim_profile(focus.intensity.double().numpy(), (192, 192), 1.0, 150.0)
    inner = (rad > 115) & (rad < 185)
    idx = [i for i in np.flatnonzero(inner)[1:-1] if prof[i] < prof[i - 1] and prof[i] <= prof[i + 1]]
    idx = sorted(sorted(idx, key=lambda i: prof[i])[:2])
    minima = [rad[i] + 0.25 * 0.5 * (prof[i - 1] - prof[i + 1]) / (prof[i - 1] - 2 * prof[i] + prof[i + 1])
              for i in idx]
    print(f"in focus: leaflet minima at {minima[0]:.2f} and {minima[1]:.2f} Å, spacing {minima[1] - minima[0]:.2f} Å "
          f"(set {sep_nm * 10:g} Å)")

    fig, axes = plt.subplots(1, 5, figsize=(20, 4.2), gridspec_kw={"width_ratios": [0.9, 1, 1, 1, 0.9]})
    bil = Bilayer.from_config(config_from_dict({"sample": {"vesicles": {}}}).sample.vesicles.profile)
    u = torch.linspace(-35, 35, 701, dtype=torch.float64)
    axes[0].plot(u.numpy(), bil.potential_v(u).numpy(), color="k")
    for s in (-1, 1):
        axes[0].axvline(s * bil.separation_a / 2, color="tab:blue", ls=":", lw=1)
    axes[0].axhline(0, color="0.6", lw=0.8)
    axes[0].set_xlabel("distance from the mid-plane (Å)")
    axes[0].set_ylabel("ΔV relative to the ice (V)")
    axes[0].set_title("default bilayer profile (head groups 38 Å apart)", fontsize=9)
    x_nm = (np.arange(n) - n // 2) * p / 10
    ext = [x_nm[0], x_nm[-1], x_nm[0], x_nm[-1]]
    panels = [(ts.noiseless[0], 0.0, "0°, noise-free"), (ts.noiseless[1], 45.0, "45°, noise-free"),
              (ts.tilts[0], 0.0, f"0°, {dose:g} e/Å² shot noise")]
    for ax, (img, angle, title) in zip(axes[1:4], panels, strict=True):
        img = img.double().numpy()
        lo, hi = np.percentile(img, [0.5, 99.5])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=ext)
        if "noise-free" in title:
            moved = centres @ tilt_rotation(angle, 0.0).T
            t = np.linspace(0, 2 * np.pi, 100)
            for (cx, cy, _), r in zip(moved, radii, strict=True):
                ax.plot((cx + (r + 40) * np.cos(t)) / 10, (cy + (r + 40) * np.sin(t)) / 10, color="tab:orange",
                        lw=0.6)
        ax.set_xlim(ext[0], ext[1])
        ax.set_ylim(ext[2], ext[3])
        ax.set_title(title + (" (orange: ground truth × tilt rotation)" if "noise-free" in title else ""),
                     fontsize=9)
        ax.set_xlabel("x (nm)")
    axes[1].set_ylabel("y (nm)")
    keep = slice(24, -24)  # the smoothing's ends
    axes[4].plot(rad[keep] / 10, prof[keep], color="k")
    for s in (-1, 1):
        axes[4].axvline(15 + s * sep_nm / 2, color="tab:blue", ls=":", lw=1)
    axes[4].set_xlabel("distance from the vesicle's centre (nm)")
    axes[4].set_ylabel("intensity (radial mean, low-passed 1 Å)")
    axes[4].set_title(f"in focus, 1 Å/px: leaflets {minima[1] - minima[0]:.1f} Å apart (set {sep_nm * 10:g} Å)",
                      fontsize=9)
    fig.suptitle("Lipid vesicles in 70 nm of structured ice among ubiquitins; 300 kV, 2 Å/px, 1.5 µm underfocus",
                 fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=56)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
