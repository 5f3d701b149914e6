"""`difftem convert`: a TEM-simulator input file as a commented difftem YAML config."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.errors import DifftemError
from ..io.files import write_text
from ..temsim import load_inp, to_yaml
from ._console import fail, note, say


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert_cmd(
        inp: Path = typer.Argument(..., help="TEM-simulator 1.3 input file (.inp)"),
        out: Path | None = typer.Option(None, "--out", "-o", help="YAML config to write; default: print it"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out file"),
    ):
        """Translate a TEM-simulator input file into a difftem YAML config; every field is commented with the
        TEM-simulator parameter(s) it comes from, and approximations are listed."""
        try:
            if out is not None:
                _check_out(inp, out, overwrite)
            result = load_inp(inp)
            text = to_yaml(result)
            if out is not None:
                write_text(out, text)
        except DifftemError as exc:
            fail(exc)
        for n in result.notes:
            note("note", n)
        if out is None:
            typer.echo(text, nl=False)
        else:
            say(f"wrote {out} ({sum(1 for m in result.mapping if m.field)} parameters mapped, "
                f"{len(result.notes)} notes)")


def _check_out(inp: Path, out: Path, overwrite: bool) -> None:
    """--out is never the input file (the .inp was replaced by its YAML), and an existing file is replaced only with
    --overwrite; a folder or a missing place fails as in every command (``check_output_file``)."""
    from ..core.errors import OutputError
    from ..io.files import check_output_file

    try:
        same = out.exists() and inp.exists() and out.samefile(inp)
    except OSError:
        same = False
    if same:
        raise OutputError(f"--out {out}: is the input file; name a new YAML file")
    if out.is_file() and not overwrite:
        raise OutputError(f"--out {out}: exists; name a new file, or pass --overwrite to replace it")
    check_output_file(out)
