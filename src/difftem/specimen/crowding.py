"""Crowded scenes (``sample.particles[].volume_fraction``, ``sample.crowding``): many particle types packed to target
volume fractions inside the ice, around obstacles (vesicles, filaments, copies placed before), fast.

**Volumes.** A type's volume is its bounding capsule's, πr²·2h + 4/3·πr³ (``basis: capsule``, the shape the
overlap test uses, so fractions compare directly with packing limits), or its molecular volume, mass / 1.35 g/cm³
(``basis: molecular``, what cell biologists quote: 20–30 % in cytoplasm). A fraction is of the *free* volume: the
ice in the field (∫ t(x, y) dx dy) minus the obstacles' volume (vesicles whole when their lumen is closed to the
crowd, else their shells; obstacle capsules; copies placed before the crowd).

**Placement.** Random sequential addition, type by type (largest capsule first), in batches: a batch of proposals
(uniform rotations; centres uniform in the volume where the capsule lies wholly in the field and the ice; thicker
ice proportionally more often) is tested at once against the obstacles (capsules through a cell hash, spherical
shells directly), against the copies already placed (a cell hash rebuilt per batch: each proposal sees the copies
whose segment midpoints lie in its own or the 26 neighbouring cells, cells wider than any two reaches plus the gap)
and against earlier proposals of its own batch (a later one that touches an earlier survivor is dropped, so accepted
copies never overlap). Batches are sized from the running acceptance rate, and small enough (≤ 2 % of the free
volume) that in-batch conflicts stay rare. Random packing of spheres jams near 38 % of the volume (capsules and
polydisperse mixtures a little differently): a target whose shapes would fill more than :data:`FILL_LIMIT` is
refused before placing, and a type whose batches stop being accepted is refused with what was reached.

**Obstacles** are generic (:class:`Obstacles`): capsules (segment ends and radius; a long segment is split into
pieces no longer than its radius, at least 10 nm, for the hash) and spherical shells (centre, inner and outer radius;
inner 0 is a solid ball). Vesicles give shells (:meth:`Obstacles.from_vesicles`), placed copies their bounding
capsules (:meth:`Obstacles.from_placement`), and a filament its centreline as a polyline of capsules
(:meth:`Obstacles.from_polylines`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.rotations import random_rotations
from .excluded import sphere_cover
from .geometry import IceProfile
from .occupancy import ATOM_REACH_A, Occupancy, grid_voxel_a, relax, voxel_shape
from .scene import Bounds, ParticleType, Placement, _segments, covering_capsule, segment_distances
from .sheets import sheet_hits, sheets_volume_a3

#: random sequential addition of spheres jams at 38 % of the volume; a target whose bounding shapes (grown by half
#: the gap) would fill more of the free volume is refused up front
FILL_LIMIT = 0.40
#: protein density (g/cm³): Å³ per dalton = 1 / (1.35 × 0.602214)
A3_PER_DA = 1.0 / (1.35 * 0.60221408)
MAX_CROWDED_COPIES = 500_000
BATCH_VOLUME = 0.02  # a batch's shapes fill at most this fraction of the free volume (in-batch conflicts stay rare)
MIN_ACCEPTANCE = 2e-3  # a type whose last JAM_WINDOW proposals were accepted less often than this has jammed
JAM_WINDOW = 20_000
MIN_ACCEPTANCE_ATOMS, JAM_WINDOW_ATOMS = 2e-3, 200_000  # the same for copies excluded voxel by voxel, which are
# shaken (MAX_SHAKES times) before the type is called jammed
MAX_SHAKES, SHAKE_SWEEPS = 60, 2  # a stalled type's crowd is shaken (SHAKE_SWEEPS sweeps) at most MAX_SHAKES times
ATOMS_BATCH = 4096  # the least batch of proposals of a crowd of atoms
FILL_LIMIT_ATOMS = 0.55  # molecules pack far past their bounding shapes' jam: the placer says where it stops
PIECE_MIN_A = 100.0  # obstacle capsules are split into pieces no longer than max(radius, this)


# ---------------------------------------------------------------------------------------------- obstacles
@dataclass
class Obstacles:
    """Fixed shapes the crowd keeps clear of: capsules (ends (N, 3), radii (N,), Å) and spherical shells (centres
    (S, 3), inner and outer radii (S,), Å; inner ≤ 0 is a solid ball)."""

    seg_a: np.ndarray
    seg_b: np.ndarray
    seg_r: np.ndarray
    shell_c: np.ndarray
    shell_in: np.ndarray
    shell_out: np.ndarray
    seg_caps: np.ndarray | None = None  # per capsule, end-cap spheres its volume counts: 0 where it continues a tube

    @staticmethod
    def empty() -> Obstacles:
        z3, z = np.zeros((0, 3)), np.zeros(0)
        return Obstacles(z3, z3, z, z3, z, z)

    @staticmethod
    def capsules(a, b, r) -> Obstacles:
        a, b = np.asarray(a, np.float64).reshape(-1, 3), np.asarray(b, np.float64).reshape(-1, 3)
        r = np.broadcast_to(np.asarray(r, np.float64), (len(a),)).copy()
        e = Obstacles.empty()
        return Obstacles(a, b, r, e.shell_c, e.shell_in, e.shell_out)

    @staticmethod
    def shells(centres, inner, outer) -> Obstacles:
        c = np.asarray(centres, np.float64).reshape(-1, 3)
        e = Obstacles.empty()
        return Obstacles(e.seg_a, e.seg_b, e.seg_r, c, np.broadcast_to(np.asarray(inner, np.float64), (len(c),)).copy(),
                         np.broadcast_to(np.asarray(outer, np.float64), (len(c),)).copy())

    @staticmethod
    def from_placement(bounds: list[Bounds], placement: Placement) -> Obstacles:
        """Every copy's bounding capsule."""
        return Obstacles.capsules(*_segments(bounds, placement))

    @staticmethod
    def from_vesicles(vesicles, lumen: bool = False) -> Obstacles:
        """Each vesicle's bilayer as a shell (``lumen``: the crowd may fill its inside) or a solid ball."""
        if vesicles is None or not len(vesicles):
            return Obstacles.empty()
        half = vesicles.bilayer.half_extent_a
        inner = np.maximum(vesicles.radii_a - half, 0.0) if lumen else np.zeros(len(vesicles))
        return Obstacles.shells(vesicles.centres_a, inner, vesicles.radii_a + half)

    @staticmethod
    def from_polylines(points_a: list[np.ndarray], radius_a) -> Obstacles:
        """Filaments (or any tube): each (K, 3) centreline as capsules of the tube's radius (one per filament or a
        scalar) joining points about half a radius apart along it (a filament's node per subunit would make thousands
        of tiny capsules), each grown by the chord's distance from the points it skips; the tube's volume counts its
        end caps once."""
        radii = np.broadcast_to(np.asarray(radius_a, np.float64), (len(points_a),))
        parts = []
        for p, r in zip(points_a, radii, strict=True):
            p = np.asarray(p, np.float64).reshape(-1, 3)
            if len(p) < 2:
                continue
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
            keep = np.unique(np.concatenate([np.searchsorted(arc, np.arange(0.0, arc[-1], max(r / 2, 1.0))),
                                             [len(p) - 1]]))
            # each chord's radius grows by the farthest skipped point's distance from it: the capsule (convex) then
            # holds the tube about every piece of the line it replaces
            seg = np.clip(np.searchsorted(keep, np.arange(len(p)), side="right") - 1, 0, len(keep) - 2)
            dev = segment_distances(p, p, p[keep[seg]], p[keep[seg + 1]])
            grow = np.zeros(len(keep) - 1)
            np.maximum.at(grow, seg, dev)
            tube = Obstacles.capsules(p[keep[:-1]], p[keep[1:]], r + grow)
            tube.seg_caps = (np.arange(len(keep) - 1) == 0).astype(np.float64)
            parts.append(tube)
        return Obstacles.concatenate(parts)

    @staticmethod
    def concatenate(parts: list[Obstacles]) -> Obstacles:
        if not parts:
            return Obstacles.empty()
        out = Obstacles(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                          ("seg_a", "seg_b", "seg_r", "shell_c", "shell_in", "shell_out")))
        out.seg_caps = np.concatenate([p.caps() for p in parts])
        return out

    def caps(self) -> np.ndarray:
        return self.seg_caps if self.seg_caps is not None else np.ones(len(self.seg_r))

    def volume_a3(self) -> float:
        """The obstacles' volume (Å³; overlaps between obstacles counted twice)."""
        length = np.linalg.norm(self.seg_b - self.seg_a, axis=1)
        caps = float((math.pi * self.seg_r**2 * length).sum() + (4 / 3 * math.pi * self.seg_r**3 * self.caps()).sum())
        return caps + float((4 / 3 * math.pi * (self.shell_out**3 - np.maximum(self.shell_in, 0) ** 3)).sum())

    def pieces(self, max_len_a: float | None = None) -> Obstacles:
        """The capsules split into pieces no longer than max(radius, PIECE_MIN_A) (or ``max_len_a``), for hashing."""
        length = np.linalg.norm(self.seg_b - self.seg_a, axis=1)
        cap = np.maximum(self.seg_r, PIECE_MIN_A) if max_len_a is None else np.full(len(length), max_len_a)
        n = np.maximum(np.ceil(length / cap).astype(np.int64), 1)
        k = np.repeat(np.arange(len(n)), n)
        j = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        d = self.seg_b - self.seg_a
        a = self.seg_a[k] + (j / n[k])[:, None] * d[k]
        b = self.seg_a[k] + ((j + 1) / n[k])[:, None] * d[k]
        return Obstacles(a, b, self.seg_r[k], self.shell_c, self.shell_in, self.shell_out)


# ---------------------------------------------------------------------------------------------- cell hash
class _CellHash:
    """Segments binned by their midpoints in cubes of side ``cell_a`` (flat cell ids sorted, CSR starts), queried
    for every (query, item) pair in the 27 cells around each query's midpoint, all at once."""

    def __init__(self, lo_a: np.ndarray, hi_a: np.ndarray, cell_a: float):
        self.lo, self.cell = np.asarray(lo_a, np.float64), float(cell_a)
        self.shape = np.maximum(np.ceil((np.asarray(hi_a) - self.lo) / self.cell).astype(np.int64), 1)
        self.n_cells = int(np.prod(self.shape))
        self.order = np.zeros(0, np.int64)
        self.starts = np.zeros(self.n_cells + 1, np.int64)

    def _cell3(self, mid: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((mid - self.lo) / self.cell).astype(np.int64), 0, self.shape - 1)

    def _flat(self, c3: np.ndarray) -> np.ndarray:
        return (c3[..., 0] * self.shape[1] + c3[..., 1]) * self.shape[2] + c3[..., 2]

    def build(self, mid: np.ndarray) -> _CellHash:
        ids = self._flat(self._cell3(mid))
        self.order = np.argsort(ids, kind="stable")
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=self.n_cells))])
        return self

    _OFFSETS = np.array([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)])

    def pairs(self, mid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, item index) for every item in the 27 cells around each query midpoint."""
        if len(self.order) == 0 or len(mid) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        c3 = self._cell3(mid)[:, None, :] + self._OFFSETS[None]  # (Q, 27, 3)
        ok = ((c3 >= 0) & (c3 < self.shape)).all(-1)
        flat = np.where(ok, self._flat(np.clip(c3, 0, self.shape - 1)), 0)
        start = self.starts[flat]
        count = np.where(ok, self.starts[flat + 1] - start, 0).ravel()
        total = int(count.sum())
        q = np.repeat(np.repeat(np.arange(len(mid)), 27), count)
        within = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        return q, self.order[np.repeat(start.ravel(), count) + within]


# ---------------------------------------------------------------------------------------------- tests
def _hits_shells(a, b, r, obst: Obstacles, gap_a: float) -> np.ndarray:
    """(Q,) whether each capsule [a, b] of radius r crosses a shell (closer than the gap to its material)."""
    hit = np.zeros(len(a), bool)
    s = len(obst.shell_c)
    if s == 0 or len(a) == 0:
        return hit
    step = max(1, 2_000_000 // s)
    for i in range(0, len(a), step):  # chunks bound the (Q, S) temporaries
        sl = slice(i, i + step)
        c = obst.shell_c[None]
        near = segment_distances(a[sl, None], b[sl, None], c, c)  # closest point of the segment to each centre
        far = np.maximum(np.linalg.norm(a[sl, None] - c, axis=-1), np.linalg.norm(b[sl, None] - c, axis=-1))
        rr = r[sl, None] + gap_a
        inside_hole = (far < obst.shell_in[None] - rr) & (obst.shell_in[None] > 0)
        hit[sl] = ((near < obst.shell_out[None] + rr) & ~inside_hole).any(1)
    return hit


def _hits_hashed(a, b, r, ha: np.ndarray, hb: np.ndarray, hr: np.ndarray, cells: _CellHash, gap_a: float,
                 skip_self: bool = False, owner: np.ndarray | None = None, points: bool = False) -> np.ndarray:
    """(Q,) whether each capsule touches a hashed capsule (``skip_self``: the hash holds the queries themselves;
    query j is hit only by an earlier one i, i < j, or with ``owner`` (per query, its copy) by a query of an earlier
    copy). ``points``: every segment is a point (a sphere), tested by the plain distance."""
    q, k = cells.pairs(0.5 * (a + b))
    if skip_self:
        keep = k < q if owner is None else owner[k] < owner[q]
        q, k = q[keep], k[keep]
    hit = np.zeros(len(a), bool)
    if len(q):
        if points:
            close = ((a[q] - ha[k]) ** 2).sum(1) < (r[q] + hr[k] + gap_a) ** 2
        else:
            close = segment_distances(a[q], b[q], ha[k], hb[k]) < r[q] + hr[k] + gap_a
        hit[q[close]] = True
    return hit


def _survivors(a, b, r, owner: np.ndarray, n_copies: int, tests) -> np.ndarray:
    """(n_copies,) which copies no test hits: each test(a, b, r) gets the items (capsules, or spheres as points) of
    the copies still standing (``owner``: each item's copy) and returns which of them are hit."""
    ok = np.ones(n_copies, bool)
    for test in tests:
        sel = ok[owner]
        if not sel.any():
            break
        hit = np.zeros(n_copies, bool)
        hit[owner[sel][test(a[sel], b[sel], r[sel])]] = True
        ok &= ~hit
    return ok


def _batch_survivors(a, b, r, owner: np.ndarray, m: int, tests, cells: _CellHash, gap_a: float,
                     points: bool) -> np.ndarray:
    """Indices of the batch's copies that no test hits and that touch no earlier survivor of the batch (``cells``:
    an empty hash to bin the survivors' items in)."""
    ok = _survivors(a, b, r, owner, m, tests)
    idx = np.flatnonzero(ok)
    if len(idx) > 1:  # earlier survivors of this batch win
        sel = ok[owner]
        sa, sb, sr, so = a[sel], b[sel], r[sel], owner[sel]
        cells.build(0.5 * (sa + sb))
        hit = np.zeros(m, bool)
        hit[so[_hits_hashed(sa, sb, sr, sa, sb, sr, cells, gap_a, skip_self=True, owner=so, points=points)]] = True
        idx = idx[~hit[idx]]
    return idx


# ---------------------------------------------------------------------------------------------- volumes
def capsule_volume_a3(bounds: Bounds, grow_a: float = 0.0) -> float:
    r = bounds.radius_a + grow_a
    return math.pi * r * r * 2 * bounds.half_length_a + 4 / 3 * math.pi * r**3


def molecular_volume_a3(ptype: ParticleType) -> float:
    """mass / 1.35 g/cm³ (Å³)."""
    return ptype.mass_da * A3_PER_DA


def ice_volume_a3(profile: IceProfile, field_a: tuple[float, float], n: int = 256) -> float:
    """∫ t(x, y) dx dy over the field (Å³): exact for a flat slab, a midpoint rule on n² points otherwise."""
    wx, wy = field_a
    if profile.is_flat and profile.kind == "flat":
        return wx * wy * profile.thickness_a
    x = (torch.arange(n, dtype=torch.float64) + 0.5) / n * wx - wx / 2
    y = (torch.arange(n, dtype=torch.float64) + 0.5) / n * wy - wy / 2
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return float(profile.thickness_at(xx, yy).mean()) * wx * wy


# ---------------------------------------------------------------------------------------------- placement
@dataclass
class CrowdTarget:
    """One type of the crowd: index into the scene's types, its name and the field naming it in errors."""

    type_index: int
    name: str
    field: str
    volume_fraction: float
    random_orientation: bool = True


def _target_counts(types, targets: list[CrowdTarget], v_free: float, basis: str, gap_a: float, covers=None,
                   voxels=None):
    """Per type: (capsule, molecular, gap-grown excluded shape, excluded shape) volumes (Å³) and the copies its
    fraction asks for; targets that cannot be packed are refused here, before placing. ``covers``: per type index,
    its spheres (specimen.excluded.SphereCover) where its excluded shape is spheres (else its capsule); ``voxels``:
    per type index, its molecule voxels (specimen.occupancy.VoxelShape, already grown by half the gap)."""
    vol = {}
    for tg in targets:
        b = types[tg.type_index].bounds
        cap, mol = capsule_volume_a3(b), molecular_volume_a3(types[tg.type_index])
        if basis == "molecular" and mol <= 0:
            raise ConfigError(f"{tg.field}: {tg.name} has no mass for basis molecular (a map type without "
                              "map.mass_kda); give its mass or use sample.crowding.basis capsule")
        cv, vs = (covers or {}).get(tg.type_index), (voxels or {}).get(tg.type_index)
        if vs is not None:
            vol[tg.type_index] = (cap, mol, vs.volume_a3, vs.volume_a3)
        elif cv is not None:
            vol[tg.type_index] = (cap, mol, cv.grown_volume_a3(gap_a / 2), cv.volume_a3)
        else:
            vol[tg.type_index] = (cap, mol, capsule_volume_a3(b, gap_a / 2), cap)
    counts = {tg.type_index: int(round(tg.volume_fraction * v_free / vol[tg.type_index][0 if basis == "capsule"
                                                                                       else 1])) for tg in targets}
    total = sum(counts.values())
    if total > MAX_CROWDED_COPIES:
        tg = max(targets, key=lambda g: counts[g.type_index])
        raise ConfigError(f"{tg.field}: the crowd would have {total:,} copies (at most {MAX_CROWDED_COPIES:,}; "
                          f"{counts[tg.type_index]:,} of {tg.name}); lower the fractions or the field")
    fill = sum(counts[g.type_index] * vol[g.type_index][2] for g in targets) / v_free
    if fill > (FILL_LIMIT_ATOMS if voxels else FILL_LIMIT):
        tg = max(targets, key=lambda g: counts[g.type_index] * vol[g.type_index][2])
        if voxels:
            raise ConfigError(f"{tg.field}: the crowd's molecule voxels (with half of sample.crowding.min_gap_a) "
                              f"would fill {100 * fill:.0f} % of the free volume (at most "
                              f"{100 * FILL_LIMIT_ATOMS:.0f} % is tried); lower the volume fractions")
        raise ConfigError(f"{tg.field}: the crowd's bounding shapes (with half of sample.crowding.min_gap_a) would "
                          f"fill {100 * fill:.0f} % of the free volume and random packing jams near 35–38 %; lower "
                          "the volume fractions" + (" (basis molecular counts only the molecules: their capsules "
                                                    "are larger)" if basis == "molecular" else ""))
    return vol, counts


def crowded_placement(types: list[ParticleType], targets: list[CrowdTarget], *, field_a: tuple[float, float],
                      profile: IceProfile, rng: np.random.Generator, obstacles: Obstacles | None = None,
                      basis: str = "capsule", gap_a: float = 2.0, covers: dict | None = None,
                      sheets=None, voxels: dict | None = None) -> tuple[Placement, dict]:
    """Copies of each target type filling its ``volume_fraction`` of the free volume (module docstring), clear of
    ``obstacles`` and of each other, inside the field and the ice; (placement, report). ``covers`` (per target type
    index, a :class:`~difftem.specimen.excluded.SphereCover`): those types' copies exclude others by their spheres
    instead of their bounding capsules (the capsules still keep them inside the field and the ice). ``voxels`` (per
    target type index, a :class:`~difftem.specimen.occupancy.VoxelShape`, one voxel size for all): the crowd's copies
    exclude each other voxel by voxel (specimen/occupancy.py); obstacles still by capsules. ``sheets``
    (specimen.sheets.Sheets): membrane sheets the copies keep clear of, their bilayers' volume not free."""
    t0 = time.perf_counter()
    obstacles = obstacles or Obstacles.empty()
    wx, wy = field_a
    t_lo, t_hi = profile.bounds_a(0.5 * max(wx, wy))
    if t_hi <= 0:
        raise ConfigError(f"{targets[0].field}: a crowd needs ice to fill; set sample.ice_thickness_nm")
    v_ice = ice_volume_a3(profile, field_a)
    v_free = v_ice - obstacles.volume_a3() - sheets_volume_a3(sheets, field_a)
    if v_free <= 0.05 * v_ice:
        raise ConfigError(f"{targets[0].field}: the obstacles (vesicles, filaments, other copies) fill "
                          f"{100 * (1 - v_free / v_ice):.0f} % of the ice; fewer or smaller obstacles, or thicker ice")
    vol, counts = _target_counts(types, targets, v_free, basis, gap_a, covers, voxels)
    shapes = covers is not None or voxels is not None  # the report says which shape each type excluded by
    covers = covers or {}
    occ = _occupancy(voxels, (wx, wy, t_hi), gap_a)
    # a capsule touches another only within (reach + reach' + gap) of its midpoint: one hash per pair of groups
    pieces = obstacles.pieces()
    obst_reach = float((0.5 * np.linalg.norm(pieces.seg_b - pieces.seg_a, axis=1) + pieces.seg_r).max()) \
        if len(pieces.seg_r) else 0.0
    obst_mid = 0.5 * (pieces.seg_a + pieces.seg_b)
    lo = np.array([-wx / 2, -wy / 2, -t_hi / 2]) - 1.0 - max([c.radii_a.max() for c in covers.values()], default=0.0)
    hi = -lo
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, bool]] = []  # item ends, radii, reach, points
    obst_tests: dict[int, list] = {}  # per type: its tests against the obstacles
    crowd = _Crowd()
    rows = []
    filled = 0.0  # the placed crowd's excluded volume (Å³), for the jam message
    order = sorted(targets, key=lambda g: -types[g.type_index].bounds.extent_a)
    for tg in order:
        t, bd, need = tg.type_index, types[tg.type_index].bounds, counts[tg.type_index]
        cover = covers.get(t)
        spheres = cover is not None
        shape_v = (voxels or {}).get(t)
        # the items tested for overlap: the bounding capsule, or the cover's spheres (points with radii)
        reach = float(cover.radii_a.max()) if spheres else bd.half_length_a + bd.radius_a
        n_items = len(cover) if spheres else 1
        fixed = [(pieces.seg_a, pieces.seg_b, pieces.seg_r,
                  _CellHash(lo, hi, max(obst_reach + reach + gap_a, 1.0)).build(obst_mid), False)]
        fixed += [(ga, gb, gr, _CellHash(lo, hi, max(g_reach + reach + gap_a, 1.0)).build(0.5 * (ga + gb)),
                   spheres and g_points) for ga, gb, gr, g_reach, g_points in groups]
        tests = [partial(_hits_shells, obst=obstacles, gap_a=gap_a)]
        if sheets is not None:
            tests.append(partial(sheet_hits, sheets=sheets, gap_a=gap_a))
        tests += [partial(_hits_hashed, ha=ha, hb=hb, hr=hr, cells=cells, gap_a=gap_a, points=pts)
                  for ha, hb, hr, cells, pts in fixed]
        obst_tests[t] = tests
        own = _CellHash(lo, hi, max(2 * reach + gap_a, 1.0))
        own_a, own_b, own_r = np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
        n_got, proposed, acceptance, window, shaken = 0, 0, 0.5, [0, 0], 0  # window: proposals, accepted
        # a batch fills at most BATCH_VOLUME of the free volume (a batch's conflicts stay rare); a crowd of atoms
        # resolves them voxel by voxel, so its batches may be larger (the tail of a dense crowd refuses most)
        cap = max(64 if shape_v is None else ATOMS_BATCH, int(BATCH_VOLUME * v_free / vol[t][2]))
        # a voxel test refuses most proposals after a few dozen lookups: it may try many more before calling a jam
        jam_window, min_acceptance = _JAM_RULE[shape_v is not None]
        while n_got < need:
            batch = int(min(cap, max(64, 1.2 * (need - n_got) / max(acceptance, 1e-3))))
            pos, rot, a, b = _proposals(bd, batch, tg.random_orientation, field_a, profile, t_hi, rng)
            proposed += batch
            m = len(pos)
            if spheres:
                a = cover.poses(rot, pos).reshape(-1, 3)
                b = a
                r = np.tile(cover.radii_a, m)
            else:
                r = np.full(m, bd.radius_a)
            owner = np.repeat(np.arange(m), n_items)
            if shape_v is not None:  # clear of the obstacles by its capsule, of the crowd voxel by voxel
                cand = np.flatnonzero(_survivors(a, b, r, owner, m, tests))
                idx = cand[occ.claim(shape_v, rot[cand], pos[cand], limit=need - n_got)]
            else:
                own_test = partial(_hits_hashed, ha=own_a, hb=own_b, hr=own_r, cells=own, gap_a=gap_a,
                                   points=spheres)
                idx = _batch_survivors(a, b, r, owner, m, [*tests, own_test], _CellHash(lo, hi, own.cell), gap_a,
                                       spheres)[:need - n_got]
            acceptance = 0.5 * acceptance + 0.5 * len(idx) / batch
            window = [window[0] + batch, window[1] + len(idx)]
            if window[0] >= jam_window:  # judged over many proposals: small batches may come back empty by chance
                if window[1] < min_acceptance * window[0]:  # stalled: a crowd of atoms is shaken, else it jammed
                    if shape_v is None or shaken == MAX_SHAKES:
                        _jammed(tg, n_got, need, vol[t][0 if basis == "capsule" else 1], v_free,
                                (filled + n_got * vol[t][3]) / v_free, shaken if shape_v is not None else None)
                    crowd = _shake(occ, voxels, crowd, types, obst_tests, field_a, profile, rng)
                    shaken += 1
                window = [0, 0]
            n_got += len(idx)
            crowd.add(t, pos[idx], rot[idx])  # (shaking moves the copies of a crowd of atoms)
            if shape_v is None:
                keep = np.isin(owner, idx)
                own_a, own_b = np.concatenate([own_a, a[keep]]), np.concatenate([own_b, b[keep]])
                own_r = np.concatenate([own_r, r[keep]])
                own.build(0.5 * (own_a + own_b))
        groups.append((own_a, own_b, own_r, reach, spheres))  # (empty for a crowd of atoms: the grid holds it)
        filled += n_got * vol[t][3]
        rows.append(_row(tg, n_got, vol[t], v_free, proposed, shapes, {"voxels": len(shape_v), "shakes": shaken}
                         if shape_v is not None else {"spheres": n_items if spheres else 0}))
    report = _report(rows, basis, "atoms" if voxels else "spheres" if shapes else "capsule", v_ice, v_free, t0)
    report.update({"voxel_a": occ.voxel, "grid_voxels": int(occ.grid.size), "shake_sweeps": crowd.sweeps}
                  if occ is not None else {})
    return crowd.placement([tg.type_index for tg in order]), report


def _occupancy(voxels: dict | None, box_a: tuple[float, float, float], gap_a: float) -> Occupancy | None:
    """A crowd of atoms' grid over the field and the ice (``box_a``: widths and the thickest ice; the voxels reach
    past the capsules by the atoms' reach and the gap); None for other crowds."""
    if not voxels:
        return None
    vox = next(iter(voxels.values())).voxel_a
    half = 0.5 * np.asarray(box_a, np.float64)
    margin = 2 * vox + ATOM_REACH_A + gap_a
    return Occupancy(-half - margin, half + margin, vox)


_JAM_RULE = {False: (JAM_WINDOW, MIN_ACCEPTANCE), True: (JAM_WINDOW_ATOMS, MIN_ACCEPTANCE_ATOMS)}  # by atoms?


def _row(tg: CrowdTarget, n_got: int, vol: tuple, v_free: float, proposed: int, shapes: bool, shape_row: dict) -> dict:
    """A type's line of the crowd's report (``vol``: capsule, molecular, grown and excluded shape volumes, Å³);
    with ``shapes``, the excluded shape's volume, fraction and ``shape_row`` (voxels and shakes, or spheres: 0 where
    it kept its capsule)."""
    row = {"type": tg.name, "copies": n_got, "target_fraction": tg.volume_fraction,
           "capsule_fraction": n_got * vol[0] / v_free, "molecular_fraction": n_got * vol[1] / v_free,
           "capsule_volume_nm3": vol[0] / 1e3, "molecular_volume_nm3": vol[1] / 1e3, "proposals": proposed}
    if shapes:
        row.update({"shape_volume_nm3": vol[3] / 1e3, "shape_fraction": n_got * vol[3] / v_free, **shape_row})
    return row


def _report(rows: list[dict], basis: str, shape: str, v_ice: float, v_free: float, t0: float) -> dict:
    report = {"basis": basis, "shape": shape, "ice_volume_um3": v_ice * 1e-12, "free_volume_um3": v_free * 1e-12,
              "types": rows, "copies": int(sum(r["copies"] for r in rows)),
              "capsule_fraction": float(sum(r["capsule_fraction"] for r in rows)),
              "molecular_fraction": float(sum(r["molecular_fraction"] for r in rows)),
              "seconds": time.perf_counter() - t0}
    if rows and "shape_fraction" in rows[0]:
        report["shape_fraction"] = float(sum(r["shape_fraction"] for r in rows))
    return report


@dataclass
class _Crowd:
    """The crowd's copies so far: type index, centre and rotation of each; for a crowd of atoms, the shaking's step
    per type (Å) and the sweeps done."""

    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pos: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    rot: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 3)))
    step_a: dict = field(default_factory=dict)
    sweeps: int = 0
    _new: list = field(default_factory=list)  # batches added since the arrays were last joined

    def add(self, t: int, pos: np.ndarray, rot: np.ndarray) -> None:
        self._new.append((np.full(len(pos), t, np.int64), pos, rot))

    def join(self) -> _Crowd:
        if self._new:
            self.kind, self.pos, self.rot = (np.concatenate([old, *(n[i] for n in self._new)])
                                             for i, old in enumerate((self.kind, self.pos, self.rot)))
            self._new = []
        return self

    def placement(self, order: list[int]) -> Placement:
        """The copies, type by type in ``order``."""
        self.join()
        idx = np.concatenate([np.flatnonzero(self.kind == t) for t in order] or [np.zeros(0, np.int64)])
        return Placement(self.kind[idx], self.pos[idx], self.rot[idx])


def _shake(occ, voxels: dict, crowd: _Crowd, types, obst_tests: dict, field_a, profile: IceProfile,
           rng: np.random.Generator) -> _Crowd:
    """SHAKE_SWEEPS sweeps of small moves of every copy of the crowd (specimen.occupancy.relax), each kept inside
    the field and the ice and clear of the obstacles; each type's step (first a tenth of its radius) shrinks when
    fewer than a quarter of the moves are taken and grows when more than half are."""
    def allowed(k, p, r):
        bd = types[k].bounds
        ok = _inside(bd, p, r, field_a, profile)
        a, b = _capsule_ends(bd, p, r)
        return ok & _survivors(a, b, np.full(len(p), bd.radius_a), np.arange(len(p)), len(p), obst_tests[k])

    crowd.join()
    for k in np.unique(crowd.kind):
        v = voxels[k]
        crowd.step_a.setdefault(int(k), max(0.1 * (3 * v.volume_a3 / (4 * math.pi)) ** (1 / 3), v.voxel_a))
    taken = relax(occ, voxels, crowd.kind, crowd.pos, crowd.rot, crowd.step_a, allowed, rng, sweeps=SHAKE_SWEEPS)
    scale = 0.6 if taken < 0.25 else 1.5 if taken > 0.5 else 1.0
    crowd.step_a = {k: max(s * scale, 0.5 * voxels[k].voxel_a) for k, s in crowd.step_a.items()}
    crowd.sweeps += SHAKE_SWEEPS
    return crowd


def _extent(bd: Bounds, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rotation: the capsule's centre and half axis about the copy's origin, and its per-axis half extent."""
    c = rot @ bd.centre_a
    ax = (rot @ bd.axis) * bd.half_length_a
    return c, ax, np.abs(c) + np.abs(ax) + bd.radius_a


def _thinnest_ice(profile: IceProfile, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M,) the ice's thickness (Å) under the thinner of two points (M, 3) (x, y used)."""
    if profile.is_flat and profile.kind == "flat":
        return np.full(len(a), profile.thickness_a)
    return torch.minimum(profile.thickness_at(torch.as_tensor(a[:, 0]), torch.as_tensor(a[:, 1])),
                         profile.thickness_at(torch.as_tensor(b[:, 0]), torch.as_tensor(b[:, 1]))).numpy()


def _capsule_ends(bd: Bounds, pos: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, ax, _ = _extent(bd, rot)
    return pos + c - ax, pos + c + ax


def _inside(bd: Bounds, pos: np.ndarray, rot: np.ndarray, field_a, profile: IceProfile) -> np.ndarray:
    """(M,) whether each copy's capsule lies in the field and in the ice under its two ends."""
    c, ax, reach = _extent(bd, rot)
    thick = _thinnest_ice(profile, pos + c - ax, pos + c + ax)
    wx, wy = field_a
    return ((np.abs(pos[:, 0]) <= wx / 2 - reach[:, 0]) & (np.abs(pos[:, 1]) <= wy / 2 - reach[:, 1])
            & (np.abs(pos[:, 2]) <= thick / 2 - reach[:, 2]))


def _jammed(tg: CrowdTarget, n_got: int, need: int, v_copy: float, v_free: float, filled: float,
            shaken: int | None = None) -> None:
    """Refuse a type whose batches stopped being accepted, saying what was reached (``filled``: the fraction of the
    free volume the crowd's excluded shapes fill; ``shaken``: how often a crowd excluded by atoms was shaken)."""
    how = (f"bounding shapes fill {100 * filled:.0f} % of the free volume; it jams near 35–38 %" if shaken is None
           else f"molecule voxels fill {100 * filled:.0f} % of the free volume, shaken {shaken} times")
    raise ConfigError(
        f"{tg.field}: reached {100 * n_got * v_copy / v_free:.1f} % of the {100 * tg.volume_fraction:g} % asked "
        f"({n_got:,} of {need:,} copies of {tg.name}) when random packing jammed ({how}); lower the volume "
        "fractions or sample.crowding.min_gap_a")


def _proposals(bd: Bounds, n: int, uniform: bool, field_a, profile: IceProfile, t_max_a: float,
               rng: np.random.Generator):
    """``n`` poses of a type whose capsules lie in the field and the ice (fewer where the ice is thin): centres,
    rotations and the capsules' scene-frame ends."""
    rot = random_rotations(n, rng) if uniform else np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    c, ax, reach = _extent(bd, rot)
    wx, wy = field_a
    u = rng.random((n, 4))
    x = (-wx / 2 + reach[:, 0]) + u[:, 0] * (wx - 2 * reach[:, 0])
    y = (-wy / 2 + reach[:, 1]) + u[:, 1] * (wy - 2 * reach[:, 1])
    # keep a point with probability t / t_max (uniform by volume)
    xy = np.stack([x, y, np.zeros(n)], 1)
    thick = _thinnest_ice(profile, xy + c - ax, xy + c + ax)
    z = (-thick / 2 + reach[:, 2]) + u[:, 2] * (thick - 2 * reach[:, 2])
    keep = (wx > 2 * reach[:, 0]) & (wy > 2 * reach[:, 1]) & (thick > 2 * reach[:, 2]) & (u[:, 3] * t_max_a <= thick)
    pos = np.stack([x, y, z], 1)[keep]
    rot, c, ax = rot[keep], c[keep], ax[keep]
    return pos, rot, pos + c - ax, pos + c + ax


# ---------------------------------------------------------------------------------------------- from a config
def covering_bounds(ptype: ParticleType) -> Bounds:
    """The type's capsule made to hold every atom (``scene.covering_capsule``; ``scene.bounding_capsule`` already
    gives such capsules, this keeps types built by hand honest); a type of subunits a block of units at a time."""
    if ptype.n_atoms == 0:
        return ptype.bounds
    return covering_capsule(lambda: ptype.position_chunks(), ptype.bounds)


def crowd_scene(config, types: list[ParticleType], placement: Placement, vesicles=None,
                extra_obstacles: Obstacles | None = None, sheets=None) -> tuple[Placement, dict | None]:
    """The copies of the ``volume_fraction`` entries of ``config.sample.particles`` (empty placement and None
    without any), clear of ``placement``'s copies, the vesicles and ``extra_obstacles`` (the filaments' tubes:
    with them, the filaments' own subunit copies are left to the tubes)."""
    entries = [(t, p) for t, p in enumerate(config.sample.particles) if getattr(p, "volume_fraction", None)]
    if not entries:
        return Placement.empty(), None
    cfg = config.sample.crowding
    basis, gap, lumen, offset = ((cfg.basis, cfg.gap_a, cfg.lumen, cfg.seed_offset) if cfg is not None
                                 else ("capsule", 2.0, False, 0))
    spheres = cfg is not None and cfg.shape == "spheres"
    det = config.detector
    field_a = (det.shape_px[1] * det.pixel_size_a, det.shape_px[0] * det.pixel_size_a)
    extra = extra_obstacles or Obstacles.empty()
    if len(extra.seg_r):  # filaments' subunits are inside their tubes: the tubes stand for them (volume counted once)
        tubes = [t for t, p in enumerate(config.sample.particles) if getattr(p, "filament", None) is not None]
        keep = ~np.isin(placement.type_index, tubes)
        placement = Placement(placement.type_index[keep], placement.positions_a[keep], placement.rotations[keep])
    obstacles = Obstacles.concatenate([Obstacles.from_placement([t.bounds for t in types], placement),
                                       Obstacles.from_vesicles(vesicles, lumen), extra])
    targets = [CrowdTarget(t, types[t].name, f"sample.particles.{t}.volume_fraction", p.volume_fraction)
               for t, p in entries]
    crowd = {t for t, _ in entries}  # their capsules made to hold every atom (volumes and tests use these)
    types = [ty.with_bounds(covering_bounds(ty)) if i in crowd else ty for i, ty in enumerate(types)]
    covers = None
    if spheres:  # each type's spheres, where their union (grown by half the gap) is smaller than its capsule
        covers = {t: sphere_cover(types[t], cfg.sphere_radius_a, cfg.max_spheres) for t in crowd}
        covers = {t: c for t, c in covers.items()
                  if c.grown_volume_a3(gap / 2) < capsule_volume_a3(types[t].bounds, gap / 2)}
    profile = IceProfile.from_config(config.sample)
    voxels = None
    if cfg is not None and cfg.shape == "atoms":  # every crowd type's molecule voxels, one voxel size for all
        t_hi = profile.bounds_a(0.5 * max(field_a))[1]
        smallest = min(molecular_volume_a3(types[t]) or capsule_volume_a3(types[t].bounds) for t in crowd)
        vox = grid_voxel_a(smallest, field_a[0] * field_a[1] * max(t_hi, 1.0))
        voxels = {t: voxel_shape(types[t], vox, gap / 2, seed=t) for t in crowd}
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xC40D, offset]))
    return crowded_placement(types, targets, field_a=field_a, profile=profile, rng=rng,
                             obstacles=obstacles, basis=basis, gap_a=gap, covers=covers, sheets=sheets,
                             voxels=voxels)
