"""The specimen a config describes: particle types read from their files, and every copy's pose."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..config import MAX_POSITION_A, MAX_RANDOM_COPIES, SimulationConfig, config_path_fix
from ..core.device import available_memory_bytes
from ..core.elements import atomic_mass_da
from ..core.errors import ConfigError, ResourceError
from ..core.rotations import rotation_zyz_deg
from ..io.tables import TRANSFORMS_FIX, read_transforms_file
from .crowding import Obstacles, crowd_scene
from .density import load_density_map
from .fiducials import add_fiducials
from .filaments import filament_obstacles, place_filaments
from .membranes import embed_in_vesicles, place_vesicles
from .scene import (
    ParticleType,
    Placement,
    Scene,
    Subunits,
    bounding_capsule,
    helical_operators,
    overlapping_pairs,
    random_placement,
)
from .sheets import sheet_hits, sheets_from_config
from .structure import MAX_ATOMS, Atoms, check_positions, read_structure

BYTES_PER_ATOM_BUILT = 128  # a type's arrays (48 B/atom) and the temporaries of building a helix or copies


def builtin_structure(name: str) -> Path:
    files = {"1ubi": "1ubi_ubiquitin.pdb.gz"}
    if name not in files:
        raise ConfigError(f"sample.particles.structure: unknown builtin:{name}; available: "
                          f"{', '.join('builtin:' + f for f in sorted(files))} (or give a PDB/mmCIF file's path)")
    return Path(str(resources.files("difftem").joinpath("data", files[name])))


def resolve_structure(structure: str) -> Path:
    return builtin_structure(structure.split(":", 1)[1]) if structure.startswith("builtin:") else Path(structure)


def scene_of(config: SimulationConfig) -> Scene:
    return build_scene(config, resolve_structure)


def scene_atoms(config: SimulationConfig) -> Atoms:
    """All atoms of the sample in scene coordinates (Å; origin at field centre / ice mid-plane)."""
    scene = scene_of(config)
    return scene.atoms_of(range(len(scene.types)))


def _check_type_size(n_atoms: int, field: str, max_bytes: float | None) -> None:
    """Refuse a particle type of more than MAX_ATOMS atoms, or whose arrays would not fit, before building it."""
    limit = max_bytes if max_bytes is not None else 0.8 * available_memory_bytes(torch.device("cpu"))
    need = n_atoms * BYTES_PER_ATOM_BUILT
    if n_atoms > MAX_ATOMS or need > limit:
        raise ResourceError(
            f"{field}: this particle type would have {n_atoms} atoms, needing about {need / 1e9:.1f} GB to build "
            f"(at most {MAX_ATOMS} atoms and {limit / 1e9:.1f} GB allowed); use fewer copies or subunits, or raise "
            "simulation.max_memory_gb")


def load_particle_type(particle, resolve_structure, *, field: str = "sample.particles",
                       max_bytes: float | None = None) -> ParticleType:
    """Read one ``sample.particles`` entry's structure and apply its assembly or helical symmetry.

    ``field`` names the entry in errors; a type that would exceed ``max_bytes`` (default: 80 % of the host's
    available memory) or MAX_ATOMS atoms is refused before it is built.
    """
    if particle.map is not None:
        return _density_type(particle, field, resolve_structure)
    path = resolve_structure(particle.structure)
    centre = particle.centre
    atoms = read_structure(path, assembly=particle.assembly, models=particle.models,
                           remove_waters=particle.remove_waters, remove_hydrogens=particle.remove_hydrogens,
                           remove_hetero=particle.remove_hetero, centre="none", missing=config_path_fix(
                               particle, "structure", f"{field}.structure", "give the path of a PDB or mmCIF file "
                               "(.gz ok), or builtin:NAME for a structure shipped with difftem"))
    if particle.extra_b_a2:
        atoms.b_iso_a2 = atoms.b_iso_a2 + particle.extra_b_a2
    units = Subunits.identity(atoms)
    notes = list(atoms.notes)
    if particle.transforms_file is not None:
        ops = read_transforms_file(particle.transforms_file, missing=config_path_fix(
            particle, "transforms_file", f"{field}.transforms_file", TRANSFORMS_FIX))  # (n, 3, 4): R | t (Å)
        _check_type_size(len(ops) * len(atoms), f"{field}.transforms_file", max_bytes)
        units = units.then(ops[:, :, :3], ops[:, :, 3])
        box = _check_unit_positions(units, f"{field}.transforms_file {particle.transforms_file}", ConfigError,
                              "check the file's translations (Å) and rotations")
        notes = [f"{len(ops)} copies from {Path(particle.transforms_file).name}"]
    if particle.helix is not None:
        h = particle.helix
        _check_type_size(h.count() * units.n_atoms, f"{field}.helix.n_subunits", max_bytes)
        units = units.then(*helical_operators(h.rise_a, h.twist_deg, h.count(), h.axis, h.axis_point_a))
        box = _check_unit_positions(units, "helix", ConfigError, "check rise_a, axis_point_a and n_subunits")
        notes = notes + [f"helix: {h.count()} subunits of {units.n_atoms // h.count()} atoms, rise {h.rise_a:g} Å, "
                         f"twist {h.twist_deg:g}°"]
    name = particle.name or Path(str(path)).name.split(".")[0]
    shape = particle.random.bounding if particle.random is not None else "auto"
    if particle.filament is not None:  # the unit about its box centre; its file-frame place kept for the helix
        moved = atoms.centred("bbox")
        offset = atoms.positions_a[0] - moved.positions_a[0] if len(atoms) else np.zeros(3)
        return ParticleType(name, moved, bounding_capsule(moved.positions_a, shape), particle.representation,
                            unit_offset_a=offset)
    if len(units) == 1:  # the structure (or its one transform)
        one = units.expanded() if particle.transforms_file or particle.helix else atoms
        one.notes = notes
        atoms = one.centred(centre)
        return ParticleType(name, atoms, bounding_capsule(atoms.positions_a, shape), particle.representation)
    # a type of copies of one unit: its atoms are built only where a path needs them all (the atom path, a map of
    # the whole type); its centre, bounds and radius come from the unit and the operators
    units = _centred_units(units, centre, box).centred_unit()
    bounds, radius = units.bounding_capsule(shape)
    return ParticleType(name, None, bounds, particle.representation, units, lazy_notes=notes, known_radius_a=radius)


def _check_unit_positions(units: Subunits, what: str, error, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`check_positions` of the type's atoms, from their box (the atoms are built only to name a bad one);
    returns the box (min, max)."""
    lo, hi = units.box()
    if not (np.abs(lo) <= MAX_POSITION_A).all() or not (np.abs(hi) <= MAX_POSITION_A).all():
        check_positions(units.expanded().positions_a, what, error, fix)
    return lo, hi


def _centred_units(units: Subunits, centre, box: tuple[np.ndarray, np.ndarray]) -> Subunits:
    """The operators moved with the type's centre (:meth:`Atoms.centred` of the type's atoms, from the units and
    their ``box``)."""
    if centre == "none" or units.n_atoms == 0:
        return units
    lo, hi = box
    c = 0.5 * (lo + hi)
    if centre == "mass":  # as Atoms.centred: non-negative weights, the box centre when there are none
        unit = units.atoms
        w, m1, _ = units.moments(atomic_mass_da(unit.atomic_number) * np.clip(unit.occupancy, 0.0, None))
        if w > 0:
            c = np.clip(m1 / w, lo, hi)
    return units.shifted(-c)


def _density_type(particle, field: str, resolve_structure) -> ParticleType:
    """A type drawn from a density map: no atoms; bounds from the molecule's voxels."""
    density = load_density_map(particle, field, resolve_structure)
    name = particle.name or Path(particle.map.file).name.split(".")[0]
    shape = particle.random.bounding if particle.random is not None else "auto"
    empty = Atoms(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0), np.zeros(0), particle.map.file,
                  [density.calibration["notes"]])
    return ParticleType(name, empty, bounding_capsule(density.mask_points_a(), shape), "map", density=density)


def build_scene(config, resolve_structure) -> Scene:
    """Particle types and every copy's pose for a :class:`~difftem.config.SimulationConfig`.

    Random placements draw from a generator seeded by (config.seed, "placement"), so the scene is
    the same whatever else changes (dose, optics, noise).
    """
    types, explicit, counts, random_orient, gaps = [], [], [], [], []
    det = config.detector
    field_a = (det.shape_px[1] * det.pixel_size_a, det.shape_px[0] * det.pixel_size_a)
    ice_a = config.sample.ice_thickness_nm * 10.0
    max_gb = config.simulation.max_memory_gb
    for t, particle in enumerate(config.sample.particles):
        ptype = load_particle_type(particle, resolve_structure, field=f"sample.particles.{t}",
                                   max_bytes=max_gb * 1e9 if max_gb else None)
        if any(p.name == ptype.name for p in types):  # unique names in the ground truth
            ptype.name = f"{ptype.name}_{t}"
        types.append(ptype)
        positions = particle.explicit_positions()
        if positions:
            if len(particle.euler_zyz_deg) == 1:  # one triple for every copy: one matrix, repeated
                rots = np.repeat(rotation_zyz_deg(*particle.euler_zyz_deg[0])[None], len(positions), axis=0)
            else:
                rots = np.stack([rotation_zyz_deg(*e) for e in particle.euler_zyz_deg[:len(positions)]])
            explicit.append(Placement(np.full(len(positions), t, np.int64), np.asarray(positions, np.float64), rots))
        rnd = particle.random
        if rnd is None:
            counts.append(0)
        elif rnd.count is not None:
            counts.append(rnd.count)
        else:
            volume_um3 = field_a[0] * field_a[1] * max(ice_a, 2 * ptype.bounds.extent_a) * 1e-12
            n = rnd.density_per_um3 * volume_um3
            if n > MAX_RANDOM_COPIES:
                raise ConfigError(f"sample.particles.{t}.random.density_per_um3: {rnd.density_per_um3:g} per µm³ "
                                  f"in {volume_um3:.3g} µm³ makes {n:.3g} copies (at most {MAX_RANDOM_COPIES}); "
                                  "lower the density")
            counts.append(int(round(n)))
        random_orient.append(rnd is None or rnd.orientation == "uniform")
        gaps.append(rnd.min_gap_a if rnd is not None else 0.0)
    if sum(counts) > MAX_RANDOM_COPIES:
        raise ConfigError(f"sample.particles: {sum(counts)} randomly placed copies in all (at most "
                          f"{MAX_RANDOM_COPIES}); lower random.count or random.density_per_um3")
    placement = Placement.concatenate(explicit)
    sheets = sheets_from_config(config)  # fixed as configured: random copies, beads, vesicles and the crowd avoid them

    def clear_of_sheets(gap_a: float):
        return None if sheets is None else (lambda a, b, r: sheet_hits(a, b, r, sheets, gap_a))

    warnings = []
    bounds = [t.bounds for t in types]
    pairs = overlapping_pairs(bounds, placement) if 1 < len(placement) <= 2000 else []
    if pairs:
        listed = ", ".join(f"#{i}/#{j} ({types[placement.type_index[i]].name}/{types[placement.type_index[j]].name},"
                           f" {o:.0f} Å)" for i, j, o in pairs[:5])
        more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""
        warnings.append(f"explicit placements overlap (bounding shapes interpenetrate): {listed}{more}; check "
                        "sample.particles.positions_a")
    # filaments clear of the explicit copies (their rows follow them); the random copies then clear of both
    placed_filaments, filaments = place_filaments(config, types, placement, blocked=clear_of_sheets(0.0))
    placement = Placement.concatenate([placement, placed_filaments])
    if any(counts):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x5CE4E]))
        gap = max(gaps) if gaps else 0.0
        placed = random_placement(bounds, counts, field_a=field_a, ice_thickness_a=ice_a, rng=rng,
                                  names=[t.name for t in types], gap_a=gap, random_orientation=random_orient,
                                  existing=placement, blocked=clear_of_sheets(gap))
        placement = Placement.concatenate([placement, placed])
    # gold beads on the ice faces, clear of the particles
    types, placement = add_fiducials(config, types, placement, clear_of_sheets(0.0))
    # vesicles clear of every copy so far, then the membrane proteins embedded in them
    vesicles = place_vesicles(config, [t.bounds for t in types], placement, blocked=clear_of_sheets(0.0))
    embedded = embed_in_vesicles(config, [t.bounds for t in types], placement, vesicles, blocked=clear_of_sheets(0.0))
    placement = Placement.concatenate([placement, embedded])
    # the crowd last: around every copy so far, the vesicles and the filaments' tubes
    tubes = filament_obstacles(filaments)
    crowd, report = crowd_scene(config, types, placement, vesicles,
                                Obstacles.from_polylines([p for p, _ in tubes], [r for _, r in tubes]), sheets)
    return Scene(types, Placement.concatenate([placement, crowd]), warnings, vesicles, filaments, report, sheets)
