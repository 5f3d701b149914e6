"""Errors a user can act on: each message names the offending field or file and the fix."""


class DifftemError(Exception):
    """Base class; the CLI prints these as one line, without a traceback."""


class ConfigError(DifftemError):
    """A configuration value is invalid (field name and fix in the message)."""


class StructureError(DifftemError):
    """An atomic model cannot be read or contains something we cannot simulate."""


class ResourceError(DifftemError):
    """The requested simulation would not fit in memory (estimate given up front)."""
