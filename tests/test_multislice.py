import math

import numpy as np
import pytest
import torch
from helpers import rel, sliced

from difftem.core import fft
from difftem.core.grid import Grid
from difftem.forward.beam import interaction_constant, wavelength_a
from difftem.forward.multislice import fresnel_propagator, multislice, propagate
from difftem.forward.potential import antialias_mask

LAM, SIGMA = wavelength_a(300), interaction_constant(300)


def bandlimited_noise(grid, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(grid.shape_px, generator=g, dtype=torch.float64) + 1j * torch.randn(grid.shape_px, generator=g,
                                                                                       dtype=torch.float64)
    # hard band limit at 0.6 Nyquist: inside the propagator's aperture (2/3, soft edge from 0.627)
    mask = antialias_mask(grid.k2(dtype=torch.float64), grid.pixel_size_a, 0.6, taper_fraction=0.0)
    return fft.ifft2(fft.fft2(x.to(dtype)) * mask)


def test_forward_then_backward_is_identity():
    grid = Grid((128, 96), 0.5)
    psi = bandlimited_noise(grid)
    fwd = fresnel_propagator(grid, LAM, 250.0, dtype=torch.complex128)
    back = fresnel_propagator(grid, LAM, -250.0, dtype=torch.complex128)
    assert rel(propagate(propagate(psi, fwd), back), psi) < 1e-12


def test_propagation_conserves_energy_and_composes():
    grid = Grid((128, 128), 0.5)
    psi = bandlimited_noise(grid, 1)

    def p(z):
        return fresnel_propagator(grid, LAM, z, dtype=torch.complex128)

    out = propagate(psi, p(300.0))
    assert float(out.abs().pow(2).sum()) == pytest.approx(float(psi.abs().pow(2).sum()), rel=1e-12)
    assert rel(propagate(propagate(psi, p(100.0)), p(200.0)), out) < 1e-12


def test_weak_phase_object_intensity_spectrum():
    # I − 1 = 2σ F⁻¹[V(k) sin(π λ z k²)] for a weak phase object propagated by z
    grid = Grid((128, 128), 1.0)
    v = bandlimited_noise(grid, 2).real * 1e-3  # V·Å, σV ~ 1e-6 rad: deep in the weak-phase regime
    z = 1.0e4
    psi = torch.exp(1j * SIGMA * v)
    intensity = propagate(psi, fresnel_propagator(grid, LAM, z, antialias_fraction=None, dtype=torch.complex128))
    measured = fft.fft2((intensity.abs() ** 2 - 1).to(torch.complex128))
    k2 = grid.k2(dtype=torch.float64)
    predicted = 2 * SIGMA * fft.fft2(v.to(torch.complex128)) * torch.sin(math.pi * LAM * z * k2)
    assert rel(measured, predicted) < 1e-4


def test_multislice_of_vacuum_is_plane_wave():
    from difftem.specimen.structure import Atoms

    empty = Atoms(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    wave = multislice(sliced(empty, (32, 32), 1.0), LAM, SIGMA)
    np.testing.assert_allclose(wave.abs().numpy(), 1.0, atol=1e-12)


def test_energy_conserved_without_absorption(ubiquitin):
    sp = sliced(ubiquitin, (192, 192), 0.5, absorption_ratio=0.0)
    wave = multislice(sp, LAM, SIGMA)
    # only the out-of-band scattering removed by the 2/3 anti-aliasing aperture may be lost
    assert float(wave.abs().pow(2).mean()) == pytest.approx(1.0, abs=2e-3)
    sp_abs = sliced(ubiquitin, (192, 192), 0.5, absorption_ratio=0.1)
    assert float(multislice(sp_abs, LAM, SIGMA).abs().pow(2).mean()) < float(wave.abs().pow(2).mean())


def test_thin_specimen_limit_matches_projection(ubiquitin):
    # For a thin specimen the multislice exit wave → exp(iσ V_projected) propagated to the exit plane.
    sp = sliced(ubiquitin, (160, 160), 0.5, absorption_ratio=0.0, slice_a=1.0)
    wave = multislice(sp, LAM, SIGMA, antialias_fraction=None)
    projected = sp.project()
    thickness = sp.n_slices * sp.slice_thickness_a
    back = propagate(wave, fresnel_propagator(sp.grid, LAM, -thickness / 2, antialias_fraction=None,
                                              dtype=torch.complex128))
    assert rel(back, torch.exp(1j * SIGMA * projected)) < 0.01


def test_box_bandlimit_matches_field_bandlimit(ubiquitin):
    sp = sliced(ubiquitin, (256, 256), 0.5)
    box = multislice(sp, LAM, SIGMA, bandlimit="box")
    field = multislice(sp, LAM, SIGMA, bandlimit="field")
    assert rel(box - 1, field - 1) < 0.01  # scattered wave
    assert rel(box, field) < 1e-3
