"""An MRC image stack read one image at a time, so a large tilt series never sits in memory whole.

The header and data layout come from ``mrcfile.mmap`` (permissive, as :func:`difftem.io.tlt.read_mrc_checked`); the
images are then read with plain file reads (seek + read of one image), not through the map, so the pages they pass
through stay in the page cache and out of the process's resident set. Every check of ``read_mrc_checked`` is made
up front with the same messages (a pass over the images counts NaN and infinite pixels); gzipped files, 4-bit data
and anything the map cannot describe are read whole by ``read_mrc_checked`` instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from .tables import regular_file
from .tlt import _mrc_header, checked_pixel_size, read_mrc_checked


class MrcStack:
    """(N, H, W) images of an MRC file: ``image(i)`` → float32 (H, W) array; ``pixel_size_a`` 0.0 when unset."""

    def __init__(self, path: Path, shape: tuple[int, ...], pixel_size_a: float, *, dtype=None, offset: int = 0,
                 data: np.ndarray | None = None):
        self.path, self.shape, self.pixel_size_a = Path(path), tuple(int(n) for n in shape), float(pixel_size_a)
        self.dtype, self.offset, self._data = (np.dtype(dtype) if dtype is not None else None), int(offset), data

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as a new float32 array (a stack's (H, W) plane; for a 2-D file, row ``i``)."""
        if self._data is not None:
            return np.array(self._data[i], dtype=np.float32)
        count = math.prod(self.shape[1:])
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + int(i) * count * self.dtype.itemsize)
            raw = np.fromfile(fh, dtype=self.dtype, count=count)
        if raw.size != count:
            raise FormatError(f"truncated: image {i + 1} ends early", file=self.path)
        return raw.reshape(self.shape[1:]).astype(np.float32)


def open_mrc_stack(path: str | Path, what: str = "MRC file", *, missing: str | None = None) -> MrcStack:
    """An :class:`MrcStack` of a user-named MRC file after the checks of :func:`read_mrc_checked` (same errors,
    naming the file; ``missing``: the fix for a missing file); a plain file's images stay on disk until asked for."""
    import warnings

    import mrcfile

    path = Path(path)
    regular_file(path, what, give="an MRC file", missing=missing)
    _mrc_header(path)
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    layout = None
    if not gz:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # permissive reading turns problems into warnings
                with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                    data = mrc.data
                    if data is not None and int(mrc.header.mode) != 101 and isinstance(data, np.memmap):
                        layout = (tuple(data.shape), data.dtype, int(data.offset), float(mrc.voxel_size.x))
                    del data
        except Exception:  # noqa: BLE001 — read_mrc_checked below names the problem
            layout = None
    if layout is None:  # compressed, 4-bit or unusual: read whole, with read_mrc_checked's own errors
        data, px = read_mrc_checked(path, what)
        return MrcStack(path, data.shape, px, data=data)
    shape, dtype, offset, px = layout
    if math.prod(shape) == 0:
        raise FormatError("holds an empty array", file=path)
    if dtype.kind == "c":
        raise FormatError("holds complex values; real images expected", file=path)
    if len(shape) < 2 or min(shape[-2:]) < 2:
        raise FormatError(f"holds one-dimensional data (shape {shape}); images of at least 2 x 2 pixels expected",
                          file=path)
    if len(shape) == 2:  # one image: small, read it whole
        data, px = read_mrc_checked(path, what)
        return MrcStack(path, data.shape, px, data=data)
    stack = MrcStack(path, shape, px if math.isfinite(px) and px > 0 else 0.0, dtype=dtype, offset=offset)
    size = math.prod(shape)
    bad = sum(int(img.size - np.count_nonzero(np.isfinite(img))) for img in map(stack.image, range(len(stack))))
    if bad:
        raise FormatError(f"holds {bad} NaN or infinite pixel{'s' if bad > 1 else ''} (of {size}); only finite "
                          "values can be used", file=path)
    return stack


def open_stack_mrc(path: str | Path, what: str, pixel_size_a: float | None = None,
                   required: bool = True, *, missing: str | None = None) -> tuple[MrcStack, float | None]:
    """(stack, pixel size Å) as :func:`difftem.io.tlt.read_volume_mrc` with ``ndim`` 3, the images left on disk."""
    path = Path(path)
    stack = open_mrc_stack(path, what, missing=missing)
    return stack, checked_pixel_size(path, what, stack.shape, 3, stack.pixel_size_a, pixel_size_a, required)
