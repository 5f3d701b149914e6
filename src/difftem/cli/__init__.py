"""The command line (`difftem --help`): the only package that imports typer and rich; nothing imports it.

Each module registers its commands on :data:`app`; they parse flags, call the library and print.
"""

from __future__ import annotations

import typer

from . import convert, dataset, denoise, fit_mtf, info, simulate, tomo

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="difftem: fast, differentiable TEM simulation of biological specimens.")
for _module in (simulate, fit_mtf, info, convert, tomo, denoise, dataset):
    _module.register(app)


def main() -> None:  # console-script entry point
    app()


__all__ = ["app", "main"]
