"""The command line (`difftem --help`): the only package that imports typer and rich; nothing imports it.

Each module registers its commands on the Typer app (:mod:`._app`); they parse flags, call the library and print.
This module is the console script's entry and imports nothing heavy, so a Ctrl-C while the app, typer and torch
are still loading ends like one during a command: one line and exit code 130, no traceback (while torch itself
loads, the Ctrl-C is held until it has: see :func:`_load_torch`).
"""

from __future__ import annotations

import contextlib
import sys

#: commands that never import torch (the others do, so it is loaded first with Ctrl-C held: :func:`_load_torch`)
TORCH_FREE_COMMANDS = {"convert"}


def main() -> None:  # console-script entry point
    try:
        args = sys.argv[1:]
        from ..core.threads import one_thread_for_numpy_blas

        one_thread_for_numpy_blas()
        with _start_up_without_collections():
            if args and args[0] not in TORCH_FREE_COMMANDS and not {"--help", "-h"} & set(args):
                _load_torch()
            from ._app import app

        app()
    except KeyboardInterrupt:  # before any command ran (while importing): nothing was done
        _interrupted("nothing was done")
    except SystemExit as exc:  # typer turns a Ctrl-C outside a command's own handling into a silent exit 130
        if isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            _interrupted("the command was stopped")
        _finish(exc.code)
    except Exception as exc:  # a library error or a refused file that no check of the command's caught: one line
        from ..core.errors import DifftemError

        if not isinstance(exc, (DifftemError, OSError)):
            raise
        if isinstance(exc, DifftemError):
            from ._console import one_line

            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            _finish(2)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} (check the path and its permissions, and the free space)",
              file=sys.stderr)
        _finish(1)


@contextlib.contextmanager
def _start_up_without_collections():
    """Load torch and the app with the cyclic garbage collector off, then freeze what they made: the ~10⁶ objects
    of torch's modules are never garbage, but each full collection walks all of them (0.1 s on 2 cores: about
    0.17 s of collections during torch's import and 0.1 s per full one later, in a tilt series that computes
    for 3 s). Frozen, they are left out of every later collection; the command's own objects are collected as
    usual."""
    import gc

    if not gc.isenabled():  # the caller manages collections
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _load_torch() -> None:
    """Import torch with Ctrl-C held until it has loaded, then acted on as a KeyboardInterrupt. A KeyboardInterrupt
    raised while torch's C++ start-up runs Python code through pybind11 cannot cross that frame: the process aborted
    (exit −6, "terminate called after throwing an instance of pybind11::error_already_set") instead of ending with
    one line and exit code 130. A SIGINT the process was started to ignore (a background job) stays ignored."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        import torch  # noqa: F401
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        import torch  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _finish(code) -> None:
    """End the process once the command has returned: its files are closed and renamed into place, its pools shut
    down. Tearing the interpreter down (torch, pandas, matplotlib: ~0.9 s measured on 2 cores) would add nothing,
    so the streams are flushed and the process exits at once, with ``sys.exit``'s exit codes."""
    import os

    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: nothing more to say
            stream.flush()
    os._exit(code or 0)


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
