"""Measurement prototype (not used by the package): random sequential addition of one type excluded atom by atom.

    python benchmarks/proto_atom_exclusion.py ../shared/data/structures/1ake_adk_chimerax.cif.gz 400 400 300 240

Copies are tested sphere against sphere (the type's spheres from specimen/excluded.py, a cell hash), and for every
overlapping pair of spheres the query sphere's atoms are looked up, in the other copy's frame, in a grid (1 Å) that
marks every node within 3 Å + the node's half diagonal of the type's atoms or closed cavities: two copies are kept
only if no heavy atoms come within 3 Å. Batches of 400 proposals, centres uniform where the copy's extent stays in the
box, earlier survivors of a batch win; it stops when 20,000 proposals were accepted less often than 0.2 %, or after
the time limit (s). Prints the copies and the molecular fraction, of the whole box and of the middle of the box
(wall effects aside), and the time; docs/cellular.md records a run.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from difftem.config import Particle
from difftem.core.elements import atomic_mass_da
from difftem.core.rotations import random_rotations
from difftem.specimen.build import load_particle_type, resolve_structure
from difftem.specimen.crowding import A3_PER_DA, _CellHash, molecular_volume_a3
from difftem.specimen.excluded import _nearest, cavity_points_a, sphere_cover

CLEAR_A, GRID_A, BATCH = 3.0, 1.0, 400


def clash_grid(points: np.ndarray):
    """Nodes within CLEAR_A + half a node's diagonal of any point (so a nearest-node lookup never misses a clash)."""
    reach = CLEAR_A + GRID_A * math.sqrt(3) / 2
    lo = points.min(0) - reach - 2
    shape = np.ceil((points.max(0) + reach + 2 - lo) / GRID_A).astype(int) + 1
    grid = np.zeros(shape, bool)
    n = int(math.ceil(reach / GRID_A)) + 1
    off = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    base = np.floor((points - lo) / GRID_A + 0.5).astype(int)
    for i in range(0, len(base), 2000):  # chunks of points, all offsets at once
        idx = (base[i:i + 2000, None] + off[None]).reshape(-1, 3)
        d = np.linalg.norm(lo + idx * GRID_A - np.repeat(points[i:i + 2000], len(off), 0), axis=1)
        idx = idx[d <= reach]
        grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return grid, lo


def main(path: str, box_a: np.ndarray, limit_s: float) -> None:
    ptype = load_particle_type(Particle(structure=path), resolve_structure)
    atoms = ptype.atoms.positions_a
    cover = sphere_cover(ptype, 10.0, 64)
    label = _nearest(atoms, cover.centres_a)
    grouped = atoms[np.argsort(label, kind="stable")]
    count = np.bincount(label, minlength=len(cover))
    start = np.r_[0, np.cumsum(count)]
    grid, grid_lo = clash_grid(np.concatenate([atoms, cavity_points_a(atoms)[0]]))
    k, gap = len(cover), CLEAR_A - 1.0  # the spheres reach 0.5 Å beyond their atoms
    cell = 2 * cover.radii_a.max() + gap
    lo_b, hi_b = -box_a / 2 - cover.radii_a.max() - 1, box_a / 2 + cover.radii_a.max() + 1
    extent = np.sqrt((atoms**2).sum(1)).max()
    rng = np.random.default_rng(0)

    def clashes(q_pos, q_rot, q_sphere, p_pos, p_rot):
        """Per pair, whether the atoms of the query's sphere hit the other copy's grid."""
        c = count[q_sphere]
        pair = np.repeat(np.arange(len(q_sphere)), c)
        a = grouped[np.repeat(start[q_sphere], c) + np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)]
        y = np.einsum("pji,pj->pi", p_rot[pair], np.einsum("pij,pj->pi", q_rot[pair], a) + q_pos[pair] - p_pos[pair])
        g = np.floor((y - grid_lo) / GRID_A + 0.5).astype(int)
        inside = ((g >= 0) & (g < grid.shape)).all(1)
        hit = np.zeros(len(g), bool)
        hit[inside] = grid[g[inside, 0], g[inside, 1], g[inside, 2]]
        out = np.zeros(len(q_sphere), bool)
        out[pair[hit]] = True
        return out

    def sphere_pairs(sc, sr, hc, hr, cells, owner=None):
        q, j = cells.pairs(sc)
        if owner is not None:
            keep = owner[j] < owner[q]
            q, j = q[keep], j[keep]
        close = ((sc[q] - hc[j]) ** 2).sum(1) < (sr[q] + hr[j] + gap) ** 2
        return q[close], j[close]

    placed_pos, placed_rot, placed_c = np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3))
    cells = _CellHash(lo_b, hi_b, cell)
    t0, proposed, window = time.perf_counter(), 0, [0, 0]
    while time.perf_counter() - t0 < limit_s:
        rot = random_rotations(BATCH, rng)
        pos = rng.uniform(-box_a / 2 + extent, box_a / 2 - extent, (BATCH, 3))
        proposed += BATCH
        sc = (np.einsum("mij,kj->mki", rot, cover.centres_a) + pos[:, None]).reshape(-1, 3)
        sr, owner, sphere = np.tile(cover.radii_a, BATCH), np.repeat(np.arange(BATCH), k), np.tile(np.arange(k), BATCH)
        hit = np.zeros(BATCH, bool)
        if len(placed_c):
            q, j = sphere_pairs(sc, sr, placed_c, np.tile(cover.radii_a, len(placed_pos)), cells)
            key = np.unique(np.stack([owner[q], sphere[q], j // k], 1), axis=0)
            if len(key):
                hit[key[clashes(pos[key[:, 0]], rot[key[:, 0]], key[:, 1], placed_pos[key[:, 2]],
                                placed_rot[key[:, 2]]), 0]] = True
        keep = np.flatnonzero(~hit)
        if len(keep) > 1:  # a survivor that clashes with an earlier one of its batch is dropped
            sel = np.isin(owner, keep)
            mine = _CellHash(lo_b, hi_b, cell).build(sc[sel])
            q, j = sphere_pairs(sc[sel], sr[sel], sc[sel], sr[sel], mine, owner[sel])
            key = np.unique(np.stack([owner[sel][q], sphere[sel][q], owner[sel][j]], 1), axis=0)
            if len(key):
                bad = np.zeros(BATCH, bool)
                bad[key[clashes(pos[key[:, 0]], rot[key[:, 0]], key[:, 1], pos[key[:, 2]], rot[key[:, 2]]), 0]] = True
                keep = keep[~bad[keep]]
        placed_pos, placed_rot = np.concatenate([placed_pos, pos[keep]]), np.concatenate([placed_rot, rot[keep]])
        placed_c = (np.einsum("mij,kj->mki", placed_rot, cover.centres_a) + placed_pos[:, None]).reshape(-1, 3)
        cells.build(placed_c)
        window = [window[0] + BATCH, window[1] + len(keep)]
        if window[0] >= 20_000:
            if window[1] < 2e-3 * window[0]:
                break
            window = [0, 0]
    seconds = time.perf_counter() - t0
    mass = np.tile(atomic_mass_da(ptype.atoms.atomic_number) * ptype.atoms.occupancy, len(placed_pos))
    pts = (np.einsum("mij,aj->mai", placed_rot, atoms) + placed_pos[:, None]).reshape(-1, 3)
    middle = box_a / 2 - extent
    inside = (np.abs(pts) <= middle).all(1)
    print(f"{len(placed_pos)} copies, {proposed} proposals, {seconds:.1f} s; molecular fraction of the box "
          f"{100 * len(placed_pos) * molecular_volume_a3(ptype) / np.prod(box_a):.1f} %, of its middle (walls "
          f"{extent:.0f} Å away) {100 * mass[inside].sum() * A3_PER_DA / np.prod(2 * middle):.1f} %")


if __name__ == "__main__":
    main(sys.argv[1], np.array([float(v) for v in sys.argv[2:5]]), float(sys.argv[5]))
