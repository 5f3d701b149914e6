import csv

import numpy as np
import pytest
import torch

from difftem.core.elements import MAX_Z
from difftem.forward.scattering import PARAMETRIZATIONS, _load_tables, atomic_number, get_table


def test_every_element_in_every_table():
    tables = _load_tables()
    for name, key in PARAMETRIZATIONS.items():
        assert sorted(tables[key]) == list(range(1, MAX_Z + 1)), name
        n = 12 if name == "kirkland" else 10
        assert all(len(v[1]) == n for v in tables[key].values())


def test_matches_shared_reference_table(shared_data):
    path = shared_data / "scattering" / "electron_scattering_factors.csv"
    rows = csv.reader(line for line in path.read_text().splitlines() if not line.startswith("#"))
    next(rows)
    tables = _load_tables()
    n = 0
    for row in rows:
        ref = [float(v) for v in row[3:] if v.strip()]
        got = tables[row[0]][int(row[2])][1]
        np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=f"{row[0]} {row[1]}")
        n += 1
    assert n == 39
    assert tables["peng1996_s2"][19][1][1] == pytest.approx(+1.4031)  # K a2 sign (TEM-simulator typo)


def test_parametrizations_agree_at_low_frequency():
    # Independent fits of the same physics: f_e(k) should agree within a few % for k < 2 1/A.
    k2 = torch.linspace(0, 4, 41, dtype=torch.float64)
    kirk, peng = get_table("kirkland"), get_table("peng_s6")
    for z in (1, 6, 7, 8, 15, 16, 26, 30, 79, 92):
        fk, fp = kirk.f_e(z, k2), peng.f_e(z, k2)
        assert float(((fk - fp).abs() / fk).max()) < 0.08, z


def test_atomic_number_lookup():
    assert atomic_number("C") == 6 and atomic_number("zn") == 30 and atomic_number("D") == 1
    assert atomic_number("U") == 92
    with pytest.raises(KeyError):
        atomic_number("Xx")


def test_unknown_parametrization():
    with pytest.raises(ValueError, match="unknown parametrization"):
        get_table("lobato2025")
