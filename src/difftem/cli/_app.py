"""The Typer application: each command module registers its commands on :data:`app`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from typer.core import TyperGroup

from . import calibrate, convert, dataset, denoise, export, extract, fit_mtf, info, simulate, tomo
from ._console import fail

try:  # a typer that carries its own click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # a typer that uses click itself
    from click.exceptions import NoArgsIsHelpError, UsageError


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """Show a usage error (unknown option or command, a value of the wrong type, a missing argument) as the one
    `error:` line every other error is, with the help that fixes it, exit code 2; typer would print a boxed panel
    under the usage line. Help for a bare `difftem` stays help."""
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except UsageError as exc:
        message = exc.format_message().rstrip(".")
        where = f"; see {exc.ctx.command_path} --help" if exc.ctx is not None else ""
        fail(f"{message[:1].lower()}{message[1:]}{where}")


class _Group(TyperGroup):
    """The app's group: usage errors, found while the command line is parsed (the group's and a command's
    `make_context`) or raised by a command, as one line (:func:`_one_line_usage_errors`)."""

    def make_context(self, *args, **kwargs):
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True,
                  help="difftem: fast, differentiable TEM simulation of biological specimens.")
for _module in (simulate, fit_mtf, info, convert, tomo, denoise, dataset, export, extract, calibrate):
    _module.register(app)

__all__ = ["app"]
