"""The TEM-simulator 1.3 input-file grammar: its parameter tables, sections and values, and the reader.

A TEM-simulator input file is a list of components::

    === optics ===
    defocus_nominal = 5      # µm, positive = underfocus
    === particle TMV ===
    source = pdb
    ...

:func:`parse_inp_text` reads one into :class:`Section` objects, checking every parameter against
TEM-simulator 1.3's own tables (types, ranges, allowed words); a malformed file raises :class:`InpError`
naming the file, line, section and key. :func:`read_table` and :func:`read_transforms_file` read the data
files an input file names, with the same error type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, FormatError
from ..io import tables

INF = math.inf


class InpError(ConfigError):
    """A TEM-simulator input file (or one of its data files) cannot be translated; names file, line, section, key."""

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 section: str | None = None, key: str | None = None):
        self.file, self.line, self.section, self.key = (str(file) if file else None), line, section, key
        # no square brackets: the CLI prints errors through rich, which would take "[optics]" for markup
        where = [str(file) + (f":{line}" if line else "")] if file else []
        where += [f'section "{_short(section, 60, quote=False)}"'] if section else []
        where += [f'key "{_short(key, 60, quote=False)}"'] if key else []
        super().__init__(", ".join(where) + (": " if where else "") + message)


def read_table(path: str | Path, **kwargs) -> np.ndarray:
    """:func:`difftem.io.tables.read_table`, its errors as :class:`InpError`."""
    try:
        return tables.read_table(path, **kwargs)
    except FormatError as exc:
        raise InpError(exc.message, file=exc.file, line=exc.line) from None


def read_transforms_file(path: str | Path) -> np.ndarray:
    """:func:`difftem.io.tables.read_transforms_file`, its errors as :class:`InpError`."""
    try:
        return tables.read_transforms_file(path)
    except FormatError as exc:
        raise InpError(exc.message, file=exc.file, line=exc.line) from None


# ---------------------------------------------------------------------------------------------- parameter tables
@dataclass(frozen=True)
class _Spec:
    """One TEM-simulator parameter: type ('b' yes/no, 'i' integer, 'd' real, 's' string), default, checks."""

    kind: str
    default: object = None
    required: bool = False
    lo: float = -INF
    hi: float = INF
    choices: tuple[str, ...] = ()


def _b(default=None, required=False):
    return _Spec("b", default, required)


def _i(default=None, required=False, lo=-INF, hi=INF):
    return _Spec("i", default, required, lo, hi)


def _d(default=None, required=False, lo=-INF, hi=INF):
    return _Spec("d", default, required, lo, hi)


def _s(default=None, required=False, choices=()):
    return _Spec("s", default, required, choices=tuple(choices))


_FORMATS = ("mrc", "mrc-int", "raw")
_BYTE_ORDERS = ("be", "le", "native")
_AXIS_ORDERS = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx")

#: every parameter TEM-simulator 1.3 accepts, per component type (its own names, units, ranges and defaults)
PARAMETERS: dict[str, dict[str, _Spec]] = {
    "simulation": {
        "generate_micrographs": _b(False), "generate_volumes": _b(False), "generate_particle_maps": _b(False),
        "log_file": _s(), "rand_seed": _i(),
    },
    "sample": {
        "diameter": _d(required=True, lo=0), "thickness_center": _d(required=True, lo=0),
        "thickness_edge": _d(required=True, lo=0), "offset_x": _d(0.0), "offset_y": _d(0.0),
    },
    "particle": {
        "voxel_size": _d(lo=0.01, hi=10), "nx": _i(lo=1, hi=1e3), "ny": _i(lo=1, hi=1e3), "nz": _i(lo=1, hi=1e3),
        "use_imag_pot": _b(True), "famp": _d(lo=0, hi=1), "use_defocus_corr": _b(False),
        "source": _s(required=True, choices=("pdb", "map", "random")), "pdb_file_in": _s(), "pdb_transf_file_in": _s(),
        "add_hydrogen": _b(True), "map_file_format": _s("mrc", choices=_FORMATS),
        "map_axis_order": _s("xyz", choices=_AXIS_ORDERS), "map_file_byte_order": _s("native", choices=_BYTE_ORDERS),
        "map_file_re_in": _s(), "map_file_im_in": _s(), "map_file_re_out": _s(), "map_file_im_out": _s(),
        "contrast_re": _d(), "contrast_im": _d(), "smoothness": _d(lo=0, hi=10), "make_positive": _b(),
    },
    "particleset": {
        "particle_type": _s(required=True), "particle_coords": _s(choices=("file", "random", "grid")),
        "gen_rand_positions": _b(), "where": _s(choices=("volume", "surface", "top", "bottom")),
        "num_particles": _i(lo=0, hi=1e6), "particle_conc": _d(lo=0, hi=1e6), "occupancy": _d(lo=0, hi=100),
        "nx": _i(1, lo=1, hi=1000), "ny": _i(1, lo=1, hi=1000), "nz": _i(1, lo=1, hi=1000),
        "offset_x": _d(0.0), "offset_y": _d(0.0), "offset_z": _d(0.0), "particle_dist": _d(lo=0, hi=1e4),
        "coord_file_in": _s(), "coord_file_out": _s(),
    },
    "geometry": {
        "ntilts": _i(lo=1, hi=1e6), "gen_tilt_data": _b(required=True), "tilt_axis": _d(0.0), "theta_start": _d(),
        "theta_incr": _d(), "tilt_mode": _s("tiltseries", choices=("tiltseries", "single_particle")),
        "geom_file_in": _s(), "geom_file_out": _s(),
        "geom_errors": _s(required=True, choices=("none", "random", "file")),
        "tilt_err": _d(0.0, lo=0), "align_err_rot": _d(0.0, lo=0), "align_err_tr": _d(0.0, lo=0),
        "error_file_in": _s(), "error_file_out": _s(),
    },
    "electronbeam": {
        "acc_voltage": _d(required=True, lo=1, hi=1e4), "energy_spread": _d(required=True, lo=0),
        "gen_dose": _b(required=True), "total_dose": _d(lo=0), "dose_per_im": _d(lo=0), "dose_sd": _d(0.0, lo=0, hi=1),
        "dose_file_in": _s(), "dose_file_out": _s(),
    },
    "optics": {
        "magnification": _d(required=True, lo=1), "gen_defocus": _b(required=True), "defocus_nominal": _d(),
        "defocus_syst_error": _d(0.0, lo=0), "defocus_nonsyst_error": _d(0.0, lo=0), "defocus_file_in": _s(),
        "defocus_file_out": _s(), "cs": _d(required=True), "cc": _d(required=True), "aperture": _d(required=True, lo=0),
        "focal_length": _d(required=True, lo=0.01), "cond_ap_angle": _d(required=True, lo=0),
    },
    "detector": {
        "det_pix_x": _i(required=True, lo=1, hi=1e4), "det_pix_y": _i(required=True, lo=1, hi=1e4),
        "padding": _i(20, lo=0, hi=1e3), "pixel_size": _d(required=True, lo=1e-2, hi=1e3),
        "gain": _d(required=True, lo=0), "dqe": _d(required=True, lo=0.01, hi=1), "use_quantization": _b(required=True),
        "mtf_a": _d(required=True, lo=0, hi=1), "mtf_b": _d(required=True, lo=0, hi=1),
        "mtf_c": _d(required=True, lo=0, hi=1), "mtf_alpha": _d(required=True, lo=0),
        "mtf_beta": _d(required=True, lo=0), "mtf_p": _d(1.0, lo=0, hi=10), "mtf_q": _d(1.0, lo=0, hi=10),
        "image_file_out": _s(required=True), "image_file_format": _s("mrc", choices=_FORMATS),
        "image_axis_order": _s("xy", choices=("xy", "yx")), "image_file_byte_order": _s("native", choices=_BYTE_ORDERS),
    },
    "volume": {
        "voxel_size": _d(required=True, lo=0.01, hi=10), "nx": _i(required=True, lo=1, hi=1e3),
        "ny": _i(required=True, lo=1, hi=1e3), "nz": _i(required=True, lo=1, hi=1e3),
        "offset_x": _d(0.0), "offset_y": _d(0.0), "offset_z": _d(0.0), "map_file_format": _s("mrc", choices=_FORMATS),
        "map_axis_order": _s("xyz", choices=_AXIS_ORDERS), "map_file_byte_order": _s("native", choices=_BYTE_ORDERS),
        "map_file_re_out": _s(required=True), "map_file_im_out": _s(),
    },
}

#: keys that only name files TEM-simulator writes (or their format): no effect on the images
OUTPUT_KEYS = {
    "simulation": {"log_file"},
    "particle": {"map_file_re_out", "map_file_im_out", "map_file_format", "map_axis_order", "map_file_byte_order"},
    "particleset": {"coord_file_out"},
    "geometry": {"geom_file_out", "error_file_out"},
    "electronbeam": {"dose_file_out"},
    "optics": {"defocus_file_out"},
    "detector": {"image_file_out", "image_file_format", "image_axis_order", "image_file_byte_order"},
}
SINGLE_SECTIONS = ("sample", "geometry", "electronbeam", "optics")


# ---------------------------------------------------------------------------------------------- parsing
@dataclass
class Value:
    value: object  # parsed: bool, int, float or str
    raw: str
    line: int


@dataclass
class Section:
    kind: str
    name: str
    line: int
    values: dict[str, Value] = field(default_factory=dict)
    label: str = ""  # "particle TMV", "detector #2", ...

    def has(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str):
        if key in self.values:
            return self.values[key].value
        return PARAMETERS[self.kind][key].default

    def line_of(self, key: str) -> int:
        return self.values[key].line if key in self.values else self.line


def _short(text: str, limit: int = 40, quote: bool = True) -> str:
    """A value from the input file as shown in a message: quoted, cut to ``limit`` characters."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    return repr(cut) if quote else cut


def _parse_value(spec: _Spec, raw: str) -> object:
    if spec.kind == "b":
        if raw not in ("yes", "no"):
            raise ValueError("must be yes or no (lower case)")
        return raw == "yes"
    if spec.kind == "i":
        try:
            v = int(raw)
        except ValueError:
            try:  # TEM-simulator reads integers with atol: accept an integral real such as 61.0
                f = float(raw)
            except ValueError:
                f = math.nan
            if not (math.isfinite(f) and f.is_integer()):
                raise ValueError(f"{_short(raw)} is not an integer") from None
            v = int(f)
    elif spec.kind == "d":
        try:
            v = float(raw)
        except ValueError:
            raise ValueError(f"{_short(raw)} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"{_short(raw)} is not a finite number")
    else:
        if spec.choices and raw not in spec.choices:
            raise ValueError(f"{_short(raw)} is not one of {', '.join(spec.choices)}")
        return raw
    if not spec.lo <= v <= spec.hi:
        lo = "" if spec.lo == -INF else f"{spec.lo:g}"
        hi = "" if spec.hi == INF else f"{spec.hi:g}"
        raise ValueError(f"{_short(raw, quote=False)} is outside TEM-simulator's allowed range "
                         f"[{lo or '-inf'}, {hi or 'inf'}]")
    return v


def parse_inp_text(text: str, source: str = "input") -> tuple[list[Section], list[str]]:
    """Sections of a TEM-simulator input file, each parameter type-checked; and notes on tolerated oddities.

    Follows TEM-simulator's reader: ``#`` starts a comment line, ``=== type name ===`` starts a
    component, ``=== end ===`` ends the input, ``key = value`` takes the first word of the value (or a
    double-quoted string); a later assignment of the same key wins.
    """
    sections: list[Section] = []
    notes: list[str] = []
    current: Section | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("="):
            current = _heading(s, source, n)
            if current is None:  # === end ===
                break
            sections.append(current)
            continue
        if current is None:
            raise InpError("text before the first component heading (e.g. '=== simulation ==='); expected a "
                           "heading, 'parameter = value' lines or '#' comments", file=source, line=n)
        _read_assignment(current, s, source, n, notes)
    _label_sections(sections)
    return sections, notes


def _heading(s: str, source: str, n: int) -> Section | None:
    """The component a ``=== type name ===`` line starts; None for ``=== end ===``."""
    words = s.replace("=", " ").split()
    if not words:
        raise InpError("a section heading needs a component type, e.g. '=== optics ==='", file=source, line=n)
    kind, name = words[0], " ".join(words[1:2])
    if kind == "end":
        return None
    if kind not in PARAMETERS:
        raise InpError(f"unknown component type {_short(kind)} (TEM-simulator 1.3 has {', '.join(PARAMETERS)}, end)",
                       file=source, line=n, section=kind)
    return Section(kind, name, n)


def _read_assignment(current: Section, s: str, source: str, n: int, notes: list[str]) -> None:
    """Read a ``key = value`` line into ``current`` (a later assignment of the same key wins)."""
    section = _label_guess(current)
    if "=" not in s:
        raise InpError("expected 'parameter = value' (no '=' on the line)", file=source, line=n, section=section)
    key, rest = (part.strip() for part in s.split("=", 1))
    key = key.split()[0] if key else ""
    if not key:
        raise InpError("expected 'parameter = value' (no parameter name before '=')", file=source, line=n,
                       section=section)
    table = PARAMETERS[current.kind]
    if key not in table:
        raise InpError(f"unknown TEM-simulator 1.3 parameter (the {current.kind} component has "
                       f"{', '.join(sorted(table))})", file=source, line=n, section=section, key=key)
    raw, trailing = _split_value(rest, source, n, section, key)
    if trailing and not trailing.startswith("#"):
        notes.append(f"{source}:{n}: [{section}] {key}: text after the value ({_short(trailing)}) is ignored, "
                     "as TEM-simulator does")
    try:
        value = _parse_value(table[key], raw)
    except ValueError as exc:
        raise InpError(str(exc), file=source, line=n, section=section, key=key) from None
    if key in current.values:
        notes.append(f"{source}:{n}: [{section}] {key} is set twice (line {current.values[key].line} and {n}); "
                     "the later value is used, as TEM-simulator does")
    current.values[key] = Value(value, raw, n)


def _split_value(rest: str, source: str, n: int, section: str, key: str) -> tuple[str, str]:
    """(value, trailing text) of what follows '=': the first word, or a double-quoted string."""
    if not rest:
        raise InpError("no value after '='", file=source, line=n, section=section, key=key)
    if rest.startswith('"'):
        end = rest.find('"', 1)
        if end < 0:
            raise InpError("unterminated double-quoted value", file=source, line=n, section=section, key=key)
        return rest[1:end], rest[end + 1:].strip()
    words = rest.split(None, 1)
    return words[0], (words[1].strip() if len(words) > 1 else "")


def _label_guess(sec: Section) -> str:
    return f"{sec.kind} {sec.name}".strip()


def _label_sections(sections: list[Section]) -> None:
    counts: dict[str, int] = {}
    for sec in sections:
        counts[sec.kind] = counts.get(sec.kind, 0) + 1
    seen: dict[str, int] = {}
    for sec in sections:
        seen[sec.kind] = seen.get(sec.kind, 0) + 1
        sec.label = _label_guess(sec)
        if not sec.name and counts[sec.kind] > 1:
            sec.label = f"{sec.kind} #{seen[sec.kind]}"
