"""Translate a parsed TEM-simulator 1.3 input file into a difftem SimulationConfig.

``load_inp(path)`` reads one (see :mod:`.parser`), checks what each component needs and translates it into a
:class:`~difftem.config.SimulationConfig` with the same meaning: units (nm, µm, mm, e/nm²) are converted,
the particle Euler angles (z-x-z, TEM-simulator's order) become our z-y-z pose, the tilt axis
(TEM-simulator: angle from x) becomes ours (angle from y), coordinate and transform files are read. It
returns the config, the key-by-key mapping, and notes on what is approximated or ignored (output-file
keys, voxel sizes, the hole's thickness profile, ...). A key whose effect difftem cannot reproduce (a map
or random particle source, geometry errors, the generalised MTF exponents, ...) raises :class:`InpError`
naming the file, line, section and key. Conventions checked in the TEM-simulator 1.3 source and manual;
see docs/tem-simulator.md for the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import SimulationConfig
from ..core.rotations import euler_zyz_from_matrix, random_rotations, rotation_zxz_deg
from ..forward.beam import wavelength_a
from ..io.tables import read_text_file
from .ice_loss import carbon_loss_fraction, temsim_ice_absorption_v
from .parser import (
    OUTPUT_KEYS,
    PARAMETERS,
    InpError,
    Section,
    parse_inp_text,
    read_table,
    read_transforms_file,
)

#: the detector parameters that must agree between detector components (difftem simulates one detector)
_DETECTOR_PHYSICS = ("det_pix_x", "det_pix_y", "pixel_size", "gain", "mtf_a", "mtf_b", "mtf_c", "mtf_alpha",
                     "mtf_beta", "mtf_p", "mtf_q")


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

    def map_all(self, sec: Section, keys: tuple[str, ...], field_: str | tuple[str, ...] | None,
                note: str | None = None) -> None:
        """:meth:`map` for several keys to the same field(s), with the same note."""
        for key in keys:
            self.map(sec, key, field_, note)

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
        try:
            p = Path(raw).expanduser()
            candidates = [p] if p.is_absolute() else [self.base / p, Path.cwd() / p]
            found = [c.exists() for c in candidates]
        except (OSError, ValueError, RuntimeError):  # an over-long name, an unknown ~user
            raise self.err(sec, key, f"{what}: cannot use this path (too long, or not a valid name)") from None
        for c, exists in zip(candidates, found, strict=True):
            if exists:
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

    # -- geometry
    def tilts(self, geo: Section) -> tuple[list[float], float]:
        """Tilt angles (deg, acquisition order) and TEM-simulator's tilt-axis angle (deg from x)."""
        if geo.get("gen_tilt_data"):
            angles, axis = self.generated_tilts(geo)
        else:
            angles, axis = self.tilts_from_file(geo)
        self.check_tilts(geo, angles)
        self.geometry_errors(geo)
        self.ignore_outputs(geo)
        return angles, float(axis)

    def generated_tilts(self, geo: Section) -> tuple[list[float], float]:
        """gen_tilt_data = yes: ntilts angles from theta_start in steps of theta_incr, about tilt_axis."""
        n = self.need(geo, "ntilts", " when gen_tilt_data = yes")
        t0 = self.need(geo, "theta_start", " when gen_tilt_data = yes")
        dt = self.need(geo, "theta_incr", " when gen_tilt_data = yes")
        angles = [round(t0 + i * dt, 9) for i in range(n)]
        self.map_all(geo, ("ntilts", "theta_start", "theta_incr"), "tilt_series.angles_deg")
        self.map(geo, "tilt_axis", "tilt_series.tilt_axis_deg")
        self.map(geo, "gen_tilt_data", None)
        self.map(geo, "geom_file_in", None, "not used when gen_tilt_data = yes (ignored, as TEM-simulator does)")
        return angles, geo.get("tilt_axis")

    def tilts_from_file(self, geo: Section) -> tuple[list[float], float]:
        """gen_tilt_data = no: (psi, theta, phi) per image from geom_file_in; one tilt axis only."""
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
        self.map_all(geo, ("theta_start", "theta_incr", "tilt_axis"), None,
                     "not used when gen_tilt_data = no (ignored, as TEM-simulator does)")
        return angles, axis

    def check_tilts(self, geo: Section, angles: list[float]) -> None:
        """Refuse an empty series, an edge-on specimen and single-particle tilting."""
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

    def geometry_errors(self, geo: Section) -> None:
        """geom_errors: only 'none' (or 'random' with every error 0) can be reproduced."""
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

    # -- electron beam and optics
    def doses_nm2(self, beam: Section, n: int, seed: int) -> tuple[list[float], str]:
        """Dose per image (e/nm²) and how it was given ('total', 'per_image', 'list')."""
        if beam.get("gen_dose"):
            return self.generated_doses_nm2(beam, n, seed)
        doses = self.per_image_file(beam, "gen_dose", "dose_file_in", "dose file", n,
                                    "tilt_series.dose_per_tilt_e_per_a2", ("total_dose", "dose_per_im", "dose_sd"))
        return doses, "list"

    def per_image_file(self, sec: Section, gen_key: str, file_key: str, what: str, n: int, field: str,
                       generator_keys: tuple[str, ...]) -> list[float]:
        """``gen_... = no``: one value per image from the first column of ``file_key``'s table (mapped to
        ``field``); the generator's keys are ignored."""
        self.need(sec, file_key, f" when {gen_key} = no")
        table = read_table(self.path(sec, file_key, what), rows=n, what=what)
        self.map(sec, gen_key, None)
        self.map(sec, file_key, field)
        self.map_all(sec, generator_keys, None, f"not used when {gen_key} = no (ignored)")
        return [float(v) for v in table[:, 0]]

    def generated_doses_nm2(self, beam: Section, n: int, seed: int) -> tuple[list[float], str]:
        """gen_dose = yes: total_dose split over the images, or dose_per_im; random per image if dose_sd > 0."""
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

    def defoci_um(self, opt: Section, n: int, seed: int) -> list[float]:
        if opt.get("gen_defocus"):
            return self.generated_defoci_um(opt, n, seed)
        return self.per_image_file(opt, "gen_defocus", "defocus_file_in", "defocus file", n,
                                   "tilt_series.defocus_um",
                                   ("defocus_nominal", "defocus_syst_error", "defocus_nonsyst_error"))

    def generated_defoci_um(self, opt: Section, n: int, seed: int) -> list[float]:
        """gen_defocus = yes: defocus_nominal, with a systematic and a per-image random error if given."""
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

    def beam(self, data: dict, beam: Section, doses: list[float]) -> None:
        data["beam"] = {"voltage_kv": beam.get("acc_voltage"), "dose_e_per_a2": float(np.mean(doses)) / 100.0}
        self.map(beam, "acc_voltage", "beam.voltage_kv")
        self.ignore_outputs(beam)

    def optics(self, data: dict, opt: Section, beam: Section, defoci: list[float]) -> None:
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

    # -- detector
    def detector(self, data: dict, magnification: float) -> None:
        dets = self.detector_sections()
        quantized = [d for d in dets if d.get("use_quantization")]
        dqes = {d.get("dqe") for d in quantized}
        if len(dqes) > 1:
            raise self.err(quantized[1], "dqe", "detectors with quantization need the same dqe in difftem")
        main = quantized[0] if quantized else dets[0]
        mtf = self.mtf(main)
        pixel_a = main.get("pixel_size") * 1e4 / magnification  # µm at the detector → Å at the specimen
        data["detector"] = {
            "shape_px": [main.get("det_pix_y"), main.get("det_pix_x")],
            "pixel_size_a": pixel_a,
            "noise": "poisson" if quantized else "none",
            "dqe": main.get("dqe"),
            "gain": main.get("gain"),
            "mtf": mtf,
            "normalize_mtf": True,
            "model": "perfect",  # TEM-simulator's detector: only what the .inp states (no MTF unless given)
        }
        for d in dets:
            self.map_detector(d, main, mtf)
        if len(dets) > 1:
            kinds = sorted({"noisy" if d.get("use_quantization") else "noise-free" for d in dets})
            self.notes.append(f"{len(dets)} detector components ({' and '.join(kinds)}) map to one difftem detector: "
                              "its micrograph is the quantized image, 'noiseless' the image without quantization")
        if quantized:
            self.notes.append("[detector] use_quantization = yes: TEM-simulator draws Poisson counts then a "
                              "DQE-dependent gain noise; difftem draws Poisson(DQE·n)/DQE (same mean and variance)")

    def detector_sections(self) -> list[Section]:
        """The detector components, complete and physically the same (they may differ in quantization)."""
        dets = self.sections_of("detector")
        if not dets:
            raise InpError("no detector component (=== detector ===); TEM-simulator needs at least one to generate "
                           "micrographs", file=self.source)
        for d in dets:
            self.check_required(d)
        first = dets[0]
        for d in dets[1:]:
            for k in _DETECTOR_PHYSICS:
                if d.get(k) != first.get(k):
                    raise self.err(d, k, f"differs from {first.label} ({d.get(k)} vs {first.get(k)}); difftem "
                                         "simulates one detector (noisy and noise-free outputs of the same detector)")
        return dets

    def mtf(self, main: Section) -> dict | None:
        """difftem's MTF a/(1+αω²) + b/(1+βω²) + c (None: flat) from the detector's mtf_* parameters."""
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
        return None if a == 0 and b == 0 else {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta}

    def map_detector(self, d: Section, main: Section, mtf: dict | None) -> None:
        self.map(d, "det_pix_x", "detector.shape_px")
        self.map(d, "det_pix_y", "detector.shape_px")
        self.map(d, "pixel_size", "detector.pixel_size_a")
        self.map(d, "gain", "detector.gain")
        self.map(d, "dqe", "detector.dqe" if d is main else None)
        self.map(d, "use_quantization", "detector.noise")
        for k in ("mtf_a", "mtf_b", "mtf_c", "mtf_alpha", "mtf_beta"):
            self.map(d, k, f"detector.mtf.{k[4:]}" if mtf else "detector.mtf")
        self.map_all(d, ("mtf_p", "mtf_q"), None)
        self.map(d, "padding", None, "ignored: difftem's field is periodic and exactly the detector's size")
        self.ignore_outputs(d)

    # -- sample
    def sample(self, data: dict, field_nm: tuple[float, float]) -> None:
        smp = self.single("sample")
        tc, te, dia = smp.get("thickness_center"), smp.get("thickness_edge"), smp.get("diameter")
        ox, oy = abs(smp.get("offset_x")), abs(smp.get("offset_y"))
        # TEM-simulator's ice is a continuum: no structured ice
        data["sample"] = {"ice_thickness_nm": tc, "ice_structure": {"mode": "off"}}
        self.map(smp, "thickness_center", "sample.ice_thickness_nm")
        self.map_all(smp, ("thickness_edge", "diameter", "offset_x", "offset_y"), None)
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

    def ice_absorption(self, data: dict, beam: Section) -> None:
        ice_v = temsim_ice_absorption_v(data["beam"]["voltage_kv"], data["optics"]["aperture_mrad"])
        data["sample"]["ice_absorption_potential_v"] = ice_v
        self.map(beam, "acc_voltage", "sample.ice_absorption_potential_v")
        self.notes.append(f"sample.ice_absorption_potential_v = {ice_v:.4g} V: TEM-simulator loses only the electrons "
                          "the ice scatters outside the objective aperture (the rest return to the image, blurred); "
                          "difftem's absorption removes electrons, so it is set to that loss (atoms keep the same "
                          "imaginary/real ratio)")

    # -- particles
    def particles(self, data: dict, field_nm: tuple[float, float], seed: int) -> None:
        parts = self.particle_components()
        used: set[str] = set()
        particles: list[dict] = []
        imag: dict[str, object] = {}
        for ps in self.sections_of("particleset"):
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
        self.absorption_ratio(data, imag, parts, used)

    def particle_components(self) -> dict[str, Section]:
        """The particle components by name (each named, no name twice)."""
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
        return parts

    def absorption_ratio(self, data: dict, imag: dict[str, object], parts: dict[str, Section], used: set[str]) -> None:
        """sample.absorption_ratio from the particles' use_imag_pot/famp (one value for all of them)."""
        kinds = set(imag.values())
        if len(kinds) > 1:
            raise InpError(f"particles differ in use_imag_pot/famp ({imag}); difftem has one absorption ratio for "
                           "all atoms (sample.absorption_ratio)", file=self.source)
        if not kinds:
            return
        use_imag, famp = kinds.pop()
        if use_imag:
            return
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
        # bounding box. Its particle is a potential map; difftem picks atoms, projections or maps by estimated cost
        entry.update({"models": "all", "remove_waters": False, "remove_hydrogens": False, "remove_hetero": False,
                      "centre": "bbox", "representation": "auto"})
        if first_use:
            self.map_particle_options(psec)
        return entry

    def map_particle_options(self, psec: Section) -> None:
        """Account for a particle component's remaining keys (once per component)."""
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
        self.map_hydrogens(psec)
        self.map(psec, "use_defocus_corr", None, "not needed: difftem's multislice resolves defocus within the "
                                                 "specimen (ignored)")
        self.map_all(psec, ("nx", "ny", "nz"), None, "ignored: difftem sizes its map to the atoms")
        self.map_all(psec, ("map_file_re_in", "map_file_im_in", "contrast_re", "contrast_im", "smoothness",
                            "make_positive"), None, "not used when source = pdb (ignored, as TEM-simulator does)")
        self.ignore_outputs(psec)

    def map_hydrogens(self, psec: Section) -> None:
        if psec.get("add_hydrogen"):
            self.map(psec, "add_hydrogen", None, "hydrogens are not added (difftem uses the atoms in the file)" if
                     psec.has("add_hydrogen") else None)
            if not psec.has("add_hydrogen"):
                self.notes.append(f"[{psec.label}] add_hydrogen defaults to yes in TEM-simulator (hydrogens added at "
                                  "their heavy atoms); difftem uses the atoms in the file only")
        else:
            self.map(psec, "add_hydrogen", None)

    # -- particle placement
    def placement(self, ps: Section, entry: dict, index: int, field_nm: tuple[float, float], seed: int) -> bool:
        """Fill positions/orientations (or random placement) of one particleset; False if it places nothing."""
        field_ = f"sample.particles[{index}]"
        self.ignore_outputs(ps)
        mode = self.placement_mode(ps)
        if mode == "file":
            return self.place_from_file(ps, entry, field_)
        if mode == "grid":
            return self.place_on_grid(ps, entry, field_, self.rng(10 + index, seed))
        return self.place_randomly(ps, entry, field_, field_nm)

    def placement_mode(self, ps: Section) -> str:
        """particle_coords, or what the obsolete gen_rand_positions stands for."""
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
        return mode

    def place_from_file(self, ps: Section, entry: dict, field_: str) -> bool:
        """particle_coords = file: positions (nm) and z-x-z Euler angles (deg) from coord_file_in."""
        self.need(ps, "coord_file_in", " when particle_coords = file")
        file = self.path(ps, "coord_file_in", "particle coordinate file")
        table = read_table(file, columns=6, rows=ps.get("num_particles"), what="particle coordinate file")
        self.map(ps, "coord_file_in", (f"{field_}.positions_a", f"{field_}.euler_zyz_deg"))
        self.map(ps, "num_particles", f"{field_}.positions_a")
        self.map_all(ps, ("where", "particle_conc", "occupancy", "particle_dist", "nx", "ny", "nz", "offset_x",
                          "offset_y", "offset_z"), None, "not used when particle_coords = file (ignored)")
        if len(table) == 0:
            self.notes.append(f"[{ps.label}] places no particles")
            return False
        entry["positions_a"] = [[float(v) for v in row] for row in table[:, :3] * 10.0]  # nm → Å
        entry["euler_zyz_deg"] = _zyz_list(rotation_zxz_deg(table[:, 3], table[:, 4], table[:, 5]))
        return True

    def place_on_grid(self, ps: Section, entry: dict, field_: str, rng: np.random.Generator) -> bool:
        """particle_coords = grid: nx × ny × nz positions particle_dist apart, random orientations."""
        dist = self.need(ps, "particle_dist", " when particle_coords = grid")
        nx, ny, nz = ps.get("nx"), ps.get("ny"), ps.get("nz")
        i = np.arange(nx * ny * nz)
        j = i // nx
        pos_nm = np.stack([(i % nx - 0.5 * (nx - 1)) * dist + ps.get("offset_x"),
                           (j % ny - 0.5 * (ny - 1)) * dist + ps.get("offset_y"),
                           (j // ny - 0.5 * (nz - 1)) * dist + ps.get("offset_z")], 1)
        entry["positions_a"] = [[float(v) for v in row] for row in pos_nm * 10.0]
        entry["euler_zyz_deg"] = _zyz_list(random_rotations(len(pos_nm), rng))
        self.map_all(ps, ("nx", "ny", "nz", "particle_dist", "offset_x", "offset_y", "offset_z"),
                     f"{field_}.positions_a")
        self.notes.append(f"[{ps.label}] particle_coords = grid: {len(pos_nm)} positions on the grid; random "
                          "orientations drawn once from the config seed (TEM-simulator draws its own)")
        self.map_all(ps, ("num_particles", "particle_conc", "occupancy", "where", "coord_file_in"), None,
                     "not used when particle_coords = grid (ignored)")
        return True

    def place_randomly(self, ps: Section, entry: dict, field_: str, field_nm: tuple[float, float]) -> bool:
        """particle_coords = random: the share of the hole's particles that falls in the field."""
        where = self.need(ps, "where", " when particle_coords = random")
        if where != "volume":
            raise self.err(ps, "where", f"{where!r}: difftem places random particles in the ice volume only; "
                                        "use 'where = volume' or give a coordinate file")
        smp = self.single("sample")
        dia = smp.get("diameter")
        hole_area = math.pi * dia**2 / 4
        n_hole = self.particles_in_hole(ps, smp, field_)
        frac = _disc_fraction_in_field(field_nm, dia, (smp.get("offset_x"), smp.get("offset_y")))
        count = round(n_hole * frac / hole_area) if hole_area > 0 else 0
        self.map(ps, "where", f"{field_}.random")
        self.notes.append(f"[{ps.label}] random placement: TEM-simulator spreads {n_hole:g} particles over the "
                          f"{dia:g} nm hole; the field sees {100 * frac / hole_area if hole_area else 0:.2g}% of it, "
                          "so "
                          f"difftem places {count} copies in the field (uniform orientations, no overlaps; "
                          "TEM-simulator does not check overlaps)")
        self.map_all(ps, ("coord_file_in", "particle_dist", "nx", "ny", "nz", "offset_x", "offset_y", "offset_z"),
                     None, "not used when particle_coords = random (ignored)")
        if count == 0:
            return False
        entry["random"] = {"count": count, "orientation": "uniform", "min_gap_a": 0.0}
        return True

    def particles_in_hole(self, ps: Section, smp: Section, field_: str) -> float:
        """How many particles TEM-simulator spreads over the hole: num_particles, or particle_conc × its volume."""
        if ps.get("num_particles") is not None:
            self.map(ps, "num_particles", f"{field_}.random.count")
            self.map_all(ps, ("particle_conc", "occupancy"), None,
                         "not used: num_particles is given (as in TEM-simulator)")
            return ps.get("num_particles")
        if ps.get("particle_conc") is not None:
            dia, tc, te = smp.get("diameter"), smp.get("thickness_center"), smp.get("thickness_edge")
            vol_um3 = 0.125 * math.pi * dia**2 * (tc + te) * 1e-9  # TEM-simulator's hole volume
            self.map(ps, "particle_conc", f"{field_}.random.count")
            self.map(ps, "occupancy", None, "not used: particle_conc is given (as in TEM-simulator)")
            return ps.get("particle_conc") * vol_um3
        if ps.get("occupancy") is not None:
            raise self.err(ps, "occupancy", "random placement by volume occupancy is not supported by difftem; "
                                            "give num_particles or particle_conc")
        raise self.err(ps, None, "give num_particles, particle_conc or occupancy when particle_coords = random")

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
        self.map(opt, "magnification", "detector.pixel_size_a")
        self.beam(data, beam, doses)
        self.optics(data, opt, beam, defoci)
        self.detector(data, opt.get("magnification"))
        det = data["detector"]
        field_nm = (det["shape_px"][1] * det["pixel_size_a"] / 10, det["shape_px"][0] * det["pixel_size_a"] / 10)
        self.sample(data, field_nm)
        self.ice_absorption(data, beam)
        self.particles(data, field_nm, seed)
        self.slices(data, det["pixel_size_a"], beam.get("acc_voltage"))
        if n == 1 and angles[0] == 0:  # one untilted image: a plain micrograph
            self.single_image(data, doses, defoci)
        else:
            self.tilt_series(data, beam, angles, axis_from_x, doses, dose_how, defoci)
        self.ignore_volumes()
        return {k: data[k] for k in ("seed", "beam", "optics", "detector", "sample", "simulation", "tilt_series")
                if k in data}

    def slices(self, data: dict, pixel_size_a: float, voltage_kv: float) -> None:
        # TEM-simulator slices at p²/(2λ) with whole particles per slice; a quarter of that keeps the Fresnel phase
        # across one slice at the band limit below 0.05 rad
        temsim_slice_a = pixel_size_a**2 / (2 * _wavelength_a(voltage_kv))
        slice_a = float(f"{max(2.0, temsim_slice_a / 4):.4g}")
        data["simulation"] = {"slice_thickness_a": slice_a}
        self.notes.append(f"simulation.slice_thickness_a = {slice_a:g} Å (chosen by difftem: a quarter of "
                          f"TEM-simulator's p²/(2λ) = {temsim_slice_a:.4g} Å)")

    def single_image(self, data: dict, doses: list[float], defoci: list[float]) -> None:
        data["beam"]["dose_e_per_a2"] = doses[0] / 100.0
        data["optics"]["defocus_um"] = defoci[0]
        self.mapping = [m._replace(field=_single_image_field(m.field)) for m in self.mapping]

    def tilt_series(self, data: dict, beam: Section, angles: list[float], axis_from_x: float, doses: list[float],
                    dose_how: str, defoci: list[float]) -> None:
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

    def ignore_volumes(self) -> None:
        for vol in self.sections_of("volume"):
            self.check_required(vol)
            for key in vol.values:
                self.map(vol, key, None)
            self.notes.append(f"[{vol.label}] ignored: volume components export maps and play no role in micrographs")


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
    return wavelength_a(voltage_kv)


def _zyz_list(rotations: np.ndarray) -> list[list[float]]:
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

    Raises :class:`InpError` (a :class:`~difftem.core.errors.ConfigError`) naming file, line, section and key
    for anything malformed or not reproducible by difftem.
    """
    path = Path(path)
    text = read_text_file(path, "TEM-simulator input file", error=InpError,
                          missing="give the path of a TEM-simulator 1.3 input file (.inp)")
    sections, notes = parse_inp_text(text, str(path))
    return translate(sections, path, notes)
