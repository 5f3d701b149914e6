"""Chemical elements: the atomic numbers difftem simulates and their standard atomic masses."""

from __future__ import annotations

import functools

import numpy as np

#: Highest atomic number with scattering factors (the tables cover Z = 1…92).
MAX_Z = 92


@functools.cache
def _mass_table_da() -> np.ndarray:
    import gemmi

    return np.array([0.0] + [gemmi.Element(z).weight for z in range(1, MAX_Z + 1)])


def atomic_mass_da(atomic_number: np.ndarray) -> np.ndarray:
    """Standard atomic weight (Da) per atomic number (0 for Z = 0)."""
    return _mass_table_da()[np.asarray(atomic_number, dtype=np.int64)]
