"""Writing a simulation's results into a folder: images, ground truth, a preview and the run record.

Every file goes through a temporary name and one rename; the run record (run.json) is written last and lists
the outputs, so a folder with a run.json holds a complete run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io.files import write_json, write_mrc, write_npy, write_preview_png, write_text
from ..io.star import STAR_CONVENTION, star_text
from .pipeline import SimulationResult, TiltSeriesResult

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
    preview = np.concatenate([result.noiseless.cpu().numpy(), result.micrograph.cpu().numpy()], axis=1)
    written.append(write_preview_png(out / "preview.png", preview, "noise-free (left) | detected (right)"))
    metadata = dict(result.metadata)
    particles = metadata.pop("particles", [])
    written.append(write_text(out / "particles.star", star_text(particles, "particles", STAR_CONVENTION)))
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
    written = [write_mrc(out / f"{stem}.mrc", result.tilts.cpu().numpy(), px),
               write_mrc(out / f"{stem}_noiseless.mrc", result.noiseless.cpu().numpy(), px),
               write_text(out / f"{stem}.tlt", "".join(f"{a:.2f}\n" for a in result.angles_deg)),
               write_text(out / "tilts.star", star_text(result.tilt_rows, "tilts",
                                                        "difftem tilt series: one row per image of tilt_series.mrc, "
                                                        "ordered by angle; doses in e/A^2, defocus in A")),
               write_text(out / "particles.star", star_text(metadata.pop("particles", []), "particles",
                                                            STAR_CONVENTION + "\npositions and angles are in the "
                                                            "untilted specimen frame"))]
    picks = sorted({0, len(result.angles_deg) // 2, len(result.angles_deg) - 1})
    montage = np.concatenate([result.tilts[i].cpu().numpy() for i in picks], axis=1)
    titles = " | ".join(f"{result.angles_deg[i]:+.0f} deg" for i in picks)
    written.append(write_preview_png(out / "preview.png", montage, titles))
    run = {"config": result.config.model_dump(mode="json"), **metadata, "angles_deg": result.angles_deg,
           "outputs": [p.name for p in written] + ["run.json"],
           "units": {"tilt_series": "counts per pixel (x gain), tilts along the first axis", "pixel_size": "A"}}
    write_json(out / "run.json", run)
    return run


def run_and_write(config, out: str | Path, save: set[str] | frozenset = frozenset(), progress=None) -> dict:
    """Simulate ``config`` (a micrograph, or a tilt series when ``tilt_series`` is set) and write it into ``out``.
    ``progress(done, total)`` counts slices (micrograph) or tilts (series)."""
    from .pipeline import simulate, simulate_tilt_series

    if config.tilt_series is not None:
        return write_tilt_series(simulate_tilt_series(config, progress=progress), out)
    return write_simulation(simulate(config, keep_potential="potential" in save, progress=progress), out, save)
