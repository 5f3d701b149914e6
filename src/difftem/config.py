"""Simulation configuration: pydantic models read from YAML, units in every field name.

Unknown fields are errors (``extra="forbid"``) so a typo never silently falls back to a default.
Relative paths inside a config file are resolved against the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .core.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Beam(_Model):
    voltage_kv: float = Field(300.0, gt=0, le=3000, description="accelerating voltage (kV)")
    dose_e_per_a2: float = Field(40.0, ge=0, description="electron dose per image (e/Å²)")


class OpticsConfig(_Model):
    defocus_um: float = Field(1.5, description="defocus (µm), positive = underfocus, at the ice mid-plane")
    astigmatism_um: float = Field(0.0, description="defocus difference u − v (µm)")
    astigmatism_angle_deg: float = Field(0.0, description="direction of the larger defocus u (deg from x)")
    cs_mm: float = Field(2.7, ge=0, description="spherical aberration (mm)")
    cc_mm: float = Field(2.7, ge=0, description="chromatic aberration (mm)")
    energy_spread_ev: float = Field(0.8, ge=0, description="energy spread of the source (eV)")
    illumination_semiangle_mrad: float = Field(0.02, ge=0, description="beam convergence semi-angle (mrad)")
    aperture_mrad: float | None = Field(None, gt=0, description="objective aperture semi-angle (mrad); null: none")
    phase_shift_deg: float = Field(0.0, description="phase-plate shift of the scattered beams (deg)")


class MTFFormula(_Model):
    a: float
    b: float
    c: float
    alpha: float = Field(gt=0)
    beta: float = Field(gt=0)


class MTFStar(_Model):
    star: Path


class Detector(_Model):
    shape_px: tuple[int, int] = Field((256, 256), description="(height, width) in pixels")
    pixel_size_a: float = Field(1.0, gt=0, description="pixel size at the specimen (Å)")
    noise: Literal["poisson", "none"] = "poisson"
    dqe: float = Field(1.0, gt=0, le=1, description="detective quantum efficiency at zero frequency")
    gain: float = Field(1.0, gt=0, description="output units per electron")
    mtf: MTFFormula | MTFStar | None = None
    normalize_mtf: bool = Field(True, description="divide the MTF by MTF(0) so mean counts are preserved")

    @field_validator("shape_px")
    @classmethod
    def _shape(cls, v):
        if min(v) < 16 or max(v) > 65536:
            raise ValueError("each side must be between 16 and 65536 pixels")
        return v


class Helix(_Model):
    """Helical symmetry generated from the structure's atoms (the asymmetric unit, in the file's frame)."""

    rise_a: float = Field(description="translation along the axis per subunit (Å)")
    twist_deg: float = Field(description="rotation about the axis per subunit (deg)")
    n_subunits: int | None = Field(None, ge=1, description="number of subunits; or give length_a")
    length_a: float | None = Field(None, gt=0, description="rod length (Å): n_subunits = round(length / rise)")
    axis: tuple[float, float, float] = Field((0.0, 0.0, 1.0), description="helix axis direction, file frame")
    axis_point_a: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="a point on the axis (Å)")

    @model_validator(mode="after")
    def _count(self):
        if (self.n_subunits is None) == (self.length_a is None):
            raise ValueError("give exactly one of n_subunits or length_a")
        if self.rise_a == 0 and self.length_a is not None:
            raise ValueError("length_a needs a non-zero rise_a")
        return self

    def count(self) -> int:
        return self.n_subunits if self.n_subunits is not None else max(1, round(self.length_a / abs(self.rise_a)))


class RandomPlacement(_Model):
    """Copies at random, non-overlapping positions inside the field and the ice slab."""

    count: int | None = Field(None, ge=0, description="number of copies")
    density_per_um3: float | None = Field(None, ge=0, description="copies per µm³ of ice in the field")
    orientation: Literal["uniform", "fixed"] = Field("uniform", description="uniform on SO(3), or as euler_zyz_deg")
    min_gap_a: float = Field(5.0, ge=0, description="minimum distance between bounding shapes (Å)")
    bounding: Literal["auto", "sphere", "capsule"] = Field("auto", description="shape tested for overlaps")

    @model_validator(mode="after")
    def _one(self):
        if (self.count is None) == (self.density_per_um3 is None):
            raise ValueError("give exactly one of count or density_per_um3")
        return self


class Particle(_Model):
    name: str | None = Field(None, description="particle type name in the ground truth; default: file stem")
    structure: str = Field(description="PDB/mmCIF path (.gz allowed) or builtin:1ubi")
    assembly: str | None = Field(None, description="biological assembly name, e.g. '1'; null: deposited atoms")
    helix: Helix | None = Field(None, description="build a helical rod from the structure's subunit")
    transforms_file: str | None = Field(
        None, description="copies of the structure making one particle: a TEM-simulator pdb_transf_file_in file")
    positions_a: list[tuple[float, float, float]] | None = Field(
        None, description="centres (x, y, z) in Å, scene frame; default one copy at the origin unless random")
    euler_zyz_deg: list[tuple[float, float, float]] = Field(
        default_factory=lambda: [(0.0, 0.0, 0.0)],
        description="(φ, θ, ψ) per copy: r' = Rz(φ)·Ry(θ)·Rz(ψ)·r; one triple applies to every copy")
    random: RandomPlacement | None = Field(None, description="random non-overlapping copies (instead of positions_a)")
    representation: Literal["auto", "atoms", "map"] = Field(
        "auto", description="atoms: exact per slice; map: cached 3-D map placed per copy; auto: map for many copies")
    models: Literal["auto", "first", "all", "ensemble"] = "auto"
    remove_waters: bool = True
    remove_hydrogens: bool = False
    remove_hetero: bool = False
    centre: Literal["mass", "bbox", "none"] = "mass"
    extra_b_a2: float = Field(0.0, ge=0, description="added to every atom's B-factor (Å²)")

    @model_validator(mode="after")
    def _lengths(self):
        if self.random is not None and self.positions_a is not None:
            raise ValueError("give either positions_a or random, not both")
        n = len(self.positions_a) if self.positions_a is not None else 1
        if self.random is None and len(self.euler_zyz_deg) not in (1, n):
            raise ValueError(
                f"euler_zyz_deg has {len(self.euler_zyz_deg)} entries for {n} positions_a; "
                "give one triple for all copies or one per copy")
        return self

    def explicit_positions(self) -> list[tuple[float, float, float]]:
        return list(self.positions_a) if self.positions_a is not None else ([] if self.random else [(0.0, 0.0, 0.0)])


class Sample(_Model):
    ice_thickness_nm: float = Field(30.0, ge=0, description="vitreous ice slab thickness (nm); 0: vacuum")
    ice_mean_potential_v: float = Field(4.8775, ge=0)
    ice_absorption_potential_v: float | None = Field(None, ge=0, description="null: tabulated value for the voltage")
    absorption_ratio: float | None = Field(None, ge=0,
                                           description="atoms' imaginary/real potential; null: same as ice")
    particles: list[Particle] = Field(default_factory=list)


class Simulation(_Model):
    slice_thickness_a: float = Field(2.0, gt=0, description="multislice slice thickness (Å)")
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
    max_memory_gb: float | None = Field(None, gt=0, description="refuse runs estimated above this; null: available RAM")
    map_placement: Literal["auto", "projection", "slab"] = Field(
        "auto", description="map copies: whole projection in the slice of their centre (thin vs the Fresnel "
                            "spread), sampled slab by slab, or auto")
    tile_px: int | None = Field(None, ge=64, description="run multislice in tiles of this size (px); null: whole field")
    tile_margin_px: int | None = Field(None, ge=0, description="tile overlap each side (px); null: automatic")


EDGE_ON_RULE = "tilt angles must lie strictly between -90 and 90 degrees (at ±90° the specimen is edge-on)"


def edge_on_angles(angles_deg) -> list[float]:
    """The angles a tilt series cannot have: at or beyond ±90° the slab is edge-on (its path t/cos θ diverges)."""
    return [a for a in angles_deg if not abs(a) < 90]


class TiltSeries(_Model):
    """A tilt series: the specimen turned about an in-plane axis, one exposure per angle."""

    scheme: Literal["list", "uniform", "bidirectional", "dose_symmetric"] = "dose_symmetric"
    angles_deg: list[float] | None = Field(None, description="scheme list: angles in acquisition order")
    min_deg: float = Field(-60.0, ge=-90, le=90)
    max_deg: float = Field(60.0, ge=-90, le=90)
    step_deg: float = Field(3.0, gt=0)
    start_deg: float = Field(0.0, ge=-90, le=90, description="bidirectional: first angle; the branch to max goes first")
    group_size: int = Field(2, ge=1, description="dose_symmetric: tilts per side before switching (Hagen scheme)")
    tilt_axis_deg: float = Field(0.0, description="tilt axis: the image y axis turned by this angle about +z")
    total_dose_e_per_a2: float | None = Field(
        None, ge=0, description="split equally over tilts; null: beam dose per tilt")
    dose_per_tilt_e_per_a2: list[float] | None = Field(None, description="per tilt in acquisition order (overrides)")
    defocus_um: list[float] | None = Field(None, description="per tilt in acquisition order; null: optics.defocus_um")
    damage: Literal["none", "exposure_filter", "b_factor"] = Field(
        "exposure_filter", description="cumulative radiation damage: Grant–Grigorieff critical exposure, or a B-factor")
    b_factor_a2_per_e_per_a2: float | None = Field(
        None, ge=0, description="damage b_factor: B added per e/Å² of prior dose")

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
        return self


class SimulationConfig(_Model):
    seed: int = Field(0, ge=0)
    beam: Beam = Field(default_factory=Beam)
    optics: OpticsConfig = Field(default_factory=OpticsConfig)
    detector: Detector = Field(default_factory=Detector)
    sample: Sample = Field(default_factory=Sample)
    simulation: Simulation = Field(default_factory=Simulation)
    tilt_series: TiltSeries | None = Field(None, description="simulate a tilt series instead of one micrograph")


def format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check spelling; see `difftem simulate --help` or the README for valid names)"
        parts.append(f"{loc}: {msg}")
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
        if not p.structure.startswith("builtin:") and not Path(p.structure).is_absolute():
            p.structure = str((base / p.structure).resolve())
        if p.transforms_file is not None and not Path(p.transforms_file).is_absolute():
            p.transforms_file = str((base / p.transforms_file).resolve())
    if isinstance(cfg.detector.mtf, MTFStar) and not cfg.detector.mtf.star.is_absolute():
        cfg.detector.mtf.star = (base / cfg.detector.mtf.star).resolve()


def read_yaml_mapping(path: str | Path, what: str = "config file",
                      top_level: str = "a mapping of sections (seed, beam, optics, ...)") -> dict:
    """A YAML file whose top level is a mapping; errors name the file and, for syntax errors, the line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be {top_level}")
    return data


def load_config(path: str | Path) -> SimulationConfig:
    """Read a YAML config file; errors name the file and the field."""
    path = Path(path)
    data = read_yaml_mapping(path)
    return config_from_dict(data, str(path), path.parent)
