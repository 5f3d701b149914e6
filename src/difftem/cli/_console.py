"""What the command line shows: one console on stderr, one-line errors, progress that also reaches log files."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..core.errors import ArgumentError

#: stderr, with no emoji codes: ``:x:`` in a file name or message is text, not a symbol (markup is escaped per call).
console = Console(stderr=True, emoji=False)

#: The longest error line shown (characters); longer messages are cut with "…".
MAX_ERROR_CHARS = 2000

#: Seconds between progress lines when stderr is not a terminal (a log file or a batch system's output).
LOG_INTERVAL_S = 30.0


def fail(error: str | Exception) -> None:
    """Print ``error`` as one red line and exit with code 2 (no traceback). A library
    :class:`~difftem.core.errors.ArgumentError` is shown with its argument (and the others it mentions) as the
    command's flags; a message of
    several lines becomes one (its lines joined by "; "), markup and emoji codes in it are shown as text."""
    if isinstance(error, ArgumentError):
        detail = error.detail
        for name in error.mentions:
            detail = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.])", command_flag(name), detail)
        error = f"{command_flag(error.argument)}{detail}"
    console.print(f"[bold red]error:[/] {escape(one_line(str(error)))}", soft_wrap=True, highlight=False,
                  emoji=False)
    raise typer.Exit(code=2)


def command_flag(argument: str) -> str:
    """The running command's flag for a library argument: ``--pixel-size`` for ``pixel_size_a``, ``--dose`` for
    ``dose_e_per_a2``, ``--tile`` for ``tiles`` (the longest leading words that name one of its options; the
    argument's own words when none does)."""
    words = argument.split("_")
    plain = "--" + "-".join(words)
    flags = _command_flags()
    if plain in flags:
        return plain
    for n in range(len(words) - 1, 0, -1):
        if (flag := "--" + "-".join(words[:n])) in flags:
            return flag
    return plain[:-1] if plain.endswith("s") and plain[:-1] in flags else plain


def _command_flags() -> set[str]:
    """The option names of the command being run (empty outside one)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # a typer that uses click itself
        try:
            from click import get_current_context
        except ImportError:
            return set()
    ctx = get_current_context(silent=True)
    return {opt for param in (ctx.command.params if ctx else []) for opt in getattr(param, "opts", [])}


def one_line(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``message`` on one line: its non-blank lines joined by "; ", control characters dropped, cut at ``limit``."""
    parts = [" ".join(line.split()) for line in message.splitlines()]
    text = "; ".join(p for p in parts if p) or "(no message)"
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[:limit] + "…"


def say(msg: str) -> None:
    """Print a plain line (paths and names in it are text: no markup, no emoji codes)."""
    console.print(msg, soft_wrap=True, highlight=False, markup=False, emoji=False)


def note(kind: str, msg: str) -> None:
    colour = "yellow" if kind in ("warning", "note") else "cyan"
    console.print(f"[{colour}]{kind}:[/] {escape(one_line(msg))}", soft_wrap=True, highlight=False, emoji=False)


@contextlib.contextmanager
def progress(label: str, unit: str, *, interval_s: float = LOG_INTERVAL_S) -> Iterator[Callable[..., None]]:
    """Yield ``update(done, total, description=None)``: a live bar on a terminal; otherwise one plain line
    every ``interval_s`` seconds and at the end, so a run whose output goes to a log file still says how far
    it is."""
    if console.is_terminal:
        with Progress(TextColumn(f"[bold]{escape(label)}"), TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} " + unit), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("", total=None)

            def update(done: int, total: int | None, description: str | None = None) -> None:
                bar.update(task, completed=done, total=total,
                           **({"description": escape(description)} if description else {}))

            yield update
        return
    t0 = last = time.monotonic()
    state: dict = {}

    def update(done: int, total: int | None, description: str | None = None) -> None:
        nonlocal last
        state.update(done=done, total=total, description=description or state.get("description"))
        now = time.monotonic()
        if now - last >= interval_s:
            last = now
            _log_line(label, unit, state, now - t0)

    yield update
    if state:
        _log_line(label, unit, state, time.monotonic() - t0)


def _log_line(label: str, unit: str, state: dict, elapsed_s: float) -> None:
    done, total, what = state.get("done", 0), state.get("total"), state.get("description")
    of = f"/{total}" if total else ""
    eta = ""
    if total and done:
        eta = f", about {elapsed_s * (total - done) / done:.0f} s left"
    console.print(f"{label}{' ' + what if what else ''}: {done}{of} {unit} after {elapsed_s:.0f} s{eta}",
                  soft_wrap=True, highlight=False, markup=False)
