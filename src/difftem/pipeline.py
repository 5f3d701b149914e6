"""The forward pipeline: config → scene atoms → sliced potential → multislice → optics → detector."""

from __future__ import annotations

import cmath
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .beam import interaction_constant, wavelength_a
from .config import MTFFormula, MTFStar, SimulationConfig, config_from_dict, load_config
from .detector import MTFParams, apply_mtf, expected_counts, read_mtf_star, shot_noise
from .errors import ConfigError, ResourceError
from .grid import Grid
from .multislice import MultisliceStats, multislice, plan_window
from .optics import Optics, image_intensity, transfer_function
from .potential import IceModel, Patch, SlicedPotential, atoms_to_tensors, embed, ice_absorption_potential_v
from .scattering import get_table
from .structure import Atoms, read_structure, rotation_zyz_deg


@dataclass
class SimulationResult:
    """Images (torch tensors, (H, W)) and the metadata needed to regenerate them."""

    micrograph: torch.Tensor  # counts per pixel (× gain), noisy if noise = poisson
    noiseless: torch.Tensor  # expected counts after the MTF (× gain)
    intensity: torch.Tensor  # image intensity relative to the incident beam
    exit_wave: torch.Tensor  # complex exit wave at the bottom of the specimen
    pixel_size_a: float
    config: SimulationConfig
    projected_potential: torch.Tensor | None = None  # complex V·Å summed over slices
    metadata: dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("simulation.device: cuda requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def builtin_structure(name: str) -> Path:
    files = {"1ubi": "1ubi_ubiquitin.pdb.gz"}
    if name not in files:
        raise ConfigError(f"sample.particles.structure: unknown builtin:{name}; available: {sorted(files)}")
    return Path(str(resources.files("difftem").joinpath("data", files[name])))


def scene_atoms(config: SimulationConfig) -> Atoms:
    """All atoms of the sample in scene coordinates (Å; origin at field centre / ice mid-plane)."""
    parts = []
    for i, particle in enumerate(config.sample.particles):
        path = (builtin_structure(particle.structure.split(":", 1)[1]) if particle.structure.startswith("builtin:")
                else Path(particle.structure))
        atoms = read_structure(path, assembly=particle.assembly, models=particle.models,
                               remove_waters=particle.remove_waters, remove_hydrogens=particle.remove_hydrogens,
                               remove_hetero=particle.remove_hetero, centre=particle.centre)
        if particle.extra_b_a2:
            atoms.b_iso_a2 = atoms.b_iso_a2 + particle.extra_b_a2
        eulers = particle.euler_zyz_deg * (len(particle.positions_a) if len(particle.euler_zyz_deg) == 1 else 1)
        for pos, euler in zip(particle.positions_a, eulers):
            parts.append(atoms.transformed(rotation_zyz_deg(*euler), np.asarray(pos)))
    return Atoms.concatenate(parts)


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate_memory_bytes(shape_px: tuple[int, int], n_atoms: int, max_atoms_per_slice: int) -> int:
    """Peak estimate: ~12 complex64 field-sized arrays + the structure-factor factors of one slice + atoms."""
    field_bytes = shape_px[0] * shape_px[1] * 8
    per_slice = max_atoms_per_slice * (shape_px[0] + shape_px[1]) * 32
    return 12 * field_bytes + per_slice + n_atoms * 64


def check_memory(config: SimulationConfig, n_atoms: int, max_atoms_per_slice: int, device: torch.device) -> int:
    need = estimate_memory_bytes(config.detector.shape_px, n_atoms, max_atoms_per_slice)
    limit = (config.simulation.max_memory_gb * 1e9 if config.simulation.max_memory_gb
             else 0.8 * available_memory_bytes(device))
    if need > limit:
        raise ResourceError(
            f"detector.shape_px {tuple(config.detector.shape_px)}: this run needs about {need / 1e9:.1f} GB but only "
            f"{limit / 1e9:.1f} GB is allowed on {device}; reduce detector.shape_px or raise simulation.max_memory_gb")
    return need


def make_mtf(config: SimulationConfig):
    mtf = config.detector.mtf
    if isinstance(mtf, MTFFormula):
        return MTFParams(mtf.a, mtf.b, mtf.c, mtf.alpha, mtf.beta)
    if isinstance(mtf, MTFStar):
        return read_mtf_star(mtf.star)
    return None


def scene_warnings(atoms: Atoms, grid: Grid, ice_thickness_a: float) -> list[str]:
    """Things that are legal but probably not what the user meant."""
    out = []
    if len(atoms) == 0:
        return ["the sample has no atoms: the image shows ice (or vacuum) only"]
    oy, ox = grid.origin_a
    x = atoms.positions_a[:, 0] + ox
    y = atoms.positions_a[:, 1] + oy
    inside = (x >= 0) & (x < grid.nx * grid.pixel_size_a) & (y >= 0) & (y < grid.ny * grid.pixel_size_a)
    if not inside.all():
        out.append(f"{int((~inside).sum())} atoms lie outside the {grid.ny}x{grid.nx} px field; the field is "
                   "periodic, so they wrap around to the opposite edge (check sample.particles.positions_a)")
    if ice_thickness_a > 0:
        outside = np.abs(atoms.positions_a[:, 2]) > ice_thickness_a / 2
        if outside.any():
            out.append(f"{int(outside.sum())} atoms stick out of the {ice_thickness_a / 10:g} nm ice slab "
                       "(they are simulated in vacuum; raise sample.ice_thickness_nm or move the particles)")
    return out


def simulate(config: "SimulationConfig | dict | str | Path", *, keep_potential: bool = False,
             progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Run the whole forward model.

    ``config`` is a :class:`SimulationConfig`, a dict of the same shape, or a YAML path.
    ``progress(done, total)`` is called once per slice.
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    device = resolve_device(config.simulation.device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    det, beam = config.detector, config.beam
    grid = Grid(tuple(det.shape_px), det.pixel_size_a)
    lam, sigma = wavelength_a(beam.voltage_kv), interaction_constant(beam.voltage_kv)

    atoms = scene_atoms(config)
    timings["structure_s"] = time.perf_counter() - t0
    absorption_v = (config.sample.ice_absorption_potential_v if config.sample.ice_absorption_potential_v is not None
                    else ice_absorption_potential_v(beam.voltage_kv))
    ice = IceModel(config.sample.ice_thickness_nm * 10.0, config.sample.ice_mean_potential_v, absorption_v)
    warnings = scene_warnings(atoms, grid, ice.thickness_a)
    tensors = atoms_to_tensors(atoms, device=device)
    window = None
    if config.simulation.window == "auto":
        z = atoms.positions_a[:, 2]
        thickness_a = max(ice.thickness_a, float(z.max() - z.min()) + 2.0) if len(atoms) else ice.thickness_a
        window = plan_window(grid, tensors[1], thickness_a, lam, antialias_fraction=config.simulation.antialias_fraction)
    potential = SlicedPotential(*tensors, window.grid if window else grid, get_table(config.simulation.parametrization),
                                config.simulation.slice_thickness_a, ice,
                                absorption_ratio=config.sample.absorption_ratio, builder=config.simulation.builder)
    per_slice = np.diff(potential.slice_bounds)
    mem_estimate = check_memory(config, len(atoms), int(per_slice.max()) if per_slice.size else 0, device)

    t1 = time.perf_counter()
    done = 0

    def tick(n):
        nonlocal done
        done += n
        if progress is not None:
            progress(done, potential.n_slices)

    stats = MultisliceStats()
    with torch.no_grad():
        exit_wave = multislice(potential, lam, sigma, antialias_fraction=config.simulation.antialias_fraction,
                               bandlimit=config.simulation.bandlimit, progress=tick, stats=stats)
        projected = potential.project() if keep_potential else None
        if window is not None:  # outside the window: plane wave × uniform ice transmission
            uniform = potential.total_uniform_potential()
            outside = cmath.exp(1j * sigma * uniform)
            exit_wave = embed(Patch(window.y0, window.x0, exit_wave), grid.shape_px, outside)
            if projected is not None:
                projected = embed(Patch(window.y0, window.x0, projected), grid.shape_px, uniform)
        timings["multislice_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        z_exit_a = potential.z_start_a + potential.n_slices * potential.slice_thickness_a
        oc = config.optics
        optics = Optics(oc.defocus_um * 1e4, oc.astigmatism_um * 1e4, oc.astigmatism_angle_deg, oc.cs_mm, oc.cc_mm,
                        oc.energy_spread_ev, oc.illumination_semiangle_mrad, oc.aperture_mrad, oc.phase_shift_deg)
        # defocus is given at the ice mid-plane (z = 0); the wave leaves the specimen z_exit below it
        h = transfer_function(grid, lam, beam.voltage_kv, optics, defocus_a=optics.defocus_a + z_exit_a, device=device)
        intensity = image_intensity(exit_wave, h)
        timings["optics_s"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        mtf = make_mtf(config)
        expected = expected_counts(intensity, beam.dose_e_per_a2, det.pixel_size_a)
        counts = shot_noise(expected, det.dqe, generator) if det.noise == "poisson" else expected
        noiseless = apply_mtf(expected, mtf, det.normalize_mtf) * det.gain
        micrograph = apply_mtf(counts, mtf, det.normalize_mtf) * det.gain
        timings["detector_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    meta = {
        "difftem_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seed": config.seed,
        "n_atoms": len(atoms),
        "n_slices": potential.n_slices,
        "n_propagations": stats.n_propagations,
        "multislice_window_px": list(window.grid.shape_px) if window else None,
        "z_exit_a": z_exit_a,
        "wavelength_a": lam,
        "interaction_constant_rad_per_v_a": sigma,
        "memory_estimate_bytes": mem_estimate,
        "structure_notes": atoms.notes,
        "warnings": warnings,
        "timings": timings,
    }
    return SimulationResult(micrograph.float(), noiseless.float(), intensity.float(), exit_wave, det.pixel_size_a,
                            config, projected, meta)
