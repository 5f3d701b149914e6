"""Fit-ctf and calibrate on the real micrographs in ../shared/data/micrographs; copies the figures into docs/img.

    python examples/calibrate_real.py --out calibrate_demo [--docs docs/img]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from difftem.calibrate.ctf_run import run_fit_ctf
from difftem.calibrate.run import run_calibrate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "micrographs"
CASES = {  # name: (file, energy filter, nominal dose e/Å² or None, particles STRUCTURE:COUNT to start from)
    # the EF-CCD sits behind an energy filter; the Falcon does not, so (no aperture, inelastic electrons kept) its
    # counts carry no thickness: its nominal 41 e/Å² is not used
    "efccd": ("real_micrograph_efccd_crop2048.mrc.gz", True, None, "5a1a_betagal.cif.gz:8"),
    "falcon": ("real_micrograph_falcon_epu_crop2048.mrc.gz", False, None, "5a1a_betagal.cif.gz:20"),
}
STRUCTURES = DATA.parent / "structures"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("calibrate_demo"))
    ap.add_argument("--docs", type=Path, default=None, help="copy the figures here (e.g. docs/img)")
    ap.add_argument("--no-particles", action="store_true", help="calibrate with ice and detector alone")
    a = ap.parse_args()
    summary = {}
    for name, (file, energy_filter, dose, particles) in CASES.items():
        path = DATA / file
        ctf = run_fit_ctf([path], a.out / f"{name}_ctf", overwrite=True)
        parts = None
        if not a.no_particles:  # a start count: calibrate fits it to the low-frequency power
            structure, count = particles.rsplit(":", 1)
            parts = [{"structure": str(STRUCTURES / structure), "random": {"count": int(count)}}]
        cal = run_calibrate([path], a.out / f"{name}_calibrated", energy_filter=energy_filter, dose_e_per_a2=dose,
                            particles=parts, overwrite=True)
        rec = cal["micrographs"][0]
        summary[name] = {"ctf": ctf["fits"][0], "likeness": rec["likeness"], "ice": rec["ice"],
                         "dose_e_per_a2": rec["dose_e_per_a2"], "gain": rec["detector"]["gain_units_per_e"]}
        b = rec["likeness"]["bands"]
        print(f"{name}: U {ctf['fits'][0]['defocus_u_a']:.0f} V {ctf['fits'][0]['defocus_v_a']:.0f} Å; worst band "
              f"{b['worst_ratio']:.3f} at {b['worst_band_per_px']:.3f}/px; classifier "
              f"{rec['likeness']['classifier']['accuracy']:.2f}; ice {rec['ice']['thickness_nm']:.0f} nm "
              f"({rec['ice']['thickness_from']}), amplitude {rec['ice']['structure_amplitude']:.3f}, particles "
              f"{rec['ice']['particle_count']}")
        if a.docs:
            a.docs.mkdir(parents=True, exist_ok=True)
            stem = file.replace(".mrc.gz", "")
            shutil.copy(a.out / f"{name}_ctf" / f"{stem}_ctf.png", a.docs / f"ctf_{name}.png")
            shutil.copy(a.out / f"{name}_calibrated" / f"{stem}_report.png", a.docs / f"calibrate_{name}.png")
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
