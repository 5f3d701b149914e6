"""Flat membrane sheets in the ice: a horizontal disc, a disc tilted by 45° and a vertical disc (seen edge-on at 0°)
in 50 nm of structured ice, a noise-free tilt pair (0° and 45°; 300 kV, 2 Å/px, 1.5 µm underfocus), the same at 0°
with shot noise, and the edge-on sheet's two leaflets in focus at 1 Å/px against the set head-group separation.

    PYTHONPATH=src python examples/sheets.py --out docs/img/sheets.png

Prints the sheets' ground truth and the leaflet spacing measured in the in-focus image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from difftem import simulate, simulate_tilt_series  # noqa: E402
from difftem.core.rotations import tilt_rotation  # noqa: E402

SHEETS = [{"centre_a": [-150.0, 120.0, 0.0], "radius_nm": 15.0},
          {"centre_a": [170.0, 130.0, 30.0], "normal": [1.0, 0.0, 1.0], "radius_nm": 12.0},
          {"centre_a": [0.0, -150.0, 0.0], "normal": [1.0, 0.0, 0.0], "radius_nm": 18.0}]


def rim_a(sheet: dict, rotation) -> np.ndarray:
    """(2, 100) view (x, y) Å of a disc's rim."""
    n = np.asarray(sheet.get("normal", [0.0, 0.0, 1.0]), dtype=np.float64)
    n /= np.linalg.norm(n)
    e1 = np.cross(n, [0.0, 1.0, 0.0] if abs(n[1]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    t = np.linspace(0, 2 * np.pi, 100)
    pts = np.asarray(sheet["centre_a"])[:, None] + sheet["radius_nm"] * 10 * (np.outer(e1, np.cos(t))
                                                                              + np.outer(e2, np.sin(t)))
    return (np.asarray(rotation) @ pts)[:2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/sheets.png"))
    args = ap.parse_args()
    n, p, dose = 384, 2.0, 60.0
    cfg = {"seed": 5, "beam": {"voltage_kv": 300, "dose_e_per_a2": dose}, "optics": {"defocus_um": 1.5},
           "detector": {"shape_px": [n, n], "pixel_size_a": p, "noise": "poisson"},
           "sample": {"ice_thickness_nm": 50.0, "ice_structure": {"mode": "slices"}, "particles": [],
                      "membrane_sheets": SHEETS},
           "tilt_series": {"scheme": "list", "angles_deg": [0.0, 45.0], "damage": "none", "tilt_axis_deg": 0.0}}
    ts = simulate_tilt_series(cfg)
    print("sheets:", ts.metadata["membrane_sheets"])

    sep_nm = 3.8  # the edge-on sheet alone, in focus, 1 Å/px, noise-free
    focus = simulate({"seed": 3, "optics": {"defocus_um": 0.0}, "beam": {"dose_e_per_a2": 1000},
                      "detector": {"shape_px": [192, 192], "pixel_size_a": 1.0, "noise": "none"},
                      "sample": {"ice_thickness_nm": 30, "ice_structure": {"mode": "off"}, "particles": [],
                                 "membrane_sheets": [{"normal": [1.0, 0.0, 0.0], "radius_nm": 8.0,
                                                      "profile": {"headgroup_separation_nm": sep_nm}}]}})
    img = focus.intensity.double().numpy()
    prof = img[64:128].mean(0)
    k = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    prof = np.convolve(prof, k / k.sum(), mode="same")
    x = np.arange(192) - 96.0
    inner = np.flatnonzero(np.abs(x) < 30)
    idx = sorted(sorted([i for i in inner if prof[i] < prof[i - 1] and prof[i] <= prof[i + 1]],
                        key=lambda i: prof[i])[:2])
    minima = [x[i] + 0.5 * (prof[i - 1] - prof[i + 1]) / (prof[i - 1] - 2 * prof[i] + prof[i + 1]) for i in idx]
    print(f"in focus: leaflet minima at {minima[0]:.2f} and {minima[1]:.2f} Å, spacing {minima[1] - minima[0]:.2f} Å "
          f"(set {sep_nm * 10:g} Å)")

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    x_nm = (np.arange(n) - n // 2) * p / 10
    ext = [x_nm[0], x_nm[-1], x_nm[0], x_nm[-1]]
    panels = [(ts.noiseless[0], 0.0, "0°, noise-free"), (ts.noiseless[1], 45.0, "45° about y, noise-free"),
              (ts.tilts[0], 0.0, f"0°, {dose:g} e/Å² shot noise")]
    for ax, (im, angle, title) in zip(axes[:3], panels, strict=True):
        im = im.double().numpy()
        lo, hi = np.percentile(im, [0.5, 99.5])
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=ext)
        if "noise-free" in title:  # the rims (ground truth turned by the tilt), orange
            for sheet in SHEETS:
                rx, ry = rim_a(sheet, tilt_rotation(angle, 0.0)) / 10
                ax.plot(rx, ry, color="tab:orange", lw=0.6)
            ax.set_xlim(ext[0], ext[1])
            ax.set_ylim(ext[2], ext[3])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x (nm)")
    axes[0].set_ylabel("y (nm)")
    keep = slice(40, -40)
    axes[3].plot(x[keep], prof[keep], color="k")
    for s in (-1, 1):
        axes[3].axvline(s * sep_nm * 5, color="tab:blue", ls=":", lw=1)
    axes[3].set_xlabel("x across the edge-on sheet (Å)")
    axes[3].set_ylabel("intensity (mean along the sheet)")
    axes[3].set_title(f"edge-on, in focus, 1 Å/px: leaflets {minima[1] - minima[0]:.1f} Å apart (set "
                      f"{sep_nm * 10:g} Å)", fontsize=9)
    fig.suptitle("Membrane sheets in 50 nm of structured ice: horizontal, tilted 45° and vertical discs (orange: their "
                 "rims); 300 kV, 2 Å/px, 1.5 µm underfocus. Face-on a bilayer is nearly invisible (heads and core "
                 "cancel); edge-on its leaflets show", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=56)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
