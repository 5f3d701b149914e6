"""Ice thickness profiles (specimen/geometry.py): the counts across a hole follow Beer–Lambert in the local ice path,
pixel by pixel, untilted and along tilted rays."""

import math

import numpy as np
import pytest
import torch

from difftem import simulate, simulate_tilt_series
from difftem.core.grid import Grid
from difftem.core.rotations import tilt_rotation
from difftem.forward.beam import interaction_constant
from difftem.forward.potential import ice_absorption_potential_v
from difftem.specimen.geometry import IceProfile

P_A, N = 4.0, 256
HOLE = {"kind": "hole", "edge_thickness_nm": 80.0, "hole_diameter_nm": 80.0, "centre_a": [40.0, -20.0]}


def _cfg(pixel_a=P_A, **extra):
    # in focus (defocus at the ice mid-plane 0): the phase steps of the meniscus make no Fresnel fringes to speak of
    cfg = {"seed": 1, "beam": {"voltage_kv": 300, "dose_e_per_a2": 100.0}, "optics": {"defocus_um": 0.0},
           "detector": {"shape_px": [N, N], "pixel_size_a": pixel_a, "noise": "none"},
           "sample": {"ice_thickness_nm": 30.0, "ice_structure": {"mode": "off"}, "ice_profile": HOLE}}
    cfg.update(extra)
    return cfg


def _ray_paths_a(profile: IceProfile, angle_deg: float, n_steps: int = 4000, pixel_a: float = P_A) -> np.ndarray:
    """Each pixel's path (Å) through the ice, by marching along the straight ray in the specimen frame."""
    r = tilt_rotation(angle_deg, 0.0)
    d = r.T @ np.array([0.0, 0.0, 1.0])  # the beam direction in the specimen frame
    g = Grid((N, N), pixel_a)
    oy, ox = g.origin_a
    y = np.arange(N) * pixel_a - oy
    x = np.arange(N) * pixel_a - ox
    xx, yy = np.meshgrid(x, y)
    # the ray through view pixel (x, y) crosses the specimen mid-plane at Rᵀ(x, y, z_t)
    zt = -(r[0, 2] * xx + r[1, 2] * yy) / r[2, 2]
    v = np.stack([xx, yy, zt], -1)
    p0 = v @ r  # Rᵀ v, row-wise
    half = 2 * 80.0 * 10 / math.cos(math.radians(angle_deg))
    s = np.linspace(-half, half, n_steps)
    ds = s[1] - s[0]
    path = np.zeros((N, N))
    for si in s:
        pt = p0 + si * d
        t = profile.thickness_at(torch.as_tensor(pt[..., 0]), torch.as_tensor(pt[..., 1])).numpy()
        path += (2 * np.abs(pt[..., 2]) <= t) * ds
    return path


def _rim(angle_deg: float, width_px: int = 6, pixel_a: float = P_A) -> np.ndarray:
    """Pixels whose ray passes within ``width_px`` of the hole's rim inside the ice."""
    g = Grid((N, N), pixel_a)
    oy, ox = g.origin_a
    xx, yy = np.meshgrid(np.arange(N) * pixel_a - ox, np.arange(N) * pixel_a - oy)
    xs = xx / math.cos(math.radians(angle_deg))  # the mid-plane crossing of a ray tilted about y
    r = np.hypot(xs - 40.0, yy + 20.0)
    margin = width_px * pixel_a / math.cos(math.radians(angle_deg)) + 800.0 * math.tan(math.radians(angle_deg)) / 2
    return np.abs(r - 400.0) < margin


def _beer_lambert(path_a):
    return np.exp(-2 * interaction_constant(300) * ice_absorption_potential_v(300) * path_a)


def _check(intensity, path, rim):
    """Every pixel within 1 % of Beer–Lambert, except where the ray crosses the rim (the thickness has a kink there,
    whose refraction makes a Fresnel fringe, a real effect)."""
    expected = _beer_lambert(path)
    err = np.abs(intensity / expected - 1)
    assert float(np.median(err)) < 0.002, float(np.median(err))
    assert float(err[~rim].max()) < 0.01, float(err[~rim].max())
    assert float(err[rim].max()) < 0.05
    # and the profile is really there: the rim passes much less than the centre
    assert expected.max() / expected.min() > 1.5


def test_counts_across_a_hole_follow_beer_lambert_per_pixel():
    r = simulate(_cfg())
    profile = IceProfile("hole", 300.0, 800.0, 400.0, (40.0, -20.0))
    path = _ray_paths_a(profile, 0.0)
    counts = r.noiseless.double().numpy() / (100.0 * P_A**2)
    _check(counts, path, _rim(0.0))
    assert r.metadata["ice_structure"]["profile"] == "hole"


def test_tilted_rays_cross_the_hole_profile():
    """At 20° (8 Å pixels: a 2 µm field, so most rays miss the rim), each pixel against the path marched along its
    ray through the tilted hole."""
    cfg = _cfg(pixel_a=8.0, tilt_series={"scheme": "list", "angles_deg": [20.0], "damage": "none"})
    r = simulate_tilt_series(cfg)
    profile = IceProfile("hole", 300.0, 800.0, 400.0, (40.0, -20.0))
    path = _ray_paths_a(profile, 20.0, pixel_a=8.0)
    rim = _rim(20.0, pixel_a=8.0)
    assert rim.mean() < 0.3
    _check(r.noiseless[0].double().numpy() / (100.0 * 8.0**2), path, rim)


def test_wedge_and_structured_ice_follow_the_local_thickness():
    """A wedge with structured ice: the projected fluctuation's variance follows the local thickness."""
    cfg = _cfg()
    cfg["sample"]["ice_profile"] = {"kind": "wedge", "wedge_slope_deg": 4.0}
    cfg["sample"]["ice_structure"] = {"mode": "slices"}
    cfg["detector"]["pixel_size_a"] = 1.0
    cfg["detector"]["shape_px"] = [128, 512]
    r = simulate(cfg, keep_potential=True)
    v = r.projected_potential.real.double()
    left, right = v[:, 32:96], v[:, -96:-32]
    t_left = 300.0 + math.tan(math.radians(4.0)) * (64 - 256)
    t_right = 300.0 + math.tan(math.radians(4.0)) * (512 - 64 - 256)
    # the mean follows the continuum, the variance the thickness
    assert float(right.mean() - left.mean()) == pytest.approx(4.8775 * (t_right - t_left), rel=0.02)
    ratio = float(right.var() / left.var())
    assert ratio == pytest.approx(t_right / t_left, rel=0.3), (ratio, t_right / t_left)
