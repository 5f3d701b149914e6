"""RELION 3.1+/5 particle STAR files: an optics table (``data_optics``) and one row per particle image
(``data_particles``), written and read through :mod:`difftem.io.star` (the ``starfile`` package).

Columns written (RELION's units): optics — rlnOpticsGroup, rlnOpticsGroupName, rlnVoltage (kV),
rlnSphericalAberration (mm), rlnAmplitudeContrast, rlnImagePixelSize (Å), rlnImageSize (px),
rlnImageDimensionality, rlnMicrographOriginalPixelSize (Å); particles — rlnImageName (``index@stack``, 1-based),
rlnMicrographName, rlnCoordinateX/Y (micrograph pixels), rlnAngleRot/Tilt/Psi (deg), rlnOriginXAngst/YAngst (Å),
rlnDefocusU/V (Å), rlnDefocusAngle (deg), rlnPhaseShift (deg), rlnCtfBFactor (Å²), rlnCtfScalefactor,
rlnOpticsGroup, rlnRandomSubset (1 or 2).
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import FormatError
from .star import read_star, write_star

#: The format tag RELION 3.1+ writes above its tables (a comment to readers that do not know it).
RELION_VERSION = "version 30001"

OPTICS_COLUMNS = ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnVoltage", "rlnSphericalAberration",
                  "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
                  "rlnMicrographOriginalPixelSize")
PARTICLE_COLUMNS = ("rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot",
                    "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU",
                    "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBFactor", "rlnCtfScalefactor",
                    "rlnOpticsGroup", "rlnRandomSubset")


def image_name(index: int, stack: str) -> str:
    """RELION's name of image ``index`` (0-based) of a stack file: ``000001@stack.mrcs`` (1-based, six digits)."""
    return f"{index + 1:06d}@{stack}"


def write_relion_particles(path: str | Path, optics: list[dict], particles: list[dict], comment: str = "") -> Path:
    """A RELION 3.1+ particle STAR file (``data_optics`` then ``data_particles``), atomically, with
    ``comment`` lines at the top. Rows are written in the column order of :data:`OPTICS_COLUMNS` and
    :data:`PARTICLE_COLUMNS` (labels outside them follow, in their own order)."""
    def ordered(rows, first):
        return [{**{k: r[k] for k in first if k in r}, **{k: v for k, v in r.items() if k not in first}}
                for r in rows]

    return write_star(path, {"optics": ordered(optics, OPTICS_COLUMNS),
                             "particles": ordered(particles, PARTICLE_COLUMNS)},
                      RELION_VERSION + ("\n" + comment if comment else ""), float_format="%.6f")


def read_relion_particles(path: str | Path):
    """(optics, particles) DataFrames of a RELION 3.1+ particle STAR file; :class:`FormatError` naming the file
    when a table or a needed column is missing."""
    path = Path(path)
    blocks = read_star(path)
    for name in ("optics", "particles"):
        if name not in blocks or not hasattr(blocks[name], "columns"):
            raise FormatError(f"no data_{name} table (RELION 3.1+ particle files have data_optics and "
                              "data_particles)", file=path)
    optics, particles = blocks["optics"], blocks["particles"]
    for need, table in ((("rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                          "rlnImagePixelSize"), optics),
                        (("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnDefocusU",
                          "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"), particles)):
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise FormatError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}", file=path)
    return optics, particles
