"""Simulation configuration: pydantic models read from YAML, units in every field name.

Unknown fields are errors (``extra="forbid"``) so a typo never silently falls back to a default.
Relative paths inside a config file are resolved against the file's folder.

Every number is finite (``allow_inf_nan=False``) and inside physical bounds chosen so that no real experiment is
refused but absurd values (a 1e-300 Å slice, 10⁶ tilts, a copy 10²⁰ Å away) fail here, up front, with one line
naming the field, instead of hanging or exhausting memory later. Each bound is stated in its field's description.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .core.errors import ConfigError, EmptyConfigError

# bounds shared by several fields (generous: no real experiment comes near them)
MAX_POSITION_A = 1e6  # |x|, |y|, |z| of any copy, helix point or axis: 100 µm
FIELD_REACH = 10.0  # an explicit copy may lie at most this many field widths from the field centre
MAX_DEFOCUS_UM = 100.0
MAX_DOSE_E_PER_A2 = 1e5
#: the pixel sizes (Å) the simulator and the commands that read images accept: below, a typo for nm; above, for µm
MIN_PIXEL_SIZE_A, MAX_PIXEL_SIZE_A = 0.01, 100.0
MAX_COPIES = 1_000_000  # copies of all particle entries together (explicit positions and random)
MAX_RANDOM_COPIES = 100_000  # randomly placed copies (placed one after another)
MAX_PARTICLE_ENTRIES = 1000
MAX_HELIX_SUBUNITS = 100_000
MAX_SLICES = 100_000  # multislice slices through the thickest path (ice at the highest tilt, or the copies)
MAX_TILTS = 1000
MAX_ANGLE_DEG = 1e5  # particle Euler angles (any real angle; the bound only keeps them finite and precise)
MAX_PATH_CHARS = 4096
MAX_YAML_BYTES = 10 * 1024 * 1024
MAX_YAML_DEPTH = 100
MAX_YAML_NODES = 10_000_000  # after YAML aliases are expanded (a "billion laughs" file is refused)


class FieldProblem(ValueError):
    """A validator's complaint about a named field (relative to the model it checks): errors show that field."""

    def __init__(self, field: str, detail: str):
        self.field = field
        super().__init__(detail)


def _path_text(v: str | None, what: str = "path") -> str | None:
    if v is None:
        return v
    if "\x00" in v:
        raise ValueError(f"the {what} contains a NUL byte")
    if len(v) > MAX_PATH_CHARS:
        raise ValueError(f"the {what} is {len(v)} characters long (at most {MAX_PATH_CHARS})")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class _NamesFiles(_Model):
    """An entry that names files. A path given relative to the config file is resolved against the file's folder
    on loading; the text as given and that folder are kept (by field name) so that a missing file's error can say
    where it was looked for (:func:`config_path_fix`)."""

    _given_paths: dict[str, tuple[str, Path]] = PrivateAttr(default_factory=dict)


def config_path_fix(entry: _Model, name: str, field: str, give: str) -> str:
    """The fix for a missing file that ``entry``'s field ``name`` (``field`` in the config, e.g. detector.mtf.star)
    names: where a path given relative to the config file was looked for, then ``give`` (what to give instead)."""
    given = getattr(entry, "_given_paths", {}).get(name)
    if given is None:
        return f"check {field} in the config: {give}"
    text, folder = given
    return f"{field} {text!r} is read relative to the config file's folder ({folder}); {give}"


Position = Annotated[float, Field(ge=-MAX_POSITION_A, le=MAX_POSITION_A)]
Angle = Annotated[float, Field(ge=-MAX_ANGLE_DEG, le=MAX_ANGLE_DEG)]
Defocus = Annotated[float, Field(ge=-MAX_DEFOCUS_UM, le=MAX_DEFOCUS_UM)]
Dose = Annotated[float, Field(ge=0, le=MAX_DOSE_E_PER_A2)]


class Beam(_Model):
    voltage_kv: float = Field(300.0, ge=1, le=3000, description="accelerating voltage (kV), 1…3000")
    dose_e_per_a2: float = Field(40.0, ge=0, le=MAX_DOSE_E_PER_A2,
                                 description="electron dose per image (e/Å²), 0…1e5")


class ElectronLoss(_Model):
    """How the ice loses electrons (forward/loss.py)."""

    model: Literal["absorption", "explicit"] = Field(
        "absorption", description="absorption: the ice's imaginary potential (TEM-simulator compatible); explicit: "
                                  "elastic scattering outside the objective aperture + inelastic scattering, removed "
                                  "by the energy filter or kept blurred")
    energy_filter: bool = Field(True, description="explicit: an energy filter's slit removes inelastic electrons")
    slit_width_ev: float = Field(20.0, gt=0, le=1000, description="explicit: slit width (eV), 0…1000")
    inelastic_mean_free_path_nm: float | None = Field(
        None, gt=0, le=1e5, description="explicit: Λ_in of the ice (nm), ≤ 1e5; null: 395 nm at 300 kV, scaled")
    inelastic_blur_a: float = Field(20.0, ge=0, le=1e4,
                                    description="explicit, no filter: Gaussian blur of the inelastic image (Å)")


class OpticsConfig(_Model):
    defocus_um: float = Field(1.5, ge=-MAX_DEFOCUS_UM, le=MAX_DEFOCUS_UM,
                              description="defocus (µm), positive = underfocus, at the ice mid-plane; |·| ≤ 100")
    astigmatism_um: float = Field(0.0, ge=-MAX_DEFOCUS_UM, le=MAX_DEFOCUS_UM,
                                  description="defocus difference u − v (µm); |·| ≤ 100")
    astigmatism_angle_deg: float = Field(0.0, ge=-360, le=360,
                                         description="direction of the larger defocus u (deg from x), −360…360")
    cs_mm: float = Field(2.7, ge=0, le=100, description="spherical aberration (mm), 0…100")
    cc_mm: float = Field(2.7, ge=0, le=100, description="chromatic aberration (mm), 0…100")
    energy_spread_ev: float = Field(0.8, ge=0, le=100, description="energy spread of the source (eV), 0…100")
    illumination_semiangle_mrad: float = Field(0.02, ge=0, le=100,
                                               description="beam convergence semi-angle (mrad), 0…100")
    aperture_mrad: float | None = Field(None, gt=0, le=1000,
                                        description="objective aperture semi-angle (mrad), ≤ 1000; null: none")
    phase_shift_deg: float = Field(0.0, ge=-360, le=360,
                                   description="phase-plate shift of the scattered beams (deg), −360…360")
    electron_loss: ElectronLoss = Field(default_factory=ElectronLoss,
                                        description="electron loss in the ice: absorption potential or explicit")
    beam_tilt_x_mrad: float = Field(0.0, ge=-100, le=100, description="beam tilt along x (mrad, RELION's "
                                                                      "rlnBeamTiltX): axial coma, |·| ≤ 100")
    beam_tilt_y_mrad: float = Field(0.0, ge=-100, le=100, description="beam tilt along y (mrad, RELION's "
                                                                      "rlnBeamTiltY): axial coma, |·| ≤ 100")


class MTFFormula(_Model):
    """MTF(ω) = a/(1 + α ω²) + b/(1 + β ω²) + c (ω in cycles/px); MTF(0) = a + b + c must be positive."""

    a: float = Field(ge=-1e6, le=1e6, description="|a| ≤ 1e6")
    b: float = Field(ge=-1e6, le=1e6, description="|b| ≤ 1e6")
    c: float = Field(ge=-1e6, le=1e6, description="|c| ≤ 1e6")
    alpha: float = Field(gt=0, le=1e9, description="0 < alpha ≤ 1e9")
    beta: float = Field(gt=0, le=1e9, description="0 < beta ≤ 1e9")

    @model_validator(mode="after")
    def _positive_at_zero(self):
        dc = self.a + self.b + self.c
        if not dc > 0:
            raise FieldProblem("c", f"MTF(0) = a + b + c = {dc:g} must be positive (a detector passes the mean "
                                    "count); check a, b and c")
        if abs(self.a) + abs(self.b) + abs(self.c) > 1e3 * dc:
            raise FieldProblem("c", f"MTF(0) = a + b + c = {dc:g} is tiny against |a| + |b| + |c|; normalised to "
                                    "MTF(0) = 1 the curve would exceed 1000: check a, b and c")
        return self


class MTFStar(_NamesFiles):
    star: Path = Field(description="RELION MTF STAR file (path ≤ 4096 characters)")

    @field_validator("star", mode="before")
    @classmethod
    def _path(cls, v):
        return _path_text(v) if isinstance(v, str) else v


def _mtf_kind(v) -> str:
    """Which MTF a value describes: a STAR file when it names one, otherwise the formula (errors then list its
    parameters instead of both alternatives')."""
    if isinstance(v, MTFStar) or (isinstance(v, dict) and "star" in v):
        return "MTFStar"
    return "MTFFormula"


MTF = Annotated[Annotated[MTFFormula, Tag("MTFFormula")] | Annotated[MTFStar, Tag("MTFStar")],
                Discriminator(_mtf_kind)]


class Camera(_Model):
    """Detector physics beyond the summed-image model: how frames are counted or integrated and what a real
    camera adds (fixed gain pattern, defects). Counts are detected events (mean DQE(0) × electrons) for
    counting cameras and ADU for integrating ones."""

    kind: Literal["counting", "integrating"] = Field("counting", description="electron counting or integrating")
    pixel_mtf: bool = Field(True, description="multiply the signal's MTF by the pixel's sinc(fx)·sinc(fy); unset: "
                                              "false under detector.model k3 with a measured (STAR) curve, which "
                                              "holds the pixel's aperture, else true")
    nps: Literal["signal", "curve"] = Field(
        "curve", description="noise transfer: as the signal (NPS ∝ MTF², DQE flat) or the curve "
                             "NPS(f) = (1 − nps_floor)/(1 + nps_alpha f²) + nps_floor (f in cycles/px)")
    nps_floor: float = Field(1.0, gt=0, le=10, description="NPS at high frequency relative to NPS(0) = 1, "
                                                           "0…10; 1: white noise (a counting camera)")
    nps_alpha: float = Field(4.0, ge=0, le=1e4, description="NPS curve width parameter (px²), 0…1e4")
    super_resolution: bool = Field(False, description="count on a 2× finer grid (frames are 2H × 2W)")
    bin_super_resolution: bool = Field(True, description="Fourier-crop super-resolution frames back to the pixel "
                                                         "(no aliasing)")
    coincidence: Literal["none", "non_paralysable", "paralysable"] = Field(
        "none", description="counting dead-time model for the loss at high dose rate")
    dead_time_s: float = Field(0.0, ge=0, le=1.0, description="counting dead time per pixel (s), 0…1")
    read_noise_adu: float = Field(0.0, ge=0, le=1e5, description="integrating: Gaussian read noise (ADU), 0…1e5")
    gain_adu_per_e: float = Field(1.0, gt=0, le=1e5, description="integrating: ADU per electron, ≤ 1e5")
    offset_adu: float = Field(0.0, ge=-1e6, le=1e6, description="integrating: bias (ADU), |·| ≤ 1e6")
    gain_sigma: float = Field(0.0, ge=0, le=0.5, description="per-pixel gain spread (relative), 0…0.5")
    gain_column_sigma: float = Field(0.0, ge=0, le=0.5, description="per-column gain spread (relative), 0…0.5")
    dead_pixel_fraction: float = Field(0.0, ge=0, le=0.1, description="fraction of dead pixels, 0…0.1")
    hot_pixel_fraction: float = Field(0.0, ge=0, le=0.1, description="fraction of hot pixels, 0…0.1")
    hot_pixel_counts: float = Field(50.0, ge=0, le=1e6, description="mean counts of a hot pixel per frame, ≤ 1e6")
    dead_columns: int = Field(0, ge=0, le=1000, description="number of dead columns, ≤ 1000")
    hot_columns: int = Field(0, ge=0, le=1000, description="number of hot columns, ≤ 1000")
    pattern_seed: int = Field(0, ge=0, lt=2**63, description="seed of the fixed pattern (gain, defects): one "
                                                             "camera across runs")
    exposure_time_s: float | None = Field(
        None, gt=0, le=1e4, description="exposure time of a single image or tilt (s): its dose rate for coincidence "
                                        "loss; null: movie.exposure_time_s with a movie, else 1 s")


class Drift(_Model):
    """Global beam-induced motion: a fast exponential phase then slow linear drift,
    s(t) = fast_a·(1 − exp(−t/fast_frames))·u + slow_a_per_frame·t·v (t in frames, u, v unit vectors)."""

    fast_a: float = Field(10.0, ge=0, le=1e4, description="amplitude of the fast initial phase (Å), 0…1e4")
    fast_frames: float = Field(3.0, gt=0, le=1e4, description="decay constant of the fast phase (frames)")
    slow_a_per_frame: float = Field(0.3, ge=0, le=1e3, description="slow linear drift (Å per frame), 0…1e3")
    direction_deg: float | None = Field(None, ge=-360, le=360, description="direction u of the fast phase from x "
                                                                           "(deg); null: random")
    slow_direction_deg: float | None = Field(None, ge=-360, le=360, description="direction v of the slow drift "
                                                                                "(deg); null: random")


class Movie(_Model):
    """Dose-fractionated frames of one exposure (the beam dose split equally over the frames)."""

    n_frames: int = Field(40, ge=1, le=10000, description="frames per exposure, 1…10000")
    exposure_time_s: float = Field(2.0, gt=0, le=1e4, description="exposure time (s): dose rate for coincidence")
    drift: Drift = Field(default_factory=Drift)
    local_a: float = Field(0.0, ge=0, le=1e3, description="local (doming) motion: the largest displacement of a "
                                                           "zero-mean quadratic field at the last frame (Å), 0…1e3")
    jitter_a: float = Field(0.0, ge=0, le=1e3, description="per-particle random-walk step per frame (Å), 0…1e3")
    damage: Literal["none", "exposure_filter"] = Field(
        "exposure_filter", description="per-frame radiation damage on the image contrast (Grant–Grigorieff)")
    prior_dose_e_per_a2: float = Field(0.0, ge=0, le=MAX_DOSE_E_PER_A2, description="dose before the movie, 0…1e5")
    formats: list[Literal["mrc", "tiff"]] = Field(["mrc", "tiff"], max_length=2,
                                                  description="movie files: MRC stack, LZW TIFF (integer counts)")


class TiltErrors(_Model):
    """Acquisition errors per tilt, drawn (seeded) from zero-mean normals or given per tilt in acquisition
    order; applied about the field centre and written as truth (IMOD .xf and tilts.star)."""

    shift_sigma_a: float = Field(0.0, ge=0, le=1e5, description="per-tilt image shift σ (Å), 0…1e5")
    rotation_sigma_deg: float = Field(0.0, ge=0, le=180, description="in-plane rotation σ (deg), 0…180")
    angle_offset_sigma_deg: float = Field(0.0, ge=0, le=30, description="tilt-angle error σ (deg), 0…30")
    magnification_sigma: float = Field(0.0, ge=0, le=0.5, description="relative magnification change σ, 0…0.5")
    shifts_a: list[tuple[Position, Position]] | None = Field(None, max_length=MAX_TILTS,
                                                             description="given (x, y) shifts per tilt (Å)")
    rotations_deg: list[Angle] | None = Field(None, max_length=MAX_TILTS, description="given rotations per tilt")
    angle_offsets_deg: list[Annotated[float, Field(ge=-30, le=30)]] | None = Field(
        None, max_length=MAX_TILTS, description="given tilt-angle errors per tilt (deg), |·| ≤ 30")
    magnifications: list[Annotated[float, Field(ge=0.5, le=2.0)]] | None = Field(
        None, max_length=MAX_TILTS, description="given magnifications per tilt, 0.5…2")
    seed: int | None = Field(None, ge=0, lt=2**63, description="seed of the drawn errors; null: the run's seed")
    beam_tilt_sigma_mrad: float = Field(0.0, ge=0, le=100, description="per-tilt beam tilt σ in x and y (mrad), "
                                                                       "added to optics.beam_tilt_*, 0…100")
    beam_tilts_mrad: list[tuple[Annotated[float, Field(ge=-100, le=100)], Annotated[float, Field(ge=-100, le=100)]]
                          ] | None = Field(None, max_length=MAX_TILTS,
                                           description="given (x, y) beam tilt errors per tilt (mrad), |·| ≤ 100")


#: DQE at zero frequency of the default detector (``detector.model: k3``): electron counting at 300 kV detects
#: ~0.8 of the electrons at low frequency (measured for Gatan's K2 counting mode, McMullan et al. 2014,
#: Ultramicroscopy 147:156; no K3 curve is in the project's data).
K3_DQE0 = 0.8


def k3_mtf_path(voltage_kv: float) -> Path:
    """The bundled measured MTF of a Gatan K3 (standard counting mode) at the nearer of 200 and 300 kV
    (``data/mtf_k3_standard_{200,300}kv.star``; provenance in the files' header)."""
    kv = 200 if voltage_kv < 250 else 300
    return Path(__file__).resolve().parent / "data" / f"mtf_k3_standard_{kv}kv.star"


class Detector(_Model):
    shape_px: tuple[int, int] = Field((256, 256), description="(height, width) in pixels")
    pixel_size_a: float = Field(1.0, ge=MIN_PIXEL_SIZE_A, le=MAX_PIXEL_SIZE_A,
                                description="pixel size at the specimen (Å), 0.01…100")
    noise: Literal["poisson", "none"] = "poisson"
    dqe: float = Field(1.0, gt=0, le=1, description="detective quantum efficiency at zero frequency, (0, 1]; "
                                                    "unset: the model's (k3 0.8, perfect 1)")
    gain: float = Field(1.0, gt=0, le=1e6, description="output units per electron, ≤ 1e6")
    mtf: MTF | None = None
    normalize_mtf: bool = Field(True, description="divide the MTF by MTF(0) so mean counts are preserved")
    camera: Camera | None = Field(None, description="camera physics for every image: micrograph, tilts, movie "
                                                    "frames (counting or integrating, NPS, defects, gain pattern); "
                                                    "null: the model above")
    model: Literal["k3", "perfect"] = Field(
        "k3", description="what the unset dqe and mtf are: 'k3' a Gatan K3 counting camera (its measured MTF at the "
                          "nearer of 200 and 300 kV, bundled; DQE(0) 0.8), 'perfect' an ideal detector (DQE 1, no "
                          "MTF); values given explicitly always win")

    @model_validator(mode="after")
    def _model_defaults(self):
        """Fill the dqe and mtf the config leaves unset from ``model`` (written into ``__dict__``: they stay unset,
        so switching ``model`` later switches them too). A measured curve already holds the pixel's aperture, so
        a camera then leaves out its pixel sinc unless ``camera.pixel_mtf`` says otherwise."""
        k3 = self.model == "k3"
        given = self.model_fields_set
        if "dqe" not in given:
            self.__dict__["dqe"] = K3_DQE0 if k3 else 1.0
        if "mtf" not in given:
            self.__dict__["mtf"] = MTFStar(star=k3_mtf_path(300.0)) if k3 else None
        if self.camera is not None and "pixel_mtf" not in self.camera.model_fields_set:
            self.camera.__dict__["pixel_mtf"] = not (k3 and isinstance(self.mtf, MTFStar))
        return self

    @field_validator("shape_px")
    @classmethod
    def _shape(cls, v):
        if min(v) < 16 or max(v) > 65536:
            raise ValueError("each side must be between 16 and 65536 pixels")
        return v

    @property
    def field_a(self) -> tuple[float, float]:
        """(width, height) of the field at the specimen (Å)."""
        return self.shape_px[1] * self.pixel_size_a, self.shape_px[0] * self.pixel_size_a


class Helix(_Model):
    """Helical symmetry generated from the structure's atoms (the asymmetric unit, in the file's frame)."""

    rise_a: float = Field(ge=-1e4, le=1e4, description="translation along the axis per subunit (Å), |·| ≤ 1e4")
    twist_deg: float = Field(ge=-360, le=360, description="rotation about the axis per subunit (deg), −360…360")
    n_subunits: int | None = Field(None, ge=1, le=MAX_HELIX_SUBUNITS,
                                   description="number of subunits, 1…1e5; or give length_a")
    length_a: float | None = Field(None, gt=0, le=MAX_POSITION_A,
                                   description="rod length (Å), ≤ 1e6: n_subunits = round(length / rise)")
    axis: tuple[Position, Position, Position] = Field((0.0, 0.0, 1.0),
                                                      description="helix axis direction, file frame (non-zero)")
    axis_point_a: tuple[Position, Position, Position] = Field(
        (0.0, 0.0, 0.0), description="a point on the axis (Å), |x|, |y|, |z| ≤ 1e6")

    @model_validator(mode="after")
    def _count(self):
        if (self.n_subunits is None) == (self.length_a is None):
            raise ValueError("give exactly one of n_subunits or length_a")
        if self.rise_a == 0 and self.length_a is not None:
            raise ValueError("length_a needs a non-zero rise_a")
        if not any(self.axis):
            raise FieldProblem("axis", "must be a non-zero vector")
        n = self.count()
        if n > MAX_HELIX_SUBUNITS:
            raise FieldProblem("length_a", f"{self.length_a:g} Å at a rise of {abs(self.rise_a):g} Å makes {n} "
                                           f"subunits (at most {MAX_HELIX_SUBUNITS}); shorten the rod")
        if n * abs(self.rise_a) > MAX_POSITION_A:
            raise FieldProblem("n_subunits" if self.n_subunits is not None else "length_a",
                               f"{n} subunits × {abs(self.rise_a):g} Å make a rod {n * abs(self.rise_a):g} Å "
                               f"long (at most {MAX_POSITION_A:g} Å)")
        return self

    def count(self) -> int:
        return self.n_subunits if self.n_subunits is not None else max(1, round(self.length_a / abs(self.rise_a)))


class RandomPlacement(_Model):
    """Copies at random, non-overlapping positions inside the field and the ice slab."""

    count: int | None = Field(None, ge=0, le=MAX_RANDOM_COPIES, description="number of copies, ≤ 1e5")
    density_per_um3: float | None = Field(
        None, ge=0, le=1e9, description="copies per µm³ of ice in the field, ≤ 1e9 (at most 1e5 copies in all)")
    orientation: Literal["uniform", "fixed"] = Field("uniform", description="uniform on SO(3), or as euler_zyz_deg")
    min_gap_a: float = Field(5.0, ge=0, le=1e5, description="minimum distance between bounding shapes (Å), ≤ 1e5")
    bounding: Literal["auto", "sphere", "capsule"] = Field("auto", description="shape tested for overlaps")

    @model_validator(mode="after")
    def _one(self):
        if (self.count is None) == (self.density_per_um3 is None):
            raise ValueError("give exactly one of count or density_per_um3")
        return self


class DensityMapConfig(_NamesFiles):
    """A particle type drawn from a density map (MRC volume) instead of atoms (specimen/density.py,
    forward/density_map.py): its numbers become potential by ``calibration``."""

    file: str = Field(description="MRC volume (.gz allowed; ≤ 4096 characters), with its voxel size in the header")
    voxel_size_a: float | None = Field(None, gt=0, le=1e3,
                                       description="voxel size (Å), ≤ 1e3, when the header has none; null: header")
    calibration: Literal["scale", "mass", "model"] = Field(
        "mass", description="scale: potential = scale_v × map; mass: the map's integral equals the potential of "
                            "mass_kda of average protein; model: least squares against the potential of model")
    scale_v: float | None = Field(None, gt=0, le=1e9, description="calibration scale: volts per map unit, ≤ 1e9")
    mass_kda: float | None = Field(None, gt=0, le=1e6,
                                   description="the molecule's mass (kDa), ≤ 1e6: calibration mass, and the volume "
                                               "(1.35 g/cm³) of ice it displaces")
    model: str | None = Field(None, description="calibration model: an atomic model of the same molecule in the "
                                                "map's frame (PDB/mmCIF path)")
    fit_resolution_a: float = Field(8.0, gt=0, le=1e3, description="calibration model: fit frequencies below "
                                                                   "1/this (Å), ≤ 1e3")
    threshold: float | None = Field(None, ge=-1e30, le=1e30,
                                    description="map value above which a voxel is the molecule; null: the densest "
                                                "voxels holding the mass at 1.35 g/cm³")
    solvent: Literal["subtract", "included"] = Field(
        "subtract", description="subtract: the map is the molecule's own potential and the ice it displaces is "
                                "subtracted (as for atoms); included: the map is contrast against the solvent")
    displaced: Literal["proportional", "mask"] = Field(
        "proportional", description="the displaced ice's shape: proportional to the map (as atoms displace it), or "
                                    "the molecule's mask; its volume is mass_kda at 1.35 g/cm³ (else the mask's)")
    hydrogens: bool = Field(True, description="calibration mass: the average protein composition counts hydrogens")
    subtract_background: bool = Field(True, description="subtract the median of the box's outer two voxel layers")

    @field_validator("file", "model")
    @classmethod
    def _paths(cls, v):
        return _path_text(v)

    @model_validator(mode="after")
    def _needs(self):
        need = {"scale": "scale_v", "mass": "mass_kda", "model": "model"}[self.calibration]
        if getattr(self, need) is None:
            raise FieldProblem(need, f"calibration {self.calibration} needs {need}")
        return self


class MembraneEmbedding(_Model):
    """Copies of a particle type embedded in the vesicles' bilayers (specimen/membranes.py): each at a random point of
    a vesicle (area-weighted), its type-frame ``axis`` along the outward normal, spun at random about it."""

    count: int = Field(1, ge=0, le=100_000, description="copies over all vesicles, 0…1e5")
    depth_a: float = Field(0.0, ge=-500, le=500,
                           description="the type frame's origin from the bilayer's mid-plane along the outward "
                                       "normal (Å), ±500")
    axis: tuple[float, float, float] = Field((0.0, 0.0, 1.0), description="type-frame direction put along the "
                                                                         "outward normal (x, y, z), non-zero")
    min_gap_a: float = Field(2.0, ge=0, le=1e4, description="least gap (Å) between copies and to other particles")

    @model_validator(mode="after")
    def _axis(self):
        if not any(abs(v) > 0 for v in self.axis) or not all(math.isfinite(v) for v in self.axis):
            raise FieldProblem("axis", "must be a finite non-zero vector")
        return self


class FilamentConfig(_Model):
    """Curved helical filaments made of copies of the structure (the asymmetric unit, file frame), as worm-like chains
    inside the ice (specimen/filaments.py): subunit i sits i·rise along the centreline, turned i·twist about it."""

    count: int = Field(1, ge=0, le=10_000, description="filaments placed at random (seeded), 0…1e4")
    rise_a: float = Field(gt=0, le=1e3, description="arc length along the centreline per subunit (Å), 0 < · ≤ 1e3")
    twist_deg: float = Field(ge=-360, le=360, description="rotation about the centreline per subunit (deg), −360…360")
    axis: tuple[Position, Position, Position] = Field(
        (0.0, 0.0, 1.0), description="helix axis direction in the structure file's frame (non-zero)")
    axis_point_a: tuple[Position, Position, Position] = Field(
        (0.0, 0.0, 0.0), description="a point on the helix axis in the file's frame (Å), |x|, |y|, |z| ≤ 1e6")
    length_nm: float = Field(gt=0, le=1e5, description="mean filament length (nm), 0 < · ≤ 1e5")
    length_sd_nm: float = Field(0.0, ge=0, le=1e5, description="standard deviation of the length (nm); 0: all equal")
    length_distribution: Literal["normal", "lognormal", "uniform"] = Field(
        "normal", description="normal or lognormal (mean length_nm, sd length_sd_nm), or uniform on [min, max]")
    length_min_nm: float = Field(1.0, gt=0, le=1e5, description="lengths are drawn within [min, max] (nm)")
    length_max_nm: float = Field(1e5, gt=0, le=1e5, description="upper bound of the length (nm), ≤ 1e5")
    persistence_length_nm: Annotated[float, Field(gt=0, le=1e9)] | Literal["straight"] = Field(
        "straight", description="bending persistence length Lp (nm), 0 < · ≤ 1e9 (actin ≈ 1e4, microtubule ≈ 1e6), "
                                "⟨t(0)·t(s)⟩ = exp(−s/Lp); or straight (a rigid rod)")
    min_gap_a: float = Field(5.0, ge=0, le=1e4, description="least gap (Å) to other particles and filaments, ≤ 1e4")

    @field_validator("persistence_length_nm", mode="before")
    @classmethod
    def _persistence(cls, v):
        if v == "straight":
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and 0 < v <= 1e9):
            raise ValueError(f"must be a number of nm in (0, 1e9] or 'straight', not {v!r}")
        return float(v)

    @model_validator(mode="after")
    def _lengths(self):
        if not any(self.axis):
            raise FieldProblem("axis", "must be a non-zero vector")
        if self.length_min_nm > self.length_max_nm:
            raise FieldProblem("length_min_nm", f"{self.length_min_nm:g} nm exceeds length_max_nm "
                                                f"{self.length_max_nm:g} nm")
        if not self.length_min_nm <= self.length_nm <= self.length_max_nm:
            raise FieldProblem("length_nm", f"{self.length_nm:g} nm lies outside [length_min_nm, length_max_nm] = "
                                            f"[{self.length_min_nm:g}, {self.length_max_nm:g}] nm")
        if self.length_max_nm * 10 / self.rise_a > MAX_HELIX_SUBUNITS:
            raise FieldProblem("length_max_nm", f"{self.length_max_nm:g} nm at a rise of {self.rise_a:g} Å allows "
                                                f"{self.length_max_nm * 10 / self.rise_a:.3g} subunits per filament "
                                                f"(at most {MAX_HELIX_SUBUNITS}); lower length_max_nm")
        return self


class Particle(_NamesFiles):
    name: str | None = Field(None, max_length=256,
                             description="particle type name in the ground truth (≤ 256 characters); default: "
                                         "the file stem")
    structure: str | None = Field(None, description="PDB/mmCIF path (.gz allowed; ≤ 4096 characters) or "
                                                    "builtin:1ubi; or give map")
    assembly: str | None = Field(None, max_length=256,
                                 description="biological assembly name, e.g. '1'; null: deposited atoms")
    helix: Helix | None = Field(None, description="build a helical rod from the structure's subunit")
    transforms_file: str | None = Field(
        None, description="copies of the structure making one particle: a TEM-simulator pdb_transf_file_in file")
    positions_a: list[tuple[Position, Position, Position]] | None = Field(
        None, max_length=MAX_COPIES,
        description="centres (x, y, z) in Å, scene frame, |·| ≤ 1e6 and x, y within 10 field widths of the centre; "
                    "at most 1e6 copies; default one copy at the origin unless random")
    euler_zyz_deg: list[tuple[Angle, Angle, Angle]] = Field(
        default_factory=lambda: [(0.0, 0.0, 0.0)], min_length=1, max_length=MAX_COPIES,
        description="(φ, θ, ψ) per copy: r' = Rz(φ)·Ry(θ)·Rz(ψ)·r; one triple applies to every copy; |·| ≤ 1e5°")
    random: RandomPlacement | None = Field(None, description="random non-overlapping copies (instead of positions_a)")
    representation: Literal["auto", "atoms", "map"] = Field(
        "auto", description="atoms: exact per slice; map: cached 3-D map placed per copy; auto: map for many copies")
    models: Literal["auto", "first", "all", "ensemble"] = "auto"
    remove_waters: bool = True
    remove_hydrogens: bool = False
    remove_hetero: bool = False
    centre: Literal["mass", "bbox", "none"] = "mass"
    extra_b_a2: float = Field(0.0, ge=0, le=1e4, description="added to every atom's B-factor (Å²), 0…1e4")
    map: DensityMapConfig | None = Field(None, description="a density map as the particle type, instead of "
                                                           "structure")
    membrane: MembraneEmbedding | None = Field(
        None, description="embed the copies in sample.vesicles' bilayers (instead of positions_a or random)")
    filament: FilamentConfig | None = Field(
        None, description="curved helical filaments of this subunit (instead of positions_a, random or membrane)")
    volume_fraction: float | None = Field(
        None, gt=0, le=0.6, description="crowd: copies filling this fraction of the free ice volume (specimen/"
                                        "crowding.py; sample.crowding.basis), 0 < · ≤ 0.6, instead of positions_a, "
                                        "random, membrane or filament")

    @field_validator("structure", "transforms_file")
    @classmethod
    def _paths(cls, v):
        return _path_text(v)

    @field_validator("name", "assembly")
    @classmethod
    def _printable(cls, v):
        if v is not None and not v.isprintable():
            raise ValueError("must not contain control characters (newlines, tabs, NUL)")
        return v

    @model_validator(mode="after")
    def _lengths(self):
        if (self.structure is None) == (self.map is None):
            raise ValueError("give exactly one of structure or map")
        if self.map is not None:
            bad = [f for f in ("assembly", "helix", "transforms_file") if getattr(self, f) is not None]
            if bad or self.representation == "atoms":
                raise FieldProblem(bad[0] if bad else "representation",
                                   "a map particle has no atoms: no assembly, helix, transforms_file or atoms")
        if self.random is not None and self.positions_a is not None:
            raise ValueError("give either positions_a or random, not both")
        if self.membrane is not None and (self.random is not None or self.positions_a is not None):
            raise FieldProblem("membrane", "embedded copies are placed on the vesicles: drop positions_a and random")
        if self.filament is not None:
            bad = [f for f in ("map", "helix", "transforms_file", "positions_a", "random", "membrane")
                   if getattr(self, f) is not None]
            if bad:
                raise FieldProblem("filament", f"the filament places copies of the structure's subunit itself: "
                                               f"drop {bad[0]}")
        if self.volume_fraction is not None and (self.random is not None or self.positions_a is not None
                                                 or self.membrane is not None or self.filament is not None):
            raise FieldProblem("volume_fraction", "a crowd's copies are placed by volume fraction: drop positions_a, "
                                                  "random, membrane and filament")
        n = len(self.positions_a) if self.positions_a is not None else 1
        if self.random is None and len(self.euler_zyz_deg) not in (1, n):
            raise ValueError(
                f"euler_zyz_deg has {len(self.euler_zyz_deg)} entries for {n} positions_a; "
                "give one triple for all copies or one per copy")
        return self

    def explicit_positions(self) -> list[tuple[float, float, float]]:
        if self.membrane is not None or self.filament is not None or self.volume_fraction is not None:
            return []
        return list(self.positions_a) if self.positions_a is not None else ([] if self.random else [(0.0, 0.0, 0.0)])


class IceStructure(_Model):
    """The density fluctuations of amorphous ice (forward/ice.py): a seeded Gaussian random field of potential
    whose spectrum comes from the water structure factor; its mean and absorption stay in the continuum."""

    mode: Literal["auto", "3d", "slices", "off"] = Field(
        "auto", description="3d: one 3-D realisation sampled by every tilt (tilt-consistent); slices: an independent "
                            "2-D field per group of slices; auto: 3d for tilt series when it fits in memory and "
                            "adds at most 5 s or the rest of the run's estimated time, else slices; off: the "
                            "continuum alone")
    amplitude: float = Field(1.0, ge=0, le=100, description="scale of the fluctuations (power ∝ amplitude²), 0…100")
    seed_offset: int = Field(0, ge=0, lt=2**31, description="added to the run's seed for the ice, 0 ≤ · < 2^31")
    chunk_a: float | None = Field(
        None, ge=0.1, le=1e4,
        description="ice thickness (Å) merged into one field between atom slices, 0.1…1e4; default: the depth over "
                    "which the Fresnel phase π λ Δz k² at the band edge stays within 0.1 rad, at least 10 Å")


class IceProfileConfig(_Model):
    """The ice's thickness across the field (specimen/geometry.py); sample.ice_thickness_nm is the flat value, the
    hole's centre or the wedge's value at the field centre."""

    kind: Literal["flat", "hole", "wedge"] = Field(
        "flat", description="flat slab (lamella); hole: t(r) = t_c + (t_e − t_c)(r/R)² inside, t_e outside; wedge")
    edge_thickness_nm: float = Field(0.0, ge=0, le=1e4, description="hole: thickness at the rim and beyond (nm)")
    hole_diameter_nm: float = Field(1000.0, gt=0, le=1e6, description="hole: diameter (nm), ≤ 1e6")
    centre_a: tuple[Position, Position] = Field((0.0, 0.0), description="hole: centre (x, y) in Å")
    wedge_slope_deg: float = Field(0.0, ge=-80, le=80, description="wedge: angle between its faces' mean and z, ±80")
    wedge_direction_deg: float = Field(0.0, ge=-360, le=360, description="wedge: thickening direction from +x")


class SupportFilm(_Model):
    """A support film (forward/support.py) against one face of the ice, covering the field except circular holes on
    a lattice; its potential is its material's mean inner potential, crossed along each view's rays."""

    material: Literal["carbon", "gold"] = Field("carbon", description="amorphous carbon or gold")
    thickness_nm: float = Field(10.0, gt=0, le=1000, description="film thickness (nm), 0 < · ≤ 1000")
    density_g_cm3: float | None = Field(None, gt=0, le=25,
                                        description="g/cm³, 0 < · ≤ 25; null: carbon 2.0, gold 19.32")
    mean_inner_potential_v: float | None = Field(
        None, gt=0, le=100, description="0 < · ≤ 100 V; null: from the atoms' scattering factors and the density")
    hole_diameter_nm: float = Field(1200.0, ge=0, le=1e5, description="hole diameter (nm), 0 (no holes) … 1e5")
    pitch_nm: float = Field(2500.0, gt=0, le=1e6, description="centre-to-centre hole spacing (nm), > the diameter")
    lattice: Literal["square", "hexagonal"] = Field("square", description="the holes' lattice")
    hole_offset_a: tuple[Position, Position] = Field((0.0, 0.0),
                                                     description="centre (x, y) Å of one hole, specimen frame")
    face: Literal["top", "bottom"] = Field("bottom", description="top: the beam's entrance face of the ice; bottom")

    @model_validator(mode="after")
    def _holes_fit(self):
        if self.hole_diameter_nm >= self.pitch_nm:
            raise ValueError(f"hole_diameter_nm {self.hole_diameter_nm:g} must be smaller than pitch_nm "
                             f"{self.pitch_nm:g} (holes would merge)")
        return self


class Fiducials(_Model):
    """Gold beads (fcc, a = 4.078 Å, cut to a sphere; specimen/fiducials.py) placed at random on the ice's faces,
    simulated as a particle type and written with the ground truth."""

    diameter_nm: float = Field(10.0, ge=1, le=40, description="bead diameter (nm), 1…40")
    count: int = Field(10, ge=0, le=10000, description="number of beads, 0…10000")
    faces: Literal["top", "bottom", "both"] = Field("both", description="the ice faces they lie on")
    min_gap_a: float = Field(5.0, ge=0, le=1e4, description="least distance to particles and other beads (Å)")
    seed_offset: int = Field(0, ge=0, lt=2**31, description="added to the run's seed for their placement")


class BilayerProfile(_Model):
    """A lipid bilayer's potential relative to the ice, ΔV(u) at distance u from its mid-plane (specimen/membranes.py):
    two head-group Gaussians, a hydrocarbon core (a box with soft edges) and a methyl trough at the centre.
    Defaults: a fluid PC bilayer's X-ray electron-density profile (Δρ/ρ_water) times the ice's 4.88 V."""

    headgroup_separation_nm: float = Field(3.8, ge=1, le=10, description="head-group peak separation D_HH (nm), 1…10")
    headgroup_v: float = Field(1.6, ge=-20, le=20, description="each head-group Gaussian's height above the ice (V)")
    headgroup_sigma_a: float = Field(3.0, gt=0.5, le=20, description="head-group Gaussian σ (Å), 0.5 < · ≤ 20")
    core_v: float = Field(-0.4, ge=-20, le=20, description="hydrocarbon core's level relative to the ice (V)")
    core_half_width_a: float = Field(14.0, ge=0, le=50, description="half the hydrocarbon thickness D_C (Å), 0…50")
    core_edge_sigma_a: float = Field(2.5, gt=0.5, le=20, description="σ of the core's edges (Å), 0.5 < · ≤ 20")
    methyl_v: float = Field(-1.4, ge=-20, le=20, description="methyl trough at the mid-plane (V), beyond the core")
    methyl_sigma_a: float = Field(3.0, gt=0.5, le=20, description="methyl trough Gaussian σ (Å), 0.5 < · ≤ 20")


class VesiclesConfig(_Model):
    """Lipid vesicles in the ice (specimen/membranes.py): spherical bilayers placed at random (seeded) inside the ice,
    clear of the particles and of each other, or at given centres; radii drawn from a distribution."""

    count: int = Field(0, ge=0, le=10000, description="vesicles placed at random, 0…10000 (beside centres_a)")
    centres_a: list[tuple[Position, Position, Position]] = Field(
        default_factory=list, max_length=10000, description="explicit centres (x, y, z) Å, specimen frame")
    radius_nm: float = Field(20.0, gt=0, le=1000, description="mean outer-to-mid-plane radius (nm), 0 < · ≤ 1000")
    radius_sd_nm: float = Field(0.0, ge=0, le=1000, description="standard deviation of the radius (nm); 0: all equal")
    distribution: Literal["lognormal", "normal"] = Field("lognormal", description="the radius distribution")
    radius_min_nm: float = Field(5.0, gt=0, le=1000, description="radii are drawn within [min, max] (nm)")
    radius_max_nm: float = Field(100.0, gt=0, le=1000, description="upper bound of the radius (nm)")
    min_gap_a: float = Field(10.0, ge=0, le=1e4, description="least gap (Å) to other vesicles, particles, ice faces")
    profile: BilayerProfile = Field(default_factory=BilayerProfile, description="the bilayer's potential profile")
    seed_offset: int = Field(0, ge=0, lt=2**31, description="added to the run's seed for their placement")

    @model_validator(mode="after")
    def _bounds(self):
        if self.radius_min_nm > self.radius_max_nm:
            raise FieldProblem("radius_min_nm", f"{self.radius_min_nm:g} nm exceeds radius_max_nm "
                                                f"{self.radius_max_nm:g} nm")
        if not self.radius_min_nm <= self.radius_nm <= self.radius_max_nm:
            raise FieldProblem("radius_nm", f"{self.radius_nm:g} nm lies outside [radius_min_nm, radius_max_nm] = "
                                            f"[{self.radius_min_nm:g}, {self.radius_max_nm:g}] nm")
        return self


class MembraneSheet(_Model):
    """A flat lipid bilayer in the ice (specimen/sheets.py, forward/sheets.py): a disc of ``radius_nm`` about
    ``centre_a`` with its mid-plane normal to ``normal``, or, with ``radius_nm`` null, a plane across the field (and
    beyond it: a tilted plane is not periodic across the field's edges, a horizontal one is); ΔV relative to the ice."""

    centre_a: tuple[Position, Position, Position] = Field(
        (0.0, 0.0, 0.0), description="the disc's centre, a point of the mid-plane (x, y, z) Å, specimen frame")
    normal: tuple[float, float, float] = Field(
        (0.0, 0.0, 1.0), description="the mid-plane's normal (x, y, z), specimen frame, any non-zero length "
                                     "(normalised); (0, 0, 1): horizontal, (1, 0, 0): seen edge-on at 0°")
    radius_nm: float | None = Field(None, gt=0, le=1e4, description="the disc's radius to its rim (nm), 0 < · ≤ 1e4; "
                                                                    "null: an unbounded plane")
    profile: BilayerProfile = Field(default_factory=BilayerProfile, description="the bilayer's potential profile")

    @model_validator(mode="after")
    def _normal(self):
        n = math.fsum(c * c for c in self.normal)
        if not (math.isfinite(n) and n > 1e-12):
            raise FieldProblem("normal", "must be a finite non-zero vector")
        return self


class Crowding(_Model):
    """Crowded placement of the particle entries with ``volume_fraction`` (specimen/crowding.py): random sequential
    addition in batches, largest type first, clear of vesicles, filaments and the copies placed before them."""

    basis: Literal["capsule", "molecular"] = Field(
        "capsule", description="what a volume fraction counts: the bounding capsules (the shapes tested for "
                               "overlap) or the molecules (mass at 1.35 g/cm³); of the ice in the field minus "
                               "the obstacles")
    min_gap_a: float | None = Field(
        None, ge=0, le=1e3, description="least gap between excluded shapes and to obstacles (Å); null: 2 for capsules "
                                        "and spheres, 0 for atoms (their voxels already reach a van der Waals radius)")
    lumen: bool = Field(False, description="the crowd may also fill the vesicles' insides (else a vesicle is solid)")
    seed_offset: int = Field(0, ge=0, lt=2**31, description="added to the run's seed for the crowd's placement")
    shape: Literal["capsule", "spheres", "atoms"] = Field(
        "capsule", description="the shape copies of the crowd exclude each other by: the bounding capsule, a few "
                               "spheres covering the atoms (specimen/excluded.py), or their atoms' voxels "
                               "(specimen/occupancy.py; the tightest: 25–30 % by molecular volume fit)")
    sphere_radius_a: float = Field(10.0, ge=3.0, le=200.0, description="shape spheres: about one sphere per ball of "
                                                                       "this radius of the molecule (Å), 3…200")
    max_spheres: int = Field(64, ge=1, le=512, description="shape spheres: at most this many per type, 1…512")

    @property
    def gap_a(self) -> float:
        """``min_gap_a``, or its default for the shape."""
        return self.min_gap_a if self.min_gap_a is not None else (0.0 if self.shape == "atoms" else 2.0)


class Sample(_Model):
    ice_thickness_nm: float = Field(30.0, ge=0, le=1e4,
                                    description="vitreous ice slab thickness (nm), 0…1e4 (10 µm); 0: vacuum")
    ice_mean_potential_v: float = Field(4.8775, ge=0, le=100, description="0…100 V")
    ice_absorption_potential_v: float | None = Field(
        None, ge=0, le=100, description="0…100 V; null: tabulated value for the voltage")
    absorption_ratio: float | None = Field(None, ge=0, le=100,
                                           description="atoms' imaginary/real potential, 0…100; null: same as ice")
    particles: list[Particle] = Field(default_factory=list, max_length=MAX_PARTICLE_ENTRIES,
                                      description="particle entries, at most 1000")
    ice_structure: IceStructure = Field(default_factory=IceStructure,
                                        description="structured (amorphous) ice; mode off: the continuum alone")
    ice_profile: IceProfileConfig = Field(default_factory=IceProfileConfig,
                                          description="ice thickness profile: flat, a hole with a meniscus, a wedge")
    support: SupportFilm | None = Field(None, description="a support film with holes (carbon or gold); null: none")
    fiducials: Fiducials | None = Field(None, description="gold fiducial beads on the ice faces; null: none")
    vesicles: VesiclesConfig | None = Field(None, description="lipid vesicles in the ice; null: none")
    membrane_sheets: list[MembraneSheet] = Field(default_factory=list, max_length=100,
                                                 description="flat bilayers (discs or planes) in the ice, at most 100")
    crowding: Crowding | None = Field(None, description="how particles with volume_fraction are packed; null: the "
                                                       "defaults")


class Simulation(_Model):
    slice_thickness_a: float = Field(
        2.0, ge=0.1, le=1e5, description="multislice slice thickness (Å), 0.1…1e5; at most 1e5 slices through the "
                                         "thickest path (ice at the highest tilt, or the spread of the copies)")
    parametrization: Literal["kirkland", "peng", "peng_s2", "peng_s6"] = "kirkland"
    builder: Literal["fourier", "real_space"] = "fourier"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    window: Literal["auto", "off"] = Field(
        "auto", description="run multislice on a window around the atoms when they fill a small part of the field")
    antialias_fraction: float = Field(2 / 3, gt=0, le=1, description="band limit as a fraction of Nyquist")
    antialias_taper_fraction: float = Field(
        0.04, ge=0, le=0.5, description="raised-cosine edge of the band limit, fraction of Nyquist; wider rings less "
                                        "(tiles agree with the whole field to 1e-4 at 0.15)")
    bandlimit: Literal["box", "field"] = Field(
        "box", description="band-limit each slice's transmission in the box around its atoms, or over the field")
    max_memory_gb: float | None = Field(None, gt=0, le=1e6,
                                        description="refuse runs estimated above this (≤ 1e6); null: available RAM")
    map_placement: Literal["auto", "projection", "slab"] = Field(
        "auto", description="map copies: whole projection in the slice of their centre (thin vs the Fresnel "
                            "spread), sampled slab by slab, or auto")
    tile_px: int | None = Field(None, ge=64, le=65536,
                                description="run multislice in tiles of this size (px), 64…65536; null: whole field")
    tile_margin_px: int | None = Field(None, ge=0, le=65536,
                                       description="tile overlap each side (px), ≤ 65536; null: automatic")


EDGE_ON_RULE = "tilt angles must lie strictly between -90 and 90 degrees (at ±90° the specimen is edge-on)"


def edge_on_angles(angles_deg) -> list[float]:
    """The angles a tilt series cannot have: at or beyond ±90° the slab is edge-on (its path t/cos θ diverges)."""
    return [a for a in angles_deg if not abs(a) < 90]


class TiltSeries(_Model):
    """A tilt series: the specimen turned about an in-plane axis, one exposure per angle."""

    scheme: Literal["list", "uniform", "bidirectional", "dose_symmetric"] = "dose_symmetric"
    angles_deg: list[float] | None = Field(None, max_length=MAX_TILTS,
                                           description="scheme list: angles in acquisition order (at most 1000)")
    min_deg: float = Field(-60.0, ge=-90, le=90)
    max_deg: float = Field(60.0, ge=-90, le=90)
    step_deg: float = Field(3.0, ge=0.01, le=180, description="0.01…180°; the scheme may give at most 1000 tilts")
    start_deg: float = Field(0.0, ge=-90, le=90, description="bidirectional: first angle; the branch to max goes first")
    group_size: int = Field(2, ge=1, le=MAX_TILTS,
                            description="dose_symmetric: tilts per side before switching (Hagen scheme), ≤ 1000")
    tilt_axis_deg: float = Field(0.0, ge=-360, le=360,
                                 description="tilt axis: the image y axis turned by this angle about +z, −360…360")
    total_dose_e_per_a2: float | None = Field(
        None, ge=0, le=MAX_DOSE_E_PER_A2, description="split equally over tilts, 0…1e5; null: beam dose per tilt")
    dose_per_tilt_e_per_a2: list[Dose] | None = Field(
        None, max_length=MAX_TILTS, description="per tilt in acquisition order (overrides), each 0…1e5")
    defocus_um: list[Defocus] | None = Field(
        None, max_length=MAX_TILTS, description="per tilt in acquisition order, |·| ≤ 100; null: optics.defocus_um")
    damage: Literal["none", "exposure_filter", "b_factor"] = Field(
        "exposure_filter", description="cumulative radiation damage: Grant–Grigorieff critical exposure, or a B-factor")
    b_factor_a2_per_e_per_a2: float | None = Field(
        None, ge=0, le=1e4, description="damage b_factor: B added per e/Å² of prior dose, 0…1e4")
    errors: TiltErrors | None = Field(None, description="acquisition errors per tilt (shifts, in-plane rotation, "
                                                        "angle offsets, magnification), written as truth; null: none")

    @field_validator("angles_deg")
    @classmethod
    def _angles(cls, v):
        if v is not None:
            if not v:
                raise ValueError("give at least one angle")
            bad = edge_on_angles(v)
            if bad:
                raise ValueError(f"{EDGE_ON_RULE}; got {bad}")
        return v

    @model_validator(mode="after")
    def _scheme(self):
        if self.scheme == "list" and self.angles_deg is None:
            raise ValueError("scheme list needs angles_deg")
        if self.scheme != "list" and self.angles_deg is not None:
            raise ValueError(f"angles_deg is only used with scheme list (scheme is {self.scheme})")
        if self.min_deg > self.max_deg:
            raise ValueError(f"min_deg {self.min_deg} > max_deg {self.max_deg}")
        if edge_on_angles([self.min_deg, self.max_deg]):
            raise ValueError(EDGE_ON_RULE)
        if self.damage == "b_factor" and self.b_factor_a2_per_e_per_a2 is None:
            raise ValueError("damage b_factor needs b_factor_a2_per_e_per_a2")
        if self.scheme != "list":
            lo = min(self.min_deg, self.start_deg) if self.scheme == "bidirectional" else self.min_deg
            n = math.floor((self.max_deg - lo) / self.step_deg) + 2  # an upper bound for every scheme
            if n > MAX_TILTS:
                raise FieldProblem("step_deg", f"{self.step_deg:g}° from {lo:g}° to {self.max_deg:g}° gives about "
                                               f"{n} tilts (at most {MAX_TILTS}); use a larger step")
        return self

    def max_abs_angle_deg(self) -> float:
        """The highest |tilt| the series may reach (an upper bound for the schemes that step)."""
        if self.scheme == "list":
            return max(abs(a) for a in self.angles_deg)
        return max(abs(self.min_deg), abs(self.max_deg))


class Labels(_Model):
    """Per-voxel label volumes written beside the images (simulate/labels.py): class (particle type + 1), instance
    (copy + 1, the row of particles.star) and a particle mask, on the reconstruction's frame; with vesicles also
    their bilayers (a membrane class and mask, one instance per vesicle after the copies)."""

    voxel_size_a: float | None = Field(None, gt=0, le=1e4, description="label voxel (Å), ≤ 1e4; null: the pixel")
    thickness_a: float | None = Field(None, gt=0, le=1e6, description="depth (Å), ≤ 1e6; null: the depth "
                                                                      "`difftem reconstruct` gives the run")


class SimulationConfig(_Model):
    seed: int = Field(0, ge=0, lt=2**63, description="random seed, 0 ≤ seed < 2^63")
    beam: Beam = Field(default_factory=Beam)
    optics: OpticsConfig = Field(default_factory=OpticsConfig)
    detector: Detector = Field(default_factory=Detector)
    sample: Sample = Field(default_factory=Sample)
    simulation: Simulation = Field(default_factory=Simulation)
    tilt_series: TiltSeries | None = Field(None, description="simulate a tilt series instead of one micrograph")
    movie: Movie | None = Field(None, description="also write the exposure as a dose-fractionated movie with "
                                                  "beam-induced motion (single micrographs); null: no movie")
    labels: Labels | None = Field(None, description="also write per-voxel class/instance label volumes and a "
                                                    "particle mask; null: none")

    @model_validator(mode="after")
    def _detector_curve(self):
        """The default K3 curve measured at the voltage nearer the beam's (Detector alone assumes 300 kV)."""
        det = self.detector
        if det.model == "k3" and "mtf" not in det.model_fields_set:
            det.__dict__["mtf"] = MTFStar(star=k3_mtf_path(self.beam.voltage_kv))
        return self

    @model_validator(mode="after")
    def _sizes(self):
        """Bounds that involve several sections: copies near the field, copy counts, the number of slices."""
        width_a, height_a = self.detector.field_a
        ice_a = self.sample.ice_thickness_nm * 10.0
        explicit = random = 0
        z_lo = z_hi = 0.0
        reach = 0.0  # the farthest copy from the tilt axis's plane, in (x, y)
        for i, p in enumerate(self.sample.particles):
            where = f"sample.particles.{i}"
            if p.positions_a:
                explicit += len(p.positions_a)
                pos = np.asarray(p.positions_a, dtype=np.float64)
                far = (np.abs(pos[:, 0]) > FIELD_REACH * width_a) | (np.abs(pos[:, 1]) > FIELD_REACH * height_a)
                if far.any():
                    j = int(np.flatnonzero(far)[0])
                    x, y, z = pos[j]
                    raise FieldProblem(
                        f"{where}.positions_a.{j}",
                        f"({x:g}, {y:g}, {z:g}) Å lies more than {FIELD_REACH:g} field widths from the centre "
                        f"of the {width_a:g} × {height_a:g} Å field; move it into the field or enlarge "
                        "detector.shape_px / detector.pixel_size_a")
                z_lo, z_hi = min(z_lo, float(pos[:, 2].min())), max(z_hi, float(pos[:, 2].max()))
                reach = max(reach, float(np.hypot(pos[:, 0], pos[:, 1]).max()))
            elif p.positions_a is not None:
                pass  # an empty list: no copies
            elif p.volume_fraction is not None:
                pass  # a crowd: counted when placed (specimen/crowding.py)
            elif p.random is None:
                explicit += 1
            elif p.random.count is not None:
                random += p.random.count
            else:  # at least this many: the ice volume (a copy thicker than the ice adds more)
                n = p.random.density_per_um3 * width_a * height_a * ice_a * 1e-12
                if n > MAX_RANDOM_COPIES:
                    raise FieldProblem(f"{where}.random.density_per_um3",
                                       f"{p.random.density_per_um3:g} per µm³ in the {width_a:g} × {height_a:g} × "
                                       f"{ice_a:g} Å ice makes {n:.3g} copies (at most {MAX_RANDOM_COPIES}); "
                                       "lower the density")
                random += round(n)
        if random > MAX_RANDOM_COPIES:
            raise FieldProblem("sample.particles", f"{random} randomly placed copies in all (at most "
                                                   f"{MAX_RANDOM_COPIES}); lower random.count")
        if explicit + random > MAX_COPIES:
            raise FieldProblem("sample.particles", f"{explicit + random} copies in all (at most {MAX_COPIES}); "
                                                   "give fewer positions_a or a lower random.count")
        # slices: the ice along the steepest tilted path, or the spread of the copies' centres
        tilt = self.tilt_series.max_abs_angle_deg() if self.tilt_series is not None else 0.0
        cos_t = math.cos(math.radians(tilt))
        sin_t = math.sin(math.radians(tilt))
        spread_a = (z_hi - z_lo) + 2 * reach * sin_t
        thickness_a = max(ice_a / cos_t, spread_a)
        n_slices = thickness_a / self.simulation.slice_thickness_a
        if n_slices > MAX_SLICES:
            what = (f"{ice_a:g} Å of ice" + (f" at {tilt:g}° tilt ({ice_a / cos_t:.4g} Å path)" if tilt else "")
                    if ice_a / cos_t >= spread_a else f"copies spread over {spread_a:.4g} Å in z")
            raise FieldProblem("simulation.slice_thickness_a",
                               f"{self.simulation.slice_thickness_a:g} Å slices through {what} make {n_slices:.3g} "
                               f"slices (at most {MAX_SLICES}); use thicker slices, thinner ice, lower tilts or "
                               "copies closer to the ice")
        return self


_PYDANTIC_LOC = re.compile(r"^(MTFFormula|MTFStar)$|^(function-(after|before|wrap|plain)|tagged-union|union|nullable"
                           r"|json-or-python|lax-or-strict|chain)\[")


def format_validation_error(exc: ValidationError, source: str, max_errors: int = 10) -> str:
    """One line: ``source: field: problem; field: problem …`` (at most ``max_errors`` shown)."""
    parts = []
    errors = exc.errors()
    for err in errors[:max_errors]:
        # drop pydantic's names of union members and validator functions: the path is the config's
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and _PYDANTIC_LOC.match(p))]
        msg = err["msg"]
        problem = (err.get("ctx") or {}).get("error")
        if isinstance(problem, ValueError):  # a validator's own words, without pydantic's "Value error, "
            msg = str(problem)
        if isinstance(problem, FieldProblem):  # ... naming the field it checked
            loc.append(problem.field)
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check spelling; see `difftem simulate --help` or the README for valid names)"
        parts.append(f"{'.'.join(loc) or '(top level)'}: {' '.join(str(msg).split())}")
    if len(errors) > max_errors:
        parts.append(f"and {len(errors) - max_errors} more")
    return f"{source}: " + "; ".join(parts)


def config_from_dict(data: dict, source: str = "config", base_dir: Path | None = None) -> SimulationConfig:
    try:
        cfg = SimulationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    if base_dir is not None:
        _resolve_paths(cfg, base_dir)
    return cfg


def _resolve_paths(cfg: SimulationConfig, base: Path) -> None:
    for p in cfg.sample.particles:
        if p.map is not None:
            for name in ("file", "model"):
                _resolve_path(p.map, name, base)
            continue
        if not p.structure.startswith("builtin:"):
            _resolve_path(p, "structure", base)
        _resolve_path(p, "transforms_file", base)
    if isinstance(cfg.detector.mtf, MTFStar):
        _resolve_path(cfg.detector.mtf, "star", base)


def _resolve_path(entry: _NamesFiles, name: str, base: Path) -> None:
    """``entry``'s path field ``name`` resolved against ``base`` when relative (its type kept), the text as given
    recorded for the error a missing file gets."""
    given = getattr(entry, name)
    if given is None or Path(given).is_absolute():
        return
    entry._given_paths[name] = (str(given), base.resolve())
    resolved = (base / given).resolve()
    setattr(entry, name, resolved if isinstance(given, Path) else str(resolved))


def shown_path(path) -> str:
    """A path as errors show it: printable, and shortened when absurdly long."""
    text = repr(str(path))[1:-1] if not str(path).isprintable() else str(path)
    return text if len(text) <= 200 else f"{text[:120]}…{text[-40:]} ({len(text)} characters)"


def _check_tree(data, where: str) -> None:
    """Refuse nesting deeper than MAX_YAML_DEPTH and (alias-expanded) trees of more than MAX_YAML_NODES nodes."""
    stack, nodes = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_YAML_NODES:
            raise ConfigError(f"{where}: more than {MAX_YAML_NODES} values once YAML aliases are expanded; "
                              "write the values out or use fewer aliases")
        if isinstance(node, dict | list):
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{where}: nested more than {MAX_YAML_DEPTH} levels deep")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def _read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a small file; every failure a one-line ConfigError naming the file."""
    if "\x00" in str(path):
        raise ConfigError(f"{shown_path(path)}: the {what} path contains a NUL byte")
    if len(str(path)) > MAX_PATH_CHARS:
        raise ConfigError(f"{shown_path(path)}: the {what} path is longer than {MAX_PATH_CHARS} characters")
    path = Path(path)
    try:
        if not path.exists():
            looked = "" if path.is_absolute() else f" (looked for {path.resolve()})"
            raise ConfigError(f"{shown_path(path)}: {what} not found{looked}; give the path of an existing {what} "
                              "(YAML)")
        if path.is_dir():
            raise ConfigError(f"{shown_path(path)}: {what} is a folder; name a YAML file")
        with path.open("rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{shown_path(path)}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{shown_path(path)}: {what} is larger than {MAX_YAML_BYTES // 2**20} MB; is this the right "
                          "file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{shown_path(path)}: {what} is not UTF-8 text (byte {exc.start}, line {line}); "
                          "save it as UTF-8") from None


def read_yaml_mapping(path: str | Path, what: str = "config file",
                      top_level: str = "a mapping of sections (seed, beam, optics, ...)",
                      if_empty: str | None = None) -> dict:
    """A YAML file whose top level is a mapping; errors name the file and, for syntax errors, the line.

    Refused with a one-line ConfigError: a path with a NUL byte or over 4096 characters, a missing or unreadable
    file, one over 10 MB, bytes that are not UTF-8, nesting deeper than 100 levels, aliases expanding past 10⁷
    values, and a top level that is not a mapping. A file with no content (empty, or only comments) is ``{}``, or
    refused with the fix ``if_empty`` when given (an :class:`EmptyConfigError`).
    """
    text = _read_text(path, what)
    path = Path(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{shown_path(path)}: malformed YAML{where}: {' '.join(str(problem).split())}") from None
    except RecursionError:
        raise ConfigError(f"{shown_path(path)}: {what} is nested too deeply (at most {MAX_YAML_DEPTH} "
                          "levels)") from None
    if data is None:
        if if_empty is not None:
            raise EmptyConfigError(f"{shown_path(path)}: the {what} is empty (or only comments); {if_empty}")
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown_path(path)}: top level must be {top_level}")
    _check_tree(data, shown_path(path))
    return data


#: What an empty config file is told to hold instead.
EMPTY_CONFIG_FIX = ("give at least a sample section with particles (the README's configuration example shows every "
                    "section; difftem simulate example:cellular runs a bundled config), or write {} to simulate the "
                    "defaults (ice, no particles)")


def load_config(path: str | Path, *, if_empty: str = EMPTY_CONFIG_FIX) -> SimulationConfig:
    """Read a YAML config file; errors name the file and the field. ``if_empty``: the fix an empty file (or one of
    only comments) is refused with, as :class:`EmptyConfigError` (the default speaks of simulating it)."""
    path = Path(path)
    # an empty file would silently run every default: more likely the wrong file or one not saved yet
    data = read_yaml_mapping(path, if_empty=if_empty)
    return config_from_dict(data, str(path), path.parent)
