"""core.complex_ops: the vectorised polar equals torch.polar, and falls back to it where it must."""

import pytest
import torch

from difftem.core import complex_ops


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 3e-7), (torch.float64, 5e-16)])
@pytest.mark.parametrize("shape", [(400, 400), (3, 130, 129), (48, 48)])
def test_polar_equals_torch_polar(dtype, atol, shape):
    g = torch.Generator().manual_seed(0)
    # phases as large as a lens's χ at the field's edge (hundreds of rad), magnitudes as an absorbing slice's
    phase = ((torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 800).to(dtype)
    mag = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    got, ref = complex_ops.polar(mag, phase), torch.polar(mag, phase)
    assert got.dtype == ref.dtype and got.shape == ref.shape and got.is_contiguous()
    assert torch.allclose(got, ref, rtol=0, atol=atol)
    assert torch.allclose(complex_ops.unit_phasor(phase), torch.polar(torch.ones_like(phase), phase), rtol=0,
                          atol=atol)


def test_the_fast_path_runs_on_large_cpu_tensors_without_a_graph(monkeypatch):
    """Large plain tensors never reach torch.polar; gradients, broadcasting and small tensors do (and still
    get the right values and gradients)."""
    calls = []
    real_polar = torch.polar
    monkeypatch.setattr(torch, "polar", lambda m, p: calls.append(p.shape) or real_polar(m, p))
    phase, mag = torch.rand(200, 200), torch.rand(200, 200)
    complex_ops.polar(mag, phase)
    complex_ops.unit_phasor(phase)
    assert calls == []
    complex_ops.polar(mag[:1], phase)  # broadcast
    complex_ops.polar(mag[:8, :8], phase[:8, :8])  # small
    leaf = phase.clone().requires_grad_(True)
    out = complex_ops.polar(mag, leaf)
    assert len(calls) == 3
    out.imag.sum().backward()
    assert torch.allclose(leaf.grad, mag * torch.cos(phase), atol=1e-6)
    with torch.no_grad():  # no graph is built: the fast path again
        complex_ops.polar(mag, leaf)
    assert len(calls) == 3


def test_abs2_is_the_squared_magnitude_with_its_gradient():
    z = torch.randn(50, 60, dtype=torch.complex128, generator=torch.Generator().manual_seed(1), requires_grad=True)
    got = complex_ops.abs2(z)
    assert torch.allclose(got, z.detach().abs() ** 2, rtol=1e-14, atol=0)
    got.sum().backward()
    assert torch.allclose(z.grad, 2 * z.detach())  # d|z|²/dz̄ as torch reports it for a real loss
