"""Atomic models: read PDB/mmCIF (plain or .gz) through gemmi into flat arrays.

Positions are in Å, B-factors in Å², occupancies are weights on each atom's potential. Atoms the simulation cannot
use are refused here, naming the file and the atom: non-finite or astronomic coordinates (|x|, |y|, |z| ≤ 1e6 Å),
B-factors outside 0…1e4 Å², occupancies outside 0…100.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import MAX_POSITION_A, shown_path
from ..core.elements import MAX_Z, atomic_mass_da, gemmi_module
from ..core.errors import StructureError

ModelPolicy = Literal["auto", "first", "all", "ensemble"]
CentrePolicy = Literal["mass", "bbox", "none"]

MAX_B_A2 = 1e4  # B-factor bound (Å²): real models stay below ~1000; 1e4 already blurs an atom over ~10 Å
MAX_OCCUPANCY = 100.0  # occupancies are weights ≤ 1 in practice
MAX_ATOMS = 100_000_000  # atoms in one particle type (a file, its assembly, helix or transforms): ~5 GB of arrays


def one_line(text) -> str:
    """A message on one line (gemmi's and file contents may hold newlines)."""
    return " ".join(str(text).split())


@dataclass
class Atoms:
    """A flat list of atoms. ``positions_a`` is (N, 3) x, y, z in Å; z is the beam direction."""

    atomic_number: np.ndarray  # (N,) int64
    positions_a: np.ndarray  # (N, 3) float64
    b_iso_a2: np.ndarray  # (N,) float64
    occupancy: np.ndarray  # (N,) float64
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.atomic_number.shape[0])

    def transformed(self, rotation: np.ndarray, translation_a: np.ndarray | None = None) -> Atoms:
        """Copy with positions r' = R r + t."""
        pos = self.positions_a @ np.asarray(rotation, dtype=np.float64).T
        if translation_a is not None:
            pos = pos + np.asarray(translation_a, dtype=np.float64)
        return Atoms(self.atomic_number, pos, self.b_iso_a2, self.occupancy, self.source, list(self.notes))

    def centred(self, how: CentrePolicy = "mass") -> Atoms:
        """Copy moved so that its centre (occupancy-weighted mass centre or bounding-box centre) is at 0."""
        if how == "none" or len(self) == 0:
            return self
        lo, hi = self.positions_a.min(0), self.positions_a.max(0)
        centre = 0.5 * (lo + hi)
        if how == "mass":
            # weights ≥ 0 keep the centre inside the atoms' box (a negative occupancy could throw it anywhere);
            # with no weight at all the box centre stands in
            w = atomic_mass_da(self.atomic_number) * np.clip(self.occupancy, 0.0, None)
            if w.sum() > 0:
                centre = np.clip((self.positions_a * w[:, None]).sum(0) / w.sum(), lo, hi)
        return Atoms(self.atomic_number, self.positions_a - centre, self.b_iso_a2, self.occupancy, self.source,
                     list(self.notes))

    @staticmethod
    def concatenate(parts: list[Atoms]) -> Atoms:
        if not parts:
            return Atoms(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
        return Atoms(
            np.concatenate([p.atomic_number for p in parts]),
            np.concatenate([p.positions_a for p in parts]),
            np.concatenate([p.b_iso_a2 for p in parts]),
            np.concatenate([p.occupancy for p in parts]),
            ";".join(sorted({p.source for p in parts})),
        )


def _open(path: Path, missing: str | None = None):
    gemmi = gemmi_module()
    if "\x00" in str(path):
        raise StructureError(f"{shown_path(path)}: the structure path contains a NUL byte (check `structure:` in the "
                             "config)")
    try:
        if not path.exists():
            raise StructureError(f"{shown_path(path)}: structure file not found; {missing}" if missing else
                                 f"{shown_path(path)}: file not found (check `structure:` in the config)")
        if path.is_dir():
            raise StructureError(f"{shown_path(path)}: is a folder, not a PDB or mmCIF file (check `structure:` in "
                                 "the config)")
    except OSError as exc:  # a name too long for the file system, no permission
        raise StructureError(f"{shown_path(path)}: cannot open the structure file "
                             f"({one_line(exc.strerror or exc)})") from None
    _check_complete_gzip(path)
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with a parser message
        raise StructureError(f"{shown_path(path)}: cannot read as PDB or mmCIF ({one_line(exc)})") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise StructureError(f"{path}: no atoms found; is this a PDB or mmCIF coordinate file?")
    return st


def _check_complete_gzip(path: Path) -> None:
    """A gzip-compressed model must end with its stream's end marker: gemmi reads a truncated one (an interrupted
    download or copy) up to the cut and returns part of the structure without a word (measured: half of 1UBI's
    file gave 237 of its 602 atoms). Decompressing once to the end costs ~10 ms per MB."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except EOFError:
        raise StructureError(f"{shown_path(path)}: the compressed file is cut short (its gzip stream ends before "
                             "its end marker: an interrupted download or copy?); fetch or copy it again") from None
    except (OSError, zlib.error) as exc:
        raise StructureError(f"{shown_path(path)}: is not a readable gzip file ({one_line(exc)}); fetch or copy it "
                             "again, or give the uncompressed PDB or mmCIF file") from None


@dataclass
class _Sites:
    """Per-atom columns gathered from the chosen models, in file order."""

    z: list[int] = field(default_factory=list)
    pos: list[tuple[float, float, float]] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    occ: list[float] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)
    subchain: list[str] = field(default_factory=list)
    model: list[int] = field(default_factory=list)


def _keep_residue(res, remove_waters: bool, remove_hetero: bool) -> bool:
    if (remove_waters or remove_hetero) and res.is_water():
        return False
    return not (remove_hetero and res.het_flag == "H")


def _atom_label(at, ch, res) -> str:
    return one_line(f"atom {at.serial} {at.name!r} in chain {ch.name} {res.name}{res.seqid.num}")


def _unknown_element(path: Path, at, ch, res) -> StructureError:
    return StructureError(one_line(
        f"{path}: {_atom_label(at, ch, res)}: "
        f"unknown element {at.element.name!r} (supported Z=1..{MAX_Z}); "
        "fix the element column (PDB columns 77-78 / _atom_site.type_symbol) or remove the atom"
    ))


def _bad_atom(path: Path, at, ch, res) -> StructureError | None:
    """The error for an atom whose coordinates, B-factor or occupancy cannot be simulated (None if it is fine)."""
    p = at.pos
    if not (abs(p.x) <= MAX_POSITION_A and abs(p.y) <= MAX_POSITION_A and abs(p.z) <= MAX_POSITION_A):
        problem = (f"coordinates ({p.x:g}, {p.y:g}, {p.z:g}) Å are not finite or exceed ±{MAX_POSITION_A:g} Å; "
                   "fix the coordinate columns (PDB 31-54 / _atom_site.Cartn_x, y, z)")
    elif not 0 <= at.b_iso <= MAX_B_A2:
        problem = (f"B-factor {at.b_iso:g} Å² is outside 0…{MAX_B_A2:g}; "
                   "fix the B-factor column (PDB 61-66 / _atom_site.B_iso_or_equiv)")
    elif not 0 <= at.occ <= MAX_OCCUPANCY:
        problem = (f"occupancy {at.occ:g} is outside 0…{MAX_OCCUPANCY:g}; "
                   "fix the occupancy column (PDB 55-60 / _atom_site.occupancy)")
    else:
        return None
    return StructureError(one_line(f"{path}: {_atom_label(at, ch, res)}: {problem}"))


def _collect_sites(path: Path, chosen, *, remove_waters: bool, remove_hydrogens: bool,
                   remove_hetero: bool) -> _Sites:
    """The kept atoms of the chosen models (unknown elements are errors)."""
    sites = _Sites()
    for mi, model in enumerate(chosen):
        for ch in model:
            for res in ch:
                if not _keep_residue(res, remove_waters, remove_hetero):
                    continue
                for at in res:
                    zz = at.element.atomic_number
                    if remove_hydrogens and zz == 1:
                        continue
                    if zz < 1 or zz > MAX_Z:
                        raise _unknown_element(path, at, ch, res)
                    bad = _bad_atom(path, at, ch, res)
                    if bad is not None:
                        raise bad
                    sites.z.append(zz)
                    p = at.pos
                    sites.pos.append((p.x, p.y, p.z))
                    sites.b.append(at.b_iso)
                    sites.occ.append(at.occ)
                    sites.chain.append(ch.name)
                    sites.subchain.append(res.subchain)
                    sites.model.append(mi)
    return sites


def _model_weighted_occupancy(sites: _Sites, n_models: int, models: ModelPolicy, notes: list[str]) -> np.ndarray:
    """Occupancies, divided by the number of models for an ensemble (``models`` policy); notes what was done."""
    occ_arr = np.asarray(sites.occ, dtype=np.float64)
    if n_models > 1 and models in ("auto", "ensemble"):
        sites_first = max(int(np.sum(np.asarray(sites.model) == 0)), 1)
        per_site = occ_arr.sum() / sites_first
        if models == "ensemble" or per_site > 1.05:
            occ_arr = occ_arr / n_models
            notes.append(f"{n_models} models averaged as an ensemble (weight occupancy/{n_models})")
        else:
            notes.append(f"{n_models} models used with their occupancies (sum {per_site:.2f} per site)")
    return occ_arr


def read_structure(
    path: str | Path,
    *,
    assembly: str | None = None,
    models: ModelPolicy = "auto",
    remove_waters: bool = True,
    remove_hydrogens: bool = False,
    remove_hetero: bool = False,
    centre: CentrePolicy = "mass",
    missing: str | None = None,
) -> Atoms:
    """Read an atomic model (``missing``: what a missing file's error tells to do, e.g. which config field names it).

    Parameters
    ----------
    assembly
        Name of a biological assembly (REMARK 350 BIOMT / ``pdbx_struct_assembly``), e.g. ``"1"``;
        ``None`` keeps the deposited coordinates (asymmetric unit).
    models
        ``"auto"``: if the models' occupancies add up to one per site (e.g. 2OM3: five models at
        occupancy 0.2) use every model with its occupancy, otherwise (NMR ensembles) average the
        models (weight occupancy / n_models). ``"first"``, ``"all"`` (occupancy as given) and
        ``"ensemble"`` force one behaviour.
    """
    path = Path(path)
    st = _open(path, missing)
    try:  # gemmi's names become Python strings here: bytes that are not UTF-8 fail only now
        st.setup_entities()
        chosen = [st[0]] if models == "first" else list(st)
        sites = _collect_sites(path, chosen, remove_waters=remove_waters, remove_hydrogens=remove_hydrogens,
                               remove_hetero=remove_hetero)
    except UnicodeDecodeError:
        raise StructureError(f"{shown_path(path)}: holds bytes that are not text (UTF-8) in its chain, residue or "
                             "atom names; is this a PDB or mmCIF coordinate file?") from None
    if not sites.z:
        raise StructureError(f"{path}: no atoms left after removing waters/hydrogens/hetero groups")
    notes: list[str] = []
    occ_arr = _model_weighted_occupancy(sites, len(chosen), models, notes)
    atoms = Atoms(
        np.asarray(sites.z, dtype=np.int64),
        np.asarray(sites.pos, dtype=np.float64),
        np.asarray(sites.b, dtype=np.float64),
        occ_arr,
        str(path),
        notes,
    )
    if assembly is not None:
        atoms = _apply_assembly(st, assembly, atoms, np.asarray(sites.chain), np.asarray(sites.subchain), path)
        check_positions(atoms.positions_a, f"{path}: assembly {assembly!r}", StructureError)
    return atoms.centred(centre)


def check_positions(positions_a: np.ndarray, what: str, error=StructureError,
                    fix: str = "check the operators' translations") -> None:
    """Raise ``error`` naming ``what`` and the first atom whose position is not finite or beyond ±1e6 Å."""
    bad = ~(np.abs(positions_a) <= MAX_POSITION_A).all(axis=-1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        x, y, z = positions_a[i]
        raise error(one_line(f"{what}: atom #{i} lands at ({x:g}, {y:g}, {z:g}) Å, not finite or beyond "
                             f"±{MAX_POSITION_A:g} Å ({int(bad.sum())} such atoms); {fix}"))


def _apply_assembly(st, name: str, atoms: Atoms, chain: np.ndarray, subchain: np.ndarray, path: Path) -> Atoms:
    names = [a.name for a in st.assemblies]
    matches = [a for a in st.assemblies if a.name == str(name)]
    if not matches:
        raise StructureError(
            f"{path}: no biological assembly named {name!r}; available: {', '.join(names) or 'none'} "
            "(set `assembly: null` for the deposited coordinates)"
        )
    parts: list[Atoms] = []
    n_ops = n_atoms = 0
    for gen in matches[0].generators:
        mask = np.isin(chain, list(gen.chains)) if gen.chains else np.isin(subchain, list(gen.subchains))
        if not mask.any():
            continue
        sub = Atoms(atoms.atomic_number[mask], atoms.positions_a[mask], atoms.b_iso_a2[mask], atoms.occupancy[mask],
                    atoms.source)
        n_atoms += int(mask.sum()) * len(gen.operators)
        if n_atoms > MAX_ATOMS:
            raise StructureError(f"{path}: assembly {name!r} would have at least {n_atoms} atoms (at most "
                                 f"{MAX_ATOMS}); use another assembly or `assembly: null`")
        for op in gen.operators:
            rot = np.array(op.transform.mat.tolist())
            vec = np.array(op.transform.vec.tolist())
            parts.append(sub.transformed(rot, vec))
            n_ops += 1
    if not parts:
        raise StructureError(f"{path}: assembly {name!r} selects no atoms")
    out = Atoms.concatenate(parts)
    out.source = str(path)
    out.notes = atoms.notes + [f"assembly {name!r}: {n_ops} operator applications, {len(out)} atoms"]
    return out
