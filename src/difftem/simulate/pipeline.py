"""Simulating from a config: one micrograph, a tilt series, or the specimen's potential as a volume.

Both images run the same stages (:mod:`difftem.forward`): the scene's potential for a view (a tilt), the exit wave
over the field (whole, windowed or tiled), then :func:`~difftem.forward.image.expose` (lens and detector), which
the differentiable simulator calls too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..config import SimulationConfig
from ..core.errors import ConfigError, ResourceError
from ..core.grid import Grid
from ..core.rotations import tilt_rotation
from ..core.threads import intra_op_threads, threads_for, wait_policy
from ..core.version import __version__
from ..forward import native
from ..forward.detector import Detector
from ..forward.exit_wave import ExitWave, tiled_exit_wave, windowed_exit_wave
from ..forward.ice import ViewIce, ray_points
from ..forward.image import expose
from ..forward.membranes import ViewVesicles, add_to_volume
from ..forward.multislice import MultisliceStats, plan_window
from ..forward.optics import Optics
from ..forward.potential import IceModel, embed
from ..forward.scene_build import (
    SceneView,
    TypeCache,
    auto_tile_margin_px,
    build_view_potential,
    plan_tiles,
    view_z_range,
)
from ..forward.sheets import ViewSheets, add_sheets_to_volume
from ..forward.support import SupportModel, ViewLayers, film_length_a, smooth_edges
from ..forward.tilt import plan_tilts
from ..forward.tilt_errors import draw_tilt_errors
from ..specimen.membranes import Vesicles, place_vesicles
from ..specimen.scene import Scene, ground_truth_rows
from ..specimen.sheets import Sheets, sheets_from_config
from .camera_images import camera_metadata, image_camera, record
from .labels import make_labels
from .movie import make_movie
from .setup import Setup, memory_limit, out_of_memory_guard, prepare_config


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
    movie: object | None = None  # a simulate.movie.MovieResult when config.movie is set (frames drawn on demand)
    labels: object | None = None  # a simulate.labels.LabelVolumes when config.labels is set
    camera: object | None = None  # the forward.camera.CameraModel that read the image (detector.camera), or None


@dataclass
class TiltSeriesResult:
    """Stacks (n_tilts, H, W) ordered by tilt angle (ascending), with per-tilt metadata."""

    tilts: torch.Tensor  # detected counts (× gain)
    noiseless: torch.Tensor  # expected counts after the MTF (× gain)
    angles_deg: list[float]
    pixel_size_a: float
    config: SimulationConfig
    tilt_rows: list[dict]  # per tilt: angle, acquisition order, dose, prior dose, defocus U/V/angle
    metadata: dict = field(default_factory=dict)
    labels: object | None = None  # a simulate.labels.LabelVolumes when config.labels is set
    camera: object | None = None  # the forward.camera.CameraModel that read the tilts (detector.camera), or None


def view_exit_wave(setup: Setup, view: SceneView, *, keep_potential: bool = False, progress=None,
                   stats: MultisliceStats | None = None, view_index: int = 0) -> ExitWave:
    """The exit wave over the field for one view of the scene: tiles when ``simulation.tile_px`` asks for them,
    else a window around the specimen when it saves work (``simulation.window: auto``; not with structured ice,
    which makes the field outside any window non-uniform), else the whole field. ``view_index`` seeds the view's
    own ice fields (structured ice in mode slices)."""
    config, scene, grid, lam = setup.config, setup.scene, setup.grid, setup.wavelength_a
    sim = config.simulation
    ice = IceModel(view.ice_thickness_a, config.sample.ice_mean_potential_v, setup.cache.ice.absorption_potential_v)
    path_scale = view.ice_thickness_a / setup.ice.thickness_a if setup.ice.thickness_a > 0 else 1.0  # 1/cos θ
    thinnest, thickest = setup.profile_thickness_bounds_a()
    if setup.ice_profile is not None:  # the uniform slab is the thinnest ice; the rest comes with the ice fields
        ice = replace(ice, thickness_a=thinnest * path_scale)
        view = replace(view, ice_thickness_a=thickest * path_scale)
    z_range = view_z_range(scene, view, setup.radii)
    support = support_of(setup)
    if support is not None:  # the slicing reaches through the film
        f0, f1 = support.view_depth_range_a(view.rotation)
        z_range = (min(z_range[0], f0), max(z_range[1], f1))
    vesicles = vesicles_of(setup)
    view_vesicles = None
    if vesicles is not None and len(vesicles):  # the slicing reaches through every vesicle (view depths)
        view_vesicles = ViewVesicles(vesicles, view.rotation, grid.pixel_size_a, setup.cache.absorption_ratio,
                                     device=setup.device)
        v0, v1 = view_vesicles.z_range_a()
        z_range = (min(z_range[0], v0), max(z_range[1], v1))
    sheets = sheets_of(setup)
    view_sheets = None
    if sheets is not None:  # likewise through every sheet
        view_sheets = ViewSheets(sheets, view.rotation, grid.pixel_size_a, setup.cache.absorption_ratio,
                                 field_grid=grid, device=setup.device)
        s0, s1 = view_sheets.z_range_a()
        z_range = (min(z_range[0], s0), max(z_range[1], s1))
    thickness_a = z_range[1] - z_range[0]

    def build(window: Grid | None):
        return build_view_potential(scene, view, setup.modes, setup.cache, field_grid=grid, window=window,
                                    slice_thickness_a=sim.slice_thickness_a, ice=ice, z_range_a=z_range,
                                    builder=sim.builder, absorption_ratio=config.sample.absorption_ratio,
                                    radii=setup.radii)

    ice_fields = None
    if setup.ice_model is not None:
        ice_fields = ViewIce(setup.ice_model, grid, ("view", view_index), volume=setup.ice_volume(),
                             rotation=view.rotation, device=setup.device, profile=setup.ice_profile,
                             continuum_v=complex(ice.mean_potential_v, ice.absorption_potential_v),
                             max_half_a=thickest * path_scale / 2, fluctuations=setup.ice_mode != "off")
    if support is not None or view_vesicles is not None or view_sheets is not None:
        ice_fields = ViewLayers(ice_fields, support, view.rotation, chunk_a=setup.ice_chunk_a(), device=setup.device,
                                vesicles=view_vesicles, sheets=view_sheets)
    common = dict(keep_potential=keep_potential, progress=progress, stats=stats, ice=ice_fields)
    if sim.tile_px is not None and sim.tile_px < max(grid.shape_px):
        margin = sim.tile_margin_px if sim.tile_margin_px is not None else auto_tile_margin_px(
            grid.pixel_size_a, thickness_a, lam, sim.antialias_fraction)
        return tiled_exit_wave(build, grid, plan_tiles(grid, sim.tile_px, margin), lam, setup.sigma, sim,
                               margin_px=margin, device=setup.device, **common)
    window = None
    if sim.window == "auto" and len(scene.placement) and ice_fields is None:
        pl = scene.placement.transformed(view.rotation)
        ext = setup.radii[pl.type_index][:, None]
        corners = np.concatenate([pl.positions_a - ext, pl.positions_a + ext])
        window = plan_window(grid, torch.as_tensor(corners), thickness_a, lam,
                             antialias_fraction=sim.antialias_fraction)
    return windowed_exit_wave(build, grid, window, lam, setup.sigma, sim, **common)


def support_of(setup: Setup) -> SupportModel | None:
    """The run's support film (``sample.support``), against the thickest ice's face; None without one."""
    if setup.config.sample.support is None:
        return None
    return SupportModel.from_config(setup.config, setup.cache.table, absorption_ratio=setup.cache.absorption_ratio,
                                    ice_face_a=setup.profile_thickness_bounds_a()[1] / 2)


def vesicles_of(setup: Setup) -> Vesicles | None:
    """The run's vesicles (``sample.vesicles``), placed once per setup clear of the scene's copies; None without."""
    if setup.config.sample.vesicles is None:
        return None
    if getattr(setup, "_vesicles", None) is None:
        scene = setup.scene  # placed with the scene (specimen/build.py); a scene built by hand: placed here
        setup._vesicles = scene.vesicles if scene.vesicles is not None else place_vesicles(
            setup.config, [t.bounds for t in scene.types], scene.placement)
    return setup._vesicles


def _add_membranes(vol: torch.Tensor, setup: Setup, grid: Grid, z0_a: float, voxel_a: float) -> None:
    """The vesicles' and the sheets' ΔV relative to the ice (the lipid minus the water it displaces), in place."""
    vesicles = vesicles_of(setup)
    if vesicles is not None and len(vesicles):
        add_to_volume(vol, vesicles, grid, z0_a, voxel_a)
    if (sheets := sheets_of(setup)) is not None:
        add_sheets_to_volume(vol, sheets, grid, z0_a, voxel_a)


def sheets_of(setup: Setup) -> Sheets | None:
    """The run's flat bilayers (``sample.membrane_sheets``), checked once per setup; None without."""
    if not setup.config.sample.membrane_sheets:
        return None
    if getattr(setup, "_sheets", None) is None:
        setup._sheets = sheets_from_config(setup.config)
    return setup._sheets


def ice_path(setup: Setup, rotation, flat_path_a: float):
    """The ice path (Å) along the beam: ``flat_path_a`` for a flat slab, else each pixel's path through the thickness
    profile (its thickness where the ray crosses the mid-plane, / cos θ)."""
    if setup.ice_profile is None:
        return flat_path_a
    xs, ys, _ = ray_points(rotation, setup.grid, 0.0, setup.device)
    return setup.ice_profile.thickness_at(xs, ys) / float(np.asarray(rotation)[2, 2])


def _run_metadata(setup: Setup) -> dict:
    config = setup.config
    est = setup.estimate
    return {"difftem_version": __version__, "torch_version": torch.__version__, "device": str(setup.device),
            "threads": torch.get_num_threads(), "omp_wait_policy": wait_policy(),
            # the noise a seed draws depends on it (forward/native.py)
            "compiled_kernels": setup.device.type == "cpu" and native.available(),
            "seed": config.seed, "n_copies": len(setup.scene.placement),
            "particle_types": setup.particle_types(),
            "time_estimate_s": round(est.seconds, 3) if est is not None else None,
            **({"support": support_of(setup).metadata()} if config.sample.support is not None else {}),
            **({"vesicles": vesicles_of(setup).metadata()} if config.sample.vesicles is not None else {}),
            **({"filaments": setup.scene.filaments.metadata([t.name for t in setup.scene.types])}
               if getattr(setup.scene, "filaments", None) is not None else {}),
            **({"membrane_sheets": sheets_of(setup).metadata()} if config.sample.membrane_sheets else {}),
            **({"crowding": setup.scene.crowding} if getattr(setup.scene, "crowding", None) else {}),
            "resource_estimate": est.summary() if est is not None else None,
            "notes": list(setup.notes)}


def simulate(config: SimulationConfig | dict | str | Path, *, keep_potential: bool = False,
             progress: Callable[[int, int], None] | None = None, scene: Scene | None = None) -> SimulationResult:
    """Run the whole forward model for one micrograph.

    ``config`` is a :class:`SimulationConfig`, a dict of the same shape, or a YAML path.
    ``progress(done, total)`` is called once per slice. ``scene``: reuse a scene built before.
    """
    config = prepare_config(config)
    if config.tilt_series is not None:
        raise ConfigError("tilt_series is set: use difftem.simulate_tilt_series (or `difftem simulate`, which "
                          "dispatches on it)")
    with out_of_memory_guard(config, {}) as held, threads_for(_field_pixels(config)):
        return _simulate(config, held, keep_potential=keep_potential, progress=progress, scene=scene)


def _simulate(config: SimulationConfig, held: dict, *, keep_potential: bool, progress, scene: Scene | None
              ) -> SimulationResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    setup = held["setup"] = Setup.build(config, scene)
    scene, grid = setup.scene, setup.grid
    generator = torch.Generator(device=setup.device).manual_seed(config.seed)
    timings["structure_s"] = time.perf_counter() - t0
    mem_estimate = setup.check_memory()
    warnings = setup.warnings()
    done = 0

    def tick(n):
        nonlocal done
        done += n
        if progress is not None:
            progress(done, None)

    stats = MultisliceStats()
    t1 = time.perf_counter()
    with torch.no_grad():
        ew = view_exit_wave(setup, SceneView(np.eye(3), setup.ice.thickness_a, None), keep_potential=keep_potential,
                            progress=tick, stats=stats)
        timings["multislice_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        image = expose(ew.wave, grid, setup.wavelength_a, config.beam.voltage_kv, Optics.from_config(config.optics),
                       Detector.from_config(config), exit_plane_a=ew.exit_plane_a,
                       dose_e_per_a2=config.beam.dose_e_per_a2, generator=generator, loss=setup.electron_loss(),
                       ice_path_a=ice_path(setup, np.eye(3), setup.ice.thickness_a))
        camera = image_camera(config, setup.device)
        if camera is not None:  # read as the movie's frames are (the expose call above drew no other numbers)
            detected, clean = record(camera, image.expected_counts, generator, config.detector.noise)
            image = replace(image, detected=detected, noiseless=clean)
        timings["optics_detector_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    meta = {
        **_run_metadata(setup),
        "n_atoms": setup.n_atoms,
        "n_slices": ew.n_slices,
        "n_propagations": stats.n_propagations,
        **ew.plan,
        "z_exit_a": ew.exit_plane_a,
        "wavelength_a": setup.wavelength_a,
        "interaction_constant_rad_per_v_a": setup.sigma,
        "memory_estimate_bytes": mem_estimate,
        "structure_notes": scene.notes,
        "warnings": warnings,
        "ice_structure": setup.ice_metadata(),
        "particles": ground_truth_rows(scene.types, scene.placement, shape_px=grid.shape_px,
                                       pixel_size_a=grid.pixel_size_a),
        "timings": timings,
    }
    movie = None
    if config.movie is not None:  # frames of this exposure, from its noise-free image
        pl = scene.placement
        centres = pl.positions_a[:, :2] / grid.pixel_size_a + np.array([grid.shape_px[1] // 2, grid.shape_px[0] // 2])
        movie = make_movie(config, image.intensity, centres, setup.radii[pl.type_index] / grid.pixel_size_a)
        meta["movie"] = movie.metadata
    if camera is not None:
        meta["camera"] = camera_metadata(camera)
    return SimulationResult(image.detected.float(), image.noiseless.float(), image.intensity.float(), ew.wave,
                            grid.pixel_size_a, config, ew.projected, meta, movie,
                            make_labels(scene, config) if config.labels is not None else None, camera)


def _field_pixels(config: SimulationConfig) -> int:
    return int(config.detector.shape_px[0]) * int(config.detector.shape_px[1])


def defocus_uv_a(defocus_um: float, optics) -> dict[str, float]:
    """RELION's defocus U, V (Å) and angle (degrees) for a mean defocus and the config's astigmatism
    (U − V = astigmatism; the angle of U from the image x axis)."""
    half = optics.astigmatism_um * 1e4 / 2
    return {"rlnDefocusU": defocus_um * 1e4 + half, "rlnDefocusV": defocus_um * 1e4 - half,
            "rlnDefocusAngle": optics.astigmatism_angle_deg}


def simulate_tilt_series(config: SimulationConfig | dict | str | Path, *,
                         progress: Callable[[int, int], None] | None = None,
                         scene: Scene | None = None) -> TiltSeriesResult:
    """Simulate ``config.tilt_series``: one exposure per tilt of the same scene, in acquisition order
    (cumulative dose drives the damage), returned sorted by angle. ``progress(done, total)`` counts tilts."""
    config = prepare_config(config)
    ts = config.tilt_series
    if ts is None:
        raise ConfigError("tilt_series: not set in the config; use difftem.simulate for a single micrograph")
    if config.movie is not None:
        raise ConfigError("movie: movies are made for single micrographs (the tilt series' damage acts on the "
                          "potential per tilt); set movie: null for a tilt series")
    workers = torch.get_num_threads()
    with out_of_memory_guard(config, {}) as held, threads_for(_field_pixels(config)):
        return _simulate_tilt_series(config, held, progress=progress, scene=scene, workers=workers)


def _simulate_tilt_series(config: SimulationConfig, held: dict, *, progress, scene: Scene | None, workers: int
                          ) -> TiltSeriesResult:
    ts = config.tilt_series
    t0 = time.perf_counter()
    plan = plan_tilts(config)
    setup = held["setup"] = Setup.build(config, scene)
    scene, grid, ice = setup.scene, setup.grid, setup.ice
    mem_estimate = setup.check_memory()
    warnings = setup.warnings()
    detector = Detector.from_config(config)
    camera = image_camera(config, setup.device)
    loss = setup.electron_loss()
    n = len(plan.angles_deg)
    per_tilt_s = [0.0] * n
    errs = draw_tilt_errors(ts.errors, n, config.seed, grid.pixel_size_a) if ts.errors is not None else None

    @torch.no_grad()  # grad mode is per thread: a worker does not inherit the caller's
    def exposure(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tilt ``i``'s (detected, noise-free) images; views are independent (any order, any thread) and each tilt
        draws its shot noise from its own generator, so the images are the same whatever the workers."""
        t1 = time.perf_counter()
        angle = plan.angles_deg[i] + (float(errs.angle_offsets_deg[i]) if errs is not None else 0.0)
        view = SceneView(tilt_rotation(angle, plan.axis_deg), ice.thickness_a / math.cos(math.radians(angle)),
                         plan.transfer(i, ts, config.beam.voltage_kv))
        ew = view_exit_wave(setup, view, view_index=i)
        optics = Optics.from_config(config.optics, defocus_um=plan.defoci_um[i])
        image = expose(ew.wave, grid, setup.wavelength_a, config.beam.voltage_kv,
                       errs.optics_at(optics, i) if errs is not None else optics, detector,
                       exit_plane_a=ew.exit_plane_a, dose_e_per_a2=plan.doses_e_per_a2[i], loss=loss,
                       ice_path_a=ice_path(setup, view.rotation, view.ice_thickness_a) if loss else 0.0)
        if errs is not None:  # the stage and the optics as they really were at this tilt
            image = errs.apply_to_exposure(image, i)
        generator = torch.Generator(device=setup.device).manual_seed(tilt_seed(config.seed, i))
        if camera is None:
            images = detector.detect(image.expected_counts, generator).float(), image.noiseless.float()
        else:  # every tilt read by the camera, as a movie frame would be
            images = record(camera, image.expected_counts, generator, config.detector.noise)
        per_tilt_s[i] = time.perf_counter() - t1
        return images

    # the stacks in angle order, filled as each tilt is done: at most a tilt per worker besides the stacks
    slot = {i: j for j, i in enumerate(plan.order_by_angle)}
    stacks: list[torch.Tensor] = []

    def store(i: int, images: tuple[torch.Tensor, torch.Tensor]) -> None:
        if not stacks:
            stacks.extend(im.new_empty((n,) + tuple(im.shape)) for im in images)
        for stack, im in zip(stacks, images, strict=True):
            stack[slot[i]] = im

    workers = tilt_workers(setup, workers, n)
    with torch.no_grad():
        setup.ice_volume()  # the one 3-D ice every tilt samples, built before the workers share it
        _in_parallel(exposure, n, workers, progress, store)
    tilts, clean_stack = stacks
    order = plan.order_by_angle
    rows = [{"difftemTiltIndex": j, "rlnTomoNominalStageTiltAngle": plan.angles_deg[i],
             "rlnTomoNominalTiltAxisAngle": plan.axis_deg, "difftemAcquisitionOrder": i,
             "rlnMicrographPreExposure": plan.prior_doses_e_per_a2[i], "difftemDoseEPerA2": plan.doses_e_per_a2[i],
             **defocus_uv_a(plan.defoci_um[i], config.optics),
             "difftemIceThicknessAlongBeamA": ice.thickness_a / math.cos(math.radians(plan.angles_deg[i])),
             "difftemSeconds": per_tilt_s[i], **(errs.rows(i) if errs is not None else {})}
            for j, i in enumerate(order)]
    meta = {
        **_run_metadata(setup), "n_tilts": n,
        "ice_structure": setup.ice_metadata(),
        "damage": ts.damage, "tilt_axis_deg": plan.axis_deg, "total_dose_e_per_a2": float(sum(plan.doses_e_per_a2)),
        "memory_estimate_bytes": mem_estimate, "warnings": warnings, "structure_notes": scene.notes,
        "particles": ground_truth_rows(scene.types, scene.placement, shape_px=grid.shape_px,
                                       pixel_size_a=grid.pixel_size_a, micrograph="tilt_series.mrc"),
        "tilt_workers": workers,
        **({"camera": camera_metadata(camera)} if camera is not None else {}),
        **({"tilt_errors": {"xf": [np.concatenate([a.ravel(), d]).tolist() for a, d in (errs.xf(i) for i in order)],
                            "true_angles_deg": [plan.angles_deg[i] + float(errs.angle_offsets_deg[i]) for i in order],
                            "convention": "per tilt sorted by angle: IMOD .xf line A11 A12 A21 A22 DX DY aligning "
                                          "the image (centre pixel [H//2, W//2]); true angle = nominal + offset"}}
           if errs is not None else {}),
        "timings": {"total_s": time.perf_counter() - t0, "per_tilt_s": [per_tilt_s[i] for i in order],
                    "map_bytes": setup.cache.nbytes},
    }
    return TiltSeriesResult(tilts, clean_stack,
                            [plan.angles_deg[i] for i in order], grid.pixel_size_a, config, rows, meta,
                            make_labels(scene, config) if config.labels is not None else None, camera)


def tilt_workers(setup: Setup, threads: int, n_tilts: int) -> int:
    """How many tilts to simulate at once, each on one torch thread: parallel across tilts where there are
    threads and memory to spare (independent tilts scale; one tilt's kernels split across threads wait on
    each other, the more so on a loaded machine), else one at a time."""
    limit, _ = memory_limit(setup.config, setup.device)
    est = setup.estimate
    if setup.device.type != "cpu" or threads <= 1 or n_tilts <= 1 or est is None:
        return 1
    spare = max(0.0, limit - est.peak_bytes)
    return int(max(1, min(threads, n_tilts, 1 + spare // max(est.view_bytes(), 1))))


def _in_parallel(fn, n: int, workers: int, progress, store) -> None:
    """``store(i, fn(i))`` for i = 0 … n−1, on this thread: fn(0) alone (it builds the shared maps), the rest on
    ``workers`` threads with one torch thread each; ``progress(done, n)`` from this thread."""
    if n:
        store(0, fn(0))
        if progress is not None:
            progress(1, n)
    if workers <= 1:
        for i in range(1, n):
            store(i, fn(i))
            if progress is not None:
                progress(i + 1, n)
        return
    with intra_op_threads(1), ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(fn, i): i for i in range(1, n)}
        try:
            for done, future in enumerate(as_completed(futures), start=2):
                store(futures.pop(future), future.result())  # popped: a stored tilt's images are let go
                if progress is not None:
                    progress(done, n)
        except BaseException:  # a tilt failed, or Ctrl-C: the tilts not started yet are not run
            for future in futures:
                future.cancel()
            raise


def tilt_seed(seed: int, tilt: int) -> int:
    """The seed of tilt ``tilt``'s own noise generator (independent streams from one run seed)."""
    return int(np.random.SeedSequence([seed, tilt]).generate_state(1, np.uint64)[0])


def potential_volume(config: SimulationConfig | dict | str | Path, *, voxel_size_a: float | None = None,
                     thickness_a: float | None = None, include_ice: bool = False,
                     scene: Scene | None = None) -> tuple[torch.Tensor, float]:
    """The scene's (untilted) electrostatic potential as a (Z, Y, X) volume in V, the ground truth for tomography.

    Voxels are the detector's pixel (or ``voxel_size_a``) on the detector's field; z spans ``thickness_a``
    (default: the ice, or the particles' extent) centred on the ice mid-plane. Each voxel is the mean potential
    over its z-slab from the same builders as the images (exact atoms or per-type maps sampled slab by slab);
    the ice's uniform potential is left out unless ``include_ice``; a support film is in (its mean inner potential,
    and the default z span reaches through it), and vesicles (their ΔV relative to the ice). Geometry: voxel
    [iz, iy, ix] centre at ((ix − X//2)·v, (iy − Y//2)·v, (iz − Z//2)·v) Å.
    """
    config = prepare_config(config)
    with out_of_memory_guard(config, {}) as held:
        return _potential_volume(config, held, voxel_size_a=voxel_size_a, thickness_a=thickness_a,
                                 include_ice=include_ice, scene=scene)


def _potential_volume(config: SimulationConfig, held: dict, *, voxel_size_a, thickness_a, include_ice,
                      scene: Scene | None) -> tuple[torch.Tensor, float]:
    setup = held["setup"] = Setup.build(config, scene)
    scene, device, ice, modes, cache = setup.scene, setup.device, setup.ice, setup.modes, setup.cache
    v = float(voxel_size_a or config.detector.pixel_size_a)
    det = config.detector
    shape = tuple(int(round(n * det.pixel_size_a / v)) for n in det.shape_px)
    if v != det.pixel_size_a:
        cache = TypeCache(cache.table, v, cache.ice, cache.absorption_ratio, device)
    # a type of subunits: its unit's map at every unit's pose (the type's map without gridding every atom)
    modes = ["atoms" if m == "atoms" else "unit_slab" if scene.types[t].subunits is not None else "slab"
             for t, m in enumerate(modes)]
    grid = Grid(shape, v)
    view = SceneView(np.eye(3), 0.0, None)
    if thickness_a is None:
        lo, hi = view_z_range(scene, SceneView(np.eye(3), ice.thickness_a, None), setup.radii)
        if config.sample.support is not None:
            lo, hi = min(lo, support_of(setup).depth_range_a[0]), max(hi, support_of(setup).depth_range_a[1])
        thickness_a = 2 * max(abs(lo), abs(hi))
    nz = max(1, int(round(thickness_a / v)))
    volume_bytes = 8 * nz * shape[0] * shape[1]  # the volume and the ice added to it (float32)
    need = volume_bytes + setup.estimate_of(modes).peak_bytes
    limit, source = memory_limit(config, device)
    if need > limit:
        raise ResourceError(f"potential_volume: the {nz}×{shape[0]}×{shape[1]} voxel volume and the scene need about "
                            f"{need / 1e9:.1f} GB but {limit / 1e9:.1f} GB is allowed ({source}); use a larger "
                            "voxel_size_a, a smaller thickness_a or a smaller detector.shape_px")
    z0 = -(nz // 2) * v - v / 2  # voxel iz centred at (iz − nz//2)·v
    # the real ice model: atoms displace it as in the images (its uniform part is not in the patches)
    pot = build_view_potential(scene, view, modes, cache, field_grid=grid, window=None, slice_thickness_a=v,
                               ice=ice, z_range_a=(z0, z0 + nz * v), builder=config.simulation.builder,
                               absorption_ratio=config.sample.absorption_ratio, radii=setup.radii)
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
    support = support_of(setup)
    if support is not None:  # the film's mean inner potential, its holes' edges smoothed as in the images
        for iz in range(nz):
            length = film_length_a(support, np.eye(3), grid, z0 + iz * v, z0 + (iz + 1) * v, device)
            if length is not None:
                vol[iz] += (support.mean_inner_potential_v * smooth_edges(length, grid) / v).to(vol.dtype)
    _add_membranes(vol, setup, grid, z0, v)
    if include_ice and ice.thickness_a > 0:
        zc = z0 + (torch.arange(nz, dtype=torch.float64) + 0.5) * v
        inside = (zc.abs() <= ice.thickness_a / 2).to(torch.float32).to(device)
        vol = vol + config.sample.ice_mean_potential_v * inside[:, None, None]
    return vol, v
