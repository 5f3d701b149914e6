"""The ``--formats`` option: a comma list of output-format names, parsed in one place for every command."""

from __future__ import annotations

from ..core.errors import ArgumentError


def parse_formats(text: str, choices, option: str = "formats") -> tuple[str, ...]:
    """Names from a comma list (``"relion,cryosparc"``; spaces and case ignored, repeats dropped, order kept);
    an empty list or a name outside ``choices`` is an :class:`ArgumentError` naming ``option`` and the choices."""
    names: list[str] = []
    for part in str(text).split(","):
        name = part.strip().lower()
        if name and name not in names:
            names.append(name)
    bad = [n for n in names if n not in choices]
    if bad or not names:
        raise ArgumentError(option, f" {text!r}: " + (f"unknown format {', '.join(bad)}; " if bad else "empty; ")
                            + f"a comma list of {', '.join(choices)}")
    return tuple(names)
