"""The compiled Fourier-slice kernel (forward/slice_kernel.py) against the torch path it stands in for."""

import numpy as np
import pytest
import torch

from difftem.core.rotations import rotation_zyz_deg
from difftem.forward import slice_kernel
from difftem.forward.particle_map import build_fourier_projector
from difftem.forward.potential import IceModel
from difftem.forward.scattering import get_table

pytestmark = pytest.mark.skipif(not slice_kernel.available(), reason="numba is not installed")


def _both(fp, rotations, offsets, box, transfer, monkeypatch):
    fused = fp.project(rotations, offsets, box, transfer=transfer)
    with monkeypatch.context() as m:
        m.setattr(slice_kernel, "available", lambda: False)
        plain = fp.project(rotations, offsets, box, transfer=transfer)
    return fused, plain


@pytest.mark.parametrize("ice_ratio", [None, 0.02])
def test_compiled_slices_match_torch_path(ubiquitin, ice_ratio, monkeypatch):
    """Many random poses and sub-pixel offsets, with a transfer factor; one channel (absorption proportional to the
    potential) and four (it is not). The torch path samples in float32 through grid_sample (~2e-4 of the peak)."""
    table, ice = get_table("peng"), IceModel(300.0, 4.8775, 0.7591)
    ratio = ice.absorption_ratio if ice_ratio is None else ice_ratio
    fp = build_fourier_projector(ubiquitin, table, pixel_size_a=3.0, ice=ice, absorption_ratio=ratio)
    assert fp.coeffs.shape[0] == (2 if ice_ratio is None else 4)
    rng = np.random.default_rng(3)
    rotations = torch.as_tensor(np.stack([rotation_zyz_deg(*rng.uniform(-180, 180, 3)) for _ in range(9)]))
    box = fp.box_px()
    offsets = torch.as_tensor(rng.uniform(0.3 * box, 0.7 * box, (9, 2)) * 3.0)
    fused, plain = _both(fp, rotations, offsets, box, lambda k: torch.exp(-40.0 * k * k), monkeypatch)
    assert fused.shape == plain.shape == (9, 2, box, box)
    scale = float(plain.abs().max())
    assert float((fused - plain).abs().max()) < 1e-3 * scale
    assert float((fused - plain).norm() / plain.norm()) < 2e-4
    # the transfer and the ramp act: without them the copies differ
    bare, _ = _both(fp, rotations, offsets * 0, box, None, monkeypatch)
    assert float((bare - fused).norm() / fused.norm()) > 0.1


def test_compiled_slices_outside_the_projector_are_zero(ubiquitin, monkeypatch):
    """A box far larger than the projector's band: frequencies beyond its cube read no coefficient (both paths
    agree, and the slice is zero there)."""
    table, ice = get_table("peng"), IceModel(300.0, 4.8775, 0.7591)
    fp = build_fourier_projector(ubiquitin, table, pixel_size_a=3.0, ice=ice, absorption_ratio=ice.absorption_ratio)
    fp.band_limit_per_a = None  # sample every frequency of the box, most outside the cube
    rotations = torch.as_tensor(rotation_zyz_deg(20, 40, 60))[None]
    box = 2 * fp.size
    fused, plain = _both(fp, rotations, torch.tensor([[box * 1.5, box * 1.5]]), box, None, monkeypatch)
    assert float((fused - plain).norm() / plain.norm()) < 2e-4


def test_gradients_take_the_torch_path(ubiquitin):
    table, ice = get_table("peng"), IceModel(300.0, 4.8775, 0.7591)
    fp = build_fourier_projector(ubiquitin, table, pixel_size_a=4.0, ice=ice, absorption_ratio=ice.absorption_ratio)
    offsets = torch.tensor([[40.0, 44.0]], dtype=torch.float64, requires_grad=True)
    out = fp.project(torch.as_tensor(rotation_zyz_deg(10, 20, 30))[None], offsets, fp.box_px())
    out.square().sum().backward()
    assert offsets.grad is not None and bool(torch.isfinite(offsets.grad).all())
