"""TEM-simulator 1.3 input files (``.inp``): read, check and translate into a difftem SimulationConfig.

A TEM-simulator input file is a list of components::

    === optics ===
    defocus_nominal = 5      # µm, positive = underfocus
    === particle TMV ===
    source = pdb
    ...

``load_inp(path)`` reads one, checks every parameter against TEM-simulator 1.3's own tables
(types, ranges, allowed words, required keys) and translates it into a
:class:`~difftem.config.SimulationConfig` with the same meaning: units (nm, µm, mm, e/nm²) are
converted, the particle Euler angles (z-x-z, TEM-simulator's order) become our z-y-z pose, the tilt
axis (TEM-simulator: angle from x) becomes ours (angle from y), coordinate and transform files are
read. It returns the config, the key-by-key mapping, and notes on what is approximated or ignored
(output-file keys, voxel sizes, the hole's thickness profile, ...). A key whose effect difftem cannot
reproduce (a map or random particle source, geometry errors, the generalised MTF exponents, ...)
raises :class:`InpError` naming the file, line, section and key. Conventions checked in the
TEM-simulator 1.3 source and manual; see docs/tem-simulator.md for the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..core.errors import ConfigError, FormatError
from ..core.rotations import rotation_zxz_deg
from ..io import tables

INF = math.inf


class InpError(ConfigError):
    """A TEM-simulator input file (or one of its data files) cannot be translated; names file, line, section, key."""

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 section: str | None = None, key: str | None = None):
        self.file, self.line, self.section, self.key = (str(file) if file else None), line, section, key
        # no square brackets: the CLI prints errors through rich, which would take "[optics]" for markup
        where = [str(file) + (f":{line}" if line else "")] if file else []
        where += [f'section "{section}"'] if section else []
        where += [f'key "{key}"'] if key else []
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
                raise ValueError(f"{raw!r} is not an integer") from None
            v = int(f)
    elif spec.kind == "d":
        try:
            v = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"{raw!r} is not a finite number")
    else:
        if spec.choices and raw not in spec.choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(spec.choices)}")
        return raw
    if not spec.lo <= v <= spec.hi:
        lo = "" if spec.lo == -INF else f"{spec.lo:g}"
        hi = "" if spec.hi == INF else f"{spec.hi:g}"
        raise ValueError(f"{raw} is outside TEM-simulator's allowed range [{lo or '-inf'}, {hi or 'inf'}]")
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
            words = s.replace("=", " ").split()
            if not words:
                raise InpError("a section heading needs a component type, e.g. '=== optics ==='", file=source, line=n)
            kind, name = words[0], " ".join(words[1:2])
            if kind == "end":
                break
            if kind not in PARAMETERS:
                raise InpError(f"unknown component type {kind!r} (TEM-simulator 1.3 has {', '.join(PARAMETERS)}, end)",
                               file=source, line=n, section=kind)
            current = Section(kind, name, n)
            sections.append(current)
            continue
        if current is None:
            raise InpError(f"{s!r} comes before the first component heading (e.g. '=== simulation ===')",
                           file=source, line=n)
        if "=" not in s:
            raise InpError(f"cannot read {s!r}: expected 'parameter = value'", file=source, line=n,
                           section=_label_guess(current))
        key, rest = (part.strip() for part in s.split("=", 1))
        key = key.split()[0] if key else ""
        section = _label_guess(current)
        if not key:
            raise InpError(f"cannot read {s!r}: no parameter name before '='", file=source, line=n, section=section)
        table = PARAMETERS[current.kind]
        if key not in table:
            raise InpError(f"unknown TEM-simulator 1.3 parameter (the {current.kind} component has "
                           f"{', '.join(sorted(table))})", file=source, line=n, section=section, key=key)
        if not rest:
            raise InpError("no value after '='", file=source, line=n, section=section, key=key)
        if rest.startswith('"'):
            end = rest.find('"', 1)
            if end < 0:
                raise InpError("unterminated double-quoted value", file=source, line=n, section=section, key=key)
            raw, trailing = rest[1:end], rest[end + 1:].strip()
        else:
            words = rest.split(None, 1)
            raw, trailing = words[0], (words[1].strip() if len(words) > 1 else "")
        if trailing and not trailing.startswith("#"):
            notes.append(f"{source}:{n}: [{section}] {key}: text after the value ({trailing!r}) is ignored, as "
                         "TEM-simulator does")
        try:
            value = _parse_value(table[key], raw)
        except ValueError as exc:
            raise InpError(str(exc), file=source, line=n, section=section, key=key) from None
        if key in current.values:
            notes.append(f"{source}:{n}: [{section}] {key} is set twice (line {current.values[key].line} and {n}); "
                         "the later value is used, as TEM-simulator does")
        current.values[key] = Value(value, raw, n)
    _label_sections(sections)
    return sections, notes


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


# ---------------------------------------------------------------------------------------------- data files
# ---------------------------------------------------------------------------------------------- translation
class MappedKey(NamedTuple):
    """One parameter of the input file and the config field it sets (None: approximated or ignored, see notes)."""

    section: str
    key: str
    value: str
    field: str | None


@dataclass
class TemsimInput:
    """A translated TEM-simulator input file."""

    config: object  # difftem.config.SimulationConfig
    notes: list[str]
    mapping: list[MappedKey]
    data: dict  # the config as plain data (what `difftem convert` writes)
    source: Path


class _Translator:
    """Builds the config dict from parsed sections, recording where every key went."""

    def __init__(self, sections: list[Section], source: Path, notes: list[str]):
        self.sections, self.source, self.notes = sections, source, notes
        self.mapping: list[MappedKey] = []
        self.base = source.parent

    # -- bookkeeping
    def err(self, sec: Section | None, key: str | None, msg: str) -> InpError:
        line = (sec.line_of(key) if key else sec.line) if sec is not None else None
        return InpError(msg, file=self.source, line=line, section=sec.label if sec else None, key=key)

    def map(self, sec: Section, key: str, field_: str | tuple[str, ...] | None, note: str | None = None) -> None:
        """Record that ``key`` (if present in ``sec``) sets ``field_`` (one or several config fields, or None)."""
        if key in sec.values:
            for f in field_ if isinstance(field_, tuple) else (field_,):
                self.mapping.append(MappedKey(sec.label, key, sec.values[key].raw, f))
            if note:
                self.notes.append(f"[{sec.label}] {key} = {sec.values[key].raw}: {note}")

    def need(self, sec: Section, key: str, why: str = ""):
        if sec.get(key) is None:
            raise self.err(sec, key, f"required{why} but missing")
        return sec.get(key)

    def check_required(self, sec: Section) -> None:
        for key, spec in PARAMETERS[sec.kind].items():
            if spec.required and sec.get(key) is None:
                raise self.err(sec, key, "required parameter is missing (TEM-simulator 1.3 refuses the file)")

    def path(self, sec: Section, key: str, what: str) -> Path:
        raw = str(sec.get(key))
        p = Path(raw).expanduser()
        if p.is_absolute():
            candidates = [p]
        else:
            candidates = [self.base / p, Path.cwd() / p]
        for c in candidates:
            if c.exists():
                if c != candidates[0]:
                    self.notes.append(f"[{sec.label}] {key} = {raw}: not beside the input file; using {c} "
                                      "(relative to the working directory, as TEM-simulator does)")
                return c.resolve()
        raise self.err(sec, key, f"{what} {raw!r} not found (looked in {', '.join(str(c.parent) for c in candidates)})")

    def ignore_outputs(self, sec: Section) -> None:
        for key in sorted(OUTPUT_KEYS.get(sec.kind, ())):
            self.map(sec, key, None, "ignored (difftem writes its own outputs)")

    def rng(self, tag: int, seed: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([seed, 0x7E5, tag]))

    # -- sections
    def sections_of(self, kind: str) -> list[Section]:
        return [s for s in self.sections if s.kind == kind]

    def single(self, kind: str, required: bool = True) -> Section | None:
        found = self.sections_of(kind)
        if len(found) > 1:
            raise self.err(found[1], None, f"a second {kind} component (the first is at line {found[0].line}); "
                                           "TEM-simulator uses one")
        if not found:
            if required:
                raise InpError(f"no {kind} component (=== {kind} ===); TEM-simulator needs one to generate micrographs",
                               file=self.source)
            return None
        self.check_required(found[0])
        return found[0]

    def simulation(self, data: dict) -> None:
        found = self.sections_of("simulation")
        merged = Section("simulation", "", found[0].line if found else 0, label="simulation")
        for sec in found:  # TEM-simulator reads every simulation block into the same table
            merged.values.update(sec.values)
        if not merged.get("generate_micrographs"):
            raise self.err(merged if found else None, "generate_micrographs" if found else None,
                           "generate_micrographs is not yes, so TEM-simulator would write no micrographs; set "
                           "'generate_micrographs = yes' in the simulation component")
        self.map(merged, "generate_micrographs", None)
        for k, what in (("generate_volumes", "volume maps"), ("generate_particle_maps", "particle maps")):
            self.map(merged, k, None, f"{what} are not written by difftem (ignored)" if merged.get(k) else None)
        seed = merged.get("rand_seed")
        if seed is None:
            self.notes.append("[simulation] rand_seed is not set: TEM-simulator would seed from the clock; "
                              "difftem uses seed 0")
            seed = 0
        else:
            self.map(merged, "rand_seed", "seed")
        data["seed"] = int(seed) % 2**32
        self.ignore_outputs(merged)

    def tilts(self, geo: Section) -> tuple[list[float], float]:
        """Tilt angles (deg, acquisition order) and TEM-simulator's tilt-axis angle (deg from x)."""
        if geo.get("gen_tilt_data"):
            n = self.need(geo, "ntilts", " when gen_tilt_data = yes")
            t0 = self.need(geo, "theta_start", " when gen_tilt_data = yes")
            dt = self.need(geo, "theta_incr", " when gen_tilt_data = yes")
            angles = [round(t0 + i * dt, 9) for i in range(n)]
            axis = geo.get("tilt_axis")
            for k in ("ntilts", "theta_start", "theta_incr"):
                self.map(geo, k, "tilt_series.angles_deg")
            self.map(geo, "tilt_axis", "tilt_series.tilt_axis_deg")
            self.map(geo, "gen_tilt_data", None)
            for k in ("geom_file_in",):
                self.map(geo, k, None, "not used when gen_tilt_data = yes (ignored, as TEM-simulator does)")
        else:
            self.need(geo, "geom_file_in", " when gen_tilt_data = no")
            file = self.path(geo, "geom_file_in", "tilt geometry file")
            table = read_table(file, columns=3, rows=geo.get("ntilts"), what="tilt geometry file")
            psi, theta, phi = table[:, 0], table[:, 1], table[:, 2]
            # one tilt axis: P = Rz(φ)Rx(θ)Rz(ψ) with ψ = −φ and the same φ for every image
            if np.any(np.abs(psi + phi) > 1e-6) or np.ptp(phi) > 1e-6:
                raise self.err(geo, "geom_file_in", "only single-axis tilt series (psi = -phi, the same phi in every "
                                                    "row) can be simulated by difftem")
            angles, axis = [float(t) for t in theta], float(phi[0]) if len(phi) else 0.0
            self.map(geo, "geom_file_in", "tilt_series.angles_deg")
            self.map(geo, "ntilts", "tilt_series.angles_deg")
            self.map(geo, "gen_tilt_data", None)
            for k in ("theta_start", "theta_incr", "tilt_axis"):
                self.map(geo, k, None, "not used when gen_tilt_data = no (ignored, as TEM-simulator does)")
        if not angles:
            raise self.err(geo, "ntilts", "the tilt series has no images")
        bad = [a for a in angles if abs(a) >= 90]
        if bad:
            raise self.err(geo, "theta_start" if geo.get("gen_tilt_data") else "geom_file_in",
                           f"tilt angles {bad[:3]} reach ±90°: the specimen would be edge-on; difftem needs "
                           "|tilt| < 90")
        mode = geo.get("tilt_mode")
        if mode == "single_particle" and any(a != 0 for a in angles):
            raise self.err(geo, "tilt_mode", "single_particle (particles turned about their own centres while the "
                                             "sample stays) is not supported by difftem; use tiltseries")
        self.map(geo, "tilt_mode", None)
        errors = geo.get("geom_errors")
        self.map(geo, "geom_errors", None)
        if errors == "file":
            raise self.err(geo, "geom_errors", "geometry errors read from a file are not supported by difftem; "
                                               "use 'geom_errors = none'")
        for k in ("tilt_err", "align_err_rot", "align_err_tr"):
            if errors == "random" and geo.get(k) > 0:
                raise self.err(geo, k, "random geometry (alignment) errors are not supported by difftem; set "
                                       "'geom_errors = none' or this value to 0")
            self.map(geo, k, None, None if errors == "random" else "not used unless geom_errors = random (ignored)")
        self.map(geo, "error_file_in", None, "not used unless geom_errors = file (ignored)")
        self.ignore_outputs(geo)
        return angles, float(axis)

    def doses_nm2(self, beam: Section, n: int, seed: int) -> tuple[list[float], str]:
        """Dose per image (e/nm²) and how it was given ('total', 'per_image', 'list')."""
        if beam.get("gen_dose"):
            total, per, sd = beam.get("total_dose"), beam.get("dose_per_im"), beam.get("dose_sd")
            if total is None and per is None:
                raise self.err(beam, None, "give total_dose or dose_per_im (e/nm²) when gen_dose = yes")
            self.map(beam, "gen_dose", None)
            self.map(beam, "dose_file_in", None, "not used when gen_dose = yes (ignored)")
            listed = "tilt_series.dose_per_tilt_e_per_a2"
            if total is not None:
                avg, how = total / n, "total"
                self.map(beam, "total_dose", listed if sd > 0 else ("tilt_series.total_dose_e_per_a2",
                                                                     "beam.dose_e_per_a2"))
                self.map(beam, "dose_per_im", None, "total_dose is also given and wins (as in TEM-simulator)")
            else:
                avg, how = per, "per_image"
                self.map(beam, "dose_per_im", listed if sd > 0 else "beam.dose_e_per_a2")
            if sd > 0:
                factors = np.maximum(0.0, self.rng(1, seed).normal(1.0, sd, n))
                self.map(beam, "dose_sd", listed, "random dose per image drawn once from the config seed "
                                                  "(TEM-simulator draws its own)")
                return [float(avg * f) for f in factors], "list"
            self.map(beam, "dose_sd", None)
            return [float(avg)] * n, how
        self.need(beam, "dose_file_in", " when gen_dose = no")
        file = self.path(beam, "dose_file_in", "dose file")
        table = read_table(file, rows=n, what="dose file")
        self.map(beam, "gen_dose", None)
        self.map(beam, "dose_file_in", "tilt_series.dose_per_tilt_e_per_a2")
        for k in ("total_dose", "dose_per_im", "dose_sd"):
            self.map(beam, k, None, "not used when gen_dose = no (ignored)")
        return [float(v) for v in table[:, 0]], "list"

    def defoci_um(self, opt: Section, n: int, seed: int) -> list[float]:
        if opt.get("gen_defocus"):
            nominal = self.need(opt, "defocus_nominal", " when gen_defocus = yes")
            syst, nonsyst = opt.get("defocus_syst_error"), opt.get("defocus_nonsyst_error")
            self.map(opt, "gen_defocus", None)
            field_ = "optics.defocus_um"
            if syst > 0 or nonsyst > 0:
                rng = self.rng(2, seed)
                mean = rng.normal(nominal, syst) if syst > 0 else nominal
                values = [float(v) for v in (rng.normal(mean, nonsyst, n) if nonsyst > 0 else np.full(n, mean))]
                field_ = "tilt_series.defocus_um" if nonsyst > 0 else "optics.defocus_um"
                for k in ("defocus_syst_error", "defocus_nonsyst_error"):
                    self.map(opt, k, field_, "random defocus drawn once from the config seed (TEM-simulator draws "
                                             "its own)" if opt.get(k) > 0 else None)
            else:
                values = [float(nominal)] * n
                self.map(opt, "defocus_syst_error", None)
                self.map(opt, "defocus_nonsyst_error", None)
            self.map(opt, "defocus_nominal", field_)
            self.map(opt, "defocus_file_in", None, "not used when gen_defocus = yes (ignored)")
            return values
        self.need(opt, "defocus_file_in", " when gen_defocus = no")
        file = self.path(opt, "defocus_file_in", "defocus file")
        table = read_table(file, rows=n, what="defocus file")
        self.map(opt, "gen_defocus", None)
        self.map(opt, "defocus_file_in", "tilt_series.defocus_um")
        for k in ("defocus_nominal", "defocus_syst_error", "defocus_nonsyst_error"):
            self.map(opt, k, None, "not used when gen_defocus = no (ignored)")
        return [float(v) for v in table[:, 0]]

    def detector(self, data: dict, magnification: float) -> None:
        dets = self.sections_of("detector")
        if not dets:
            raise InpError("no detector component (=== detector ===); TEM-simulator needs at least one to generate "
                           "micrographs", file=self.source)
        for d in dets:
            self.check_required(d)
        physics = ("det_pix_x", "det_pix_y", "pixel_size", "gain", "mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta",
                   "mtf_p", "mtf_q")
        first = dets[0]
        for d in dets[1:]:
            for k in physics:
                if d.get(k) != first.get(k):
                    raise self.err(d, k, f"differs from {first.label} ({d.get(k)} vs {first.get(k)}); difftem "
                                         "simulates one detector (noisy and noise-free outputs of the same detector)")
        quantized = [d for d in dets if d.get("use_quantization")]
        dqes = {d.get("dqe") for d in quantized}
        if len(dqes) > 1:
            raise self.err(quantized[1], "dqe", "detectors with quantization need the same dqe in difftem")
        main = quantized[0] if quantized else first
        for k in ("mtf_p", "mtf_q"):
            if main.get(k) != 1:
                raise self.err(main, k, "the generalised MTF exponent is not supported by difftem (its MTF is "
                                        "a/(1+αω²) + b/(1+βω²) + c); use 1")
        a, b, c = main.get("mtf_a"), main.get("mtf_b"), main.get("mtf_c")
        alpha, beta = main.get("mtf_alpha"), main.get("mtf_beta")
        if a + b + c <= 0:
            raise self.err(main, "mtf_c", "mtf_a + mtf_b + mtf_c must be positive (the MTF is normalised by it)")
        if alpha == 0:  # a/(1 + 0) is a constant: fold it into c
            a, c, alpha = 0.0, c + a, 1.0
        if beta == 0:
            b, c, beta = 0.0, c + b, 1.0
        mtf = None if a == 0 and b == 0 else {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta}
        pixel_a = main.get("pixel_size") * 1e4 / magnification  # µm at the detector → Å at the specimen
        data["detector"] = {
            "shape_px": [main.get("det_pix_y"), main.get("det_pix_x")],
            "pixel_size_a": pixel_a,
            "noise": "poisson" if quantized else "none",
            "dqe": main.get("dqe"),
            "gain": main.get("gain"),
            "mtf": mtf,
            "normalize_mtf": True,
        }
        for d in dets:
            self.map(d, "det_pix_x", "detector.shape_px")
            self.map(d, "det_pix_y", "detector.shape_px")
            self.map(d, "pixel_size", "detector.pixel_size_a")
            self.map(d, "gain", "detector.gain")
            self.map(d, "dqe", "detector.dqe" if d is main else None)
            self.map(d, "use_quantization", "detector.noise")
            for k in ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta"):
                self.map(d, k, f"detector.mtf.{k[4:]}" if mtf else "detector.mtf")
            for k in ("mtf_p", "mtf_q"):
                self.map(d, k, None)
            self.map(d, "padding", None, "ignored: difftem's field is periodic and exactly the detector's size")
            self.ignore_outputs(d)
        if len(dets) > 1:
            kinds = sorted({"noisy" if d.get("use_quantization") else "noise-free" for d in dets})
            self.notes.append(f"{len(dets)} detector components ({' and '.join(kinds)}) map to one difftem detector: "
                              "its micrograph is the quantized image, 'noiseless' the image without quantization")
        if quantized:
            self.notes.append("[detector] use_quantization = yes: TEM-simulator draws Poisson counts then a "
                              "DQE-dependent gain noise; difftem draws Poisson(DQE·n)/DQE (same mean and variance)")

    def sample(self, data: dict, field_nm: tuple[float, float]) -> None:
        smp = self.single("sample")
        tc, te, dia = smp.get("thickness_center"), smp.get("thickness_edge"), smp.get("diameter")
        ox, oy = abs(smp.get("offset_x")), abs(smp.get("offset_y"))
        data["sample"] = {"ice_thickness_nm": tc}
        self.map(smp, "thickness_center", "sample.ice_thickness_nm")
        for k in ("thickness_edge", "diameter", "offset_x", "offset_y"):
            self.map(smp, k, None)
        # TEM-simulator: t(r) = t_c + (t_e − t_c)·(r/R)² in the hole of radius R, a support film of t_e outside
        wx, wy = field_nm
        radius = dia / 2
        r_near = math.hypot(max(0.0, ox - wx / 2), max(0.0, oy - wy / 2))
        r_far = math.hypot(ox + wx / 2, oy + wy / 2)

        def thickness(r):
            return tc + (te - tc) * (r / radius) ** 2 if r < radius else te

        lo, hi = sorted((thickness(r_near), thickness(r_far)))
        if lo != tc or hi != tc or r_far > radius:
            film = (f"; beyond {radius:g} nm from the hole centre TEM-simulator has a {te:g} nm support film, "
                    "difftem ice") if r_far > radius else ""
            self.notes.append(f"[sample] thickness_edge = {te:g}, diameter = {dia:g}: TEM-simulator's ice is "
                              f"{lo:.3g}–{hi:.3g} nm thick over this field (parabolic from {tc:g} nm at the hole "
                              f"centre); difftem uses a uniform {tc:g} nm slab{film}")

    # -- particles
    def particles(self, data: dict, field_nm: tuple[float, float], seed: int) -> None:
        psets = self.sections_of("particleset")
        parts = {s.name: s for s in self.sections_of("particle")}
        seen: dict[str, Section] = {}
        for sec in self.sections_of("particle"):
            if not sec.name:
                raise self.err(sec, None, "a particle component needs a name ('=== particle NAME ==='), which "
                                          "particleset's particle_type refers to")
            if sec.name in seen:
                raise self.err(sec, None, f"a second particle component named {sec.name!r} (the first is at line "
                                          f"{seen[sec.name].line})")
            seen[sec.name] = sec
        used: set[str] = set()
        particles: list[dict] = []
        imag: dict[str, object] = {}
        for ps in psets:
            self.check_required(ps)
            ptype = ps.get("particle_type")
            if ptype not in parts:
                raise self.err(ps, "particle_type", f"no particle component named {ptype!r} (defined: "
                                                    f"{', '.join(parts) or 'none'})")
            self.map(ps, "particle_type", None)
            psec = parts[ptype]
            entry = self.particle_type(psec, len(particles), first_use=ptype not in used)
            used.add(ptype)
            imag[psec.label] = (psec.get("use_imag_pot"), psec.get("famp"))
            placed = self.placement(ps, entry, len(particles), field_nm, seed)
            if placed:
                particles.append(entry)
        for name, psec in parts.items():
            if name not in used:
                self.notes.append(f"[{psec.label}] is not used by any particleset (ignored, as TEM-simulator does)")
        data["sample"]["particles"] = particles
        kinds = set(imag.values())
        if len(kinds) > 1:
            raise InpError(f"particles differ in use_imag_pot/famp ({imag}); difftem has one absorption ratio for "
                           "all atoms (sample.absorption_ratio)", file=self.source)
        if kinds:
            use_imag, famp = kinds.pop()
            if not use_imag:
                if famp >= 1:
                    sec = next(parts[n] for n in used)
                    raise self.err(sec, "famp", "famp = 1 leaves no real potential, which difftem cannot represent")
                # TEM-simulator: real = map·√(1−famp²), imaginary = map·famp; what the imaginary part takes out of
                # the wave comes back (blurred, with carbon's angular spread) unless it is scattered outside the
                # aperture, so difftem's (removing) absorption keeps only that lost fraction
                lost = carbon_loss_fraction(data["beam"]["voltage_kv"], data["optics"]["aperture_mrad"])
                data["sample"]["absorption_ratio"] = famp / math.sqrt(1 - famp**2) * lost
                self.notes.append(f"sample.absorption_ratio = famp/√(1−famp²) × {lost:.4g}: the fraction of "
                                  "TEM-simulator's particle absorption that is scattered outside the objective "
                                  "aperture (the rest returns to its image, blurred)")

    def particle_type(self, psec: Section, index: int, first_use: bool) -> dict:
        self.check_required(psec)
        field_ = f"sample.particles[{index}]"
        if psec.get("source") != "pdb":
            raise self.err(psec, "source", f"{psec.get('source')!r}: difftem builds particles from atomic models "
                                           "only; use 'source = pdb' with pdb_file_in")
        self.need(psec, "pdb_file_in", " when source = pdb")
        self.need(psec, "voxel_size", " when source = pdb (TEM-simulator refuses the file otherwise)")
        entry = {"name": psec.name, "structure": str(self.path(psec, "pdb_file_in", "PDB file"))}
        self.map(psec, "source", None)
        self.map(psec, "pdb_file_in", f"{field_}.structure")
        if psec.has("pdb_transf_file_in"):
            tf = self.path(psec, "pdb_transf_file_in", "transform file")
            read_transforms_file(tf)  # check it now: errors name the file and line
            entry["transforms_file"] = str(tf)
            self.map(psec, "pdb_transf_file_in", f"{field_}.transforms_file")
        # TEM-simulator reads every ATOM/HETATM line weighted by occupancy and centres the particle on its
        # bounding box; its particle is a potential map
        entry.update({"models": "all", "remove_waters": False, "remove_hydrogens": False, "remove_hetero": False,
                      "centre": "bbox", "representation": "map"})
        if not first_use:
            return entry
        self.map(psec, "voxel_size", None, "no counterpart: difftem builds its own band-limited potential map "
                                           "from the atoms at the detector's pixel size")
        self.map(psec, "use_imag_pot", "sample.absorption_ratio",
                 "TEM-simulator computes an absorption map from atomic cross-sections; difftem gives atoms the ice's "
                 "imaginary/real potential ratio" if psec.get("use_imag_pot") else None)
        self.map(psec, "famp", "sample.absorption_ratio" if not psec.get("use_imag_pot") else None,
                 None if not psec.get("use_imag_pot") else "not used when use_imag_pot = yes (ignored)")
        if not psec.get("use_imag_pot"):
            famp = self.need(psec, "famp", " when use_imag_pot = no")
            self.notes.append(f"[{psec.label}] famp = {famp:g}: absorption_ratio = famp/√(1−famp²); TEM-simulator "
                              f"also scales the real potential by √(1−famp²) = {math.sqrt(1 - famp**2):.4f}, difftem "
                              "does not")
        if psec.get("add_hydrogen"):
            self.map(psec, "add_hydrogen", None, "hydrogens are not added (difftem uses the atoms in the file)" if
                     psec.has("add_hydrogen") else None)
            if not psec.has("add_hydrogen"):
                self.notes.append(f"[{psec.label}] add_hydrogen defaults to yes in TEM-simulator (hydrogens added at "
                                  "their heavy atoms); difftem uses the atoms in the file only")
        else:
            self.map(psec, "add_hydrogen", None)
        self.map(psec, "use_defocus_corr", None, "not needed: difftem's multislice resolves defocus within the "
                                                 "specimen (ignored)")
        for k in ("nx", "ny", "nz"):
            self.map(psec, k, None, "ignored: difftem sizes its map to the atoms")
        for k in ("map_file_re_in", "map_file_im_in", "contrast_re", "contrast_im", "smoothness", "make_positive"):
            self.map(psec, k, None, "not used when source = pdb (ignored, as TEM-simulator does)")
        self.ignore_outputs(psec)
        return entry

    def placement(self, ps: Section, entry: dict, index: int, field_nm: tuple[float, float], seed: int) -> bool:
        """Fill positions/orientations (or random placement) of one particleset; False if it places nothing."""
        field_ = f"sample.particles[{index}]"
        self.ignore_outputs(ps)
        mode = ps.get("particle_coords")
        if mode is None:
            legacy = ps.get("gen_rand_positions")
            if legacy is None:
                raise self.err(ps, None, "particle_coords (file, random or grid) is required")
            mode = "random" if legacy else "file"
            self.map(ps, "gen_rand_positions", None, f"obsolete; read as particle_coords = {mode}")
        else:
            self.map(ps, "particle_coords", None)
            self.map(ps, "gen_rand_positions", None, "ignored: particle_coords is given")
        if mode == "file":
            self.need(ps, "coord_file_in", " when particle_coords = file")
            file = self.path(ps, "coord_file_in", "particle coordinate file")
            table = read_table(file, columns=6, rows=ps.get("num_particles"), what="particle coordinate file")
            self.map(ps, "coord_file_in", (f"{field_}.positions_a", f"{field_}.euler_zyz_deg"))
            self.map(ps, "num_particles", f"{field_}.positions_a")
            for k in ("where", "particle_conc", "occupancy", "particle_dist", "nx", "ny", "nz", "offset_x", "offset_y",
                      "offset_z"):
                self.map(ps, k, None, "not used when particle_coords = file (ignored)")
            if len(table) == 0:
                self.notes.append(f"[{ps.label}] places no particles")
                return False
            entry["positions_a"] = [[float(v) for v in row] for row in table[:, :3] * 10.0]  # nm → Å
            entry["euler_zyz_deg"] = _zyz_list(rotation_zxz_deg(table[:, 3], table[:, 4], table[:, 5]))
            return True
        if mode == "grid":
            dist = self.need(ps, "particle_dist", " when particle_coords = grid")
            nx, ny, nz = ps.get("nx"), ps.get("ny"), ps.get("nz")
            i = np.arange(nx * ny * nz)
            j = i // nx
            pos_nm = np.stack([(i % nx - 0.5 * (nx - 1)) * dist + ps.get("offset_x"),
                               (j % ny - 0.5 * (ny - 1)) * dist + ps.get("offset_y"),
                               (j // ny - 0.5 * (nz - 1)) * dist + ps.get("offset_z")], 1)
            from ..core.rotations import random_rotations

            entry["positions_a"] = [[float(v) for v in row] for row in pos_nm * 10.0]
            entry["euler_zyz_deg"] = _zyz_list(random_rotations(len(pos_nm), self.rng(10 + index, seed)))
            for k in ("nx", "ny", "nz", "particle_dist", "offset_x", "offset_y", "offset_z"):
                self.map(ps, k, f"{field_}.positions_a")
            self.notes.append(f"[{ps.label}] particle_coords = grid: {len(pos_nm)} positions on the grid; random "
                              "orientations drawn once from the config seed (TEM-simulator draws its own)")
            for k in ("num_particles", "particle_conc", "occupancy", "where", "coord_file_in"):
                self.map(ps, k, None, "not used when particle_coords = grid (ignored)")
            return True
        # random
        where = self.need(ps, "where", " when particle_coords = random")
        if where != "volume":
            raise self.err(ps, "where", f"{where!r}: difftem places random particles in the ice volume only; "
                                        "use 'where = volume' or give a coordinate file")
        smp = self.single("sample")
        dia, tc, te = smp.get("diameter"), smp.get("thickness_center"), smp.get("thickness_edge")
        hole_area = math.pi * dia**2 / 4
        if ps.get("num_particles") is not None:
            n_hole = ps.get("num_particles")
            self.map(ps, "num_particles", f"{field_}.random.count")
            for k in ("particle_conc", "occupancy"):
                self.map(ps, k, None, "not used: num_particles is given (as in TEM-simulator)")
        elif ps.get("particle_conc") is not None:
            vol_um3 = 0.125 * math.pi * dia**2 * (tc + te) * 1e-9  # TEM-simulator's hole volume
            n_hole = ps.get("particle_conc") * vol_um3
            self.map(ps, "particle_conc", f"{field_}.random.count")
            self.map(ps, "occupancy", None, "not used: particle_conc is given (as in TEM-simulator)")
        elif ps.get("occupancy") is not None:
            raise self.err(ps, "occupancy", "random placement by volume occupancy is not supported by difftem; "
                                            "give num_particles or particle_conc")
        else:
            raise self.err(ps, None, "give num_particles, particle_conc or occupancy when particle_coords = random")
        frac = _disc_fraction_in_field(field_nm, dia, (smp.get("offset_x"), smp.get("offset_y")))
        count = int(round(n_hole * frac / hole_area)) if hole_area > 0 else 0
        self.map(ps, "where", f"{field_}.random")
        self.notes.append(f"[{ps.label}] random placement: TEM-simulator spreads {n_hole:g} particles over the "
                          f"{dia:g} nm hole; the field sees {100 * frac / hole_area if hole_area else 0:.2g}% of it, "
                          "so "
                          f"difftem places {count} copies in the field (uniform orientations, no overlaps; "
                          "TEM-simulator does not check overlaps)")
        for k in ("coord_file_in", "particle_dist", "nx", "ny", "nz", "offset_x", "offset_y", "offset_z"):
            self.map(ps, k, None, "not used when particle_coords = random (ignored)")
        if count == 0:
            return False
        entry["random"] = {"count": count, "orientation": "uniform", "min_gap_a": 0.0}
        return True

    # -- whole file
    def run(self) -> dict:
        data: dict = {}
        self.simulation(data)
        seed = data["seed"]
        geo, beam, opt = self.single("geometry"), self.single("electronbeam"), self.single("optics")
        angles, axis_from_x = self.tilts(geo)
        n = len(angles)
        doses, dose_how = self.doses_nm2(beam, n, seed)
        defoci = self.defoci_um(opt, n, seed)
        magnification = opt.get("magnification")
        self.map(opt, "magnification", "detector.pixel_size_a")
        wavelength_a = _wavelength_a(beam.get("acc_voltage"))
        data["beam"] = {"voltage_kv": beam.get("acc_voltage"), "dose_e_per_a2": float(np.mean(doses)) / 100.0}
        self.map(beam, "acc_voltage", "beam.voltage_kv")
        self.ignore_outputs(beam)
        data["optics"] = {
            "defocus_um": float(defoci[0]) if len(set(defoci)) == 1 else float(np.mean(defoci)),
            "astigmatism_um": 0.0, "astigmatism_angle_deg": 0.0,
            "cs_mm": opt.get("cs"), "cc_mm": opt.get("cc"), "energy_spread_ev": beam.get("energy_spread"),
            "illumination_semiangle_mrad": opt.get("cond_ap_angle"),
            "aperture_mrad": opt.get("aperture") / (2 * opt.get("focal_length")),  # µm / mm = mrad (semi-angle)
            "phase_shift_deg": 0.0,
        }
        self.map(opt, "cs", "optics.cs_mm")
        self.map(opt, "cc", "optics.cc_mm")
        self.map(beam, "energy_spread", "optics.energy_spread_ev")
        self.map(opt, "cond_ap_angle", "optics.illumination_semiangle_mrad")
        self.map(opt, "aperture", ("optics.aperture_mrad", "sample.ice_absorption_potential_v"))
        self.map(opt, "focal_length", ("optics.aperture_mrad", "sample.ice_absorption_potential_v"))
        self.ignore_outputs(opt)
        self.detector(data, magnification)
        det = data["detector"]
        field_nm = (det["shape_px"][1] * det["pixel_size_a"] / 10, det["shape_px"][0] * det["pixel_size_a"] / 10)
        self.sample(data, field_nm)
        ice_v = temsim_ice_absorption_v(data["beam"]["voltage_kv"], data["optics"]["aperture_mrad"])
        data["sample"]["ice_absorption_potential_v"] = ice_v
        self.map(beam, "acc_voltage", "sample.ice_absorption_potential_v")
        self.notes.append(f"sample.ice_absorption_potential_v = {ice_v:.4g} V: TEM-simulator loses only the electrons "
                          "the ice scatters outside the objective aperture (the rest return to the image, blurred); "
                          "difftem's absorption removes electrons, so it is set to that loss (atoms keep the same "
                          "imaginary/real ratio)")
        self.particles(data, field_nm, seed)
        # TEM-simulator slices at p²/(2λ) with whole particles per slice; a quarter of that keeps the Fresnel phase
        # across one slice at the band limit below 0.05 rad
        temsim_slice_a = det["pixel_size_a"] ** 2 / (2 * wavelength_a)
        slice_a = float(f"{max(2.0, temsim_slice_a / 4):.4g}")
        data["simulation"] = {"slice_thickness_a": slice_a}
        self.notes.append(f"simulation.slice_thickness_a = {slice_a:g} Å (chosen by difftem: a quarter of "
                          f"TEM-simulator's p²/(2λ) = {temsim_slice_a:.4g} Å)")
        if n == 1 and angles[0] == 0:  # one untilted image: a plain micrograph
            data["beam"]["dose_e_per_a2"] = doses[0] / 100.0
            data["optics"]["defocus_um"] = defoci[0]
            self.mapping = [m._replace(field=_single_image_field(m.field)) for m in self.mapping]
        else:
            ts = {"scheme": "list", "angles_deg": angles, "tilt_axis_deg": axis_from_x - 90.0, "damage": "none"}
            if dose_how == "total":
                ts["total_dose_e_per_a2"] = beam.get("total_dose") / 100.0
            elif dose_how == "list":
                ts["dose_per_tilt_e_per_a2"] = [d / 100.0 for d in doses]
            if len(set(defoci)) > 1:
                ts["defocus_um"] = defoci
            data["tilt_series"] = ts
            self.notes.append("tilt_series.damage = none (TEM-simulator models no radiation damage); "
                              "tilt_axis_deg = tilt_axis − 90 (difftem measures the axis from y, TEM-simulator from x)")
        for vol in self.sections_of("volume"):
            self.check_required(vol)
            for key in vol.values:
                self.map(vol, key, None)
            self.notes.append(f"[{vol.label}] ignored: volume components export maps and play no role in micrographs")
        return {k: data[k] for k in ("seed", "beam", "optics", "detector", "sample", "simulation", "tilt_series")
                if k in data}


# ---------------------------------------------------------------------------------------------- ice loss
ICE_MOLECULES_PER_A3 = 0.0335  # TEM-simulator's vitreous ice: 33.5 molecules per nm³
BOHR_RADIUS_A = 0.529177
ELECTRON_REST_ENERGY_EV = 510998.95


def screened_cross_sections_a2(z: int, voltage_kv: float, max_angle_rad: float = INF) -> tuple[float, float]:
    """(elastic, inelastic) cross-sections (Å²) of an atom of number ``z`` for scattering angles up to
    ``max_angle_rad``, in the screened (Lenz/Wentzel) small-angle model TEM-simulator uses:

    dσ_el/dΩ = 4 Z^{2/3} a₀² γ² / (1 + θ²/θ₀²)²,
    dσ_in/dΩ = 4 Z γ² / (k⁴ a₀² (θ² + θ_E²)²) · (1 − 1/(1 + θ²/θ₀²)²),
    θ₀ = Z^{1/3} / (k a₀), θ_E = 13.5 eV · Z / (4 E), k = 2π/λ, γ = 1 + E/(m₀c²).
    """
    from ..forward.beam import wavelength_a

    k = 2 * math.pi / wavelength_a(voltage_kv)
    gamma = 1 + voltage_kv * 1e3 / ELECTRON_REST_ENERGY_EV
    t02 = z ** (2 / 3) / (k * BOHR_RADIUS_A) ** 2
    te2 = (13.5 * z / (4 * voltage_kv * 1e3)) ** 2
    el_total = 4 * math.pi * z ** (4 / 3) * (gamma / k) ** 2
    a = t02 - te2
    b = gamma / (k * k * BOHR_RADIUS_A * a)
    in_total = 4 * math.pi * z * b * b / a * (-3 * t02**2 + 4 * t02 * te2 - te2**2 + 2 * t02**2 * math.log(t02 / te2))
    if not math.isfinite(max_angle_rad):
        return el_total, in_total
    el = el_total * (1 - 1 / (1 + max_angle_rad**2 / t02))
    # inelastic: no closed form used here; integrate 2πθ dσ/dΩ on a log grid (the scales are θ_E ≪ θ₀)
    theta = np.concatenate([[0.0], np.geomspace(1e-3 * math.sqrt(te2), max(max_angle_rad, 2e-3 * math.sqrt(te2)),
                                                20000)])
    theta = theta[theta <= max_angle_rad] if max_angle_rad > 0 else np.zeros(1)
    th2 = theta**2
    d_in = 4 * z * gamma**2 / (k**4 * BOHR_RADIUS_A**2 * (th2 + te2) ** 2) * (1 - 1 / (1 + th2 / t02) ** 2)
    f = 2 * math.pi * theta * d_in
    inside = float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(theta))) if len(theta) > 1 else 0.0
    return el, inside


def temsim_ice_absorption_v(voltage_kv: float, aperture_semiangle_mrad: float | None) -> float:
    """The ice absorption potential (V) that makes difftem's ice lose, at zero frequency, what TEM-simulator's
    loses: the electrons water (O + 2 H) scatters *outside* the objective aperture, μ = n (σ_tot − σ(θ ≤ α)).
    (TEM-simulator returns the electrons scattered inside the aperture to the image, blurred; difftem's
    imaginary potential removes electrons, |t|² = exp(−2σ_int V t).) Without an aperture every scattered
    electron is lost and this is TEM-simulator's own ice absorption potential."""
    from ..forward.beam import interaction_constant

    alpha = INF if aperture_semiangle_mrad is None else aperture_semiangle_mrad * 1e-3
    loss = 0.0
    for z, count in ((8, 1), (1, 2)):
        el_t, in_t = screened_cross_sections_a2(z, voltage_kv)
        el_a, in_a = (0.0, 0.0) if not math.isfinite(alpha) else screened_cross_sections_a2(z, voltage_kv, alpha)
        loss += count * (el_t + in_t - el_a - in_a)
    mu_per_a = ICE_MOLECULES_PER_A3 * max(loss, 0.0)
    return mu_per_a / (2 * interaction_constant(voltage_kv))


def carbon_loss_fraction(voltage_kv: float, aperture_semiangle_mrad: float | None) -> float:
    """Fraction of carbon's scattering (elastic + inelastic) that falls outside the objective aperture: the share
    of a particle's absorption that TEM-simulator does not return to the image."""
    if aperture_semiangle_mrad is None:
        return 1.0
    total = sum(screened_cross_sections_a2(6, voltage_kv))
    inside = sum(screened_cross_sections_a2(6, voltage_kv, aperture_semiangle_mrad * 1e-3))
    return max(0.0, 1.0 - inside / total)


def _single_image_field(f: str | None) -> str | None:
    """Where a tilt-series field goes when the input is one untilted image."""
    if f is None or not f.startswith("tilt_series."):
        return f
    if "dose" in f:
        return "beam.dose_e_per_a2"
    if "defocus" in f:
        return "optics.defocus_um"
    return None


def _wavelength_a(voltage_kv: float) -> float:
    from ..forward.beam import wavelength_a

    return wavelength_a(voltage_kv)


def _zyz_list(rotations: np.ndarray) -> list[list[float]]:
    from ..core.rotations import euler_zyz_from_matrix

    angles = np.round(euler_zyz_from_matrix(rotations), 9) + 0.0  # drop 1e-15 round-off (and −0)
    return [[float(v) for v in row] for row in angles]


def _disc_fraction_in_field(field_nm: tuple[float, float], diameter_nm: float, centre_nm: tuple[float, float],
                            n: int = 1024) -> float:
    """Area (nm²) of the field rectangle (centred at 0) inside the hole disc, by midpoint sampling."""
    wx, wy = field_nm
    if diameter_nm <= 0:
        return 0.0
    x = (np.arange(n) + 0.5) / n * wx - wx / 2 - centre_nm[0]
    y = (np.arange(n) + 0.5) / n * wy - wy / 2 - centre_nm[1]
    inside = (x[None, :] ** 2 + y[:, None] ** 2) <= (diameter_nm / 2) ** 2
    return float(inside.mean()) * wx * wy


def _field_error(exc, mapping: list[MappedKey], source: Path) -> InpError:
    """A pydantic validation error of the translated config, re-worded to name the .inp key(s) behind it."""
    parts = []
    for err in exc.errors():
        loc = ""
        for p in err["loc"]:
            loc += f"[{p}]" if isinstance(p, int) else (f".{p}" if loc else str(p))
        keys = [f'section "{m.section}", key "{m.key}" = {m.value}' for m in mapping
                if m.field and (m.field == loc or loc.startswith(m.field + "."))]
        parts.append(f"{', '.join(keys) or loc} → {loc}: {err['msg']}")
    return InpError("the translated value is not valid in difftem: " + "; ".join(parts), file=source)


def translate(sections: list[Section], source: str | Path = "input.inp", notes: list[str] | None = None) -> TemsimInput:
    """Translate parsed sections (see :func:`parse_inp_text`); relative data-file paths resolve against
    ``source``'s folder (then the working directory, as TEM-simulator does)."""
    from pydantic import ValidationError

    from ..config import SimulationConfig

    source = Path(source)
    notes = list(notes or [])
    tr = _Translator(sections, source, notes)
    data = tr.run()
    try:
        cfg = SimulationConfig.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc, tr.mapping, source) from None
    return TemsimInput(cfg, tr.notes, tr.mapping, data, source)


def load_inp(path: str | Path) -> TemsimInput:
    """Read a TEM-simulator 1.3 input file into a difftem config (see the module docstring).

    Raises :class:`InpError` (a :class:`~difftem.errors.ConfigError`) naming file, line, section and key
    for anything malformed or not reproducible by difftem.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InpError("input file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InpError(f"cannot read the input file ({exc})", file=path) from None
    sections, notes = parse_inp_text(text, str(path))
    return translate(sections, path, notes)


# ---------------------------------------------------------------------------------------------- YAML with comments
def _flow(value) -> str:
    import yaml

    return yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True).strip()[1:-1]


def _emit(data: dict, comments: dict[str, str], path: str, indent: int) -> list[str]:
    lines = []
    pad = " " * indent
    for key, val in data.items():
        p = f"{path}.{key}" if path else key
        note = f"  # {comments[p]}" if p in comments else ""
        if isinstance(val, dict) and val:
            lines.append(f"{pad}{key}:{note}")
            lines += _emit(val, comments, p, indent + 2)
        elif isinstance(val, list) and val and all(isinstance(v, dict) for v in val):
            lines.append(f"{pad}{key}:{note}")
            for i, item in enumerate(val):
                sub = _emit(item, comments, f"{p}[{i}]", indent + 4)
                sub[0] = f"{pad}  - {sub[0].lstrip()}"
                lines += sub
        elif isinstance(val, list) and len(val) > 4 and all(isinstance(v, list) for v in val):
            lines.append(f"{pad}{key}:{note}")
            lines += [f"{pad}  - {_flow(v)}" for v in val]
        else:
            lines.append(f"{pad}{key}: {_flow(val)}{note}")
    return lines


def to_yaml(result: TemsimInput) -> str:
    """The translated config as YAML, each field commented with the TEM-simulator key(s) it comes from."""
    comments: dict[str, list[str]] = {}
    for m in result.mapping:
        text = f"{m.key} = {m.value}"
        if m.field and text not in comments.setdefault(m.field, []):
            comments[m.field].append(text)
    flat = {k: "<- " + ", ".join(v) for k, v in comments.items()}
    head = [f"# difftem config translated from {result.source.name} (TEM-simulator 1.3 input file)",
            "# '<-' comments name the TEM-simulator parameters each field comes from."]
    unmapped = list(dict.fromkeys(f"[{m.section}] {m.key} = {m.value}" for m in result.mapping if m.field is None))
    if result.notes:
        head.append("# notes (approximations, ignored keys):")
        head += [f"#   - {n}" for n in result.notes]
    if unmapped:
        head.append("# parameters with no difftem field (see the notes and docs/tem-simulator.md):")
        head += [f"#   {u}" for u in unmapped]
    return "\n".join(head + _emit(result.data, flat, "", 0)) + "\n"


# ---------------------------------------------------------------------------------------------- CLI
