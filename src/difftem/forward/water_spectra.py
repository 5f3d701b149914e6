"""Explicit pseudo-water against the structured ice's spectrum formula: one box's two projected-potential power spectra.

A box of water molecules (specimen/pseudo_water.py) is projected by the exact atom path, and its configuration's own
S(q), measured from its centres, is put into P₃ = n C² [F₂ − F₁² + F₁² S(q)] (forward/ice.py) times the box depth.
The two must agree band by band: the check of the formula's normalisation, molecular factors and projection
(tests/test_pseudo_water.py, examples/pseudo_water.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.fft import rfft2
from ..core.grid import Grid
from ..specimen.pseudo_water import relaxed_centres, structure_factor, water_molecules
from .ice import ice_power_spectrum_3d
from .potential import IceModel, SlicedPotential, atoms_to_tensors
from .scattering import ScatteringTable


def pseudo_water_spectra(box_a: tuple[float, float, float], pixel_a: float, seed: int, table: ScatteringTable,
                         s_edges_per_a: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(explicit, formula) power spectra (V²·Å⁴, rfft layout of the box's (H, W) = box_y, box_x / pixel grid) of one
    relaxed pseudo-water box, and its S measured in the bands ``s_edges_per_a`` (spatial frequency, 1/Å)."""
    centres = relaxed_centres(box_a, seed=seed)
    s_band, _ = structure_factor(centres, box_a, s_edges_per_a)
    k_mid = 0.5 * (s_edges_per_a[1:] + s_edges_per_a[:-1])

    def s_of_q(q_per_a: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.interp(q_per_a.numpy() / (2 * math.pi), k_mid, s_band))

    atoms = water_molecules(centres - np.asarray(box_a) / 2, np.random.default_rng(seed))
    grid = Grid((round(box_a[1] / pixel_a), round(box_a[0] / pixel_a)), pixel_a)
    # one slice deeper than the box: the whole projection, exact on the grid
    v = SlicedPotential(*atoms_to_tensors(atoms, dtype=torch.float64), grid, table, box_a[2] + 10, IceModel(0.0),
                        dtype=torch.complex128).project().real
    explicit = rfft2(v).abs() ** 2 * pixel_a**4 / (box_a[0] * box_a[1])  # |∫ v e^{-2πik·r} d²r|² / A
    explicit[0, 0] = 0.0
    n = len(centres) / float(np.prod(box_a))
    formula = box_a[2] * ice_power_spectrum_3d(grid.k2("cpu", torch.float64, half=True), table, density_per_a3=n,
                                               structure_factor=s_of_q)
    return explicit, formula, s_band
