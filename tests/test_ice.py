"""Structured vitreous ice (forward/ice.py): the amorphous-ice ring, variance ∝ thickness, one 3-D ice for all tilts,
seeding, the amplitude gradient, tiles."""

import math

import numpy as np
import pytest
import torch

from difftem import simulate, simulate_tilt_series
from difftem.core.grid import Grid
from difftem.core.rotations import tilt_rotation
from difftem.forward.ice import (
    IceStructureModel,
    IceVolume,
    ViewIce,
    amorphous_ice_structure_factor,
    projected_ice_power_spectrum,
    radial_power_spectrum,
)
from difftem.forward.multislice import multislice
from difftem.forward.potential import IceModel, SlicedPotential
from difftem.forward.scattering import get_table

TABLE = get_table("kirkland")


def _ice_only(shape=(512, 512), pixel_a=0.85, thickness_nm=30.0, **ice):
    return {"seed": 5, "beam": {"voltage_kv": 300, "dose_e_per_a2": 40}, "optics": {"defocus_um": 1.0},
            "detector": {"shape_px": list(shape), "pixel_size_a": pixel_a, "noise": "none"},
            "sample": {"ice_thickness_nm": thickness_nm, "ice_structure": ice}}


def test_structure_factor_has_the_published_features():
    q = torch.linspace(0.0, 8.0, 4001, dtype=torch.float64)
    s = amorphous_ice_structure_factor(q)
    first = float(q[torch.argmax(s)])
    assert 1.65 <= first <= 1.75  # LDA's first sharp diffraction peak, d = 2π/q ≈ 3.7 Å
    assert float(s[0]) < 0.05  # nearly hyperuniform at q → 0
    assert abs(float(s[-1]) - 1) < 0.02 and float(s.min()) >= 0


def test_ice_only_micrograph_shows_the_amorphous_ice_ring():
    """300 kV, 0.85 Å/px, noise-free, ice only: the radial power spectrum peaks within 3.5–4.2 Å, ≥ 10 % above the
    bands either side (4.5–6 Å and 3.0–3.3 Å)."""
    r = simulate(_ice_only())
    assert r.metadata["ice_structure"]["mode"] == "slices"
    s, p = radial_power_spectrum(r.noiseless, 0.85, 150)
    d = np.where(s > 0, 1 / np.maximum(s, 1e-9), np.inf)

    def band(lo, hi):
        return p[(d >= lo) & (d < hi)].mean()

    ring, outer, inner = band(3.5, 4.2), band(4.5, 6.0), band(3.0, 3.3)
    assert ring > 1.10 * max(outer, inner), (ring, outer, inner)
    # the maximum of the smoothed profile between 2.8 and 8 Å lies in the ring
    sel = (d >= 2.8) & (d <= 8.0)
    smooth = np.convolve(p, np.ones(7) / 7, mode="same")
    assert 3.5 <= d[sel][np.argmax(smooth[sel])] <= 4.2
    # off: a constant image
    flat = simulate(_ice_only(shape=(128, 128), mode="off")).noiseless
    assert float(flat.std() / flat.mean()) < 1e-5


def _projected_fluctuation(thickness_a, seed=1, shape=(256, 256), pixel_a=1.0, mode="slices", rotation=None):
    model = IceStructureModel(TABLE, pixel_a, seed, chunk_a=1e4)
    grid = Grid(shape, pixel_a)
    volume = None
    if mode == "3d":
        from difftem.forward.ice import volume_shape

        vshape, v = volume_shape(shape, pixel_a, thickness_a, 0.0)
        volume = IceVolume(model, vshape, v)
    ice = ViewIce(model, grid, 0, volume=volume, rotation=np.eye(3) if rotation is None else rotation)
    ice.plan(-thickness_a / 2, 2.0, math.ceil(thickness_a / 2.0), thickness_a)
    return ice.field(0, grid).real.double()


def _analytic_variance(thickness_a, pixel_a=1.0, shape=(256, 256)):
    from difftem.forward.potential import antialias_mask

    g = Grid(shape, pixel_a)
    k2 = g.k2(dtype=torch.float64)
    psd = projected_ice_power_spectrum(k2, thickness_a, TABLE) * antialias_mask(k2, pixel_a) ** 2
    return float(psd.sum() / (shape[0] * shape[1] * pixel_a**2))


@pytest.mark.parametrize("mode", ["slices", "3d"])
def test_projected_variance_grows_linearly_with_thickness(mode):
    """Per-slice fields and the 3-D realisation (at 0°) both give the analytic T·∫P₃ over the band."""
    shape, ts, seeds = ((256, 256), [100.0, 200.0, 400.0], (1, 2)) if mode == "slices" else \
        ((96, 96), [50.0, 100.0, 200.0], (1, 2, 3))
    var = [float(np.mean([_projected_fluctuation(t, seed=s, mode=mode, shape=shape).var() for s in seeds]))
           for t in ts]
    for t, v in zip(ts, var, strict=True):
        ref = _analytic_variance(t, shape=shape)
        assert abs(v / ref - 1) < 0.12, (mode, t, v, ref)
    slope = np.polyfit(np.log(ts), np.log(var), 1)[0]
    assert abs(slope - 1) < 0.06, slope


def test_two_tilts_project_the_same_3d_ice():
    """Central section: the 1-D projection along x (the kx = 0 line of each view's 2-D transform, along the tilt
    axis y) over one period of the ice is the same at 0° and at 41.4° (cos θ = 0.75): both are ∫∫ V du dz."""
    p, thickness = 0.85, 120.0
    nx_vol, n_x0 = 264, 256
    v = n_x0 * p / nx_vol  # one period of the volume in x = 256 pixels at 0°, 192 at cos θ = 0.75
    theta = math.degrees(math.acos(0.75))

    def line(seed, angle):
        model = IceStructureModel(TABLE, p, seed)
        vol = IceVolume(model, (math.ceil(thickness / v) + 16, 72, nx_vol), v)
        nx = n_x0 if angle == 0 else round(n_x0 * 0.75)
        grid = Grid((48, nx), p)
        t_view = thickness / math.cos(math.radians(angle))
        proj = vol.project(tilt_rotation(angle, 0.0), grid, -t_view / 2, t_view / 2).double()
        return proj.sum(1) * p  # V·Å² per row

    a0, a1, b1 = line(7, 0.0), line(7, theta), line(8, theta)

    def rel(x, y):
        x, y = x - x.mean(), y - y.mean()
        return float((x - y).norm() / x.norm())

    same, independent = rel(a0, a1), rel(a0, b1)
    assert same < 0.2 and independent > 1.0, (same, independent)


@pytest.mark.parametrize("axis_deg", [0.0, 30.0])
def test_tilted_view_of_the_3d_ice_has_the_slab_spectrum(axis_deg):
    """A view at 50° through the 3-D ice (the volume turned by the tilt axis, planes summed along the rays) has,
    band by band, the power spectrum T/cos θ · P₃(kx, ky, 0) of the slab it crosses (within 10 %; the lowest
    frequencies, where a non-periodic crop's leakage dominates, left out)."""
    from difftem.core.fft import fft2, freq_grid_per_a
    from difftem.forward.ice import volume_shape
    from difftem.forward.potential import antialias_mask

    p, thickness, n, angle = 1.0, 100.0, 160, 50.0
    grid = Grid((n, n), p)
    ky, kx = freq_grid_per_a((n, n), p)
    k2 = ky**2 + kx**2
    path = thickness / math.cos(math.radians(angle))
    ref = projected_ice_power_spectrum(k2, path, TABLE) * antialias_mask(k2, p) ** 2
    k = k2.sqrt()
    edges = np.linspace(0.07, 1 / (3 * p), 5)
    ratios = []
    for seed in (1, 2, 3):
        shape, v = volume_shape((n, n), p, thickness, 60.0, axis_deg)
        vol = IceVolume(IceStructureModel(TABLE, p, seed), shape, v, axis_deg=axis_deg)
        img = vol.project(tilt_rotation(angle, axis_deg), grid, -path / 2, path / 2).double()
        power = fft2(img - img.mean()).abs() ** 2 * p**2 / (n * n)
        ratios.append([float(power[(k >= a) & (k < b)].mean() / ref[(k >= a) & (k < b)].mean())
                       for a, b in zip(edges[:-1], edges[1:], strict=True)])
    ratios = np.mean(ratios, 0)
    assert np.all(np.abs(ratios - 1) < 0.10), ratios


def test_chunks_from_the_band_keep_the_image_spectrum():
    """At 4 Å/px through 200 nm the default chunk (where the band edge's Fresnel phase reaches 0.1 rad, ~230 Å)
    merges ~20 of the 10 Å chunks into one; on the same 3-D ice, the noise-free image's radial power spectrum
    stays within 3 % of the 10 Å chunks' in the band (the lumping error is second order in the phase)."""
    from difftem.forward.ice import auto_chunk_a

    def run(chunk_a):
        cfg = _ice_only(shape=(192, 192), pixel_a=4.0, thickness_nm=200.0, mode="3d",
                        **({"chunk_a": chunk_a} if chunk_a else {}))
        cfg["optics"]["defocus_um"] = 3.0
        cfg["simulation"] = {"slice_thickness_a": 20.0}
        return simulate(cfg)

    auto, fine = run(None), run(10.0)
    assert auto.metadata["ice_structure"]["chunk_a"] == pytest.approx(auto_chunk_a(4.0, 0.019687), rel=1e-3)
    assert auto.metadata["ice_structure"]["chunk_a"] > 200
    s, p_auto = radial_power_spectrum(auto.intensity, 4.0, 12)
    _, p_fine = radial_power_spectrum(fine.intensity, 4.0, 12)
    band = (s > 0.01) & (s < 0.075)
    ratio = p_auto[band] / p_fine[band]
    assert np.all(np.abs(ratio - 1) < 0.03), ratio
    assert not torch.equal(auto.intensity, fine.intensity)


def test_auto_keeps_the_3d_ice_only_when_it_is_cheap():
    """auto: a small series keeps the 3-D ice; a 512² series through 40 nm, where the volume would cost many times
    the rest of the run, draws per-slice fields, with both estimates in the metadata and a note."""
    from difftem.config import config_from_dict
    from difftem.simulate.setup import Setup

    small = _ice_only(shape=(64, 64), pixel_a=1.0, thickness_nm=5.0)
    small["tilt_series"] = {"scheme": "list", "angles_deg": [-30, 0, 30], "damage": "none"}
    assert Setup.build(config_from_dict(small)).ice_mode == "3d"
    big = _ice_only(shape=(512, 512), pixel_a=1.0, thickness_nm=40.0)
    big["tilt_series"] = {"scheme": "list", "angles_deg": [-60, 0, 60], "damage": "none"}
    setup = Setup.build(config_from_dict(big))
    est = setup.ice_metadata()["estimated_s"]
    assert setup.ice_mode == "slices" and est["3d"] > 5 * est["slices"], est
    assert any("would take" in n and "mode: 3d" in n for n in setup.notes), setup.notes
    big["sample"]["ice_structure"] = {"mode": "3d"}
    assert Setup.build(config_from_dict(big)).ice_mode == "3d"


def test_tilt_series_uses_one_volume_and_falls_back_when_it_does_not_fit():
    cfg = _ice_only(shape=(64, 64), pixel_a=1.0, thickness_nm=5.0)
    cfg["tilt_series"] = {"scheme": "list", "angles_deg": [-30, 0, 30], "damage": "none"}
    r = simulate_tilt_series(cfg)
    meta = r.metadata["ice_structure"]
    assert meta["mode"] == "3d" and meta["volume_shape_zyx"][0] > 50
    cfg["simulation"] = {"max_memory_gb": 0.3}
    cfg["detector"]["shape_px"] = [1024, 1024]
    cfg["sample"]["ice_thickness_nm"] = 100
    from difftem.config import config_from_dict
    from difftem.simulate.setup import Setup

    setup = Setup.build(config_from_dict(cfg))
    assert setup.ice_mode == "slices" and any("does not fit" in n for n in setup.notes)


def test_seeded_and_differentiable_in_the_amplitude():
    a = _projected_fluctuation(50.0, seed=3, shape=(64, 64))
    assert torch.equal(a, _projected_fluctuation(50.0, seed=3, shape=(64, 64)))
    assert not torch.equal(a, _projected_fluctuation(50.0, seed=4, shape=(64, 64)))

    grid = Grid((64, 64), 1.0)
    empty = torch.zeros(0)
    ice_slab = IceModel(60.0)
    pot = SlicedPotential(empty.long(), torch.zeros(0, 3), empty, empty, grid, TABLE, 2.0, ice_slab)

    def intensity_var(amp):
        model = IceStructureModel(TABLE, 1.0, 9, amplitude=amp, absorption_ratio=ice_slab.absorption_ratio)
        wave = multislice(pot, 0.0197, 6.5e-4, ice=ViewIce(model, grid, 0), checkpoint=True)
        return (wave.abs() ** 2).var()

    amp = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    out = intensity_var(amp)
    out.backward()
    h = 1e-3
    with torch.no_grad():
        fd = (intensity_var(1 + h) - intensity_var(1 - h)) / (2 * h)
    assert float(amp.grad) > 0 and abs(float(amp.grad) / float(fd) - 1) < 1e-2


def test_tiles_join_the_same_ice_as_the_whole_field():
    whole = simulate(_ice_only(shape=(192, 192), pixel_a=1.0, thickness_nm=10.0)).intensity
    cfg = _ice_only(shape=(192, 192), pixel_a=1.0, thickness_nm=10.0)
    cfg["simulation"] = {"tile_px": 96, "antialias_taper_fraction": 0.04}
    tiled = simulate(cfg).intensity
    err = float((tiled - whole).abs().max() / (whole - whole.mean()).abs().max())
    assert err < 0.05, err


def test_particles_with_structured_ice_run_on_the_whole_field():
    cfg = _ice_only(shape=(384, 384), pixel_a=1.0, thickness_nm=10.0)
    cfg["sample"]["particles"] = [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]]}]
    r = simulate(cfg)
    assert r.metadata["multislice_window_px"] is None
    cfg["sample"]["ice_structure"] = {"mode": "off"}
    assert simulate(cfg).metadata["multislice_window_px"] is not None


def test_differentiable_simulator_gradient_in_the_ice_amplitude():
    from difftem import DifferentiableSimulator

    sim = DifferentiableSimulator(_ice_only(shape=(64, 64), pixel_a=1.0, thickness_nm=5.0), precision="double")
    p = sim.parameters(["ice_amplitude"])
    out = sim(p).intensity.var()
    out.backward()
    h = 1e-4

    def at(a):
        q = sim.parameters()
        q["ice_amplitude"] = torch.tensor(a, dtype=torch.float64)
        with torch.no_grad():
            return float(sim(q).intensity.var())

    fd = (at(1 + h) - at(1 - h)) / (2 * h)
    assert abs(float(p["ice_amplitude"].grad) / fd - 1) < 1e-4
    q = sim.parameters()
    q["ice_amplitude"] = torch.tensor(0.0, dtype=torch.float64)
    with torch.no_grad():
        assert float(sim(q).intensity.std()) < 1e-9  # amplitude 0: the continuum alone
