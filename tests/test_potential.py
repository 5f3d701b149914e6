"""Potential builders: analytic integrals, exactness on the grid, agreement, ice."""

import math

import numpy as np
import pytest
import torch
from helpers import rel, single_atom, sliced

from difftem.core import fft
from difftem.core.grid import Grid
from difftem.forward.potential import IceModel
from difftem.forward.scattering import get_table
from difftem.specimen.structure import Atoms


@pytest.mark.parametrize("table", ["kirkland", "peng_s2", "peng_s6"])
@pytest.mark.parametrize("z", [1, 6, 8, 16, 30, 79])
def test_integral_is_analytic_for_subpixel_shifts(table, z):
    expected = get_table(table).projected_integral_v_a3(z)
    for shift in [(0.0, 0.0), (0.13, 0.41), (0.5, 0.77)]:
        at = single_atom(z, (shift[0], shift[1], 0.0), b=10.0)
        v = sliced(at, table=table).project()
        area = 0.25**2
        assert float(v.real.sum()) * area == pytest.approx(expected, rel=1e-9)
        if table.startswith("peng"):
            vr = sliced(at, table=table, builder="real_space").project()
            assert float(vr.real.sum()) * area == pytest.approx(expected, rel=1e-6)


def test_fourier_and_real_space_builders_agree(ubiquitin):
    # The real-space builder averages over each pixel; apply the same box average to the
    # band-limited Fourier result. What remains is aliasing of the pixel-averaged potential.
    for pixel_a, n, tol in [(0.5, 160, 0.02), (0.25, 320, 0.006)]:
        g = Grid((n, n), pixel_a)
        vf = sliced(ubiquitin, (n, n), pixel_a, "peng_s6").project().real
        vr = sliced(ubiquitin, (n, n), pixel_a, "peng_s6", builder="real_space").project().real
        ky, kx = g.frequencies(dtype=torch.float64)
        boxed = fft.ifft2(fft.fft2(vf.to(torch.complex128)) * torch.sinc(ky * pixel_a) * torch.sinc(kx * pixel_a)).real
        assert rel(vr, boxed) < tol
        assert rel(vr, vf) > rel(vr, boxed)  # the box average is a real, visible difference


def test_subpixel_shift_is_fourier_shift():
    # Exact band-limited potential: moving atoms by δ multiplies the spectrum by exp(-2πi k·δ).
    rng = np.random.default_rng(0)
    pos = np.c_[rng.uniform(-6, 6, (20, 2)), np.zeros(20)]
    at = Atoms(rng.choice([6, 7, 8], 20), pos, rng.uniform(0, 30, 20), np.ones(20))
    delta = np.array([0.137, -0.291, 0.0])
    shifted = Atoms(at.atomic_number, pos + delta, at.b_iso_a2, at.occupancy)
    kw = dict(shape=(64, 64), pixel_a=0.5, margin_a=1000.0)  # margin forces the periodic full field
    v0 = sliced(at, **kw).project()
    v1 = sliced(shifted, **kw).project()
    g = Grid((64, 64), 0.5)
    ky, kx = g.frequencies(dtype=torch.float64)
    ramp = torch.exp(-2j * math.pi * (kx * delta[0] + ky * delta[1]))
    # Nyquist row/column are not representable as a shift of a real signal; compare without them
    pred = fft.ifft2(fft.fft2(v0) * ramp * ((ky.abs() < 0.99) & (kx.abs() < 0.99)))
    v1f = fft.ifft2(fft.fft2(v1) * ((ky.abs() < 0.99) & (kx.abs() < 0.99)))
    assert rel(pred, v1f) < 1e-9


def test_whole_pixel_translation_rolls():
    at = single_atom(16, (0.3, -0.2, 0.0), b=5)
    moved = single_atom(16, (0.3 + 3 * 0.25, -0.2 - 5 * 0.25, 0.0), b=5)
    v0 = sliced(at).project()
    v1 = sliced(moved).project()
    assert rel(v1, torch.roll(v0, shifts=(-5, 3), dims=(0, 1))) < 1e-10


def test_box_equals_full_field(ubiquitin):
    # Atoms are processed in a box around them; the field-wide periodic computation is the reference.
    # What differs is the far ringing of the grid's band limit, cut at the box edge (24 Å margin).
    boxed = sliced(ubiquitin, (256, 256), 0.5, dtype=torch.complex128).project()
    full = sliced(ubiquitin, (256, 256), 0.5, margin_a=1000.0, dtype=torch.complex128).project()
    assert rel(boxed, full) < 3e-3


def test_absorption_ratio_and_dtype():
    at = single_atom(8, b=10)
    v = sliced(at, absorption_ratio=0.1).project()
    assert rel(v.imag, 0.1 * v.real) < 1e-12
    v32 = sliced(at, absorption_ratio=0.1, dtype=torch.complex64).project()
    assert v32.dtype == torch.complex64 and rel(v32.to(torch.complex128), v) < 1e-5


def test_ice_slab_and_displacement():
    ice = IceModel(thickness_a=100.0, mean_potential_v=4.8775, absorption_potential_v=0.7591)
    empty = sliced(Atoms(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0), np.zeros(0)), (32, 32), 1.0, ice=ice)
    v = empty.project()
    np.testing.assert_allclose(v.real.numpy(), 487.75, rtol=1e-12)
    np.testing.assert_allclose(v.imag.numpy(), 75.91, rtol=1e-12)
    # one oxygen inside the ice: excess potential = C f(0) − U·(displaced volume)
    from difftem.core.elements import atomic_mass_da
    from difftem.forward.potential import PROTEIN_VOLUME_A3_PER_DA

    ox = sliced(single_atom(8, b=10), (64, 64), 0.5, ice=ice, absorption_ratio=0.0).project()
    area = 64 * 64 * 0.25
    excess = float(ox.real.sum()) * 0.25 - 487.75 * area
    vol = float(atomic_mass_da(np.array([8]))[0]) * PROTEIN_VOLUME_A3_PER_DA
    assert excess == pytest.approx(get_table("kirkland").projected_integral_v_a3(8) - 4.8775 * vol, rel=1e-6)
    excess_im = float(ox.imag.sum()) * 0.25 - 75.91 * area
    assert excess_im == pytest.approx(-0.7591 * vol, rel=1e-6)


def test_slicing_streams_atoms_into_their_slices():
    at = Atoms(np.array([6, 6, 6]), np.array([[0, 0, -5.0], [0, 0, 0.1], [0, 0, 4.9]]), np.zeros(3), np.ones(3))
    sp = sliced(at, (32, 32), 0.5, slice_a=2.0)
    contents = list(sp.slices())
    occupied = [c.index for c in contents if c.patch is not None]
    assert len(contents) == sp.n_slices and len(occupied) == 3
    # each atom sits within [z_start, z_start + Δz) of its slice
    for c in contents:
        if c.patch is not None:
            lo, hi = c.z_start_a, c.z_start_a + c.thickness_a
            assert any(lo <= z < hi for z in (-5.0, 0.1, 4.9))
