"""IMOD transform files (.xf): one line per image, ``A11 A12 A21 A22 DX DY``.

A line maps a raw image's coordinates to the aligned image's: x' = A·(x − c) + D + c, with c the image centre
and D in pixels; IMOD's newstack applies it (the aligned image at x' takes the raw value at x)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from .files import write_text


def xf_text(matrices, shifts_px) -> str:
    a = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 2)
    d = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    if len(a) != len(d):
        raise ValueError(f"write_xf: {len(a)} matrices but {len(d)} shifts")
    return "".join(f"{m[0, 0]:12.7f}{m[0, 1]:12.7f}{m[1, 0]:12.7f}{m[1, 1]:12.7f}{s[0]:12.3f}{s[1]:12.3f}\n"
                   for m, s in zip(a, d, strict=True))


def write_xf(path: str | Path, matrices, shifts_px) -> Path:
    """Write (n, 2, 2) matrices and (n, 2) shifts (DX, DY px) as an IMOD .xf, atomically."""
    return write_text(path, xf_text(matrices, shifts_px))


def read_xf(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(matrices (n, 2, 2), shifts (n, 2)) of an IMOD .xf; a malformed line is a FormatError naming it."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read ({exc})") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            v = [float(t) for t in line.split()]
        except ValueError:
            v = []
        if len(v) != 6 or not np.all(np.isfinite(v)):
            raise FormatError(f"{path}:{i}: expected six numbers A11 A12 A21 A22 DX DY, got {line.strip()[:80]!r}")
        rows.append(v)
    if not rows:
        raise FormatError(f"{path}: no transforms")
    arr = np.asarray(rows)
    return arr[:, :4].reshape(-1, 2, 2), arr[:, 4:]
