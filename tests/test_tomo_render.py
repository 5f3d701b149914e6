"""Volume rendering: Beer–Lambert compositing, view geometry, occlusion order, PNG/GIF outputs."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from difftem.tomo import TomoError, render_volume, turntable_frames
from difftem.tomo.render import TransferFunction, colormap_lut, write_gif, write_panel_png, write_render_png


def blob(shape, centre, sigma=1.5, amp=1.0):
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) - n // 2 for n in shape), indexing="ij")
    return amp * torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * sigma**2))


def render_px(size, shape, xy_vox):
    """Render pixel (row, col) of a volume point (x', y') in voxels, as render_volume lays out its cube."""
    step = math.sqrt(sum(n * n for n in shape)) / size
    return xy_vox[1] / step + (size - 1) / 2, xy_vox[0] / step + (size - 1) / 2


def test_emission_absorption_follows_beer_lambert():
    shape = (20, 24, 24)
    grey = TransferFunction(threshold=0.0, top=1.0, opacity=0.08, colormap="gray")
    img = render_volume(torch.ones(shape), azimuth_deg=0, elevation_deg=0, size_px=64, transfer=grey)
    centre = img[30:34, 30:34].mean(dim=(0, 1))  # rays through the middle cross all Z voxels
    expected = 1 - (1 - 0.08) ** shape[0]
    np.testing.assert_allclose(centre.numpy(), expected, rtol=0.03)
    half = render_volume(0.5 * torch.ones(shape), azimuth_deg=0, elevation_deg=0, size_px=64, transfer=grey)
    # half density: half the extinction, and the emitted colour is the LUT's at t = 0.5
    lut_mid = float(colormap_lut("gray")[127:129, 0].mean())
    expected_half = lut_mid * (1 - (1 - 0.08) ** (0.5 * shape[0]))
    assert float(half[30:34, 30:34, 0].mean()) == pytest.approx(expected_half, rel=0.03)
    assert float(img[0, 0].abs().max()) == 0.0  # rays that miss the volume stay background


@pytest.mark.parametrize("azimuth, elevation", [(0.0, 0.0), (40.0, 0.0), (0.0, 30.0), (-70.0, 0.0)])
def test_mip_puts_a_point_where_the_view_rotation_says(azimuth, elevation):
    shape, size = (24, 32, 40), 96
    centre = (9.0, -6.0, 7.0)
    peak = TransferFunction(threshold=0.0, top=1.0, opacity=0.5, colormap="gray")  # no plateau at the top
    img = render_volume(blob(shape, centre), azimuth_deg=azimuth, elevation_deg=elevation, size_px=size, mode="mip",
                        transfer=peak)[..., 0]
    a, e = math.radians(azimuth), math.radians(elevation)
    x1, y1 = centre[0] * math.cos(a) + centre[2] * math.sin(a), centre[1]  # about y first (as a tilt)
    z1 = -centre[0] * math.sin(a) + centre[2] * math.cos(a)
    y2 = y1 * math.cos(e) - z1 * math.sin(e)  # then about x
    row, col = render_px(size, shape, (x1, y2))
    iy, ix = divmod(int(img.argmax()), size)
    assert abs(iy - row) <= 1.0 and abs(ix - col) <= 1.0


def ball(shape, centre, radius, value):
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) - n // 2 for n in shape), indexing="ij")
    return value * (((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= radius**2).float()


def test_front_object_hides_the_back_one():
    shape = (32, 16, 16)
    vol = ball(shape, (0, 0, -8), 4.5, 1.0) + ball(shape, (0, 0, 8), 4.5, 0.5)  # z < 0 is nearer the viewer
    tf = TransferFunction(threshold=0.0, top=1.0, opacity=0.9, colormap="viridis")
    front = render_volume(vol, azimuth_deg=0, elevation_deg=0, size_px=48, transfer=tf)[23:25, 23:25].mean((0, 1))
    back = render_volume(vol, azimuth_deg=180, elevation_deg=0, size_px=48, transfer=tf)[23:25, 23:25].mean((0, 1))
    lut = colormap_lut("viridis")
    top, mid = lut[-1], lut[127]
    assert float((front - top).abs().max()) < float((front - mid).abs().max())  # sees the dense (top-colour) blob
    assert float((back - mid).abs().max()) < float((back - top).abs().max())  # turned round: the other one


def test_outputs_have_the_expected_size(tmp_path):
    vol = blob((16, 24, 32), (4, -3, 2), 3.0)
    img = render_volume(vol, size_px=40)
    assert img.shape == (40, 40, 3) and float(img.max()) > 0.05 and float(img.min()) >= 0
    panel = write_panel_png(tmp_path / "panel.png", vol, img, 2.0, "t")
    raw = write_render_png(tmp_path / "render.png", img)
    with Image.open(panel) as im:
        assert im.size == (1200, 800) and im.format == "PNG"
        assert np.asarray(im.convert("L")).std() > 1  # not blank
    with Image.open(raw) as im:
        assert im.size == (40, 40)
    frames = turntable_frames(vol, 4, size_px=24)
    gif = write_gif(tmp_path / "turn.gif", frames)
    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.size == (24, 24)
    assert not torch.allclose(frames[0], frames[1])


def test_render_is_differentiable_and_checks_input():
    vol = blob((8, 10, 12), (1, 0, 0), 2.0).requires_grad_(True)
    render_volume(vol, size_px=16, threshold=0.1).sum().backward()
    assert torch.isfinite(vol.grad).all() and float(vol.grad.abs().sum()) > 0
    with pytest.raises(TomoError, match="3-D"):
        render_volume(torch.zeros(4, 4))
    with pytest.raises(TomoError, match="opacity"):
        render_volume(torch.rand(4, 4, 4), opacity=1.5)
    with pytest.raises(TomoError, match="mode"):
        render_volume(torch.rand(4, 4, 4), mode="xray")
    with pytest.raises(TomoError, match="colormap"):
        render_volume(torch.rand(4, 4, 4), colormap="nope")
