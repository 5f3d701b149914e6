"""Chemical elements: the atomic numbers difftem simulates and their standard atomic masses."""

from __future__ import annotations

import functools
import signal
import threading

import numpy as np

#: Highest atomic number with scattering factors (the tables cover Z = 1…92).
MAX_Z = 92


def gemmi_module():
    """gemmi, imported with SIGINT held back: a Ctrl-C landing inside its extension's initialisation makes the
    binding layer terminate the process (abort, a C++ traceback) instead of raising KeyboardInterrupt. Held, the
    interrupt arrives right after the import, as a KeyboardInterrupt."""
    held = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if held else None
    try:
        import gemmi
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return gemmi


@functools.cache
def _mass_table_da() -> np.ndarray:
    gemmi = gemmi_module()
    return np.array([0.0] + [gemmi.Element(z).weight for z in range(1, MAX_Z + 1)])


def atomic_mass_da(atomic_number: np.ndarray) -> np.ndarray:
    """Standard atomic weight (Da) per atomic number (0 for Z = 0)."""
    return _mass_table_da()[np.asarray(atomic_number, dtype=np.int64)]
