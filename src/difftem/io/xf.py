"""IMOD transform files (.xf): one line per image, ``A11 A12 A21 A22 DX DY``.

A line maps a raw image's coordinates to the aligned image's: x' = A·(x − c) + D + c, with c the image centre
and D in pixels; IMOD's newstack applies it (the aligned image at x' takes the raw value at x)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import imod


def write_xf(path: str | Path, matrices, shifts_px) -> Path:
    """Write (n, 2, 2) matrices and (n, 2) shifts (DX, DY px) as an IMOD .xf, atomically (through
    :func:`difftem.io.imod.write_xf`, the one writer of the format)."""
    a = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 2)
    d = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    if len(a) != len(d):
        raise ValueError(f"write_xf: {len(a)} matrices but {len(d)} shifts")
    return imod.write_xf(path, np.concatenate([a, d[:, :, None]], axis=2))


def read_xf(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(matrices (n, 2, 2), shifts (n, 2)) of an IMOD .xf (read by :func:`difftem.io.imod.read_xf`)."""
    t = imod.read_xf(path)
    return t[:, :, :2], t[:, :, 2]
