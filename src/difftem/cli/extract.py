"""`difftem extract`: single-particle stacks (RELION STAR + .mrcs, cryoSPARC .cs) from a simulated micrograph."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.errors import ArgumentError, DifftemError
from ._console import fail, note, say
from ._formats import parse_formats


def register(app: typer.Typer) -> None:
    @app.command("extract")
    def extract_cmd(
        run: Path = typer.Argument(..., help="a folder `difftem simulate` wrote (one micrograph)"),
        box: int = typer.Option(..., "--box", help="box side in micrograph pixels (even)"),
        out: Path = typer.Option(..., "--out", "-o", help="folder for particles.mrcs, particles.star, particles.cs"),
        formats: str = typer.Option("relion,cryosparc", help="comma list: relion (STAR 3.1+), cryosparc (.cs)"),
        downsample: int | None = typer.Option(None, help="Fourier-crop each box to this side (pixels, even)"),
        normalise: bool = typer.Option(True, "--normalise/--no-normalise",
                                       help="background ring mean 0, std 1 (RELION's normalisation)"),
        invert: bool = typer.Option(True, "--invert/--no-invert", help="protein white, as RELION and cryoSPARC expect"),
        background_radius: float | None = typer.Option(
            None, help="background ring: pixels beyond this radius (micrograph pixels; default 0.75 × box / 2)"),
        image: str = typer.Option("micrograph", help="micrograph (detected) or noiseless"),
        particle_type: str | None = typer.Option(None, help="only copies of this particle type"),
        seed: int = typer.Option(0, help="seed of the random half-sets (rlnRandomSubset)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an --out folder that holds files"),
    ):
        """Box the particles of RUN at their ground-truth centres into OUT: a .mrcs stack, a RELION 3.1+ STAR
        (optics table; per particle angles, origins in Å, defocus at its depth) and a cryoSPARC .cs."""
        from ..simulate.particles import PARTICLE_FORMATS, particles_from_run, write_particle_folder

        if image not in ("micrograph", "noiseless"):
            fail(f"--image {image!r}: choose micrograph or noiseless")
        try:
            chosen = parse_formats(formats, PARTICLE_FORMATS)
            stack = particles_from_run(run, box_px=box, image=image, particle_type=particle_type,
                                       downsample_px=downsample, normalise=normalise, invert=invert,
                                       background_radius_px=background_radius, seed=seed)
            written = write_particle_folder(stack, out, chosen, overwrite=overwrite, inputs=[run],
                                            overwrite_hint="pass --overwrite")
        except ArgumentError as exc:  # the library's argument names, as this command's flags
            flags = {"box_px": "box", "downsample_px": "downsample", "background_radius_px": "background_radius"}
            fail(ArgumentError(flags.get(exc.argument, exc.argument), exc.detail))
        except DifftemError as exc:
            fail(exc)
        for n in stack.notes:
            note("note", n)
        say(f"{len(stack)} particles, {stack.images.shape[-1]} px at {stack.pixel_size_a:g} Å: "
            + ", ".join(str(p) for p in written))
