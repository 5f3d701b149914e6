"""3-D volumes as MRC volumes: ``mz = nz`` and the voxel size in x, y and z, space group 1 (a map, not a stack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import atomic_path


def write_volume_mrc(path: str | Path, volume_zyx: np.ndarray, voxel_size_a: float) -> Path:
    """float32 (Z, Y, X) volume with the voxel size on all three axes and the origin at 0, written atomically."""
    import mrcfile

    arr = np.ascontiguousarray(np.asarray(volume_zyx, dtype=np.float32))
    if arr.ndim != 3:
        raise ValueError(f"write_volume_mrc: a (Z, Y, X) volume expected, got shape {arr.shape}")
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(arr)
        mrc.set_volume()
        mrc.header.mz = arr.shape[0]
        mrc.voxel_size = float(voxel_size_a)
    return Path(path)
