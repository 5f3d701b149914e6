"""Atomic models: read PDB/mmCIF (plain or .gz) through gemmi into flat arrays.

Positions are in Å, B-factors in Å², occupancies are weights on each atom's potential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..core.elements import MAX_Z, atomic_mass_da
from ..core.errors import StructureError

ModelPolicy = Literal["auto", "first", "all", "ensemble"]
CentrePolicy = Literal["mass", "bbox", "none"]


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
        if how == "bbox":
            centre = 0.5 * (self.positions_a.min(0) + self.positions_a.max(0))
        else:
            w = atomic_mass_da(self.atomic_number) * self.occupancy
            centre = (self.positions_a * w[:, None]).sum(0) / max(w.sum(), 1e-30)
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


def _open(path: Path):
    import gemmi

    if not path.exists():
        raise StructureError(f"{path}: file not found (check `structure:` in the config)")
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with a parser message
        raise StructureError(f"{path}: cannot read as PDB or mmCIF ({exc})") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise StructureError(f"{path}: no atoms found; is this a PDB or mmCIF coordinate file?")
    return st


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


def _unknown_element(path: Path, at, ch, res) -> StructureError:
    return StructureError(
        f"{path}: atom {at.serial} {at.name!r} in chain {ch.name} {res.name}{res.seqid.num}: "
        f"unknown element {at.element.name!r} (supported Z=1..{MAX_Z}); "
        "fix the element column (PDB columns 77-78 / _atom_site.type_symbol) or remove the atom"
    )


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
) -> Atoms:
    """Read an atomic model.

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
    st = _open(path)
    st.setup_entities()

    chosen = [st[0]] if models == "first" else list(st)
    sites = _collect_sites(path, chosen, remove_waters=remove_waters, remove_hydrogens=remove_hydrogens,
                           remove_hetero=remove_hetero)
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
    return atoms.centred(centre)


def _apply_assembly(st, name: str, atoms: Atoms, chain: np.ndarray, subchain: np.ndarray, path: Path) -> Atoms:
    names = [a.name for a in st.assemblies]
    matches = [a for a in st.assemblies if a.name == str(name)]
    if not matches:
        raise StructureError(
            f"{path}: no biological assembly named {name!r}; available: {names or 'none'} "
            "(set `assembly: null` for the deposited coordinates)"
        )
    parts: list[Atoms] = []
    n_ops = 0
    for gen in matches[0].generators:
        mask = np.isin(chain, list(gen.chains)) if gen.chains else np.isin(subchain, list(gen.subchains))
        if not mask.any():
            continue
        sub = Atoms(atoms.atomic_number[mask], atoms.positions_a[mask], atoms.b_iso_a2[mask], atoms.occupancy[mask],
                    atoms.source)
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
