"""Explicit pseudo-water cross-checks the structured ice's spectrum formula (forward/ice.py).

Water molecules (O + 2 H, random orientations) at 0.0334 molecules/Å³ in a periodic box with a liquid-like pair
structure (soft-repulsion relaxation, O–O contact 2.75 Å). The configuration's own S(q), measured from its centres
in 3-D, put into P₃ = n C² [F₂ − F₁² + F₁² S(q)], times the box depth T, must give the power spectrum of the same
atoms projected by the exact atom path (forward/potential.py) — a check of the formula's normalisation, molecular
factors and projection that does not depend on the S(q) chosen for vitreous ice."""

import math

import numpy as np
import pytest
import torch

from difftem.forward.camera import radial_bands
from difftem.forward.ice import amorphous_ice_structure_factor
from difftem.forward.scattering import get_table
from difftem.forward.water_spectra import pseudo_water_spectra

S_EDGES_PER_A = np.arange(0.0, 0.8501, 0.0125)  # fine bands for the measured S(k)
# the comparison's bands (1/Å): ≥ ~150 independent modes each in six 40 Å boxes (one wider band at low k)
BANDS_PER_A = np.r_[0.10, np.arange(0.20, 0.7501, 0.05)]


def band_ratios(box_a, pixel_a, seeds, table="kirkland"):
    shape = (round(box_a[1] / pixel_a), round(box_a[0] / pixel_a))
    edges_px = BANDS_PER_A * pixel_a
    exp_b, form_b, s_all = [], [], []
    for seed in seeds:
        e, f, s = pseudo_water_spectra(box_a, pixel_a, seed, get_table(table), S_EDGES_PER_A)
        exp_b.append(radial_bands(e, shape, edges_px))
        form_b.append(radial_bands(f, shape, edges_px))
        s_all.append(s)
    return np.mean(exp_b, 0) / np.mean(form_b, 0), np.mean(s_all, 0)


def test_pseudo_water_spectrum_matches_the_ice_formula_with_its_own_structure_factor(one_thread):
    ratio, s = band_ratios((40.0, 40.0, 30.0), 0.5, range(6))
    # 6 boxes of 1603 molecules; per band ≳ 100 independent modes each: ~4 % statistical error
    assert np.all(np.abs(ratio - 1) < 0.12), np.round(ratio, 3)
    assert abs(float(np.mean(ratio)) - 1) < 0.03, np.round(ratio, 3)
    # a liquid-like configuration: S(0) well below 1 (incompressible), a first peak above 1.4
    k_mid = 0.5 * (S_EDGES_PER_A[1:] + S_EDGES_PER_A[:-1])
    assert s[(k_mid > 0.05) & (k_mid < 0.2)].mean() < 0.35
    assert s.max() > 1.4
    # its ring (a simple dense liquid) lies at larger q than LDA ice's 1.70 Å⁻¹ (3.7 Å)
    q_peak = 2 * math.pi * k_mid[np.argmax(s)]
    q = torch.linspace(0.5, 5.0, 2000, dtype=torch.float64)
    q_lda = float(q[torch.argmax(amorphous_ice_structure_factor(q))])
    assert abs(q_lda - 1.70) < 0.02
    assert 2.2 < q_peak < 2.8, q_peak


@pytest.mark.slow
def test_pseudo_water_larger_box(one_thread):
    ratio, _ = band_ratios((64.0, 64.0, 40.0), 0.5, range(8))
    assert np.all(np.abs(ratio - 1) < 0.07), np.round(ratio, 3)
