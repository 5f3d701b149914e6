"""The command line (`difftem --help`): the only package that imports typer and rich; nothing imports it.

Each module registers its commands on the Typer app (:mod:`._app`); they parse flags, call the library and print.
This module is the console script's entry and imports nothing heavy, so a Ctrl-C while the app, typer and torch
are still loading ends like one during a command: one line and exit code 130, no traceback.
"""

from __future__ import annotations

import sys


def main() -> None:  # console-script entry point
    try:
        from ._app import app

        app()
    except KeyboardInterrupt:  # before any command ran (while importing): nothing was done
        _interrupted("nothing was done")
    except SystemExit as exc:  # typer turns a Ctrl-C outside a command's own handling into a silent exit 130
        if not isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            raise
        _interrupted("the command was stopped")


def _interrupted(state: str) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
    print(f"interrupted: {state}", file=sys.stderr, flush=True)
    sys.exit(130)


def __getattr__(name: str):
    if name == "app":  # `from difftem.cli import app` (tests, embedding) loads the commands
        from ._app import app

        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
