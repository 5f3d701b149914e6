"""A crowded cellular tilt series: time by stage and peak memory, `difftem reconstruct` of it and a label overlay.

    python benchmarks/bench_cellular.py                           # the issue's case: 1 µm × 1 µm × 150 nm, 41 tilts
    python benchmarks/bench_cellular.py --shape 1024 --tag small  # the same density on a 410 nm field
    python benchmarks/bench_cellular.py --placement-only          # placement alone, 10k–75k copies

The case: a flat 150 nm lamella, ``--shape``² pixels at 4 Å/px (2500² = 1 µm²), 300 kV, 4 µm underfocus, 120 e/Å² in
41 dose-symmetric tilts (±60°, 3°); lipid vesicles (radii 30 ± 10 nm, one per 0.05 µm² of field), 10 nm gold
fiducials (one per 0.05 µm²), curved filaments (ubiquitin on an actin-like helix, one per 0.05 µm²; ``--no-filaments``
leaves them out), four protein types from ../shared/data/structures packed by ``volume_fraction``
(apoferritin 6Z6U, β-galactosidase 5A1A, adenylate kinase 1AKE, ubiquitin 1UBI; ~5,200 copies on 1 µm²), label
volumes at 3 × the pixel; then ``difftem reconstruct --binning 3`` and docs/img/cellular_overlay.png (the
reconstruction with the class labels outlined). Stages: placement (structures read and every copy placed), maps (the
first tilt, which builds every type's projector, less a later tilt's median), tilts (the rest), labels, writing,
reconstruct. Peak memory is the process's maximum resident set (and the reconstruct child's). Writes
benchmarks/results/cellular[_TAG].json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
S = ROOT.parent / "shared" / "data" / "structures"
FRACTIONS = {"6z6u_apoferritin.pdb.gz": 0.008, "5a1a_betagal.cif.gz": 0.008, "1ake_adk_chimerax.cif.gz": 0.002,
             "1ubi_ubiquitin.pdb.gz": 0.0004}


def cellular_config(shape_px: int = 2500, scale: float = 1.0, n_tilts: int = 41, bin_labels: int = 3,
                    filaments: bool = True) -> dict:
    area_um2 = (shape_px * 4e-4) ** 2
    # curved filaments: ubiquitin on an actin-like two-start helix (27.5 Å rise, −166.7° twist), one per 0.05 µm²
    fil = [{"name": "filament", "structure": str(S / "1ubi_ubiquitin.pdb.gz"), "filament": {
        "rise_a": 27.5, "twist_deg": -166.7, "axis_point_a": [10.3, 28.8, 15.4],
        "count": max(1, round(area_um2 / 0.05)), "length_nm": 150, "length_sd_nm": 30, "length_min_nm": 60,
        "length_max_nm": 300, "persistence_length_nm": 1000}}] if filaments else []
    return {
        "seed": 5, "beam": {"voltage_kv": 300, "dose_e_per_a2": 3.0}, "optics": {"defocus_um": 4.0},
        "detector": {"shape_px": [shape_px, shape_px], "pixel_size_a": 4.0, "noise": "poisson", "dqe": 0.8},
        "sample": {"ice_thickness_nm": 150, "ice_profile": {"kind": "flat"},
                   "vesicles": {"count": max(1, round(area_um2 / 0.05)), "radius_nm": 30, "radius_sd_nm": 10,
                                "radius_min_nm": 12, "radius_max_nm": 60},
                   "fiducials": {"count": max(1, round(area_um2 / 0.05)), "diameter_nm": 10},
                   "crowding": {"basis": "capsule", "min_gap_a": 2.0},
                   "particles": [{"structure": str(S / f), "volume_fraction": v * scale}
                                 for f, v in FRACTIONS.items()] + fil},
        "simulation": {"slice_thickness_a": 100.0, "map_placement": "projection"},
        "tilt_series": {"scheme": "dose_symmetric", "min_deg": -60, "max_deg": 60, "step_deg": 120 / (n_tilts - 1),
                        "total_dose_e_per_a2": 120},
        "labels": {"voxel_size_a": 4.0 * bin_labels}}


def cpu_s(who=resource.RUSAGE_SELF) -> float:
    """CPU seconds used (user + system): beside the wall time, what a loaded machine gave the run."""
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


def peak_gb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20  # KiB → GiB


#: the benchmark's molecular volumes (nm³) and bounding capsules' (covering every atom), for its mix by molecules
MOLECULAR_NM3 = {"6z6u_apoferritin.pdb.gz": 531, "5a1a_betagal.cif.gz": 535, "1ake_adk_chimerax.cif.gz": 56,
                 "1ubi_ubiquitin.pdb.gz": 9.8}
CAPSULE_NM3 = {"6z6u_apoferritin.pdb.gz": 1266, "5a1a_betagal.cif.gz": 2038, "1ake_adk_chimerax.cif.gz": 209,
               "1ubi_ubiquitin.pdb.gz": 26}


#: a cytoplasm-like mix by molecules (many small proteins), for crowds excluded by atoms (--mix small)
SMALL_MIX = {"6z6u_apoferritin.pdb.gz": 0.10, "5a1a_betagal.cif.gz": 0.20, "1ake_adk_chimerax.cif.gz": 0.30,
             "1ubi_ubiquitin.pdb.gz": 0.40}


def placement_only(out_json: Path, repeats: int = 1, threads=(2,), shape: str = "capsule",
                   totals=(0.10, 0.20, 0.30), fields=(1250, 2500), small_mix: bool = False) -> dict:
    """Placement alone at crowding of 10–30 % (capsules; the benchmark's mix scaled) on lamellae of 0.5 and 1 µm
    across, with vesicles and fiducials: copies and seconds (min and median of ``repeats`` interleaved runs per
    thread count; the placer is numpy, torch threads barely matter). ``shape`` spheres: the same mix by molecules,
    ``totals`` of the free volume by molecular volume, copies excluded by their spheres (sample.crowding.shape)."""
    import torch

    from difftem.config import config_from_dict
    from difftem.core.errors import ConfigError
    from difftem.specimen.build import scene_of

    cases = []
    by_molecule = {f: FRACTIONS[f] * MOLECULAR_NM3[f] / CAPSULE_NM3[f] for f in FRACTIONS}
    mix = FRACTIONS if shape == "capsule" else SMALL_MIX if small_mix else by_molecule
    for total in totals:
        for side in fields:
            cfg = cellular_config(side)
            if shape != "capsule":  # molecular fractions, excluded by spheres or (molecular_capsule) by capsules
                cfg["sample"]["crowding"] = {"basis": "molecular", "shape": shape.replace("molecular_", "")}
                if shape != "atoms":  # atoms: the default gap (0; their voxels reach a van der Waals radius)
                    cfg["sample"]["crowding"]["min_gap_a"] = 2.0
            for p, f in zip(cfg["sample"]["particles"], FRACTIONS, strict=False):
                p["volume_fraction"] = total * mix[f] / sum(mix.values())  # the benchmark's mix, scaled
            cases.append((total, side, config_from_dict(cfg)))
    times = {(i, n): [] for i in range(len(cases)) for n in threads}
    scene_s = {(i, n): [] for i in range(len(cases)) for n in threads}
    reports, jammed = {}, {}
    for _ in range(repeats):  # interleaved: every case and thread count once per round
        for i, (_, _, cfg) in enumerate(cases):
            for n in threads:
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                try:
                    scene = scene_of(cfg)
                except ConfigError as err:  # a target beyond random packing's reach: record what it said
                    jammed[i] = str(err)
                    continue
                scene_s[i, n].append(time.perf_counter() - t0)  # with reading the structures and their shapes
                times[i, n].append(scene.crowding["seconds"])
                reports[i] = scene.crowding
    rows = []
    for i, (total, side, _) in enumerate(cases):
        if i not in reports:
            rows.append({"target": total, "field_um": side * 4e-4, "jammed": jammed[i]})
            print(f"target {100 * total:4.0f} %  field {side * 4e-4:.1f} µm  jammed: {jammed[i]}", flush=True)
            continue
        rep = reports[i]
        row = {"target": total, "field_um": side * 4e-4, "copies": rep["copies"], "shape": rep.get("shape"),
               "shape_fraction": rep.get("shape_fraction"),
               "capsule_fraction": rep["capsule_fraction"], "molecular_fraction": rep["molecular_fraction"],
               "per_type": {r["type"]: [r["copies"], round(r["capsule_fraction"], 4)] for r in rep["types"]},
               "seconds": {str(n): {"min": min(times[i, n]), "median": statistics.median(times[i, n])}
                           for n in threads},
               "scene_seconds": {str(n): {"min": min(scene_s[i, n]), "median": statistics.median(scene_s[i, n])}
                                 for n in threads}}
        rows.append(row)
        print(f"target {100 * total:4.0f} %  field {side * 4e-4:.1f} µm  {rep['copies']:7,} copies  reached "
              f"{100 * rep['capsule_fraction']:.2f} % (molecules {100 * rep['molecular_fraction']:.2f} %)  placed in "
              + ", ".join(f"{n} thr min {min(times[i, n]):.2f} s median {statistics.median(times[i, n]):.2f} s"
                          for n in threads), flush=True)
    record = {"placement": rows, "repeats": repeats, "shape": shape,
              "load_average_1min_end": os.getloadavg()[0], "mix": "small" if small_mix else "benchmark"}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=1))
    return record


def lowpass(volume: np.ndarray, voxel_a: float, resolution_a: float) -> np.ndarray:
    """Gaussian low-pass (amplitude 1/2 at 1/resolution) of a (Z, Y, X) volume, for display."""
    import torch

    from difftem.core.fft import fft3, ifft3, k2_per_a2

    g = torch.exp(-k2_per_a2(volume.shape, voxel_a) * resolution_a**2 * np.log(2.0))
    return ifft3(fft3(torch.as_tensor(volume, dtype=torch.float32)) * g).real.numpy()


def reconstruct_cli(stack: Path, out: Path, binning: int, thickness_vox: int, threads: int) -> None:
    cmd = [sys.executable, "-m", "difftem.cli", "reconstruct", str(stack), "-o", str(out), "--binning", str(binning),
           "--thickness-vox", str(thickness_vox), "--device", "cpu"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads)}
    if stack.name.endswith("_noiseless.mrc"):  # its angles and geometry are the series' own
        cmd += ["--tlt", str(stack.with_name("tilt_series.tlt")), "--metadata", str(stack.parent / "run.json")]
    subprocess.run(cmd, check=True, env=env)


def overlay_png(run_dir: Path, rec_path: Path, png: Path, clean_path: Path | None = None, slab_vox: int = 3,
                lowpass_a: float = 30.0) -> None:
    """A z slab through the middle of the reconstruction (mean of ``slab_vox`` slices, low-passed for display) with
    the class labels outlined and the vesicles' cross-sections dashed; beside it the centre of the noise-free
    series' reconstruction, enlarged."""
    import matplotlib
    import mrcfile

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def read(path):
        with mrcfile.open(path) as m:
            return m.data.astype(np.float32), float(m.voxel_size.x)

    rec, vox = read(rec_path)
    clean = read(clean_path)[0] if clean_path is not None else rec
    classes = read(run_dir / "labels_class.mrc")[0].astype(np.int64)
    names = json.loads((run_dir / "labels.json").read_text())["classes"]
    ves = json.loads((run_dir / "run.json").read_text()).get("vesicles")
    nz, ny, nx = (min(a, b) for a, b in zip(rec.shape, classes.shape, strict=True))

    def centre(v):
        z0, y0, x0 = [(s - n) // 2 for s, n in zip(v.shape, (nz, ny, nx), strict=True)]
        return v[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx]

    iz = nz // 2
    sl = slice(iz - slab_vox // 2, iz + slab_vox // 2 + 1)
    rec = lowpass(centre(rec), vox, lowpass_a)[sl].mean(0)
    clean = lowpass(centre(clean), vox, 0.6 * lowpass_a)[sl].mean(0)
    lab = centre(classes)[iz]
    colours = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#ffff33"]
    w = min(nx, ny) // 3
    x0, y0 = nx // 2 - w // 2, ny // 2 - w // 2
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    panels = [(rec, lab, 0, 0, f"noisy series: z slab {iz} ± {slab_vox // 2} (WBP, {lowpass_a:g} Å low-pass)"),
              (clean[y0:y0 + w, x0:x0 + w], lab[y0:y0 + w, x0:x0 + w], x0, y0,
               "noise-free series, the centre third enlarged")]
    for k, (ax, (im, lb, ox, oy, title)) in enumerate(zip(axes, panels, strict=True)):
        lo, hi = np.percentile(im, [1, 99])
        ax.imshow(im, cmap=plt.get_cmap("gray", 40), vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        for c in range(1, int(classes.max()) + 1):
            if (lb == c).any():
                ax.contour(lb == c, levels=[0.5], colors=colours[(c - 1) % len(colours)],
                           linewidths=0.7 if k == 0 else 1.2)
        zc = (iz - nz // 2) * vox  # the slab's depth (Å) about the mid-plane
        for (cx, cy, cz), r in zip(*(ves["centres_a"], ves["radii_a"]) if ves else ((), ()), strict=True):
            if abs(cz - zc) < r:  # the bilayer's mid-plane where the slab cuts the vesicle
                ax.add_patch(plt.Circle((cx / vox + nx // 2 - ox, cy / vox + ny // 2 - oy),
                                        np.sqrt(r * r - (cz - zc) ** 2) / vox, fill=False, color="#00e5ff",
                                        lw=0.8, ls="--"))
        ax.set_xlim(-0.5, im.shape[1] - 0.5)
        ax.set_ylim(-0.5, im.shape[0] - 0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=colours[(int(c) - 1) % len(colours)], label=n)
               for c, n in names.items() if c != "0"]
    handles.append(plt.Line2D([], [], color="#00e5ff", ls="--", label="vesicle (bilayer mid-plane)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=9)
    fig.suptitle(f"difftem reconstruct of the cellular series ({nx * vox / 1e4:.2g} µm field, {vox:g} Å voxels), "
                 "class labels (labels_class.mrc) outlined", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    png.parent.mkdir(parents=True, exist_ok=True)
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=72)
    plt.close(fig)
    # 40 grey levels (the colormap's) and the outline colours fit a palette: the noisy image stays under 300 KB
    Image.open(buf).convert("RGB").quantize(255, method=Image.Quantize.FASTOCTREE).save(png, optimize=True)
    print(f"wrote {png} ({png.stat().st_size / 1024:.0f} KB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, default=2500, help="field side (px at 4 Å)")
    ap.add_argument("--tilts", type=int, default=41)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every volume fraction")
    ap.add_argument("--bin", type=int, default=3, help="reconstruction binning (labels at bin × 4 Å)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/difftem_cellular"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "cellular_overlay.png")
    ap.add_argument("--placement-only", action="store_true")
    ap.add_argument("--no-filaments", action="store_true", help="leave the filaments out (the 1 µm run recorded in "
                                                                 "cellular_2500_11tilts.json had none)")
    ap.add_argument("--repeats", type=int, default=1, help="placement-only: interleaved repeats at 1 and 2 threads")
    ap.add_argument("--mix", choices=("benchmark", "small"), default="benchmark",
                    help="placement-only, by molecules: the benchmark's mix, or a cytoplasm-like one (apoferritin "
                         "10 %, β-galactosidase 20 %, adenylate kinase 30 %, ubiquitin 40 %)")
    ap.add_argument("--excluded", choices=("capsule", "spheres", "molecular_capsule", "atoms"), default="capsule",
                    help="placement-only: spheres: molecular fractions, copies excluded by spheres; molecular_capsule: "
                         "molecular fractions, excluded by capsules")
    ap.add_argument("--totals", type=float, nargs="+", default=None, help="placement-only: the crowd's fractions")
    ap.add_argument("--fields", type=int, nargs="+", default=(1250, 2500), help="placement-only: field sides (px)")
    ap.add_argument("--render-only", action="store_true", help="only redraw --png from the files of a run in --out")
    args = ap.parse_args()
    tag = f"_{args.tag}" if args.tag else ""
    if args.render_only:
        run_dir, clean = args.out / f"run{tag}", args.out / f"rec{tag}_noiseless.mrc"
        if not clean.exists():
            import mrcfile

            with mrcfile.open(run_dir / "labels_class.mrc", header_only=True) as m:
                depth = int(m.header.nz)
            reconstruct_cli(run_dir / "tilt_series_noiseless.mrc", clean, args.bin, depth, args.threads)
        overlay_png(run_dir, args.out / f"rec{tag}.mrc", args.png, clean)
        return
    out_json = ROOT / "benchmarks" / "results" / f"cellular{tag}.json"
    if not S.is_dir():
        sys.exit(f"needs {S} (the project's shared structures)")
    import torch

    torch.set_num_threads(args.threads)
    if args.placement_only:
        name = "cellular_placement.json" if args.excluded == "capsule" else f"cellular_placement_{args.excluded}.json"
        if args.mix == "small":
            name = name.replace(".json", "_small_mix.json")
        placement_only(ROOT / "benchmarks" / "results" / name, args.repeats,
                       (1, 2) if args.repeats > 1 else (args.threads,), args.excluded,
                       tuple(args.totals or (0.10, 0.20, 0.30)), tuple(args.fields), args.mix == "small")
        return
    from difftem.config import config_from_dict
    from difftem.simulate.labels import make_labels
    from difftem.simulate.output import write_tilt_series
    from difftem.simulate.pipeline import simulate_tilt_series
    from difftem.specimen.build import scene_of

    cfg = config_from_dict(cellular_config(args.shape, args.scale, args.tilts, args.bin, not args.no_filaments))
    stages, t_all = {}, time.perf_counter()
    t0 = time.perf_counter()
    scene = scene_of(cfg)
    stages["placement_s"] = time.perf_counter() - t0
    rep = scene.crowding
    print(f"scene: {len(scene.placement):,} copies ({rep['copies']:,} crowded, placed in {rep['seconds']:.2f} s), "
          f"{len(scene.vesicles)} vesicles, {len(scene.filaments or [])} filaments; {stages['placement_s']:.1f} s with "
          "reading the structures", flush=True)
    labels_cfg, cfg.labels = cfg.labels, None  # labels timed on their own below
    ticks = []

    def progress(done, total):
        ticks.append((done, time.perf_counter() - t1, cpu_s()))
        print(f"  tilt {done}/{total} at {ticks[-1][1]:.0f} s (peak RSS {peak_gb():.2f} GiB)", flush=True)

    t1 = time.perf_counter()
    result = simulate_tilt_series(cfg, scene=scene, progress=progress)
    series_s = time.perf_counter() - t1
    per_tilt = result.metadata["timings"]["per_tilt_s"]
    later = statistics.median(per_tilt) if per_tilt else 0.0
    # the first tilt runs alone and builds every type's projector: its time beyond a typical tilt's is the maps'
    stages["maps_s"] = max(ticks[0][1] - later, 0.0) if ticks else 0.0
    stages["tilts_s"] = series_s - stages["maps_s"]
    cfg.labels = labels_cfg
    t0 = time.perf_counter()
    result.labels = make_labels(scene, cfg)
    stages["labels_s"] = time.perf_counter() - t0
    run_dir = args.out / f"run{tag}"
    t0 = time.perf_counter()
    write_tilt_series(result, run_dir, overwrite=True)
    stages["write_s"] = time.perf_counter() - t0
    peak_sim = peak_gb()
    rec_path = args.out / f"rec{tag}.mrc"
    t0 = time.perf_counter()
    depth = result.labels.classes.shape[0]
    reconstruct_cli(run_dir / "tilt_series.mrc", rec_path, args.bin, depth, args.threads)
    stages["reconstruct_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    clean_path = args.out / f"rec{tag}_noiseless.mrc"
    reconstruct_cli(run_dir / "tilt_series_noiseless.mrc", clean_path, args.bin, depth, args.threads)
    overlay_png(run_dir, rec_path, args.png, clean_path)
    stages["render_s"] = time.perf_counter() - t0
    record = {"shape_px": args.shape, "pixel_size_a": 4.0, "field_um": args.shape * 4e-4, "ice_nm": 150,
              "tilts": len(per_tilt), "threads": args.threads, "copies": len(scene.placement),
              "crowd": {k: v for k, v in rep.items()}, "vesicles": len(scene.vesicles),
              "filaments": len(scene.filaments or []),
              "stages": stages, "total_s": time.perf_counter() - t_all, "per_tilt_s": per_tilt,
              "per_tilt_median_s": later, "first_tilt_s": ticks[0][1] if ticks else None, "peak_rss_gib": peak_sim,
              "reconstruct_peak_rss_gib": peak_gb(resource.RUSAGE_CHILDREN),
              "tilt_workers": result.metadata.get("tilt_workers"),
              "ice_structure": result.metadata.get("ice_structure"), "modes": [
                  (t["name"], t.get("mode")) for t in result.metadata["particle_types"]],
              "cpu_s": cpu_s(), "reconstruct_cpu_s": cpu_s(resource.RUSAGE_CHILDREN), "ticks": ticks,
              "load_average_1min_end": os.getloadavg()[0], "png": str(args.png)}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(record, indent=1, default=str))
    print(f"\n{'stage':<14}{'seconds':>10}")
    for k, v in stages.items():
        print(f"{k[:-2]:<14}{v:>10.1f}")
    print(f"{'total':<14}{record['total_s']:>10.1f}\npeak RSS {peak_sim:.2f} GiB (reconstruct "
          f"{record['reconstruct_peak_rss_gib']:.2f} GiB); {len(scene.placement):,} copies; wrote {out_json}")


if __name__ == "__main__":
    main()
