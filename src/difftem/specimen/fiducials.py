"""Gold fiducial beads (``sample.fiducials``): a face-centred cubic gold lattice (a = 4.078 Å, 0.0590 atoms/Å³)
cut to a sphere, added to the scene as one particle type, so the beads go through the same potential builders,
maps, cost model and ground truth as every particle, and turn with the specimen at every tilt.

Placement: random (seeded by the run's seed and ``seed_offset``) over the field, each bead inside the ice touching
one of its faces (its centre at depth ∓(t(x, y)/2 − r), t the ice profile's local thickness: beads gather at the
air–water interfaces), uniformly oriented, and no closer than ``min_gap_a`` to any particle's bounding capsule or
another bead.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.rotations import random_rotations
from .geometry import IceProfile
from .scene import ParticleType, Placement, _segments, bounding_capsule, segment_distances
from .structure import Atoms

GOLD_LATTICE_A = 4.078  # fcc gold at room temperature (4.065 Å near 80 K: 1 % denser, within the bead's size)
#: Debye–Waller factor of gold at cryogenic temperature (Å²): Debye temperature 165 K gives ≈ 0.6 Å² at 295 K
GOLD_B_A2 = 0.3
_FCC_BASIS = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])


def gold_bead_atoms(diameter_a: float, lattice_a: float = GOLD_LATTICE_A) -> Atoms:
    """The atoms of an fcc gold sphere of ``diameter_a`` centred on a lattice node (Å, type frame)."""
    r = diameter_a / 2
    n = int(np.ceil(r / lattice_a)) + 1
    cells = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    pos = ((cells + _FCC_BASIS[None]) * lattice_a).reshape(-1, 3)
    pos = pos[(pos**2).sum(1) <= r * r]
    k = len(pos)
    return Atoms(np.full(k, 79, np.int64), pos, np.full(k, GOLD_B_A2), np.ones(k), "fiducial",
                 [f"gold bead: {k} atoms, {diameter_a / 10:g} nm, fcc a = {lattice_a} Å"])


def place_fiducials(cfg, bounds_existing, existing: Placement, bead: ParticleType, type_index: int, *,
                    field_a: tuple[float, float], profile: IceProfile, rng: np.random.Generator,
                    max_failures: int = 2000, blocked=None) -> Placement:
    """``cfg.count`` beads on the ice faces (see the module docstring), clear of ``existing`` copies."""
    r = bead.bounds.radius_a
    ea, eb, er = _segments(bounds_existing, existing)
    wx, wy = field_a
    centres, fails = [], 0
    while len(centres) < cfg.count:
        if fails >= max_failures:
            raise ConfigError(f"sample.fiducials.count: placed only {len(centres)} of {cfg.count} beads of "
                              f"{2 * r / 10:g} nm without overlap in a {wx / 10:g} × {wy / 10:g} nm field; lower "
                              "the count or min_gap_a, or enlarge detector.shape_px")
        x, y = rng.uniform(-wx / 2 + r, wx / 2 - r), rng.uniform(-wy / 2 + r, wy / 2 - r)
        side = {"top": -1.0, "bottom": 1.0}.get(cfg.faces) or (-1.0 if rng.random() < 0.5 else 1.0)
        t = float(profile.thickness_at(torch.tensor([x], dtype=torch.float64),
                                       torch.tensor([y], dtype=torch.float64))[0])
        c = np.array([x, y, side * max(t / 2 - r, 0.0)])
        near = segment_distances(c, c, ea, eb) < er + r + cfg.min_gap_a if len(ea) else np.zeros(0, bool)
        if blocked is not None and blocked(c[None], c[None], np.array([r + cfg.min_gap_a]))[0]:
            near = np.ones(1, bool)
        if near.any() or any(np.linalg.norm(c - o) < 2 * r + cfg.min_gap_a for o in centres):
            fails += 1
            continue
        fails = 0
        centres.append(c)
    n = len(centres)
    return Placement(np.full(n, type_index, np.int64), np.array(centres).reshape(-1, 3), random_rotations(n, rng))


def add_fiducials(config, types: list[ParticleType], placement: Placement, blocked=None
                  ) -> tuple[list[ParticleType], Placement]:
    """The scene's types and placement with ``config.sample.fiducials`` added (unchanged without them); ``blocked``:
    as :func:`place_fiducials` (the membrane sheets)."""
    cfg = config.sample.fiducials
    if cfg is None or cfg.count == 0:
        return types, placement
    atoms = gold_bead_atoms(cfg.diameter_nm * 10.0)
    bead = ParticleType(f"gold_bead_{cfg.diameter_nm:g}nm", atoms, bounding_capsule(atoms.positions_a, "sphere"))
    det = config.detector
    field_a = (det.shape_px[1] * det.pixel_size_a, det.shape_px[0] * det.pixel_size_a)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xF1D, cfg.seed_offset]))
    beads = place_fiducials(cfg, [t.bounds for t in types], placement, bead, len(types), field_a=field_a,
                            profile=IceProfile.from_config(config.sample), rng=rng, blocked=blocked)
    return types + [bead], Placement.concatenate([placement, beads])
