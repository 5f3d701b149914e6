"""What every simulation of a config shares: the config itself, the scene, the device, the sampling grid, the beam
constants, the ice, each particle type's representation and the per-type cache, and the up-front memory check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import SimulationConfig, config_from_dict, load_config
from ..core.device import available_memory_bytes, resolve_device
from ..core.errors import ResourceError
from ..core.grid import Grid
from ..forward.beam import interaction_constant, wavelength_a
from ..forward.potential import IceModel, ice_absorption_potential_v
from ..forward.scattering import get_table
from ..forward.scene_build import TypeCache, choose_modes
from ..specimen.build import scene_of
from ..specimen.scene import Scene


def prepare_config(config: SimulationConfig | dict | str | Path) -> SimulationConfig:
    """A :class:`SimulationConfig` from itself, a dict of the same shape or a YAML path."""
    if isinstance(config, (str, Path)):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    return config


@dataclass
class Setup:
    """Everything built once per config and shared by every view (tilt) and tile."""

    config: SimulationConfig
    scene: Scene
    device: torch.device
    grid: Grid  # the detector's field
    wavelength_a: float
    sigma: float  # interaction constant, rad/(V·Å)
    ice: IceModel  # the untilted slab
    modes: list[str]  # per particle type: atoms, projection or slab
    cache: TypeCache  # per-type maps, scattering table, absorption ratio

    @classmethod
    def build(cls, config: SimulationConfig, scene: Scene | None = None) -> Setup:
        scene = scene or scene_of(config)
        device = resolve_device(config.simulation.device)
        det, beam, sample = config.detector, config.beam, config.sample
        lam = wavelength_a(beam.voltage_kv)
        absorption_v = (sample.ice_absorption_potential_v if sample.ice_absorption_potential_v is not None
                        else ice_absorption_potential_v(beam.voltage_kv))
        ice = IceModel(sample.ice_thickness_nm * 10.0, sample.ice_mean_potential_v, absorption_v)
        absorption_ratio = sample.absorption_ratio if sample.absorption_ratio is not None else ice.absorption_ratio
        modes = choose_modes(scene, representation_default="auto", placement=config.simulation.map_placement,
                             pixel_size_a=det.pixel_size_a, wavelength_a=lam,
                             antialias_fraction=config.simulation.antialias_fraction or 1.0)
        cache = TypeCache(get_table(config.simulation.parametrization), det.pixel_size_a, ice, absorption_ratio,
                          device)
        return cls(config, scene, device, Grid(tuple(det.shape_px), det.pixel_size_a), lam,
                   interaction_constant(beam.voltage_kv), ice, modes, cache)

    @property
    def n_atoms(self) -> int:
        return sum(len(t.atoms) * self.scene.copies_of(i) for i, t in enumerate(self.scene.types))

    def particle_types(self) -> list[dict]:
        return [{"name": t.name, "atoms": len(t.atoms), "copies": self.scene.copies_of(i), "mode": self.modes[i]}
                for i, t in enumerate(self.scene.types)]

    def check_memory(self) -> int:
        """The run's peak memory estimate (bytes); refuses runs above the limit before allocating."""
        scene, p = self.scene, self.config.detector.pixel_size_a
        n_atoms = sum(len(scene.types[t].atoms) * scene.copies_of(t) for t, m in enumerate(self.modes)
                      if m == "atoms")
        per_slice = min(n_atoms, max([len(t.atoms) for t in scene.types] or [0]) * 4)
        extra = 0
        for t, m in enumerate(self.modes):
            if m == "atoms" or not len(scene.types[t].atoms):
                continue
            d = 2 * (scene.types[t].radius_a + max(24.0, 12 * p)) / p
            extra += int((2 * d) ** 3 * (16 + 32) if m == "projection" else (2 * d) ** 3 * 8 * 3)
        extra += 4_000_000 * 8 * 12  # one batch of copies being sampled
        return check_memory(self.config, n_atoms, per_slice, self.device, extra)

    def warnings(self) -> list[str]:
        return scene_warnings(self.scene, self.grid, self.ice.thickness_a)


def estimate_memory_bytes(shape_px: tuple[int, int], n_atoms: int, max_atoms_per_slice: int,
                          extra_bytes: int = 0) -> int:
    """Peak estimate: ~12 complex64 field-sized arrays + the structure-factor factors of one slice + atoms
    (+ ``extra_bytes``: per-type maps and their sampling buffers)."""
    field_bytes = shape_px[0] * shape_px[1] * 8
    per_slice = max_atoms_per_slice * (shape_px[0] + shape_px[1]) * 32
    return 12 * field_bytes + per_slice + n_atoms * 64 + extra_bytes


def check_memory(config: SimulationConfig, n_atoms: int, max_atoms_per_slice: int, device: torch.device,
                 extra_bytes: int = 0) -> int:
    need = estimate_memory_bytes(config.detector.shape_px, n_atoms, max_atoms_per_slice, extra_bytes)
    limit = (config.simulation.max_memory_gb * 1e9 if config.simulation.max_memory_gb
             else 0.8 * available_memory_bytes(device))
    if need > limit:
        raise ResourceError(
            f"detector.shape_px {tuple(config.detector.shape_px)}: this run needs about {need / 1e9:.1f} GB but only "
            f"{limit / 1e9:.1f} GB is allowed on {device}; reduce detector.shape_px or raise simulation.max_memory_gb")
    return need


def scene_warnings(scene: Scene, grid: Grid, ice_thickness_a: float) -> list[str]:
    """Things that are legal but probably not what the user meant (atoms outside the field or the ice)."""
    out = list(scene.warnings)
    if len(scene.placement) == 0 or all(len(t.atoms) == 0 for t in scene.types):
        return out + ["the sample has no atoms: the image shows ice (or vacuum) only"]
    n_out_field = n_out_ice = 0
    oy, ox = grid.origin_a
    wx, wy = grid.nx * grid.pixel_size_a, grid.ny * grid.pixel_size_a
    pl = scene.placement
    radius = np.array([t.radius_a for t in scene.types])[pl.type_index]
    c = pl.positions_a
    # only copies whose bounding sphere crosses an edge can have atoms outside: test those atom by atom
    crosses = ((c[:, 0] + ox - radius < 0) | (c[:, 0] + ox + radius > wx) | (c[:, 1] + oy - radius < 0)
               | (c[:, 1] + oy + radius > wy))
    if ice_thickness_a > 0:
        crosses |= np.abs(c[:, 2]) + radius > ice_thickness_a / 2
    for i in np.flatnonzero(crosses):
        ptype = scene.types[pl.type_index[i]]
        pos = ptype.atoms.positions_a @ pl.rotations[i].T + c[i]
        x, y = pos[:, 0] + ox, pos[:, 1] + oy
        n_out_field += int((~((x >= 0) & (x < wx) & (y >= 0) & (y < wy))).sum())
        if ice_thickness_a > 0:
            n_out_ice += int((np.abs(pos[:, 2]) > ice_thickness_a / 2).sum())
    if n_out_field:
        out.append(f"{n_out_field} atoms lie outside the {grid.ny}x{grid.nx} px field; the field is "
                   "periodic, so they wrap around to the opposite edge (check sample.particles.positions_a)")
    if n_out_ice:
        out.append(f"{n_out_ice} atoms stick out of the {ice_thickness_a / 10:g} nm ice slab "
                   "(they are simulated in vacuum; raise sample.ice_thickness_nm or move the particles)")
    return out
