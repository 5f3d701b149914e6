"""`difftem export`: a simulated tilt series as IMOD, RELION-5 and copick sets (registered by difftem.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.errors import ArgumentError, DifftemError


def export_run(run: Path, out: Path, formats: str, *, overwrite: bool = False) -> dict:
    """Export the tilt-series run folder ``run`` into ``out/<format>/`` for each of ``formats`` (a comma list);
    copick gets a CTF-corrected (phase flip) WBP tomogram at the tilt series' pixel size, sized by the metadata."""
    import numpy as np
    import torch

    from ..simulate.export import export_tilt_series, parse_formats, read_run
    from ..tomo.ctf import ctf_correct
    from ..tomo.reconstruct import reconstruct
    from ..tomo.series import from_run_folder

    chosen = parse_formats(formats)
    if not chosen:
        raise ArgumentError("formats", ": give one or more of imod, relion5, copick (comma-separated)")
    tomogram = None
    rec = read_run(run)
    if "copick" in chosen:
        meta = from_run_folder(run)
        stack = torch.as_tensor(np.ascontiguousarray(rec.stack))
        mean = stack.mean(dim=(-2, -1), keepdim=True)
        data, _ = ctf_correct(-(stack - mean) / mean, meta.angles_deg, meta.ctf, rec.pixel_size_a,
                              tilt_axis_deg=rec.tilt_axis_deg)
        tomogram = reconstruct(data, meta.angles_deg, pixel_size_a=rec.pixel_size_a,
                               tilt_axis_deg=rec.tilt_axis_deg, thickness_a=meta.thickness_a,
                               device="cpu").volume.numpy()
    return export_tilt_series(rec, out, chosen, tomogram=tomogram, tomogram_voxel_a=rec.pixel_size_a,
                              overwrite=overwrite)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        run: Path = typer.Argument(..., help="a tilt-series run folder written by difftem simulate"),
        out: Path | None = typer.Option(None, "--out", "-o", help="where the sets go (default: RUN itself)"),
        formats: str = typer.Option("imod,relion5,copick", "--formats", help="comma list: imod, relion5, copick"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace sets of these formats already in OUT "
                                                                  "(each replaced whole)"),
    ):
        """Write RUN's tilt series as IMOD (.mrc, .rawtlt/.tlt, .xf, .mdoc), RELION-5 (tomograms.star, tilt-series
        and particles STAR) and copick (config, OME-Zarr tomogram, picks) sets under OUT/<format>/."""
        from ._console import fail, say

        try:
            done = export_run(run, out or run, formats, overwrite=overwrite)
        except DifftemError as exc:
            fail(exc)
        for fmt, files in done.items():
            say(f"{fmt}: {', '.join(str(p) for p in files)}")
