"""RELION-5 tomography STAR files: ``tomograms.star`` (one row per tilt series), the per-tilt-series STAR (one
row per tilt) and a particles STAR with centred Å coordinates — written with :func:`difftem.io.star.write_star`
and read back with :func:`difftem.io.star.read_star` (the ``starfile`` package).

Conventions written (and stated in each file's ``#`` header):

- per tilt: ``rlnTomoYTilt`` = stage tilt θ (deg), ``rlnTomoZRot`` = the tilt-axis angle α (deg), ``rlnTomoXTilt``
  = 0 and ``rlnTomoX/YShiftAngst`` = 0 for a perfect geometry; ``rlnDefocusU/V`` Å (> 0 underfocus) at the
  specimen mid-plane on the tilt axis, ``rlnDefocusAngle`` deg; ``rlnMicrographPreExposure`` e/Å² before the tilt;
  ``rlnCtfScalefactor`` = cos θ; ``rlnMicrographName`` = ``index@stack.mrcs`` (1-based, stack order).
- the tomogram frame has the tilt axis along +y: a point r of difftem's scene (tilt axis at α from +y) is at
  Rz(−α)·r there, and the projection of tilt i is Rz(α)·Ry(θ)·(that point) — difftem's Rz(α)Ry(θ)Rz(−α)·r.
- particles: ``rlnCenteredCoordinateX/Y/ZAngst`` = that point in Å from the tomogram's centre (voxel
  [X/2, Y/2, Z/2] for even sizes, as RELION-5 places it); ``rlnAngleRot/Tilt/Psi`` = the pose in that frame
  (RELION's A: the reference map rotated by A).
- ``rlnTomoHand`` = +1: the defocus grows with depth along the beam (difftem's z), Δf(z) = Δf + z.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from ..core.rotations import relion_angles, relion_matrix, rotation_about_axis
from .star import read_star, write_star

TOMOGRAMS_COMMENT = (
    "difftem RELION-5 tomography set: one row per tilt series\n"
    "pixel sizes in A, voltage kV, Cs mm; rlnTomoSizeX/Y/Z: tomogram size in tilt-series pixels\n"
    "rlnTomoHand +1: defocus grows with depth along the beam")
TILT_SERIES_COMMENT = (
    "difftem RELION-5 tilt series: one row per tilt image, in stack order (rlnMicrographName index@stack)\n"
    "rlnTomoYTilt = stage tilt (deg), rlnTomoZRot = tilt-axis angle (deg, +y turned about +z), rlnTomoXTilt = 0\n"
    "shifts in A; defocus in A (> 0 underfocus) at the specimen mid-plane on the tilt axis; doses in e/A^2")
PARTICLES_COMMENT = (
    "difftem RELION-5 particles: rlnCenteredCoordinateX/Y/ZAngst in A from the tomogram centre, in the frame\n"
    "where the tilt axis is +y; rlnAngleRot/Tilt/Psi: RELION's A (the reference rotated by A) in that frame")


def frame_rotation(tilt_axis_deg: float) -> np.ndarray:
    """Rz(−α): difftem's scene frame → the RELION tomogram frame (tilt axis along +y)."""
    return rotation_about_axis(np.array([0.0, 0.0, 1.0]), -np.radians(tilt_axis_deg))


@dataclass
class TiltSeriesTable:
    """What a RELION-5 tilt-series STAR says about one series, in stack order."""

    name: str
    angles_deg: np.ndarray
    tilt_axis_deg: float
    defocus_u_a: np.ndarray | None
    defocus_v_a: np.ndarray | None
    defocus_angle_deg: np.ndarray | None
    shifts_a: np.ndarray  # (T, 2) x, y
    pre_exposure_e_per_a2: np.ndarray | None
    images: list[str]


def tilt_series_rows(name: str, stack_name: str, angles_deg, tilt_axis_deg: float, defocus_u_a, defocus_v_a,
                     defocus_angle_deg, pre_exposure_e_per_a2, *, shifts_a=None, nominal_defocus_a=None,
                     beam_tilts_mrad=None) -> list[dict]:
    """One row per tilt; ``beam_tilts_mrad`` (T, 2), when given, adds each tilt's total beam tilt as
    rlnBeamTiltX/Y (mrad; truth beside the optics group's value, which is one per particle set)."""
    n = len(angles_deg)
    shifts = np.zeros((n, 2)) if shifts_a is None else np.asarray(shifts_a, dtype=np.float64).reshape(n, 2)
    rows = []
    for i in range(n):
        theta = float(angles_deg[i])
        rows.append({"rlnMicrographName": f"{i + 1}@{stack_name}", "rlnTomoNominalStageTiltAngle": theta,
                     "rlnTomoNominalTiltAxisAngle": float(tilt_axis_deg),
                     "rlnMicrographPreExposure": float(pre_exposure_e_per_a2[i]),
                     "rlnTomoNominalDefocus": float(nominal_defocus_a[i] if nominal_defocus_a is not None
                                                    else 0.5 * (defocus_u_a[i] + defocus_v_a[i])),
                     "rlnDefocusU": float(defocus_u_a[i]), "rlnDefocusV": float(defocus_v_a[i]),
                     "rlnDefocusAngle": float(defocus_angle_deg[i]),
                     "rlnCtfScalefactor": float(np.cos(np.radians(theta))),
                     "rlnTomoXTilt": 0.0, "rlnTomoYTilt": theta, "rlnTomoZRot": float(tilt_axis_deg),
                     "rlnTomoXShiftAngst": float(shifts[i, 0]), "rlnTomoYShiftAngst": float(shifts[i, 1])})
        if beam_tilts_mrad is not None:
            rows[-1].update(rlnBeamTiltX=float(beam_tilts_mrad[i][0]), rlnBeamTiltY=float(beam_tilts_mrad[i][1]))
    return rows


def write_tilt_series_star(path: str | Path, name: str, rows: list[dict]) -> Path:
    return write_star(path, {name: rows}, TILT_SERIES_COMMENT)


def tomograms_row(name: str, tilt_series_star: str, *, voltage_kv: float, cs_mm: float, amplitude_contrast: float,
                  pixel_size_a: float, size_xyz: tuple[int, int, int], hand: float = 1.0,
                  tomogram: str | None = None, binning: float = 1.0) -> dict:
    row = {"rlnTomoName": name, "rlnVoltage": float(voltage_kv), "rlnSphericalAberration": float(cs_mm),
           "rlnAmplitudeContrast": float(amplitude_contrast), "rlnMicrographOriginalPixelSize": float(pixel_size_a),
           "rlnTomoHand": float(hand), "rlnOpticsGroupName": "optics1",
           "rlnTomoTiltSeriesPixelSize": float(pixel_size_a), "rlnTomoTiltSeriesStarFile": tilt_series_star,
           "rlnTomoSizeX": int(size_xyz[0]), "rlnTomoSizeY": int(size_xyz[1]), "rlnTomoSizeZ": int(size_xyz[2])}
    if tomogram is not None:
        row.update(rlnTomoReconstructedTomogram=tomogram, rlnTomoTomogramBinning=float(binning))
    return row


def write_tomograms_star(path: str | Path, rows: list[dict]) -> Path:
    return write_star(path, {"global": rows}, TOMOGRAMS_COMMENT)


#: particles.star's columns, in order (difftemParticleType where the rows carry type names)
PARTICLE_LABELS = ("rlnTomoName", "rlnOpticsGroup", "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                   "rlnCenteredCoordinateZAngst", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "difftemParticleType")


def particle_rows(tomo_name: str, positions_a, rotations, tilt_axis_deg: float, *, names=None) -> list[dict]:
    """RELION-5 particle rows from difftem scene positions (N, 3) Å and poses (N, 3, 3) (type frame → scene)."""
    f = frame_rotation(tilt_axis_deg)
    pos = np.asarray(positions_a, dtype=np.float64).reshape(-1, 3) @ f.T
    poses = f @ np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    angles = relion_angles(poses).reshape(-1, 3)
    rows = []
    for i in range(len(pos)):
        row = {"rlnTomoName": tomo_name, "rlnOpticsGroup": 1,
               "rlnCenteredCoordinateXAngst": pos[i, 0], "rlnCenteredCoordinateYAngst": pos[i, 1],
               "rlnCenteredCoordinateZAngst": pos[i, 2], "rlnAngleRot": angles[i, 0], "rlnAngleTilt": angles[i, 1],
               "rlnAnglePsi": angles[i, 2]}
        if names is not None:
            row["difftemParticleType"] = names[i]
        rows.append(row)
    return rows


def write_particles_star(path: str | Path, rows: list[dict], *, voltage_kv: float, cs_mm: float,
                         amplitude_contrast: float, pixel_size_a: float,
                         beam_tilt_mrad: tuple[float, float] | None = None) -> Path:
    """``beam_tilt_mrad`` (x, y): the optics group's beam tilt, written as rlnBeamTiltX/Y (mrad) in data_optics,
    where RELION's observation model reads it (one value per optics group; omitted when None)."""
    optics = [{"rlnOpticsGroup": 1, "rlnOpticsGroupName": "optics1", "rlnSphericalAberration": float(cs_mm),
               "rlnVoltage": float(voltage_kv), "rlnAmplitudeContrast": float(amplitude_contrast),
               "rlnTomoTiltSeriesPixelSize": float(pixel_size_a)}]
    if beam_tilt_mrad is not None:
        optics[0].update(rlnBeamTiltX=float(beam_tilt_mrad[0]), rlnBeamTiltY=float(beam_tilt_mrad[1]))
    if not rows:  # no particles: the same columns, no rows (an empty list would get write_star's placeholder column)
        import pandas as pd

        rows = pd.DataFrame(columns=list(PARTICLE_LABELS))
    return write_star(path, {"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": rows},
                      PARTICLES_COMMENT)


# ----------------------------------------------------------------------------------------------- reading
def _loop(blocks: dict, path: Path, needed: str):
    import pandas as pd

    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame) and needed in block.columns:
            return name, block
    raise FormatError(f"no loop with _{needed}", file=path)


def _column(block, label: str, path: Path, default=None) -> np.ndarray | None:
    if label not in block.columns:
        return default
    try:
        values = block[label].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"_{label} holds values that are not numbers", file=path) from None
    if not np.all(np.isfinite(values)):
        raise FormatError(f"_{label} holds non-finite values", file=path)
    return np.array(values)


def read_tilt_series_star(path: str | Path, *, missing: str | None = None) -> TiltSeriesTable:
    """A RELION-5 tilt-series STAR (or difftem's tilts.star): angles (rlnTomoNominalStageTiltAngle, else
    rlnTomoYTilt), tilt axis (rlnTomoZRot, else rlnTomoNominalTiltAxisAngle), defocus and shifts per tilt;
    ``missing``: the fix for a missing file."""
    path = Path(path)
    blocks = read_star(path, missing=missing)
    try:
        name, rows = _loop(blocks, path, "rlnTomoNominalStageTiltAngle")
        angles = _column(rows, "rlnTomoNominalStageTiltAngle", path)
    except FormatError:
        name, rows = _loop(blocks, path, "rlnTomoYTilt")
        angles = _column(rows, "rlnTomoYTilt", path)
    if "rlnTomoYTilt" in rows.columns:  # the refined tilt wins over the nominal one
        angles = _column(rows, "rlnTomoYTilt", path)
    axis = _column(rows, "rlnTomoZRot", path)
    if axis is None:
        axis = _column(rows, "rlnTomoNominalTiltAxisAngle", path, np.zeros(len(rows)))
    if len(axis) and not np.allclose(axis, axis[0], atol=1e-6):
        raise FormatError(f"the tilt axis differs between tilts ({axis.min():g} to {axis.max():g} deg); one axis per "
                          "series is supported", file=path)
    zeros = np.zeros(len(rows))
    shifts = np.stack([_column(rows, "rlnTomoXShiftAngst", path, zeros),
                       _column(rows, "rlnTomoYShiftAngst", path, zeros)], axis=1)
    images = [str(v) for v in rows["rlnMicrographName"]] if "rlnMicrographName" in rows.columns else []
    return TiltSeriesTable(name, angles, float(axis[0]) if len(axis) else 0.0, _column(rows, "rlnDefocusU", path),
                           _column(rows, "rlnDefocusV", path), _column(rows, "rlnDefocusAngle", path), shifts,
                           _column(rows, "rlnMicrographPreExposure", path), images)


def read_tomograms_star(path: str | Path):
    """The rows of a RELION-5 tomograms.star (a DataFrame, one row per tilt series)."""
    path = Path(path)
    return _loop(read_star(path), path, "rlnTomoName")[1]


def read_optics_beam_tilt(path: str | Path) -> tuple[float, float] | None:
    """(x, y) mrad of the first optics group's rlnBeamTiltX/Y in a particles STAR, None when it has none."""
    path = Path(path)
    _, optics = _loop(read_star(path), path, "rlnOpticsGroupName")
    if "rlnBeamTiltX" not in optics.columns and "rlnBeamTiltY" not in optics.columns:
        return None
    zeros = np.zeros(len(optics))
    return (float(_column(optics, "rlnBeamTiltX", path, zeros)[0]), float(_column(optics, "rlnBeamTiltY", path,
                                                                                   zeros)[0]))


def read_particles_star(path: str | Path, tilt_axis_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(positions (N, 3) Å, poses (N, 3, 3), tomogram names) in difftem's scene frame from a RELION-5 particles
    STAR (centred Å coordinates and angles in the tomogram frame of a series with tilt axis ``tilt_axis_deg``)."""
    path = Path(path)
    _, rows = _loop(read_star(path), path, "rlnCenteredCoordinateXAngst")
    pos = np.stack([_column(rows, f"rlnCenteredCoordinate{a}Angst", path) for a in "XYZ"], axis=1)
    angles = [_column(rows, f"rlnAngle{a}", path, np.zeros(len(rows))) for a in ("Rot", "Tilt", "Psi")]
    back = frame_rotation(tilt_axis_deg).T
    poses = back @ relion_matrix(*angles)
    names = [str(v) for v in rows["rlnTomoName"]] if "rlnTomoName" in rows.columns else [""] * len(rows)
    return pos @ back.T, poses, names
