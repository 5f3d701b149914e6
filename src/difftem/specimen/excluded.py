"""A particle type's excluded shape as a few spheres (``sample.crowding.shape: spheres``), tighter than its bounding
capsule, so that a crowd can reach 25–30 % of the ice by molecular volume.

The spheres cover the type's atoms (or a density map's molecule voxels) and its enclosed cavities: the atoms are put
on a grid (voxels within :data:`PROBE_A` of an atom are occupied; the probe closes the narrow channels of shells such
as apoferritin's), empty voxels that the outside cannot reach through empty voxels are cavities and are covered too
(a small protein must not be placed inside a closed shell). The points are clustered into K groups (Lloyd's k-means
from a k-means++ start, seeded: the same spheres every run); each sphere is centred on the middle of its group's
bounding box and its radius reaches every point of the group plus :data:`MARGIN_A`. K is about one per sphere of
``sphere_radius_a`` in the molecule and its cavities (mass at 1.35 g/cm³ plus the cavities' voxels), at most
``max_spheres``.

Two copies whose spheres keep ``min_gap_a`` apart therefore have no atoms within 2·MARGIN_A + min_gap_a of each
other. The union's volume is measured on a grid (:func:`union_volume_a3`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .scene import ParticleType

A3_PER_DA = 1.0 / (1.35 * 0.60221408)  # protein at 1.35 g/cm³ (as specimen.crowding)
MARGIN_A = 0.5  # added to each sphere's radius beyond its farthest atom centre: atoms of two copies whose spheres keep
# the crowd's gap (2 Å by default) are ≥ gap + 1 Å apart (3 Å: a van der Waals contact)
PROBE_A = 3.0  # grid voxels within this of an atom are occupied when cavities are looked for
GRID_A = 2.0  # the cavity and volume grids' voxel (coarser for large types: at most MAX_GRID voxels a side)
MAX_GRID = 120
DEFAULT_RADIUS_A = 10.0  # one sphere per this sphere's volume of the molecule (and cavities)
MAX_POINTS = 10_000  # points clustered (an even subsample; every point is then assigned and covered)
LLOYD_STEPS = 25


@dataclass(frozen=True)
class SphereCover:
    """Spheres in the type frame: centres (K, 3) and radii (K,) Å; ``volume_a3`` their union, ``covered_a3`` the
    volume they stand for (the molecular volume plus the enclosed cavities)."""

    centres_a: np.ndarray
    radii_a: np.ndarray
    volume_a3: float
    covered_a3: float

    def __len__(self) -> int:
        return len(self.radii_a)

    def grown_volume_a3(self, grow_a: float) -> float:
        """The union's volume with every radius grown by ``grow_a`` (Å³)."""
        return union_volume_a3(self.centres_a, self.radii_a + grow_a)

    def poses(self, rotations: np.ndarray, positions_a: np.ndarray) -> np.ndarray:
        """(M, K, 3) scene-frame centres of the spheres of M copies."""
        return np.einsum("mij,kj->mki", rotations, self.centres_a) + positions_a[:, None, :]


def _grid(points_a: np.ndarray, pad_a: float) -> tuple[np.ndarray, float, tuple[int, int, int]]:
    lo = points_a.min(0) - pad_a
    g = max(GRID_A, float((points_a.max(0) + pad_a - lo).max()) / MAX_GRID)
    shape = tuple(int(math.ceil(float(n) / g)) + 1 for n in points_a.max(0) + pad_a - lo)
    return lo, g, shape


def _dilate(mask: np.ndarray, steps: int, within: np.ndarray | None = None) -> np.ndarray:
    """``mask`` grown by one voxel (6-connected) ``steps`` times, staying inside ``within``; stops when unchanged."""
    out = mask.copy()
    for _ in range(steps):  # steps of the flood front, each a whole-volume array operation
        grown = out.copy()
        for ax in range(3):
            grown[(slice(None),) * ax + (slice(1, None),)] |= out[(slice(None),) * ax + (slice(None, -1),)]
            grown[(slice(None),) * ax + (slice(None, -1),)] |= out[(slice(None),) * ax + (slice(1, None),)]
        if within is not None:
            grown &= within
        if (grown == out).all():
            break
        out = grown
    return out


def cavity_points_a(points_a: np.ndarray) -> tuple[np.ndarray, float]:
    """Centres (P, 3) of the grid voxels farther than PROBE_A from every point that the outside cannot reach
    through such voxels (enclosed cavities), and the grid's voxel (Å)."""
    lo, g, shape = _grid(points_a, PROBE_A + 2 * GRID_A)
    idx = np.floor((points_a - lo) / g + 0.5).astype(np.int64)
    occ = np.zeros(shape, bool)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    occ = _dilate(occ, int(math.ceil(PROBE_A / g)))
    border = np.zeros(shape, bool)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    outside = _dilate(border & ~occ, sum(shape), within=~occ)  # empty voxels the outside reaches
    return lo + np.argwhere(~occ & ~outside) * g, g


def union_volume_a3(centres_a: np.ndarray, radii_a: np.ndarray) -> float:
    """The volume of the union of spheres (Å³), counted on a grid of ≤ MAX_GRID voxels a side (voxel centres)."""
    if not len(radii_a):
        return 0.0
    lo = (centres_a - radii_a[:, None]).min(0)
    hi = (centres_a + radii_a[:, None]).max(0)
    g = max(GRID_A / 2, float((hi - lo).max()) / MAX_GRID)
    axes = [lo[a] + (np.arange(int(math.ceil((hi[a] - lo[a]) / g))) + 0.5) * g for a in range(3)]
    inside = np.zeros((len(axes[0]), len(axes[1]), len(axes[2])), bool)
    for c, r in zip(centres_a, radii_a, strict=True):  # per sphere (K ≤ a few hundred), its own box at once
        sl = [slice(int(max(0, math.floor((c[a] - r - lo[a]) / g))), int(math.ceil((c[a] + r - lo[a]) / g)) + 1)
              for a in range(3)]
        d2 = ((axes[0][sl[0]] - c[0]) ** 2)[:, None, None] + ((axes[1][sl[1]] - c[1]) ** 2)[None, :, None] \
            + ((axes[2][sl[2]] - c[2]) ** 2)[None, None, :]
        inside[sl[0], sl[1], sl[2]] |= d2 <= r * r
    return float(inside.sum()) * g**3


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, 3) centres: k-means++ start on a subsample, then Lloyd steps (all points at once)."""
    pts = torch.as_tensor(points)
    first = int(rng.integers(len(points)))
    centres = [pts[first]]
    d2 = ((pts - pts[first]) ** 2).sum(1)
    u = rng.random(k)
    for j in range(1, k):  # k-means++: each new centre drawn with probability ∝ squared distance
        cdf = torch.cumsum(d2, 0)
        nxt = pts[min(int(torch.searchsorted(cdf, float(u[j] * cdf[-1]))), len(pts) - 1)]
        centres.append(nxt)
        d2 = torch.minimum(d2, ((pts - nxt) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(LLOYD_STEPS):
        lab = torch.cdist(pts, c).argmin(1)
        counts = torch.bincount(lab, minlength=k).to(pts.dtype)
        sums = torch.zeros_like(c).index_add_(0, lab, pts)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
        if torch.allclose(new, c):
            break
        c = new
    return c.numpy()


def _nearest(points: np.ndarray, centres: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    pts, c = torch.as_tensor(points), torch.as_tensor(centres)
    return torch.cat([torch.cdist(pts[i:i + chunk], c).argmin(1) for i in range(0, len(pts), chunk)]).numpy()


def _cover(points: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k spheres holding every point: k-means groups, each sphere at its group's box centre, radius to its farthest
    point (a group's box centre is nearer the minimax centre than its mean)."""
    step = max(1, len(points) // MAX_POINTS)
    centres = _kmeans(points[::step], k, rng)
    lab = _nearest(points, centres)
    used = np.unique(lab)
    lab = np.searchsorted(used, lab)
    lo = np.full((len(used), 3), np.inf)
    hi = np.full((len(used), 3), -np.inf)
    np.minimum.at(lo, lab, points)
    np.maximum.at(hi, lab, points)
    centres = 0.5 * (lo + hi)
    radii = np.zeros(len(used))
    np.maximum.at(radii, lab, np.sqrt(((points - centres[lab]) ** 2).sum(1)))
    return centres, radii


def sphere_cover(ptype: ParticleType, sphere_radius_a: float = DEFAULT_RADIUS_A, max_spheres: int = 64,
                 margin_a: float = MARGIN_A, seed: int = 0) -> SphereCover:
    """The type's spheres (module docstring): they hold every atom (plus ``margin_a``) and every enclosed cavity;
    about one per sphere of ``sphere_radius_a`` in the molecule and its cavities, at most ``max_spheres``."""
    pts = ptype.density.mask_points_a() if ptype.density is not None else ptype.atoms.positions_a
    if len(pts) == 0:
        return SphereCover(np.zeros((1, 3)), np.zeros(1), 0.0, 0.0)
    cav, g = cavity_points_a(pts)
    d = ptype.density
    molecule = ptype.mass_da * A3_PER_DA if d is None else float(d.mask.sum() * np.prod(d.voxel_a))
    covered = molecule + len(cav) * g**3
    points = np.concatenate([pts, cav])
    k = int(min(max_spheres, len(points), max(1, round(covered / (4 / 3 * math.pi * sphere_radius_a**3)))))
    centres, radii = _cover(points, k, np.random.default_rng(seed))
    radii = radii + margin_a
    return SphereCover(centres, radii, union_volume_a3(centres, radii), covered)
