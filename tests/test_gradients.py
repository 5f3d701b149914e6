"""Gradients of the deterministic stages: torch.autograd.gradcheck in float64."""

import torch
from torch.autograd import gradcheck

from difftem.core.grid import Grid
from difftem.forward.beam import interaction_constant, wavelength_a
from difftem.forward.detector import expected_counts
from difftem.forward.multislice import fresnel_propagator, multislice, propagate
from difftem.forward.optics import Optics, image_intensity, transfer_function
from difftem.forward.potential import IceModel, SlicedPotential
from difftem.forward.scattering import get_table

LAM, SIGMA = wavelength_a(300), interaction_constant(300)
GRID = Grid((24, 24), 0.5)


def small_potential(xy, b, occ):
    z = torch.tensor([6, 7, 8])
    pos = torch.cat([xy, torch.tensor([[0.0], [0.3], [-0.4]], dtype=torch.float64)], 1)
    return SlicedPotential(z, pos, b, occ, GRID, get_table("kirkland"), 2.0, IceModel(0.0), dtype=torch.complex128,
                           margin_a=100.0)


def inputs():
    xy = torch.tensor([[0.3, -0.7], [1.1, 0.4], [-0.9, 0.2]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([10.0, 20.0, 15.0], dtype=torch.float64, requires_grad=True)
    occ = torch.tensor([1.0, 0.8, 0.6], dtype=torch.float64, requires_grad=True)
    return xy, b, occ


def test_potential_wrt_positions_b_and_occupancy():
    assert gradcheck(lambda xy, b, occ: small_potential(xy, b, occ).project(), inputs(), atol=1e-6)


def test_multislice_exit_wave_wrt_atoms():
    def f(xy, b, occ):
        return multislice(small_potential(xy, b, occ), LAM, SIGMA)

    assert gradcheck(f, inputs(), atol=1e-6)


def test_propagator_and_ctf_wrt_distance_defocus_cs():
    g = torch.Generator().manual_seed(0)
    psi = torch.exp(1j * 0.05 * torch.randn(GRID.shape_px, generator=g, dtype=torch.float64))

    def f(defocus_a, cs_mm, dz_a):
        wave = propagate(psi, fresnel_propagator(GRID, LAM, dz_a, dtype=torch.complex128))
        optics = Optics(defocus_a=defocus_a, cs_mm=cs_mm, cc_mm=2.7, energy_spread_ev=0.8,
                        illumination_semiangle_mrad=0.5, astigmatism_a=200.0, astigmatism_angle_deg=20.0)
        return image_intensity(wave, transfer_function(GRID, LAM, 300, optics, dtype=torch.complex128))

    args = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (5000.0, 2.7, 40.0))
    assert gradcheck(f, args, atol=1e-6)


def test_detector_expectation_wrt_dose_and_image():
    img = torch.rand(8, 8, dtype=torch.float64, requires_grad=True)
    dose = torch.tensor(40.0, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda i, d: expected_counts(i, d, 1.5), (img, dose))


def test_checkpointed_multislice_gives_the_same_gradient():
    grads = []
    for ckpt in (True, False):
        xy, b, occ = inputs()
        wave = multislice(small_potential(xy, b, occ), LAM, SIGMA, checkpoint=ckpt)
        (wave.abs() ** 2).sum().backward()
        grads.append(torch.cat([xy.grad.flatten(), b.grad, occ.grad]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert float(grads[0].abs().max()) > 0
