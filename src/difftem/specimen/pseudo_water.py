"""Explicit pseudo-water: water molecules as atoms in a small periodic box, to cross-check the structured ice.

The structured ice (:mod:`difftem.forward.ice`) is a Gaussian random field whose spectrum,
P₃(k) = n C² [F₂ − F₁² + F₁² S(q)], rests on two assumptions: the molecules' orientations are random and
independent of where their centres are, and the centres' pair structure enters only through S(q). A box of
explicit molecules that satisfies the first by construction, with any liquid-like pair structure, tests the
formula independently of the S(q) chosen for vitreous ice: its own S(q), measured from its centres, put into the
formula, must give the power spectrum of the same atoms projected by the exact atom path.

The centres come from a quick soft-repulsion relaxation (random positions, overlaps below ``contact_a`` pushed
apart with a small random jitter, periodic minimum image): a dense simple liquid, not water's tetrahedral
network, so its first S(q) peak sits near 2π·1.1/contact (≈ 2.5 Å⁻¹), not at LDA ice's 1.70 Å⁻¹. Each centre
is an oxygen with two hydrogens at the gas-phase geometry in a uniformly random orientation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.rotations import random_rotations
from .structure import Atoms

#: molecules per Å³ of liquid water at 1.0 g/cm³
LIQUID_WATER_DENSITY_PER_A3 = 1.0 / 18.015 * 0.602214076
R_OH_A = 0.9572
HOH_DEG = 104.52
VERLET_EVERY = 8  # steps between neighbour-list refreshes (a centre moves ≲ 0.3 Å in that time)
VERLET_SKIN_A = 1.5


def _minimum_image(d: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    return d - box * torch.round(d / box)


def _close_pairs(x: torch.Tensor, box: torch.Tensor, cutoff_a: float, rows: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) with i < j of all pairs closer than ``cutoff_a`` (periodic), a block of rows at a time."""
    found = []
    for lo in range(0, len(x), rows):
        r = _minimum_image(x[lo:lo + rows, None, :] - x[None, :, :], box).norm(dim=-1)
        i, j = torch.nonzero(r < cutoff_a, as_tuple=True)
        i = i + lo
        found.append((i[i < j], j[i < j]))
    return torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found])


def relaxed_centres(box_a: tuple[float, float, float], *, density_per_a3: float = LIQUID_WATER_DENSITY_PER_A3,
                    contact_a: float = 2.75, steps: int = 80, jitter_a: float = 0.05,
                    seed: int = 0) -> np.ndarray:
    """(N, 3) molecule centres in [0, box) (Å), N = round(density × volume): uniform random positions relaxed
    by ``steps`` vectorised moves that push every overlapping pair (closer than ``contact_a``, periodic) apart
    by half its overlap each, plus a Gaussian jitter of ``jitter_a``."""
    box = torch.tensor(box_a, dtype=torch.float32)
    n = round(density_per_a3 * float(box.prod()))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 3), generator=gen) * box
    for step in range(steps):
        if step % VERLET_EVERY == 0:  # candidate pairs (i < j) within contact + skin, refreshed periodically
            i, j = _close_pairs(x, box, contact_a + VERLET_SKIN_A)
        d = _minimum_image(x[i] - x[j], box)
        r = d.norm(dim=-1)
        push = ((contact_a - r).clamp(min=0) / r.clamp(min=1e-3))[:, None] * d * 0.5
        move = torch.zeros_like(x).index_add_(0, i, push).index_add_(0, j, -push)
        x = torch.remainder(x + move + jitter_a * torch.randn((n, 3), generator=gen), box)
    return x.double().numpy()


def water_molecules(centres_a: np.ndarray, rng: np.random.Generator) -> Atoms:
    """O at each centre, two H at r_OH and the H–O–H angle, each molecule turned uniformly at random; B = 0."""
    n = len(centres_a)
    half = math.radians(HOH_DEG / 2)
    local = np.array([[0.0, 0.0, 0.0],
                      [R_OH_A * math.sin(half), 0.0, R_OH_A * math.cos(half)],
                      [-R_OH_A * math.sin(half), 0.0, R_OH_A * math.cos(half)]])
    rot = random_rotations(n, rng)
    pos = centres_a[:, None, :] + np.einsum("nij,aj->nai", rot, local)
    z = np.tile(np.array([8, 1, 1], dtype=np.int64), n)
    return Atoms(z, pos.reshape(-1, 3), np.zeros(3 * n), np.ones(3 * n), "pseudo-water")


def structure_factor(centres_a: np.ndarray, box_a: tuple[float, float, float], k_edges_per_a: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The centres' S(k) = |Σ_j exp(−2πi k·r_j)|²/N averaged over the box's reciprocal lattice vectors k ≠ 0 in
    radial bands [edges[i], edges[i+1]) (1/Å); returns (S per band, vectors per band). Separable: one matrix
    product per kz plane, no transform."""
    pos = torch.as_tensor(centres_a, dtype=torch.float64)
    k_max = float(k_edges_per_a[-1])
    axes = [torch.arange(-math.floor(k_max * b), math.floor(k_max * b) + 1, dtype=torch.float64) / b for b in box_a]
    e = [torch.exp(-2j * math.pi * pos[:, i:i + 1] * axes[i][None, :]) for i in range(3)]  # (N, M_i)
    kx, ky = axes[0], axes[1]
    k2_xy = kx[None, :] ** 2 + ky[:, None] ** 2
    edges = torch.as_tensor(k_edges_per_a, dtype=torch.float64)
    sums = torch.zeros(len(edges) - 1, dtype=torch.float64)
    counts = torch.zeros(len(edges) - 1, dtype=torch.float64)
    for iz, kz in enumerate(axes[2]):
        rho = (e[1].T @ (e[0] * e[2][:, iz:iz + 1])).abs() ** 2 / len(pos)  # (My, Mx)
        k = torch.sqrt(k2_xy + kz**2)
        band = torch.bucketize(k, edges, right=True) - 1
        ok = (band >= 0) & (band < len(sums)) & (k > 0)
        sums.index_add_(0, band[ok], rho[ok])
        counts.index_add_(0, band[ok], torch.ones_like(rho[ok]))
    return (sums / counts.clamp(min=1)).numpy(), counts.numpy()


__all__ = ["LIQUID_WATER_DENSITY_PER_A3", "relaxed_centres", "structure_factor", "water_molecules"]
