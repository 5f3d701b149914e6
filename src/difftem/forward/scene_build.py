"""From a scene and one view of it (tilt, dose history) to the :class:`ScenePotential` of a field or tile.

Each particle type is simulated in one of three ways, chosen per type:

* ``atoms`` — every atom of every copy through the exact per-slice builder (few copies);
* ``projection`` — a cached 3-D Fourier transform per type; each copy is one central slice,
  placed whole in the slice holding its centre. Its error is the defocus spread inside the
  particle: a phase of at most π λ R k_max² at the band edge (R: particle radius), used by
  ``auto`` when that is ≤ 0.03 rad (coarse pixels or small particles, e.g. virions at 1 nm/px);
* ``slab`` — a cached real-space map per type, sampled slab by slab at each copy's pose;
* ``subunits`` — for a type made of copies of one unit (a helix, a transforms file): the unit's projector, each
  unit of each copy projected whole into the slice holding the unit's centre. The type costs one unit to build,
  and the projection's error is that of the unit's depth, not the whole type's. Where the units follow one
  repeated step (a helix) runs of consecutive units are projected as one block (:func:`unit_blocks`): the
  largest block the accuracy rule allows, sized for the fewest projected pixels per view.
* ``unit_slab`` — the same type's unit map sampled slab by slab at every unit's pose (the ground-truth potential
  volume of such a type: the sum of its units' maps is the type's map, without gridding every atom).

Projection (of a type or a unit) is allowed when its error, the defocus phase across it (π λ R k_max² at the band
edge, R its radius), is at most PROJECTION_PHASE_LIMIT_RAD or when the particle is no deeper than one slice
(2R ≤ Δz: the multislice already accepts that error inside every slice).

Maps are built once per type and device and reused by every tile, tilt and copy (a tilt's damage-filtered map
replaces the previous tilt's). The memory and time these cost are estimated in :mod:`difftem.forward.resources`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from ..core.fft import good_fft_size
from ..core.grid import Grid
from ..core.threads import large_work
from ..specimen.density import DensityMap
from ..specimen.scene import Placement, Scene, Subunits
from ..specimen.structure import Atoms
from .density_map import build_density_map, build_density_projector
from .particle_map import (
    build_fourier_projector,
    build_particle_map,
    projection_box_px,
    projector_size,
)
from .potential import IceModel, SlicedPotential, atoms_to_tensors
from .resources import T_PROJECT, T_PROJECTOR_BUILD, T_SPREAD_PROJECTOR
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
    block_radius_a: float = 0.0  # the largest block of units that may be projected whole (0: units one by one)
    views: int = 1  # exposures the cache serves (a tilt series' tilts): the blocks' build is paid once for them
    blocks: dict = field(default_factory=dict)  # type → (its parts, units per block of each)

    def unit_parts(self, t: int, units: Subunits, copies: int = 1) -> list[Subunits]:
        """Type ``t``'s units as the blocks projected whole (:func:`unit_blocks`), chosen once per type."""
        if t not in self.blocks:
            parts = unit_blocks(units, self.block_radius_a, self.pixel_size_a, copies * self.views)
            self.blocks[t] = parts, [len(p.atoms) // max(1, len(units.atoms)) for p in parts]
        return self.blocks[t][0]

    def block_sizes(self, t: int) -> list[int]:
        """Units per block of each part of type ``t`` (empty: not projected as units)."""
        return self.blocks[t][1] if t in self.blocks else []

    def projector(self, t: int, atoms: Atoms, mode: str = "projection", part: int = 0):
        """Type ``t``'s projector (``mode`` projection), or that of its unit or block of units ``part`` (``mode``
        subunits)."""
        key = (mode, t, part)
        if key not in self.maps:
            build = build_density_projector if isinstance(atoms, DensityMap) else partial(build_fourier_projector,
                                                                                            table=self.table)
            with large_work():
                self.maps[key] = build(atoms, pixel_size_a=self.pixel_size_a, ice=self.ice,
                                       absorption_ratio=self.absorption_ratio, device=self.device)
        return self.maps[key]

    def slab_map(self, t: int, atoms: Atoms, transfer=None, mode: str = "slab"):
        """The type's map (``mode`` slab), or its unit's (``unit_slab``), filtered by ``transfer`` when given. Only
        the latest filtered map of a type is kept (one per view: a tilt series' damage filter changes every tilt),
        and it is keyed by the filter object itself, so a new filter never gets an old one's map."""
        key = (mode, t)
        if key not in self.maps:
            build = build_density_map if isinstance(atoms, DensityMap) else partial(build_particle_map,
                                                                                    table=self.table)
            with large_work():
                self.maps[key] = build(atoms, pixel_size_a=self.pixel_size_a, ice=self.ice,
                                       absorption_ratio=self.absorption_ratio, device=self.device)
        if transfer is None:
            return self.maps[key]
        fkey = (mode, t, "filtered")
        held = self.maps.get(fkey)
        if held is not None and held[0] is transfer:
            return held[1]
        self.maps.pop(fkey, None)  # free the previous view's map before making this one
        filtered = self.maps[key].filtered(transfer)
        self.maps[fkey] = (transfer, filtered)
        return filtered  # this view's own map, whatever a view built at the same time left in the cache

    @property
    def nbytes(self) -> int:
        return sum((m[1] if isinstance(m, tuple) else m).nbytes for m in self.maps.values())


#: blocks of units stand in for the units when they match them this closely (Å)
BLOCK_MISMATCH_A = 1e-3
MAX_BLOCK_UNITS = 256


def unit_blocks(units: Subunits, radius_limit_a: float, pixel_size_a: float, uses: int = 1) -> list[Subunits]:
    """``units`` as blocks of g consecutive units projected whole: of the sizes whose blocks stay within
    ``radius_limit_a`` (the accuracy rule's largest projected particle), the one of least estimated time for
    ``uses`` projections of the whole type (copies × views; each block's projected frequencies) and the build of its
    projectors (a last, shorter block needs one of its own); the units themselves when no block of two fits or the
    operators are not one repeated step (blocks would not be copies of one another)."""
    n = len(units)
    r_unit = units.radius_a
    g_max = min(n, MAX_BLOCK_UNITS)
    if g_max < 2 or r_unit >= radius_limit_a:
        return [units]
    centres = units.translations_a[:g_max]  # the unit is centred: its centre goes to t_k
    lo, hi = np.minimum.accumulate(centres, 0), np.maximum.accumulate(centres, 0)
    mid = 0.5 * (lo + hi)  # (g_max, 3): bounding-box centre of the first g units' centres
    reach = np.sqrt(((centres[None, :, :] - mid[:, None, :]) ** 2).sum(-1))  # (g, i)
    reach = np.where(np.arange(g_max)[None, :] <= np.arange(g_max)[:, None], reach, 0.0).max(1)
    radius = reach + r_unit  # a bound on block g's radius, g = index + 1

    n_el = len(np.unique(units.atoms.atomic_number))

    def cost(g: int) -> float:
        full, rest = divmod(n, g)
        parts = [(k, m) for k, m in ((full, g), (1 if rest else 0, rest)) if k]
        side = [projector_size(radius[m - 1], pixel_size_a)[0] for _, m in parts]
        return sum(uses * T_PROJECT * k * _freqs(radius[m - 1], pixel_size_a)
                   + T_PROJECTOR_BUILD * d**3 * math.log2(d) * n_el + T_SPREAD_PROJECTOR * m * len(units.atoms)
                   for (k, m), d in zip(parts, side, strict=True))

    sizes = sorted((g for g in range(1, g_max + 1) if radius[g - 1] <= radius_limit_a), key=cost)
    for g in sizes[:4]:
        if g == 1:
            break
        if units.block_mismatch_a(g) <= BLOCK_MISMATCH_A:
            return units.blocks(g)
    return [units]


def _freqs(radius_a: float, pixel_size_a: float) -> int:
    """Frequencies of one projection: its box times the half plane."""
    box = projection_box_px(projector_size(radius_a, pixel_size_a)[1], pixel_size_a)
    return box * (box // 2 + 1)


def projection_radius_limit_a(*, pixel_size_a: float, wavelength_a: float, antialias_fraction: float,
                              slice_thickness_a: float = 0.0) -> float:
    """The largest radius :func:`projection_allowed` admits."""
    k_max = antialias_fraction * 0.5 / pixel_size_a
    return max(PROJECTION_PHASE_LIMIT_RAD / (math.pi * wavelength_a * k_max**2), slice_thickness_a / 2)


def projection_allowed(radius_a: float, *, pixel_size_a: float, wavelength_a: float, antialias_fraction: float,
                       slice_thickness_a: float = 0.0) -> bool:
    """Whether a particle of ``radius_a`` may be projected whole into one slice (the accuracy rule above)."""
    k_max = antialias_fraction * 0.5 / pixel_size_a
    return (math.pi * wavelength_a * radius_a * k_max**2 <= PROJECTION_PHASE_LIMIT_RAD
            or 2 * radius_a <= slice_thickness_a)


def map_mode(radius_a: float, *, placement: str, pixel_size_a: float, wavelength_a: float,
             antialias_fraction: float, slice_thickness_a: float = 0.0) -> str:
    """How a type drawn from a map is placed: ``placement`` unless auto; then projection when the accuracy rule
    allows it (:func:`projection_allowed`), else slab."""
    if placement != "auto":
        return placement
    return "projection" if projection_allowed(radius_a, pixel_size_a=pixel_size_a, wavelength_a=wavelength_a,
                                              antialias_fraction=antialias_fraction,
                                              slice_thickness_a=slice_thickness_a) else "slab"


def auto_mode(total_atoms: int, mapped: str) -> str:
    """``auto``'s first choice for a type whose copies hold ``total_atoms`` atoms and whose map mode is ``mapped``:
    projections are far cheaper than atoms; slab sampling is not (measured: 254 TMV segments at 2 Å/px, atoms
    1.7 s, slab maps > 300 s), so slabs only past SLAB_MIN_ATOMS. The setup moves a type to its other mode when
    this choice does not fit the memory or time limit and the other does."""
    return mapped if total_atoms >= (MAP_MIN_ATOMS if mapped == "projection" else SLAB_MIN_ATOMS) else "atoms"


def mode_candidates(representation: str, radius_a: float, unit_radius_a: float | None, *, placement: str,
                    pixel_size_a: float, wavelength_a: float, antialias_fraction: float,
                    slice_thickness_a: float) -> list[str]:
    """The modes a type may take under the accuracy rule: ``representation`` atoms → atoms; map → its map mode
    (``placement``, or under auto projection if allowed, else slab) and, for a type of subunits under auto,
    ``subunits`` when the unit may be projected; auto → atoms and those. The setup picks the cheapest by the
    resource estimate."""
    if representation == "atoms":
        return ["atoms"]
    rule = {"pixel_size_a": pixel_size_a, "wavelength_a": wavelength_a, "antialias_fraction": antialias_fraction,
            "slice_thickness_a": slice_thickness_a}
    maps = [map_mode(radius_a, placement=placement, **rule)]
    if placement == "auto" and unit_radius_a is not None and projection_allowed(unit_radius_a, **rule):
        maps.append("subunits")
    return maps if representation == "map" else ["atoms"] + maps


def choose_modes(scene: Scene, *, representation_default: str, placement: str, pixel_size_a: float,
                 wavelength_a: float, antialias_fraction: float, slice_thickness_a: float = 0.0,
                 radii: np.ndarray | None = None) -> list[list[str]]:
    """Per particle type, its :func:`mode_candidates`, the first choice first (``radii``: :func:`type_radii`)."""
    radii = type_radii(scene) if radii is None else radii
    out = []
    for t, ptype in enumerate(scene.types):
        rep = ptype.representation if ptype.representation != "auto" else representation_default
        cands = mode_candidates(rep, float(radii[t]), ptype.subunits.radius_a if ptype.subunits else None,
                                placement=placement, pixel_size_a=pixel_size_a, wavelength_a=wavelength_a,
                                antialias_fraction=antialias_fraction, slice_thickness_a=slice_thickness_a)
        if rep == "auto":
            first = auto_mode(scene.copies_of(t) * ptype.n_atoms, cands[1])
            cands = [first] + [m for m in cands if m != first]
        out.append(cands)
    return out


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
        rots_np, centres_np = pl.rotations[sel], pl.positions_a[sel]
        if mode == "subunits":  # each unit (or block of units) of each copy is a copy of the unit
            for q, part in enumerate(cache.unit_parts(t, scene.types[t].subunits, sel.size)):
                rots, centres = (torch.as_tensor(a, dtype=torch.float64, device=dev)
                                 for a in part.poses(rots_np, centres_np))
                projection_copies.append(ProjectionCopies(cache.projector(t, part.atoms, mode, q), rots, centres,
                                                          view.transfer))
            continue
        if mode == "unit_slab":  # each unit of each copy is a copy of the unit
            units = scene.types[t].subunits
            (rots_np, centres_np), atoms_of_mode = units.poses(rots_np, centres_np), units.atoms
        else:  # the whole type (a type of subunits builds its atoms for it)
            atoms_of_mode = scene.types[t].source
        rots = torch.as_tensor(rots_np, dtype=torch.float64, device=dev)
        centres = torch.as_tensor(centres_np, dtype=torch.float64, device=dev)
        if mode == "projection":
            projection_copies.append(ProjectionCopies(cache.projector(t, atoms_of_mode, mode), rots, centres,
                                                      view.transfer))
        elif mode == "unit_slab":
            pmap = cache.slab_map(t, atoms_of_mode, view.transfer, mode)
            map_copies.append(MapCopies(pmap, rots, centres, units.radius_a + SUPPORT_MARGIN_A))
        else:
            pmap = cache.slab_map(t, atoms_of_mode, view.transfer)
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
