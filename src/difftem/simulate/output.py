"""Writing a simulation's results into a folder: images, ground truth, a preview and the run record.

Every file goes through a temporary name and one rename; the run record (run.json) is written last and lists
the outputs, so a folder with a run.json holds a complete run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io.files import write_json, write_mrc, write_npy
from ..io.preview import write_panels_png
from ..io.star import STAR_CONVENTION, write_star
from ..io.tlt import write_tlt
from .pipeline import SimulationResult, TiltSeriesResult, simulate, simulate_tilt_series

#: Optional outputs of a single micrograph.
SAVE_CHOICES = frozenset({"potential", "exit_wave"})


def write_simulation(result: SimulationResult, out: str | Path, save: set[str] | frozenset = frozenset()) -> dict:
    """Write a micrograph's images (MRC, pixel size in the header), ground truth (particles.star), a preview
    and run.json into ``out``; return the run record. ``save``: extra outputs from :data:`SAVE_CHOICES`."""
    out = Path(out)
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
    particles = metadata.pop("particles", [])
    written.append(write_star(out / "particles.star", {"particles": particles}, STAR_CONVENTION))
    metadata["timings"] = {**metadata.get("timings", {}), "write_s": time.perf_counter() - t}
    run = {"config": result.config.model_dump(mode="json"), **metadata,
           "outputs": [p.name for p in written] + ["run.json"],
           "units": {"micrograph": "counts per pixel (x gain)", "noiseless": "expected counts after MTF (x gain)",
                     "projected_potential": "V*A, real part, summed over slices", "pixel_size": "A"}}
    write_json(out / "run.json", run)
    return run


def write_tilt_series(result: TiltSeriesResult, out: str | Path) -> dict:
    """Write a tilt series (MRC stacks ordered by angle, IMOD .tlt, tilts.star, particles.star, a preview and
    run.json) into ``out``; return the run record."""
    out = Path(out)
    px = result.pixel_size_a
    stem = "tilt_series"
    metadata = dict(result.metadata)
    cfg = result.config
    tilt_rows = [{"rlnMicrographName": f"{j + 1}@{stem}.mrc", **row, "rlnMicrographPixelSize": px,
                  "rlnVoltage": cfg.beam.voltage_kv, "rlnSphericalAberration": cfg.optics.cs_mm}
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
               write_star(out / "particles.star", {"particles": metadata.pop("particles", [])},
                          STAR_CONVENTION + "\npositions and angles are in the untilted specimen frame")]
    written.append(write_panels_png(out / "preview.png", _tilt_panels(result), px, _acquisition_title(
        cfg, f"dose {_total_dose(result):g} e/Å² in {len(result.angles_deg)} tilts, "
             f"tilt axis {metadata.get('tilt_axis_deg', 0.0):g}°")))
    run = {"config": result.config.model_dump(mode="json"), **metadata, "angles_deg": result.angles_deg,
           "outputs": [p.name for p in written] + ["run.json"],
           "units": {"tilt_series": "counts per pixel (x gain), tilts along the first axis", "pixel_size": "A"}}
    write_json(out / "run.json", run)
    return run


def _acquisition_title(cfg, dose: str) -> str:
    """The figure title of a preview: defocus, astigmatism when present, dose, pixel size, voltage."""
    o = cfg.optics
    defocus = f"defocus {o.defocus_um:g} µm"
    if o.astigmatism_um:
        defocus += f" (astigmatism {o.astigmatism_um:g} µm at {o.astigmatism_angle_deg:g}°)"
    return f"{defocus} · {dose} · pixel size {cfg.detector.pixel_size_a:g} Å · {cfg.beam.voltage_kv:g} kV"


def _total_dose(result: TiltSeriesResult) -> float:
    return float(sum(row.get("difftemDoseEPerA2", 0.0) for row in result.tilt_rows))


def _tilt_panels(result: TiltSeriesResult) -> list[tuple[np.ndarray, str]]:
    """The lowest, middle and highest tilts (detected), each titled with its angle and prior dose."""
    n = len(result.angles_deg)
    panels = []
    for i in sorted({0, n // 2, n - 1}):
        row = result.tilt_rows[i] if i < len(result.tilt_rows) else {}
        title = f"tilt {result.angles_deg[i]:+.4g}°"
        if "rlnMicrographPreExposure" in row:
            title += f" (after {row['rlnMicrographPreExposure']:.3g} e/Å²)"
        panels.append((result.tilts[i].cpu().numpy(), title))
    return panels


def run_and_write(config, out: str | Path, save: set[str] | frozenset = frozenset(), progress=None) -> dict:
    """Simulate ``config`` (a micrograph, or a tilt series when ``tilt_series`` is set) and write it into ``out``.
    ``progress(done, total)`` counts slices (micrograph) or tilts (series)."""
    if config.tilt_series is not None:
        return write_tilt_series(simulate_tilt_series(config, progress=progress), out)
    return write_simulation(simulate(config, keep_potential="potential" in save, progress=progress), out, save)
