"""Importing slow modules on a side thread while the main thread computes.

The writers of a run's outputs import starfile (with pandas) and matplotlib: about 1 s of Python start-up that
otherwise comes after the simulation. torch releases the GIL while it computes, so a side thread can import them
during the simulation; the main thread's own import later finds them loaded (or waits on the module's lock)."""

from __future__ import annotations

import contextlib
import importlib
import threading

#: what a run's writers import (io.star: starfile with pandas; io.preview: matplotlib without pyplot)
WRITER_MODULES = ("starfile", "matplotlib.figure", "matplotlib.backends.backend_agg",
                  "mpl_toolkits.axes_grid1.anchored_artists")
_started: set[str] = set()


def prefetch(*modules: str) -> threading.Thread | None:
    """Import ``modules`` on a daemon thread (errors ignored: the real import reports them) and return it; None if
    every one was asked for before in this process."""
    modules = tuple(m for m in modules if m not in _started)
    if not modules:
        return None
    _started.update(modules)

    def load() -> None:
        for name in modules:
            with contextlib.suppress(Exception):  # the caller's own import raises it where it matters
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="difftem-prefetch", daemon=True)
    thread.start()
    return thread
