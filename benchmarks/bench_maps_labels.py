"""Time label volumes and density-map projectors: min and median of interleaved repeats at 1 and 2 threads.

    python benchmarks/bench_maps_labels.py [--repeats 3]

labels: 600 copies (ubiquitin, adenylate kinase, apoferritin) at random in a 1024² field at 4 Å/px, 60 nm of ice,
label volumes at 4 Å and 10 Å voxels (the scene built once). map: a 1AKE potential map (64³ voxels of 1.1 Å)
calibrated against its model and built into a projector at 2 Å/px.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from difftem.config import config_from_dict
from difftem.core.fft import freq_per_a, irfft3
from difftem.forward.density_map import build_density_projector, calibrate, model_spectrum
from difftem.forward.potential import IceModel
from difftem.forward.scattering import get_table
from difftem.io.files import write_volume
from difftem.simulate.labels import make_labels
from difftem.specimen.build import load_particle_type, scene_of
from difftem.specimen.structure import read_structure

S = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures"


def label_case(voxel_a: float):
    cfg = config_from_dict({
        "detector": {"shape_px": [1024, 1024], "pixel_size_a": 4.0},
        "sample": {"ice_thickness_nm": 60, "particles": [
            {"structure": str(S / "1ubi_ubiquitin.pdb.gz"), "random": {"count": 300}},
            {"structure": str(S / "1ake_adk_chimerax.cif.gz"), "random": {"count": 250}},
            {"structure": str(S / "6z6u_apoferritin.pdb.gz"), "random": {"count": 50}}]},
        "labels": {"voxel_size_a": voxel_a}})
    scene = scene_of(cfg)
    return lambda: make_labels(scene, cfg)


def map_case(tmp: Path):
    atoms = read_structure(S / "1ake_adk_chimerax.cif.gz", centre="none")
    n, v = 64, 1.1
    origin = atoms.positions_a.mean(0) - (n // 2) * v
    k, kx = freq_per_a(n, v), freq_per_a(n, v, half=True)
    vol = irfft3(model_spectrum(atoms, get_table("kirkland"), k, k, kx, origin), (n, n, n)) / v**3
    write_volume(tmp / "adk.mrc", vol.numpy() * 0.01, v, origin_a=tuple(origin))
    cfg = config_from_dict({"sample": {"particles": [{"map": {"file": str(tmp / "adk.mrc"), "calibration": "model",
                                                              "model": str(S / "1ake_adk_chimerax.cif.gz")}}]}})

    def run():
        ptype = load_particle_type(cfg.sample.particles[0], lambda s: s)
        calibrate(ptype.density, get_table("kirkland"), IceModel(300.0))
        return build_density_projector(ptype.density, pixel_size_a=2.0, ice=IceModel(300.0), absorption_ratio=0.156)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"labels 4 Å": label_case(4.0), "labels 10 Å": label_case(10.0), "map projector": map_case(Path(tmp))}
        times = {(c, t): [] for c in cases for t in (1, 2)}
        for _ in range(args.repeats):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for name, fn in cases.items():
                    t0 = time.perf_counter()
                    fn()
                    times[(name, threads)].append(time.perf_counter() - t0)
    for (name, threads), ts in times.items():
        print(f"{name:<14} {threads} thread{'s' if threads > 1 else ' '}  min {min(ts):7.2f} s  "
              f"median {statistics.median(ts):7.2f} s")


if __name__ == "__main__":
    main()
