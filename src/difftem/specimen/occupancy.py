"""Crowds excluded atom by atom (``sample.crowding.shape: atoms``): a scene-wide grid of occupied voxels, so that a
crowd packs its molecules rather than their bounding shapes and reaches 25–30 % of the ice by molecular volume.

**A type's voxels** (:func:`voxel_shape`): the type-frame grid points (spacing ``voxel_a``) within
:data:`ATOM_REACH_A` + half the crowd's gap of an atom centre (a density map's molecule voxels stand for atoms, their
reach grown by half a map voxel's diagonal), with the enclosed cavities filled (channels narrower than a probe of
:data:`PROBE_A` closed): a small protein must not be placed inside a shell such as apoferritin's. The atoms are
splatted on a grid twice as fine and its molecule nodes read back at the even ones. The points are kept in a seeded
random order, so that any prefix is an even subsample. With the default gap (0) they hold about 0.8 of the
molecular volume (mass at 1.35 g/cm³; the rest lies between the atoms' balls).

**The scene's grid** (:class:`Occupancy`): one byte per voxel over the field and the ice (at most
:data:`MAX_VOXELS`). A copy occupies the scene voxels its rotated, shifted points fall in; a proposal is refused
when any of its points falls in an occupied voxel. The test runs in stages: the first :data:`STAGES` points of every
proposal, then the next ones for the proposals still standing, then all, so that the many proposals a dense crowd
refuses cost a few dozen lookups each. Proposals of one batch that claim a common voxel keep the earliest. Two
copies therefore share no voxel. The exclusion is exact only to the grid's resolution: where two copies graze, a
few of their atoms may come closer than a van der Waals contact (in tests/test_occupancy.py's 20 % crowd at 2.1 Å
voxels, 0.017 % of the atoms have another copy's atom within 2 Å, 0.14 % within 3 Å).

**Shaking** (:func:`relax`): random sequential addition jams (no proposal fits) well below a fluid's density; the
placer then shakes the crowd, moving copies by small random steps that keep every voxel single, which opens room for
more (the moves of a hard-body fluid).

**The voxel** (:func:`grid_voxel_a`) is the coarsest of: :data:`VOXEL_MIN_A`; fine enough that the smallest type
of the crowd has :data:`MIN_TYPE_VOXELS` voxels; coarse enough that the scene's grid fits in :data:`MAX_VOXELS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.rotations import matrix_from_rotation_vector
from .scene import ParticleType

ATOM_REACH_A = 1.8  # a voxel is the molecule's when its centre lies within this of an atom centre (a carbon's
# van der Waals radius: the voxels then hold about the molecule's volume at 1.35 g/cm³)
PROBE_A = 3.0  # channels narrower than a probe of this radius do not open a cavity to the crowd (apoferritin's)
VOXEL_MIN_A = 2.0
MIN_TYPE_VOXELS = 1000  # the smallest type of the crowd is at least about this many voxels
MAX_VOXELS = 2**30  # the scene's grid, one byte a voxel (1 GiB)
SHAKE_MAX_POINTS = 20_000  # types of more voxels are not shaken
STAGES = (48, 384)  # points tested before all of them (most refused proposals fail within the first few)
CHUNK_POINTS = 2_000_000  # proposal points transformed at once (bounds the temporaries: ~50 MB)
ATOM_CHUNK = 20_000


@dataclass(frozen=True)
class VoxelShape:
    """A type's molecule voxels: centres (P, 3) Å in the type frame, in a seeded random order; ``voxel_a`` their
    spacing."""

    points_a: np.ndarray
    voxel_a: float

    def __len__(self) -> int:
        return len(self.points_a)

    @property
    def volume_a3(self) -> float:
        return len(self.points_a) * self.voxel_a**3


def _type_points(ptype: ParticleType) -> tuple[list[np.ndarray], float]:
    """The type's atom centres in chunks (or its density map's molecule voxel centres), and the reach they add to
    :data:`ATOM_REACH_A` (half a map voxel's diagonal; 0 for atoms)."""
    if ptype.density is not None:
        d = ptype.density
        return [d.mask_points_a(max_points=5_000_000)], 0.5 * float(np.linalg.norm(d.voxel_a))
    return [np.asarray(c, np.float64) for c in ptype.position_chunks()], 0.0


def voxel_shape(ptype: ParticleType, voxel_a: float, grow_a: float = 0.0, seed: int = 0) -> VoxelShape:
    """The type's molecule voxels at spacing ``voxel_a`` (module docstring), each atom's reach grown by ``grow_a``."""
    chunks, extra = _type_points(ptype)
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return VoxelShape(np.zeros((0, 3)), voxel_a)
    reach = ATOM_REACH_A + extra + grow_a
    fine = voxel_a / 2
    lo = np.min([c.min(0) for c in chunks], 0) - reach - 2 * voxel_a
    hi = np.max([c.max(0) for c in chunks], 0) + reach + 2 * voxel_a
    lo = np.floor(lo / voxel_a) * voxel_a  # even fine nodes fall on the type's coarse grid
    shape = tuple(int(n) for n in np.ceil((hi - lo) / fine).astype(np.int64) + 1)
    # every fine node within the reach of an atom: splat each atom's ball of node offsets (nearest node ± offsets;
    # a node is taken when it lies within the reach of the atom itself, not of its nearest node)
    n = int(math.ceil(reach / fine)) + 1
    off = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    occ = np.zeros(shape, bool)
    dims = np.array(shape)
    for c in chunks:
        for i in range(0, len(c), ATOM_CHUNK):
            p = c[i:i + ATOM_CHUNK]
            base = np.rint((p - lo) / fine).astype(np.int64)
            idx = base[:, None, :] + off[None]  # (A, O, 3)
            d2 = ((lo + idx * fine - p[:, None, :]) ** 2).sum(-1)
            idx = idx[d2 <= reach * reach]
            idx = idx[((idx >= 0) & (idx < dims)).all(1)]
            occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    occ |= enclosed_cavities(occ, fine)
    coarse = np.argwhere(occ[::2, ::2, ::2])
    pts = lo + coarse * voxel_a
    rng = np.random.default_rng(seed)
    return VoxelShape(pts[rng.permutation(len(pts))], voxel_a)


def enclosed_cavities(mask: np.ndarray, voxel_a: float, probe_a: float = PROBE_A) -> np.ndarray:
    """The voxels of the cavities that ``mask`` encloses once its channels narrower than a probe of radius
    ``probe_a`` are closed: the holes of the mask grown by the probe, grown back by the probe (so the cavity reaches
    the mask's inner surface again)."""
    from scipy import ndimage  # only crowds of atoms need it: kept off every run's start-up

    grown = ndimage.distance_transform_edt(~mask, sampling=voxel_a) <= probe_a
    holes = ndimage.binary_fill_holes(grown) & ~grown
    if not holes.any():
        return holes
    return (ndimage.distance_transform_edt(~holes, sampling=voxel_a) <= probe_a) & ~mask


def grid_voxel_a(min_type_volume_a3: float, box_volume_a3: float) -> float:
    """The scene grid's voxel (Å): the coarsest of VOXEL_MIN_A, the smallest type's volume / MIN_TYPE_VOXELS and
    the box's volume / MAX_VOXELS (cube roots)."""
    return max(VOXEL_MIN_A, (max(min_type_volume_a3, 0.0) / MIN_TYPE_VOXELS) ** (1 / 3),
               (box_volume_a3 / MAX_VOXELS) ** (1 / 3))


class Occupancy:
    """One byte per voxel of the box [lo_a, hi_a] (Å): which voxels copies already occupy."""

    def __init__(self, lo_a: np.ndarray, hi_a: np.ndarray, voxel_a: float):
        self.lo = np.asarray(lo_a, np.float64)
        self.voxel = float(voxel_a)
        self.shape = np.maximum(np.ceil((np.asarray(hi_a, np.float64) - self.lo) / self.voxel).astype(np.int64), 1)
        if int(np.prod(self.shape)) > 2 * MAX_VOXELS:
            raise ValueError(f"occupancy grid of {self.shape.tolist()} voxels is above the limit")
        self.grid = np.zeros(int(np.prod(self.shape)), bool)

    def index(self, shape: VoxelShape, rot: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(M, P) flat indices of the voxels of M copies of ``shape``."""
        return np.concatenate([self._index(rot[sl], pos[sl], shape.points_a)
                               for sl in self._chunks(len(pos), len(shape))] or [np.zeros((0, len(shape)), np.int64)])

    def _index(self, rot: np.ndarray, pos: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """(M, P) flat voxel indices of the points ``pts`` (P, 3) of M copies (rotations (M, 3, 3), centres (M, 3));
        points outside the box fall in its border voxels."""
        x = np.matmul(rot.astype(np.float32), (pts.T / self.voxel).astype(np.float32))  # (M, 3, P) in voxels
        x += ((pos - self.lo) / self.voxel).astype(np.float32)[:, :, None]
        q = np.floor(x).astype(np.int64)
        for a in range(3):
            np.clip(q[:, a], 0, self.shape[a] - 1, out=q[:, a])
        return (q[:, 0] * self.shape[1] + q[:, 1]) * self.shape[2] + q[:, 2]

    def _chunks(self, m: int, p: int):
        step = max(1, CHUNK_POINTS // max(p, 1))
        return [slice(i, min(i + step, m)) for i in range(0, m, step)]

    def clear(self, shape: VoxelShape, rot: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(M,) whether each copy's voxels are all free, tested in stages (module docstring)."""
        alive = np.arange(len(pos))
        edges = [0, *[s for s in STAGES if s < len(shape)], len(shape)]
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            pts = shape.points_a[a:b]
            hit = np.zeros(len(alive), bool)
            for sl in self._chunks(len(alive), b - a):
                k = alive[sl]
                hit[sl] = self.grid[self._index(rot[k], pos[k], pts)].any(1)
            alive = alive[~hit]
            if not len(alive):
                break
        ok = np.zeros(len(pos), bool)
        ok[alive] = True
        return ok

    def claim(self, shape: VoxelShape, rot: np.ndarray, pos: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Indices of the copies (rotations (M, 3, 3), centres (M, 3)) that are clear of the occupied voxels and
        of the earlier copies of this call (the first ``limit`` of them); their voxels are marked occupied."""
        cand = np.flatnonzero(self.clear(shape, rot, pos))
        if not len(cand):
            return cand
        idx = self.index(shape, rot[cand], pos[cand]).ravel()
        owner = np.repeat(np.arange(len(cand)), len(shape))
        won = np.flatnonzero(~_later_clashes(idx, owner, len(cand)))[:limit]
        keep = np.zeros(len(cand), bool)
        keep[won] = True
        self.grid[idx[keep[owner]]] = True
        return cand[won]


def _later_clashes(idx: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """(n,) which owners (0 … n-1) claim a voxel (flat ``idx``, one owner each) that an earlier owner claims too."""
    lost = np.zeros(n, bool)
    if n > 1:
        order = np.lexsort((owner, idx))
        si, so = idx[order], owner[order]
        lost[so[1:][(si[1:] == si[:-1]) & (so[1:] != so[:-1])]] = True
    return lost


def _small_rotations(n: int, max_rad: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) rotations about uniform random axes by angles uniform in [-max_rad, max_rad]."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    ang = (rng.random(n) * 2 - 1) * max_rad
    return matrix_from_rotation_vector(axis * ang[:, None])


def relax(occ: Occupancy, shapes: dict, kind: np.ndarray, pos: np.ndarray, rot: np.ndarray, step_a: dict,
          allowed, rng: np.random.Generator, sweeps: int = 2, max_points: int = SHAKE_MAX_POINTS) -> float:
    """Shake a crowd (copies of ``shapes[kind[i]]`` at ``pos``/``rot``, all in ``occ``) by ``sweeps`` rounds of
    small random moves: a copy moves (by up to ``step_a[kind]`` Å, and as many radians per radius) when its new
    voxels are free and ``allowed(kind, pos, rot)`` (field, ice, obstacles) holds; else it stays. The copies of a type
    move in batches whose members are farther apart than twice their reach plus the step (one per cell of a
    checkerboard, cells of one colour at a time), so that movers never meet and each is tested against the grid
    alone. Types of more than ``max_points`` voxels stay put (few, and placed first). Random sequential addition
    leaves a crowd jammed well below a fluid's density; shaken, it opens room for more copies (a hard-body fluid's
    moves). Updates ``pos``/``rot`` and ``occ`` in place; returns the fraction of moves taken."""
    moved = tried = 0
    parity = np.array([(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    for _ in range(sweeps):
        for k in rng.permutation(np.unique(kind)):
            shape = shapes[k]
            if len(shape) > max_points or not len(shape):
                continue
            reach = float(np.linalg.norm(shape.points_a, axis=1).max()) + shape.voxel_a
            step = step_a[k]
            cell = 2 * (reach + step) + shape.voxel_a
            mine = np.flatnonzero(kind == k)
            c3 = np.floor((pos[mine] + rng.random(3) * cell) / cell).astype(np.int64)  # a fresh shift each sweep
            for par in rng.permutation(parity):
                on = mine[((c3 % 2) == par).all(1)]
                if not len(on):
                    continue
                # one copy per cell: a random order, the first of each cell
                cells = c3[np.searchsorted(mine, on)]
                order = rng.permutation(len(on))
                _, first = np.unique(cells[order], axis=0, return_index=True)
                m = on[order[first]]
                old = occ.index(shape, rot[m], pos[m])
                d = rng.normal(size=(len(m), 3))
                d *= (step * rng.random(len(m)) ** (1 / 3) / np.linalg.norm(d, axis=1))[:, None]
                p = pos[m] + d
                r = _small_rotations(len(m), np.full(len(m), step / max(reach, 1.0)), rng) @ rot[m]
                occ.grid[old.ravel()] = False
                new = occ.index(shape, r, p)
                ok = ~occ.grid[new].any(1) & allowed(k, p, r)
                occ.grid[new[ok].ravel()] = True
                occ.grid[old[~ok].ravel()] = True
                pos[m[ok]], rot[m[ok]] = p[ok], r[ok]
                moved += int(ok.sum())
                tried += len(m)
    return moved / max(tried, 1)
