"""Plain-text inputs: the checked reader every text file a user names goes through, and TEM-simulator's numeric
tables (particle coordinates, transforms, tilt geometry, doses, defoci).

Errors name the file and the line and say what was expected; they never quote the file's content (a path given by
mistake, e.g. a system file, must not be echoed).
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from ..core.rotations import rotation_zxz_deg

#: The largest text input read (bytes): a TEM-simulator coordinate file of 10⁶ particles is about 70 MB.
MAX_TEXT_BYTES = 128 * 2**20


def read_text_file(path: str | Path, what: str = "file", *, error: type[FormatError] = FormatError,
                   max_bytes: int = MAX_TEXT_BYTES, missing: str | None = None) -> str:
    """The text of a user-named file, refused with ``error`` (a :class:`FormatError` or one with its signature)
    naming the file (and line) when it is missing (``missing``: the fix, as in :func:`regular_file`), not a regular
    file (a directory, a device or a pipe, which could block), larger than ``max_bytes``, binary (a NUL byte) or not
    UTF-8."""
    path = Path(path)
    info = regular_file(path, what, error=error, missing=missing)
    if info.st_size > max_bytes:
        raise error(f"{what} holds {info.st_size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB a text "
                    "input may hold; is it the right file?", file=path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} ({_os_reason(exc)})", file=path) from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise error(f"binary content (a NUL byte); a {what} must be plain text", file=path,
                    line=data.count(b"\n", 0, nul) + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); a {what} must be plain text", file=path,
                    line=data.count(b"\n", 0, exc.start) + 1) from None


def regular_file(path: Path, what: str = "file", *, error: type[FormatError] = FormatError,
                 give: str = "a file", missing: str | None = None) -> os.stat_result:
    """``path``'s stat when it is a regular file; otherwise ``error`` naming the file: missing, unreadable (a NUL
    byte or an over-long name, permissions), a directory, or a device or pipe (which could block a reader).
    ``give`` says what to give instead; ``missing`` what to do about a missing file (default: check the path)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        # a relative path is looked for from the working folder, which the user may not have in mind
        looked = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        raise error(f"{what} not found{looked}; {missing or 'check the path'}", file=path) from None
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {what} ({_os_reason(exc)})", file=path) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} is a directory; give {give}", file=path)
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} is not a regular file (a device or a pipe); give {give}", file=path)
    return info


def _os_reason(exc: Exception) -> str:
    """An OS error's reason without the file name it repeats (the message names the file once)."""
    return getattr(exc, "strerror", None) or exc.__class__.__name__


def read_table(path: str | Path, *, columns: int | tuple[int, ...] | None = None, rows: int | None = None,
               what: str = "table", missing: str | None = None) -> np.ndarray:
    """A TEM-simulator tabular text file: ``#`` comment lines, a line ``m n``, then m rows of n numbers.

    ``columns``: allowed column counts; ``rows``: the number of rows needed (the file may hold more;
    the extra rows are not used, as in TEM-simulator); ``missing``: the fix for a missing file (:func:`regular_file`).
    Returns an (m or rows, n) float64 array.
    """
    path = Path(path)
    text = read_text_file(path, what, missing=missing)
    body = ((i, ln) for i, ln in enumerate(text.splitlines(), start=1)
            if ln.strip() and not ln.lstrip().startswith("#"))
    head_line, m, n = _size_line(body, path, what)
    allowed = (columns,) if isinstance(columns, int) else columns
    if allowed and n not in allowed:
        raise FormatError(f"{what} must have {' or '.join(map(str, allowed))} columns, the size line says {n}",
                          file=path, line=head_line)
    need = m if rows is None else rows
    if need > m:
        raise FormatError(f"{what} holds {m} rows but {need} are needed", file=path, line=head_line)
    if need * n > len(text) // 2 + 1024:  # a number takes a character and a separator: refuse before allocating
        raise FormatError(f"the size line declares {need} x {n} numbers, more than the {what} can hold", file=path,
                          line=head_line)
    out = np.empty((need, n), dtype=np.float64)
    last = head_line
    for r in range(need):
        i, line = next(body, (0, ""))
        if not i:
            raise FormatError(f"{what} declares {m} rows but only {r} follow", file=path, line=last)
        out[r] = _row(line, r, n, path, i)
        last = i
    return out


def _size_line(body, path: Path, what: str) -> tuple[int, int, int]:
    """(line number, m, n) of a table's size line ``m n``."""
    head_line, head = next(body, (0, ""))
    if not head_line:
        raise FormatError(f"{what} has no size line 'rows columns'", file=path)
    try:
        words = head.split()
        if len(words) < 2:
            raise ValueError
        m, n = int(words[0]), int(words[1])
    except ValueError:
        raise FormatError(f"the first line of the {what} must be 'rows columns' (two integers)", file=path,
                          line=head_line) from None
    if m < 0 or n < 1:
        raise FormatError(f"bad size {m} x {n} (rows ≥ 0, columns ≥ 1)", file=path, line=head_line)
    return head_line, m, n


def _row(line: str, r: int, n: int, path: Path, lineno: int) -> list[float]:
    """The first ``n`` numbers of data row ``r`` (0-based), each finite."""
    words = line.split()
    if len(words) < n:
        raise FormatError(f"row {r + 1} has {len(words)} numbers, {n} expected", file=path, line=lineno)
    values = []
    for k, word in enumerate(words[:n]):
        try:
            value = float(word)
        except ValueError:
            raise FormatError(f"row {r + 1} is not {n} numbers: value {k + 1} is not a number", file=path,
                              line=lineno) from None
        if not math.isfinite(value):
            raise FormatError(f"row {r + 1}: value {k + 1} is not a finite number", file=path, line=lineno)
        values.append(value)
    return values


#: What a transform file holds, for the fix of a missing one.
TRANSFORMS_FIX = ("give the path of a TEM-simulator transform file (a line 'rows columns', then 3 rows of "
                  "'R R R t' per copy, or one row of 't_x t_y t_z phi theta psi' per copy)")


def read_transforms_file(path: str | Path, *, missing: str = TRANSFORMS_FIX) -> np.ndarray:
    """Copies making one particle, from a TEM-simulator ``pdb_transf_file_in`` file: (n, 3, 4) float64,
    rotation | translation (Å), so that copy k of an atom at r is R_k r + t_k.

    Four columns: three rows per copy, each ``R_i0 R_i1 R_i2 t_i``. Six columns: one row per copy,
    ``t_x t_y t_z φ θ ψ`` (Å, degrees), rotation Rz(ψ)·Rx(θ)·Rz(φ). ``missing``: the fix for a missing file.
    """
    table = read_table(path, columns=(4, 6), what="transform file", missing=missing)
    if table.shape[1] == 6:
        rot = rotation_zxz_deg(table[:, 3], table[:, 4], table[:, 5])
        return np.concatenate([rot, table[:, :3, None]], axis=2)
    if table.shape[0] % 3:
        raise FormatError(f"a 4-column transform file needs 3 rows per copy; it has {table.shape[0]} rows", file=path)
    ops = table.reshape(-1, 3, 4)
    if len(ops) == 0:
        raise FormatError("the transform file lists no copies", file=path)
    return ops
