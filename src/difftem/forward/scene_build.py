"""From a scene and one view of it (tilt, dose history) to the :class:`ScenePotential` of a field or tile.

Each particle type is simulated in one of three ways, chosen per type:

* ``atoms`` — every atom of every copy through the exact per-slice builder (few copies);
* ``projection`` — a cached 3-D Fourier transform per type; each copy is one central slice,
  placed whole in the slice holding its centre. Its error is the defocus spread inside the
  particle: a phase of at most π λ R k_max² at the band edge (R: particle radius), used by
  ``auto`` when that is ≤ 0.03 rad (coarse pixels or small particles, e.g. virions at 1 nm/px);
* ``slab`` — a cached real-space map per type, sampled slab by slab at each copy's pose.

Maps are built once per type and device and reused by every tile, tilt and copy (a tilt's damage-filtered map
replaces the previous tilt's). :func:`estimate_resources` gives a run's memory and time per component (the field,
each type's atoms, atom path, maps and their sampling, the copies, the tilt stacks) from counts alone, before any
of it is allocated; the setup refuses with it and moves ``auto`` types to the mode that fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.fft import good_fft_size
from ..core.grid import Grid
from ..specimen.scene import Placement, Scene
from ..specimen.structure import Atoms
from .particle_map import (
    build_fourier_projector,
    build_particle_map,
    map_side_voxels,
    projection_box_px,
    projector_size,
)
from .potential import FF_CACHE_BYTES, IceModel, SlicedPotential, atoms_to_tensors
from .scattering import ScatteringTable
from .scene_potential import SUPPORT_MARGIN_A, MapCopies, ProjectionCopies, ScenePotential

#: projection placement when the defocus phase across a particle, π λ R k_max², is at most this (rad)
PROJECTION_PHASE_LIMIT_RAD = 0.03
#: "auto" representation: a map once a type's copies hold this many atoms in all (below, the exact
#: atom path is cheaper than building a map)
MAP_MIN_ATOMS = 200_000
SLAB_MIN_ATOMS = 50_000_000


@dataclass
class SceneView:
    """One exposure: the scene turned rigidly by ``rotation`` (a tilt), the ice crossed along the beam,
    and an optional isotropic filter H(|k|) of the specimen's potential (radiation damage so far)."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    ice_thickness_a: float = 0.0
    transfer: object = None


@dataclass
class TypeCache:
    """Per-type maps and projectors, built on first use."""

    table: ScatteringTable
    pixel_size_a: float
    ice: IceModel
    absorption_ratio: float
    device: torch.device
    maps: dict = field(default_factory=dict)

    def projector(self, t: int, atoms: Atoms):
        key = ("projection", t)
        if key not in self.maps:
            self.maps[key] = build_fourier_projector(atoms, self.table, pixel_size_a=self.pixel_size_a, ice=self.ice,
                                                     absorption_ratio=self.absorption_ratio, device=self.device)
        return self.maps[key]

    def slab_map(self, t: int, atoms: Atoms, transfer=None):
        """The type's map, filtered by ``transfer`` when given. Only the latest filtered map of a type is kept
        (one per view: a tilt series' damage filter changes every tilt), and it is keyed by the filter object
        itself, so a new filter never gets an old one's map."""
        key = ("slab", t)
        if key not in self.maps:
            self.maps[key] = build_particle_map(atoms, self.table, pixel_size_a=self.pixel_size_a, ice=self.ice,
                                                absorption_ratio=self.absorption_ratio, device=self.device)
        if transfer is None:
            return self.maps[key]
        fkey = ("slab", t, "filtered")
        held = self.maps.get(fkey)
        if held is None or held[0] is not transfer:
            self.maps.pop(fkey, None)  # free the previous view's map before making this one
            self.maps[fkey] = (transfer, self.maps[key].filtered(transfer))
        return self.maps[fkey][1]

    @property
    def nbytes(self) -> int:
        return sum((m[1] if isinstance(m, tuple) else m).nbytes for m in self.maps.values())


def map_mode(radius_a: float, *, placement: str, pixel_size_a: float, wavelength_a: float,
             antialias_fraction: float) -> str:
    """How a type drawn from a map is placed: ``placement`` unless auto; then projection when the defocus
    phase across the particle, π λ R k_max², is at most PROJECTION_PHASE_LIMIT_RAD, else slab."""
    if placement != "auto":
        return placement
    k_max = antialias_fraction * 0.5 / pixel_size_a
    return "projection" if math.pi * wavelength_a * radius_a * k_max**2 <= PROJECTION_PHASE_LIMIT_RAD else "slab"


def auto_mode(total_atoms: int, mapped: str) -> str:
    """``auto``'s first choice for a type whose copies hold ``total_atoms`` atoms and whose map mode is ``mapped``:
    projections are far cheaper than atoms; slab sampling is not (measured: 254 TMV segments at 2 Å/px, atoms
    1.7 s, slab maps > 300 s), so slabs only past SLAB_MIN_ATOMS. The setup moves a type to its other mode when
    this choice does not fit the memory or time limit and the other does."""
    return mapped if total_atoms >= (MAP_MIN_ATOMS if mapped == "projection" else SLAB_MIN_ATOMS) else "atoms"


def choose_modes(scene: Scene, *, representation_default: str, placement: str, pixel_size_a: float,
                 wavelength_a: float, antialias_fraction: float, radii: np.ndarray | None = None) -> list[str]:
    """'atoms', 'projection' or 'slab' per particle type (``radii``: :func:`type_radii`, when known)."""
    radii = type_radii(scene) if radii is None else radii
    modes = []
    for t, ptype in enumerate(scene.types):
        rep = ptype.representation if ptype.representation != "auto" else representation_default
        mapped = map_mode(float(radii[t]), placement=placement, pixel_size_a=pixel_size_a, wavelength_a=wavelength_a,
                          antialias_fraction=antialias_fraction)
        if rep == "auto":
            modes.append(auto_mode(scene.copies_of(t) * len(ptype.atoms), mapped))
        else:
            modes.append("atoms" if rep == "atoms" else mapped)
    return modes


def type_radii(scene: Scene) -> np.ndarray:
    """Each type's radius (Å); one pass over its atoms, so callers that need it often keep the result."""
    return np.array([t.radius_a for t in scene.types] or [0.0])


def view_z_range(scene: Scene, view: SceneView, radii: np.ndarray | None = None) -> tuple[float, float]:
    """z extent (Å) of every copy's potential in this view, and of the ice (``radii``: :func:`type_radii`)."""
    half = 0.5 * view.ice_thickness_a
    if len(scene.placement) == 0:
        return -half, half
    pl = scene.placement.transformed(view.rotation)
    ext = (type_radii(scene) if radii is None else radii)[pl.type_index] + SUPPORT_MARGIN_A
    return min(-half, float((pl.positions_a[:, 2] - ext).min())), max(half, float((pl.positions_a[:, 2] + ext).max()))


def _images_in_window(placement: Placement, extents_a: np.ndarray, field_grid: Grid, window: Grid | None) -> Placement:
    """Copies (and periodic images of copies across the field's edges) that reach into ``window``."""
    if window is None:
        return placement
    p = field_grid.pixel_size_a
    wx, wy = field_grid.nx * p, field_grid.ny * p
    oy_w, ox_w = window.origin_a  # window-grid coordinates of the scene origin
    x_lo, y_lo = -ox_w, -oy_w  # scene coordinates of the window's pixel [0, 0]
    x_hi, y_hi = x_lo + window.nx * p, y_lo + window.ny * p
    parts = []
    for sy in (-1, 0, 1):
        for sx in (-1, 0, 1):
            pos = placement.positions_a + np.array([sx * wx, sy * wy, 0.0])
            ok = ((pos[:, 0] + extents_a > x_lo) & (pos[:, 0] - extents_a < x_hi)
                  & (pos[:, 1] + extents_a > y_lo) & (pos[:, 1] - extents_a < y_hi))
            if ok.any():
                parts.append(Placement(placement.type_index[ok], pos[ok], placement.rotations[ok]))
    return Placement.concatenate(parts)


def build_view_potential(scene: Scene, view: SceneView, modes: list[str], cache: TypeCache, *, field_grid: Grid,
                         window: Grid | None, slice_thickness_a: float, ice: IceModel, z_range_a: tuple[float, float],
                         builder: str = "fourier", absorption_ratio: float | None = None,
                         radii: np.ndarray | None = None) -> ScenePotential:
    """The potential of ``scene`` seen in ``view`` on ``window`` (a tile or window of the field) or the field
    (``radii``: :func:`type_radii`, when the caller keeps them)."""
    grid = window or field_grid
    dev = cache.device
    pl = scene.placement.transformed(view.rotation)
    # reach of a copy's potential patch (a projector's box is wider than the atoms' sphere)
    reach = max(SUPPORT_MARGIN_A, 8 * grid.pixel_size_a) + 4 * grid.pixel_size_a
    extents = (type_radii(scene) if radii is None else radii)[pl.type_index] + reach
    pl = _images_in_window(pl, extents, field_grid, window)
    atom_types = [t for t, m in enumerate(modes) if m == "atoms"]
    atoms_potential = None
    atoms = scene.atoms_of(atom_types, pl) if atom_types else None
    if atoms is not None and len(atoms):
        atoms_potential = SlicedPotential(*atoms_to_tensors(atoms, device=dev), grid, cache.table, slice_thickness_a,
                                          ice, absorption_ratio=absorption_ratio, builder=builder,
                                          z_range_a=z_range_a, form_factor_filter=view.transfer)
    map_copies, projection_copies = [], []
    for t, mode in enumerate(modes):
        sel = np.flatnonzero(pl.type_index == t)
        if mode == "atoms" or sel.size == 0:
            continue
        rots = torch.as_tensor(pl.rotations[sel], dtype=torch.float64, device=dev)
        centres = torch.as_tensor(pl.positions_a[sel], dtype=torch.float64, device=dev)
        if mode == "projection":
            projection_copies.append(ProjectionCopies(cache.projector(t, scene.types[t].atoms), rots, centres,
                                                      view.transfer))
        else:
            pmap = cache.slab_map(t, scene.types[t].atoms, view.transfer)
            radius = float(radii[t]) if radii is not None else scene.types[t].radius_a
            map_copies.append(MapCopies(pmap, rots, centres, radius + SUPPORT_MARGIN_A))
    return ScenePotential(grid, slice_thickness_a, ice, z_range_a=z_range_a, atoms=atoms_potential,
                          map_copies=map_copies, projection_copies=projection_copies, periodic=window is None,
                          device=dev)


@dataclass(frozen=True)
class Tile:
    core_y0: int
    core_x0: int
    core_shape: tuple[int, int]
    window: Grid  # the tile's grid (core + margins), in the field's scene frame
    y0: int  # field pixel of the window's [0, 0] (may be negative: the field is periodic)
    x0: int


def plan_tiles(grid: Grid, tile_px: int, margin_px: int) -> list[Tile]:
    """Cores of ``tile_px`` covering the field, each simulated on a window ``margin_px`` wider each side."""
    tiles = []
    for cy in range(0, grid.ny, tile_px):
        for cx in range(0, grid.nx, tile_px):
            h, w = min(tile_px, grid.ny - cy), min(tile_px, grid.nx - cx)
            wy, wx = good_fft_size(h + 2 * margin_px), good_fft_size(w + 2 * margin_px)
            y0 = cy - (wy - h) // 2
            x0 = cx - (wx - w) // 2
            tiles.append(Tile(cy, cx, (h, w), grid.window(y0, x0, (wy, wx)), y0, x0))
    return tiles


def auto_tile_margin_px(pixel_size_a: float, thickness_a: float, wavelength_a: float,
                        antialias_fraction: float | None) -> int:
    """Potential tails + band-limit ringing + twice the Fresnel spread over the specimen thickness."""
    k_max = (antialias_fraction or 1.0) * 0.5 / pixel_size_a
    spread_px = math.ceil(2 * wavelength_a * thickness_a * k_max / pixel_size_a)
    return max(math.ceil(24.0 / pixel_size_a), 64) + spread_px + 8


# ---------------------------------------------------------------------------------------------- resources
# The memory (bytes) and time (s) of a run, component by component, from counts alone, so that a run is refused
# before anything large is allocated and the refusal names what dominates. Constants were measured with torch 2.13
# on CPU (2 threads): the per-unit peak RSS of each stage in isolation, then checked whole against the peak RSS of
# real runs (tests/test_robust_resources.py).
FIELD_BYTES_PER_PX = 40  # field-sized arrays the lens, detector and exit wave keep (complex64 and float32 images)
MULTISLICE_BYTES_PER_PX = 40  # per pixel of the multislice grid (field, window or tile): wave, transmission, FFTs
MAP_SLICE_BYTES_PER_PX = 24  # a slice holding map copies: float32 real/imaginary accumulator + the complex sum
ATOM_PATH_BYTES = 150  # per atom on the atom path: scene coordinates (+ their parts while joined), tensors, sort keys
TYPE_ATOM_BYTES = 48  # per atom of a particle type, in its own frame (element, position, B, occupancy)
SF_BYTES = 14  # per atom of one slice × (rows + half-plane columns) of its box: the structure-factor factors
FF_BYTES = 8  # per element (in and out of the ice: 2 sets) × box rows × half-plane columns: cached form factors
PROJECTOR_BUILD_BYTES = 250  # per voxel of the padded cube while a projector is built (complex128 spectra, grids)
PROJECTOR_KEPT_BYTES = 16  # per voxel of the cube kept: 4 float32 channels of B-spline coefficients
MAP_BUILD_BYTES = 145  # per voxel while a slab map is built
MAP_KEPT_BYTES = 8  # per voxel kept: real and imaginary float32
MAP_FILTER_BYTES = 70  # per voxel while a map is filtered (a tilt's radiation damage)
SAMPLE_BYTES = 560  # per point of one batch of slab samples (B-spline weights, positions, eight look-ups)
PROJECT_BYTES = 480  # per frequency of one batch of projected copies
COPY_BYTES = 1500  # per copy: pose, its turned copy per view, tensors, the ground-truth row
TILT_BYTES_PER_PX = 16  # per pixel per tilt: detected and noiseless images, kept and then stacked
SAMPLES_PER_BATCH = 4_000_000  # ScenePotential's max_samples_per_batch
# seconds per unit of work on one CPU thread (CPU time, measured on an idle machine); n threads are taken as
# 1 + 0.7 (n − 1) times faster, a GPU as GPU_SPEEDUP times
T_FFT = 4e-10  # one complex64 FFT, per pixel·log2(pixels)
T_FFT_CALL = 2e-5  # ... and per call
FFTS_PER_SLICE = 4  # a slice with content: the transmission's band limit (2) and the propagation (2)
T_BUSY_PX = 4e-8  # per pixel of a slice with content: exp, embedding, form factors, map sums
T_PX_SLICE = 5e-9  # per pixel and slice, content or not: the uniform ice phase
T_SF_MAC = 1.2e-10  # per atom × box rows × half-plane columns: the structure factor's matrix product
T_SF_AXIS = 1.5e-8  # per atom × (rows + columns): its per-axis phase factors
T_SAMPLE = 3e-7  # per slab sample point (8 trilinear look-ups of 2 channels)
T_SAMPLE_CALL = 2e-3  # per slice a slab type is sampled in
T_PROJECT = 1.5e-6  # per frequency of a projected copy (look-ups, phase ramp, inverse FFT, scatter)
T_PROJECT_CALL = 2e-3  # per batch of projected copies
T_PROJECTOR_BUILD = 4e-8  # per voxel·log2(side) and element: gridding, 3-D FFTs, B-spline prefilter
T_MAP_BUILD = 1.5e-8  # per voxel·log2(side) and element
T_MAP_FILTER = 1e-8  # per voxel·log2(side)
T_COPY = 3e-5  # per copy and view: pose, atoms or batching, ground truth (Python)
T_RANDOM_COPY = 1e-4  # per randomly placed copy (draws, overlap tests)
GPU_SPEEDUP = 30.0


def most_atoms_in_slab(positions_a: np.ndarray, thickness_a: float, directions: np.ndarray | None = None,
                       max_points: int = 200_000) -> int:
    """About the most atoms of one copy that a slab of ``thickness_a`` holds, across ``directions`` (unit slab
    normals in the type frame; default 16: the principal axes and 13 spread ones), bins at two offsets; a
    subsample stands for the rest of a large type."""
    n = len(positions_a)
    if n == 0:
        return 0
    pts = np.asarray(positions_a[:: max(1, math.ceil(n / max_points))], dtype=np.float64)
    rel = pts - pts.mean(0)
    if directions is None:
        g = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1],
                      [0, 1, -1], [1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], dtype=np.float64)
        directions = np.concatenate([np.linalg.eigh(rel.T @ rel)[1].T, g / np.linalg.norm(g, axis=1, keepdims=True)])
    best = 0
    for d in np.asarray(directions, dtype=np.float64).reshape(-1, 3):
        h = rel @ d
        h = (h - h.min()) / max(thickness_a, 1e-9)
        for shift in (0.0, 0.5):
            best = max(best, int(np.bincount(np.floor(h + shift).astype(np.int64)).max()))
    return min(n, math.ceil(best * n / len(pts)))


@dataclass
class TypeLoad:
    """What the estimate needs of one particle type: ``label`` names its config entry (and the type)."""

    label: str
    n_atoms: int  # atoms of one copy
    n_copies: int
    radius_a: float
    n_elements: int = 6
    slab_atoms: int = 0  # most atoms of one copy in one slice (0: taken as a solid sphere's)
    copy_z_a: np.ndarray | None = None  # centres' z (Å); None: spread evenly through the ice

    @classmethod
    def of(cls, ptype, n_copies: int, label: str, slice_thickness_a: float, copy_z_a: np.ndarray | None = None,
           rotations: np.ndarray | None = None, radius_a: float | None = None) -> TypeLoad:
        """From a particle type; ``rotations`` (copies' type → scene) make the slab count exact for their
        beam directions when there are few copies (else the most over spread directions)."""
        atoms = ptype.atoms
        n_el = int((np.bincount(np.asarray(atoms.atomic_number, np.int64)) > 0).sum()) if len(atoms) else 0
        dirs = rotations[:, 2, :] if rotations is not None and 0 < len(rotations) <= 16 else None
        return cls(label, len(atoms), n_copies, ptype.radius_a if radius_a is None else radius_a, n_el,
                   most_atoms_in_slab(atoms.positions_a, slice_thickness_a, dirs), copy_z_a)

    def atoms_per_slice(self, slice_thickness_a: float) -> int:
        if self.slab_atoms:
            return self.slab_atoms
        r = max(self.radius_a, slice_thickness_a / 2)
        return min(self.n_atoms, math.ceil(self.n_atoms * 0.75 * slice_thickness_a / r))


@dataclass
class Component:
    """One part of a run: its memory (``resident`` held to the end, ``transient`` while it works), its time,
    what causes it (naming config fields) and how to shrink it."""

    cause: str
    resident_bytes: float = 0.0
    transient_bytes: float = 0.0
    seconds: float = 0.0
    fix: str = ""
    type_index: int | None = None  # the particle type (index into the loads) it belongs to

    @property
    def peak_bytes(self) -> float:
        return self.resident_bytes + self.transient_bytes


@dataclass
class ResourceEstimate:
    components: list[Component]

    @property
    def peak_bytes(self) -> int:
        """Everything resident plus the largest transient (stages that work one after another)."""
        return int(sum(c.resident_bytes for c in self.components)
                   + max([c.transient_bytes for c in self.components] or [0.0]))

    @property
    def seconds(self) -> float:
        return float(sum(c.seconds for c in self.components))

    def by_memory(self) -> list[Component]:
        return sorted(self.components, key=lambda c: -c.peak_bytes)

    def by_time(self) -> list[Component]:
        return sorted(self.components, key=lambda c: -c.seconds)

    def summary(self) -> dict:
        """For run metadata: the totals and the three largest parts of each."""
        return {"memory_bytes": self.peak_bytes, "seconds": round(self.seconds, 3),
                "memory": [{"cause": c.cause, "bytes": int(c.peak_bytes)} for c in self.by_memory()[:3]],
                "time": [{"cause": c.cause, "seconds": round(c.seconds, 3)} for c in self.by_time()[:3]]}


def _slice_overlap(loads: list[TypeLoad], types: list[int], slice_thickness_a: float, span_a: float,
                   per_copy) -> float:
    """The most of ``per_copy(load)`` summed over copies of ``types`` that cross one slice: exact slice ranges
    from the copies' z where known, else copies spread evenly through ``span_a`` (mean + 3σ)."""
    known = [t for t in types if loads[t].copy_z_a is not None and loads[t].n_copies]
    worst = 0.0
    if known:
        z = np.concatenate([loads[t].copy_z_a for t in known])
        r = np.concatenate([np.full(len(loads[t].copy_z_a), loads[t].radius_a) for t in known])
        w = np.concatenate([np.full(len(loads[t].copy_z_a), float(per_copy(loads[t]))) for t in known])
        z0 = float((z - r).min())
        lo = np.floor((z - r - z0) / slice_thickness_a).astype(np.int64)
        hi = np.floor((z + r - z0) / slice_thickness_a).astype(np.int64)
        n = int(hi.max()) + 2
        if n <= 10_000_000:
            diff = np.zeros(n)
            np.add.at(diff, lo, w)
            np.add.at(diff, hi + 1, -w)
            worst = float(np.cumsum(diff).max())
        else:
            worst = float(w.sum())
    for t in types:
        load = loads[t]
        if load.copy_z_a is None and load.n_copies:
            mean = load.n_copies * min(1.0, (2 * load.radius_a + slice_thickness_a) / max(span_a, 1e-9))
            worst += min(load.n_copies, mean + 3 * math.sqrt(mean) + 1) * per_copy(load)
    return worst


def _sized(fn, args: tuple, fallback):
    """``fn(*args)`` (a size), or ``fallback`` where the size is beyond any transform (the estimate then refuses)."""
    try:
        return fn(*args)
    except ValueError:
        return fallback


def estimate_resources(loads: list[TypeLoad], modes: list[str], *, shape_px: tuple[int, int], pixel_size_a: float,
                       slice_thickness_a: float, ice_thickness_a: float, multislice_shape_px: tuple[int, int] | None,
                       n_tiles: int = 1, n_views: int = 1, filtered_views: bool = False, random_copies: int = 0,
                       atom_box_px: tuple[int, int] | None = None,
                       device_type: str = "cpu", threads: int = 2) -> ResourceEstimate:
    """The memory and time of simulating ``loads`` in ``modes`` (see the constants above for the model).

    ``multislice_shape_px``: the grid multislice runs on (a window or a tile; None: the field); ``n_tiles`` of
    them per view; ``n_views`` views (tilts), each with its own damage filter when ``filtered_views``;
    ``atom_box_px``: the (rows, columns) the atom-path copies span with the box margins (None: the grid)."""
    p, dz = pixel_size_a, slice_thickness_a
    h, w = shape_px
    my, mx = multislice_shape_px or shape_px
    speed = (GPU_SPEEDUP if device_type == "cuda" else 1.0) * (1 + 0.7 * (max(1, min(threads, 64)) - 1))
    comps: list[Component] = []

    # the z range the slices cover, and how many of them hold something
    z_lo, z_hi = -ice_thickness_a / 2, ice_thickness_a / 2
    for load in loads:
        if load.copy_z_a is not None and len(load.copy_z_a):
            reach = load.radius_a + SUPPORT_MARGIN_A
            z_lo, z_hi = min(z_lo, float(load.copy_z_a.min()) - reach), max(z_hi, float(load.copy_z_a.max()) + reach)
        elif load.n_copies:
            z_lo, z_hi = min(z_lo, -load.radius_a), max(z_hi, load.radius_a)
    span = max(z_hi - z_lo, dz)
    n_slices = math.ceil(span / dz)
    # slices each copy puts content in: a projection only the slice of its centre
    crossing = sum(ld.n_copies * (1 if m == "projection" else 2 * (ld.radius_a + SUPPORT_MARGIN_A) / dz + 1)
                   for ld, m in zip(loads, modes, strict=True))
    busy = min(n_slices, crossing)
    g = my * mx
    fft = T_FFT_CALL + T_FFT * g * math.log2(max(g, 2))
    per_view = (n_tiles * (busy * (FFTS_PER_SLICE * fft + T_BUSY_PX * g) + n_slices * T_PX_SLICE * g)
                + 20 * (T_FFT_CALL + T_FFT * h * w * math.log2(max(h * w, 2))))
    grid_text = ("" if multislice_shape_px is None else f"multislice on {my}×{mx} px"
                 + ("" if n_tiles == 1 else f" in {n_tiles} tiles") + ", ")
    comps.append(Component(
        f"the {h}×{w} px field (detector.shape_px; {grid_text}{n_slices:,} slices)",
        resident_bytes=FIELD_BYTES_PER_PX * h * w + MULTISLICE_BYTES_PER_PX * g,
        transient_bytes=MAP_SLICE_BYTES_PER_PX * g if any(m != "atoms" for m in modes) else 0.0,
        seconds=n_views * per_view / speed,
        fix="reduce detector.shape_px" + ("" if multislice_shape_px else " or use simulation.tile_px")))

    # each particle type: its atoms in its own frame, then its copies on the atom path or drawn from a map
    atom_types = [t for t, m in enumerate(modes) if m == "atoms" and loads[t].n_copies and loads[t].n_atoms]
    per_slice = _slice_overlap(loads, atom_types, dz, span, lambda ld: ld.atoms_per_slice(dz))
    n_el = min(12, sum(loads[t].n_elements for t in atom_types))
    ay, ax = atom_box_px or (my, mx)
    ay, akx = min(my, ay), min(mx, ax) // 2 + 1  # the atom path's boxes: rows, half-plane columns
    ff_set = 2 * n_el * FF_BYTES * ay * akx  # one box shape's form factors; other shapes' are capped
    sf_bytes = per_slice * (ay + akx) * SF_BYTES + ff_set + min(FF_CACHE_BYTES, busy * ff_set)
    overlap = n_tiles * g / (h * w) if n_tiles > 1 else 1.0  # atoms in tile margins are computed twice
    lead = max(atom_types, key=lambda t: loads[t].n_atoms * loads[t].n_copies) if atom_types else None
    for t, (load, mode) in enumerate(zip(loads, modes, strict=True)):
        who = f"{load.label}, {load.n_copies:,} {'copy' if load.n_copies == 1 else 'copies'} × {load.n_atoms:,} atoms"
        comps.append(Component(f"{load.label}: {load.n_atoms:,} atoms per copy",
                               resident_bytes=TYPE_ATOM_BYTES * load.n_atoms,
                               fix="use a smaller assembly, fewer helix subunits or transforms", type_index=t))
        if not load.n_copies or not load.n_atoms:
            continue
        copy_s = n_views * load.n_copies * T_COPY
        if mode == "atoms":
            n = load.n_atoms * load.n_copies
            work = n * overlap * (ay * akx * T_SF_MAC + (ay + akx) * T_SF_AXIS) / speed
            comps.append(Component(
                f"{who} on the atom path",
                resident_bytes=ATOM_PATH_BYTES * n, transient_bytes=sf_bytes if t == lead else 0.0,
                seconds=n_views * work + copy_s,
                fix=f"use representation: map for {load.label}, fewer copies, thinner "
                    "simulation.slice_thickness_a or a smaller detector.shape_px", type_index=t))
        elif mode == "projection":
            side, support = _sized(projector_size, (load.radius_a, p),
                                   (math.ceil(2 * (2 * (load.radius_a + 8 * p) / p + 2)), load.radius_a + 8 * p))
            box = _sized(projection_box_px, (support, p), 2 * math.ceil(support / p) + 4)
            freqs = box * (box // 2 + 1)
            batch = min(load.n_copies, max(1, SAMPLES_PER_BATCH // (8 * box * box)))
            build_s = T_PROJECTOR_BUILD * side**3 * math.log2(side) * max(load.n_elements, 1)
            comps.append(Component(
                f"{who} as projections (a {side}³ transform)",
                resident_bytes=PROJECTOR_KEPT_BYTES * side**3,
                transient_bytes=max(PROJECTOR_BUILD_BYTES * side**3, PROJECT_BYTES * batch * freqs),
                seconds=(build_s + n_views * (load.n_copies * freqs * T_PROJECT
                                              + math.ceil(load.n_copies / batch) * T_PROJECT_CALL)) / speed + copy_s,
                fix=f"use fewer copies, a coarser detector.pixel_size_a or representation: atoms for {load.label}",
                type_index=t))
        else:
            side, support = _sized(map_side_voxels, (load.radius_a, p / 2, p),
                                   (2 * math.ceil((load.radius_a + 12 * p) / (p / 2)) + 2, 0.0))
            box = 2 * math.ceil((load.radius_a + SUPPORT_MARGIN_A) / p) + 3
            nz = max(1, math.ceil(dz / p - 1e-9))
            slabs = math.ceil(2 * (load.radius_a + SUPPORT_MARGIN_A) / dz) + 1
            per_copy = box * box * nz * slabs
            batch = min(load.n_copies, max(1, SAMPLES_PER_BATCH // (nz * box * box))) * nz * box * box
            build_s = T_MAP_BUILD * side**3 * math.log2(side) * max(load.n_elements, 1)
            filter_s = n_views * T_MAP_FILTER * side**3 * math.log2(side) if filtered_views else 0.0
            comps.append(Component(
                f"{who} as a slab map ({side}³ voxels of {p / 2:g} Å)",
                resident_bytes=MAP_KEPT_BYTES * side**3 * (2 if filtered_views else 1),
                transient_bytes=max(MAP_BUILD_BYTES * side**3, MAP_FILTER_BYTES * side**3 if filtered_views else 0,
                                    SAMPLE_BYTES * batch),
                seconds=(build_s + filter_s + n_views * (load.n_copies * per_copy * T_SAMPLE
                                                         + min(n_slices, load.n_copies * slabs) * T_SAMPLE_CALL))
                / speed + copy_s,
                fix=f"use fewer copies, a coarser detector.pixel_size_a, simulation.map_placement: projection or "
                    f"representation: atoms for {load.label}", type_index=t))
    n_copies = sum(load.n_copies for load in loads)
    if n_copies:
        comps.append(Component(f"the poses and ground truth of {n_copies:,} copies (sample.particles)",
                               resident_bytes=COPY_BYTES * n_copies, seconds=random_copies * T_RANDOM_COPY,
                               fix="give fewer copies"))
    if n_views > 1:
        comps.append(Component(f"tilt_series: {n_views} tilts of {h}×{w} px",
                               resident_bytes=TILT_BYTES_PER_PX * n_views * h * w,
                               fix="use fewer tilts (a larger tilt_series.step_deg) or a smaller detector.shape_px"))
    return ResourceEstimate(comps)
