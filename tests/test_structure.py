import gzip

import numpy as np
import pytest
from conftest import STRUCTURES

from difftem.core.elements import atomic_mass_da
from difftem.core.errors import StructureError
from difftem.core.rotations import rotation_zyz_deg
from difftem.specimen.structure import read_structure


def test_pdb_gz_counts_and_waters(shared_data):
    no_water = read_structure(STRUCTURES / "1ubi_ubiquitin.pdb.gz")
    with_water = read_structure(STRUCTURES / "1ubi_ubiquitin.pdb.gz", remove_waters=False)
    assert len(no_water) == 602
    assert len(with_water) == 683
    assert set(np.unique(no_water.atomic_number)) == {6, 7, 8, 16}


def test_plain_pdb_equals_gz(shared_data, tmp_path):
    plain = tmp_path / "1ubi.pdb"
    plain.write_bytes(gzip.decompress((STRUCTURES / "1ubi_ubiquitin.pdb.gz").read_bytes()))
    a, b = read_structure(plain), read_structure(STRUCTURES / "1ubi_ubiquitin.pdb.gz")
    np.testing.assert_allclose(a.positions_a, b.positions_a)


def test_mmcif_assemblies(shared_data):
    asu = read_structure(STRUCTURES / "1ake_adk_chimerax.cif.gz", remove_hetero=True)
    one = read_structure(STRUCTURES / "1ake_adk_chimerax.cif.gz", assembly="1", remove_hetero=True)
    assert 0 < len(one) < len(asu)  # assembly 1 is one of the two chains
    with pytest.raises(StructureError, match=r"no biological assembly named '7'; available: 1, 2 \(set"):
        read_structure(STRUCTURES / "1ake_adk_chimerax.cif.gz", assembly="7")


def test_biomt_60mer(shared_data):
    asu = read_structure(STRUCTURES / "5ire_zika.pdb.gz", centre="none")
    full = read_structure(STRUCTURES / "5ire_zika.pdb.gz", assembly="1", centre="none")
    assert len(asu) == 11024 and len(full) == 60 * 11024
    # icosahedral shell around the origin: centre of mass near 0, radius ~ 20-25 nm
    r = np.linalg.norm(full.positions_a - full.positions_a.mean(0), axis=1)
    assert np.abs(full.positions_a.mean(0)).max() < 2.0
    assert 180 < np.median(r) < 250


def test_models_weighted_by_occupancy(shared_data):
    tmv = read_structure(STRUCTURES / "2om3_tmv_cssmol.pdb.gz")
    assert len(tmv) == 6395
    assert tmv.occupancy.sum() == pytest.approx(1279, rel=1e-5)  # 5 models x 0.2 = one subunit
    first = read_structure(STRUCTURES / "2om3_tmv_cssmol.pdb.gz", models="first")
    assert len(first) == 1279


def test_nmr_like_ensemble_is_averaged(tmp_path, shared_data):
    text = gzip.decompress((STRUCTURES / "1ubi_ubiquitin.pdb.gz").read_bytes()).decode()
    atoms = [ln for ln in text.splitlines() if ln.startswith("ATOM")]
    ens = "\n".join(["MODEL        1", *atoms, "ENDMDL", "MODEL        2", *atoms, "ENDMDL", "END"])
    p = tmp_path / "ens.pdb"
    p.write_text(ens)
    a = read_structure(p)
    assert len(a) == 2 * len(atoms)
    assert a.occupancy.sum() == pytest.approx(len(atoms) * 1.0, rel=1e-3)


def test_remove_hydrogens_and_centring(tmp_path):
    pdb = (
        "ATOM      1  N   GLY A   1      11.000  12.000  13.000  1.00 20.00           N\n"
        "ATOM      2  H   GLY A   1      11.500  12.000  13.000  1.00 20.00           H\n"
        "ATOM      3  CA  GLY A   1      12.000  12.000  13.000  1.00 20.00           C\n"
        "HETATM    4 ZN    ZN A 101      20.000  20.000  20.000  1.00 30.00          ZN\n"
        "END\n")
    p = tmp_path / "small.pdb"
    p.write_text(pdb)
    full = read_structure(p, centre="none")
    assert list(full.atomic_number) == [7, 1, 6, 30]
    assert len(read_structure(p, remove_hydrogens=True)) == 3
    assert len(read_structure(p, remove_hetero=True)) == 3
    c = read_structure(p, centre="mass")
    w = atomic_mass_da(c.atomic_number) * c.occupancy
    np.testing.assert_allclose((c.positions_a * w[:, None]).sum(0) / w.sum(), 0, atol=1e-9)
    b = read_structure(p, centre="bbox")
    np.testing.assert_allclose(b.positions_a.min(0) + b.positions_a.max(0), 0, atol=1e-9)


def test_unknown_element_names_file_and_atom(tmp_path):
    p = tmp_path / "bad.pdb"
    p.write_text("ATOM      1  XX  UNK A   1       1.000   2.000   3.000  1.00 20.00           XX\nEND\n")
    with pytest.raises(StructureError) as exc:
        read_structure(p)
    msg = str(exc.value)
    assert "bad.pdb" in msg and "'XX'" in msg and "unknown element" in msg and "\n" not in msg


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(StructureError, match="file not found"):
        read_structure(tmp_path / "nope.pdb")
    junk = tmp_path / "junk.cif"
    junk.write_text("this is not a structure\n")
    with pytest.raises(StructureError, match="junk.cif"):
        read_structure(junk)


def test_rotations():
    np.testing.assert_allclose(rotation_zyz_deg(360, 360, 360), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rotation_zyz_deg(0, 90, 0) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rotation_zyz_deg(90, 0, 0) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    r = rotation_zyz_deg(10, 20, 30)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_non_utf8_chain_name_is_a_one_line_structure_error(tmp_path):
    """A byte that is not UTF-8 in a chain name surfaced as UnicodeDecodeError from gemmi's names (found by the
    fuzz test); it is a StructureError naming the file."""
    import gzip
    from importlib import resources

    from difftem.core.errors import StructureError
    from difftem.specimen.structure import read_structure

    pdb = gzip.decompress(resources.files("difftem").joinpath("data", "1ubi_ubiquitin.pdb.gz").read_bytes())
    lines = pdb.split(b"\n")
    i = next(k for k, line in enumerate(lines) if line.startswith(b"ATOM"))
    lines[i] = lines[i][:21] + b"\x80" + lines[i][22:]
    (tmp_path / "bad.pdb").write_bytes(b"\n".join(lines))
    with pytest.raises(StructureError, match="bad.pdb.*not text"):
        read_structure(tmp_path / "bad.pdb")


def test_cut_short_or_corrupt_gzip_is_refused(shared_data, tmp_path):
    """gemmi reads a truncated .gz up to the cut: half of 1UBI's file gave 237 of its 602 atoms without a word.
    Now a cut-short stream or a corrupt one is a one-line StructureError; whole files read as before."""
    data = (STRUCTURES / "1ubi_ubiquitin.pdb.gz").read_bytes()
    assert len(read_structure(STRUCTURES / "1ubi_ubiquitin.pdb.gz")) == 602
    cut = tmp_path / "cut.pdb.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(StructureError, match="cut short"):
        read_structure(cut)
    bad = tmp_path / "bad.cif.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not a deflate stream" * 8)
    with pytest.raises(StructureError, match="not a readable gzip file"):
        read_structure(bad)
    whole = tmp_path / "whole.pdb.gz"
    whole.write_bytes(gzip.compress(gzip.decompress(data)))
    assert len(read_structure(whole)) == 602
