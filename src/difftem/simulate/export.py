"""Export a simulated tilt series (a run folder from ``difftem simulate``, or a :class:`TiltSeriesResult`) as the
sets downstream tomography programs import: IMOD (stack, .rawtlt/.tlt, .xf, SerialEM .mdoc), RELION-5
(tomograms.star, the tilt-series STAR, particles with centred Å coordinates) and a copick project (a tomogram
as OME-Zarr when one is given, picks per particle type with orientations).

Everything comes from the run's own record (run.json, tilts.star, particles.star), so what is exported is what
was simulated: the tilt axis, per-tilt defocus and astigmatism, doses, and each copy's centre and pose.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ArgumentError, FormatError, OutputError
from ..core.rotations import relion_matrix
from ..io import copick_project, imod, relion5
from ..io.files import make_folder, staging_folder, write_mrc
from ..io.star import read_star
from ..io.tlt import checked_pixel_size, read_mrc_checked

FORMATS = ("imod", "relion5", "copick")


def parse_formats(text: str | None, allowed=FORMATS) -> list[str]:
    """'relion5,imod' → ['relion5', 'imod']: a comma list, each from ``allowed`` (an :class:`ArgumentError` naming the
    unknown one)."""
    if not text:
        return []
    out = []
    for item in (s.strip().lower() for s in text.split(",")):
        if not item:
            continue
        if item not in allowed:
            raise ArgumentError("formats", f": unknown format {item!r}; choose from {', '.join(allowed)}")
        if item not in out:
            out.append(item)
    return out


@dataclass
class SeriesRecord:
    """A simulated tilt series as the exporters need it (stack order = ascending angle)."""

    name: str
    stack: np.ndarray  # (T, H, W) counts
    pixel_size_a: float
    angles_deg: np.ndarray
    tilt_axis_deg: float
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    defocus_angle_deg: np.ndarray
    dose_e_per_a2: np.ndarray
    prior_dose_e_per_a2: np.ndarray
    acquisition_order: np.ndarray
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    ice_thickness_a: float
    positions_a: np.ndarray  # (N, 3) scene frame
    rotations: np.ndarray  # (N, 3, 3) type frame → scene
    type_names: list[str]
    beam_tilt_mrad: tuple[float, float] | None = None  # the optics' beam tilt (x, y); None: none set
    beam_tilts_mrad: np.ndarray | None = None  # (T, 2) each tilt's total (optics + its error), stack order

    def thickness_px(self) -> int:
        """The tomogram's depth: the ice or the particles' depth (whichever is larger) plus 10 % and 4 pixels."""
        return reconstruction_depth_px(self.positions_a, self.ice_thickness_a, self.pixel_size_a)


def reconstruction_depth_px(positions_a: np.ndarray, ice_thickness_a: float, pixel_size_a: float) -> int:
    """The depth (px) of the tomogram `difftem reconstruct` makes of a run: the ice or the copies' centres' depth
    (whichever is larger) plus 10 % and 4 pixels."""
    depth = 2 * float(np.abs(positions_a[:, 2]).max()) if len(positions_a) else 0.0
    return int(math.ceil(1.1 * max(ice_thickness_a, depth) / pixel_size_a)) + 4


def amplitude_contrast_of(config: dict) -> float:
    """The weak-object amplitude contrast A of a simulated specimen: w / √(1 + w²), w = imaginary / real potential
    of the atoms (sample.absorption_ratio, or the ice's tabulated ratio at the voltage)."""
    from ..forward.potential import ice_absorption_potential_v

    sample, voltage = config["sample"], config["beam"]["voltage_kv"]
    w = sample.get("absorption_ratio")
    if w is None:
        ice_abs = sample.get("ice_absorption_potential_v") or ice_absorption_potential_v(voltage)
        w = ice_abs / sample.get("ice_mean_potential_v", 4.8775)
    return float(w / math.sqrt(1.0 + w * w))


def read_run(folder: str | Path, *, with_stack: bool = True) -> SeriesRecord:
    """A :class:`SeriesRecord` from a tilt-series run folder (run.json, tilt_series.mrc, tilts.star,
    particles.star); ``with_stack=False`` leaves the stack out (an empty array)."""
    folder = Path(folder)
    run_path = folder / "run.json"
    try:
        run = json.loads(run_path.read_text())
    except (OSError, ValueError):
        raise FormatError("not a readable run record; export needs a tilt-series run folder from difftem simulate",
                          file=run_path) from None
    cfg = run.get("config") if isinstance(run, dict) else None
    if not isinstance(cfg, dict) or not cfg.get("tilt_series"):
        raise FormatError("the run is not a tilt series (config.tilt_series is not set)", file=run_path)
    try:
        return _series_record(folder, cfg, with_stack)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a run.json edited or cut by hand
        raise FormatError(f"config lacks or garbles {exc} (a run record difftem simulate did not write whole); "
                          "simulate the series again", file=run_path) from None


def _read_stack(path: Path) -> tuple[np.ndarray, float]:
    """The tilt series' MRC stack: a series of one tilt is a stack of one image (its file holds one section)."""
    data, header_px = read_mrc_checked(path, "tilt series", missing=(
        "the run is incomplete or not a tilt series; simulate it again with difftem simulate (a config with "
        "tilt_series writes tilt_series.mrc)"))
    if data.ndim == 2:
        data = data[None]
    return data, checked_pixel_size(path, "tilt series", data.shape, 3, header_px, None, True)


def _series_record(folder: Path, cfg: dict, with_stack: bool) -> SeriesRecord:
    if with_stack:
        stack, px = _read_stack(folder / "tilt_series.mrc")
    else:
        stack, px = np.zeros((0, 0, 0), dtype=np.float32), float(cfg["detector"]["pixel_size_a"])
    tilts = relion5.read_tilt_series_star(folder / "tilts.star", missing=(
        "the run is incomplete or not a tilt series; simulate it again with difftem simulate"))
    if with_stack and len(tilts.angles_deg) != stack.shape[0]:
        raise FormatError(f"{len(tilts.angles_deg)} tilts listed for the {stack.shape[0]} images of tilt_series.mrc; "
                          "the run folder's files do not belong together (simulate the series again)",
                          file=folder / "tilts.star")
    blocks = read_star(folder / "tilts.star")
    rows = next(iter(blocks.values()))
    order = rows["difftemAcquisitionOrder"].to_numpy(dtype=np.int64) if "difftemAcquisitionOrder" in rows else \
        np.arange(len(rows))
    dose = rows["difftemDoseEPerA2"].to_numpy(dtype=np.float64) if "difftemDoseEPerA2" in rows else \
        np.zeros(len(rows))
    positions, rotations, names = _ground_truth(folder / "particles.star")
    per_tilt = (rows[["rlnBeamTiltX", "rlnBeamTiltY"]].to_numpy(dtype=np.float64)
                if {"rlnBeamTiltX", "rlnBeamTiltY"} <= set(rows.columns) else None)
    return SeriesRecord(folder.resolve().name or "run", stack, px, tilts.angles_deg, tilts.tilt_axis_deg,
                        tilts.defocus_u_a, tilts.defocus_v_a, tilts.defocus_angle_deg, dose,
                        tilts.pre_exposure_e_per_a2, order, float(cfg["beam"]["voltage_kv"]),
                        float(cfg["optics"]["cs_mm"]), amplitude_contrast_of(cfg),
                        float(cfg["sample"]["ice_thickness_nm"]) * 10.0, positions, rotations, names,
                        _optics_beam_tilt(cfg, per_tilt), per_tilt)


def _optics_beam_tilt(cfg: dict, per_tilt: np.ndarray | None) -> tuple[float, float] | None:
    """The optics' fixed beam tilt (x, y) mrad, when it or any per-tilt beam tilt is set (else None)."""
    optics = cfg.get("optics", {})
    tilt = (float(optics.get("beam_tilt_x_mrad", 0.0)), float(optics.get("beam_tilt_y_mrad", 0.0)))
    return tilt if any(tilt) or per_tilt is not None else None


def record_from_result(result, name: str = "series") -> SeriesRecord:
    """A :class:`SeriesRecord` from an in-memory :class:`~difftem.simulate.pipeline.TiltSeriesResult`."""
    cfg = result.config.model_dump(mode="json")
    rows = result.tilt_rows
    parts = result.metadata.get("particles", [])
    positions = np.array([[p["difftemPositionXA"], p["difftemPositionYA"], p["difftemPositionZA"]] for p in parts],
                         dtype=np.float64).reshape(-1, 3)
    rotations = relion_matrix([p["rlnAngleRot"] for p in parts], [p["rlnAngleTilt"] for p in parts],
                              [p["rlnAnglePsi"] for p in parts]).reshape(-1, 3, 3)

    def col(key):
        return np.array([r[key] for r in rows], dtype=np.float64)

    # each tilt's total beam tilt, as tilts.star writes it: the optics' plus the tilt's error
    optics = result.config.optics
    per_tilt = (np.array([[optics.beam_tilt_x_mrad + r.get("difftemErrorBeamTiltXMrad", 0.0),
                           optics.beam_tilt_y_mrad + r.get("difftemErrorBeamTiltYMrad", 0.0)] for r in rows])
                if rows and any("difftemErrorBeamTiltXMrad" in r for r in rows) else None)

    return SeriesRecord(name, result.tilts.cpu().numpy(), result.pixel_size_a, np.asarray(result.angles_deg),
                        float(result.metadata.get("tilt_axis_deg", 0.0)), col("rlnDefocusU"), col("rlnDefocusV"),
                        col("rlnDefocusAngle"), col("difftemDoseEPerA2"), col("rlnMicrographPreExposure"),
                        col("difftemAcquisitionOrder").astype(np.int64), float(cfg["beam"]["voltage_kv"]),
                        float(cfg["optics"]["cs_mm"]), amplitude_contrast_of(cfg),
                        float(cfg["sample"]["ice_thickness_nm"]) * 10.0, positions, rotations,
                        [p["difftemParticleType"] for p in parts], _optics_beam_tilt(cfg, per_tilt), per_tilt)


def _ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not path.is_file():
        return np.zeros((0, 3)), np.zeros((0, 3, 3)), []
    _, rows = next(((k, v) for k, v in read_star(path).items()), (None, None))
    if rows is None or not len(rows) or "difftemPositionXA" not in rows:
        return np.zeros((0, 3)), np.zeros((0, 3, 3)), []
    pos = rows[["difftemPositionXA", "difftemPositionYA", "difftemPositionZA"]].to_numpy(dtype=np.float64)
    rot = relion_matrix(rows["rlnAngleRot"].to_numpy(dtype=np.float64), rows["rlnAngleTilt"].to_numpy(dtype=np.float64),
                        rows["rlnAnglePsi"].to_numpy(dtype=np.float64)).reshape(-1, 3, 3)
    names = [str(v) for v in rows["difftemParticleType"]] if "difftemParticleType" in rows else ["particle"] * len(pos)
    return pos, rot, names


# ----------------------------------------------------------------------------------------------- writers
def write_imod(rec: SeriesRecord, out: Path) -> list[Path]:
    """``<name>.mrc`` (the stack), ``.rawtlt``, ``.tlt``, ``.xf`` (Rz(−α), no shift) and ``<name>.mrc.mdoc``."""
    make_folder(out)
    stem = rec.name
    n = len(rec.angles_deg)
    mean_defocus = 0.5 * (rec.defocus_u_a + rec.defocus_v_a)
    mdoc = imod.mdoc_frame(rec.angles_deg, pixel_size_a=rec.pixel_size_a, image_shape_yx=rec.stack.shape[-2:],
                           tilt_axis_deg=rec.tilt_axis_deg, exposure_e_per_a2=rec.dose_e_per_a2,
                           prior_dose_e_per_a2=rec.prior_dose_e_per_a2, defocus_a=mean_defocus,
                           voltage_kv=rec.voltage_kv, image_file=f"{stem}.mrc",
                           acquisition_order=rec.acquisition_order)
    return [write_mrc(out / f"{stem}.mrc", rec.stack, rec.pixel_size_a),
            imod.write_tlt(out / f"{stem}.rawtlt", rec.angles_deg), imod.write_tlt(out / f"{stem}.tlt", rec.angles_deg),
            imod.write_xf(out / f"{stem}.xf", imod.axis_transforms(n, rec.tilt_axis_deg)),
            imod.write_mdoc(out / f"{stem}.mrc.mdoc", mdoc)]


def write_relion5(rec: SeriesRecord, out: Path) -> list[Path]:
    """``tomograms.star``, ``tilt_series/<name>.star``, ``tilt_series/<name>.mrcs`` and ``particles.star``."""
    make_folder(out)
    name = rec.name
    stack_name = f"{name}.mrcs"
    rows = relion5.tilt_series_rows(name, stack_name, rec.angles_deg, rec.tilt_axis_deg, rec.defocus_u_a,
                                    rec.defocus_v_a, rec.defocus_angle_deg, rec.prior_dose_e_per_a2,
                                    beam_tilts_mrad=rec.beam_tilts_mrad)
    size = (rec.stack.shape[2], rec.stack.shape[1], rec.thickness_px())
    tomo = relion5.tomograms_row(name, f"tilt_series/{name}.star", voltage_kv=rec.voltage_kv, cs_mm=rec.cs_mm,
                                 amplitude_contrast=rec.amplitude_contrast, pixel_size_a=rec.pixel_size_a,
                                 size_xyz=size)
    written = [write_mrc(out / "tilt_series" / stack_name, rec.stack, rec.pixel_size_a),
               relion5.write_tilt_series_star(out / "tilt_series" / f"{name}.star", name, rows),
               relion5.write_tomograms_star(out / "tomograms.star", [tomo])]
    parts = relion5.particle_rows(name, rec.positions_a, rec.rotations, rec.tilt_axis_deg, names=rec.type_names)
    written.append(relion5.write_particles_star(out / "particles.star", parts, voltage_kv=rec.voltage_kv,
                                                cs_mm=rec.cs_mm, amplitude_contrast=rec.amplitude_contrast,
                                                pixel_size_a=rec.pixel_size_a, beam_tilt_mrad=rec.beam_tilt_mrad))
    return written


def write_copick(rec: SeriesRecord, out: Path, tomogram: np.ndarray | None = None, voxel_size_a: float | None = None,
                 tomo_type: str = "wbp", final_root: Path | None = None) -> list[Path]:
    """copick config, picks per particle type (Å from the tomogram's corner, at the tomogram's voxel spacing) and
    the tomogram as OME-Zarr when given ((Z, Y, X), origin at voxel [Z//2, Y//2, X//2] as difftem's volumes).
    ``final_root``: where ``out`` is moved once written (the config's overlay root)."""
    voxel = float(voxel_size_a or rec.pixel_size_a)
    shape = tomogram.shape if tomogram is not None else (
        rec.thickness_px(), rec.stack.shape[1], rec.stack.shape[2])
    corner = np.array([shape[2] // 2, shape[1] // 2, shape[0] // 2], dtype=np.float64) * voxel
    types = sorted(set(rec.type_names))
    written = [copick_project.write_config(out, rec.name, [{"name": t, "radius_a": 50.0} for t in types],
                                           final_root=final_root)]
    if tomogram is not None:
        written.append(copick_project.write_tomogram(out, rec.name, tomogram, voxel, tomo_type))
    names = np.array(rec.type_names)
    for t in types:
        sel = names == t
        written.append(copick_project.write_picks(out, rec.name, t, rec.positions_a[sel] + corner,
                                                  rec.rotations[sel], voxel))
    return written


def export_tilt_series(source, out: str | Path, formats, *, tomogram: np.ndarray | None = None,
                       tomogram_voxel_a: float | None = None, name: str | None = None,
                       overwrite: bool = False) -> dict[str, list[Path]]:
    """Write ``formats`` (from :data:`FORMATS`) of ``source`` — a run folder, a :class:`SeriesRecord` or a
    ``TiltSeriesResult`` — into ``out/<format>/``; returns the files written per format. All or nothing: each set
    is written into a hidden staging folder beside its place (:func:`~difftem.io.files.staging_folder`: one a killed
    export left is removed by the next) and all are moved into place once every set is complete; a set already in
    ``out`` is refused unless ``overwrite`` (then replaced whole, not mixed with the new one)."""
    formats = parse_formats(formats) if isinstance(formats, str) else list(formats)
    for f in formats:
        if f not in FORMATS:
            raise ArgumentError("formats", f": unknown format {f!r}; choose from {', '.join(FORMATS)}")
    rec = _record_of(source, name)
    out = Path(out)
    held = [f for f in formats if (out / f).exists()]
    if held and not overwrite:
        raise ArgumentError("out", f" {out}: already holds {', '.join(f + '/' for f in held)}; choose another folder, "
                                   "or overwrite to replace those sets whole", mentions=("overwrite",))
    make_folder(out)
    try:  # one staging folder per set, beside it: all are moved into place once every set is complete
        with contextlib.ExitStack() as stack:
            stage = {f: stack.enter_context(staging_folder(out / f, overwrite=overwrite)) for f in formats}
            done = {}
            if "imod" in stage:
                done["imod"] = write_imod(rec, stage["imod"])
            if "relion5" in stage:
                done["relion5"] = write_relion5(rec, stage["relion5"])
            if "copick" in stage:
                done["copick"] = write_copick(rec, stage["copick"], tomogram, tomogram_voxel_a,
                                              final_root=out / "copick")
            written = {f: [out / f / Path(p).relative_to(stage[f]) for p in files] for f, files in done.items()}
    except OSError as exc:  # a full disk, a folder that became read-only: nothing of the new sets stays
        raise OutputError(f"{out}: cannot write the sets there ({exc.strerror or exc}); nothing was exported") \
            from None
    return written


def _record_of(source, name: str | None) -> SeriesRecord:
    """The :class:`SeriesRecord` of a record, a run folder or a ``TiltSeriesResult``, its name file-safe."""
    if isinstance(source, SeriesRecord):
        rec = source
    elif isinstance(source, (str, Path)):
        rec = read_run(source)
    else:
        rec = record_from_result(source)
    if name:
        rec.name = name
    rec.name = "".join(c if c.isalnum() or c in "-." else "_" for c in rec.name) or "series"
    return rec
