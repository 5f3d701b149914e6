"""A run's memory (bytes) and time (s), component by component (the field, each type's atoms, the atom path, maps
and their sampling, the copies, the tilt stacks), from counts alone, so that a run is refused before anything large
is allocated and the refusal names what dominates; the setup also moves ``auto`` types to the mode that fits.

Constants were measured with torch 2.13 on CPU (2 threads): the per-unit peak RSS of each stage in isolation, then
checked whole against the peak RSS of real runs (tests/test_robust_resources.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .particle_map import map_side_voxels, projection_box_px, projector_size
from .potential import FF_CACHE_BYTES, atom_tile_plan, box_margin_px
from .scene_potential import SUPPORT_MARGIN_A

FIELD_BYTES_PER_PX = 48  # field-sized arrays the lens, detector and exit wave keep (complex64 and float32 images)
BASE_BYTES = 24 * 2**20  # a run's fixed working set: tables, kernels' scratch, the first use of each operator
ALLOCATOR_SLACK = 1.5  # freed blocks the allocator keeps (per-thread arenas): peak RSS / live bytes 1.0–1.4
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
T_ATOM_TILE = 2e-3  # per occupied tile of a slice on the tiled atom path: its inverse FFT, sum into the box, Python
T_SAMPLE = 5e-7  # per slab sample point of the copies' boxes (8 trilinear look-ups of 2 channels inside)
T_SAMPLE_CALL = 2e-3  # per slice a slab type is sampled in
T_PROJECT = 3e-7  # per frequency of a projected copy (look-ups, phase ramp, inverse FFT, scatter; TMV: 2.2–2.7e-7)
T_PROJECT_CALL = 2e-3  # per batch of projected copies
T_PROJECTOR_BUILD = 1e-8  # per voxel·log2(side) and element: half-spectrum FFTs, form factors, prefilter (90³: 5e-9)
T_MAP_BUILD = 1.5e-8  # per voxel·log2(side) and element
T_SPREAD_MAP = 2.4e-6  # per atom gridded into a slab map (7³ kernel entries; TMV fragment: 627 k atoms)
T_SPREAD_PROJECTOR = 5e-6  # per atom gridded into a projector (9³ entries)
T_MAP_FILTER = 1e-8  # per voxel·log2(side)
T_COPY = 3e-5  # per copy and view: pose, atoms or batching, ground truth (Python)
T_RANDOM_COPY = 1e-4  # per randomly placed copy (draws, overlap tests)
GPU_SPEEDUP = 30.0
SLAB_SAMPLE_POINTS = 200_000  # atoms of a large type standing for it in most_atoms_in_slab


def most_atoms_in_slab(positions_a: np.ndarray, thickness_a: float, directions: np.ndarray | None = None,
                       max_points: int = SLAB_SAMPLE_POINTS, n_atoms: int | None = None) -> int:
    """About the most atoms of one copy that a slab of ``thickness_a`` holds, across ``directions`` (unit slab
    normals in the type frame; default 16: the principal axes and 13 spread ones), bins at two offsets; a
    subsample stands for the rest of a large type (``n_atoms``: the positions are already an even subsample of
    that many)."""
    n = len(positions_a) if n_atoms is None else n_atoms
    if n == 0:
        return 0
    pts = np.asarray(positions_a[:: max(1, math.ceil(len(positions_a) / max_points))], dtype=np.float64)
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
    n_units: int = 1  # subunits per copy (a type made of copies of one unit)
    unit_radius_a: float | None = None  # the unit's radius (None: not made of units)

    @classmethod
    def of(cls, ptype, n_copies: int, label: str, slice_thickness_a: float, copy_z_a: np.ndarray | None = None,
           rotations: np.ndarray | None = None, radius_a: float | None = None) -> TypeLoad:
        """From a particle type; ``rotations`` (copies' type → scene) make the slab count exact for their
        beam directions when there are few copies (else the most over spread directions)."""
        units = ptype.subunits
        atoms = ptype.atoms if ptype.atoms_built else units.atoms  # a type of subunits: its unit's elements
        n_el = int((np.bincount(np.asarray(atoms.atomic_number, np.int64)) > 0).sum()) if len(atoms) else 0
        dirs = rotations[:, 2, :] if rotations is not None and 0 < len(rotations) <= 16 else None
        n = ptype.n_atoms
        if ptype.atoms_built:
            slab = most_atoms_in_slab(atoms.positions_a, slice_thickness_a, dirs)
        else:  # the same even subsample of the type's atoms, taken from the units
            step = max(1, math.ceil(n / SLAB_SAMPLE_POINTS))
            slab = most_atoms_in_slab(units.every_nth_position(step), slice_thickness_a, dirs, n_atoms=n)
        return cls(label, n, n_copies, ptype.radius_a if radius_a is None else radius_a, n_el, slab, copy_z_a,
                   len(units) if units is not None else 1, units.radius_a if units is not None else None)

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
    per_view: bool = False  # held by each view in flight (the field's arrays), not shared between views

    @property
    def peak_bytes(self) -> float:
        return self.resident_bytes + self.transient_bytes


@dataclass
class ResourceEstimate:
    components: list[Component]

    @property
    def peak_bytes(self) -> int:
        """Everything resident plus the largest transient (stages that work one after another), with the
        allocator's slack and the fixed working set: an upper bound on the run's peak RSS increase."""
        live = (sum(c.resident_bytes for c in self.components)
                + max([c.transient_bytes for c in self.components] or [0.0]))
        return int(BASE_BYTES + ALLOCATOR_SLACK * live)

    @property
    def seconds(self) -> float:
        return float(sum(c.seconds for c in self.components))

    def view_bytes(self) -> int:
        """What one more view in flight at the same time adds: its field arrays and the largest transient."""
        return int(ALLOCATOR_SLACK * (sum(c.resident_bytes for c in self.components if c.per_view)
                                      + max([c.transient_bytes for c in self.components] or [0.0])))

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


def _projection_component(load: TypeLoad, mode: str, who: str, p: float, n_views: int, copy_s: float, speed: float,
                          t: int) -> Component:
    """Projected copies: the projector of the type (or of its unit, each unit of each copy projected)."""
    units = mode == "subunits"
    radius = load.unit_radius_a if units else load.radius_a
    n_proj = load.n_copies * (load.n_units if units else 1)
    side, support = _sized(projector_size, (radius, p), (math.ceil(2 * (2 * (radius + 8 * p) / p + 2)), radius + 8 * p))
    box = _sized(projection_box_px, (support, p), 2 * math.ceil(support / p) + 4)
    freqs = box * (box // 2 + 1)
    batch = min(n_proj, max(1, SAMPLES_PER_BATCH // (8 * box * box)))
    build_s = (T_PROJECTOR_BUILD * side**3 * math.log2(side) * max(load.n_elements, 1)
               + T_SPREAD_PROJECTOR * load.n_atoms / (load.n_units if units else 1))
    what = f"as projections of its {load.n_units} subunits" if units else "as projections"
    return Component(
        f"{who} {what} (a {side}³ transform)",
        resident_bytes=PROJECTOR_KEPT_BYTES * side**3 + (COPY_BYTES * n_proj if units else 0.0),
        transient_bytes=max(PROJECTOR_BUILD_BYTES * side**3, PROJECT_BYTES * batch * freqs),
        seconds=(build_s + n_views * (n_proj * freqs * T_PROJECT + math.ceil(n_proj / batch) * T_PROJECT_CALL)) / speed
        + copy_s * (load.n_units if units else 1),
        fix=f"use fewer copies, a coarser detector.pixel_size_a or representation: atoms for {load.label}",
        type_index=t)


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
    # unit_slab: the unit's map sampled at every unit of every copy (copies of the unit, spread through the ice)
    loads = [replace(ld, n_atoms=ld.n_atoms // ld.n_units, n_copies=ld.n_copies * ld.n_units, n_units=1,
                     radius_a=ld.unit_radius_a, slab_atoms=0, copy_z_a=None) if m == "unit_slab" else ld
             for ld, m in zip(loads, modes, strict=True)]
    modes = ["slab" if m == "unit_slab" else m for m in modes]
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
    crossing = sum(ld.n_copies * {"projection": 1, "subunits": ld.n_units}.get(
        m, 2 * (ld.radius_a + SUPPORT_MARGIN_A) / dz + 1) for ld, m in zip(loads, modes, strict=True))
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
        fix="reduce detector.shape_px" + ("" if multislice_shape_px else " or use simulation.tile_px"),
        per_view=True))

    # each particle type: its atoms in its own frame, then its copies on the atom path or drawn from a map
    atom_types = [t for t, m in enumerate(modes) if m == "atoms" and loads[t].n_copies and loads[t].n_atoms]
    per_slice = _slice_overlap(loads, atom_types, dz, span, lambda ld: ld.atoms_per_slice(dz))
    n_el = min(12, sum(loads[t].n_elements for t in atom_types))
    ay, ax = atom_box_px or (my, mx)
    ay, akx = min(my, ay), min(mx, ax) // 2 + 1  # the atom path's boxes: rows, half-plane columns
    atom_tiles = atom_tile_plan(ay, min(mx, ax), box_margin_px(p))
    fy, fkx = (ay, akx) if atom_tiles is None else (atom_tiles[1], atom_tiles[1] // 2 + 1)  # a tile's sub-box
    ff_set = 2 * n_el * FF_BYTES * fy * fkx  # one box shape's form factors; other shapes' are capped
    sf_bytes = per_slice * (fy + fkx) * SF_BYTES + ff_set + min(FF_CACHE_BYTES, busy * ff_set)
    overlap = n_tiles * g / (h * w) if n_tiles > 1 else 1.0  # atoms in tile margins are computed twice
    lead = max(atom_types, key=lambda t: loads[t].n_atoms * loads[t].n_copies) if atom_types else None
    for t, (load, mode) in enumerate(zip(loads, modes, strict=True)):
        who = f"{load.label}, {load.n_copies:,} {'copy' if load.n_copies == 1 else 'copies'} × {load.n_atoms:,} atoms"
        held = load.n_atoms // load.n_units if mode == "subunits" else load.n_atoms  # a unit's atoms stand for all
        comps.append(Component(f"{load.label}: {load.n_atoms:,} atoms per copy",
                               resident_bytes=TYPE_ATOM_BYTES * held,
                               fix="use a smaller assembly, fewer helix subunits or transforms", type_index=t))
        if not load.n_copies or not load.n_atoms:
            continue
        copy_s = n_views * load.n_copies * T_COPY
        if mode == "atoms":
            n = load.n_atoms * load.n_copies
            if atom_tiles is None:
                work = n * overlap * (ay * akx * T_SF_MAC + (ay + akx) * T_SF_AXIS) / speed
            else:  # each atom in its tile's sub-box; each occupied tile of a slice one small transform
                tile, sub = atom_tiles
                skx = sub // 2 + 1
                # the tiles a copy covers in each slice it crosses, at most every tile of the box in every slice
                per_copy = (2 * load.radius_a / (tile * p) + 1) ** 2 * (2 * load.radius_a / dz + 1)
                occupied = min(busy * math.ceil(ay / tile) * math.ceil(min(mx, ax) / tile), load.n_copies * per_copy)
                work = (n * overlap * (sub * skx * T_SF_MAC + (sub + skx) * T_SF_AXIS)
                        + n_tiles * occupied * T_ATOM_TILE) / speed
            comps.append(Component(
                f"{who} on the atom path",
                resident_bytes=ATOM_PATH_BYTES * n, transient_bytes=sf_bytes if t == lead else 0.0,
                seconds=n_views * work + copy_s,
                fix=f"use representation: map for {load.label}, fewer copies, thinner "
                    "simulation.slice_thickness_a or a smaller detector.shape_px", type_index=t))
        elif mode in ("projection", "subunits"):
            comps.append(_projection_component(load, mode, who, p, n_views, copy_s, speed, t))
        else:
            side, support = _sized(map_side_voxels, (load.radius_a, p / 2, p),
                                   (2 * math.ceil((load.radius_a + 12 * p) / (p / 2)) + 2, 0.0))
            box = 2 * math.ceil((load.radius_a + SUPPORT_MARGIN_A) / p) + 3
            nz = max(1, math.ceil(dz / p - 1e-9))
            slabs = math.ceil(2 * (load.radius_a + SUPPORT_MARGIN_A) / dz) + 1
            per_copy = box * box * nz * slabs
            batch = min(load.n_copies, max(1, SAMPLES_PER_BATCH // (nz * box * box))) * nz * box * box
            build_s = T_MAP_BUILD * side**3 * math.log2(side) * max(load.n_elements, 1) + T_SPREAD_MAP * load.n_atoms
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
