"""Importing slow modules on a side thread while the main thread computes.

The writers of a run's outputs import starfile (with pandas) and matplotlib: about 1 s of Python start-up that
otherwise comes after the simulation. torch releases the GIL while it computes, so a side thread can import them
during the simulation; the main thread's own import later finds them loaded (or waits on the module's lock)."""

from __future__ import annotations

import contextlib
import importlib
import os
import threading

#: what a run's writers import (io.star: starfile with pandas; io.preview: matplotlib without pyplot)
WRITER_MODULES = ("starfile", "matplotlib.figure", "matplotlib.backends.backend_agg",
                  "mpl_toolkits.axes_grid1.anchored_artists")
_started: set[str] = set()
_forked = False


def _in_forked_child() -> None:
    global _forked
    _forked = True


# a forked child of a process with threads (torch's pool) may hold C libraries' locks that no thread will release:
# importing pandas/pyarrow on a new thread there was seen to abort the child
os.register_at_fork(after_in_child=_in_forked_child)


def prefetch(*modules: str) -> threading.Thread | None:
    """Import ``modules`` on a daemon thread (errors ignored: the real import reports them) and return it; None if
    every one was asked for before in this process, or in a forked child (the main thread's imports then)."""
    modules = tuple(m for m in modules if m not in _started)
    if not modules or _forked:
        return None
    _started.update(modules)

    def load() -> None:
        for name in modules:
            with contextlib.suppress(Exception):  # the caller's own import raises it where it matters
                importlib.import_module(name)

    thread = threading.Thread(target=load, name="difftem-prefetch", daemon=True)
    thread.start()
    return thread
