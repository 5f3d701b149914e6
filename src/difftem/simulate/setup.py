"""What every simulation of a config shares: the config itself, the scene, the device, the sampling grid, the beam
constants, the ice, each particle type's representation and the per-type cache, and the up-front resource check.

The resource check (:meth:`Setup.check_memory`) compares the estimate of :func:`~difftem.forward.scene_build.
estimate_resources` (memory per component: the field, each type's atoms, atom path, maps and their sampling
buffers, the copies, the tilt stacks; and time) with the limits, before anything large is allocated, and a
refusal names the component that dominates and its fix. ``auto`` representations are first moved to whichever
mode fits. Random placement, which can be the slow part, is checked from the counts before it runs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import SimulationConfig, config_from_dict, load_config
from ..core.device import available_memory_bytes, resolve_device
from ..core.errors import ConfigError, ResourceError
from ..core.grid import Grid
from ..forward.beam import interaction_constant, wavelength_a
from ..forward.density_map import calibrate
from ..forward.ice import (
    ICE_FIELD_BYTES_PER_PX,
    ICE_SAMPLING_BYTES_PER_PX,
    IceStructureModel,
    IceVolume,
    auto_chunk_a,
    ice_seconds,
    volume_bytes,
    volume_shape,
)
from ..forward.loss import ElectronLoss
from ..forward.multislice import plan_window
from ..forward.potential import MIN_BOX_MARGIN_PX, IceModel, ice_absorption_potential_v
from ..forward.resources import (
    FIELD_BYTES_PER_PX,
    MULTISLICE_BYTES_PER_PX,
    Component,
    ResourceEstimate,
    TypeLoad,
    estimate_resources,
)
from ..forward.scattering import get_table
from ..forward.scene_build import (
    SceneView,
    TypeCache,
    auto_mode,
    auto_tile_margin_px,
    choose_modes,
    mode_candidates,
    plan_tiles,
    projection_radius_limit_a,
    type_radii,
    view_z_range,
)
from ..forward.tilt import acquisition_angles
from ..specimen.build import load_particle_type, resolve_structure, scene_of
from ..specimen.geometry import IceProfile
from ..specimen.scene import Scene

#: runs estimated to take longer than this are refused (the time estimate is good to a factor of a few)
MAX_RUN_HOURS = 24.0
#: random sequential addition jams near 38 % of the volume (spheres; elongated capsules lower): a count whose
#: bounding shapes (grown by half the gap) would fill more than this fraction of the field × ice cannot be placed
#: ice_structure auto keeps the 3-D ice when it adds at most this much, or at most the rest of the run's estimate
ICE_3D_FREE_S = 5.0
RANDOM_FILL_LIMIT = 0.5
RANDOM_AREA_LIMIT = 0.7  # in a plane (no ice): random disks jam near 55 % of the area


def prepare_config(config: SimulationConfig | dict | str | Path) -> SimulationConfig:
    """A :class:`SimulationConfig` from itself, a dict of the same shape or a YAML path."""
    if isinstance(config, (str, Path)):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    return config


def memory_limit(config: SimulationConfig, device: torch.device) -> tuple[float, str]:
    """(bytes a run may use, where that limit comes from)."""
    gb = config.simulation.max_memory_gb
    if gb:
        return gb * 1e9, f"simulation.max_memory_gb = {gb:g}"
    return 0.8 * available_memory_bytes(device), f"80 % of the memory free on {device}"


def n_views(config: SimulationConfig) -> int:
    """Exposures a config makes: its tilts, or one."""
    if config.tilt_series is None:
        return 1
    try:
        return max(1, len(acquisition_angles(config.tilt_series)))
    except ConfigError:
        return 1  # the tilt plan refuses it, naming the field


def _angles(config: SimulationConfig) -> list[float]:
    try:
        return list(acquisition_angles(config.tilt_series)) if config.tilt_series is not None else [0.0]
    except ConfigError:
        return [0.0]


def type_label(t: int, name: str, source: str = "") -> str:
    return f"sample.fiducials ({name})" if source == "fiducial" else f"sample.particles.{t} ({name})"


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
    estimate: ResourceEstimate | None = None
    notes: list[str] = field(default_factory=list)  # what the resource check changed (auto modes moved)
    radii: np.ndarray | None = None  # each type's radius (Å), computed once
    mode_estimates: dict = field(default_factory=dict)  # type → {mode: its estimate} where there was a choice
    ice_mode: str = "off"  # structured ice: off, slices or 3d (sample.ice_structure.mode resolved)
    ice_model: IceStructureModel | None = None
    ice_volume_shape: tuple[int, int, int] | None = None
    ice_voxel_a: float = 0.0
    ice_profile: IceProfile | None = None  # a non-flat thickness profile
    _ice_volume: IceVolume | None = None
    ice_estimates: dict | None = None

    def __post_init__(self):
        if self.radii is None:
            self.radii = type_radii(self.scene)

    # ------------------------------------------------------------------ structured ice
    def _plan_ice(self) -> None:
        """Resolve ``sample.ice_structure.mode``: 3d for tilt series (auto) when the volume fits, else slices."""
        cfg, sim = self.config.sample.ice_structure, self.config.simulation
        profile = IceProfile.from_config(self.config.sample)
        self.ice_profile = None if profile.is_flat else profile
        if (cfg.mode == "off" or self.ice.thickness_a <= 0 or cfg.amplitude == 0) and self.ice_profile is None:
            return
        self.ice_model = IceStructureModel(
            self.cache.table, self.grid.pixel_size_a, (self.config.seed + cfg.seed_offset) % 2**63, cfg.amplitude,
            chunk_a=self.ice_chunk_a(),
            absorption_ratio=self.ice.absorption_ratio,
            antialias_fraction=sim.antialias_fraction, taper_fraction=sim.antialias_taper_fraction)
        if cfg.mode == "off" or self.ice.thickness_a <= 0 or cfg.amplitude == 0:
            return  # a profile without fluctuations
        ts = self.config.tilt_series
        want_3d = cfg.mode == "3d" or (cfg.mode == "auto" and ts is not None)
        self.ice_mode = "slices"
        if want_3d:
            max_tilt = max((abs(a) for a in _angles(self.config)), default=0.0)
            thickest = self.ice_profile.bounds_a(self._half_reach_a())[1] if self.ice_profile else self.ice.thickness_a
            self.ice_volume_shape, self.ice_voxel_a = volume_shape(self.grid.shape_px, self.grid.pixel_size_a,
                                                                   thickest, max_tilt, self._tilt_axis_deg())
            self.ice_mode = "3d"

    def ice_chunk_a(self) -> float:
        """The depth (Å) of ice (and of films and vesicles) one field stands for: the config's, else from the band."""
        sim = self.config.simulation
        return self.config.sample.ice_structure.chunk_a or auto_chunk_a(self.grid.pixel_size_a, self.wavelength_a,
                                                                         sim.antialias_fraction or 1.0)

    def _tilt_axis_deg(self) -> float:
        ts = self.config.tilt_series
        return ts.tilt_axis_deg if ts is not None else 0.0

    def _half_reach_a(self) -> float:
        """Half the field's diagonal reach in the specimen at the steepest tilt (what the profile bounds cover)."""
        max_tilt = max((abs(a) for a in _angles(self.config)), default=0.0)
        return max(self.grid.shape_px) * self.grid.pixel_size_a / 2 / math.cos(math.radians(max_tilt))

    def profile_thickness_bounds_a(self) -> tuple[float, float]:
        """(thinnest, thickest) ice (Å) any view crosses (the flat slab's thickness twice without a profile)."""
        if self.ice_profile is None:
            return self.ice.thickness_a, self.ice.thickness_a
        return self.ice_profile.bounds_a(self._half_reach_a())

    def _ice_seconds(self, mode: str) -> float:
        thickest = self.profile_thickness_bounds_a()[1]
        speed = 1 + 0.7 * (max(1, torch.get_num_threads()) - 1)
        return ice_seconds(mode, self.grid.shape_px, thickest, n_views(self.config),
                           self.ice_model.chunk_a, self.ice_volume_shape, self.ice_voxel_a) / speed

    def _settle_ice_mode(self, est: ResourceEstimate) -> ResourceEstimate:
        """``auto``: back to per-slice fields when the 3-D ice would not fit, or would add more than the rest of the
        run (and over 5 s) to it (noted in the run's metadata with the estimates)."""
        if self.ice_mode != "3d" or self.config.sample.ice_structure.mode != "auto":
            return est
        limit, _ = memory_limit(self.config, self.device)
        ice_s = {m: self._ice_seconds(m) for m in ("3d", "slices")}
        self.ice_estimates = {m: round(t, 3) for m, t in ice_s.items()}
        rest_s = est.seconds - ice_s["3d"]
        extra_s = ice_s["3d"] - ice_s["slices"]
        if est.peak_bytes > limit:
            why = f"does not fit (~{_gb(volume_bytes(self.ice_volume_shape))})"
        elif extra_s > max(ICE_3D_FREE_S, rest_s):
            why = (f"would take ~{ice_s['3d']:.0f} s against ~{ice_s['slices']:.1f} s for per-slice fields and "
                   f"~{rest_s:.0f} s for the rest of the run (set mode: 3d to have it anyway)")
        else:
            return est
        self.notes.append(f"sample.ice_structure: the 3-D ice volume {self.ice_volume_shape} {why}; each view "
                          "draws independent per-slice ice fields instead (mode slices)")
        self.ice_mode, self.ice_volume_shape = "slices", None
        return self.estimate_of(self.modes)

    def electron_loss(self) -> ElectronLoss | None:
        """The explicit electron loss (``optics.electron_loss.model: explicit``), else None."""
        cfg = self.config.optics.electron_loss
        if cfg.model != "explicit":
            return None
        sim = self.config.simulation
        band = (sim.antialias_fraction * 0.5 / self.grid.pixel_size_a) if self.ice_mode != "off" else None
        return ElectronLoss.from_config(cfg, self.config.beam.voltage_kv, self.config.optics.aperture_mrad,
                                        self.cache.table, band_per_a=band,
                                        amplitude=self.config.sample.ice_structure.amplitude)

    def ice_volume(self) -> IceVolume | None:
        """The run's one 3-D ice realisation (built on first use; build it before tilt workers start)."""
        if self.ice_mode != "3d":
            return None
        if self._ice_volume is None:
            self._ice_volume = IceVolume(self.ice_model, self.ice_volume_shape, self.ice_voxel_a, self.device,
                                         axis_deg=self._tilt_axis_deg())
        return self._ice_volume

    def ice_metadata(self) -> dict:
        out = {"mode": self.ice_mode, "profile": self.ice_profile.kind if self.ice_profile else "flat"}
        if self.ice_mode != "off":
            cfg = self.config.sample.ice_structure
            out.update(amplitude=cfg.amplitude, chunk_a=round(self.ice_model.chunk_a, 3), seed=self.ice_model.seed)
            if self.ice_estimates:
                out["estimated_s"] = self.ice_estimates
        if self.ice_mode == "3d":
            out.update(volume_shape_zyx=list(self.ice_volume_shape), voxel_a=self.ice_voxel_a,
                       volume_bytes=2 * math.prod(self.ice_volume_shape))
        return out

    @classmethod
    def build(cls, config: SimulationConfig, scene: Scene | None = None) -> Setup:
        device = resolve_device(config.simulation.device)
        if scene is None:
            check_before_scene(config, device)
            scene = scene_of(config)
        det, beam, sample = config.detector, config.beam, config.sample
        lam = wavelength_a(beam.voltage_kv)
        absorption_v = (sample.ice_absorption_potential_v if sample.ice_absorption_potential_v is not None
                        else ice_absorption_potential_v(beam.voltage_kv))
        if config.optics.electron_loss.model == "explicit":
            absorption_v = 0.0  # the loss is applied from its causes (forward/loss.py), not by the potential
        ice = IceModel(sample.ice_thickness_nm * 10.0, sample.ice_mean_potential_v, absorption_v)
        absorption_ratio = sample.absorption_ratio if sample.absorption_ratio is not None else ice.absorption_ratio
        radii = type_radii(scene)
        candidates = choose_modes(scene, representation_default="auto", placement=config.simulation.map_placement,
                                  pixel_size_a=det.pixel_size_a, wavelength_a=lam,
                                  antialias_fraction=config.simulation.antialias_fraction or 1.0,
                                  slice_thickness_a=config.simulation.slice_thickness_a, radii=radii)
        modes = [c[0] for c in candidates]
        cache = TypeCache(get_table(config.simulation.parametrization), det.pixel_size_a, ice, absorption_ratio,
                          device, block_radius_a=projection_radius_limit_a(
                              pixel_size_a=det.pixel_size_a, wavelength_a=lam,
                              antialias_fraction=config.simulation.antialias_fraction or 1.0,
                              slice_thickness_a=config.simulation.slice_thickness_a), views=n_views(config))
        for ptype in scene.types:  # density maps: their numbers in volts, once per scene
            if ptype.density is not None and ptype.density.scale_v is None:
                calibrate(ptype.density, cache.table, ice)
        setup = cls(config, scene, device, Grid(tuple(det.shape_px), det.pixel_size_a), lam,
                    interaction_constant(beam.voltage_kv), ice, modes, cache, radii=radii)
        setup._plan_ice()
        setup._fit_modes(candidates)
        setup.estimate = setup._settle_ice_mode(setup.estimate)
        return setup

    @property
    def n_atoms(self) -> int:
        return sum(t.n_atoms * self.scene.copies_of(i) for i, t in enumerate(self.scene.types))

    def particle_types(self) -> list[dict]:
        return [{"name": t.name, "atoms": t.n_atoms, "copies": self.scene.copies_of(i), "mode": self.modes[i],
                 **({"subunits": len(t.subunits)} if t.subunits is not None else {}),
                 **({"unit_blocks": self.cache.block_sizes(i)} if self.cache.block_sizes(i) else {}),
                 **({"map": t.density.calibration} if t.density is not None else {}),
                 **({"mode_estimates": self.mode_estimates[i]} if i in self.mode_estimates else {})}
                for i, t in enumerate(self.scene.types)]

    # ------------------------------------------------------------------ the resource estimate
    def type_loads(self) -> list[TypeLoad]:
        pl, dz = self.scene.placement, self.config.simulation.slice_thickness_a
        loads = []
        for t, ptype in enumerate(self.scene.types):
            sel = pl.type_index == t
            loads.append(TypeLoad.of(ptype, int(sel.sum()), type_label(t, ptype.name, ptype.source_name), dz,
                                     pl.positions_a[sel, 2], pl.rotations[sel], float(self.radii[t])))
            if ptype.subunits is not None and sel.any():  # projected as the blocks of units the run will use
                parts = self.cache.unit_parts(t, ptype.subunits, int(sel.sum()))
                loads[-1].n_units = sum(len(part) for part in parts)
                loads[-1].unit_radius_a = max(part.radius_a for part in parts)
        return loads

    def multislice_plan(self) -> tuple[tuple[int, int] | None, int]:
        """(the grid multislice runs on, None for the field; tiles per view), as :func:`~difftem.simulate.
        pipeline.view_exit_wave` chooses them (for a tilt series, at its steepest tilt)."""
        sim, grid, scene = self.config.simulation, self.grid, self.scene
        view = SceneView(np.eye(3), self.ice.thickness_a, None)
        if self.config.tilt_series is not None:
            from ..core.rotations import tilt_rotation

            try:
                angles = acquisition_angles(self.config.tilt_series)
            except ConfigError:
                angles = [0.0]
            steep = max(angles or [0.0], key=abs)
            view = SceneView(tilt_rotation(steep, self.config.tilt_series.tilt_axis_deg),
                             self.ice.thickness_a / math.cos(math.radians(steep)), None)
        z_lo, z_hi = view_z_range(scene, view, self.radii)
        if sim.tile_px is not None and sim.tile_px < max(grid.shape_px):
            margin = sim.tile_margin_px if sim.tile_margin_px is not None else auto_tile_margin_px(
                grid.pixel_size_a, z_hi - z_lo, self.wavelength_a, sim.antialias_fraction)
            tiles = plan_tiles(grid, sim.tile_px, margin)
            return max((t.window.shape_px for t in tiles), key=lambda s: s[0] * s[1]), len(tiles)
        if (sim.window == "auto" and len(scene.placement) and self.ice_mode == "off" and self.ice_profile is None
                and self.config.sample.support is None):
            pl = scene.placement.transformed(view.rotation)
            ext = self.radii[pl.type_index][:, None]
            corners = np.concatenate([pl.positions_a - ext, pl.positions_a + ext])
            window = plan_window(grid, torch.as_tensor(corners), z_hi - z_lo, self.wavelength_a,
                                 antialias_fraction=sim.antialias_fraction)
            if window is not None:
                return window.grid.shape_px, 1
        return None, 1

    def atom_box_px(self, modes: list[str]) -> tuple[int, int] | None:
        """(rows, columns) the atom-path copies span, with the slice boxes' margins (None: no such copies)."""
        pl, p = self.scene.placement, self.grid.pixel_size_a
        sel = np.isin(pl.type_index, [t for t, m in enumerate(modes) if m == "atoms"])
        if not sel.any():
            return None
        r = self.radii[pl.type_index[sel]]
        c = pl.positions_a[sel]
        margin = 2 * max(MIN_BOX_MARGIN_PX, math.ceil(24.0 / p))
        return (math.ceil((float((c[:, 1] + r).max() - (c[:, 1] - r).min())) / p) + margin,
                math.ceil((float((c[:, 0] + r).max() - (c[:, 0] - r).min())) / p) + margin)

    def estimate_of(self, modes: list[str], loads: list[TypeLoad] | None = None,
                    plan: tuple | None = None) -> ResourceEstimate:
        config = self.config
        shape, n_tiles = plan or self.multislice_plan()
        damage = config.tilt_series is not None and config.tilt_series.damage != "none"
        est = estimate_resources(loads or self.type_loads(), modes, shape_px=tuple(config.detector.shape_px),
                                 pixel_size_a=config.detector.pixel_size_a,
                                 slice_thickness_a=config.simulation.slice_thickness_a,
                                 ice_thickness_a=self.ice.thickness_a, multislice_shape_px=shape, n_tiles=n_tiles,
                                 n_views=n_views(config), filtered_views=damage, atom_box_px=self.atom_box_px(modes),
                                 device_type=self.device.type, threads=torch.get_num_threads())
        if self.ice_model is not None:
            px = config.detector.shape_px[0] * config.detector.shape_px[1]
            mode = self.ice_mode if self.ice_mode != "off" else "slices"
            est.components.append(Component(
                "the structured ice's fields and their sampling (sample.ice_structure, sample.ice_profile)",
                resident_bytes=ICE_FIELD_BYTES_PER_PX * px, transient_bytes=ICE_SAMPLING_BYTES_PER_PX[mode] * px,
                seconds=self._ice_seconds(mode),
                fix="set sample.ice_structure.mode: off or use a smaller detector.shape_px", per_view=True))
        if self.ice_mode == "3d":
            need = volume_bytes(self.ice_volume_shape)
            keep = 2 * math.prod(self.ice_volume_shape)
            est.components.append(Component(
                f"the 3-D ice volume {'×'.join(map(str, self.ice_volume_shape))} (sample.ice_structure)",
                resident_bytes=keep, transient_bytes=need - keep,
                fix="set sample.ice_structure.mode: slices (independent ice per view), thinner ice or a smaller field"))
        return est

    def _fit_modes(self, candidates: list[list[str]]) -> None:
        """Estimate, and give each type that has a choice (``candidates``) the mode estimated fastest among those
        that fit the memory and time limits."""
        loads, plan = self.type_loads(), self.multislice_plan()
        choice = {t: c for t, c in enumerate(candidates)
                  if len(c) > 1 and self.scene.copies_of(t) and self.scene.types[t].n_atoms}
        limit, _ = memory_limit(self.config, self.device)
        first = list(self.modes)
        self.modes, self.estimate, self.mode_estimates = cheapest_modes(
            self.modes, choice, lambda m: self.estimate_of(m, loads, plan), limit)
        self.notes += [f"{loads[t].label}: representation auto chose {self.modes[t]} (estimated "
                       f"{_estimates_text(self.mode_estimates[t])})" for t in choice if self.modes[t] != first[t]]

    def check_memory(self) -> int:
        """The run's peak memory estimate (bytes); refuses runs above the memory or time limit before
        allocating, naming the part of the run that dominates and its fix."""
        est = self.estimate if self.estimate is not None else self.estimate_of(self.modes)
        check_estimate(est, self.config, self.device)
        return est.peak_bytes

    def warnings(self) -> list[str]:
        # self.notes (what the resource check chose for an auto mode) are information, kept apart from these
        out = scene_warnings(self.scene, self.grid, self.ice.thickness_a, self.radii) + _dose_warnings(self.config)
        est = self.estimate
        if est is not None and est.seconds > 3600:
            out.append(f"this run is estimated to take about {est.seconds / 3600:.1f} h (mostly "
                       f"{est.by_time()[0].cause})")
        return out


def cheapest_modes(modes: list[str], candidates: dict[int, list[str]], estimate_of, limit_bytes: float
                   ) -> tuple[list[str], ResourceEstimate, dict[int, dict]]:
    """Give each type in ``candidates`` (index → its allowed modes) the mode whose run is estimated fastest
    among those within the memory and time limits (or, if none is, the least over them), types taken largest
    share of the estimate first. Returns (modes, estimate, each type's {mode: {seconds, memory_bytes}})."""
    modes = list(modes)
    est = estimate_of(modes)
    max_s = MAX_RUN_HOURS * 3600

    def rank(e: ResourceEstimate) -> tuple[float, float]:
        over = max(e.peak_bytes / limit_bytes, e.seconds / max_s)
        return (over, e.seconds) if over > 1 else (0.0, e.seconds)

    def share(t: int) -> float:
        return sum(c.seconds + c.peak_bytes / 1e12 for c in est.components if c.type_index == t)

    tried: dict[int, dict] = {}
    for t in sorted(candidates, key=share, reverse=True):
        seen = {modes[t]: est}
        for m in candidates[t]:
            if m in seen:
                continue
            trial = list(modes)
            trial[t] = m
            seen[m] = estimate_of(trial)
        best = min(seen, key=lambda m: rank(seen[m]))
        modes[t], est = best, seen[best]
        tried[t] = {m: {"seconds": round(e.seconds, 3), "memory_bytes": e.peak_bytes} for m, e in seen.items()}
    return modes, est, tried


def _estimates_text(estimates: dict) -> str:
    return ", ".join(f"{m} {e['seconds']:.3g} s / {_gb(e['memory_bytes'])}" for m, e in estimates.items())


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e9:.2f} GB"


def _hours(s: float) -> str:
    return f"{s / 3600:.0f} h" if s >= 36000 else f"{s / 3600:.1f} h"


def check_estimate(est: ResourceEstimate, config: SimulationConfig, device: torch.device) -> None:
    """Refuse (ResourceError) an estimate over the memory limit or MAX_RUN_HOURS, naming what dominates."""
    need = est.peak_bytes
    limit, source = memory_limit(config, device)
    if need > limit:
        parts = est.by_memory()
        top = parts[0]
        rest = "; then " + ", ".join(f"{c.cause} ~{_gb(c.peak_bytes)}" for c in parts[1:3] if c.peak_bytes > 0)
        raise ResourceError(
            f"this run needs about {_gb(need)} but {_gb(limit)} is allowed ({source}): mostly {top.cause}, "
            f"~{_gb(top.peak_bytes)}{rest if len(parts) > 1 else ''}. To fit: {top.fix}; or raise "
            "simulation.max_memory_gb (on a machine with that much free)")
    seconds = est.seconds
    if seconds > MAX_RUN_HOURS * 3600:
        top = est.by_time()[0]
        raise ResourceError(
            f"this run would take about {_hours(seconds)} on {device} with {torch.get_num_threads()} threads "
            f"(estimated; runs over {MAX_RUN_HOURS:g} h are refused): mostly {top.cause}, ~{_hours(top.seconds)}. "
            f"To shorten it: {top.fix}")


def check_before_scene(config: SimulationConfig, device: torch.device) -> None:
    """What can be refused from the counts before the scene is built: random placements that cannot succeed
    (their bounding shapes would fill more than the field and the ice hold) and runs whose estimate from the
    counts is already over the limits. Only entries placed at random are read here (random placement is the
    slow part of building a scene); the full estimate follows once the scene exists."""
    entries = [(t, p) for t, p in enumerate(config.sample.particles) if p.random is not None]
    if not entries:
        return
    det, sample, sim = config.detector, config.sample, config.simulation
    width_a, height_a = det.shape_px[1] * det.pixel_size_a, det.shape_px[0] * det.pixel_size_a
    ice_a = sample.ice_thickness_nm * 10.0
    limit, _ = memory_limit(config, device)
    loads, representations, fills, random_copies = [], [], [], 0
    for t, particle in entries:
        gb = config.simulation.max_memory_gb
        ptype = load_particle_type(particle, resolve_structure, field=f"sample.particles.{t}",
                                   max_bytes=gb * 1e9 if gb else None)
        rnd = particle.random
        if rnd.count is not None:
            count = rnd.count
        else:
            count = round(rnd.density_per_um3 * width_a * height_a * max(ice_a, 2 * ptype.bounds.extent_a) * 1e-12)
        if not count or (not ptype.n_atoms and ptype.density is None):
            continue
        random_copies += count
        b, g = ptype.bounds, rnd.min_gap_a / 2
        r = b.radius_a + g
        if ice_a > 0:
            fills.append((count * (math.pi * r * r * 2 * b.half_length_a + 4 / 3 * math.pi * r**3)
                          / ((width_a + 2 * g) * (height_a + 2 * g) * (ice_a + 2 * g)), t, count, ptype.name))
        else:
            fills.append((count * math.pi * r * r / ((width_a + 2 * g) * (height_a + 2 * g)), t, count, ptype.name))
        loads.append(TypeLoad.of(ptype, count, type_label(t, ptype.name), sim.slice_thickness_a))
        representations.append(particle.representation)
    total = sum(f[0] for f in fills)
    cap = RANDOM_FILL_LIMIT if ice_a > 0 else RANDOM_AREA_LIMIT
    if total > cap:
        share, t, count, name = max(fills)
        where = (f"the {width_a / 10:g} × {height_a / 10:g} nm field and {ice_a / 10:g} nm of ice" if ice_a > 0
                 else f"the {width_a / 10:g} × {height_a / 10:g} nm field (no ice: one layer)")
        raise ConfigError(
            f"sample.particles.{t}.random.count: {count:,} copies of {name} cannot be placed at random in {where}: "
            f"their bounding shapes (with half of min_gap_a) would fill {100 * total:.0f} % of it, and random "
            f"placement jams near {'38' if ice_a > 0 else '55'} %; lower the count, or enlarge detector.shape_px"
            + (" / sample.ice_thickness_nm" if ice_a > 0 else " or add ice"))
    lam = wavelength_a(config.beam.voltage_kv)
    candidates = {}
    for i, (representation, ld) in enumerate(zip(representations, loads, strict=True)):
        cands = mode_candidates(representation, ld.radius_a, ld.unit_radius_a, placement=sim.map_placement,
                                pixel_size_a=det.pixel_size_a, wavelength_a=lam,
                                antialias_fraction=sim.antialias_fraction or 1.0,
                                slice_thickness_a=sim.slice_thickness_a)
        if representation == "auto":
            first = auto_mode(ld.n_atoms * ld.n_copies, cands[1])
            cands = [first] + [m for m in cands if m != first]
        candidates[i] = cands
    tiles = sim.tile_px is not None and sim.tile_px < max(det.shape_px)

    def estimate_of(modes):
        return estimate_resources(loads, modes, shape_px=tuple(det.shape_px), pixel_size_a=det.pixel_size_a,
                                  slice_thickness_a=sim.slice_thickness_a, ice_thickness_a=ice_a,
                                  multislice_shape_px=(sim.tile_px, sim.tile_px) if tiles else None,
                                  n_tiles=math.ceil(det.shape_px[0] / sim.tile_px) * math.ceil(
                                      det.shape_px[1] / sim.tile_px) if tiles else 1,
                                  n_views=n_views(config), random_copies=random_copies, device_type=device.type,
                                  threads=torch.get_num_threads())

    _, est, _ = cheapest_modes([c[0] for c in candidates.values()],
                               {i: c for i, c in candidates.items() if len(c) > 1}, estimate_of, limit)
    check_estimate(est, config, device)


def estimate_memory_bytes(shape_px: tuple[int, int], n_atoms: int = 0, max_atoms_per_slice: int = 0,
                          extra_bytes: int = 0) -> int:
    """A quick estimate from counts alone (the dataset builder sizes its workers with it): the field-sized
    arrays, the atom path's arrays and one slice's structure factors (+ ``extra_bytes``). A run's own check uses
    the full model (:meth:`Setup.check_memory`)."""
    from ..forward.resources import ATOM_PATH_BYTES, SF_BYTES

    px = shape_px[0] * shape_px[1]
    per_slice = max_atoms_per_slice * (shape_px[0] + shape_px[1] // 2 + 1) * SF_BYTES
    return int((FIELD_BYTES_PER_PX + MULTISLICE_BYTES_PER_PX) * px + per_slice + n_atoms * ATOM_PATH_BYTES
               + extra_bytes)


_OOM_TEXT = ("can't allocate memory", "cannot allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: torch's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _OOM_TEXT)


@contextmanager
def out_of_memory_guard(config: SimulationConfig, holder: dict):
    """Turn an allocation failure inside the block into a ResourceError naming the estimate and the fix.
    ``holder["setup"]``, once set, supplies the estimate."""
    try:
        yield holder
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        setup = holder.get("setup")
        device = setup.device if setup is not None else resolve_device(config.simulation.device)
        try:
            free = f"{_gb(available_memory_bytes(device))} is free now"
        except Exception:  # noqa: BLE001 - the message must not fail
            free = "the free memory is unknown"
        est = setup.estimate if setup is not None else None
        what = (f"the estimate was ~{_gb(est.peak_bytes)}, mostly {est.by_memory()[0].cause}"
                if est is not None else "before the estimate was made")
        fix = est.by_memory()[0].fix if est is not None else "reduce detector.shape_px or the particle counts"
        gb = config.simulation.max_memory_gb
        if gb:
            hint = (f"simulation.max_memory_gb = {gb:g} allowed more than this machine has ({free}); lower it or "
                    f"leave it unset (80 % of the free memory), or {fix}")
        else:
            hint = f"{free}; {fix}, or free memory for the run"
        raise ResourceError(f"ran out of memory on {device} ({what}): {hint}") from None


def scene_warnings(scene: Scene, grid: Grid, ice_thickness_a: float, radii: np.ndarray | None = None,
                   max_atoms: int = 4_000_000) -> list[str]:
    """Things that are legal but probably not what the user meant (atoms outside the field or the ice).
    Copies of more than ``max_atoms`` atoms are tested on an even subsample (the counts then say "about")."""
    out = list(scene.warnings)
    if len(scene.placement) == 0 or all(t.n_atoms == 0 for t in scene.types):
        return out + ["the sample has no atoms: the image shows ice (or vacuum) only"]
    n_out_field = n_out_ice = 0
    approx = False
    oy, ox = grid.origin_a
    wx, wy = grid.nx * grid.pixel_size_a, grid.ny * grid.pixel_size_a
    pl = scene.placement
    radius = (type_radii(scene) if radii is None else radii)[pl.type_index]
    c = pl.positions_a
    # only copies whose bounding sphere crosses an edge can have atoms outside: test those atom by atom
    crosses = ((c[:, 0] + ox - radius < 0) | (c[:, 0] + ox + radius > wx) | (c[:, 1] + oy - radius < 0)
               | (c[:, 1] + oy + radius > wy))
    if ice_thickness_a > 0:
        crosses |= np.abs(c[:, 2]) + radius > ice_thickness_a / 2
    for i in np.flatnonzero(crosses):
        ptype = scene.types[pl.type_index[i]]
        if not ptype.atoms_built:  # a type of subunits: its units that cross, atom by atom (each unit a copy)
            units = ptype.subunits
            rots, cs = units.poses(pl.rotations[i][None], c[i][None])
            n_f, n_i = _atoms_outside(units.atoms.positions_a, rots, cs, units.radius_a, (ox, oy), (wx, wy),
                                      ice_thickness_a, max_atoms)
            n_out_field, n_out_ice = n_out_field + n_f, n_out_ice + n_i
            continue
        atoms = ptype.atoms.positions_a
        step = max(1, math.ceil(len(atoms) / max_atoms))
        approx |= step > 1
        pos = atoms[::step] @ pl.rotations[i].T + c[i]
        x, y = pos[:, 0] + ox, pos[:, 1] + oy
        n_out_field += step * int((~((x >= 0) & (x < wx) & (y >= 0) & (y < wy))).sum())
        if ice_thickness_a > 0:
            n_out_ice += step * int((np.abs(pos[:, 2]) > ice_thickness_a / 2).sum())
    about = "about " if approx else ""
    if n_out_field:
        out.append(f"{about}{n_out_field} atoms lie outside the {grid.ny}x{grid.nx} px field; the field is "
                   "periodic, so they wrap around to the opposite edge (check sample.particles.positions_a)")
    if n_out_ice:
        out.append(f"{about}{n_out_ice} atoms stick out of the {ice_thickness_a / 10:g} nm ice slab "
                   "(they are simulated in vacuum; raise sample.ice_thickness_nm or move the particles)")
    return out


def _atoms_outside(unit_a: np.ndarray, rotations: np.ndarray, centres_a: np.ndarray, unit_radius_a: float,
                   origin_a: tuple[float, float], field_a: tuple[float, float], ice_thickness_a: float,
                   max_atoms: int) -> tuple[int, int]:
    """(atoms outside the field, outside the ice) of the copies of one unit at these poses: copies whose sphere
    lies wholly inside or wholly outside are counted whole, the rest atom by atom ``max_atoms`` at a time."""
    (ox, oy), (wx, wy) = origin_a, field_a
    n = len(unit_a)
    x, y, z = centres_a[:, 0] + ox, centres_a[:, 1] + oy, centres_a[:, 2]
    r = unit_radius_a
    in_f = (x - r >= 0) & (x + r < wx) & (y - r >= 0) & (y + r < wy)
    out_f = (x + r < 0) | (x - r >= wx) | (y + r < 0) | (y - r >= wy)
    n_field = n * int(out_f.sum())
    half = ice_thickness_a / 2
    test_ice = ice_thickness_a > 0
    in_i = (np.abs(z) + r <= half) if test_ice else np.ones(len(z), bool)
    out_i = (np.abs(z) - r > half) if test_ice else np.zeros(len(z), bool)
    n_ice = n * int(out_i.sum())
    mixed = np.flatnonzero(~(in_f | out_f) | ~(in_i | out_i))
    step = max(1, max_atoms // max(n, 1))
    for lo in range(0, len(mixed), step):
        sel = mixed[lo:lo + step]
        pos = unit_a[None] @ rotations[sel].transpose(0, 2, 1) + centres_a[sel, None]  # (B, n, 3)
        px, py = pos[..., 0] + ox, pos[..., 1] + oy
        outside = ~((px >= 0) & (px < wx) & (py >= 0) & (py < wy))
        n_field += int(outside[~(in_f | out_f)[sel]].sum())
        if test_ice:
            n_ice += int((np.abs(pos[..., 2]) > half)[~(in_i | out_i)[sel]].sum())
    return n_field, n_ice


def _dose_warnings(config) -> list[str]:
    """A dose of zero records no electrons: its images are all zero (a noise-free image is the dose times the
    intensity), which is rarely what was meant; a total dose that per-tilt doses override is not used."""
    series = config.tilt_series
    if series is not None and series.dose_per_tilt_e_per_a2 is not None:
        out = ([] if series.total_dose_e_per_a2 is None else
               [f"tilt_series.total_dose_e_per_a2 = {series.total_dose_e_per_a2:g} is not used: "
                "dose_per_tilt_e_per_a2 gives each tilt's dose (remove one of them)"])
        if not any(d > 0 for d in series.dose_per_tilt_e_per_a2):
            out.append("tilt_series.dose_per_tilt_e_per_a2: every tilt's dose is 0, so every image is all zero")
        return out
    if series is not None and series.total_dose_e_per_a2 is not None:
        return ([] if series.total_dose_e_per_a2 > 0 else
                ["tilt_series.total_dose_e_per_a2 = 0: the images record no electrons and are all zero"])
    if not config.beam.dose_e_per_a2 > 0:
        return ["beam.dose_e_per_a2 = 0: the images record no electrons and are all zero"]
    return []
