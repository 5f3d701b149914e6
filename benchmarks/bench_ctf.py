"""CTF fits side by side: difftem's fit-ctf against ASPIRE's CtfEstimator (an independent estimator, run in its own
environment) on the real micrographs of known pixel size and on micrographs of known CTF made with the project's
lens; plus the real ribosome tilt set against its STAR's per-tilt defocus. Prints a table, writes JSON.

    python benchmarks/bench_ctf.py --aspire-python /path/to/aspire-venv/bin/python [--threads 1,2]

Without --aspire-python only difftem's side runs. Times: min and median of interleaved repeats.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DATA = ROOT.parent / "shared" / "data"

from ctf_helpers import ctf_micrograph  # noqa: E402

from difftem.io.files import write_mrc  # noqa: E402
from difftem.io.tlt import read_mrc_checked  # noqa: E402
from difftem.learn.ctf_fit import fit_ctf  # noqa: E402

ASPIRE_RUNNER = r"""
import json, sys, time, numpy as np
from aspire.ctf import estimate_ctf
folder, px, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
r = estimate_ctf(folder, pixel_size=px, cs=2.7, amplitude_contrast=0.07, voltage=300, psd_size=512, g_min=30, g_max=5,
                 output_dir=out)
dt = time.perf_counter() - t
res = {k: {"u": float(v["defocus_u"]), "v": float(v["defocus_v"]), "angle_deg": float(np.degrees(v["defocus_ang"]))}
       for k, v in r.items()}
print(json.dumps({"seconds": dt, "fits": res}))
"""

SIMULATED = [  # (name, pixel Å, U Å, V Å, angle °)
    ("sim_1", 1.0, 10500.0, 9500.0, 30.0),
    ("sim_2", 0.85, 21500.0, 20000.0, -50.0),
    ("sim_3", 1.2, 31000.0, 30000.0, 75.0),
]


def aspire(python: str, mrc: Path, px: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "in"
        folder.mkdir()
        (folder / "m.mrc").symlink_to(mrc)
        proc = subprocess.run([python, "-c", ASPIRE_RUNNER, str(folder), str(px), str(Path(d) / "out")],
                              capture_output=True, text=True, timeout=1800, cwd=d)
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        return {**r["fits"]["m.mrc"], "seconds": r["seconds"]}


def ours(img, px: float) -> dict:
    t = time.perf_counter()
    f = fit_ctf(img, px, bootstrap=4)
    return {"u": f.defocus_u_a, "v": f.defocus_v_a, "angle_deg": f.defocus_angle_deg,
            "seconds": time.perf_counter() - t, "sd_mean": f.defocus_sd_a, "sd_astig": f.astigmatism_sd_a,
            "fit_resolution_a": f.fit_resolution_a}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--aspire-python", default=None)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ctf_fit.json"))
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmpd:
        cases = []
        for name in ("real_micrograph_efccd_crop2048.mrc.gz", "real_micrograph_falcon_epu_crop2048.mrc.gz"):
            img, px = read_mrc_checked(DATA / "micrographs" / name)
            path = Path(tmpd) / name.replace(".mrc.gz", ".mrc")
            write_mrc(path, img, px)
            cases.append((name.split("_")[2], img, px, path, None))
        for name, px, u, v, ang in SIMULATED:
            img = ctf_micrograph(2048, px, u, v, ang, dose_e_per_a2=15.0, seed=len(cases)).numpy().astype(np.float32)
            path = Path(tmpd) / f"{name}.mrc"
            write_mrc(path, img, px)
            cases.append((name, img, px, path, (u, v, ang)))
        for name, img, px, path, truth in cases:
            row = {"case": name, "pixel_a": px, "truth": truth, "difftem": {}, "aspire": None}
            times = {t: [] for t in threads}
            for _ in range(a.repeats):  # interleaved: each repeat runs every thread count
                for t in threads:
                    torch.set_num_threads(t)
                    r = ours(img, px)
                    times[t].append(r.pop("seconds"))
                    row["difftem"] = r
            row["difftem_seconds"] = {t: {"min": min(v), "median": float(np.median(v))} for t, v in times.items()}
            if a.aspire_python:
                row["aspire"] = aspire(a.aspire_python, path, px)
            rows.append(row)
            print_row(row)
    ribo = ribosome()
    out = {"machine": "2 cores, shared with other jobs", "rows": rows, "ribosome": ribo}
    Path(a.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {a.out}")


def _mean_astig(u, v):
    return 0.5 * (u + v), u - v


def print_row(r) -> None:
    d = r["difftem"]
    m, s = _mean_astig(d["u"], d["v"])
    line = f"{r['case']:>8} px {r['pixel_a']:.3f} | difftem mean {m:8.0f} astig {s:6.0f} ang {d['angle_deg']:6.1f}"
    line += " " + " ".join(f"{t}thr {v['min']:.2f}/{v['median']:.2f}s" for t, v in r["difftem_seconds"].items())
    if r["aspire"] and "u" in r["aspire"]:
        am, asg = _mean_astig(r["aspire"]["u"], r["aspire"]["v"])
        line += (f" | ASPIRE mean {am:8.0f} astig {asg:6.0f} ang {r['aspire']['angle_deg']:6.1f} "
                 f"{r['aspire']['seconds']:.1f}s | mean diff {100 * (m / am - 1):+.2f}%")
    elif r["aspire"]:
        line += f" | ASPIRE {r['aspire']}"
    if r["truth"]:
        tm, ts = _mean_astig(*r["truth"][:2])
        line += f" | truth mean {tm:.0f} astig {ts:.0f} ang {r['truth'][2]:.1f}: difftem {100 * (m / tm - 1):+.2f}%"
    print(line, flush=True)


def ribosome() -> dict:
    """Per-tilt fits of the real ribosome particle tilts against the STAR's defocus, and the reason they cannot
    match: where the first CTF zero lies against the data's Nyquist."""
    from difftem.calibrate.ctf_run import run_fit_ctf
    from difftem.forward.beam import wavelength_a

    with tempfile.TemporaryDirectory() as d:
        rep = run_fit_ctf([DATA / "tilts" / "ribosome_particle_tilts_bin8.star"], Path(d) / "r",
                          stack=DATA / "tilts" / "ribosome_particle_tilts_bin8.mrcs.gz", pixel_size_a=14.6,
                          plots="none", bootstrap=0)
    ref = np.array([r["reference_defocus_mean_a"] for r in rep["fits"]])
    lam = wavelength_a(300.0)
    first_zero_a = 1 / math.sqrt((math.pi - math.asin(0.07)) / (math.pi * lam * ref.mean()))
    out = {"n_tilts": len(rep["fits"]), "summary": rep["summary"], "reference_mean_defocus_a": float(ref.mean()),
           "first_ctf_zero_a": first_zero_a, "nyquist_a": 2 * 14.6,
           "rings_in_band": [r["rings_in_band"] for r in rep["fits"]]}
    print(f"ribosome tilts: {out['n_tilts']} tilts, median |error| {rep['summary']['abs_error_percent_median']:.0f} %; "
          f"first CTF zero at {first_zero_a:.1f} Å vs Nyquist {2 * 14.6:.1f} Å: defocus not determined by these data")
    return out


if __name__ == "__main__":
    main()
