"""Simulate a micrograph of many copies → box the particles into RELION/cryoSPARC files → reconstruct from the
written STAR alone → FSC against the true map, beside the same reconstruction from the simulator's in-memory truth.

    python examples/spa_particles.py --out spa_demo                      # 1AKE from ../shared/data (or builtin:1ubi)
    python examples/spa_particles.py --structure builtin:1ubi --box 48 --n-side 12 --dose 0   # the tests' scene

Writes into --out: the run (micrograph.mrc, particles.star ground truth, run.json), particles/ (particles.mrcs,
particles.star, particles.cs), the reconstructions and the true map (MRC volumes), fsc.json, and the figure
(a few extracted particles and the FSC curves) to --figure (default docs/img/spa_particles.png).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import difftem
from difftem.core.rotations import euler_zyz_from_matrix, random_rotations
from difftem.io.files import write_volume
from difftem.simulate.output import write_simulation
from difftem.simulate.particles import particles_from_result, write_particles
from difftem.simulate.pipeline import potential_volume
from difftem.spa.reconstruct import (
    fsc,
    low_pass,
    normalised_correlation,
    reconstruct_fourier,
    reconstruct_from_star,
    resolution_shell,
    soft_sphere,
)

SHARED_1AKE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "structures" / "1ake_adk_chimerax.cif.gz"


def scene(structure: str, n_side: int, box: int, px: float, spacing: int, dose: float, seed: int = 0) -> dict:
    """A grid of copies (random poses, sub-pixel offsets, depths ±300 Å in 80 nm of ice), 0.5 µm astigmatism."""
    rng = np.random.default_rng(seed)
    xy = (np.arange(n_side) - (n_side - 1) / 2) * spacing * px
    gx, gy = np.meshgrid(xy, xy)
    n = n_side * n_side
    pos = np.stack([gx.ravel() + rng.uniform(-4, 4, n), gy.ravel() + rng.uniform(-4, 4, n),
                    rng.uniform(-300, 300, n)], 1)
    eul = euler_zyz_from_matrix(random_rotations(n, rng))
    field = n_side * spacing + box
    return {"seed": seed, "beam": {"voltage_kv": 300, "dose_e_per_a2": dose or 100},
            "optics": {"defocus_um": 1.5, "astigmatism_um": 0.5, "astigmatism_angle_deg": 30},
            "detector": {"shape_px": [field, field], "pixel_size_a": px, "noise": "poisson" if dose else "none",
                         "mtf": None},
            "sample": {"ice_thickness_nm": 80, "ice_structure": {"mode": "off"},  # as the docs' numbers
                       "particles": [{"structure": structure, "positions_a": pos.tolist(),
                                                              "euler_zyz_deg": eul.tolist()}]}}


def true_map(cfg: dict, box: int, px: float) -> torch.Tensor:
    """The particle's potential at px/3 voxels (fine z slabs), Fourier-cropped to the box's voxels."""
    from difftem.core.fft import fft3, fftshift, ifft3

    particle = {**cfg["sample"]["particles"][0], "positions_a": [[0, 0, 0]], "euler_zyz_deg": [[0, 0, 0]]}
    one = {**cfg, "detector": {**cfg["detector"], "shape_px": [box, box]},
           "sample": {**cfg["sample"], "particles": [particle]}}
    fine, _ = potential_volume(one, voxel_size_a=px / 3, thickness_a=box * px)
    n, lo = fine.shape[0], fine.shape[0] // 2 - box // 2
    c = fftshift(fft3(fine.double()))[lo:lo + box, lo:lo + box, lo:lo + box]
    return ifft3(torch.roll(c, shifts=(-(box // 2),) * 3, dims=(0, 1, 2))).real.float() * (box / n) ** 3


def figure(path: Path, images: np.ndarray, curves: dict, px: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 3.6), dpi=100)
    k = min(6, len(images))
    for i in range(k):
        ax = fig.add_axes([0.01 + (i % 3) * 0.13, 0.52 - (i // 3) * 0.46, 0.12, 0.42])
        ax.imshow(images[i], cmap="gray")
        ax.set_axis_off()
        ax.set_title(f"particle {i + 1}", fontsize=8)
    ax = fig.add_axes([0.47, 0.14, 0.5, 0.74])
    box = images.shape[-1]
    shells = np.arange(len(next(iter(curves.values()))))
    styles = {"from the written STAR": dict(lw=2.5, color="tab:blue", zorder=3),
              "from the in-memory truth": dict(lw=1.2, ls="--", color="black", zorder=4)}
    for label, c in curves.items():
        ax.plot(shells / (box * px), c, label=label, **styles.get(label, dict(lw=1, color="tab:green")))
    ax.axhline(0.143, color="grey", lw=0.8, ls="--")
    ax.axvline(2 / 3 / (2 * px), color="grey", lw=0.8, ls=":")
    ax.text(2 / 3 / (2 * px), 0.35, " simulation's\n band limit", fontsize=7, color="grey")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC with the true map")
    ax.set_ylim(-0.1, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _title(n: int, structure: str, box: int, px: float, dose: float) -> str:
    return (f"{n} particles of {Path(structure).name.split('.')[0]}, {box} px at {px:g} Å, "
            + (f"{dose:g} e/Å²" if dose else "noise-free"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("spa_demo"))
    ap.add_argument("--structure", default=str(SHARED_1AKE) if SHARED_1AKE.is_file() else "builtin:1ubi")
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--pixel-a", type=float, default=1.5)
    ap.add_argument("--n-side", type=int, default=12, help="copies on an n × n grid")
    ap.add_argument("--spacing", type=int, default=None, help="grid spacing in pixels (default box + 8)")
    ap.add_argument("--dose", type=float, default=0.0, help="e/Å² (0: noise-free)")
    ap.add_argument("--figure", type=Path, default=Path(__file__).resolve().parents[1] / "docs/img/spa_particles.png")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from --out's fsc.json and stack")
    args = ap.parse_args()
    if args.replot:
        import mrcfile

        saved = json.loads((args.out / "fsc.json").read_text())
        images = mrcfile.read(args.out / "particles" / "particles.mrcs")[:6]
        figure(args.figure, images, {k: np.array(v) for k, v in saved["curves"].items()}, saved["pixel_a"],
               _title(saved["particles"], saved["structure"], saved["box_px"], saved["pixel_a"],
                      saved["dose_e_per_a2"]))
        return
    box, px = args.box, args.pixel_a
    cfg = scene(args.structure, args.n_side, box, px, args.spacing or box + 8, args.dose)
    t0 = time.perf_counter()
    result = difftem.simulate(cfg)
    t_sim = time.perf_counter() - t0
    write_simulation(result, args.out / "run", overwrite=True)
    stack = particles_from_result(result, box_px=box, image="micrograph" if args.dose else "noiseless",
                                  micrograph_name="run/micrograph.mrc")
    write_particles(stack, args.out / "particles", ("relion", "cryosparc"))
    t1 = time.perf_counter()
    star_map, _ = reconstruct_from_star(args.out / "particles" / "particles.star")
    t_rec = time.perf_counter() - t1
    # the same inversion from the in-memory truth (the scene's poses and positions, the config's optics)
    from difftem.simulate.particles import particle_defocus_a
    from difftem.spa.reconstruct import relion_ctf

    truth_rows = result.metadata["particles"]
    idx = stack.source_index
    pos = np.array([[truth_rows[i]["difftemPositionXA"], truth_rows[i]["difftemPositionYA"],
                     truth_rows[i]["difftemPositionZA"]] for i in idx])
    field = cfg["detector"]["shape_px"][0]
    centres = (pos[:, :2] / px + field // 2 - stack.coordinates_px) * px
    u, v, ang = particle_defocus_a(result.config.optics, pos[:, 2])
    q = stack.optics["rlnAmplitudeContrast"]
    memory_map = reconstruct_fourier(stack.images, stack.rotations, centres, px, ctf=lambda i0, i1, ky, kx: relion_ctf(
        ky, kx, u[i0:i1], v[i0:i1], ang[i0:i1], voltage_kv=300, cs_mm=2.7, amplitude_contrast=q))
    no_ctf = reconstruct_fourier(stack.images, stack.rotations, centres, px)
    truth = true_map(cfg, box, px)
    mask = soft_sphere(box, 0.4 * box)
    curves = {"from the written STAR": fsc(star_map * mask, truth * mask),
              "from the in-memory truth": fsc(memory_map * mask, truth * mask),
              "in-memory truth, no CTF correction": fsc(no_ctf * mask, truth * mask)}
    mirror = torch.roll(torch.flip(truth, [0]), 1, 0)
    lp = {name: low_pass(m, px, 6.0) for name, m in (("star", star_map), ("truth", truth), ("mirror", mirror))}
    summary = {"particles": len(stack), "box_px": box, "pixel_a": px, "structure": args.structure,
               "dose_e_per_a2": args.dose, "simulate_s": round(t_sim, 1), "reconstruct_s": round(t_rec, 1),
               "fsc_0143_shell": {k: resolution_shell(c) for k, c in curves.items()},
               "fsc_0143_a": {k: round(box * px / max(resolution_shell(c), 1), 2) for k, c in curves.items()},
               "fsc_star_vs_memory_min_in_band": float(fsc(star_map * mask, memory_map * mask)[: box // 3].min()),
               "ncc_6a": {"true": normalised_correlation(lp["star"], lp["truth"], mask),
                          "mirror": normalised_correlation(lp["star"], lp["mirror"], mask)}}
    for name, vol in (("map_from_star", star_map), ("map_from_truth", memory_map), ("true_map", truth)):
        write_volume(args.out / f"{name}.mrc", vol.numpy(), px)
    (args.out / "fsc.json").write_text(json.dumps({**summary, "curves": {k: c.tolist() for k, c in curves.items()}},
                                                  indent=1))
    figure(args.figure, stack.images[:6].numpy(), curves, px, _title(len(stack), args.structure, box, px, args.dose))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
