"""IMOD and SerialEM tilt-series files: ``.rawtlt``/``.tlt`` (angles), ``.xf`` (per-tilt 2-D transforms) and
``.mdoc`` (SerialEM's per-tilt acquisition record, through the ``mdocfile`` package).

``.xf``: one line per tilt in stack order, ``A11 A12 A21 A22 DX DY``; a point (x, y) of the raw image (pixels from
the image centre) goes to (A11 x + A12 y + DX, A21 x + A22 y + DY) in the aligned image, where the tilt axis is
vertical (+y). For difftem's geometry (tilt axis = +y turned by α about +z) and a perfect series that is the
rotation by −α, [[cos α, sin α], [−sin α, cos α]], with no shift (the identity for α = 0); true alignment errors
(shifts in pixels, extra in-plane rotations) go through the same writer.

``.mdoc``: SerialEM writes ``Defocus`` as the objective's defocus (negative = underfocus), in µm; difftem writes
−(mean defocus) so readers that follow SerialEM get underfocus, and :func:`read_mdoc` turns it back. The tilt axis
goes to ``RotationAngle`` (and to the title line as SerialEM's ``Tilt axis angle``); ``PriorRecordDose`` and
``ExposureDose`` are e/Å² as in SerialEM.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from .files import atomic_path, write_text
from .tables import read_text_file
from .tlt import read_tlt, write_tlt

#: Decimals of the .xf entries (IMOD writes 7 for the matrix and 3 for the shifts).
XF_DECIMALS = (7, 3)


def axis_transforms(n_tilts: int, tilt_axis_deg: float, shifts_px=None) -> np.ndarray:
    """(n_tilts, 2, 3) IMOD transforms [[A11, A12, DX], [A21, A22, DY]] that turn the tilt axis α onto +y, with
    ``shifts_px`` (n_tilts, 2) added (x, y; default zero)."""
    a = math.radians(tilt_axis_deg)
    out = np.zeros((n_tilts, 2, 3))
    out[:, 0, :2] = (math.cos(a), math.sin(a))
    out[:, 1, :2] = (-math.sin(a), math.cos(a))
    if shifts_px is not None:
        out[:, :, 2] = np.asarray(shifts_px, dtype=np.float64).reshape(n_tilts, 2)
    return out


def xf_text(transforms) -> str:
    """.xf text of (n, 2, 3) transforms, one ``A11 A12 A21 A22 DX DY`` line per tilt."""
    m, s = XF_DECIMALS
    lines = []
    for t in np.asarray(transforms, dtype=np.float64).reshape(-1, 2, 3):
        lines.append(f"{t[0, 0]:12.{m}f}{t[0, 1]:12.{m}f}{t[1, 0]:12.{m}f}{t[1, 1]:12.{m}f}"
                     f"{t[0, 2]:12.{s}f}{t[1, 2]:12.{s}f}\n")
    return "".join(lines)


def write_xf(path: str | Path, transforms) -> Path:
    return write_text(path, xf_text(transforms))


def read_xf(path: str | Path) -> np.ndarray:
    """(n, 2, 3) transforms of an IMOD .xf file; errors name the file and line."""
    path = Path(path)
    rows = []
    text = read_text_file(path, ".xf file", missing="give an IMOD .xf file: one line 'A11 A12 A21 A22 DX DY' per tilt")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            values = [float(v) for v in raw.split()]
        except ValueError:
            raise FormatError(f"line {lineno} is not six numbers (A11 A12 A21 A22 DX DY)", file=path,
                              line=lineno) from None
        if len(values) != 6 or not all(math.isfinite(v) for v in values):
            raise FormatError(f"line {lineno} holds {len(values)} values; six finite numbers (A11 A12 A21 A22 DX DY) "
                              "expected", file=path, line=lineno)
        a11, a12, a21, a22, dx, dy = values
        rows.append([[a11, a12, dx], [a21, a22, dy]])
    if not rows:
        raise FormatError("no transforms found", file=path)
    return np.asarray(rows, dtype=np.float64)


def xf_tilt_axis_deg(transforms) -> np.ndarray:
    """The tilt-axis angle α (deg) each transform implies: the rotation part is Rz(−α) (see the module doc)."""
    t = np.asarray(transforms, dtype=np.float64).reshape(-1, 2, 3)
    return np.degrees(np.arctan2(t[:, 0, 1], t[:, 0, 0]))


def mdoc_frame(angles_deg, *, pixel_size_a: float, image_shape_yx: tuple[int, int], tilt_axis_deg: float,
               exposure_e_per_a2, prior_dose_e_per_a2, defocus_a, voltage_kv: float, image_file: str,
               sub_frame_paths=None, acquisition_order=None, start_time: str = "02-Dec-26  00:00:00"):
    """A pandas DataFrame in ``mdocfile``'s layout (global keys repeated on each row, one row per tilt, rows in
    stack order, ZValue = stack index)."""
    import datetime

    import pandas as pd

    n = len(angles_deg)
    order = np.arange(n) if acquisition_order is None else np.asarray(acquisition_order)
    t0 = datetime.datetime.strptime(start_time, "%d-%b-%y  %H:%M:%S")
    rows = []
    for i in range(n):
        when = t0 + datetime.timedelta(seconds=30 * int(order[i]))
        row = {"titles": [f"[T = difftem simulated tilt series    Tilt axis angle = {tilt_axis_deg:.2f}, "
                          f"binning = 1  spot = 1  camera = 0]"],
               "DataMode": 2, "ImageSize": (int(image_shape_yx[1]), int(image_shape_yx[0])),
               "ImageFile": Path(image_file), "PixelSpacing": float(pixel_size_a), "Voltage": float(voltage_kv),
               "ZValue": i, "TiltAngle": float(angles_deg[i]), "PixelSpacing_section": float(pixel_size_a),
               "ExposureDose": float(np.asarray(exposure_e_per_a2).reshape(-1)[i]),
               "PriorRecordDose": float(np.asarray(prior_dose_e_per_a2).reshape(-1)[i]),
               "Defocus": -float(np.asarray(defocus_a).reshape(-1)[i]) / 1e4,
               "TargetDefocus": -float(np.asarray(defocus_a).reshape(-1)[i]) / 1e4,
               "RotationAngle": float(tilt_axis_deg), "Magnification": 1.0,
               "DateTime": when.strftime("%d-%b-%y  %H:%M:%S")}
        if sub_frame_paths is not None:
            row["SubFramePath"] = str(sub_frame_paths[i])
        rows.append(row)
    return pd.DataFrame(rows)


def write_mdoc(path: str | Path, frame) -> Path:
    """Write an mdoc DataFrame (:func:`mdoc_frame`) with ``mdocfile.write``, atomically."""
    import mdocfile

    frame = frame.copy()
    if "PixelSpacing_section" in frame.columns:  # mdocfile keeps one PixelSpacing column for both levels
        frame = frame.drop(columns=["PixelSpacing_section"])
    with atomic_path(path) as tmp:
        mdocfile.write(frame, tmp)
    return Path(path)


def read_mdoc(path: str | Path):
    """The mdoc's rows (``mdocfile.read``), sorted by ZValue; :class:`FormatError` naming the file if unreadable."""
    import mdocfile

    path = Path(path)
    if not path.is_file():
        raise FormatError("no such mdoc file", file=path)
    try:
        frame = mdocfile.read(path)
    except Exception as exc:  # pydantic/pandas raise many kinds on a malformed file
        raise FormatError(f"not a readable SerialEM mdoc file ({exc.__class__.__name__})", file=path) from None
    if "TiltAngle" not in frame.columns or frame["TiltAngle"].isna().any():
        raise FormatError("no TiltAngle on every section; not a tilt-series mdoc", file=path)
    if "ZValue" in frame.columns:
        frame = frame.sort_values("ZValue").reset_index(drop=True)
    return frame


def mdoc_defocus_a(frame) -> np.ndarray | None:
    """Per-tilt defocus (Å, > 0 underfocus) of an mdoc frame: −Defocus µm × 10⁴; None when absent."""
    if "Defocus" not in frame.columns or frame["Defocus"].isna().any():
        return None
    return -frame["Defocus"].to_numpy(dtype=np.float64) * 1e4


def mdoc_tilt_axis_deg(frame) -> float | None:
    if "RotationAngle" in frame.columns and not frame["RotationAngle"].isna().any():
        return float(frame["RotationAngle"].to_numpy(dtype=np.float64)[0])
    return None


__all__ = ["axis_transforms", "mdoc_defocus_a", "mdoc_frame", "mdoc_tilt_axis_deg", "read_mdoc", "read_tlt",
           "read_xf", "write_mdoc", "write_tlt", "write_xf", "xf_text", "xf_tilt_axis_deg"]
