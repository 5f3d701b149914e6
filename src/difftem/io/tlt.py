"""Reading and writing tilt series (MRC stack + IMOD-style .tlt) and volumes, with one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import FormatError


def parse_tlt(text: str, source: str = ".tlt") -> np.ndarray:
    """Angles (degrees) from .tlt text: one number per line; blank lines and '#' comments are skipped."""
    angles = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.replace(",", " ").split()
        if len(fields) != 1:
            raise FormatError(f"{source}: line {lineno} has {len(fields)} values ({raw.strip()!r}); a .tlt file holds "
                            f"one tilt angle in degrees per line")
        try:
            value = float(fields[0])
        except ValueError:
            raise FormatError(f"{source}: line {lineno} is not a number ({raw.strip()!r}); a .tlt file holds one tilt "
                            f"angle in degrees per line") from None
        if not math.isfinite(value):
            raise FormatError(f"{source}: line {lineno} is not a finite angle ({raw.strip()!r})")
        angles.append(value)
    if not angles:
        raise FormatError(f"{source}: no tilt angles found (one angle in degrees per line expected)")
    return np.asarray(angles, dtype=np.float64)


def read_tlt(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FormatError(f"--tlt: file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"--tlt: cannot read {path} as text ({exc.__class__.__name__})") from None
    return parse_tlt(text, str(path))


def write_tlt(path: str | Path, angles_deg) -> Path:
    """IMOD-style .tlt: one angle per line, written atomically."""
    from .files import atomic_path

    lines = [f"{float(a):.3f}" for a in np.asarray(angles_deg, dtype=np.float64).reshape(-1)]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def read_volume_mrc(path: str | Path, what: str, pixel_size_a: float | None = None, ndim: int = 3,
                    required: bool = True) -> tuple[np.ndarray, float | None]:
    """(array, pixel size Å) of an MRC file; a voxel size of 0 in the header needs ``pixel_size_a``
    (or gives None when not ``required``)."""
    from .files import read_mrc

    path = Path(path)
    if not path.exists():
        raise FormatError(f"{what}: file {path} not found")
    try:
        data, header_px = read_mrc(path)
    except Exception as exc:  # mrcfile raises ValueError/OSError for non-MRC files
        raise FormatError(f"{what}: {path} is not a readable MRC file ({str(exc).splitlines()[0][:120]})") from None
    if data.ndim != ndim:
        kind = "a stack (n_tilts, H, W)" if what == "tilt series" else "a 3-D volume (Z, Y, X)"
        raise FormatError(f"{what}: {path} holds an array of shape {data.shape}; expected {kind}")
    if pixel_size_a is not None:
        if not (pixel_size_a > 0 and math.isfinite(pixel_size_a)):
            raise FormatError(f"--pixel-size: {pixel_size_a} Å must be a positive number")
        px = float(pixel_size_a)
    elif header_px > 0 and math.isfinite(header_px):
        px = header_px
    elif not required:
        px = None
    else:
        raise FormatError(f"{what}: {path} has no pixel size in its header (voxel size {header_px:g}); pass "
                        f"--pixel-size in Å")
    return data.astype(np.float32, copy=False), px
