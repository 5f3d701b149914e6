"""The amorphous-ice ring: a noise-free ice-only micrograph (300 kV, 0.85 Å/px, 30 nm, 1 µm underfocus) and its
radial power spectrum with the 3.7 Å ring marked, beside the projected-potential spectrum T·P₃(k) of the model.

    PYTHONPATH=src python examples/ice_spectrum.py --out docs/img/ice_spectrum.png

Prints the ring's height over the bands either side (the figure test_ice.py checks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from difftem import simulate  # noqa: E402
from difftem.forward.ice import projected_ice_power_spectrum, radial_power_spectrum  # noqa: E402
from difftem.forward.scattering import get_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/ice_spectrum.png"))
    ap.add_argument("--shape-px", type=int, default=768)
    ap.add_argument("--thickness-nm", type=float, default=30.0)
    args = ap.parse_args()
    p = 0.85
    cfg = {"seed": 5, "beam": {"voltage_kv": 300, "dose_e_per_a2": 40}, "optics": {"defocus_um": 1.0},
           "detector": {"shape_px": [args.shape_px] * 2, "pixel_size_a": p, "noise": "none", "model": "perfect"},
           "sample": {"ice_thickness_nm": args.thickness_nm}}
    img = simulate(cfg).noiseless
    s, power = radial_power_spectrum(img, p, 200)
    d = 1 / np.maximum(s, 1e-9)

    def band(lo, hi):
        return power[(d >= lo) & (d < hi)].mean()

    ring, outer, inner = band(3.5, 4.2), band(4.5, 6.0), band(3.0, 3.3)
    print(f"ring 3.5–4.2 Å / 4.5–6 Å = {ring / outer:.2f}; / 3.0–3.3 Å = {ring / inner:.2f}")
    model = projected_ice_power_spectrum(torch.as_tensor(s, dtype=torch.float64) ** 2, args.thickness_nm * 10,
                                         get_table("kirkland")).numpy()

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=80)
    crop = img[:256, :256].numpy()
    a0.imshow(crop, cmap="gray")
    a0.set_title(f"ice only, {args.thickness_nm:g} nm, 300 kV, 0.85 Å/px (noise-free)", fontsize=9)
    a0.axis("off")
    keep = s > 0.02
    smooth = np.convolve(power, np.ones(5) / 5, mode="same")
    a1.semilogy(s[keep], smooth[keep] / smooth[keep].max(), label="image (radial mean)")
    a1.semilogy(s[keep], model[keep] / model[keep].max(), "--", label="projected potential T·P₃(k)")
    a1.axvline(1 / 3.7, color="k", lw=0.8, ls=":")
    a1.text(1 / 3.7, 2e-3, " 3.7 Å", fontsize=9)
    a1.axvspan(1 / 4.2, 1 / 3.5, color="0.9")
    a1.set_xlabel("spatial frequency (1/Å)")
    a1.set_ylabel("power (normalised)")
    a1.set_ylim(1e-3, 1.5)
    a1.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
