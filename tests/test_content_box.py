"""A slice whose content covers a small part of the field (a tilted lamella's band at one depth) is transmitted on
its own box: the box holds every copy with a margin for the band limit's ringing, and the images equal those of
the whole-field path."""

import numpy as np
import pytest
import torch

from difftem import simulate_tilt_series
from difftem.config import config_from_dict
from difftem.forward import multislice, potential
from difftem.forward.potential import Patch, content_box, merge_patches


def test_the_box_holds_the_content_with_its_margin_at_fast_sizes():
    spans = [(300, 340, 1000, 1100), (500, 520, 1050, 1060)]
    y0, x0, my, mx = content_box(spans, (2500, 2500), 128, periodic=True)
    assert y0 <= 300 - 128 and y0 + my >= 520 + 128 and x0 <= 1000 - 128 and x0 + mx >= 1100 + 128
    assert my < 2500 and mx < 2500
    for n in (my, mx):  # 2, 3, 5 only: fast transforms
        for f in (2, 3, 5):
            while n % f == 0:
                n //= f
        assert n == 1
    assert content_box([(-5, 40, 0, 50)], (2500, 2500), 128, periodic=True) is None  # wraps round the edge
    assert content_box([(0, 2400, 0, 2400)], (2500, 2500), 128, periodic=True) is None  # most of the field
    clipped = content_box([(-5, 40, 0, 50)], (2500, 2500), 128, periodic=False)  # a window: cut to it
    assert clipped is not None and clipped[0] == 0 and clipped[1] == 0


def test_merged_patches_add_on_the_union_box():
    a = Patch(10, 20, torch.ones(4, 5, dtype=torch.complex64))
    b = Patch(12, 30, 2 * torch.ones(3, 3, dtype=torch.complex64))
    m = merge_patches(a, b, (1000, 1000))
    assert (m.y0, m.x0, tuple(m.potential.shape)) == (10, 20, (5, 13))
    full = torch.zeros(1000, 1000, dtype=torch.complex64)
    full[10:14, 20:25] += 1
    full[12:15, 30:33] += 2
    assert torch.equal(full[10:15, 20:33], m.potential)


@pytest.fixture
def lamella():
    return {"seed": 4, "beam": {"voltage_kv": 300, "dose_e_per_a2": 40}, "optics": {"defocus_um": 3.0},
            "detector": {"shape_px": [768, 768], "pixel_size_a": 4.0, "noise": "none"},
            "sample": {"ice_thickness_nm": 60, "ice_profile": {"kind": "flat"},
                       "vesicles": {"count": 3, "radius_nm": 15, "radius_sd_nm": 3, "radius_min_nm": 10,
                                    "radius_max_nm": 20},
                       "particles": [{"structure": "builtin:1ubi", "random": {"count": 150},
                                      "representation": "map"}]},
            "simulation": {"slice_thickness_a": 50.0, "map_placement": "projection"},
            "tilt_series": {"scheme": "list", "angles_deg": [60.0, -45.0]}}


def test_boxed_slices_give_the_whole_field_images(lamella, monkeypatch):
    """Measured: 2.5e-5–4.3e-5 of the contrast on the 1024² cellular lamella at 0–60° (the ringing beyond the
    box's margin, CONTENT_BOX_MARGIN_PX, is what it drops; with 64 px it was 1.6 % of the scattered wave)."""
    shapes = []
    inner = multislice.Multislice._transmit_in_place
    monkeypatch.setattr(multislice.Multislice, "_transmit_in_place",
                        lambda ms, wave, p: shapes.append(tuple(p.potential.shape)) or inner(ms, wave, p))
    boxed = simulate_tilt_series(config_from_dict(lamella))
    assert any(h * w < 0.6 * 768 * 768 for h, w in shapes)  # the tilted band went through boxes
    monkeypatch.setattr(potential, "CONTENT_BOX_MAX_FRACTION", 0.0)
    whole = simulate_tilt_series(config_from_dict(lamella))
    a, b = whole.noiseless.double(), boxed.noiseless.double()
    contrast = (a - a.mean((-2, -1), keepdim=True)).flatten(1).norm(dim=1)
    err = ((b - a).flatten(1).norm(dim=1) / contrast).numpy()
    print("relative error of the contrast by tilt:", err)
    assert np.all(err < 2e-4), err
