"""Reading and writing tilt series (MRC stack + IMOD-style .tlt) and volumes, with one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from .files import read_mrc, write_text
from .star import read_star


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
    """Angles (degrees) of an IMOD-style .tlt file; errors name the file (callers add their option's name)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read as text ({exc.__class__.__name__})") from None
    return parse_tlt(text, str(path))


#: Decimals of the angles in every .tlt difftem writes (simulated series and dataset items alike).
TLT_DECIMALS = 2


def tlt_text(angles_deg) -> str:
    """IMOD-style .tlt text: one angle (degrees, :data:`TLT_DECIMALS` decimals) per line, in stack order."""
    return "".join(f"{float(a):.{TLT_DECIMALS}f}\n" for a in np.asarray(angles_deg, dtype=np.float64).reshape(-1))


def write_tlt(path: str | Path, angles_deg) -> Path:
    """Write :func:`tlt_text` of ``angles_deg`` to ``path`` atomically."""
    return write_text(path, tlt_text(angles_deg))


def _tilts_star_rows(path: Path):
    """The per-tilt table of a difftem/RELION tilts.star (the first loop with a stage tilt angle column)."""
    import pandas as pd

    for block in read_star(path).values():
        if isinstance(block, pd.DataFrame) and "rlnTomoNominalStageTiltAngle" in block.columns:
            return block
    raise FormatError(f"{path}: no loop with _rlnTomoNominalStageTiltAngle (one row per tilt)")


def angles_beside(stack: str | Path) -> tuple[np.ndarray, Path] | None:
    """Tilt angles found next to a stack: ``<stem>.tlt``, else the rows of ``tilts.star``; None when neither."""
    stack = Path(stack)
    tlt = stack.with_suffix(".tlt")
    if tlt.is_file():
        return read_tlt(tlt), tlt
    star = stack.with_name("tilts.star")
    if star.is_file():
        angles = _tilts_star_rows(star)["rlnTomoNominalStageTiltAngle"]
        try:
            return np.array(angles.to_numpy(dtype=np.float64)), star  # a writable copy
        except (TypeError, ValueError):
            raise FormatError(f"{star}: _rlnTomoNominalStageTiltAngle holds values that are not numbers") from None
    return None


def tilt_axis_beside(stack: str | Path) -> tuple[float, Path] | None:
    """The tilt-axis angle (degrees) recorded next to a stack: ``tilts.star`` (_rlnTomoNominalTiltAxisAngle), else
    ``run.json`` (``tilt_axis_deg``); None when neither records one."""
    import json

    stack = Path(stack)
    star = stack.with_name("tilts.star")
    if star.is_file():
        rows = _tilts_star_rows(star)
        if "rlnTomoNominalTiltAxisAngle" in rows.columns and len(rows):
            try:
                axes = rows["rlnTomoNominalTiltAxisAngle"].to_numpy(dtype=np.float64)
            except (TypeError, ValueError):
                raise FormatError(f"{star}: _rlnTomoNominalTiltAxisAngle holds values that are not numbers") from None
            if not np.allclose(axes, axes[0]) or not math.isfinite(axes[0]):
                raise FormatError(f"{star}: _rlnTomoNominalTiltAxisAngle differs between tilts ({axes.min():g} to "
                                  f"{axes.max():g}°); one tilt axis per series expected")
            return float(axes[0]), star
    run = stack.with_name("run.json")
    if run.is_file():
        try:
            value = json.loads(run.read_text()).get("tilt_axis_deg")
        except (OSError, ValueError, AttributeError):
            raise FormatError(f"{run}: not a readable JSON run record") from None
        if value is not None:
            try:
                axis = float(value)
            except (TypeError, ValueError):
                raise FormatError(f"{run}: tilt_axis_deg {value!r} is not a number") from None
            if not math.isfinite(axis):
                raise FormatError(f"{run}: tilt_axis_deg {value!r} is not a finite angle")
            return axis, run
    return None


class MissingPixelSizeError(FormatError):
    """An MRC header without a voxel size, and no pixel size given."""


def read_volume_mrc(path: str | Path, what: str, pixel_size_a: float | None = None, ndim: int = 3,
                    required: bool = True) -> tuple[np.ndarray, float | None]:
    """(array, pixel size Å) of an MRC file; a voxel size of 0 in the header needs ``pixel_size_a``
    (or gives None when not ``required``; else :class:`MissingPixelSizeError`). ``what`` names the input in errors."""
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
            raise FormatError(f"pixel size {pixel_size_a} Å for {path}: must be a positive number")
        px = float(pixel_size_a)
    elif header_px > 0 and math.isfinite(header_px):
        px = header_px
    elif not required:
        px = None
    else:
        raise MissingPixelSizeError(f"{what}: {path} has no pixel size in its header (voxel size {header_px:g}); "
                                    f"give the pixel size in Å")
    return data.astype(np.float32, copy=False), px
