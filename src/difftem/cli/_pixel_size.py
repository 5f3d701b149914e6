"""The ``--pixel-size`` option, checked in one place for every command that takes it."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import FormatError


def check_pixel_size(pixel_size: float | None, header: tuple[float, int, int] | None = None,
                     path: Path | None = None, *, range_a: tuple[float, float] | None = None) -> None:
    """--pixel-size within ``range_a`` (low, high Å), by default the simulator's own range (detector.pixel_size_a:
    0.01–100 Å: 1000 Å is a typo, not a binned tomogram); a command whose library takes a narrower range passes it
    (fit-ctf and calibrate: the CTF fit's), so this message comes first. A note when it replaces a different pixel
    size in ``path``'s header (``header``: its pixel size, mz and nz, as ``tomo._mrc_header`` reads them)."""
    from ..config import MAX_PIXEL_SIZE_A, MIN_PIXEL_SIZE_A  # here: the config's models load only when needed
    from ._console import note

    if pixel_size is None:
        return
    lo, hi = range_a or (MIN_PIXEL_SIZE_A, MAX_PIXEL_SIZE_A)
    if not (lo <= pixel_size <= hi):
        raise FormatError(f"--pixel-size: {pixel_size} Å is outside {lo:g}–{hi:g} Å; give the pixel (voxel) size "
                          "in Å")
    if header and header[0] and path is not None and abs(header[0] / pixel_size - 1) > 1e-4:
        note("note", f"--pixel-size {pixel_size:g} Å replaces the {header[0]:g} Å in {path.name}'s header")
