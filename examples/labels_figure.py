"""A tilt series with a density-map particle beside atomic ones, its label volumes, and the figure of the docs.

    python examples/labels_figure.py --out labels_demo      # about 2 minutes on 2 cores

Writes a map of adenylate kinase (1AKE) made from its model (6 Å resolution, arbitrary units, 2.2 Å voxels),
simulates apoferritin, ubiquitin and that map as particles in a 41-tilt series at 4 Å/px with label volumes
(``labels:``), reconstructs it (WBP, the frame of ``difftem reconstruct``) and draws docs/img/labels_overlay.png:
a slice of the reconstruction (of the noise-free stack, so that shapes show), of the simulator's potential volume
and the class labels outlined on both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch

from difftem.config import config_from_dict
from difftem.core.fft import freq_per_a, irfft3, k2_per_a2
from difftem.forward.density_map import model_spectrum
from difftem.forward.particle_map import _soft_band
from difftem.forward.scattering import get_table
from difftem.io.files import write_volume
from difftem.simulate.output import run_and_write
from difftem.simulate.pipeline import potential_volume
from difftem.specimen.structure import read_structure
from difftem.tomo import reconstruct

STRUCTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"


def make_map(path: Path, voxel_a: float = 2.2, n: int = 48, resolution_a: float = 6.0) -> None:
    """1AKE's potential at ``resolution_a`` on n³ voxels, in arbitrary units (×0.01 + 5), in the model's frame."""
    atoms = read_structure(STRUCTURES / "1ake_adk_chimerax.cif.gz", centre="none")
    origin = atoms.positions_a.mean(0) - (n // 2) * voxel_a
    kz, kx = freq_per_a(n, voxel_a), freq_per_a(n, voxel_a, half=True)
    spec = model_spectrum(atoms, get_table("kirkland"), kz, kz, kx, origin)
    spec = spec * _soft_band(torch.sqrt(k2_per_a2((n, n, n), voxel_a, half=True)), 0.8 / resolution_a,
                             1.0 / resolution_a)
    write_volume(path, (irfft3(spec, (n, n, n)) / voxel_a**3).numpy() * 0.01 + 5.0, voxel_a, origin_a=tuple(origin))


def config(map_path: Path) -> dict:
    return {
        "seed": 7, "optics": {"defocus_um": 3.0},
        "detector": {"shape_px": [128, 128], "pixel_size_a": 4.0, "noise": "poisson"},
        "sample": {"ice_thickness_nm": 40, "ice_structure": {"mode": "off"}, "particles": [
            {"structure": str(STRUCTURES / "6z6u_apoferritin.pdb.gz"), "random": {"count": 3}},
            {"structure": str(STRUCTURES / "1ubi_ubiquitin.pdb.gz"), "random": {"count": 12}},
            {"name": "adk_map", "map": {"file": str(map_path), "calibration": "model",
                                        "model": str(STRUCTURES / "1ake_adk_chimerax.cif.gz")},
             "random": {"count": 8}}]},
        "simulation": {"slice_thickness_a": 20.0},
        "tilt_series": {"scheme": "dose_symmetric", "min_deg": -60, "max_deg": 60, "step_deg": 3,
                        "total_dose_e_per_a2": 120},
        "labels": {"voxel_size_a": 4.0}}


def lowpass(volume: np.ndarray, voxel_a: float, resolution_a: float) -> np.ndarray:
    """Gaussian low-pass (amplitude 1/2 at 1/resolution) of a (Z, Y, X) volume, for display."""
    from difftem.core.fft import fft3, ifft3

    k2 = k2_per_a2(volume.shape, voxel_a)
    g = torch.exp(-k2 * resolution_a**2 * np.log(2.0))
    return ifft3(fft3(torch.as_tensor(volume, dtype=torch.float64)) * g).real.numpy()


def figure(path: Path, rec: np.ndarray, truth: np.ndarray, classes: np.ndarray, names: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = (classes > 0).sum((1, 2))
    iz = int(np.argmax(counts))
    iy = int(np.argmax((classes > 0).sum((0, 2))))
    colours = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1, 1, 1]})
    panels = [(rec[iz], classes[iz], f"noise-free series, WBP (16 Å low-pass), z {iz}"),
              (truth[iz], classes[iz], "potential_volume (ground truth)"),
              (rec[:, iy, :], classes[:, iy, :], f"the same, x–z slice at y = {iy}")]
    for ax, (img, lab, title) in zip(axes, panels, strict=True):
        lo, hi = np.percentile(img, [1, 99.5])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        for c in range(1, int(classes.max()) + 1):
            if (lab == c).any():
                ax.contour(lab == c, levels=[0.5], colors=colours[(c - 1) % 4], linewidths=0.9)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=colours[(int(c) - 1) % 4], label=n) for c, n in names.items() if c != "0"]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    fig.suptitle("class labels (outlines, labels_class.mrc) on the reconstruction and the ground truth, 4 Å voxels",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("labels_demo"))
    ap.add_argument("--png", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img"
                    / "labels_overlay.png")
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    map_path = args.out / "adk_map.mrc"
    make_map(map_path)
    cfg = config_from_dict(config(map_path))
    run = run_and_write(cfg, args.out / "run", overwrite=True)
    print(f"simulated in {time.perf_counter() - t0:.0f} s; outputs: {', '.join(run['outputs'])}")
    for t in run["particle_types"]:
        if "map" in t:
            print(f"{t['name']}: {t['map']['method']} calibration, {t['map']['scale_v_per_unit']:.4g} V per unit, "
                  f"fit residual {t['map']['fit_relative_residual']:.3f}")
    with mrcfile.open(args.out / "run" / "labels_class.mrc") as m:
        classes = m.data.astype(np.int64)
    with mrcfile.open(args.out / "run" / "tilt_series_noiseless.mrc") as m:  # the shapes, not the noise
        stack = torch.from_numpy(m.data.astype(np.float32))
    names = json.loads((args.out / "run" / "labels.json").read_text())["classes"]
    contrast = -(stack - stack.mean((-2, -1), keepdim=True)) / stack.mean((-2, -1), keepdim=True)
    rec = reconstruct(contrast, run["angles_deg"], pixel_size_a=4.0, thickness_px=classes.shape[0],
                      device="cpu").volume.numpy()
    rec = lowpass(rec, 4.0, 16.0)
    truth, _ = potential_volume(cfg, thickness_a=classes.shape[0] * 4.0)
    figure(args.png, rec, truth.numpy(), classes, names)
    print(f"wrote {args.png} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
