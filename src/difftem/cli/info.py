"""`difftem info`: versions, devices, threads."""

from __future__ import annotations

import sys

import typer

from ..core.version import __version__
from ._console import say


def register(app: typer.Typer) -> None:
    @app.command()
    def info():
        """Print versions, devices and thread settings."""
        import torch

        say(f"difftem {__version__}")
        say(f"python {sys.version.split()[0]}, torch {torch.__version__}, threads {torch.get_num_threads()}")
        cuda = torch.cuda.is_available()
        say(f"cuda available: {cuda}")
        from ..forward import native

        say("compiled CPU kernels: " + ("in use" if native.available() else
                                        "switched off (DIFFTEM_NATIVE=0)" if native._native is not None else
                                        "not built (no C compiler at install): the torch paths run"))
        if cuda:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                say(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB")
