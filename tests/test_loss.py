"""Electron loss in ice from its causes (forward/loss.py): Beer–Lambert in the inelastic mean free path, the
energy filter's slit, and the elastic loss beyond an aperture checked against the multislice's own scattering."""

import math

import pytest
import torch

from difftem import simulate
from difftem.core.fft import fft2, freq_grid_per_a
from difftem.forward.beam import wavelength_a
from difftem.forward.loss import (
    elastic_loss_per_a,
    inelastic_mean_free_path_nm,
    slit_pass_fraction,
)
from difftem.forward.scattering import get_table


def _cfg(thickness_nm, *, structure="off", aperture=None, **loss):
    return {"seed": 2, "beam": {"voltage_kv": 300},
            "optics": {"defocus_um": 1.0, "aperture_mrad": aperture, "electron_loss": {"model": "explicit", **loss}},
            "detector": {"shape_px": [96, 96], "pixel_size_a": 1.0, "noise": "none"},
            "sample": {"ice_thickness_nm": thickness_nm, "ice_structure": {"mode": structure}}}


def test_literature_values_and_scaling():
    assert inelastic_mean_free_path_nm(300) == pytest.approx(395.0)
    assert 320 < inelastic_mean_free_path_nm(200) < 360  # Malis et al.'s energy dependence
    assert slit_pass_fraction(10) == 0.0 and slit_pass_fraction(2000) == pytest.approx(1.0)
    assert 0.0 < slit_pass_fraction(20) < 0.1


@pytest.mark.parametrize("thickness_nm", [10, 50, 100, 200])
def test_filtered_transmission_is_beer_lambert_in_the_inelastic_mean_free_path(thickness_nm):
    """A 10 eV slit (passes no plasmon loss), no aperture: <I> = exp(−t/Λ_in), Λ_in = 395 nm at 300 kV."""
    r = simulate(_cfg(thickness_nm, slit_width_ev=10.0))
    assert float(r.intensity.mean()) == pytest.approx(math.exp(-thickness_nm / 395.0), rel=1e-4)


def test_without_a_filter_nothing_is_lost_and_a_slit_keeps_its_share():
    t = 100.0
    assert float(simulate(_cfg(t, energy_filter=False)).intensity.mean()) == pytest.approx(1.0, rel=1e-4)
    zl, f = math.exp(-t / 395.0), slit_pass_fraction(30.0)
    mean = float(simulate(_cfg(t, slit_width_ev=30.0)).intensity.mean())
    assert mean == pytest.approx(zl + (1 - zl) * f, rel=1e-4)


def test_aperture_loss_with_structured_ice_matches_the_multislice_scattering():
    """With structured ice, the exit wave's power between k_c and the band edge is the elastic loss an aperture at
    k_c would add: t·(μ(k_c) − μ(band)), to first order."""
    t_nm, p = 20.0, 1.0
    r = simulate({**_cfg(t_nm, structure="slices", energy_filter=False),
                  "detector": {"shape_px": [256, 256], "pixel_size_a": p, "noise": "none"}})
    psi = r.exit_wave.to(torch.complex128)
    power = fft2(psi).abs() ** 2
    ky, kx = freq_grid_per_a(psi.shape, p)
    k = torch.sqrt(ky**2 + kx**2)
    band = (2 / 3) * 0.5 / p
    k_c = 0.15
    frac = float(power[(k > k_c)].sum() / power.sum())
    table = get_table("kirkland")
    expected = t_nm * 10 * (elastic_loss_per_a(300, k_c, table) - elastic_loss_per_a(300, band, table))
    assert frac == pytest.approx(expected, rel=0.15), (frac, expected)
    # and the aperture's loss in the image follows the same μ beyond max(aperture, band)
    lam = wavelength_a(300)
    aperture_mrad = 1.2 * band * lam * 1e3
    mean = float(simulate(_cfg(100.0, aperture=aperture_mrad, energy_filter=False)).intensity.mean())
    assert mean == pytest.approx(math.exp(-1000 * elastic_loss_per_a(300, 1.2 * band, table)), rel=1e-3)
