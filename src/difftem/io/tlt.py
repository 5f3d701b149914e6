"""Reading and writing tilt series (MRC stack + IMOD-style .tlt) and volumes, with one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from .files import write_text
from .star import read_star
from .tables import read_text_file, regular_file


def parse_tlt(text: str, source: str = ".tlt") -> np.ndarray:
    """Angles (degrees) from .tlt text: one number per line; blank lines and '#' comments are skipped. Errors name
    ``source`` and the line, not the line's content."""
    angles = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.replace(",", " ").split()
        if len(fields) != 1:
            raise FormatError(f"line {lineno} has {len(fields)} values; a .tlt file holds one tilt angle in degrees "
                              "per line", file=source, line=lineno)
        try:
            value = float(fields[0])
        except ValueError:
            raise FormatError(f"line {lineno} is not a number; a .tlt file holds one tilt angle in degrees per line",
                              file=source, line=lineno) from None
        if not math.isfinite(value):
            raise FormatError(f"line {lineno} is not a finite angle (NaN or inf)", file=source, line=lineno)
        angles.append(value)
    if not angles:
        raise FormatError("no tilt angles found (one angle in degrees per line expected)", file=source)
    return np.asarray(angles, dtype=np.float64)


#: What a .tlt file holds, for the fix of a missing one.
TLT_FIX = "give a .tlt file: one tilt angle (degrees) per line, in stack order"


def read_tlt(path: str | Path, *, missing: str = TLT_FIX) -> np.ndarray:
    """Angles (degrees) of an IMOD-style .tlt file; errors name the file (callers add their option's name);
    ``missing``: the fix for a missing file (:func:`~difftem.io.tables.regular_file`)."""
    path = Path(path)
    return parse_tlt(read_text_file(path, ".tlt file", missing=missing), str(path))


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


def _numeric_column(rows, label: str, star: Path) -> np.ndarray:
    """A STAR column as a writable float64 array; :class:`FormatError` naming the file when it is not numbers."""
    try:
        return np.array(rows[label].to_numpy(dtype=np.float64))
    except (TypeError, ValueError):
        raise FormatError(f"{star}: _{label} holds values that are not numbers") from None


def angles_beside(stack: str | Path) -> tuple[np.ndarray, Path] | None:
    """Tilt angles found next to a stack: ``<stem>.tlt``, else the rows of ``tilts.star``; None when neither."""
    stack = Path(stack)
    tlt = stack.with_suffix(".tlt")
    if tlt.is_file():
        return read_tlt(tlt), tlt
    star = stack.with_name("tilts.star")
    if star.is_file():
        return _numeric_column(_tilts_star_rows(star), "rlnTomoNominalStageTiltAngle", star), star
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
            axes = _numeric_column(rows, "rlnTomoNominalTiltAxisAngle", star)
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


#: Bytes per value of the MRC modes (101: 4-bit, two values a byte).
_MRC_MODE_BYTES = {0: 1.0, 1: 2.0, 2: 4.0, 3: 4.0, 4: 8.0, 6: 2.0, 12: 2.0, 101: 0.5}


def _mrc_header(path: Path) -> None:
    """Check an MRC file's header before it is read: 1024 bytes, the 'MAP ' identifier, a known mode, positive
    dimensions and (for a plain file) as many bytes as the header declares."""
    import gzip

    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(1024)
    except EOFError:
        raise FormatError("truncated: the compressed file ends inside the MRC header", file=path) from None
    except OSError as exc:  # gzip.BadGzipFile is an OSError
        raise FormatError(f"cannot read an MRC header ({exc.__class__.__name__})", file=path) from None
    if len(head) < 1024:
        raise FormatError(f"truncated: {len(head)} bytes, shorter than an MRC header (1024 bytes)", file=path)
    order = ">" if head[212] == 0x11 else "<"
    nx, ny, nz, mode = (int(v) for v in np.frombuffer(head[:16], dtype=f"{order}i4"))
    plausible = mode in _MRC_MODE_BYTES and min(nx, ny, nz) > 0 and max(nx, ny, nz) < 2**20
    if head[208:212] != b"MAP " and not (head[208:212] == bytes(4) and plausible):
        # older writers leave the identifier blank (and the machine stamp): accepted when the sizes are plausible
        raise FormatError("not an MRC file (no 'MAP ' identifier at byte 208)", file=path)
    ext = int(np.frombuffer(head[92:96], dtype=f"{order}i4")[0])
    if mode not in _MRC_MODE_BYTES:
        raise FormatError(f"MRC mode {mode} is not a known data type (0, 1, 2, 3, 4, 6, 12, 101)", file=path)
    if min(nx, ny, nz) < 1:
        raise FormatError(f"the header declares an empty array ({nx} x {ny} x {nz} values)", file=path)
    if ext < 0:
        raise FormatError(f"the header declares a negative extended header ({ext} bytes)", file=path)
    need = 1024 + ext + math.ceil(nx * ny * nz * _MRC_MODE_BYTES[mode])
    size = path.stat().st_size
    if not gz and size < need:
        raise FormatError(f"truncated: the header declares {nx} x {ny} x {nz} values (mode {mode}) and {ext} "
                          f"extended-header bytes, {need} bytes in all, but the file holds {size}", file=path)


def read_mrc_checked(path: str | Path, what: str = "MRC file", *, missing: str | None = None
                     ) -> tuple[np.ndarray, float]:
    """(float32 array, voxel size Å or 0.0 when the header has none) of a user-named MRC file (.gz ok).

    Anything but finite real data in a well-formed file raises :class:`FormatError` naming the file: a missing
    file, a directory, a truncated file or header, a wrong identifier or mode, an empty array, complex values,
    one-dimensional data (a side of one pixel), NaN or infinite pixels (with their count); ``missing``: the fix for
    a missing file (:func:`~difftem.io.tables.regular_file`)."""
    import warnings

    import mrcfile

    path = Path(path)
    regular_file(path, what, give="an MRC file", missing=missing)
    _mrc_header(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # permissive reading turns problems into warnings
            with mrcfile.open(path, permissive=True) as mrc:
                data = None if mrc.data is None else np.asarray(mrc.data).copy()
                px = float(mrc.voxel_size.x)
    except EOFError:
        raise FormatError("truncated: the compressed file ends before the data", file=path) from None
    except Exception as exc:  # mrcfile/gzip/numpy raise many kinds on a corrupt file
        raise FormatError(f"not a readable MRC file ({exc.__class__.__name__})", file=path) from None
    if data is None:
        why = next((str(w.message).splitlines()[0][:160] for w in caught), "no data block")
        raise FormatError(f"not a readable MRC file ({why})", file=path)
    if data.size == 0:
        raise FormatError("holds an empty array", file=path)
    if np.iscomplexobj(data):
        raise FormatError("holds complex values; real images expected", file=path)
    if data.ndim < 2 or min(data.shape[-2:]) < 2:
        raise FormatError(f"holds one-dimensional data (shape {data.shape}); images of at least 2 x 2 pixels "
                          "expected", file=path)
    data = data.astype(np.float32, copy=False)
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise FormatError(f"holds {bad} NaN or infinite pixel{'s' if bad > 1 else ''} (of {data.size}); only finite "
                          "values can be used", file=path)
    return data, (px if math.isfinite(px) and px > 0 else 0.0)


def read_volume_mrc(path: str | Path, what: str, pixel_size_a: float | None = None, ndim: int = 3,
                    required: bool = True, *, missing: str | None = None) -> tuple[np.ndarray, float | None]:
    """(array, pixel size Å) of an MRC file (read by :func:`read_mrc_checked`); a voxel size of 0 in the header
    needs ``pixel_size_a`` (or gives None when not ``required``; else :class:`MissingPixelSizeError`). ``what``
    names the input in errors; ``missing``: the fix for a missing file."""
    path = Path(path)
    data, header_px = read_mrc_checked(path, what, missing=missing)
    return data, checked_pixel_size(path, what, data.shape, ndim, header_px, pixel_size_a, required)


def checked_pixel_size(path: Path, what: str, shape: tuple[int, ...], ndim: int, header_px: float,
                       pixel_size_a: float | None, required: bool) -> float | None:
    """The pixel size :func:`read_volume_mrc` gives an array of ``shape`` whose header says ``header_px`` (0: none),
    after checking its dimensionality."""
    if len(shape) != ndim:
        kind = "a stack (n_tilts, H, W)" if what == "tilt series" else "a 3-D volume (Z, Y, X)"
        raise FormatError(f"{what}: {path} holds an array of shape {tuple(shape)}; expected {kind}")
    if pixel_size_a is not None:
        if not (pixel_size_a > 0 and math.isfinite(pixel_size_a)):
            raise FormatError(f"pixel size {pixel_size_a} Å for {path}: must be a positive number")
        return float(pixel_size_a)
    if header_px > 0:
        return header_px
    if not required:
        return None
    raise MissingPixelSizeError(f"{what}: {path} has no pixel size in its header (voxel size {header_px:g}); "
                                f"give the pixel size in Å")
