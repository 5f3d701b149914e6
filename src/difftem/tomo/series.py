"""What a reconstruction needs to know about a tilt series, read from the files that describe it.

Sources, tried in this order when none is named: the simulation's own record beside the stack (run.json +
tilts.star + particles.star), a SerialEM ``<stack>.mdoc``, IMOD ``<stem>.xf`` + ``<stem>.tlt``, a tilts.star,
``<stem>.tlt``. A named file may also be a RELION-5 ``tomograms.star`` or tilt-series STAR, or a RELION STAR of
per-particle tilt images (rows grouped by ``rlnGroupName``; see :func:`particle_tilt_series`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.complex_ops import unit_phasor
from ..core.errors import FormatError
from ..core.rotations import relion_matrix
from ..io import imod, relion5
from ..io.star import read_star
from ..io.tables import regular_file
from ..io.tlt import angles_beside, read_mrc_checked, read_tlt, tilt_axis_beside
from .ctf import TiltCTF


@dataclass
class SeriesMetadata:
    """Geometry and CTF of a tilt series in stack order; None where the files do not say."""

    angles_deg: np.ndarray
    tilt_axis_deg: float | None = None
    ctf: TiltCTF | None = None
    shifts_px: np.ndarray | None = None  # (T, 2): move each image's content by this (x, y) before reconstructing
    thickness_a: float | None = None
    pixel_size_a: float | None = None
    image_indices: np.ndarray | None = None  # rows of the stack to use (a particle's tilts), else all
    sources: dict = field(default_factory=dict)


def from_run_folder(folder: Path) -> SeriesMetadata:
    """A simulated series: angles, tilt axis, per-tilt defocus and astigmatism, and the depth the particles need."""
    from ..simulate.export import read_run

    rec = read_run(folder, with_stack=False)
    ctf = TiltCTF(rec.defocus_u_a, rec.defocus_v_a, rec.defocus_angle_deg, rec.voltage_kv, rec.cs_mm,
                  rec.amplitude_contrast)
    src = str(folder / "run.json")
    return SeriesMetadata(rec.angles_deg, rec.tilt_axis_deg, ctf, None, rec.thickness_px() * rec.pixel_size_a,
                          rec.pixel_size_a, sources={"angles": str(folder / "tilts.star"), "tilt_axis": src,
                                                     "ctf": f"{folder / 'tilts.star'} + {src}", "thickness": src})


def from_relion5(path: Path) -> SeriesMetadata:
    """A RELION-5 tilt-series STAR, or a tomograms.star (its first series; constants and thickness from it)."""
    import pandas as pd

    blocks = read_star(path)
    tomo = None
    for block in blocks.values():
        if isinstance(block, pd.DataFrame) and "rlnTomoTiltSeriesStarFile" in block.columns:
            tomo = block.iloc[0]
    ts_path, missing = path, None
    if tomo is not None:
        named = str(tomo["rlnTomoTiltSeriesStarFile"])
        ts_path = path.parent / named
        # a tomograms.star names its series' files relative to its own folder
        missing = (f"{path.name}'s rlnTomoTiltSeriesStarFile names {named!r}, read relative to its folder; keep the "
                   "tilt-series STAR files where it says, or give one of them as the metadata file")
    else:
        beside = path.parent.parent / "tomograms.star"
        if beside.is_file():
            rows = relion5.read_tomograms_star(beside)
            match = rows[rows["rlnTomoName"].astype(str) == path.stem]
            tomo = match.iloc[0] if len(match) else None
    table = relion5.read_tilt_series_star(ts_path, missing=missing)
    ctf = thickness = px = None
    if tomo is not None:
        px = float(tomo.get("rlnTomoTiltSeriesPixelSize", 0)) or None
        if table.defocus_u_a is not None:
            ctf = TiltCTF(table.defocus_u_a, table.defocus_v_a if table.defocus_v_a is not None else table.defocus_u_a,
                          table.defocus_angle_deg if table.defocus_angle_deg is not None else 0.0,
                          float(tomo.get("rlnVoltage", 300.0)), float(tomo.get("rlnSphericalAberration", 2.7)),
                          float(tomo.get("rlnAmplitudeContrast", 0.07)))
        if "rlnTomoSizeZ" in tomo and px:
            thickness = float(tomo["rlnTomoSizeZ"]) * px
    shifts = None
    if np.any(table.shifts_a) and px:
        shifts = -table.shifts_a / px  # projection = R·r + shift: move the content back by the shift
    return SeriesMetadata(table.angles_deg, table.tilt_axis_deg, ctf, shifts, thickness, px,
                          sources={k: str(ts_path) for k in ("angles", "tilt_axis", "ctf")})


def from_mdoc(path: Path) -> SeriesMetadata:
    frame = imod.read_mdoc(path)
    defocus = imod.mdoc_defocus_a(frame)
    ctf = None
    if defocus is not None:
        voltage = float(frame["Voltage"].iloc[0]) if "Voltage" in frame and not frame["Voltage"].isna().any() else 300.0
        ctf = TiltCTF(defocus, defocus, 0.0, voltage, 2.7, 0.07)
    px = float(frame["PixelSpacing"].iloc[0]) if "PixelSpacing" in frame else None
    return SeriesMetadata(frame["TiltAngle"].to_numpy(dtype=np.float64), imod.mdoc_tilt_axis_deg(frame), ctf,
                          pixel_size_a=px, sources={"angles": str(path), "tilt_axis": str(path), "ctf": str(path)})


def from_xf(path: Path, tlt: Path | None = None) -> SeriesMetadata:
    """IMOD .xf (tilt axis from its rotation, shifts) with the angles of the .tlt beside it."""
    transforms = imod.read_xf(path)
    tlt = tlt or path.with_suffix(".tlt")
    if not tlt.is_file():
        raise FormatError(f"no tilt angles: {tlt.name} is missing beside it", file=path)
    angles = read_tlt(tlt)
    axes = imod.xf_tilt_axis_deg(transforms)
    if not np.allclose(axes, axes[0], atol=0.05):
        raise FormatError(f"the in-plane rotations differ between tilts ({axes.min():.2f} to {axes.max():.2f} deg); "
                          "one tilt axis per series is supported", file=path)
    a = transforms[:, :, :2]
    d = transforms[:, :, 2]
    shifts = np.einsum("tij,tj->ti", np.linalg.inv(a), d)  # aligned(A x) = raw(x − A⁻¹d): content moves by A⁻¹d
    return SeriesMetadata(angles, float(axes[0]), None, shifts if np.any(shifts) else None,
                          sources={"angles": str(tlt), "tilt_axis": str(path)})


def particle_tilt_series(path: Path, group: str | int | None = None) -> tuple[SeriesMetadata, list[str]]:
    """One particle's tilt images from a RELION STAR of particle images grouped by ``rlnGroupName`` (RELION 3
    subtomogram-as-2D style): the stack rows (``rlnImageName`` index@stack), the CTF of each image, and the tilt
    angles and axis recovered from the images' poses. Image i shows the reference turned by A_i = T_i·P, so
    T_i·T_ref⁻¹ = A_i·A_refᵀ (the image with the largest rlnCtfScalefactor = cos θ is the reference, θ ≈ 0): its
    angle is the tilt and its axis, projected into the image plane, the tilt axis. Returns the metadata and the
    names of all groups."""
    blocks = read_star(path)
    import pandas as pd

    rows = next((b for b in blocks.values() if isinstance(b, pd.DataFrame) and "rlnImageName" in b.columns), None)
    if rows is None or "rlnGroupName" not in rows.columns:
        raise FormatError("no loop with _rlnImageName and _rlnGroupName (particle tilt images)", file=path)
    groups = list(dict.fromkeys(str(g) for g in rows["rlnGroupName"]))
    if group is None:
        name = groups[0]
    elif isinstance(group, int) or str(group).isdigit():
        k = int(group)
        if not 0 <= k < len(groups):
            raise FormatError(f"group index {k} out of range: {len(groups)} groups", file=path)
        name = groups[k]
    else:
        if str(group) not in groups:
            raise FormatError(f"no rlnGroupName {group!r} ({len(groups)} groups)", file=path)
        name = str(group)
    sel = rows[rows["rlnGroupName"].astype(str) == name]
    idx = np.array([int(str(v).split("@")[0]) - 1 for v in sel["rlnImageName"]])
    a = relion_matrix(sel["rlnAngleRot"].to_numpy(float), sel["rlnAngleTilt"].to_numpy(float),
                      sel["rlnAnglePsi"].to_numpy(float))
    ref = int(np.argmax(sel["rlnCtfScalefactor"].to_numpy(float))) if "rlnCtfScalefactor" in sel else 0
    angles, axis = tilts_from_poses(a, ref)
    px = None
    if "rlnImagePixelSize" in sel:
        px = float(sel["rlnImagePixelSize"].iloc[0])
    elif "rlnDetectorPixelSize" in sel and "rlnMagnification" in sel:
        px = float(sel["rlnDetectorPixelSize"].iloc[0]) / float(sel["rlnMagnification"].iloc[0]) * 1e4
    ctf = None
    if "rlnDefocusU" in sel:
        ctf = TiltCTF(sel["rlnDefocusU"].to_numpy(float), sel["rlnDefocusV"].to_numpy(float)
                      if "rlnDefocusV" in sel else sel["rlnDefocusU"].to_numpy(float),
                      sel["rlnDefocusAngle"].to_numpy(float) if "rlnDefocusAngle" in sel else 0.0,
                      float(sel["rlnVoltage"].iloc[0]) if "rlnVoltage" in sel else 300.0,
                      float(sel["rlnSphericalAberration"].iloc[0]) if "rlnSphericalAberration" in sel else 2.7,
                      float(sel["rlnAmplitudeContrast"].iloc[0]) if "rlnAmplitudeContrast" in sel else 0.07)
    meta = SeriesMetadata(angles, axis, ctf, pixel_size_a=px, image_indices=idx,
                          sources={"angles": f"{path} (poses of group {name})", "group": name, "ctf": str(path),
                                   "tilt_axis": f"{path} (poses of group {name})"})
    return meta, groups


def tilts_from_poses(a: np.ndarray, ref: int) -> tuple[np.ndarray, float]:
    """(signed tilt angles (deg), tilt-axis angle α (deg)) of poses A_i = T_i·P, relative to pose ``ref``."""
    t = a @ a[ref].T
    cos = np.clip((np.trace(t, axis1=1, axis2=2) - 1) / 2, -1, 1)
    angle = np.degrees(np.arccos(cos))
    ax = np.stack([t[:, 2, 1] - t[:, 1, 2], t[:, 0, 2] - t[:, 2, 0], t[:, 1, 0] - t[:, 0, 1]], axis=1)
    big = int(np.argmax(angle))
    u = ax[big, :2] / max(np.linalg.norm(ax[big, :2]), 1e-12)
    if u[1] < 0:  # the axis direction with a non-negative y: α in (−90°, 90°]
        u = -u
    sign = np.sign(ax[:, :2] @ u)
    sign[sign == 0] = 1.0
    alpha = math.degrees(math.atan2(-u[0], u[1]))
    return angle * sign, alpha


def find_metadata(stack: Path, named: Path | None = None, group=None) -> SeriesMetadata | None:
    """The metadata of ``stack``: from ``named`` (by its kind), else from the files beside the stack; None when
    nothing describes it."""
    if named is not None:
        return read_named(named, group)
    folder = stack.parent
    if (folder / "run.json").is_file() and (folder / "tilts.star").is_file():
        try:
            return from_run_folder(folder)
        except FormatError:
            pass  # not a tilt-series run: fall through to the other files
    base = stack.name[:-3] if stack.name.endswith(".gz") else stack.name
    for mdoc in (folder / f"{base}.mdoc", stack.with_suffix(".mdoc")):
        if mdoc.is_file():
            return from_mdoc(mdoc)
    xf = stack.with_suffix(".xf")
    if xf.is_file() and stack.with_suffix(".tlt").is_file():
        return from_xf(xf)
    found = angles_beside(stack)
    if found is not None:
        axis = tilt_axis_beside(stack)
        sources = {"angles": str(found[1]), **({"tilt_axis": str(axis[1])} if axis else {})}
        return SeriesMetadata(found[0], tilt_axis_deg=None if axis is None else axis[0], sources=sources)
    return None


#: What a named metadata file may be, for the fix of a missing one.
METADATA_FIX = ("give a file describing the series: a RELION-5 tilt-series or tomograms STAR, a RELION STAR of "
                "particle tilt images, a SerialEM .mdoc, an IMOD .xf (with its .tlt), a .tlt, or a simulation's "
                "run.json")


def read_named(path: Path, group=None) -> SeriesMetadata:
    """Metadata from a named file: .star (RELION-5 or particle images), .mdoc, .xf, .tlt/.rawtlt, run.json."""
    path = Path(path)
    if path.is_dir():
        return from_run_folder(path)
    regular_file(path, "metadata file", missing=METADATA_FIX)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return from_run_folder(path.parent)
    if suffix == ".mdoc":
        return from_mdoc(path)
    if suffix == ".xf":
        return from_xf(path)
    if suffix in (".tlt", ".rawtlt"):
        return SeriesMetadata(read_tlt(path), sources={"angles": str(path)})
    if suffix == ".star":
        import pandas as pd

        blocks = read_star(path)
        cols = set()
        for b in blocks.values():
            if isinstance(b, pd.DataFrame):
                cols |= set(b.columns)
        if "rlnImageName" in cols and "rlnGroupName" in cols:
            return particle_tilt_series(path, group)[0]
        return from_relion5(path)
    raise FormatError("unknown metadata file kind; give a .star, .mdoc, .xf, .tlt or run.json", file=path)


def shift_images(stack, shifts_px):
    """Move each image's content by (dx, dy) pixels (Fourier phase ramp, periodic): out(x) = in(x − d)."""
    import torch

    from ..core import fft as dfft

    shifts = torch.as_tensor(np.asarray(shifts_px, dtype=np.float64), device=stack.device)
    h, w = stack.shape[-2:]
    ky = dfft.freq_per_px(h, device=stack.device)[:, None]
    kx = dfft.freq_per_px(w, device=stack.device)[None, :]
    phase = -2 * math.pi * (kx[None] * shifts[:, 0, None, None] + ky[None] * shifts[:, 1, None, None])
    spec = dfft.fft2(stack.to(torch.float64)) * unit_phasor(phase)
    return dfft.ifft2(spec).real.to(stack.dtype)


def read_particle_stack(path: Path) -> tuple[np.ndarray, float]:
    """(float32 (N, H, W) images, header pixel size or 0) of a particle-image stack (.mrcs, .gz ok), read by
    :func:`difftem.io.tlt.read_mrc_checked` (which takes the blank identifier such stacks often have, as the real
    ribosome set); anything but finite 3-D data raises :class:`FormatError` naming the file."""
    data, px = read_mrc_checked(path, "particle stack", missing=(
        "give the path of the particle stack (MRC) that the STAR file's rlnImageName refers to"))
    if data.ndim != 3:
        raise FormatError(f"not a stack of images (shape {data.shape})", file=path)
    return data, px
