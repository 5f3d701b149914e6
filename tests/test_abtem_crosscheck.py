"""Cross-check against abTEM 1.0.11 (opt-in: `pip install abtem==1.0.11`, then `pytest -m abtem`).

Same atoms (1UBI, waters removed, B = 0 as abTEM uses none by default), same grid, same slices,
300 kV, abTEM's "infinite" projection. abTEM splats atoms bilinearly and only partly corrects
for it, so part of the difference is abTEM's own smoothing (see report_abtem_crosscheck.py).
"""

import numpy as np
import pytest
import torch
from conftest import STRUCTURES
from helpers import rel, sliced

from difftem.forward.beam import interaction_constant, wavelength_a
from difftem.forward.multislice import multislice
from difftem.specimen.structure import Atoms

abtem = pytest.importorskip("abtem")
pytestmark = pytest.mark.abtem


def run_pair(parametrization, pixel_a, n, slice_a=2.0, b_a2=0.0):
    """Our and abTEM's projected potential and exit waves; ``b_a2`` is one B-factor for every atom
    (abTEM applies it per element as exp(-2π²σ²k²), σ² = B / 8π²)."""
    from abtem.parametrizations import KirklandParametrization, PengParametrization
    from ase import Atoms as AseAtoms

    from difftem.forward.scattering import element_symbol
    from difftem.specimen.structure import read_structure

    u = read_structure(STRUCTURES / "1ubi_ubiquitin.pdb.gz")
    atoms = Atoms(u.atomic_number, u.positions_a, np.full(len(u), b_a2), np.ones(len(u)))
    ours = sliced(atoms, (n, n), pixel_a, {"peng": "peng_s6"}.get(parametrization, parametrization),
                  slice_a=slice_a, absorption_ratio=0.0)
    # abTEM frame: pixel (i, j) at (i·dx, j·dy), slices from z = 0; ours: scene origin at pixel n//2
    shift = np.array([(n // 2) * pixel_a, (n // 2) * pixel_a, -ours.z_start_a])
    cell = (n * pixel_a, n * pixel_a, ours.n_slices * slice_a)
    ase_atoms = AseAtoms([element_symbol(z) for z in atoms.atomic_number], positions=atoms.positions_a + shift,
                         cell=cell)
    abtem.config.set({"precision": "float64"})
    symbols = sorted({element_symbol(z) for z in atoms.atomic_number})
    sigmas = {s: float(np.sqrt(b_a2 / (8 * np.pi**2))) for s in symbols} if b_a2 else None
    param = {"kirkland": KirklandParametrization, "peng": PengParametrization}[parametrization](sigmas=sigmas)
    pot = abtem.Potential(ase_atoms, gpts=(n, n), slice_thickness=slice_a, parametrization=param,
                          projection="infinite")
    assert pot.num_slices == ours.n_slices
    built = pot.build(lazy=False)
    ref_potential = torch.from_numpy(np.asarray(built.array).sum(0).T.copy())  # [x, y] → [y, x]
    ref_wave = torch.from_numpy(
        np.asarray(abtem.PlaneWave(energy=300e3).multislice(built, lazy=False).array).T.copy())
    lam, sigma = wavelength_a(300), interaction_constant(300)
    return {
        "potential": (ours.project().real, ref_potential),
        "wave_field": (multislice(ours, lam, sigma, bandlimit="field"), ref_wave),
        "wave_box": (multislice(ours, lam, sigma, bandlimit="box"), ref_wave),
    }


@pytest.mark.parametrize("parametrization", ["kirkland", "peng"])
def test_projected_potential_and_exit_wave_vs_abtem(parametrization):
    # B = 20 Å² (a typical model B-factor) on a 0.1 Å grid
    res = run_pair(parametrization, 0.1, 512, b_a2=20.0)
    pot, ref = res["potential"]
    # same total: h²/(2π m0 e) differs between the codes in the 9th digit (CODATA 2018 vs older constants)
    assert float(pot.sum()) == pytest.approx(float(ref.sum()), rel=1e-7)
    assert rel(pot, ref) <= 0.01
    for key in ("wave_field", "wave_box"):
        wave, ref_wave = res[key]
        assert rel(wave, ref_wave) <= 0.02


@pytest.mark.parametrize("parametrization", ["kirkland"])
def test_sharp_atoms_difference_is_abtem_splatting(parametrization):
    # With B = 0 the potential has content up to Nyquist, where abTEM's bilinear splatting
    # smooths it: the difference halves when the pixel halves (first order in the pixel size),
    # whereas our potential is exact at any sampling (see test_potential.py).
    coarse = rel(*run_pair(parametrization, 0.1, 512)["potential"])
    fine = rel(*run_pair(parametrization, 0.05, 1024)["potential"])
    assert fine < 0.65 * coarse
    for key in ("wave_field", "wave_box"):
        assert rel(*run_pair(parametrization, 0.05, 1024)[key]) <= 0.02
