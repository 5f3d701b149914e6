#!/usr/bin/env python
"""difftem vs TEM-simulator 1.3 on the same input files: wall time, CPU time, peak memory, agreement.

Three cases (``--case``), each written into a scratch folder as a TEM-simulator input file (``<case>.inp``)
with its data files, which both programs read unchanged:

* ``tmv`` (default): TEM-simulator's TMV example (three TMV fragments in 50 nm of ice, 61 tilts from −60° to 60°,
  200 kV, 400² pixels of 5 Å, a noisy and a noise-free detector) with the coordinate file of the example
  (positions in nm, z-x-z Euler angles), the 2OM3 subunit (shared/data/structures/2om3_tmv_cssmol.pdb.gz,
  unzipped: TEM-simulator reads plain PDB only) and a transform file. The example's own 2OM3_transf.txt is not
  available, so an equivalent one is generated from TMV's helical parameters (rise 1.408 Å, twist +22.04°, i.e.
  49 subunits per 3 turns; axis = the PDB z axis, which 2OM3 uses) in TEM-simulator's 4-column format.
* ``apoferritin``: one apoferritin 24-mer (PDB 6Z6U, shared/data/structures/6z6u_apoferritin.pdb.gz, rewritten
  as plain PDB) at the centre of 40 nm of ice, one untilted image, 300 kV, 2 µm underfocus, 40 e/Å², 256² pixels
  of 1 Å at the specimen.
* ``ubiquitin``: one ubiquitin (PDB 1UBI, the same protein as 1UBQ; its crystal waters removed) at the centre of
  15 nm of ice, 3 tilts (−10°, 0°, 10°), 300 kV, 1 µm underfocus, 20 e/Å² per image, 128² pixels of 0.5 Å.

The two single-particle cases share one template: 300 kV (energy spread 0.9 eV, Cs = Cc = 2.7 mm), a 100 µm
objective aperture at 2.5 mm focal length (20 mrad), 0.05 mrad illumination, a flat ice layer (thickness_edge =
thickness_center, a 2 µm hole), particle maps at voxel_size 0.1 nm, and the TMV example's detector (5 µm pixels,
gain 10, DQE 0.4, its MTF) twice, noisy and noise-free.

Each program runs in its own process on the same input: TEM-simulator (single-threaded C) via ``--temsim PATH``,
difftem's side as ``difftem simulate <case>.inp --out …`` (the command line itself, its start-up and exit
included; a ``--placements`` override runs the same steps, load_inp then run_and_write, in a worker) with
torch on ``--threads`` threads (``OMP_NUM_THREADS``; a comma-separated list, e.g. ``1,2``: every count is measured
in the same run).
``--repeats N`` runs the programs N times, interleaved (TEM-simulator, difftem at each thread count, TEM-simulator,
...), and reports the minimum and median wall and CPU time of each. Peak RSS and CPU time come from the kernel
(wait4) for each process. The noise-free images are compared image by image: correlation after removing each
image's smooth background (Gaussian, σ given per case), the ratio of mean counts and of contrast (std). Without
``--temsim`` (or if the file is absent) only difftem runs. Prints a table and writes
benchmarks/results/temsim.json (tmv) or benchmarks/results/temsim_<case>.json (``--out`` a file or a folder).
Timings on a shared machine are noisy: re-measure on an idle one.

    python benchmarks/bench_temsim.py --temsim /path/to/TEM-simulator           # the full TMV example
    python benchmarks/bench_temsim.py --temsim /path/to/TEM-simulator --ntilts 3  # quick look
    python benchmarks/bench_temsim.py --temsim /path/to/TEM-simulator --case apoferritin --repeats 2 --threads 1,2
    python benchmarks/bench_temsim.py --temsim /path/to/TEM-simulator --case ubiquitin --repeats 2 --threads 1,2
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = ROOT.parent / "shared" / "data" / "structures"
PDB_GZ = STRUCTURES / "2om3_tmv_cssmol.pdb.gz"
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


# one particle at the centre of a flat ice layer, 300 kV (the apoferritin and ubiquitin cases); {placeholders}
# are filled per case, file names are relative to the work folder
SINGLE_PARTICLE = """\
=== simulation ===
generate_micrographs = yes
log_file = simulator.log
rand_seed = {seed}
=== sample ===
diameter = 2000
thickness_edge = {ice_nm}
thickness_center = {ice_nm}
=== particle {name} ===
source = pdb
pdb_file_in = {name}.pdb
voxel_size = 0.1
map_file_re_out = {name}_map.mrc
map_file_im_out = {name}_abs_map.mrc
=== particleset ===
particle_type = {name}
particle_coords = file
coord_file_in = {name}_coord.txt
=== geometry ===
gen_tilt_data = yes
ntilts = {ntilts}
theta_start = {theta_start}
theta_incr = {theta_incr}
geom_errors = none
=== electronbeam ===
acc_voltage = 300
energy_spread = 0.9
gen_dose = yes
total_dose = {total_dose}
=== optics ===
magnification = {magnification}
cs = 2.7
cc = 2.7
aperture = 100
focal_length = 2.5
cond_ap_angle = 0.05
gen_defocus = yes
defocus_nominal = {defocus_um}
""" + "".join(f"""\
=== detector ===
det_pix_x = {{pixels}}
det_pix_y = {{pixels}}
pixel_size = 5
gain = 10
use_quantization = {quantized}
dqe = 0.4
mtf_a = 0.7
mtf_b = 0.2
mtf_c = 0.1
mtf_alpha = 10
mtf_beta = 40
image_file_out = {out}
""" for quantized, out in (("yes", "tiltseries.mrc"), ("no", "tiltseries_nonoise.mrc")))

# one particle at the origin, unrotated (x y z in nm, phi theta psi in deg)
SINGLE_COORDS = "# one particle at the centre of the field\n1 6\n0 0 0 0 0 0\n"

#: the cases: structure, field, tilts, dose; ``bg_sigma_px``/``border_px``: the comparison's background removal
#: (Gaussian σ) and the border left out of it
CASES = {
    "tmv": {"title": "TMV example", "ntilts": 61, "placements": "translated,projection", "bg_sigma_px": 20,
            "border_px": 40, "out": "temsim.json"},
    "apoferritin": {"title": "apoferritin (6Z6U)", "name": "APOF", "structure": "6z6u_apoferritin.pdb.gz",
                    "remove_waters": False, "pixels": 256, "pixel_a": 1.0, "ice_nm": 40, "ntilts": 1,
                    "tilt_step_deg": 10.0, "dose_per_image_e_nm2": 4000, "defocus_um": 2.0,
                    "placements": "translated", "bg_sigma_px": 20, "border_px": 16, "out": "temsim_apoferritin.json"},
    "ubiquitin": {"title": "ubiquitin (1UBI)", "name": "UBQ", "structure": "1ubi_ubiquitin.pdb.gz",
                  "remove_waters": True, "pixels": 128, "pixel_a": 0.5, "ice_nm": 15, "ntilts": 3,
                  "tilt_step_deg": 10.0, "dose_per_image_e_nm2": 2000, "defocus_um": 1.0,
                  "placements": "translated", "bg_sigma_px": 20, "border_px": 8, "out": "temsim_ubiquitin.json"},
}
DETECTOR_PIXEL_UM = 5.0  # pixel_size in SINGLE_PARTICLE's detectors


def prepare(work: Path, ntilts: int, subunits: int, seed: int) -> Path:
    """The TMV example's input file and data files in ``work``."""
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


def write_plain_pdb(src: Path, dst: Path, remove_waters: bool) -> int:
    """``src`` (any format gemmi reads, gzipped or not) as a plain PDB file TEM-simulator can read: full 80-column
    ATOM/HETATM lines with upper-case element symbols in columns 77-78 (TEM-simulator matches 'MG', not 'Mg', and
    skips atoms it cannot name). Returns the number of atoms written."""
    import gemmi

    st = gemmi.read_structure(str(src))
    if remove_waters:
        st.remove_waters()
    st.write_pdb(str(dst))
    return st[0].count_atom_sites()


def prepare_single(case: str, work: Path, ntilts: int, seed: int) -> tuple[Path, dict]:
    """A single-particle case's input file and data files in ``work``; returns the .inp and what was written."""
    c = CASES[case]
    work.mkdir(parents=True, exist_ok=True)
    step = c["tilt_step_deg"] if ntilts > 1 else 0.0
    theta_start = -step * (ntilts - 1) / 2 + 0.0  # not -0
    magnification = DETECTOR_PIXEL_UM / (c["pixel_a"] * 1e-4)  # µm at the detector / µm at the specimen
    inp = work / f"{case}.inp"
    inp.write_text(SINGLE_PARTICLE.format(
        seed=seed, name=c["name"], ice_nm=f"{c['ice_nm']:g}", ntilts=ntilts, theta_start=f"{theta_start:g}",
        theta_incr=f"{step:g}", total_dose=f"{c['dose_per_image_e_nm2'] * ntilts:g}",
        magnification=f"{magnification:g}", defocus_um=f"{c['defocus_um']:g}", pixels=c["pixels"]))
    (work / f"{c['name']}_coord.txt").write_text(SINGLE_COORDS)
    atoms = write_plain_pdb(STRUCTURES / c["structure"], work / f"{c['name']}.pdb", c["remove_waters"])
    tilts = [round(theta_start + i * step, 6) for i in range(ntilts)]
    info = {"structure": c["structure"], "atoms": atoms, "waters_removed": c["remove_waters"],
            "pixels": c["pixels"], "pixel_a": c["pixel_a"], "ice_nm": c["ice_nm"], "voltage_kv": 300,
            "defocus_um": c["defocus_um"], "dose_per_image_e_per_a2": c["dose_per_image_e_nm2"] / 100,
            "tilts_deg": tilts, "voxel_size_nm": 0.1}
    return inp, info


def run_measured(cmd: list[str], cwd: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run a command; wall time, CPU time (user + system) and peak RSS of that process (from wait4)."""
    t = time.perf_counter()
    with open(log or os.devnull, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime,
            "system_s": usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024, "exit_code": code}


def worker(inp: Path, out: Path, threads: int, placement: str) -> None:
    """difftem's side, in its own process: translate and simulate the .inp, write every output."""
    import torch

    torch.set_num_threads(threads)
    import difftem
    from difftem.io.files import write_json
    from difftem.simulate.output import run_and_write
    from difftem.temsim import load_inp

    t = time.perf_counter()
    cfg = load_inp(inp).config
    if placement != "translated":
        cfg.simulation.map_placement = placement
    run = run_and_write(cfg, out, set(), overwrite=True)
    write_json(out / "bench_worker.json", {"translate_and_total_s": time.perf_counter() - t, "timings": run["timings"],
                                           "particle_types": run.get("particle_types"), "device": run["device"],
                                           "threads": threads, "map_placement": cfg.simulation.map_placement,
                                           "difftem_module": difftem.__file__})


def compare(temsim_stack: Path, difftem_stack: Path, bg_sigma_px: float = 20, border_px: int = 40) -> dict:
    """Per-tilt agreement of the noise-free stacks (TEM-simulator's file lists tilts in acquisition order,
    difftem's by angle; for theta_incr > 0 both are ascending): correlation after removing each image's smooth
    background (Gaussian σ = ``bg_sigma_px``) with ``border_px`` left out at each edge."""
    import mrcfile
    import numpy as np
    from scipy.ndimage import gaussian_filter

    with mrcfile.open(temsim_stack, permissive=True) as m:
        a = m.data.astype(np.float64)
    with mrcfile.open(difftem_stack, permissive=True) as m:
        b = m.data.astype(np.float64)
    a = a.reshape(-1, *a.shape[-2:])
    b = b.reshape(-1, *b.shape[-2:])
    inner = (slice(border_px, -border_px or None),) * 2
    corr, mean_ratio, contrast_ratio = [], [], []
    for x, y in zip(a, b, strict=True):
        hx = (x - gaussian_filter(x, bg_sigma_px, mode="wrap"))[inner]
        hy = (y - gaussian_filter(y, bg_sigma_px, mode="wrap"))[inner]
        corr.append(float((hx * hy).sum() / math.sqrt((hx * hx).sum() * (hy * hy).sum())))
        mean_ratio.append(float(y.mean() / x.mean()))
        contrast_ratio.append(float(hy.std() / hx.std()))
    stats = {"background_sigma_px": bg_sigma_px, "border_px": border_px}
    for name, v in (("correlation", corr), ("mean_ratio_difftem_over_temsim", mean_ratio),
                    ("contrast_ratio_difftem_over_temsim", contrast_ratio)):
        stats[name] = {"min": min(v), "median": float(np.median(v)), "max": max(v), "per_tilt": v}
    return stats


def write_figure(temsim_stack: Path, difftem_stack: Path, path: Path, pixel_size_a: float, angles_deg: list[float],
                 title: str) -> Path:
    """Both programs' noise-free images of the lowest, middle and highest tilts, TEM-simulator's over difftem's (each
    panel's grey scale clipped to its own 0.5–99.5 percentiles)."""
    import mrcfile
    import numpy as np

    from difftem.io.preview import write_panels_png

    stacks = []
    for stack in (temsim_stack, difftem_stack):
        with mrcfile.open(stack, permissive=True) as m:
            stacks.append(np.asarray(m.data, dtype=np.float32).reshape(-1, *m.data.shape[-2:]))
    shown = sorted({0, len(angles_deg) // 2, len(angles_deg) - 1})
    panels = [(stacks[k][i], f"{name}, tilt {angles_deg[i]:+.4g}°") for k, name in enumerate(("TEM-simulator",
                                                                                                "difftem"))
              for i in shown]
    return write_panels_png(path, panels, pixel_size_a, title, ncols=len(shown), panel_inches=3.0)


def difftem_noiseless(out: Path) -> Path:
    """difftem's noise-free output: the tilt series' stack, or a single micrograph's image."""
    stack = out / "tilt_series_noiseless.mrc"
    return stack if stack.exists() else out / "noiseless.mrc"


def summarize(runs: list[dict]) -> list[dict]:
    """One row per program variant (TEM-simulator; difftem per placement and thread count): minimum and median
    wall and CPU time over the repeats, the largest peak RSS."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["program"], r.get("placement"), r["threads"], r.get("src")), []).append(r)
    rows = []
    for (program, placement, threads, src), rs in groups.items():
        wall, cpu = [r["wall_s"] for r in rs], [r["cpu_s"] for r in rs]
        rows.append({"program": program, "placement": placement, "threads": threads, "repeats": len(rs),
                     **({"src": src} if src else {}),
                     "wall_s_min": min(wall), "wall_s_median": statistics.median(wall),
                     "cpu_s_min": min(cpu), "cpu_s_median": statistics.median(cpu),
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in rs), "out": rs[-1].get("out")})
    return rows


def source_info(module: str) -> dict:
    """Where difftem was imported from: the file, and if that is in a git work tree its commit and the files
    under the package that differ from it (benchmark a clean tree, or a snapshot of a commit via PYTHONPATH)."""
    info: dict = {"module": module}
    folder = Path(module).parent
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "."], capture_output=True,
                                 text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return info
    info.update({"git_head": head, "uncommitted": [line[3:] for line in changed]})
    return info


def parse_threads(text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give thread counts as integers, comma-separated (e.g. 1,2)") \
            from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more thread counts ≥ 1 (e.g. 1,2)")
    return counts


def out_path(arg: str | None, case: str) -> Path:
    """The JSON file: ``--out`` as given, or the case's file name inside ``--out`` if that is a folder (an existing
    one, or a name ending in / or without a .json suffix)."""
    name = CASES[case]["out"]
    if arg is None:
        return ROOT / "benchmarks" / "results" / name
    path = Path(arg)
    if path.is_dir() or arg.endswith(("/", os.sep)) or path.suffix.lower() != ".json":
        return path / name
    return path


def run_temsim(binary: Path, inp: Path, work: Path, repeat: int) -> dict:
    print(f"TEM-simulator: {binary} on {inp} (repeat {repeat + 1}) ...", flush=True)
    r = run_measured([str(binary.resolve()), inp.name], work, log=work / "temsim_stdout.txt")
    r.update({"program": "TEM-simulator", "threads": 1, "repeat": repeat})
    if r["exit_code"] != 0:
        sys.exit(f"TEM-simulator failed (exit {r['exit_code']}); see {work / 'temsim_stdout.txt'}")
    return r


def run_difftem(inp: Path, work: Path, threads: int, placement: str, repeat: int, name: str,
                src: str | None = None) -> dict:
    print(f"difftem{f' from {src}' if src else ''} ({threads} threads, map placement: {placement}) on {inp} "
          f"(repeat {repeat + 1}) ...", flush=True)
    out = work / name
    log = work / f"{name}_stdout.txt"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if src:  # this source tree's difftem (absolute: the worker runs in the work folder)
        env["PYTHONPATH"] = str(Path(src).resolve())
    if placement == "translated":  # what a user runs: the command line, its start-up and exit included
        cmd = [sys.executable, "-m", "difftem.cli", "simulate", str(inp), "--out", str(out), "--overwrite"]
    else:  # a placement override: the same steps (load_inp, run_and_write) in a worker
        cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--worker", str(inp),
               str(out), placement]
    r = run_measured(cmd, work, env=env, log=log)
    if r["exit_code"] != 0:
        sys.exit(f"difftem failed (exit {r['exit_code']}); see {log}")
    if placement == "translated":
        run = json.loads((out / "run.json").read_text())
        r.update({"timings": run["timings"], "particle_types": run.get("particle_types"), "device": run["device"],
                  "map_placement": run["config"]["simulation"]["map_placement"], "difftem_version":
                  run["difftem_version"], "omp_wait_policy": run.get("omp_wait_policy"), "torch_threads":
                  run.get("threads"), "difftem_module": str(Path(src).resolve() / "difftem" / "__init__.py") if src
                  else importlib.util.find_spec("difftem").origin})
    else:
        r.update(json.loads((out / "bench_worker.json").read_text()))
    r.update({"program": "difftem", "placement": placement, "threads": threads, "repeat": repeat, "out": str(out),
              **({"src": src} if src else {})})
    return r


def print_table(title: str, rows: list[dict], temsim_row: dict | None) -> None:
    print(f"\n{title}")
    print(f"{'program':<24}{'thr':>4}{'n':>3}{'wall min':>10}{'wall med':>10}{'CPU min':>9}{'CPU med':>9}"
          f"{'peak MiB':>9}{'x wall':>8}{'x CPU':>7}{'corr':>7}{'mean':>7}{'contr':>7}")
    for r in rows:
        name = "TEM-simulator" if r["program"] == "TEM-simulator" else \
            f"difftem {r['placement']}" + (f" {r['src'][-16:]}" if r.get("src") else "")
        line = (f"{name:<24}{r['threads']:>4}{r['repeats']:>3}{r['wall_s_min']:>10.2f}{r['wall_s_median']:>10.2f}"
                f"{r['cpu_s_min']:>9.2f}{r['cpu_s_median']:>9.2f}{r['peak_rss_mib']:>9.0f}")
        if temsim_row and r is not temsim_row:
            ag = r["agreement"]
            line += (f"{r['speedup_wall']:>8.2f}{r['speedup_cpu']:>7.2f}{ag['correlation']['median']:>7.3f}"
                     f"{ag['mean_ratio_difftem_over_temsim']['median']:>7.3f}"
                     f"{ag['contrast_ratio_difftem_over_temsim']['median']:>7.2f}")
        print(line)
    if temsim_row:
        print("x wall / x CPU: TEM-simulator's median time over difftem's; corr: median per-image correlation of the "
              "noise-free images after background removal; mean, contr: median difftem/TEM-simulator ratio of mean "
              "counts and of contrast (std)")


def prepare_case(case: str, work: Path, ntilts: int, subunits: int, seed: int) -> tuple[Path, dict, str]:
    """Write the case's input and data files; returns the .inp, the record's description and the table's title."""
    c = CASES[case]
    if case == "tmv":
        if not PDB_GZ.exists():
            sys.exit(f"2OM3 structure not found at {PDB_GZ} (shared/data beside the repository)")
        inp = prepare(work, ntilts, subunits, seed)
        record = {"input": "TEM-simulator 1.3 TMV example", "ntilts": ntilts, "subunits_per_fragment": subunits,
                  "transform_file": f"generated: rise {RISE_A} A, twist {TWIST_DEG} deg, {subunits} subunits"}
        return inp, record, f"TMV example: {ntilts} tilts, 400x400 px, 3 fragments of {subunits} subunits"
    if not (STRUCTURES / c["structure"]).exists():
        sys.exit(f"{c['structure']} not found in {STRUCTURES} (shared/data beside the repository)")
    inp, info = prepare_single(case, work, ntilts, seed)
    record = {"input": f"one {c['title']} in ice, TEM-simulator 1.3 input file {inp.name}", "ntilts": ntilts, **info}
    title = (f"{c['title']}: {ntilts} image(s) at {', '.join(f'{t:g}' for t in info['tilts_deg'])} deg, "
             f"{c['pixels']}x{c['pixels']} px of {c['pixel_a']:g} A, {c['ice_nm']} nm ice, 300 kV")
    return inp, record, title


def measure(binary: Path | None, inp: Path, work: Path, repeats: int, thread_counts: list[int],
            placements: list[str], srcs: list[str | None] = (None,)) -> list[dict]:
    """Every run, interleaved: per repeat TEM-simulator (if given), then difftem at each thread count, placement
    and source tree."""
    # compiled bytecode for every tree, as an installed package has: a run that compiles stale modules (an edited tree,
    # PYTHONDONTWRITEBYTECODE set) pays ~0.2 s of CPU a user's second run does not
    for src in srcs:
        compileall.compile_dir(src or Path(importlib.util.find_spec("difftem").origin).parent.parent, quiet=1)
    runs = []
    for rep in range(repeats):
        if binary is not None:
            runs.append(run_temsim(binary, inp, work, rep))
        for threads in thread_counts:
            for placement in placements:
                for k, src in enumerate(srcs):
                    name = (f"difftem_{placement}" + (f"_t{threads}" if len(thread_counts) > 1 else "")
                            + (f"_s{k}" if len(srcs) > 1 else "") + (f"_r{rep + 1}" if repeats > 1 else ""))
                    runs.append(run_difftem(inp, work, threads, placement, rep, name, src))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=sorted(CASES), default="tmv",
                    help="tmv (TEM-simulator's TMV example), apoferritin (one 6Z6U, 1 image) or ubiquitin (one 1UBI, "
                         "3 tilts)")
    ap.add_argument("--temsim", type=Path, default=None, help="TEM-simulator 1.3 executable (skipped if absent)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary folder)")
    ap.add_argument("--ntilts", type=int, default=None,
                    help="tilts (default: the case's; tmv: 61 = the example, fewer spread over ±60°; apoferritin and "
                         "ubiquitin: 10° apart, centred on 0°)")
    ap.add_argument("--subunits", type=int, default=98, help="tmv: subunits per TMV fragment in the transform file")
    ap.add_argument("--threads", type=parse_threads, default=[2],
                    help="torch threads for difftem, comma-separated: each count is measured (e.g. 1,2)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each program, interleaved (TEM-simulator, difftem at each thread count, ...); the "
                         "table gives the minimum and median")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--placements", default=None,
                    help="difftem runs, comma-separated: 'translated' (the config as load_inp gives it, i.e. difftem "
                         "simulate) and/or a simulation.map_placement override (projection = whole copies per slice, "
                         "as TEM-simulator); default: translated,projection for tmv, translated otherwise")
    ap.add_argument("--out", default=None,
                    help="JSON file, or a folder for the case's file (default: benchmarks/results/temsim.json for tmv, "
                         "benchmarks/results/temsim_<case>.json otherwise)")
    ap.add_argument("--src", default=None,
                    help="difftem source trees to compare, comma-separated (e.g. /tmp/old_src,src): each runs with "
                         "PYTHONPATH set to it, interleaved with the others")
    ap.add_argument("--figure", type=Path, default=None,
                    help="PNG of both programs' noise-free lowest, middle and highest tilts (TEM-simulator over the "
                         "first difftem run)")
    ap.add_argument("--worker", nargs=3, metavar=("INP", "OUT", "PLACEMENT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), args.threads[0], args.worker[2])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # as `difftem` ends a command: no interpreter teardown once the outputs are written
    case = CASES[args.case]
    ntilts = args.ntilts if args.ntilts is not None else case["ntilts"]
    if ntilts < 1 or args.repeats < 1:
        sys.exit("--ntilts and --repeats must be at least 1")
    work = args.work or Path(tempfile.mkdtemp(prefix=f"difftem_bench_temsim_{args.case}_"))
    inp, record, title = prepare_case(args.case, work, ntilts, args.subunits, args.seed)
    placements = [p.strip() for p in (args.placements or case["placements"]).split(",") if p.strip()]
    load0 = os.getloadavg()
    record.update({"case": args.case, "inp": str(inp), "work": str(work), "repeats": args.repeats,
                   "threads": args.threads, "placements": placements, "cpu_count": os.cpu_count(),
                   "machine": platform.processor() or platform.machine(), "load_average_start": load0})

    binary = args.temsim if args.temsim is not None and args.temsim.exists() else None
    if args.temsim is not None and binary is None:
        print(f"TEM-simulator not found at {args.temsim}: running difftem only")
    srcs = [s.strip() for s in args.src.split(",") if s.strip()] if args.src else [None]
    runs = measure(binary, inp, work, args.repeats, args.threads, placements, srcs)
    record["load_average_end"] = os.getloadavg()
    module = next((r["difftem_module"] for r in runs if r.get("difftem_module")), None)
    if module:
        record["difftem_source"] = src = source_info(module)
        print(f"difftem imported from {module}" + (f" (git {src['git_head'][:10]})" if src.get("git_head") else ""))
        if src.get("uncommitted"):
            print(f"warning: {len(src['uncommitted'])} file(s) under difftem differ from that commit: "
                  f"{', '.join(src['uncommitted'][:5])}{' ...' if len(src['uncommitted']) > 5 else ''}")

    rows = summarize(runs)
    temsim_row = next((r for r in rows if r["program"] == "TEM-simulator"), None)
    temsim_runs = [r for r in runs if r["program"] == "TEM-simulator"]
    for r in rows:
        if temsim_row and r is not temsim_row:
            r["speedup_wall"] = temsim_row["wall_s_median"] / r["wall_s_median"]
            r["speedup_cpu"] = temsim_row["cpu_s_median"] / r["cpu_s_median"]
            r["memory_ratio"] = r["peak_rss_mib"] / temsim_row["peak_rss_mib"]
            r["agreement"] = compare(work / "tiltseries_nonoise.mrc", difftem_noiseless(Path(r["out"])),
                                     case["bg_sigma_px"], case["border_px"])
    # the earlier record layout: one TEM-simulator run, one difftem run per placement (and thread count)
    record["temsim"] = temsim_runs[0] if temsim_runs else None
    def variant(r: dict) -> str:
        return (r["placement"] + (f"_t{r['threads']}" if len(args.threads) > 1 else "")
                + (f"_s{srcs.index(r['src'])}" if len(srcs) > 1 else ""))

    record["difftem"] = {variant(r): r for r in runs if r["program"] == "difftem" and r["repeat"] == 0}
    record["sources"] = srcs if len(srcs) > 1 else None
    for r in rows:  # the first run of each difftem variant carries its comparison, as before
        key = variant(r) if r["program"] == "difftem" else None
        if key is not None and "agreement" in r:
            record["difftem"][key].update({k: r[k] for k in ("speedup_wall", "speedup_cpu", "memory_ratio",
                                                             "agreement")})
    record["runs"] = runs
    record["summary"] = rows

    print_table(f"{title} (load average {load0[0]:.1f} at start, {record['load_average_end'][0]:.1f} at end)",
                rows, temsim_row)
    first = next((r for r in runs if r["program"] == "difftem"), None)
    if args.figure is not None and binary is not None and first is not None:
        run_json = json.loads((Path(first["out"]) / "run.json").read_text())
        written = write_figure(work / "tiltseries_nonoise.mrc", difftem_noiseless(Path(first["out"])), args.figure,
                               run_json["config"]["detector"]["pixel_size_a"], run_json.get("angles_deg", [0.0]),
                               f"{title}: noise-free images")
        print(f"wrote {written}")
    print(f"inputs and outputs of both programs: {work}")
    print("timings on a shared machine are noisy: re-measure on an idle one")
    from difftem.io.files import write_json

    out = out_path(args.out, args.case)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
