import math

import numpy as np
import pytest
import torch
from helpers import rel
from test_multislice import bandlimited_noise

from difftem.core import fft
from difftem.core.grid import Grid
from difftem.forward.beam import interaction_constant, wavelength_a
from difftem.forward.multislice import fresnel_propagator, propagate
from difftem.forward.optics import Optics, aberration_phase, ctf_1d, envelopes, image_intensity, transfer_function

LAM, SIGMA = wavelength_a(300), interaction_constant(300)
COHERENT = dict(cc_mm=0.0, energy_spread_ev=0.0, illumination_semiangle_mrad=0.0)


def weak_phase_contrast_spectrum(grid, optics):
    v = bandlimited_noise(grid, 3).real * 1e-3
    psi = torch.exp(1j * SIGMA * v)
    h = transfer_function(grid, LAM, 300, optics, dtype=torch.complex128)
    contrast = fft.fft2((image_intensity(psi, h) - 1).to(torch.complex128))
    return contrast, 2 * SIGMA * fft.fft2(v.to(torch.complex128))


def test_underfocus_is_backward_propagation():
    grid = Grid((128, 128), 1.0)
    psi = torch.exp(1j * SIGMA * bandlimited_noise(grid, 4).real * 50)
    optics = Optics(defocus_a=12000.0, cs_mm=0.0, **COHERENT)
    img = image_intensity(psi, transfer_function(grid, LAM, 300, optics, dtype=torch.complex128))
    prop = propagate(psi, fresnel_propagator(grid, LAM, -12000.0, antialias_fraction=None, dtype=torch.complex128))
    assert rel(img, prop.abs() ** 2) < 1e-10


def test_weak_phase_ctf_is_minus_sin_chi_with_zeros():
    grid = Grid((128, 128), 1.0)
    optics = Optics(defocus_a=15000.0, cs_mm=2.7, **COHERENT)
    contrast, phase = weak_phase_contrast_spectrum(grid, optics)
    chi = aberration_phase(grid, LAM, optics)
    expected = -torch.sin(chi)
    mask = phase.abs() > 1e-3 * phase.abs().max()
    ratio = (contrast / phase).real
    assert float((ratio - expected)[mask].abs().max()) < 1e-3
    near_zero = mask & ((chi / math.pi - torch.round(chi / math.pi)).abs() < 0.01) & (chi.abs() > 0.5)
    assert int(near_zero.sum()) > 20
    assert float(ratio[near_zero].abs().max()) < 0.04


def test_ctf_zeros_1d():
    df, cs = 20000.0, 2.7
    # first zero of the CTF (χ = π) solved analytically from π λ Δf k² − ½ π Cs λ³ k⁴ = π
    a, b = 0.5 * cs * 1e7 * LAM**3, LAM * df
    k2 = (b - math.sqrt(b * b - 4 * a)) / (2 * a)
    val = ctf_1d(torch.tensor([math.sqrt(k2)], dtype=torch.float64), LAM, df, cs)
    assert abs(float(val)) < 1e-9


def test_phase_plate_in_focus_gives_negative_contrast():
    grid = Grid((64, 64), 1.0)
    optics = Optics(defocus_a=0.0, cs_mm=0.0, phase_shift_deg=90.0, **COHERENT)
    contrast, phase = weak_phase_contrast_spectrum(grid, optics)
    mask = phase.abs() > 1e-3 * phase.abs().max()
    mask[0, 0] = False
    np.testing.assert_allclose((contrast / phase).real[mask].numpy(), -1.0, atol=1e-3)


def test_astigmatism_direction():
    grid = Grid((64, 64), 1.0)
    optics = Optics(defocus_a=10000.0, astigmatism_a=2000.0, astigmatism_angle_deg=0.0, cs_mm=0.0)
    chi = aberration_phase(grid, LAM, optics)
    k = 5 / 64.0
    assert float(chi[0, 5]) == pytest.approx(math.pi * LAM * 11000.0 * k**2)  # along x: Δf + Δ/2
    assert float(chi[5, 0]) == pytest.approx(math.pi * LAM * 9000.0 * k**2)  # along y: Δf − Δ/2


def test_envelopes_and_aperture():
    grid = Grid((128, 128), 0.25)
    optics = Optics(defocus_a=0.0, cs_mm=0.0, cc_mm=2.7, energy_spread_ev=0.8, illumination_semiangle_mrad=0.5,
                    aperture_mrad=10.0)
    env = envelopes(grid, LAM, 300, optics)
    assert float(env[0, 0]) == 1.0
    delta = 2.7e7 * 0.8 / 300e3
    k_e = math.sqrt(2 / (math.pi * LAM * delta))  # (½πλδk²)² = 1 → E_t = 1/e (spatial term 0 at Δf=Cs=0)
    i = round(k_e * 32)
    k = i / 32
    assert float(env[0, i]) == pytest.approx(math.exp(-((0.5 * math.pi * LAM * delta * k**2) ** 2)), rel=1e-9)
    h = transfer_function(grid, LAM, 300, optics)
    k2 = grid.k2()
    assert float(h[k2 > (10e-3 / LAM) ** 2].abs().max()) == 0.0
    assert float(h[k2 < (9e-3 / LAM) ** 2].abs().min()) > 0.0
    grid = Grid((128, 128), 1.0)
    spatial = envelopes(grid, LAM, 300, Optics(defocus_a=20000.0, cs_mm=0.0, illumination_semiangle_mrad=0.5,
                                                  energy_spread_ev=0.0))
    assert float(spatial[0, 10]) == pytest.approx(math.exp(-((math.pi * 0.5e-3 * 20000.0 * 10 / 128) ** 2)), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("lens", [
    dict(cs_mm=2.0, cc_mm=2.0, energy_spread_ev=1.3, illumination_semiangle_mrad=0.1, aperture_mrad=3.0),
    dict(cs_mm=2.7, cc_mm=2.7, energy_spread_ev=0.8, illumination_semiangle_mrad=0.0),
    dict(cs_mm=0.0, cc_mm=0.0, energy_spread_ev=0.0, illumination_semiangle_mrad=0.05, phase_shift_deg=90.0),
])
def test_a_lens_of_numbers_equals_one_of_tensors(dtype, lens):
    """Both envelopes and the aperture are one exponent; a lens given as plain numbers and one whose defocus is a
    tensor (as the differentiable simulator's) give the same H(k), the TMV example's lens too, with zeros outside
    the aperture."""
    grid = Grid((96, 80), 2.5)
    lam = wavelength_a(200.0)
    optics = Optics(defocus_a=50000.0, **lens)
    fast = transfer_function(grid, lam, 200.0, optics, defocus_a=51234.5, dtype=dtype)
    general = transfer_function(grid, lam, 200.0, optics, defocus_a=torch.tensor(51234.5, dtype=torch.float64),
                                dtype=dtype)
    tol = 2e-4 if dtype == torch.complex64 else 1e-12  # float32 χ of up to ~10² rad: ~1e-5 relative
    assert fast.dtype == general.dtype == dtype
    assert float((fast - general).abs().max()) < tol
    if lens.get("aperture_mrad"):
        assert float(fast.abs()[grid.k2() > (lens["aperture_mrad"] * 1e-3 / lam) ** 2].max()) == 0.0
