"""Lipid vesicles (specimen/membranes.py, forward/membranes.py): a vesicle's projection against an independent 3-D
integration of its profile, the two leaflets in a noise-free image at the set spacing, the projected centre and
shape at a tilt, seeded placement clear of particles, config errors, and runs without vesicles unchanged."""

import copy
import math

import numpy as np
import pytest
import torch

from difftem import simulate
from difftem.config import config_from_dict
from difftem.core.errors import ConfigError
from difftem.core.grid import Grid
from difftem.core.rotations import tilt_rotation
from difftem.forward.membranes import ViewVesicles
from difftem.forward.support import ViewLayers
from difftem.specimen.build import scene_of
from difftem.specimen.membranes import Bilayer, Vesicles, place_vesicles
from difftem.specimen.scene import _segments, segment_distances

DEFAULT = config_from_dict({"sample": {"vesicles": {}}}).sample.vesicles.profile


def _one(centre, radius_a, profile=DEFAULT):
    return Vesicles(np.asarray([centre], dtype=np.float64), np.asarray([radius_a]), Bilayer.from_config(profile))


def _chunked(view: ViewVesicles, grid: Grid, chunk_a: float, lo: float = -400.0, hi: float = 400.0):
    edges = np.arange(lo, hi + chunk_a, chunk_a)
    parts = [view.projected_v_a(grid, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return sum(p for p in parts if p is not None)


def test_projection_matches_a_voxelised_sphere():
    """Chunk by chunk (13 Å chunks cutting the shell anywhere) the projection is the profile's 3-D integral, done
    independently on a fine z grid from the analytic ΔV(r − R) (no table, no Gauss nodes), to 3e-4."""
    grid = Grid((200, 200), 1.0)
    ves = _one((3.3, -6.7, 12.1), 70.0)
    view = ViewVesicles(ves, np.eye(3), 1.0, 0.0, blur=False)
    proj = _chunked(view, grid, 13.0)
    rows = torch.arange(60, 140, 7)  # rows crossing lumen, both walls and the rim
    oy, ox = grid.origin_a
    y = (rows.double() - oy - (-6.7))[:, None, None]
    x = (torch.arange(200, dtype=torch.float64) - ox - 3.3)[None, :, None]
    dz = 0.05
    z = torch.arange(-120, 120, dz, dtype=torch.float64)[None, None, :]
    r = torch.sqrt(x**2 + y**2 + z**2)
    ref = ves.bilayer.potential_v(r - 70.0).sum(-1) * dz
    got = proj[rows]
    scale = ref.abs().max()
    assert scale > 50  # V·Å: a real signal
    assert (got - ref).abs().max() / scale < 3e-4  # measured 5e-5
    # one chunk for the whole depth gives the same projection
    whole = view.projected_v_a(grid, -400.0, 400.0)[rows]
    assert (whole - ref).abs().max() / scale < 3e-4


def _rim_minima(image: np.ndarray, centre_px, radius_a, pixel_a, sigma_a=1.0):
    """The radial intensity profile about ``centre_px`` (0.25 Å bins, smoothed by a Gaussian of ``sigma_a``) and the
    radii (Å) of its two deepest minima within ±35 Å of the mid-plane (parabolic refinement)."""
    ny, nx = image.shape
    yy, xx = np.mgrid[:ny, :nx]
    d = np.hypot((yy - centre_px[0]) * pixel_a, (xx - centre_px[1]) * pixel_a).ravel()
    step = 0.25
    sel = np.abs(d - radius_a) < 60
    bins = np.round((d[sel] - (radius_a - 60)) / step).astype(int)
    nb = int(120 / step) + 1
    total = np.bincount(bins, image.ravel()[sel], nb)
    count = np.bincount(bins, minlength=nb)
    prof = total / np.maximum(count, 1)
    prof = np.interp(np.arange(nb), np.flatnonzero(count), prof[count > 0])
    k = np.arange(-16, 17) * step
    g = np.exp(-0.5 * (k / sigma_a) ** 2)
    prof = np.convolve(prof, g / g.sum(), mode="same")
    rad = radius_a - 60 + np.arange(nb) * step
    inner = (rad > radius_a - 35) & (rad < radius_a + 35)
    idx = [i for i in np.flatnonzero(inner)[1:-1] if prof[i] < prof[i - 1] and prof[i] <= prof[i + 1]]
    idx = sorted(sorted(idx, key=lambda i: prof[i])[:2])
    out = []
    for i in idx:
        a, b, c = prof[i - 1], prof[i], prof[i + 1]
        out.append(rad[i] + step * 0.5 * (a - c) / (a - 2 * b + c))
    return out


@pytest.mark.parametrize("separation_nm", [3.8, 4.4])
def test_leaflets_in_a_noise_free_image_at_the_set_spacing(separation_nm):
    """The issue's check: a noise-free in-focus micrograph (300 kV, 1 Å px, 30 nm ice, no structure) of a vesicle of
    15 nm radius; across its rim (radially averaged, low-passed by 1 Å) the two leaflets are dark lines (their
    absorption) whose spacing is the head-group separation set in the config, within 0.3 nm."""
    cfg = {"seed": 3, "optics": {"defocus_um": 0.0},
           "sample": {"ice_thickness_nm": 50, "ice_structure": {"mode": "off"}, "particles": [],
                      "vesicles": {"centres_a": [[0.0, 0.0, 20.0]], "radius_nm": 15.0,
                                   "profile": {"headgroup_separation_nm": separation_nm}}},
           "beam": {"dose_e_per_a2": 1000}, "detector": {"shape_px": [384, 384], "pixel_size_a": 1.0,
                                                          "noise": "none"}}
    res = simulate(cfg)
    img = res.intensity.double().numpy()
    minima = _rim_minima(img, (192, 192), 150.0, 1.0)
    assert len(minima) == 2
    spacing = minima[1] - minima[0]
    assert spacing == pytest.approx(separation_nm * 10, abs=3.0)  # measured 38.64 (38), 44.31 (44)
    assert abs(0.5 * (minima[0] + minima[1]) - 150.0) < 5.0  # centred on the mid-plane's radius
    # the leaflets are darker than the ice beside the vesicle by a visible amount (absorption contrast, in focus)
    assert img[192, 380] - img.min() > 1e-3
    assert res.metadata["vesicles"]["radii_a"] == [150.0]


def test_tilted_projection_centre_and_shape():
    """At 40° about an axis at 20° the vesicle's projection is centred where tilt_rotation moves its centre, and is
    still a disc (equal second moments along and across the axis); its total is the untilted one's."""
    grid = Grid((320, 320), 1.0)  # the whole disc inside the field
    centre = np.array([30.0, -25.0, 40.0])
    ves = _one(centre, 60.0)
    rot = tilt_rotation(40.0, 20.0)
    expect = rot @ centre
    assert abs(expect[0] - centre[0]) > 15  # the tilt moves it by many pixels
    tilted = _chunked(ViewVesicles(ves, rot, 1.0, 0.0), grid, 11.0).numpy()
    flat = _chunked(ViewVesicles(ves, np.eye(3), 1.0, 0.0), grid, 11.0).numpy()
    oy, ox = grid.origin_a
    yy, xx = np.mgrid[:320, :320]
    x, y = xx - ox, yy - oy
    w = tilted**2
    cx, cy = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    assert cx == pytest.approx(expect[0], abs=0.05) and cy == pytest.approx(expect[1], abs=0.05)
    a = math.radians(20.0)  # along the tilt axis (−sin α, cos α) and across it
    along = (x - cx) * -math.sin(a) + (y - cy) * math.cos(a)
    across = (x - cx) * math.cos(a) + (y - cy) * math.sin(a)
    assert (w * along**2).sum() / (w * across**2).sum() == pytest.approx(1.0, abs=0.01)
    assert tilted.sum() == pytest.approx(flat.sum(), rel=1e-3)


def test_view_layers_carry_vesicles_chunk_by_chunk():
    """Through ViewLayers (no ice fields, no film) the chunks' fields sum to the vesicle's projection with the
    absorption ratio as its imaginary part."""
    grid = Grid((160, 160), 1.0)
    ves = _one((0.0, 0.0, 0.0), 50.0)
    view = ViewVesicles(ves, np.eye(3), 1.0, 0.2)
    layers = ViewLayers(None, None, np.eye(3), chunk_a=12.0, vesicles=view, cdtype=torch.complex128)
    layers.plan(-150.0, 2.0, 150, 0.0)
    chunks = sorted({c for k in range(150) if (c := layers.chunk_of(k)) is not None})
    assert len(chunks) >= 8
    total = sum(layers.field(c, grid) for c in chunks)
    ref = view.projected_v_a(grid, -150.0, 150.0)
    assert (total.real - ref).abs().max() < 1e-4 * ref.abs().max()
    assert torch.allclose(total.imag, 0.2 * total.real, rtol=1e-6, atol=1e-9)


def _placement_config(**ves):
    return config_from_dict({
        "seed": 11, "detector": {"shape_px": [256, 256], "pixel_size_a": 4.0},
        "sample": {"ice_thickness_nm": 80,
                   "particles": [{"structure": "builtin:1ubi", "random": {"count": 6}}],
                   "vesicles": {"count": 8, "radius_nm": 12, "radius_sd_nm": 4, "radius_min_nm": 6,
                                "radius_max_nm": 25, **ves}}})


def test_random_placement_is_seeded_inside_the_ice_and_clear_of_particles():
    cfg = _placement_config()
    scene = scene_of(cfg)
    bounds = [t.bounds for t in scene.types]
    ves = place_vesicles(cfg, bounds, scene.placement)
    again = place_vesicles(cfg, bounds, scene.placement)
    assert len(ves) == 8 and np.array_equal(ves.centres_a, again.centres_a)
    assert ves.radii_a.min() >= 60 and ves.radii_a.max() <= 250 and ves.radii_a.std() > 10
    outer = ves.outer_radii_a
    gap = cfg.sample.vesicles.min_gap_a
    assert (np.abs(ves.centres_a[:, 2]) + outer <= 400 - gap + 1e-9).all()  # inside the 80 nm ice
    d = np.linalg.norm(ves.centres_a[:, None] - ves.centres_a[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (d >= outer[:, None] + outer[None] + gap - 1e-9).all()
    ea, eb, er = _segments(bounds, scene.placement)
    for c, ro in zip(ves.centres_a, outer, strict=True):
        assert (segment_distances(c, c, ea, eb) >= er + ro + gap - 1e-9).all()
    other = place_vesicles(_placement_config(seed_offset=1), bounds, scene.placement)
    assert not np.array_equal(other.centres_a, ves.centres_a)


@pytest.mark.parametrize("ves, field", [
    ({"radius_min_nm": 30, "radius_max_nm": 20}, "sample.vesicles.radius_min_nm"),
    ({"radius_nm": 50, "radius_max_nm": 40}, "sample.vesicles.radius_nm"),
    ({"profile": {"headgroup_sigma_a": 0}}, "sample.vesicles.profile.headgroup_sigma_a"),
    ({"count": 400}, "sample.vesicles.count"),
    ({"count": 0, "centres_a": [[0, 0, 350]]}, "sample.vesicles.centres_a.0"),
])
def test_config_errors_name_the_field(ves, field):
    with pytest.raises(ConfigError) as err:
        cfg = _placement_config(**ves)
        scene = scene_of(cfg)
        place_vesicles(cfg, [t.bounds for t in scene.types], scene.placement)
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_without_vesicles_the_image_is_unchanged():
    """No ``vesicles`` and ``vesicles: {count: 0}`` give bit-identical images (the layer is not built), and the
    run's metadata has no vesicles entry without them."""
    base = {"seed": 5, "sample": {"ice_thickness_nm": 20, "particles": [{"structure": "builtin:1ubi"}]},
            "detector": {"shape_px": [96, 96], "pixel_size_a": 2.0}, "beam": {"dose_e_per_a2": 50}}
    none = simulate(base)
    empty = copy.deepcopy(base)
    empty["sample"]["vesicles"] = {"count": 0}
    zero = simulate(empty)
    assert torch.equal(none.micrograph, zero.micrograph) and torch.equal(none.noiseless, zero.noiseless)
    assert "vesicles" not in none.metadata and zero.metadata["vesicles"]["count"] == 0


def test_tilt_series_sees_the_vesicle_where_the_tilt_moves_it():
    """A noise-free in-focus tilt series (−45°, 0°, 45° about an axis at 10°, structured ice off): in each tilt
    the vesicle's absorption image, the deficit below the ice's level, is centred at tilt_rotation(θ, α) · c."""
    centre = np.array([40.0, -30.0, 60.0])
    cfg = {"seed": 2, "optics": {"defocus_um": 0.0},
           "sample": {"ice_thickness_nm": 40, "ice_structure": {"mode": "off"}, "particles": [],
                      "vesicles": {"centres_a": [centre.tolist()], "radius_nm": 6.0}},
           "beam": {"dose_e_per_a2": 1000}, "detector": {"shape_px": [160, 160], "pixel_size_a": 2.0, "noise": "none"},
           "tilt_series": {"min_deg": -45, "max_deg": 45, "step_deg": 45, "tilt_axis_deg": 10.0}}
    from difftem import simulate_tilt_series

    ts = simulate_tilt_series(cfg)
    yy, xx = np.mgrid[:160, :160]
    for img, angle in zip(ts.noiseless.double().numpy(), ts.angles_deg, strict=True):
        w = (np.median(img) - img).clip(min=0) ** 2  # the leaflets' dark lines (absorption)
        cx, cy = ((w * (xx - 80)).sum() / w.sum() * 2.0, (w * (yy - 80)).sum() / w.sum() * 2.0)
        ex, ey, _ = tilt_rotation(angle, 10.0) @ centre
        assert math.hypot(cx - ex, cy - ey) < 0.1, (angle, cx, cy, ex, ey)  # measured 0.001 Å
    assert ts.metadata["vesicles"]["centres_a"] == [centre.tolist()]


def test_potential_volume_holds_the_vesicle():
    """The ground-truth volume carries ΔV: summed along z it is the images' projection of the same vesicle (1 %),
    with the head-group shells positive and the core negative."""
    from difftem.simulate.pipeline import potential_volume

    cfg = {"sample": {"ice_thickness_nm": 30, "ice_structure": {"mode": "off"}, "particles": [],
                      "vesicles": {"centres_a": [[6.0, -4.0, 10.0]], "radius_nm": 7.0}},
           "detector": {"shape_px": [96, 96], "pixel_size_a": 2.0}}
    vol, v = potential_volume(cfg)
    grid = Grid((96, 96), 2.0)
    proj = ViewVesicles(_one((6.0, -4.0, 10.0), 70.0), np.eye(3), 2.0, 0.0).projected_v_a(grid, -500, 500)
    summed = vol.double().sum(0) * v
    assert (summed - proj).abs().max() < 0.01 * proj.abs().max()
    assert vol.max() > 0.5 and vol.min() < -0.5  # V: the head groups and the core


def test_vesicles_star_and_run_json(tmp_path):
    """The ground truth: vesicles.star read back with the STAR reader matches run.json and the placement."""
    from difftem.io.star import read_star
    from difftem.simulate.output import write_simulation

    cfg = {"seed": 4, "sample": {"ice_thickness_nm": 40, "ice_structure": {"mode": "off"}, "particles": [],
                                 "vesicles": {"count": 3, "radius_nm": 5, "radius_sd_nm": 1, "radius_min_nm": 3,
                                              "radius_max_nm": 8}},
           "detector": {"shape_px": [128, 128], "pixel_size_a": 4.0}, "beam": {"dose_e_per_a2": 20}}
    res = simulate(cfg)
    run = write_simulation(res, tmp_path / "run")
    table = read_star(tmp_path / "run" / "vesicles.star")["vesicles"]
    assert len(table) == 3 and "vesicles.star" in run["outputs"]
    np.testing.assert_allclose(np.asarray(table["difftemRadiusA"], dtype=float), run["vesicles"]["radii_a"])
    np.testing.assert_allclose(np.asarray(table[["difftemCentreXA", "difftemCentreYA", "difftemCentreZA"]],
                                          dtype=float), run["vesicles"]["centres_a"])


def test_tiles_join_the_vesicle_as_the_whole_field():
    """Multislice in 64 px tiles gives the whole field's image (the vesicle's field cut per tile in the scene frame);
    the differentiable simulator refuses vesicles in one line."""
    from difftem.simulate.differentiable import DifferentiableSimulator

    cfg = {"seed": 8, "optics": {"defocus_um": 0.5},
           "sample": {"ice_thickness_nm": 30, "ice_structure": {"mode": "off"}, "particles": [],
                      "vesicles": {"centres_a": [[10.0, -20.0, 0.0]], "radius_nm": 8.0}},
           "detector": {"shape_px": [160, 160], "pixel_size_a": 2.0, "noise": "none"}, "beam": {"dose_e_per_a2": 100}}
    whole = simulate(cfg).intensity.double()
    tiled_cfg = copy.deepcopy(cfg)
    tiled_cfg["simulation"] = {"tile_px": 64}
    tiled = simulate(tiled_cfg).intensity.double()
    assert (tiled - whole).abs().max() < 5e-4 * whole.mean()  # measured 8.9e-5
    assert (whole.max() - whole.min()) > 0.02 * whole.mean()  # the vesicle is there
    with pytest.raises(ConfigError, match="sample.vesicles"):
        DifferentiableSimulator(cfg)


def _embedded_config(**membrane):
    return {"seed": 6, "detector": {"shape_px": [200, 200], "pixel_size_a": 3.0, "noise": "none"},
            "beam": {"dose_e_per_a2": 50}, "optics": {"defocus_um": 1.0},
            "sample": {"ice_thickness_nm": 60, "ice_structure": {"mode": "off"},
                       "particles": [{"structure": "builtin:1ubi", "random": {"count": 4}},
                                     {"structure": "builtin:1ubi", "name": "inserted",
                                      "membrane": {"count": 10, "depth_a": 12.0, "axis": [1.0, 1.0, 0.0],
                                                   **membrane}}],
                       "vesicles": {"count": 2, "radius_nm": 10, "radius_sd_nm": 2, "radius_min_nm": 6,
                                    "radius_max_nm": 14}}}


def test_proteins_embedded_along_the_normal():
    """Embedded copies sit at R + depth from their vesicle's centre with the type's axis along the outward normal,
    clear of each other, of the free particles and of the other vesicle; the scene, the images' ground truth and
    particles.star carry them; the vesicles placed with the scene are the ones the images use."""
    cfg = config_from_dict(_embedded_config())
    scene = scene_of(cfg)
    ves = scene.vesicles
    pl = scene.placement
    emb = np.flatnonzero(pl.type_index == 1)
    assert len(emb) == 10 and (pl.type_index == 0).sum() == 4
    axis = np.array([1.0, 1.0, 0.0]) / math.sqrt(2)
    for i in emb:
        d = np.linalg.norm(ves.centres_a - pl.positions_a[i], axis=1)
        j = int(np.argmin(np.abs(d - (ves.radii_a + 12.0))))
        assert d[j] == pytest.approx(ves.radii_a[j] + 12.0, abs=1e-9)
        normal = (pl.positions_a[i] - ves.centres_a[j]) / d[j]
        assert pl.rotations[i] @ axis == pytest.approx(normal, abs=1e-12)
        assert np.linalg.det(pl.rotations[i]) == pytest.approx(1.0, abs=1e-12)
    ea, eb, er = _segments([t.bounds for t in scene.types], pl)
    for i in emb:
        others = np.arange(len(pl)) != i
        gap = segment_distances(ea[i], eb[i], ea[others], eb[others]) - er[others] - er[i]
        assert (gap >= 2.0 - 1e-9).all()
    res = simulate(_embedded_config())
    names = [r["difftemParticleType"] for r in res.metadata["particles"]]
    assert names.count("inserted") == 10
    assert res.metadata["vesicles"]["centres_a"] == ves.centres_a.round(3).tolist()


@pytest.mark.parametrize("change, field", [
    ({"sample.particles.1.random": {"count": 2}}, "sample.particles.1.membrane"),
    ({"sample.vesicles": None}, "sample.particles.1.membrane"),
    ({"sample.particles.1.membrane.axis": [0, 0, 0]}, "sample.particles.1.membrane.axis"),
    ({"sample.particles.1.membrane.count": 5000}, "sample.particles.1.membrane.count"),
])
def test_embedding_errors_name_the_field(change, field):
    cfg = _embedded_config()
    for key, value in change.items():
        *path, last = key.split(".")
        node = cfg
        for k in path:
            node = node[int(k)] if k.isdigit() else node[k]
        node[last] = value
    with pytest.raises(ConfigError) as err:
        scene_of(config_from_dict(cfg))
    assert field in str(err.value) and "\n" not in str(err.value)


def test_leaflets_at_a_tilt():
    """At 40° in a tilt series (in focus, noise-free) the vesicle at the tilt axis's centre shows the same two
    leaflets at the set spacing: a sphere's projection does not depend on the tilt."""
    from difftem import simulate_tilt_series

    cfg = {"seed": 3, "optics": {"defocus_um": 0.0},
           "sample": {"ice_thickness_nm": 50, "ice_structure": {"mode": "off"}, "particles": [],
                      "vesicles": {"centres_a": [[0.0, 0.0, 0.0]], "radius_nm": 15.0}},
           "beam": {"dose_e_per_a2": 1000}, "detector": {"shape_px": [384, 384], "pixel_size_a": 1.0,
                                                          "noise": "none"},
           "tilt_series": {"scheme": "list", "angles_deg": [40.0], "damage": "none"}}
    ts = simulate_tilt_series(cfg)
    minima = _rim_minima(ts.noiseless[0].double().numpy(), (192, 192), 150.0, 1.0)
    assert len(minima) == 2
    assert minima[1] - minima[0] == pytest.approx(38.0, abs=3.0)  # measured 38.68
