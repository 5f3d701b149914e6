"""The atom path built tile by tile (forward/potential.py, ATOM_TILE_PX): a slice's atoms spread over a wide box are
summed from sub-boxes around each tile instead of one box-sized structure factor. The sub-box keeps the same margin
as a slice's box does, so the difference from the whole-box sum must stay below what that margin already allows
(the box's own wrap-around against the whole field, measured here on the same specimen)."""

import numpy as np
import pytest
import torch

import difftem
import difftem.forward.potential as potential
from difftem.config import config_from_dict
from difftem.forward.potential import atom_tile_plan, box_margin_px


def _config(positions, window="auto"):
    return config_from_dict({
        "seed": 3, "optics": {"defocus_um": 1.5}, "detector": {"shape_px": [400, 400], "pixel_size_a": 1.0},
        "sample": {"ice_thickness_nm": 6, "ice_structure": {"mode": "off"},
                   "particles": [{"structure": "builtin:1ubi", "representation": "atoms", "positions_a": positions}]},
        "simulation": {"slice_thickness_a": 4.0, "window": window}})


def _intensity(cfg, monkeypatch, **constants):
    for k, v in constants.items():
        monkeypatch.setattr(potential, k, v)
    with torch.no_grad():
        return difftem.simulate(cfg).intensity.double().numpy()


def _rel(a, b):
    c = b - b.mean()
    return float(np.sqrt(((a - b) ** 2).mean() / (c**2).mean()))


def test_tile_plan_only_for_boxes_wider_than_two_sub_boxes():
    m = box_margin_px(1.0)
    tile, sub = atom_tile_plan(4096, 4096, m)
    assert sub == tile + 2 * m and tile >= potential.ATOM_TILE_PX
    assert atom_tile_plan(2 * sub, 2 * sub, m) is None
    assert atom_tile_plan(64, 2 * sub + 1, m) is not None


def test_tiled_atom_path_matches_the_whole_box_within_the_margins_own_error(monkeypatch):
    # copies across the whole field, some on tile borders and across the periodic edge
    spread = [[-180, -170, 0], [-64, 0, 10], [0, 64, -8], [100, -120, 4], [170, 180, -12], [-150, 120, 6]]
    cfg = _config(spread, window="off")
    whole = _intensity(cfg, monkeypatch, ATOM_TILE_PX=10**6)
    tiled = _intensity(cfg, monkeypatch, ATOM_TILE_PX=128)
    # the margin's own error: two copies, built in their slice's box against in the whole field
    pair = _config(spread[:2], window="off")
    boxed = _intensity(pair, monkeypatch, ATOM_TILE_PX=10**6)
    field = _intensity(pair, monkeypatch, ATOM_TILE_PX=10**6, MIN_BOX_MARGIN_PX=10**4)
    assert not np.array_equal(whole, tiled)  # the tiled path ran
    # measured: 1.3e-3 against 0.85e-3 of the contrast (six copies against two), max 3.7e-5 against 3.3e-5
    assert _rel(tiled, whole) < 2 * _rel(boxed, field)
    assert np.abs(tiled - whole).max() < 2 * np.abs(boxed - field).max()
    # the mean is kept to float32 rounding over the slices (1.0e-6 measured since slices are applied in place)
    assert float(tiled.mean()) == pytest.approx(float(whole.mean()), rel=3e-6)
