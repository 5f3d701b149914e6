"""Plain-text numeric tables: TEM-simulator's particle coordinate and transform files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from ..core.rotations import rotation_zxz_deg


def read_table(path: str | Path, *, columns: int | tuple[int, ...] | None = None, rows: int | None = None,
               what: str = "table") -> np.ndarray:
    """A TEM-simulator tabular text file: ``#`` comment lines, a line ``m n``, then m rows of n numbers.

    ``columns``: allowed column counts; ``rows``: the number of rows needed (the file may hold more;
    the extra rows are not used, as in TEM-simulator). Returns an (m or rows, n) float64 array.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FormatError(f"{what} not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"cannot read {what} ({exc})", file=path) from None
    body = [(i, ln.split()) for i, ln in enumerate(lines, start=1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not body:
        raise FormatError(f"{what} has no size line 'rows columns'", file=path)
    head_line, head = body[0]
    try:
        m, n = int(head[0]), int(head[1])
    except (IndexError, ValueError):
        raise FormatError(f"the first line must be 'rows columns' (two integers), got {' '.join(head)!r}", file=path,
                       line=head_line) from None
    if m < 0 or n < 1:
        raise FormatError(f"bad size {m} x {n}", file=path, line=head_line)
    allowed = (columns,) if isinstance(columns, int) else columns
    if allowed and n not in allowed:
        raise FormatError(f"{what} must have {' or '.join(map(str, allowed))} columns, the size line says {n}",
                       file=path, line=head_line)
    need = m if rows is None else rows
    if need > m:
        raise FormatError(f"{what} holds {m} rows but {need} are needed", file=path, line=head_line)
    data = body[1:1 + need]
    if len(data) < need:
        raise FormatError(f"{what} declares {m} rows but only {len(data)} follow", file=path,
                       line=data[-1][0] if data else head_line)
    out = np.empty((need, n), dtype=np.float64)
    for r, (i, words) in enumerate(data):
        try:
            out[r] = [float(w) for w in words[:n]]
        except ValueError:
            raise FormatError(f"row {r + 1} is not {n} numbers: {' '.join(words)!r}", file=path, line=i) from None
        if len(words) < n:
            raise FormatError(f"row {r + 1} has {len(words)} numbers, {n} expected", file=path, line=i)
    return out


def read_transforms_file(path: str | Path) -> np.ndarray:
    """Copies making one particle, from a TEM-simulator ``pdb_transf_file_in`` file: (n, 3, 4) float64,
    rotation | translation (Å), so that copy k of an atom at r is R_k r + t_k.

    Four columns: three rows per copy, each ``R_i0 R_i1 R_i2 t_i``. Six columns: one row per copy,
    ``t_x t_y t_z φ θ ψ`` (Å, degrees), rotation Rz(ψ)·Rx(θ)·Rz(φ).
    """
    table = read_table(path, columns=(4, 6), what="transform file")
    if table.shape[1] == 6:
        rot = rotation_zxz_deg(table[:, 3], table[:, 4], table[:, 5])
        return np.concatenate([rot, table[:, :3, None]], axis=2)
    if table.shape[0] % 3:
        raise FormatError(f"a 4-column transform file needs 3 rows per copy; it has {table.shape[0]} rows", file=path)
    ops = table.reshape(-1, 3, 4)
    if len(ops) == 0:
        raise FormatError("the transform file lists no copies", file=path)
    return ops
