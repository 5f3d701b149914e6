"""STAR files, the tables RELION and its neighbours read: one writer and one reader, both the ``starfile`` package's.

Every STAR file difftem writes goes through :func:`write_star` (atomically, with the conventions as ``#`` comment
lines at the top, which RELION and ``starfile`` skip); every one it reads goes through :func:`read_star`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, FormatError
from .files import atomic_path

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
    import starfile

    frames = {name: _frame(block) for name, block in blocks.items()}
    with atomic_path(path) as tmp:
        starfile.write(frames, tmp, float_format=float_format)
        if comment:
            head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
            tmp.write_text(head + tmp.read_text())
    return Path(path)


def read_star(path: str | Path) -> dict:
    """{block name: DataFrame (loop) or dict (pairs)} of a STAR file; labels without their leading '_'."""
    import starfile

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: STAR file not found")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile/pandas raise many kinds on malformed text
        why = str(exc).splitlines()[0][:120] if str(exc).strip() else exc.__class__.__name__
        raise FormatError(f"{path}: not a readable STAR file ({why})") from None
    if not blocks:
        raise FormatError(f"{path}: no data_ block found; not a STAR file")
    return blocks


def read_mtf_curve(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in cycles/pixel, MTF value), sorted by frequency, from a RELION MTF STAR file
    (``_rlnResolutionInversePixel``, ``_rlnMtfValue``)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"detector.mtf.star: {path} not found")
    try:
        blocks = read_star(path)
    except FormatError as exc:
        raise ConfigError(f"detector.mtf.star: {exc}") from None
    cols = ("rlnResolutionInversePixel", "rlnMtfValue")
    table = next((b for b in blocks.values() if isinstance(b, pd.DataFrame) and set(cols) <= set(b.columns)), None)
    if table is None:
        raise ConfigError(f"detector.mtf.star: {path} lacks _rlnResolutionInversePixel/_rlnMtfValue columns")
    try:
        arr = table[list(cols)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"detector.mtf.star: {path}: cannot parse the rows as numbers") from None
    if len(arr) < 2:
        raise ConfigError(f"detector.mtf.star: {path} has fewer than two rows")
    order = np.argsort(arr[:, 0], kind="stable")
    return arr[order, 0], arr[order, 1]


def write_mtf_star(path: str | Path, frequency_per_px, value, name: str = "mtf",
                   comment: str = "difftem MTF curve: frequency in cycles/pixel") -> Path:
    """RELION MTF STAR (``_rlnResolutionInversePixel``, ``_rlnMtfValue``)."""
    rows = [{"rlnResolutionInversePixel": float(f), "rlnMtfValue": float(v)}
            for f, v in zip(frequency_per_px, value, strict=True)]
    return write_star(path, {name: rows}, comment=comment, float_format="%.9f")
