"""Errors a user can act on: each message names the offending field or file and the fix."""


class DifftemError(Exception):
    """Base class; the CLI prints these as one line, without a traceback."""


class ConfigError(DifftemError):
    """A configuration value is invalid (field name and fix in the message)."""


class EmptyConfigError(ConfigError):
    """A config file holds nothing (empty, or only comments) where its reader needs content: the message names the
    file and what to put in it; a command that has other ways to give the same settings can add them."""


class StructureError(DifftemError):
    """An atomic model cannot be read or contains something we cannot simulate."""


class ResourceError(DifftemError):
    """The requested simulation would not fit in memory (estimate given up front)."""


class FormatError(DifftemError):
    """A file cannot be read: the message names the file (and line, where there is one) and what was expected."""

    def __init__(self, message: str, *, file=None, line: int | None = None):
        self.message, self.file, self.line = message, (str(file) if file else None), line
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(where + message)


class OutputError(DifftemError):
    """An output file or folder cannot be made where it was asked for (the message names it, the system's reason
    and the fix)."""


class ArgumentError(ConfigError):
    """A function argument is out of range: ``argument`` names it, ``detail`` says what is wrong and the fix.

    The message reads ``"<argument><detail>"`` (e.g. ``method 'magic': choose one of …``); the command line shows
    the same with the argument as its flag (``--method 'magic': …``)."""

    def __init__(self, argument: str, detail: str, mentions: tuple[str, ...] = ()):
        # mentions: other arguments the detail names as the fix (e.g. no_mtf), shown as their flags too
        self.argument, self.detail, self.mentions = argument, detail, mentions
        super().__init__(f"{argument}{detail}")


class DataFileError(FormatError, ConfigError):
    """A data file that a configuration or an option names (e.g. a measured MTF curve) is malformed: a
    :class:`FormatError` naming the file and line, and a :class:`ConfigError`, since the setting that points to the
    file is what must change."""
