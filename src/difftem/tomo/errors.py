"""Input errors of the tomography stage (one-line messages naming the argument and the fix)."""

from ..core.errors import DifftemError


class TomoError(DifftemError):
    """A tilt series, angle file, volume or option cannot be used as given."""
