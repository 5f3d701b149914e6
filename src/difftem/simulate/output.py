"""Writing a simulation's results into a folder: images, ground truth, a preview and the run record.

A run's folder is all or nothing: the files are written into a hidden staging folder beside it
(``.<name>.staging-<host>-<pid>-<random>``) which is renamed into place at the end, so the folder is absent (or
as it was) until it holds the complete run. The run record (run.json) lists every output. A folder that already
holds files is refused unless ``overwrite``, which replaces it whole; staging folders left by killed runs are
removed by the next run into the same folder.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.errors import ArgumentError
from ..io.files import (
    blocking_folder,
    check_inputs_outside,
    clean_stale_folders,
    folder_state,
    staging_folder,
    write_json,
    write_mrc,
    write_npy,
)
from ..io.preview import write_panels_png
from ..io.star import STAR_CONVENTION, write_star
from ..io.tlt import write_tlt
from ..io.xf import write_xf
from ..specimen.scene import GROUND_TRUTH_COLUMNS
from .camera_images import sensor_grid, write_camera_files
from .labels import write_labels
from .movie import write_movie
from .pipeline import SimulationResult, TiltSeriesResult, simulate, simulate_tilt_series

#: Optional outputs of a single micrograph.
SAVE_CHOICES = frozenset({"potential", "exit_wave"})


def prepare_out(out: str | Path, *, overwrite: bool = False,
                overwrite_hint: str = "pass overwrite=True", inputs=()) -> list[Path]:
    """Check ``out`` before a run: a missing or empty folder is fine, a folder with files only with ``overwrite``
    (``overwrite_hint`` says how to ask for it) and when it holds none of the run's ``inputs``, anything else is an
    :class:`ArgumentError` naming ``out``. Removes what killed runs left beside ``out``; returns the staging
    folders of other hosts' runs, left alone."""
    if overwrite:
        check_inputs_outside(out, inputs)
    try:
        state = folder_state(out)
        if state == "other":
            raise ArgumentError("out", f" {out}: exists and is not a folder; name a new or empty folder")
        if state == "full" and not overwrite:
            raise ArgumentError("out", f" {out}: is not empty ({_some_entries(Path(out))}); choose a new or empty "
                                       f"folder, or {overwrite_hint} to replace it whole")
        _check_writable_beside(Path(out))
        return clean_stale_folders(out)[1]
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, no permission to look
        raise ArgumentError("out", f" {str(out)[:200]!r}: cannot use this path ({_reason(exc)})") from None


def _check_writable_beside(out: Path) -> None:
    """Before the work: the run is staged beside ``out`` (in its parent, or the nearest folder above that exists), so
    that folder must take new entries; a read-only place failed only after the whole simulation."""
    parent = blocking_folder(out)
    if parent is not None:
        raise ArgumentError("out", f" {out}: cannot write the run there ({parent} is not a folder this process can "
                                   "write to); choose another folder")


def _some_entries(folder: Path, n: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0] or type(exc).__name__


@contextlib.contextmanager
def _staged(out: str | Path, overwrite: bool) -> Iterator[Path]:
    """A staging folder that becomes ``out`` when the block ends without an exception."""
    prepare_out(out, overwrite=overwrite)
    try:
        with staging_folder(out, overwrite=overwrite) as tmp:
            yield tmp
    except FileExistsError:  # appeared while the run was writing
        prepare_out(out, overwrite=overwrite)
        raise
    except OSError as exc:
        raise ArgumentError("out", f" {out}: cannot write the run there ({_reason(exc)})") from None


def write_simulation(result: SimulationResult, out: str | Path, save: set[str] | frozenset = frozenset(), *,
                     overwrite: bool = False) -> dict:
    """Write a micrograph's images (MRC, pixel size in the header), ground truth (particles.star), a preview
    and run.json into ``out`` (all or nothing: see the module's docstring); return the run record. ``save``:
    extra outputs from :data:`SAVE_CHOICES`; ``overwrite``: replace a folder that holds files."""
    with _staged(out, overwrite) as tmp:
        return _write_simulation(result, tmp, save)


def _write_simulation(result: SimulationResult, out: Path, save: set[str] | frozenset) -> dict:
    t = time.perf_counter()
    px = result.pixel_size_a
    written = [write_mrc(out / "micrograph.mrc", result.micrograph.cpu().numpy(), px),
               write_mrc(out / "noiseless.mrc", result.noiseless.cpu().numpy(), px)]
    if result.projected_potential is not None:
        written.append(write_mrc(out / "projected_potential.mrc", result.projected_potential.real.cpu().numpy(), px))
    if "exit_wave" in save:
        written.append(write_npy(out / "exit_wave.npy", result.exit_wave.cpu().numpy().astype(np.complex64)))
    cfg = result.config
    written.append(write_panels_png(out / "preview.png", [(result.noiseless.cpu().numpy(), "noise-free"),
                                                          (result.micrograph.cpu().numpy(), "detected")],
                                    px, _acquisition_title(cfg, f"dose {cfg.beam.dose_e_per_a2:g} e/Å²")))
    metadata = dict(result.metadata)
    written.append(write_star(out / "particles.star", {"particles": _particles_table(metadata.pop("particles", []))},
                              STAR_CONVENTION))
    written += _vesicles_star(out, metadata)
    written += _filaments_star(out, metadata)
    if result.labels is not None:
        written += write_labels(result.labels, out)
    if result.movie is not None:
        written += write_movie(result.movie, out, cfg.movie.formats)
        metadata["movie"] = result.movie.metadata
    elif result.camera is not None:  # the camera's gain reference and defects beside the image it read
        written += write_camera_files(result.camera, out, *sensor_grid(result.camera, result.micrograph.shape, px))[0]
    metadata["timings"] = {**metadata.get("timings", {}), "write_s": time.perf_counter() - t}
    run = {"config": result.config.model_dump(mode="json"), **metadata,
           "outputs": [p.name for p in written] + ["run.json"],
           "units": {"micrograph": "counts per pixel (x gain)", "noiseless": "expected counts after MTF (x gain)",
                     **({"micrograph": f"camera: {metadata['camera']['units']}",
                         "noiseless": "camera: expected reading without the fixed pattern"}
                        if "camera" in metadata else {}),
                     "projected_potential": "V*A, real part, summed over slices", "pixel_size": "A"}}
    write_json(out / "run.json", run)
    return run


def write_tilt_series(result: TiltSeriesResult, out: str | Path, *, overwrite: bool = False) -> dict:
    """Write a tilt series (MRC stacks ordered by angle, IMOD .tlt, tilts.star, particles.star, a preview and
    run.json) into ``out`` (all or nothing: see the module's docstring); return the run record.
    ``overwrite``: replace a folder that holds files."""
    with _staged(out, overwrite) as tmp:
        return _write_tilt_series(result, tmp)


def _write_tilt_series(result: TiltSeriesResult, out: Path) -> dict:
    px = result.pixel_size_a
    stem = "tilt_series"
    metadata = dict(result.metadata)
    cfg = result.config
    tilt_rows = [{"rlnMicrographName": f"{j + 1}@{stem}.mrc", **row, "rlnMicrographPixelSize": px,
                  "rlnVoltage": cfg.beam.voltage_kv, "rlnSphericalAberration": cfg.optics.cs_mm,
                  **_beam_tilt_columns(cfg.optics, row)}
                 for j, row in enumerate(result.tilt_rows)]
    written = [write_mrc(out / f"{stem}.mrc", result.tilts.cpu().numpy(), px),
               write_mrc(out / f"{stem}_noiseless.mrc", result.noiseless.cpu().numpy(), px),
               write_tlt(out / f"{stem}.tlt", result.angles_deg),
               write_star(out / "tilts.star", {"tilts": tilt_rows},
                          f"difftem tilt series: one row per image of {stem}.mrc (rlnMicrographName index@stack), "
                          "ordered by angle\nangles in degrees; tilt axis: the image y axis turned by "
                          "rlnTomoNominalTiltAxisAngle about +z\ndoses in e/A^2 (rlnMicrographPreExposure: before "
                          "this tilt)\ndefocus in A at the ice mid-plane, U - V = astigmatism, rlnDefocusAngle: "
                          "direction of U from x\npixel size in A, voltage in kV, Cs in mm"),
               write_star(out / "particles.star", {"particles": _particles_table(metadata.pop("particles", []))},
                          STAR_CONVENTION + "\npositions and angles are in the untilted specimen frame")]
    written += _vesicles_star(out, metadata)
    written += _filaments_star(out, metadata)
    if "tilt_errors" in metadata:  # the truth of the acquisition errors, as IMOD alignment writes it
        xf = np.asarray(metadata["tilt_errors"]["xf"])
        # named apart from an alignment .xf: these are the errors alone (identity for a perfect tilt), which
        # reconstruct applies with --xf; an IMOD alignment .xf beside the stack also turns the tilt axis
        written += [write_xf(out / "tilt_errors.xf", xf[:, :4].reshape(-1, 2, 2), xf[:, 4:]),
                    write_tlt(out / f"{stem}_true.tlt", metadata["tilt_errors"]["true_angles_deg"])]
    if result.labels is not None:
        written += write_labels(result.labels, out)
    if result.camera is not None:  # the camera's gain reference and defects beside the tilts it read
        written += write_camera_files(result.camera, out, *sensor_grid(result.camera, result.tilts.shape, px))[0]
    panels, columns = _tilt_panels(result)
    written.append(write_panels_png(out / "preview.png", panels, px, _acquisition_title(
        cfg, f"dose {_total_dose(result):g} e/Å² in {len(result.angles_deg)} tilts, "
             f"tilt axis {metadata.get('tilt_axis_deg', 0.0):g}°"), ncols=columns))
    run = {"config": result.config.model_dump(mode="json"), **metadata, "angles_deg": result.angles_deg,
           "outputs": [p.name for p in written] + ["run.json"],
           "units": {"tilt_series": "counts per pixel (x gain), tilts along the first axis", "pixel_size": "A"}}
    write_json(out / "run.json", run)
    return run


def _particles_table(rows: list[dict]):
    """particles.star's loop: the ground-truth rows, or with no particles their columns and no rows (an empty list
    would get write_star's one placeholder column, and readers would not find the columns)."""
    if rows:
        return rows
    import pandas as pd

    return pd.DataFrame(columns=list(GROUND_TRUTH_COLUMNS))


def _beam_tilt_columns(optics, row: dict) -> dict:
    """rlnBeamTiltX/Y (mrad) of a tilt, the optics' plus the tilt's error, when any beam tilt is set."""
    bx = optics.beam_tilt_x_mrad + row.get("difftemErrorBeamTiltXMrad", 0.0)
    by = optics.beam_tilt_y_mrad + row.get("difftemErrorBeamTiltYMrad", 0.0)
    if not (optics.beam_tilt_x_mrad or optics.beam_tilt_y_mrad or "difftemErrorBeamTiltXMrad" in row):
        return {}
    return {"rlnBeamTiltX": bx, "rlnBeamTiltY": by}


def _vesicles_star(out: Path, metadata: dict) -> list[Path]:
    """vesicles.star (one row per vesicle: centre and radius to the bilayer's mid-plane, Å) when the run has any."""
    ves = metadata.get("vesicles")
    if not ves or not ves["count"]:
        return []
    rows = [{"difftemVesicleIndex": i, "difftemCentreXA": c[0], "difftemCentreYA": c[1], "difftemCentreZA": c[2],
             "difftemRadiusA": r} for i, (c, r) in enumerate(zip(ves["centres_a"], ves["radii_a"], strict=True))]
    return [write_star(out / "vesicles.star", {"vesicles": rows},
                       "difftem vesicles: centres (A) in the untilted specimen frame (x, y as the particles', z along "
                       "the beam at zero tilt), radius (A) to the bilayer's mid-plane; profile in run.json")]


def _filaments_star(out: Path, metadata: dict) -> list[Path]:
    """filaments.star when the run has filaments: table ``filaments`` (one row per filament: its subunits' rows of
    particles.star, length, radius, persistence length, instance label) and table ``centrelines`` (its axis points,
    Å, untilted specimen frame). The points leave run.json (its summary stays)."""
    fil = metadata.get("filaments")
    if not fil or not fil["count"]:
        return []
    lines = fil["centrelines"]
    metadata["filaments"] = {k: v for k, v in fil.items() if k != "centrelines"}
    rows = [{"difftemFilamentIndex": r["index"], "difftemParticleType": r["type"], "difftemSubunits": r["n_subunits"],
             "difftemFirstParticleRow": r["first_particle_row"] + 1, "difftemLengthA": r["length_a"],
             "difftemRadiusA": r["radius_a"], "difftemPersistenceLengthNm": r["persistence_length_nm"],
             "difftemInstanceLabel": r["instance"]} for r in fil["filaments"]]
    points = [{"difftemFilamentIndex": line["filament"], "difftemSubunitIndex": k, "difftemCentreXA": p[0],
               "difftemCentreYA": p[1], "difftemCentreZA": p[2]}
              for line in lines for k, p in zip(line["nodes"], line["points_a"], strict=True)]
    return [write_star(out / "filaments.star", {"filaments": rows, "centrelines": points},
                       "difftem filaments: subunits difftemFirstParticleRow ... + difftemSubunits - 1 (1-based rows of "
                       "particles.star); centrelines: the axis point of subunit difftemSubunitIndex (0-based along "
                       "the filament, thinned to about one per 10 A), A, untilted specimen frame; instance label: "
                       "the filament's value in labels_instance.mrc")]


def _acquisition_title(cfg, dose: str) -> str:
    """The figure title of a preview: defocus, astigmatism when present, dose, pixel size, voltage."""
    o = cfg.optics
    defocus = f"defocus {o.defocus_um:g} µm"
    if o.astigmatism_um:
        defocus += f" (astigmatism {o.astigmatism_um:g} µm at {o.astigmatism_angle_deg:g}°)"
    return f"{defocus} · {dose} · pixel size {cfg.detector.pixel_size_a:g} Å · {cfg.beam.voltage_kv:g} kV"


def _total_dose(result: TiltSeriesResult) -> float:
    return float(sum(row.get("difftemDoseEPerA2", 0.0) for row in result.tilt_rows))


def _tilt_panels(result: TiltSeriesResult) -> tuple[list[tuple[np.ndarray, str]], int]:
    """The lowest, middle and highest tilts: detected (each titled with its angle and prior dose) over their
    noise-free images (at a tomogram's few e/Å² per tilt the detected ones are mostly noise); and the columns."""
    n = len(result.angles_deg)
    shown = sorted({0, n // 2, n - 1})
    detected, clean = [], []
    for i in shown:
        row = result.tilt_rows[i] if i < len(result.tilt_rows) else {}
        title = f"tilt {result.angles_deg[i]:+.4g}°"
        if "rlnMicrographPreExposure" in row:
            title += f" (after {row['rlnMicrographPreExposure']:.3g} e/Å²)"
        detected.append((result.tilts[i].cpu().numpy(), title))
        if result.noiseless.shape == result.tilts.shape:
            clean.append((result.noiseless[i].cpu().numpy(), f"noise-free, tilt {result.angles_deg[i]:+.4g}°"))
    return detected + clean, len(shown)


def run_and_write(config, out: str | Path, save: set[str] | frozenset = frozenset(), progress=None, *,
                  overwrite: bool = False) -> dict:
    """Simulate ``config`` (a micrograph, or a tilt series when ``tilt_series`` is set) and write it into ``out``.
    ``progress(done, total)`` counts slices (micrograph) or tilts (series). ``out`` is checked before the
    simulation starts (see :func:`prepare_out`)."""
    prepare_out(out, overwrite=overwrite)
    if config.tilt_series is not None:
        return write_tilt_series(simulate_tilt_series(config, progress=progress), out, overwrite=overwrite)
    return write_simulation(simulate(config, keep_potential="potential" in save, progress=progress), out, save,
                            overwrite=overwrite)
