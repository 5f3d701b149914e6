"""cryoSPARC particle files (``.cs``): a numpy structured array, one row per particle, with cryoSPARC's field names.

Written through ``cryosparc-tools`` (``cryosparc.dataset.Dataset``) when it is installed, else with numpy (the
same bytes: a ``.npy`` array saved under the ``.cs`` name); read back with numpy either way. Fields written:
uid, blob/path, blob/idx, blob/shape, blob/psize_A, blob/sign, ctf/exp_group_id, ctf/accel_kv,
ctf/cs_mm, ctf/amp_contrast, ctf/df1_A, ctf/df2_A, ctf/df_angle_rad, ctf/phase_shift_rad, ctf/scale,
ctf/bfactor, alignments3D/split, alignments3D/shift (px), alignments3D/pose (axis × angle, rad),
alignments3D/psize_A, location/micrograph_path, location/micrograph_shape, location/center_x_frac,
location/center_y_frac, location/micrograph_psize_A.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from .files import atomic_path

#: dtypes of the particle fields (strings are object arrays, as cryoSPARC keeps them in memory)
PARTICLE_FIELDS: dict[str, tuple] = {
    "uid": ("<u8",), "blob/path": ("O",), "blob/idx": ("<u4",), "blob/shape": ("<u4", (2,)),
    "blob/psize_A": ("<f4",), "blob/sign": ("<f4",), "ctf/exp_group_id": ("<u4",),
    "ctf/accel_kv": ("<f4",), "ctf/cs_mm": ("<f4",), "ctf/amp_contrast": ("<f4",), "ctf/df1_A": ("<f4",),
    "ctf/df2_A": ("<f4",), "ctf/df_angle_rad": ("<f4",), "ctf/phase_shift_rad": ("<f4",), "ctf/scale": ("<f4",),
    "ctf/bfactor": ("<f4",), "alignments3D/split": ("<u4",), "alignments3D/shift": ("<f4", (2,)),
    "alignments3D/pose": ("<f4", (3,)), "alignments3D/psize_A": ("<f4",), "location/micrograph_path": ("O",),
    "location/micrograph_shape": ("<u4", (2,)), "location/center_x_frac": ("<f4",),
    "location/center_y_frac": ("<f4",), "location/micrograph_psize_A": ("<f4",),
}


def cryosparc_tools_available() -> bool:
    try:
        from cryosparc.dataset import Dataset  # noqa: F401
    except ImportError:
        return False
    return True


def _structured(columns: dict[str, np.ndarray]) -> np.ndarray:
    n = len(next(iter(columns.values())))
    dtype = []
    for name in columns:
        spec = PARTICLE_FIELDS.get(name, (np.asarray(columns[name]).dtype.str,))
        dtype.append((name, "S" + str(max(1, max((len(str(v).encode()) for v in columns[name]), default=1))))
                     if spec[0] == "O" else (name, *spec))
    arr = np.zeros(n, dtype=dtype)
    for name, values in columns.items():
        arr[name] = np.asarray(values) if PARTICLE_FIELDS.get(name, ("",))[0] != "O" else \
            np.asarray([str(v).encode() for v in values])
    return arr


def write_cs(path: str | Path, columns: dict[str, np.ndarray]) -> Path:
    """Write a cryoSPARC ``.cs`` file (atomically) from ``{field: values}``; ``uid`` is added when absent
    (random 64-bit, as cryoSPARC makes them). Strings are stored as bytes, as cryoSPARC's own files do."""
    columns = dict(columns)
    n = len(next(iter(columns.values())))
    if "uid" not in columns:
        columns = {"uid": np.random.default_rng().integers(1, 2**63, n, dtype=np.uint64), **columns}
    with atomic_path(path) as tmp:
        if cryosparc_tools_available():
            from cryosparc.dataset import Dataset

            fields = [(name, *PARTICLE_FIELDS.get(name, (np.asarray(v).dtype.str,))) for name, v in columns.items()
                      if name != "uid"]
            ds = Dataset.allocate(n, fields)
            for name, values in columns.items():
                ds[name] = values if name == "uid" or PARTICLE_FIELDS.get(name, ("",))[0] != "O" else \
                    np.asarray([str(v) for v in values], dtype=object)
            with open(tmp, "wb") as fh:
                ds.save(fh)
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, _structured(columns))
    return Path(path)


def read_cs(path: str | Path) -> np.ndarray:
    """The structured array of a ``.cs`` file (numpy); :class:`FormatError` naming the file otherwise."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FormatError(f"not a cryoSPARC .cs file ({exc.__class__.__name__})", file=path) from None
    if arr.dtype.names is None:
        raise FormatError("not a cryoSPARC .cs file (no named fields)", file=path)
    return arr
