"""The Typer application: each command module registers its commands on :data:`app`."""

from __future__ import annotations

import typer

from . import calibrate, convert, dataset, denoise, export, extract, fit_mtf, info, simulate, tomo

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="difftem: fast, differentiable TEM simulation of biological specimens.")
for _module in (simulate, fit_mtf, info, convert, tomo, denoise, dataset, export, extract, calibrate):
    _module.register(app)

__all__ = ["app"]
