"""STAR files, the tables RELION and its neighbours read: one writer and one reader, both the ``starfile`` package's.

Every STAR file difftem writes goes through :func:`write_star` (atomically, with the conventions as ``#`` comment
lines at the top, which RELION and ``starfile`` skip); every one it reads goes through :func:`read_star`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import DataFileError, FormatError
from .files import atomic_path
from .tables import read_text_file

STAR_CONVENTION = (
    "difftem ground truth. rlnCoordinateX/Y: particle centre in pixels (x = column, y = row, pixel [0, 0] first)\n"
    "rlnAngleRot/Tilt/Psi: RELION convention (the reference map rotated by A(rot, tilt, psi), projected along z)\n"
    "difftemPositionX/Y/Z_A: centre in Å, scene frame (origin at the field centre and the ice mid-plane, beam +z)\n"
    "difftemEulerZyz*: active r_scene = Rz(phi) Ry(theta) Rz(psi) r_model + position")


def _frame(block):
    """A loop block as a DataFrame (an empty list keeps one column, so the loop stays valid); pair blocks pass."""
    import pandas as pd

    if isinstance(block, (pd.DataFrame, dict)):
        return block
    rows = list(block)
    if not rows:
        return pd.DataFrame(columns=["rlnMicrographName"])
    return pd.DataFrame.from_records([{k: _plain(v) for k, v in row.items()} for row in rows])


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def write_star(path: str | Path, blocks: dict, comment: str = "", float_format: str = "%.6f") -> Path:
    """Write ``blocks`` ({name: rows | DataFrame | dict}) as one STAR file, atomically; ``comment`` lines go first as
    ``#`` lines (RELION and starfile skip them)."""
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines()) if comment else ""
    loops = [_loop_text(name, block, float_format) for name, block in blocks.items()]
    if all(text is not None for text in loops):  # plain rows: the same text starfile writes, without pandas
        with atomic_path(path) as tmp:
            tmp.write_text(head + "# Created by difftem\n\n\n" + "".join(loops))
        return Path(path)
    import starfile

    frames = {name: _frame(block) for name, block in blocks.items()}
    with atomic_path(path) as tmp:
        starfile.write(frames, tmp, float_format=float_format)
        if head:
            tmp.write_text(head + tmp.read_text())
    return Path(path)


def _loop_text(name: str, block, float_format: str) -> str | None:
    """A loop block of rows (dicts with the same keys, in the same order) as starfile writes it through pandas: one
    column type per label (all int: integers; int and float: floats in ``float_format``; bool; str, quoted when
    empty or holding a space), tab-separated; None for anything else (DataFrames, pairs, missing keys, mixed
    columns, no rows), which goes through starfile; but an empty DataFrame gives its labels and no rows (a table
    with nothing in it keeps its columns, and the file gets no starfile time stamp)."""
    if hasattr(block, "columns") and len(block) == 0 and len(block.columns):
        labels = [str(c) for c in block.columns]
        return _loop_header(name, labels) + "\n\n" if _plain_labels(labels) else None
    if not isinstance(block, (list, tuple)) or not block or not all(isinstance(r, dict) for r in block):
        return None
    labels = list(block[0])
    if any(list(r) != labels for r in block) or not _plain_labels(labels):
        return None
    columns = []
    for label in labels:
        values = [_plain(r[label]) for r in block]
        kinds = {_kind(v) for v in values}
        if kinds == {"int"}:
            columns.append([str(int(v)) for v in values])
        elif kinds <= {"int", "float"}:
            columns.append(["<NA>" if v != v else float_format % v for v in values])
        elif kinds == {"bool"}:
            columns.append([str(bool(v)) for v in values])
        elif kinds == {"str"}:
            columns.append([f'"{v}"' if (" " in v or not v) else v for v in values])
        else:
            return None
    rows = "".join("\t".join(cells) + "\n" for cells in zip(*columns, strict=True))
    return _loop_header(name, labels) + rows + "\n\n"


def _plain_labels(labels) -> bool:
    """Labels written as they are: not empty, no white space."""
    return all(str(k) and not any(c.isspace() for c in str(k)) for k in labels)


def _loop_header(name: str, labels) -> str:
    return f"data_{name}\n\nloop_\n" + "".join(f"_{label} #{i}\n" for i, label in enumerate(labels, 1))


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    return "str" if isinstance(v, str) else "other"


@dataclass
class _Block:
    """One ``data_`` block as written: its table's labels and rows (tokens), each with its line number."""

    name: str
    line: int
    labels: list[tuple[str, int]] = field(default_factory=list)
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    loop: bool = False


_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|\S+""")


def _tokens(line: str) -> list[str]:
    """The values on a STAR line (quoted strings whole), up to a ``#`` comment."""
    out = []
    for token in _TOKEN.findall(line):
        if token.startswith("#"):
            break
        out.append(token)
    return out


def _scan(text: str, path: Path, error: type[FormatError] = FormatError) -> list[_Block]:
    """The blocks of STAR ``text``, checked line by line as the ``starfile`` reader reads them (one table per
    ``data_`` block: a ``loop_`` with its ``_labels`` and one row per line up to the next ``data_``, or ``_label
    value`` pairs); a malformed line raises ``error`` naming the file and line and what was expected."""
    blocks: list[_Block] = []
    block: _Block | None = None
    state = "none"  # none → block → labels → rows (a loop) or pairs
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            if any(b.name == line[5:] for b in blocks):
                first = next(b.line for b in blocks if b.name == line[5:])
                raise error(f"a second data block named {line[5:] or '(empty)'!r} (the first is at line {first}); "
                            "block names must differ", file=path, line=i)
            block = _Block(line[5:], i)
            blocks.append(block)
            state = "block"
            continue
        if block is None:
            continue  # text before the first data_ block is not read (as starfile does)
        state = _scan_line(block, state, line, i, path, error)
    for b in blocks:
        if b.loop and not b.labels:
            raise error(f"the loop_ of block {b.name!r} has no _labels", file=path, line=b.line)
    return blocks


def _scan_line(block: _Block, state: str, line: str, i: int, path: Path, error) -> str:
    """Read one non-blank line of ``block``; return the new state."""
    if line.startswith("loop_"):
        if state != "block":
            raise error(f"a second table in block {block.name!r} (block at line {block.line}); one loop_ or one set "
                        "of _label value pairs per data_ block", file=path, line=i)
        block.loop = True
        return "labels"
    if line.startswith("_"):
        if state in ("labels", "block") and block.loop:
            block.labels.append((line.split()[0][1:], i))
            return "labels"
        if state in ("block", "pairs"):
            values = _tokens(line)
            if len(values) != 2:
                raise error(f"a _label value pair holds {len(values)} words, 2 expected", file=path, line=i)
            block.labels.append((values[0][1:], i))
            block.rows.append((i, values[1:]))
            return "pairs"
        raise error(f"a _label after the rows of the loop in block {block.name!r}; labels come first", file=path,
                    line=i)
    if state in ("labels", "rows"):
        values = _tokens(line)
        if len(values) != len(block.labels):
            raise error(f"a row of {len(values)} values; the loop of block {block.name!r} has {len(block.labels)} "
                        f"columns (labels at line {block.labels[0][1] if block.labels else block.line})", file=path,
                        line=i)
        block.rows.append((i, values))
        return "rows"
    raise error(f"unexpected text in block {block.name!r}: expected loop_, a _label or data_", file=path, line=i)


def _star_text(path: Path, error: type[FormatError] = FormatError, missing: str | None = None) -> str:
    return read_text_file(path, "STAR file", error=error, missing=missing)


def read_star(path: str | Path, *, missing: str | None = None) -> dict:
    """{block name: DataFrame (loop) or dict (pairs)} of a STAR file; labels without their leading '_'.

    The text is checked first (a regular UTF-8 file; every row as long as its loop's labels; block names
    unique), so a malformed file raises :class:`FormatError` naming the file and line rather than being read
    partly; ``missing``: the fix for a missing file (:func:`~difftem.io.tables.regular_file`)."""
    import starfile

    path = Path(path)
    if not _scan(_star_text(path, missing=missing), path):
        raise FormatError("no data_ block found; not a STAR file", file=path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile/pandas raise many kinds on malformed text
        raise FormatError(f"not a readable STAR file ({exc.__class__.__name__})", file=path) from None
    if not blocks:
        raise FormatError("no data_ block found; not a STAR file", file=path)
    return blocks


#: Columns of a RELION MTF curve.
MTF_COLUMNS = ("rlnResolutionInversePixel", "rlnMtfValue")

#: The largest |MTF value| accepted (curves in percent are fine; larger values are not an MTF).
MAX_MTF_VALUE = 1e6

#: What an MTF curve's file is, and what to give instead of a missing one.
MTF_STAR_FILE = (f"the path of a RELION MTF STAR file (columns _{MTF_COLUMNS[0]}, _{MTF_COLUMNS[1]}; difftem "
                 "fit-mtf writes one, mtf_fit.star)")
MTF_MISSING_FIX = f"give {MTF_STAR_FILE}"


def read_mtf_curve(path: str | Path, *, missing: str = MTF_MISSING_FIX) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in cycles/pixel, MTF value) from a RELION MTF STAR file (``_rlnResolutionInversePixel``,
    ``_rlnMtfValue``), one row per frequency.

    The curve must have ≥ 2 rows of finite numbers, frequencies ≥ 0 in increasing order, and a positive value at
    the lowest frequency (the MTF is normalised by it); anything else raises :class:`DataFileError` (a
    :class:`FormatError` and a :class:`ConfigError`) naming the file and line; ``missing``: the fix for a missing
    file (:func:`~difftem.io.tables.regular_file`)."""
    path = Path(path)
    blocks = _scan(_star_text(path, DataFileError, missing), path, DataFileError)
    found = [b for b in blocks if b.loop and set(MTF_COLUMNS) <= {name for name, _ in b.labels}]
    if not found:
        raise DataFileError(f"no loop with _{MTF_COLUMNS[0]}/_{MTF_COLUMNS[1]} columns; not a RELION MTF curve",
                            file=path)
    if len(found) > 1:
        raise DataFileError(f"a second data block with an MTF curve (the first is at line {found[0].line}); one "
                            "curve per file", file=path, line=found[1].line)
    block = found[0]
    names = [name for name, _ in block.labels]
    cols = [names.index(c) for c in MTF_COLUMNS]
    if len(block.rows) < 2:
        raise DataFileError(f"the MTF curve has {len(block.rows)} row{'' if len(block.rows) == 1 else 's'}; at "
                            "least two (frequency, value) rows expected", file=path,
                            line=block.rows[0][0] if block.rows else block.line)
    arr = np.empty((len(block.rows), 2), dtype=np.float64)
    for r, (i, values) in enumerate(block.rows):
        for k, c in enumerate(cols):
            try:
                arr[r, k] = float(values[c])
            except ValueError:
                raise DataFileError(f"_{MTF_COLUMNS[k]} is not a number", file=path, line=i) from None
        _check_mtf_row(arr, r, i, path)
    return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])


def _check_mtf_row(arr: np.ndarray, r: int, line: int, path: Path) -> None:
    """Row ``r`` of an MTF curve: finite, frequency ≥ 0 and above the previous row's, a value of sane size."""
    f, v = arr[r]
    if not (math.isfinite(f) and f >= 0):
        raise DataFileError(f"frequency {f:g} cycles/pixel: must be a finite number ≥ 0", file=path, line=line)
    if r and not f > arr[r - 1, 0]:
        raise DataFileError(f"frequency {f:g} is not above the previous row's {arr[r - 1, 0]:g}; rows must be in "
                            "increasing frequency", file=path, line=line)
    if not (math.isfinite(v) and abs(v) <= MAX_MTF_VALUE):
        raise DataFileError(f"MTF value {v:g}: must be a finite number of magnitude ≤ {MAX_MTF_VALUE:g}", file=path,
                            line=line)
    if r == 0 and not v > 0:
        raise DataFileError(f"MTF value {v:g} at the lowest frequency: must be > 0 (the curve is normalised by "
                            "it)", file=path, line=line)


def write_mtf_star(path: str | Path, frequency_per_px, value, name: str = "mtf",
                   comment: str = "difftem MTF curve: frequency in cycles/pixel") -> Path:
    """RELION MTF STAR (``_rlnResolutionInversePixel``, ``_rlnMtfValue``)."""
    rows = [{"rlnResolutionInversePixel": float(f), "rlnMtfValue": float(v)}
            for f, v in zip(frequency_per_px, value, strict=True)]
    return write_star(path, {name: rows}, comment=comment, float_format="%.9f")
