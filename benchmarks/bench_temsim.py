#!/usr/bin/env python
"""difftem vs TEM-simulator 1.3 on TEM-simulator's TMV example input: wall time, CPU time, peak memory, agreement.

The example (three TMV fragments in 50 nm of ice, 61 tilts from −60° to 60°, 200 kV, 400² pixels of
5 Å, a noisy and a noise-free detector) is written into a scratch folder together with its data files:
the coordinate file of the example (positions in nm, z-x-z Euler angles), the 2OM3 subunit
(shared/data/structures/2om3_tmv_cssmol.pdb.gz, unzipped: TEM-simulator reads plain PDB only) and a
transform file. The example's own 2OM3_transf.txt is not available, so an equivalent one is generated
from TMV's helical parameters (rise 1.408 Å, twist +22.04°, i.e. 49 subunits per 3 turns; axis = the
PDB z axis, which 2OM3 uses) in TEM-simulator's 4-column format; both programs read the same file.

Each program runs in its own process on the same input: TEM-simulator (single-threaded C) via
``--temsim PATH``, difftem as ``difftem simulate tmv.inp`` (torch on ``--threads`` threads).
Peak RSS and CPU time come from the kernel (wait4) for each process. The noise-free stacks are
compared tilt by tilt: correlation after removing each image's smooth background (σ = 20 px), the
ratio of mean counts and of contrast (std). Without ``--temsim`` (or if the file is absent) only
difftem runs. Prints a table and writes benchmarks/results/temsim.json. Timings on a shared machine
are noisy: re-measure on an idle one.

    python benchmarks/bench_temsim.py --temsim /path/to/TEM-simulator           # the full example
    python benchmarks/bench_temsim.py --temsim /path/to/TEM-simulator --ntilts 3  # quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PDB_GZ = ROOT.parent / "shared" / "data" / "structures" / "2om3_tmv_cssmol.pdb.gz"
RISE_A, TWIST_DEG = 1.408, 22.04  # TMV: 49 subunits in 3 turns

# TEM-simulator's TMV example (its parameter values); file names are relative to the work folder
EXAMPLE = """\
=== simulation ===
generate_micrographs = yes
log_file = simulator.log
rand_seed = {seed}
=== sample ===
diameter = 1000
thickness_edge = 100
thickness_center = 50
=== particle TMV ===
source = pdb
pdb_file_in = 2OM3.pdb
pdb_transf_file_in = 2OM3_transf.txt
voxel_size = 0.1
map_file_re_out = 2OM3_map.mrc
map_file_im_out = 2OM3_abs_map.mrc
=== particleset ===
particle_type = TMV
particle_coords = file
coord_file_in = TMV_coord.txt
=== geometry ===
gen_tilt_data = yes
ntilts = {ntilts}
theta_start = {theta_start}
theta_incr = {theta_incr}
geom_errors = none
=== electronbeam ===
acc_voltage = 200
energy_spread = 1.3
gen_dose = yes
total_dose = {total_dose}
=== optics ===
magnification = 30000
cs = 2
cc = 2
aperture = 50
focal_length = 3
cond_ap_angle = 0.1
gen_defocus = yes
defocus_nominal = 5
=== detector ===
det_pix_x = 400
det_pix_y = 400
pixel_size = 15
gain = 10
use_quantization = yes
dqe = 0.4
mtf_a = 0.7
mtf_b = 0.2
mtf_c = 0.1
mtf_alpha = 10
mtf_beta = 40
image_file_out = tiltseries.mrc
=== detector ===
det_pix_x = 400
det_pix_y = 400
pixel_size = 15
gain = 10
use_quantization = no
dqe = 0.4
mtf_a = 0.7
mtf_b = 0.2
mtf_c = 0.1
mtf_alpha = 10
mtf_beta = 40
image_file_out = tiltseries_nonoise.mrc
"""

# the example's particle coordinates: x y z (nm), phi theta psi (deg); rod axes along z, y and x
COORDS = """\
# three TMV fragments: axis along the beam (z), along y (90 deg about x), along x (then 90 deg about z)
3 6
-50  5  0  0   0   0
  0  5  0  0  90   0
 50  5  0  0  90  90
"""


def transform_file_text(n_subunits: int) -> str:
    """TEM-simulator 4-column transform file: subunit k turned by k·twist about z and raised by k·rise."""
    lines = [f"# TMV helix generated from its helical parameters: rise {RISE_A} A, twist {TWIST_DEG} deg "
             f"(49 subunits per 3 turns), {n_subunits} subunits; rows of [R | t], t in A", f"{3 * n_subunits} 4"]
    for k in range(n_subunits):
        a = math.radians(TWIST_DEG * k)
        c, s = math.cos(a), math.sin(a)
        lines += [f"{c:.10f} {-s:.10f} 0 0", f"{s:.10f} {c:.10f} 0 0", f"0 0 1 {RISE_A * k:.6f}"]
    return "\n".join(lines) + "\n"


def prepare(work: Path, ntilts: int, subunits: int, seed: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    theta_incr = 2.0 if ntilts == 61 else (120.0 / (ntilts - 1) if ntilts > 1 else 0.0)
    theta_start = -60.0 if ntilts > 1 else 0.0
    total = 6000.0 * ntilts / 61  # the example's dose per image (6000 e/nm² over 61 images)
    inp = work / "tmv.inp"
    inp.write_text(EXAMPLE.format(seed=seed, ntilts=ntilts, theta_start=f"{theta_start:g}",
                                  theta_incr=f"{theta_incr:g}", total_dose=f"{total:g}"))
    (work / "TMV_coord.txt").write_text(COORDS)
    (work / "2OM3_transf.txt").write_text(transform_file_text(subunits))
    (work / "2OM3.pdb").write_bytes(gzip.decompress(PDB_GZ.read_bytes()))
    return inp


def run_measured(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run a command; wall time, CPU time and peak RSS of that process (from wait4)."""
    t = time.perf_counter()
    with open(log or os.devnull, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "exit_code": code}


def worker(inp: Path, out: Path, threads: int, placement: str) -> None:
    """difftem's side, in its own process: translate and simulate the .inp, write every output."""
    import torch

    torch.set_num_threads(threads)
    from difftem.io.files import write_json
    from difftem.simulate.output import run_and_write
    from difftem.temsim import load_inp

    t = time.perf_counter()
    cfg = load_inp(inp).config
    if placement != "translated":
        cfg.simulation.map_placement = placement
    run = run_and_write(cfg, out, set())
    write_json(out / "bench_worker.json", {"translate_and_total_s": time.perf_counter() - t, "timings": run["timings"],
                                           "particle_types": run.get("particle_types"), "device": run["device"],
                                           "threads": threads, "map_placement": cfg.simulation.map_placement})


def compare(temsim_stack: Path, difftem_stack: Path) -> dict:
    """Per-tilt agreement of the noise-free stacks (TEM-simulator's file lists tilts in acquisition order,
    difftem's by angle; for theta_incr > 0 both are ascending)."""
    import mrcfile
    import numpy as np
    from scipy.ndimage import gaussian_filter

    with mrcfile.open(temsim_stack, permissive=True) as m:
        a = m.data.astype(np.float64)
    with mrcfile.open(difftem_stack, permissive=True) as m:
        b = m.data.astype(np.float64)
    a = a.reshape(-1, *a.shape[-2:])
    b = b.reshape(-1, *b.shape[-2:])
    corr, mean_ratio, contrast_ratio = [], [], []
    for x, y in zip(a, b):
        hx = (x - gaussian_filter(x, 20, mode="wrap"))[40:-40, 40:-40]
        hy = (y - gaussian_filter(y, 20, mode="wrap"))[40:-40, 40:-40]
        corr.append(float((hx * hy).sum() / math.sqrt((hx * hx).sum() * (hy * hy).sum())))
        mean_ratio.append(float(y.mean() / x.mean()))
        contrast_ratio.append(float(hy.std() / hx.std()))
    stats = {}
    for name, v in (("correlation", corr), ("mean_ratio_difftem_over_temsim", mean_ratio),
                    ("contrast_ratio_difftem_over_temsim", contrast_ratio)):
        stats[name] = {"min": min(v), "median": float(np.median(v)), "max": max(v), "per_tilt": v}
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--temsim", type=Path, default=None, help="TEM-simulator 1.3 executable (skipped if absent)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary folder)")
    ap.add_argument("--ntilts", type=int, default=61, help="tilts (61 = the example; fewer spread over ±60°)")
    ap.add_argument("--subunits", type=int, default=98, help="subunits per TMV fragment in the transform file")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for difftem")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--placements", default="translated,projection",
                    help="difftem runs, comma-separated: 'translated' (the config as load_inp gives it) and/or a "
                         "simulation.map_placement override (projection = whole copies per slice, as TEM-simulator)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "temsim.json")
    ap.add_argument("--worker", nargs=3, metavar=("INP", "OUT", "PLACEMENT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), args.threads, args.worker[2])
        return
    if not PDB_GZ.exists():
        sys.exit(f"2OM3 structure not found at {PDB_GZ} (shared/data beside the repository)")
    work = args.work or Path(tempfile.mkdtemp(prefix="difftem_bench_temsim_"))
    inp = prepare(work, args.ntilts, args.subunits, args.seed)
    load0 = os.getloadavg()
    record = {"input": "TEM-simulator 1.3 TMV example", "ntilts": args.ntilts, "subunits_per_fragment": args.subunits,
              "transform_file": f"generated: rise {RISE_A} A, twist {TWIST_DEG} deg, {args.subunits} subunits",
              "work": str(work), "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "load_average_start": load0}

    temsim = None
    if args.temsim is not None and args.temsim.exists():
        print(f"TEM-simulator: {args.temsim} on {inp} ...", flush=True)
        temsim = run_measured([str(args.temsim.resolve()), inp.name], work, log=work / "temsim_stdout.txt")
        temsim["threads"] = 1
        if temsim["exit_code"] != 0:
            sys.exit(f"TEM-simulator failed (exit {temsim['exit_code']}); see {work / 'temsim_stdout.txt'}")
    elif args.temsim is not None:
        print(f"TEM-simulator not found at {args.temsim}: running difftem only")
    record["temsim"] = temsim

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    runs = {}
    for placement in [p.strip() for p in args.placements.split(",") if p.strip()]:
        print(f"difftem ({args.threads} threads, map placement: {placement}) on {inp} ...", flush=True)
        out = work / f"difftem_{placement}"
        out.mkdir(exist_ok=True)
        r = run_measured([sys.executable, str(Path(__file__).resolve()), "--threads", str(args.threads),
                          "--worker", str(inp), str(out), placement], work, env=env,
                         log=work / f"difftem_{placement}_stdout.txt")
        if r["exit_code"] != 0:
            sys.exit(f"difftem failed (exit {r['exit_code']}); see {work / f'difftem_{placement}_stdout.txt'}")
        r.update(json.loads((out / "bench_worker.json").read_text()))
        r["out"] = str(out)
        runs[placement] = r
    record["difftem"] = runs
    record["load_average_end"] = os.getloadavg()

    rows = [(f"difftem {k}", r) for k, r in runs.items()] + ([("TEM-simulator", temsim)] if temsim else [])
    print(f"\nTMV example: {args.ntilts} tilts, 400x400 px, 3 fragments of {args.subunits} subunits "
          f"(load average {load0[0]:.1f} at start, {record['load_average_end'][0]:.1f} at end)")
    print(f"{'program':<24}{'threads':>8}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}{'x wall':>8}{'x CPU':>8}"
          f"{'corr':>7}{'mean':>7}{'contr':>7}")
    for name, r in rows:
        line = f"{name:<24}{r['threads']:>8}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}{r['peak_rss_mib']:>10.0f}"
        if temsim and r is not temsim:
            r["speedup_wall"] = temsim["wall_s"] / r["wall_s"]
            r["speedup_cpu"] = temsim["cpu_s"] / r["cpu_s"]
            r["memory_ratio"] = r["peak_rss_mib"] / temsim["peak_rss_mib"]
            r["agreement"] = ag = compare(work / "tiltseries_nonoise.mrc", Path(r["out"]) / "tilt_series_noiseless.mrc")
            line += (f"{r['speedup_wall']:>8.2f}{r['speedup_cpu']:>8.2f}{ag['correlation']['median']:>7.3f}"
                     f"{ag['mean_ratio_difftem_over_temsim']['median']:>7.3f}"
                     f"{ag['contrast_ratio_difftem_over_temsim']['median']:>7.2f}")
        print(line)
    if temsim:
        print("x wall / x CPU: TEM-simulator's time over difftem's; corr: median per-tilt correlation of the "
              "noise-free images after background removal; mean, contr: median difftem/TEM-simulator ratio of mean "
              "counts and of contrast (std)")
    print(f"inputs and outputs of both programs: {work}")
    print("timings on a shared machine are noisy: re-measure on an idle one")
    from difftem.io.files import write_json

    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
