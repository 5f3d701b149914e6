"""The forward pipeline: config → scene atoms → sliced potential → multislice → optics → detector."""

from __future__ import annotations

import cmath
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import SimulationConfig, config_from_dict, load_config
from ..core.device import available_memory_bytes, resolve_device
from ..core.errors import ConfigError, ResourceError
from ..core.grid import Grid
from ..core.rotations import tilt_rotation
from ..core.version import __version__
from ..forward.beam import interaction_constant, wavelength_a
from ..forward.detector import apply_mtf, expected_counts, make_mtf, shot_noise
from ..forward.multislice import MultisliceStats, multislice, plan_window
from ..forward.optics import Optics, image_intensity, transfer_function
from ..forward.potential import IceModel, Patch, embed, ice_absorption_potential_v
from ..forward.scattering import get_table
from ..forward.scene_build import (
    SceneView,
    TypeCache,
    auto_tile_margin_px,
    build_view_potential,
    choose_modes,
    plan_tiles,
    view_z_range,
)
from ..forward.tilt import plan_tilts
from ..specimen.build import scene_of
from ..specimen.scene import Scene, ground_truth_rows


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


def estimate_memory_bytes(shape_px: tuple[int, int], n_atoms: int, max_atoms_per_slice: int, extra_bytes: int = 0) -> int:
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


def _field_exit_wave(config: SimulationConfig, scene: Scene, view: SceneView, modes: list[str], cache: TypeCache,
                     grid: Grid, lam: float, sigma: float, *, keep_potential: bool, tick, stats: MultisliceStats):
    """Exit wave (and optionally projected potential) over the field for one view: whole field, a window
    around the specimen, or tiles."""
    sim = config.simulation
    ice = IceModel(view.ice_thickness_a, config.sample.ice_mean_potential_v, cache.ice.absorption_potential_v)
    z_range = view_z_range(scene, view)
    thickness_a = z_range[1] - z_range[0]

    def run(window):
        pot = build_view_potential(scene, view, modes, cache, field_grid=grid, window=window,
                                   slice_thickness_a=sim.slice_thickness_a, ice=ice, z_range_a=z_range,
                                   builder=sim.builder, absorption_ratio=config.sample.absorption_ratio)
        wave = multislice(pot, lam, sigma, antialias_fraction=sim.antialias_fraction, bandlimit=sim.bandlimit,
                          progress=tick, stats=stats, taper_fraction=sim.antialias_taper_fraction)
        return pot, wave, (pot.project() if keep_potential else None)

    if sim.tile_px is not None and sim.tile_px < max(grid.shape_px):
        margin = sim.tile_margin_px if sim.tile_margin_px is not None else auto_tile_margin_px(
            grid.pixel_size_a, thickness_a, lam, sim.antialias_fraction)
        exit_wave = torch.empty(grid.shape_px, dtype=torch.complex64, device=cache.device)
        projected = torch.empty(grid.shape_px, dtype=torch.complex64, device=cache.device) if keep_potential else None
        pot = None
        for tile in plan_tiles(grid, sim.tile_px, margin):
            pot, wave, proj = run(tile.window)
            (h, w), oy, ox = tile.core_shape, tile.core_y0 - tile.y0, tile.core_x0 - tile.x0
            exit_wave[tile.core_y0:tile.core_y0 + h, tile.core_x0:tile.core_x0 + w] = wave[oy:oy + h, ox:ox + w]
            if proj is not None:
                projected[tile.core_y0:tile.core_y0 + h, tile.core_x0:tile.core_x0 + w] = proj[oy:oy + h, ox:ox + w]
        return pot, exit_wave, projected, {"tiles": len(plan_tiles(grid, sim.tile_px, margin)), "tile_margin_px": margin}

    window = None
    if sim.window == "auto" and len(scene.placement):
        pl = scene.placement.transformed(view.rotation)
        ext = np.array([t.radius_a for t in scene.types])[pl.type_index][:, None]
        corners = np.concatenate([pl.positions_a - ext, pl.positions_a + ext])
        win = plan_window(grid, torch.as_tensor(corners), thickness_a, lam, antialias_fraction=sim.antialias_fraction)
        window = win
    pot, wave, proj = run(window.grid if window else None)
    if window is not None:  # outside the window: plane wave × uniform ice transmission
        uniform = pot.total_uniform_potential()
        wave = embed(Patch(window.y0, window.x0, wave), grid.shape_px, cmath.exp(1j * sigma * uniform))
        if proj is not None:
            proj = embed(Patch(window.y0, window.x0, proj), grid.shape_px, uniform)
    return pot, wave, proj, {"multislice_window_px": list(window.grid.shape_px) if window else None}


def _detect(config: SimulationConfig, exit_wave: torch.Tensor, grid: Grid, lam: float, *, z_exit_a: float,
            dose_e_per_a2: float, defocus_um: float, generator: torch.Generator):
    """Optics and detector for one exposure: (intensity, expected counts after MTF, detected counts)."""
    oc, det, beam = config.optics, config.detector, config.beam
    optics = Optics(defocus_um * 1e4, oc.astigmatism_um * 1e4, oc.astigmatism_angle_deg, oc.cs_mm, oc.cc_mm,
                    oc.energy_spread_ev, oc.illumination_semiangle_mrad, oc.aperture_mrad, oc.phase_shift_deg)
    # defocus is given at the ice mid-plane (z = 0); the wave leaves the specimen z_exit below it
    h = transfer_function(grid, lam, beam.voltage_kv, optics, defocus_a=optics.defocus_a + z_exit_a,
                          device=exit_wave.device)
    intensity = image_intensity(exit_wave, h)
    mtf = make_mtf(config)
    expected = expected_counts(intensity, dose_e_per_a2, det.pixel_size_a)
    counts = shot_noise(expected, det.dqe, generator) if det.noise == "poisson" else expected
    noiseless = apply_mtf(expected, mtf, det.normalize_mtf) * det.gain
    micrograph = apply_mtf(counts, mtf, det.normalize_mtf) * det.gain
    return intensity, noiseless, micrograph


def _prepare(config):
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    return config


def _setup(config: SimulationConfig, scene: Scene):
    device = resolve_device(config.simulation.device)
    det, beam = config.detector, config.beam
    grid = Grid(tuple(det.shape_px), det.pixel_size_a)
    lam, sigma = wavelength_a(beam.voltage_kv), interaction_constant(beam.voltage_kv)
    absorption_v = (config.sample.ice_absorption_potential_v if config.sample.ice_absorption_potential_v is not None
                    else ice_absorption_potential_v(beam.voltage_kv))
    ice = IceModel(config.sample.ice_thickness_nm * 10.0, config.sample.ice_mean_potential_v, absorption_v)
    absorption_ratio = (config.sample.absorption_ratio if config.sample.absorption_ratio is not None
                        else ice.absorption_ratio)
    modes = choose_modes(scene, representation_default="auto", placement=config.simulation.map_placement,
                         pixel_size_a=det.pixel_size_a, wavelength_a=lam,
                         antialias_fraction=config.simulation.antialias_fraction or 1.0)
    cache = TypeCache(get_table(config.simulation.parametrization), det.pixel_size_a, ice, absorption_ratio, device)
    return device, grid, lam, sigma, ice, modes, cache


def _memory_check(config, scene: Scene, modes, device) -> int:
    n_atoms = sum(len(scene.types[t].atoms) * scene.copies_of(t) for t, m in enumerate(modes) if m == "atoms")
    per_slice = min(n_atoms, max([len(t.atoms) for t in scene.types] or [0]) * 4)
    extra = 0
    p = config.detector.pixel_size_a
    for t, m in enumerate(modes):
        if m == "atoms" or not len(scene.types[t].atoms):
            continue
        d = 2 * (scene.types[t].radius_a + max(24.0, 12 * p)) / p
        extra += int((2 * d) ** 3 * (16 + 32) if m == "projection" else (2 * d) ** 3 * 8 * 3)
    extra += 4_000_000 * 8 * 12  # one batch of copies being sampled
    return check_memory(config, n_atoms, per_slice, device, extra)


def simulate(config: "SimulationConfig | dict | str | Path", *, keep_potential: bool = False,
             progress: Callable[[int, int], None] | None = None, scene: Scene | None = None) -> SimulationResult:
    """Run the whole forward model for one micrograph.

    ``config`` is a :class:`SimulationConfig`, a dict of the same shape, or a YAML path.
    ``progress(done, total)`` is called once per slice. ``scene``: reuse a scene built before.
    """
    config = _prepare(config)
    if config.tilt_series is not None:
        raise ConfigError("tilt_series is set: use difftem.simulate_tilt_series (or `difftem simulate`, which "
                          "dispatches on it)")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    scene = scene or scene_of(config)
    device, grid, lam, sigma, ice, modes, cache = _setup(config, scene)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    timings["structure_s"] = time.perf_counter() - t0
    warnings = scene_warnings(scene, grid, ice.thickness_a)
    mem_estimate = _memory_check(config, scene, modes, device)
    view = SceneView(np.eye(3), ice.thickness_a, None)

    t1 = time.perf_counter()
    done, total = 0, None

    def tick(n):
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    stats = MultisliceStats()
    with torch.no_grad():
        pot, exit_wave, projected, plan = _field_exit_wave(config, scene, view, modes, cache, grid, lam, sigma,
                                                           keep_potential=keep_potential, tick=tick, stats=stats)
        timings["multislice_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        z_exit_a = pot.z_start_a + pot.n_slices * pot.slice_thickness_a
        intensity, noiseless, micrograph = _detect(config, exit_wave, grid, lam, z_exit_a=z_exit_a,
                                                   dose_e_per_a2=config.beam.dose_e_per_a2,
                                                   defocus_um=config.optics.defocus_um, generator=generator)
        timings["optics_detector_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    n_atoms = sum(len(t.atoms) * scene.copies_of(i) for i, t in enumerate(scene.types))
    meta = {
        "difftem_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seed": config.seed,
        "n_atoms": n_atoms,
        "n_copies": len(scene.placement),
        "particle_types": [{"name": t.name, "atoms": len(t.atoms), "copies": scene.copies_of(i), "mode": modes[i]}
                           for i, t in enumerate(scene.types)],
        "n_slices": pot.n_slices,
        "n_propagations": stats.n_propagations,
        **plan,
        "z_exit_a": z_exit_a,
        "wavelength_a": lam,
        "interaction_constant_rad_per_v_a": sigma,
        "memory_estimate_bytes": mem_estimate,
        "structure_notes": scene.notes,
        "warnings": warnings,
        "particles": ground_truth_rows(scene.types, scene.placement, shape_px=grid.shape_px,
                                       pixel_size_a=grid.pixel_size_a),
        "timings": timings,
    }
    return SimulationResult(micrograph.float(), noiseless.float(), intensity.float(), exit_wave, grid.pixel_size_a,
                            config, projected, meta)


@dataclass
class TiltSeriesResult:
    """Stacks (n_tilts, H, W) ordered by tilt angle (ascending), with per-tilt metadata."""

    tilts: torch.Tensor  # detected counts (× gain)
    noiseless: torch.Tensor  # expected counts after the MTF (× gain)
    angles_deg: list[float]
    pixel_size_a: float
    config: SimulationConfig
    tilt_rows: list[dict]  # per tilt: angle, acquisition order, dose, prior dose, defocus
    metadata: dict = field(default_factory=dict)


def simulate_tilt_series(config: "SimulationConfig | dict | str | Path", *,
                         progress: Callable[[int, int], None] | None = None,
                         scene: Scene | None = None) -> TiltSeriesResult:
    """Simulate ``config.tilt_series``: one exposure per tilt of the same scene, in acquisition order
    (cumulative dose drives the damage), returned sorted by angle. ``progress(done, total)`` counts tilts."""
    config = _prepare(config)
    ts = config.tilt_series
    if ts is None:
        raise ConfigError("tilt_series: not set in the config; use difftem.simulate for a single micrograph")
    t0 = time.perf_counter()
    plan = plan_tilts(config)
    scene = scene or scene_of(config)
    device, grid, lam, sigma, ice, modes, cache = _setup(config, scene)
    warnings = scene_warnings(scene, grid, ice.thickness_a)
    mem_estimate = _memory_check(config, scene, modes, device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    n = len(plan.angles_deg)
    images, clean, per_tilt_s = [None] * n, [None] * n, [0.0] * n
    stats = MultisliceStats()
    with torch.no_grad():
        for i, angle in enumerate(plan.angles_deg):
            t1 = time.perf_counter()
            view = SceneView(tilt_rotation(angle, plan.axis_deg), ice.thickness_a / math.cos(math.radians(angle)),
                             plan.transfer(i, ts, config.beam.voltage_kv))
            pot, exit_wave, _, _ = _field_exit_wave(config, scene, view, modes, cache, grid, lam, sigma,
                                                    keep_potential=False, tick=lambda k: None, stats=stats)
            z_exit_a = pot.z_start_a + pot.n_slices * pot.slice_thickness_a
            _, noiseless, micrograph = _detect(config, exit_wave, grid, lam, z_exit_a=z_exit_a,
                                               dose_e_per_a2=plan.doses_e_per_a2[i], defocus_um=plan.defoci_um[i],
                                               generator=generator)
            images[i], clean[i] = micrograph.float(), noiseless.float()
            per_tilt_s[i] = time.perf_counter() - t1
            if progress is not None:
                progress(i + 1, n)
    order = plan.order_by_angle
    rows = [{"difftemTiltIndex": j, "rlnTomoNominalStageTiltAngle": plan.angles_deg[i],
             "rlnTomoNominalTiltAxisAngle": plan.axis_deg, "difftemAcquisitionOrder": i,
             "rlnMicrographPreExposure": plan.prior_doses_e_per_a2[i], "difftemDoseEPerA2": plan.doses_e_per_a2[i],
             "rlnDefocusU": plan.defoci_um[i] * 1e4, "rlnDefocusV": plan.defoci_um[i] * 1e4,
             "difftemIceThicknessAlongBeamA": ice.thickness_a / math.cos(math.radians(plan.angles_deg[i])),
             "difftemSeconds": per_tilt_s[i]} for j, i in enumerate(order)]
    meta = {
        "difftem_version": __version__, "torch_version": torch.__version__, "device": str(device),
        "threads": torch.get_num_threads(), "seed": config.seed, "n_tilts": n,
        "n_copies": len(scene.placement),
        "particle_types": [{"name": t.name, "atoms": len(t.atoms), "copies": scene.copies_of(k), "mode": modes[k]}
                           for k, t in enumerate(scene.types)],
        "damage": ts.damage, "tilt_axis_deg": plan.axis_deg, "total_dose_e_per_a2": float(sum(plan.doses_e_per_a2)),
        "memory_estimate_bytes": mem_estimate, "warnings": warnings, "structure_notes": scene.notes,
        "particles": ground_truth_rows(scene.types, scene.placement, shape_px=grid.shape_px,
                                       pixel_size_a=grid.pixel_size_a, micrograph="tilt_series.mrc"),
        "timings": {"total_s": time.perf_counter() - t0, "per_tilt_s": [per_tilt_s[i] for i in order],
                    "map_bytes": cache.nbytes},
    }
    return TiltSeriesResult(torch.stack([images[i] for i in order]), torch.stack([clean[i] for i in order]),
                            [plan.angles_deg[i] for i in order], grid.pixel_size_a, config, rows, meta)


def potential_volume(config: "SimulationConfig | dict | str | Path", *, voxel_size_a: float | None = None,
                     thickness_a: float | None = None, include_ice: bool = False,
                     scene: Scene | None = None) -> tuple[torch.Tensor, float]:
    """The scene's (untilted) electrostatic potential as a (Z, Y, X) volume in V, the ground truth for tomography.

    Voxels are the detector's pixel (or ``voxel_size_a``) on the detector's field; z spans ``thickness_a``
    (default: the ice, or the particles' extent) centred on the ice mid-plane. Each voxel is the mean potential
    over its z-slab from the same builders as the images (exact atoms or per-type maps sampled slab by slab);
    the ice's uniform potential is left out unless ``include_ice``. Geometry: voxel [iz, iy, ix] centre at
    ((ix − X//2)·v, (iy − Y//2)·v, (iz − Z//2)·v) Å.
    """
    config = _prepare(config)
    scene = scene or scene_of(config)
    v = float(voxel_size_a or config.detector.pixel_size_a)
    det = config.detector
    shape = tuple(int(round(n * det.pixel_size_a / v)) for n in det.shape_px)
    device, _, lam, _, ice, modes, cache = _setup(config, scene)
    if v != det.pixel_size_a:
        cache = TypeCache(cache.table, v, cache.ice, cache.absorption_ratio, device)
    modes = ["atoms" if m == "atoms" else "slab" for m in modes]
    grid = Grid(shape, v)
    view = SceneView(np.eye(3), 0.0, None)
    if thickness_a is None:
        lo, hi = view_z_range(scene, SceneView(np.eye(3), ice.thickness_a, None))
        thickness_a = 2 * max(abs(lo), abs(hi))
    nz = max(1, int(round(thickness_a / v)))
    z0 = -(nz // 2) * v - v / 2  # voxel iz centred at (iz − nz//2)·v
    # the real ice model: atoms displace it as in the images (its uniform part is not in the patches)
    pot = build_view_potential(scene, view, modes, cache, field_grid=grid, window=None, slice_thickness_a=v,
                               ice=ice, z_range_a=(z0, z0 + nz * v), builder=config.simulation.builder,
                               absorption_ratio=config.sample.absorption_ratio)
    # the potential's own slicing starts at z0 when every copy lies inside; otherwise index by z
    vol = torch.zeros((nz,) + shape, dtype=torch.float32, device=device)
    with torch.no_grad():
        for k in range(pot.n_slices):
            zc = pot.z_start_a + (k + 0.5) * v
            iz = int(round((zc - z0) / v - 0.5))
            if not 0 <= iz < nz or not pot.has_atoms(k):
                continue
            patch = pot.slice_patch(k)
            vol[iz] = embed(patch, shape, 0.0).real.float() / v
    if include_ice and ice.thickness_a > 0:
        zc = z0 + (torch.arange(nz, dtype=torch.float64) + 0.5) * v
        inside = (zc.abs() <= ice.thickness_a / 2).to(torch.float32).to(device)
        vol = vol + config.sample.ice_mean_potential_v * inside[:, None, None]
    return vol, v
