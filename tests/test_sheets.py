"""Flat bilayers (specimen/sheets.py, forward/sheets.py): a horizontal sheet projects to the profile's integral (an
independent quadrature), edge-on to the profile itself with its leaflets at the set spacing, a disc's total is the
same at every tilt, any chunking sums to one projection, and bad configs give one-line errors naming the field."""

import math

import numpy as np
import pytest
import torch

from difftem import simulate
from difftem.config import config_from_dict
from difftem.core.errors import ConfigError
from difftem.core.grid import Grid
from difftem.core.rotations import tilt_rotation
from difftem.forward.sheets import EDGE_SAMPLES, ViewSheets, antiderivative_v_a
from difftem.forward.support import ViewLayers
from difftem.specimen.sheets import sheets_from_config


def _sheets(*entries, ice_nm=40.0, shape=(128, 128), pixel=1.0):
    cfg = config_from_dict({"sample": {"ice_thickness_nm": ice_nm, "membrane_sheets": list(entries)},
                            "detector": {"shape_px": list(shape), "pixel_size_a": pixel}})
    return sheets_from_config(cfg), Grid(tuple(shape), pixel)


def _quadrature(bilayer) -> float:
    """∫ΔV du by the trapezoid rule on a 1e-3 Å grid of the analytic profile (independent of the closed form)."""
    w = bilayer.half_extent_a
    u = torch.linspace(-w, w, int(2 * w / 1e-3) + 1, dtype=torch.float64)
    return float(torch.trapezoid(bilayer.potential_v(u), u))


@pytest.mark.parametrize("blur", [False, True])
def test_horizontal_sheet_projects_to_the_profile_integral(blur):
    """An unbounded horizontal sheet: at 0° every pixel carries ∫ΔV du (to 1e-6 of it), at 40° that over cos 40°
    (the longer path), whatever the sheet's height; the closed-form antiderivative matches the quadrature."""
    sheets, grid = _sheets({"centre_a": [0.0, 0.0, 37.0]}, shape=(64, 64))
    for theta in (0.0, 40.0):
        view = ViewSheets(sheets, tilt_rotation(theta, 15.0), 1.0, 0.0, field_grid=grid, blur=blur)
        integral = _quadrature(view.bilayers[0])
        assert abs(integral) > 1.0  # V·Å: heads above the ice, the core below, not cancelling
        proj = view.projected_v_a(grid, -1000.0, 1000.0)
        expect = integral / math.cos(math.radians(theta))
        assert (proj - expect).abs().max() < 1e-6 * abs(expect)  # measured 4e-13 relative
    w = view.bilayers[0].half_extent_a
    closed = float(antiderivative_v_a(view.bilayers[0], torch.tensor(w + 5.0, dtype=torch.float64)))
    assert closed == pytest.approx(integral, rel=1e-8)


@pytest.mark.parametrize("separation_nm", [3.8, 4.4])
def test_edge_on_sheet_shows_the_leaflets_at_the_set_spacing(separation_nm):
    """A vertical disc (normal along x) seen at 0°: through its centre the projection is ΔV(x)·2R (the chord; the
    rim's radii average to R), and its two maxima, the head groups, lie the set separation apart (0.5 Å)."""
    r_a = 100.0
    sheets, grid = _sheets({"centre_a": [2.0, 0.0, 0.0], "normal": [1.0, 0.0, 0.0], "radius_nm": r_a / 10,
                            "profile": {"headgroup_separation_nm": separation_nm}}, shape=(480, 320), pixel=0.5)
    view = ViewSheets(sheets, np.eye(3), 0.5, 0.0, field_grid=grid)
    proj = view.projected_v_a(grid, -500.0, 500.0)
    oy, ox = grid.origin_a
    x = torch.arange(320, dtype=torch.float64) * 0.5 - ox - 2.0
    row = proj[int(oy / 0.5)]
    ref = view.bilayers[0].potential_v(x) * 2 * r_a
    assert (row - ref).abs().max() < 1e-9 * ref.abs().max()
    prof = row.numpy()
    peaks = [i for i in range(1, 319) if prof[i] > prof[i - 1] and prof[i] >= prof[i + 1] and prof[i] > 0]
    assert len(peaks) == 2
    at = [x[i].item() + 0.5 * 0.5 * (prof[i - 1] - prof[i + 1]) / (prof[i - 1] - 2 * prof[i] + prof[i + 1])
          for i in peaks]
    assert at[1] - at[0] == pytest.approx(separation_nm * 10, abs=0.5)  # measured 37.6 (38), 43.8 (44)
    assert proj[int(oy / 0.5) + int(1.1 * r_a / 0.5)].abs().max() == 0  # nothing beyond the rim


def test_tilted_disc_keeps_its_total():
    """A horizontal disc (R = 60 Å) at 0°, 30° and 60° about an axis at 20°: ∫∫P dx dy is the disc's area (its rim
    spread over a pixel: R² + mean offset²) times ∫ΔV du, within 1e-3, and the projection moves with the tilt."""
    sheets, grid = _sheets({"centre_a": [10.0, -5.0, 20.0], "radius_nm": 6.0}, shape=(200, 200))
    offsets = ((np.arange(EDGE_SAMPLES) + 0.5) / EDGE_SAMPLES - 0.5)
    for theta in (0.0, 30.0, 60.0):
        rot = tilt_rotation(theta, 20.0)
        view = ViewSheets(sheets, rot, 1.0, 0.0, field_grid=grid)
        expect = math.pi * (60.0**2 + (offsets**2).mean()) * _quadrature(view.bilayers[0])
        proj = view.projected_v_a(grid, -300.0, 300.0)
        assert proj.sum().item() == pytest.approx(expect, rel=1e-3), theta  # measured ≤ 1e-4
        oy, ox = grid.origin_a
        yy, xx = torch.meshgrid(torch.arange(200.0) - oy, torch.arange(200.0) - ox, indexing="ij")
        w = proj.abs()
        cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        ex, ey, _ = rot @ np.array([10.0, -5.0, 20.0])
        assert math.hypot(cx - ex, cy - ey) < 0.5


@pytest.mark.parametrize("entry, theta, axis", [
    ({"centre_a": [5.0, 3.0, -10.0], "normal": [0.3, -0.2, 1.0], "radius_nm": 3.5}, 50.0, 0.0),
    ({"centre_a": [0.0, 0.0, 12.0], "normal": [0.1, 0.05, 1.0]}, -30.0, 0.0),
    ({"centre_a": [0.0, 0.0, 12.0]}, 40.0, 90.0),  # n_x = 0 in the view: whole rows in or out
    ({"centre_a": [0.0, 0.0, 0.0], "normal": [1.0, 0.0, 0.0], "radius_nm": 4.0}, 0.0, 0.0),
])
def test_any_chunking_sums_to_one_projection(entry, theta, axis):
    """Chunks of 7.3 Å (cutting the bilayer anywhere) and of 2 Å, each evaluating only the strip of pixels whose
    ray can meet the bilayer within it, sum to the single-chunk projection (1e-9)."""
    sheets, grid = _sheets(entry, shape=(96, 96))
    view = ViewSheets(sheets, tilt_rotation(theta, axis), 1.0, 0.0, field_grid=grid)
    whole = view.projected_v_a(grid, -600.0, 600.0)
    assert whole.abs().max() > 1
    lo, hi = view.z_range_a()
    for step in (7.3, 2.0):
        edges = np.arange(lo - 3.1, hi + step, step)
        parts = [view.projected_v_a(grid, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        total = sum(p for p in parts if p is not None)
        assert (total - whole).abs().max() < 1e-9 * whole.abs().max()


def test_view_layers_carry_sheets_with_absorption():
    """Through ViewLayers the chunks' fields sum to the projection, with the absorption ratio as imaginary part."""
    sheets, grid = _sheets({"centre_a": [0.0, 0.0, 5.0], "normal": [0.2, 0.0, 1.0], "radius_nm": 4.0}, shape=(96, 96))
    view = ViewSheets(sheets, np.eye(3), 1.0, 0.2, field_grid=grid)
    layers = ViewLayers(None, None, np.eye(3), chunk_a=12.0, sheets=view, cdtype=torch.complex128)
    layers.plan(-100.0, 2.0, 100, 0.0)
    chunks = sorted({c for k in range(100) if (c := layers.chunk_of(k)) is not None})
    assert len(chunks) >= 3
    total = sum(layers.field(c, grid) for c in chunks)
    ref = view.projected_v_a(grid, -100.0, 100.0)
    assert (total.real - ref).abs().max() < 1e-9 * ref.abs().max()
    assert torch.allclose(total.imag, 0.2 * total.real, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("entry, field", [
    ({"centre_a": [0, 0, 150], "radius_nm": 5}, "sample.membrane_sheets.0.centre_a"),
    ({"centre_a": [0, 0, 0], "normal": [1, 0, 0], "radius_nm": 20}, "sample.membrane_sheets.0.centre_a"),
    ({"centre_a": [50, 0, 0], "radius_nm": 5}, "sample.membrane_sheets.0.centre_a"),
    ({"normal": [1, 0, 0]}, "sample.membrane_sheets.0.normal"),
    ({"normal": [2, 0, 1]}, "sample.membrane_sheets.0.centre_a"),
    ({"normal": [0, 0, 0]}, "sample.membrane_sheets.0.normal"),
    ({"radius_nm": 0}, "sample.membrane_sheets.0.radius_nm"),
    ({"profile": {"headgroup_sigma_a": 0}}, "sample.membrane_sheets.0.profile.headgroup_sigma_a"),
])
def test_config_errors_name_the_field(entry, field):
    """A disc leaving the ice (30 nm) or the field (10 nm), a vertical or a too steep unbounded plane, a zero
    normal, bad bounds: one line naming the field."""
    with pytest.raises(ConfigError) as err:
        _sheets(entry, ice_nm=30.0, shape=(100, 100))
    msg = str(err.value)
    assert field in msg and "\n" not in msg, msg


def test_at_most_100_sheets():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"sample": {"membrane_sheets": [{}] * 101}})
    assert "sample.membrane_sheets" in str(err.value) and "\n" not in str(err.value)


def test_image_and_volume_hold_the_sheet():
    """A noise-free in-focus micrograph of an edge-on disc: the head groups absorb, two dark lines the set
    separation apart (2 Å); run.json records the sheet; the ground-truth volume summed along z is the images'
    projection (1 %); without sheets the image is unchanged by the new code path."""
    from difftem.simulate.pipeline import potential_volume

    cfg = {"seed": 3, "optics": {"defocus_um": 0.0},
           "sample": {"ice_thickness_nm": 30, "ice_structure": {"mode": "off"}, "particles": [],
                      "membrane_sheets": [{"centre_a": [0.0, 0.0, 0.0], "normal": [1.0, 0.0, 0.0],
                                           "radius_nm": 4.0}]},
           "beam": {"dose_e_per_a2": 1000}, "detector": {"shape_px": [96, 96], "pixel_size_a": 1.0, "noise": "none"}}
    res = simulate(cfg)
    img = res.intensity.double().numpy()
    prof = img[40:56].mean(0)  # rows through the disc's middle
    k = np.exp(-0.5 * (np.arange(-3, 4) / 1.0) ** 2)
    prof = np.convolve(prof, k / k.sum(), mode="same")
    x = np.arange(96) - 48
    inner = np.flatnonzero(np.abs(x) < 30)
    minima = [i for i in inner if prof[i] < prof[i - 1] and prof[i] <= prof[i + 1]]
    minima = sorted(sorted(minima, key=lambda i: prof[i])[:2])
    assert len(minima) == 2 and x[minima[1]] - x[minima[0]] == pytest.approx(38, abs=2)
    assert prof[48 + 40] - prof[minima[0]] > 1e-3  # visibly darker than the ice beside it
    assert res.metadata["membrane_sheets"]["radii_a"] == [40.0]
    vol, v = potential_volume(cfg)
    sheets, grid = _sheets(cfg["sample"]["membrane_sheets"][0], ice_nm=30.0, shape=(96, 96))
    proj = ViewSheets(sheets, np.eye(3), 1.0, 0.0, field_grid=grid).projected_v_a(grid, -500, 500)
    summed = vol.double().sum(0) * v
    assert (summed - proj).abs().max() < 0.01 * proj.abs().max()
    plain = dict(cfg, sample=dict(cfg["sample"], membrane_sheets=[]))
    assert "membrane_sheets" not in simulate(plain).metadata


def test_tiles_join_the_sheets_as_the_whole_field():
    """64 px tiles give the whole field's image of a tilted disc and an unbounded horizontal plane (5e-4 of the
    mean); the differentiable simulator refuses sheets in one line."""
    import copy

    from difftem.core.errors import ConfigError as Refused
    from difftem.simulate.differentiable import DifferentiableSimulator

    cfg = {"seed": 8, "optics": {"defocus_um": 0.5},
           "sample": {"ice_thickness_nm": 30, "ice_structure": {"mode": "off"}, "particles": [],
                      "membrane_sheets": [{"centre_a": [10.0, -20.0, 0.0], "normal": [1.0, 0.5, 0.3],
                                           "radius_nm": 8.0}, {"centre_a": [0.0, 0.0, 40.0]}]},
           "detector": {"shape_px": [160, 160], "pixel_size_a": 2.0, "noise": "none"}, "beam": {"dose_e_per_a2": 100}}
    whole = simulate(cfg).intensity.double()
    tiled_cfg = copy.deepcopy(cfg)
    tiled_cfg["simulation"] = {"tile_px": 64}
    tiled = simulate(tiled_cfg).intensity.double()
    assert (tiled - whole).abs().max() < 5e-4 * whole.mean()
    assert (whole.max() - whole.min()) > 0.01 * whole.mean()  # the disc is there
    with pytest.raises(Refused, match="sample.membrane_sheets") as err:
        DifferentiableSimulator(cfg)
    assert "\n" not in str(err.value)
