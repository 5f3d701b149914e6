"""Without gradients a slice's band-limited transmission is applied to the wave in place over the slice's box (the
field, or its content's box); with gradients multislice keeps ψ·t of the band-limited t. The two give the same exit
wave to float rounding, with projected copies, structured ice and the atom path."""

import numpy as np
import pytest
import torch

from difftem.config import config_from_dict
from difftem.core.fft import filter2
from difftem.forward.multislice import Multislice
from difftem.forward.scene_build import SceneView
from difftem.simulate.pipeline import view_exit_wave
from difftem.simulate.setup import Setup


def config(representation: str, ice_mode: str) -> dict:
    return {"seed": 5, "beam": {"voltage_kv": 300, "dose_e_per_a2": 40}, "optics": {"defocus_um": 1.0},
            "detector": {"shape_px": [96, 96], "pixel_size_a": 2.0, "noise": "none"},
            "sample": {"ice_thickness_nm": 12, "ice_structure": {"mode": ice_mode},
                       "particles": [{"structure": "builtin:1ubi", "representation": representation,
                                      "positions_a": [[10.0, -8.0, 0.0], [-30.0, 25.0, 20.0]],
                                      "euler_zyz_deg": [[30, 70, -20], [0, 10, 100]]}]},
            "simulation": {"slice_thickness_a": 20.0, "window": "off"}}


@pytest.mark.parametrize("representation,ice_mode", [("map", "slices"), ("map", "off"), ("atoms", "slices")])
def test_fused_transmission_equals_the_graph_paths(representation, ice_mode, monkeypatch):
    setup = Setup.build(config_from_dict(config(representation, ice_mode)))
    view = SceneView(np.eye(3), setup.ice.thickness_a, None)
    calls = []
    fused_fn = Multislice._transmit_in_place
    monkeypatch.setattr(Multislice, "_transmit_in_place", lambda self, *a: calls.append(1) or fused_fn(self, *a))
    with torch.no_grad():
        fused = view_exit_wave(setup, view).wave
    assert calls  # the slices took the in-place path
    with torch.enable_grad():  # the checkpointed path: ψ·t, t = 1 + band-limited (t − 1)
        graph = view_exit_wave(setup, view).wave.detach()
    assert float((fused - 1).abs().max()) > 1e-3  # the specimen scatters
    assert float((fused - graph).abs().max()) < 2e-6


def test_filter2_in_place_only_without_a_graph():
    x = torch.randn(2, 16, 16, dtype=torch.complex64)
    k = torch.rand(16, 16, requires_grad=True)
    with torch.enable_grad():
        out = filter2(x, k)
        out.abs().sum().backward()  # the kernel's gradient needs the unscaled spectrum
    assert k.grad is not None and torch.isfinite(k.grad).all()
    with torch.no_grad():
        np.testing.assert_allclose(filter2(x, k).numpy(), out.detach().numpy(), rtol=0, atol=1e-6)
    wide = torch.rand(16, 16, dtype=torch.float64)  # a kernel of higher precision: the result follows it
    assert filter2(x, wide).dtype == torch.complex128
