"""Scenes: particle types (structure + symmetry), their placement in the ice, ground truth, tilts.

A particle *type* is an atomic model in its own frame (centred), built once: the deposited
atoms, a biological assembly from the file, or a helical rod generated from a subunit. A
*placement* is one rigid pose per copy, r_scene = R · r_type + t, with R = Rz(φ)·Ry(θ)·Rz(ψ)
(active, the convention of :func:`~difftem.structure.rotation_zyz_deg`). Random placement draws
uniform rotations (Haar measure on SO(3)) and non-overlapping positions inside the field and
the ice slab, testing bounding capsules (a sphere is a capsule of zero length), so rods pack
like rods.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..core.elements import atomic_mass_da
from ..core.errors import ConfigError, StructureError
from ..core.rotations import euler_zyz_from_matrix, random_rotations, relion_angles, rotation_about_axis
from .density import DensityMap
from .structure import MAX_ATOMS, Atoms, check_positions


# ---------------------------------------------------------------------------------------------- rotations
# ---------------------------------------------------------------------------------------------- types
def helical_operators(rise_a: float, twist_deg: float, n_subunits: int, axis=(0.0, 0.0, 1.0),
                      axis_point_a=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """The helix as operators x → R_i x + t_i (i·twist about the axis through ``axis_point_a``, i·rise along it),
    the same :func:`helical_assembly` applies; arguments are checked there."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    p0 = np.asarray(axis_point_a, dtype=np.float64)
    i = np.arange(n_subunits)
    rots = rotation_about_axis(u, np.radians(twist_deg) * i)
    return rots, p0 - rots @ p0 + (rise_a * i)[:, None] * u


def helical_assembly(subunit: Atoms, rise_a: float, twist_deg: float, n_subunits: int,
                     axis=(0.0, 0.0, 1.0), axis_point_a=(0.0, 0.0, 0.0)) -> Atoms:
    """Copies i = 0…n−1 of ``subunit`` turned by i·twist about the helix axis and moved i·rise along it."""
    if n_subunits < 1:
        raise ConfigError("helix.n_subunits: must be ≥ 1")
    if n_subunits * len(subunit) > MAX_ATOMS:
        raise ConfigError(f"helix.n_subunits: {n_subunits} subunits of {len(subunit)} atoms make "
                          f"{n_subunits * len(subunit)} atoms (at most {MAX_ATOMS}); use fewer subunits")
    if not (np.isfinite(rise_a) and np.isfinite(twist_deg) and np.isfinite(axis_point_a).all()):
        raise ConfigError("helix: rise_a, twist_deg and axis_point_a must be finite numbers")
    u = np.asarray(axis, dtype=np.float64)
    if not np.isfinite(u).all() or np.linalg.norm(u) == 0:
        raise ConfigError("helix.axis: must be a finite non-zero vector")
    u = u / np.linalg.norm(u)
    p0 = np.asarray(axis_point_a, dtype=np.float64)
    i = np.arange(n_subunits)
    rots = rotation_about_axis(u, np.radians(twist_deg) * i)  # (n, 3, 3)
    rel = subunit.positions_a - p0
    pos = np.einsum("nij,aj->nai", rots, rel) + p0 + (rise_a * i)[:, None, None] * u
    check_positions(pos.reshape(-1, 3), "helix", ConfigError, "check rise_a, axis_point_a and n_subunits")
    n = len(subunit)
    out = Atoms(np.tile(subunit.atomic_number, n_subunits), pos.reshape(-1, 3), np.tile(subunit.b_iso_a2, n_subunits),
                np.tile(subunit.occupancy, n_subunits), subunit.source, list(subunit.notes))
    out.notes.append(f"helix: {n_subunits} subunits of {n} atoms, rise {rise_a:g} Å, twist {twist_deg:g}°")
    return out


@dataclass
class Bounds:
    """A bounding capsule in the type frame: the segment centre ± half_length·axis, swept by radius."""

    centre_a: np.ndarray
    axis: np.ndarray
    half_length_a: float
    radius_a: float

    @property
    def extent_a(self) -> float:
        """Radius of the sphere about the type origin that holds the capsule."""
        return float(np.linalg.norm(self.centre_a)) + self.half_length_a + self.radius_a


def bounding_capsule(positions_a: np.ndarray, shape: str = "auto") -> Bounds:
    """Smallest-ish capsule around the atoms along their principal axis (or a sphere)."""
    if len(positions_a) == 0:
        return Bounds(np.zeros(3), np.array([0.0, 0.0, 1.0]), 0.0, 0.0)
    if not np.isfinite(positions_a).all():  # the structure reader refuses these; atoms built by hand may not
        raise StructureError("atom positions are not all finite; a bounding shape needs finite coordinates")
    c = positions_a.mean(0)
    rel = positions_a - c
    return _capsule_about(c, rel.T @ rel, lambda: iter([positions_a]), shape)[0]


def _capsule_about(c: np.ndarray, scatter: np.ndarray, chunks, shape: str) -> tuple[Bounds, float]:
    """The capsule (or sphere) of :func:`bounding_capsule` about the atoms' mean ``c``, their scatter matrix
    Σ (r − c)(r − c)ᵀ giving the principal axis, from one pass over ``chunks()`` (blocks of positions); and the
    farthest atom's distance from the origin."""
    w, v = np.linalg.eigh(scatter)
    axis = v[:, -1]
    r2, t_lo, t_hi, d2, o2 = 0.0, math.inf, -math.inf, 0.0, 0.0
    for pos in chunks():
        rel = pos - c
        t = rel @ axis
        r2 = max(r2, float((rel**2).sum(1).max()))
        o2 = max(o2, float(np.einsum("ij,ij->i", pos, pos).max()))
        t_lo, t_hi = min(t_lo, float(t.min())), max(t_hi, float(t.max()))
        d2 = max(d2, float(np.maximum((rel - t[:, None] * axis) ** 2, 0).sum(1).max()))
    sphere = Bounds(c, np.array([0.0, 0.0, 1.0]), 0.0, math.sqrt(r2))
    if shape == "sphere":
        return sphere, math.sqrt(o2)
    mid = 0.5 * (t_hi + t_lo)
    radius = math.sqrt(d2)
    # shorten the segment so the caps still cover the ends; atoms off the axis near the ends can then lie outside
    # the caps (by up to (√2 − 1)·r), so the capsule is made to hold every atom (covering_capsule)
    half = max(0.0, max(abs(t_hi - mid), abs(t_lo - mid)) - radius)
    capsule = covering_capsule(chunks, Bounds(c + mid * axis, axis, half, radius))
    if shape == "capsule":
        return capsule, math.sqrt(o2)
    vol_sphere = sphere.radius_a**3
    vol_capsule = capsule.radius_a**2 * (capsule.radius_a + 0.75 * 2 * capsule.half_length_a)
    return capsule if vol_capsule < 0.7 * vol_sphere else sphere, math.sqrt(o2)


#: atoms per block when a type of subunits is visited without building all its atoms
CHUNK_ATOMS = 1 << 20


def _fibonacci_directions(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def hull_candidates(positions_a: np.ndarray, n_directions: int = 48) -> np.ndarray:
    """Indices of the points that may be vertices of their convex hull: every point except those strictly inside
    the hull of the extreme points along ``n_directions`` directions (its faces found among all triples of them).
    The maximum over the points of any convex function (a coordinate, a distance from a point or a line) is the
    maximum over these."""
    n = len(positions_a)
    if n <= 64:
        return np.arange(n)
    ext = np.unique(np.argmax(positions_a @ _fibonacci_directions(n_directions).T, axis=0))
    e = positions_a[ext]
    i, j, k = np.array(list(itertools.combinations(range(len(e)), 3))).T
    normal = np.cross(e[j] - e[i], e[k] - e[i])
    size = np.linalg.norm(normal, axis=1)
    scale = float(np.abs(positions_a).max()) + 1.0
    keep = size > 1e-9 * scale**2
    normal, i = normal[keep] / size[keep, None], i[keep]
    side = e @ normal.T - (e[i] * normal).sum(1)  # (E, F): every extreme point against every plane
    tol = 1e-9 * scale
    out_pos, out_neg = (side <= tol).all(0), (side >= -tol).all(0)
    faces = np.concatenate([normal[out_pos], -normal[out_neg]])
    offsets = np.concatenate([(e[i[out_pos]] * normal[out_pos]).sum(1), -(e[i[out_neg]] * normal[out_neg]).sum(1)])
    if len(faces) < 4:  # flat or degenerate: keep every point
        return np.arange(n)
    inside = (positions_a @ faces.T - offsets < -1e-6 * scale).all(1)
    return np.flatnonzero(~inside)


def capsule_distances_a(points_a: np.ndarray, bounds: Bounds) -> np.ndarray:
    """(N,) distance of each point from the capsule's segment (Å; a point lies inside where it is ≤ the radius)."""
    rel = points_a - bounds.centre_a
    t = np.clip(rel @ bounds.axis, -bounds.half_length_a, bounds.half_length_a)
    return np.sqrt(((rel - t[:, None] * bounds.axis) ** 2).sum(1))


def covering_capsule(points_a, bounds: Bounds) -> Bounds:
    """``bounds`` made to hold every point (an (N, 3) array, or a callable giving blocks of them): the smaller (by
    volume) of the capsule with its segment lengthened until the caps reach every point, and the capsule with its
    radius grown to the points' largest distance from the segment. Both hold every point (the second by
    construction, the first because the lengthened segment's caps reach each point's projection within the radius of
    its distance from the axis). Both are maxima of convex functions of a point, so blocks of hull candidates do."""
    if bounds.half_length_a == 0:
        return bounds
    chunks = points_a if callable(points_a) else (lambda: iter([points_a]))
    r = bounds.radius_a
    half, far = -np.inf, r
    for pos in chunks():
        if len(pos) == 0:
            continue
        rel = pos - bounds.centre_a
        t = rel @ bounds.axis
        d2 = np.maximum((rel**2).sum(1) - t * t, 0.0)
        inside = d2 <= r * r * (1 + 1e-9) + 1e-9  # within the radius of the axis (rounding aside): caps can reach it
        half = max(half, float(np.max(np.where(inside, np.abs(t) - np.sqrt(np.maximum(r * r - d2, 0.0)), np.inf))))
        far = max(far, float(capsule_distances_a(pos, bounds).max()))
    if half == -np.inf:
        return bounds
    longer = Bounds(bounds.centre_a, bounds.axis, max(bounds.half_length_a, half), r)
    wider = Bounds(bounds.centre_a, bounds.axis, bounds.half_length_a, far)

    def volume(b: Bounds) -> float:
        return b.radius_a**2 * (2 * b.half_length_a + 4 / 3 * b.radius_a)

    return longer if np.isfinite(half) and volume(longer) <= volume(wider) else wider


@dataclass
class Subunits:
    """A type made of copies of one asymmetric unit: type atoms = R_k a + t_k over the operators k, in order.

    ``atoms`` is centred on its own origin (so its maps and projectors are as small as the unit); maps and
    projections of the type are built from it, not by gridding every atom of every copy."""

    atoms: Atoms
    rotations: np.ndarray  # (K, 3, 3)
    translations_a: np.ndarray  # (K, 3)

    def __len__(self) -> int:
        return int(self.rotations.shape[0])

    @property
    def n_atoms(self) -> int:
        """Atoms of the whole type (every copy of the unit)."""
        return len(self) * len(self.atoms)

    @property
    def radius_a(self) -> float:
        return float(np.sqrt((self.atoms.positions_a**2).sum(1)).max()) if len(self.atoms) else 0.0

    @classmethod
    def identity(cls, atoms: Atoms) -> Subunits:
        return cls(atoms, np.eye(3)[None].copy(), np.zeros((1, 3)))

    def then(self, rotations: np.ndarray, translations_a: np.ndarray) -> Subunits:
        """The operators followed by (R'_j, t'_j), j-major (x → R'_j x + t'_j applied to every copy so far)."""
        rots = np.einsum("jab,kbc->jkac", rotations, self.rotations).reshape(-1, 3, 3)
        trans = (np.einsum("jab,kb->jka", rotations, self.translations_a) + translations_a[:, None, :]).reshape(-1, 3)
        return Subunits(self.atoms, rots, trans)

    def shifted(self, offset_a: np.ndarray) -> Subunits:
        return Subunits(self.atoms, self.rotations, self.translations_a + np.asarray(offset_a, np.float64))

    def centred_unit(self) -> Subunits:
        """The same operators acting on the unit moved to its bounding-box centre s (t_k + R_k s)."""
        if len(self.atoms) == 0:
            return self
        pos = self.atoms.positions_a
        s = 0.5 * (pos.min(0) + pos.max(0))
        unit = Atoms(self.atoms.atomic_number, pos - s, self.atoms.b_iso_a2, self.atoms.occupancy, self.atoms.source,
                     list(self.atoms.notes))
        return Subunits(unit, self.rotations, self.translations_a + self.rotations @ s)

    def expanded(self) -> Atoms:
        """The type's atoms, unit-major (copy k's atoms are rows k·n … (k+1)·n − 1)."""
        n = len(self)
        a = self.atoms
        return Atoms(np.tile(a.atomic_number, n), self.positions_of(0, n).reshape(-1, 3), np.tile(a.b_iso_a2, n),
                     np.tile(a.occupancy, n), a.source)

    def positions_of(self, k0: int, k1: int) -> np.ndarray:
        """(k1 − k0, n, 3) positions of units k0 … k1 − 1."""
        return self.atoms.positions_a[None] @ self.rotations[k0:k1].transpose(0, 2, 1) + self.translations_a[k0:k1,
                                                                                                              None]

    def position_chunks(self, max_atoms: int = CHUNK_ATOMS, hull_only: bool = False):
        """The type's atom positions (the order of :meth:`expanded`) in blocks of whole units, never all at once;
        ``hull_only``: only the unit's atoms that may be vertices of its convex hull (enough for the maximum of any
        convex function of the positions: extents, distances from points and lines)."""
        pos = self.atoms.positions_a[hull_candidates(self.atoms.positions_a)] if hull_only else self.atoms.positions_a
        step = max(1, max_atoms // max(len(pos), 1))
        for k0 in range(0, len(self), step):
            r, t = self.rotations[k0:k0 + step], self.translations_a[k0:k0 + step]
            yield (pos[None] @ r.transpose(0, 2, 1) + t[:, None]).reshape(-1, 3)

    def every_nth_position(self, step: int) -> np.ndarray:
        """Positions of the type's atoms 0, step, 2·step, … (what ``expanded().positions_a[::step]`` holds)."""
        n = len(self.atoms)
        i = np.arange(0, self.n_atoms, max(1, step))
        k, j = i // n, i % n
        first = np.searchsorted(k, np.arange(len(self) + 1))  # unit u's samples: i[first[u]:first[u + 1]]
        out = np.empty((len(i), 3))
        pos, rot, t = self.atoms.positions_a, self.rotations, self.translations_a
        for u in np.flatnonzero(np.diff(first)):  # per unit, not a 3×3 matrix gathered per sample (4-8× faster)
            s = slice(first[u], first[u + 1])
            out[s] = pos[j[s]] @ rot[u].T + t[u]
        return out

    def moments(self, weights: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
        """(Σ w, Σ w r, Σ w r rᵀ) over the type's atoms (unit weights ``weights``, default 1), from the unit's."""
        pos = self.atoms.positions_a
        w = np.ones(len(pos)) if weights is None else np.asarray(weights, np.float64)
        s0, s1, s2 = float(w.sum()), (w[:, None] * pos).sum(0), (pos.T * w) @ pos
        r, t = self.rotations, self.translations_a
        rs1 = r @ s1  # (K, 3)
        m1 = rs1.sum(0) + s0 * t.sum(0)
        m2 = (np.einsum("kab,bc,kdc->ad", r, s2, r) + np.einsum("ka,kb->ab", rs1, t) + np.einsum("ka,kb->ab", t, rs1)
              + s0 * t.T @ t)
        return len(self) * s0, m1, m2

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) of the type's atom coordinates (NaN where one is NaN)."""
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        if not np.isfinite(self.atoms.positions_a).all():
            return np.full(3, np.nan), np.full(3, np.nan)
        for pos in self.position_chunks(hull_only=True):
            lo, hi = np.minimum(lo, pos.min(0)), np.maximum(hi, pos.max(0))
        return lo, hi

    def bounding_capsule(self, shape: str = "auto") -> tuple[Bounds, float]:
        """:func:`bounding_capsule` of the type's atoms (the mean and principal axis from the unit's moments, the
        extents from one pass over the units) and the distance of the farthest atom from the origin."""
        if self.n_atoms == 0:
            return bounding_capsule(np.zeros((0, 3)), shape), 0.0
        if not (np.isfinite(self.atoms.positions_a).all() and np.isfinite(self.rotations).all()
                and np.isfinite(self.translations_a).all()):
            raise StructureError("atom positions are not all finite; a bounding shape needs finite coordinates")
        n, m1, m2 = self.moments()
        c = m1 / n
        return _capsule_about(c, m2 - n * np.outer(c, c), lambda: self.position_chunks(hull_only=True), shape)

    def block_relations(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(M_j rotations, translations) taking units 0… of the first block of ``size`` onto block j's (units j·size…):
        M_j = op_{j·size} ∘ op_0⁻¹, j over every block including a last, shorter one."""
        r0, t0 = self.rotations[0], self.translations_a[0]
        first = np.arange(0, len(self), size)
        rot = self.rotations[first] @ r0.T
        return rot, self.translations_a[first] - rot @ t0

    def block_mismatch_a(self, size: int) -> float:
        """How far (Å, at the unit's radius) the units stray from their block's copy of the first block: 0 for a
        helix or any run of one repeated step; blocks may stand in for units when this is far below a pixel."""
        rot, trans = self.block_relations(size)
        k = np.arange(len(self))
        j, i = k // size, k % size
        pred_r = rot[j] @ self.rotations[i]
        pred_t = np.einsum("kab,kb->ka", rot[j], self.translations_a[i]) + trans[j]
        dr = np.abs(pred_r - self.rotations).max(axis=(1, 2)) * 3 * self.radius_a
        return float((dr + np.sqrt(((pred_t - self.translations_a) ** 2).sum(1))).max())

    def blocks(self, size: int) -> list[Subunits]:
        """The same atoms as blocks of ``size`` consecutive units, each block a unit of its own (centred), the
        blocks copies of the first one; a last, shorter block is a second part. Valid when
        :meth:`block_mismatch_a` is negligible (the caller checks)."""
        n_full, rest = divmod(len(self), size)
        rot, trans = self.block_relations(size)
        parts = []
        for n_units, sel in ((size, slice(0, n_full)), (rest, slice(n_full, n_full + 1))):
            if n_units == 0 or n_full == 0 and n_units == size:
                continue
            block = Subunits(self.atoms, self.rotations[:n_units], self.translations_a[:n_units]).expanded()
            parts.append(Subunits(block, rot[sel], trans[sel]).centred_unit())
        return parts

    def poses(self, rotations: np.ndarray, positions_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each copy's (M) units as poses of the unit: (M·K, 3, 3) rotations and (M·K, 3) centres, copy-major."""
        rots = np.einsum("mab,kbc->mkac", rotations, self.rotations).reshape(-1, 3, 3)
        centres = (np.einsum("mab,kb->mka", rotations, self.translations_a) + positions_a[:, None, :]).reshape(-1, 3)
        return rots, centres


class _TypeAtoms:
    """``ParticleType.atoms``: the atoms it was given, or — a type of subunits given None — its units' copies, built
    on first use (the paths that really need every atom: the atom path, a map of the whole type) and kept."""

    def __get__(self, obj, owner=None):
        if obj is None:
            raise AttributeError("atoms")  # a dataclass field without a default
        held = obj.__dict__.get("_atoms")
        if held is None and obj.subunits is not None:
            held = obj.subunits.expanded()
            held.notes = list(obj.lazy_notes)
            obj.__dict__["_atoms"] = held
        return held

    def __set__(self, obj, value) -> None:
        obj.__dict__["_atoms"] = value


@dataclass(eq=False)
class ParticleType:
    name: str
    atoms: Atoms = _TypeAtoms()  # type frame, centred; None with subunits: built from them when first used
    bounds: Bounds
    representation: str = "auto"  # "atoms" | "map" | "auto"
    subunits: Subunits | None = None  # when the type is copies of one unit (a helix or a transforms file)
    density: DensityMap | None = None  # a type drawn from a density map (it has no atoms)
    unit_offset_a: np.ndarray | None = None  # a filament's subunit: the type origin in the structure file's frame
    lazy_notes: list = field(default_factory=list)  # the notes of atoms built from the subunits
    known_radius_a: float | None = None  # a type of subunits: radius_a, found with its bounds

    def with_bounds(self, bounds: Bounds) -> ParticleType:
        """The same type with other bounds (its atoms, built or not, shared)."""
        out = copy.copy(self)
        out.bounds = bounds
        return out

    @property
    def atoms_built(self) -> bool:
        """Whether every atom of the type is held (always, unless it is made of subunits and none asked yet)."""
        return self.__dict__.get("_atoms") is not None or self.subunits is None

    @property
    def n_atoms(self) -> int:
        return len(self.atoms) if self.atoms_built else self.subunits.n_atoms

    @property
    def notes(self) -> list[str]:
        return self.atoms.notes if self.atoms_built else list(self.lazy_notes)

    @property
    def source_name(self) -> str:
        """The structure file (or what stands for it, e.g. ``fiducial``) the atoms come from."""
        return self.atoms.source if self.atoms_built else self.subunits.atoms.source

    def position_chunks(self):
        """The type's atom positions in blocks (all at once when they are held)."""
        if self.atoms_built:
            yield self.atoms.positions_a
        else:
            yield from self.subunits.position_chunks()

    @property
    def radius_a(self) -> float:
        """Distance of the farthest atom (or map voxel) from the type origin (Å)."""
        if self.density is not None:
            return self.density.radius_a
        if not self.atoms_built:
            if self.known_radius_a is None:
                self.known_radius_a = self.subunits.bounding_capsule()[1]
            return self.known_radius_a
        return float(np.sqrt((self.atoms.positions_a**2).sum(1)).max()) if len(self.atoms) else 0.0

    @property
    def mass_da(self) -> float:
        if self.density is not None:
            return float(self.density.mass_da or 0.0)
        if not self.atoms_built:
            unit = self.subunits.atoms
            return len(self.subunits) * float((atomic_mass_da(unit.atomic_number) * unit.occupancy).sum())
        return float((atomic_mass_da(self.atoms.atomic_number) * self.atoms.occupancy).sum())

    @property
    def source(self):
        """What its maps and projectors are built from: the density map, or the atoms."""
        return self.density if self.density is not None else self.atoms


# ---------------------------------------------------------------------------------------------- placement
@dataclass
class Placement:
    """Poses of every copy: type index, centre (Å, scene frame) and rotation (type frame → scene)."""

    type_index: np.ndarray  # (M,) int
    positions_a: np.ndarray  # (M, 3)
    rotations: np.ndarray  # (M, 3, 3)

    def __len__(self) -> int:
        return int(self.type_index.shape[0])

    @staticmethod
    def empty() -> Placement:
        return Placement(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3, 3)))

    @staticmethod
    def concatenate(parts: list[Placement]) -> Placement:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Placement.empty()
        return Placement(np.concatenate([p.type_index for p in parts]), np.concatenate([p.positions_a for p in parts]),
                         np.concatenate([p.rotations for p in parts]))

    def transformed(self, rotation: np.ndarray) -> Placement:
        """The scene turned rigidly by ``rotation`` about the origin (e.g. a specimen tilt)."""
        return Placement(self.type_index, self.positions_a @ rotation.T,
                         np.einsum("ij,mjk->mik", rotation, self.rotations))


def _segments(bounds: list[Bounds], placement: Placement) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene-frame capsule segments (M, 3) ends a, b and radii (M,)."""
    if len(placement) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
    c = np.stack([bounds[t].centre_a for t in placement.type_index])
    ax = np.stack([bounds[t].axis * bounds[t].half_length_a for t in placement.type_index])
    c = np.einsum("mij,mj->mi", placement.rotations, c) + placement.positions_a
    ax = np.einsum("mij,mj->mi", placement.rotations, ax)
    r = np.array([bounds[t].radius_a for t in placement.type_index])
    return c - ax, c + ax, r


def segment_distances(p1, q1, p2, q2) -> np.ndarray:
    """Closest distances between segments [p1, q1] and [p2, q2] (broadcast over leading dims)."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a = (d1 * d1).sum(-1)
    e = (d2 * d2).sum(-1)
    f = (d2 * r).sum(-1)
    c = (d1 * r).sum(-1)
    b = (d1 * d2).sum(-1)
    denom = a * e - b * b
    eps = 1e-12
    s = np.where(denom > eps, np.clip((b * f - c * e) / np.maximum(denom, eps), 0, 1), 0.0)
    s = np.where(a > eps, s, 0.0)
    t = np.where(e > eps, (b * s + f) / np.maximum(e, eps), 0.0)
    # clamp t, then recompute s for the clamped t
    t_c = np.clip(t, 0, 1)
    s = np.where(a > eps, np.clip((b * t_c - c) / np.maximum(a, eps), 0, 1), 0.0)
    t = t_c
    cp1 = p1 + s[..., None] * d1
    cp2 = p2 + t[..., None] * d2
    return np.sqrt(((cp1 - cp2) ** 2).sum(-1))


def overlapping_pairs(bounds: list[Bounds], placement: Placement, gap_a: float = 0.0) -> list[tuple[int, int, float]]:
    """(i, j, overlap Å) for every pair of copies whose bounding capsules come closer than ``gap_a``."""
    a, b, r = _segments(bounds, placement)
    out = []
    for i in range(len(placement) - 1):
        d = segment_distances(a[i], b[i], a[i + 1:], b[i + 1:])
        over = r[i] + r[i + 1:] + gap_a - d
        for j in np.flatnonzero(over > 1e-6):
            out.append((i, i + 1 + int(j), float(over[j])))
    return out


class _CellGrid:
    """Placed capsules binned by their segment midpoints in cubes of side ``cell_a``.

    With ``cell_a`` ≥ 2·max(half length + radius) + gap, a capsule can only touch capsules whose midpoints lie in
    its own or the 26 neighbouring cubes (farther midpoints are more than ``cell_a`` apart), so each test looks at
    a few neighbours instead of every copy: the same decisions as testing all pairs, in time independent of the
    number of copies placed.
    """

    _OFFSETS = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]

    def __init__(self, cell_a: float, capacity: int):
        self.cell_a = cell_a if cell_a > 0 else 1.0
        self.a = np.zeros((capacity, 3))
        self.b = np.zeros((capacity, 3))
        self.r = np.zeros(capacity)
        self.n = 0
        self.cells: dict[tuple[int, int, int], list[int]] = {}

    def _key(self, a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
        k = np.floor(0.5 * (a + b) / self.cell_a)
        return int(k[0]), int(k[1]), int(k[2])

    def add(self, a: np.ndarray, b: np.ndarray, r: float) -> None:
        i = self.n
        self.a[i], self.b[i], self.r[i] = a, b, r
        self.cells.setdefault(self._key(a, b), []).append(i)
        self.n += 1

    def collides(self, a: np.ndarray, b: np.ndarray, r: float, gap_a: float) -> bool:
        kx, ky, kz = self._key(a, b)
        near: list[int] = []
        for dx, dy, dz in self._OFFSETS:
            near.extend(self.cells.get((kx + dx, ky + dy, kz + dz), ()))
        if not near:
            return False
        idx = np.asarray(near)
        return bool(np.any(segment_distances(a, b, self.a[idx], self.b[idx]) < self.r[idx] + r + gap_a))


def random_placement(bounds: list[Bounds], counts: list[int], *, field_a: tuple[float, float], ice_thickness_a: float,
                     rng: np.random.Generator, names: list[str], gap_a: float = 5.0, random_orientation: list[bool],
                     existing: Placement | None = None, max_failures: int = 2000, blocked=None) -> Placement:
    """Random sequential addition of ``counts[t]`` copies of each type, largest first.

    Every copy lies inside the field (x, y) and — if there is ice — inside the ice slab (z), with
    uniform orientation (or the identity) and no bounding capsule closer than ``gap_a`` to another.
    Gives up on a type after ``max_failures`` consecutive rejected draws, naming what was achieved.
    Overlap tests look only at neighbouring copies (a cell grid), so the time grows with the number of copies,
    not its square. ``blocked(a, b, r)`` (optional): (Q,) whether capsules touch fixed obstacles (membrane sheets).
    """
    existing = existing or Placement.empty()
    ea, eb, er = _segments(bounds, existing)
    extents = [float(np.linalg.norm(bq - ap)) / 2 + rr for ap, bq, rr in zip(ea, eb, er, strict=True)]
    extents += [bounds[t].half_length_a + bounds[t].radius_a for t in range(len(counts)) if counts[t] > 0]
    grid = _CellGrid(2 * max(extents, default=0.0) + gap_a, len(existing) + sum(max(c, 0) for c in counts))
    for ap, bq, rr in zip(ea, eb, er, strict=True):
        grid.add(ap, bq, float(rr))
    placed: list[Placement] = []
    wx, wy = field_a
    order = sorted(range(len(counts)), key=lambda t: -bounds[t].extent_a)
    for t in order:
        if counts[t] <= 0:
            continue
        bd = bounds[t]
        got_pos, got_rot = [], []
        fails = 0
        while len(got_pos) < counts[t]:
            if fails >= max_failures:
                raise ConfigError(
                    f"sample.particles[{names[t]}].random: placed only {len(got_pos)} of {counts[t]} copies without "
                    f"overlap in a {wx / 10:g} × {wy / 10:g} nm field and {ice_thickness_a / 10:g} nm of ice; lower "
                    "the count or min_gap_a, or enlarge detector.shape_px / sample.ice_thickness_nm")
            rot = random_rotations(1, rng)[0] if random_orientation[t] else np.eye(3)
            c = rot @ bd.centre_a
            ax = rot @ bd.axis * bd.half_length_a
            reach = np.abs(c) + np.abs(ax) + bd.radius_a  # per-axis half extent about the copy origin
            lo_x, hi_x = -wx / 2 + reach[0], wx / 2 - reach[0]
            lo_y, hi_y = -wy / 2 + reach[1], wy / 2 - reach[1]
            half_ice = ice_thickness_a / 2
            lo_z, hi_z = (-half_ice + reach[2], half_ice - reach[2]) if ice_thickness_a > 0 else (0.0, 0.0)
            if hi_x < lo_x or hi_y < lo_y or hi_z < lo_z:
                fails += 1
                continue
            pos = np.array([rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), rng.uniform(lo_z, hi_z)])
            a, b = pos + c - ax, pos + c + ax
            if grid.collides(a, b, bd.radius_a, gap_a) or (
                    blocked is not None and blocked(a[None], b[None], np.array([bd.radius_a]))[0]):
                fails += 1
                continue
            fails = 0
            got_pos.append(pos)
            got_rot.append(rot)
            grid.add(a, b, bd.radius_a)
        placed.append(Placement(np.full(len(got_pos), t, np.int64), np.array(got_pos).reshape(-1, 3),
                                np.array(got_rot).reshape(-1, 3, 3)))
    return Placement.concatenate(placed)


# ---------------------------------------------------------------------------------------------- ground truth
#: The columns of a ground-truth row (:func:`ground_truth_rows`), in order: a run without particles writes them too.
GROUND_TRUTH_COLUMNS = ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot", "rlnAngleTilt",
                        "rlnAnglePsi", "difftemParticleType", "difftemPositionXA", "difftemPositionYA",
                        "difftemPositionZA", "difftemEulerZyzPhi", "difftemEulerZyzTheta", "difftemEulerZyzPsi")


def ground_truth_rows(types: list[ParticleType], placement: Placement, *, shape_px: tuple[int, int],
                      pixel_size_a: float, micrograph: str = "micrograph.mrc") -> list[dict]:
    """One dict per copy (keys :data:`GROUND_TRUTH_COLUMNS`): type, centre (Å and image pixels), RELION angles and
    our ZYZ angles."""
    ny, nx = shape_px
    relion = relion_angles(placement.rotations) if len(placement) else np.zeros((0, 3))
    zyz = euler_zyz_from_matrix(placement.rotations) if len(placement) else np.zeros((0, 3))
    rows = []
    for i in range(len(placement)):
        x, y, z = placement.positions_a[i]
        values = (micrograph, x / pixel_size_a + nx // 2, y / pixel_size_a + ny // 2, *relion[i],
                  types[placement.type_index[i]].name, x, y, z, *zyz[i])
        rows.append(dict(zip(GROUND_TRUTH_COLUMNS, values, strict=True)))
    return rows


# ---------------------------------------------------------------------------------------------- from a config
@dataclass
class Scene:
    types: list[ParticleType]
    placement: Placement
    warnings: list[str] = field(default_factory=list)
    vesicles: object | None = None  # specimen.membranes.Vesicles placed with the scene (sample.vesicles), or None
    filaments: object | None = None  # specimen.filaments.Filaments (sample.particles[].filament), or None
    crowding: dict | None = None  # specimen.crowding's report (copies and volume fractions per type), or None
    sheets: object | None = None  # specimen.sheets.Sheets (sample.membrane_sheets), or None

    def atoms_of(self, type_indices, placement: Placement | None = None) -> Atoms:
        """All atoms of the copies of the given types, in scene coordinates (optionally of another placement)."""
        pl = placement if placement is not None else self.placement
        parts = []
        wanted = set(int(t) for t in type_indices)
        for i in range(len(pl)):
            t = int(pl.type_index[i])
            if t in wanted:
                parts.append(self.types[t].atoms.transformed(pl.rotations[i], pl.positions_a[i]))
        return Atoms.concatenate(parts)

    def copies_of(self, t: int) -> int:
        return int((self.placement.type_index == t).sum())

    @property
    def notes(self) -> list[str]:
        return [n for t in self.types for n in t.notes]
