"""Whole-pipeline conventions: contrast sign, translation, dose linearity, API."""

import numpy as np
import pytest
import torch
from conftest import STRUCTURES

from difftem import simulate
from difftem.config import config_from_dict


def cfg(**over):
    d = {
        "seed": 3,
        "beam": {"voltage_kv": 300, "dose_e_per_a2": 40},
        "optics": {"defocus_um": 1.5, "cs_mm": 2.7},
        "detector": {"shape_px": [128, 128], "pixel_size_a": 1.0, "noise": "none",
                     "model": "perfect"},  # Poisson statistics and exact references: the ideal detector
        "sample": {"ice_thickness_nm": 20, "ice_structure": {"mode": "off"},  # the continuum: exact references
                   "particles": [{"structure": str(STRUCTURES / "1ubi_ubiquitin.pdb.gz")}]},
        "simulation": {"slice_thickness_a": 2.0},
    }
    for key, val in over.items():
        section, field = key.split("__")
        d[section][field] = val
    return config_from_dict(d)


def lowpass(img, sigma_px=6.0):
    n = img.shape[-1]
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    g = torch.exp(-2 * (np.pi * sigma_px) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(img.double()) * g).real


def particle_contrast(result):
    img = lowpass(result.noiseless)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    r = torch.sqrt((yy - 64.0) ** 2 + (xx - 64.0) ** 2)
    return float(img[r < 10].mean() - img[(r > 35) & (r < 55)].mean())


@pytest.mark.parametrize("defocus_um", [1.0, 3.0])
def test_protein_is_dark_at_underfocus(shared_data, defocus_um):
    assert particle_contrast(simulate(cfg(optics__defocus_um=defocus_um))) < 0


def test_protein_is_bright_at_overfocus(shared_data):
    assert particle_contrast(simulate(cfg(optics__defocus_um=-1.5))) > 0


def test_whole_pixel_translation_rolls_the_image(shared_data):
    base = cfg()
    moved = cfg()
    moved.sample.particles[0].positions_a = [(3.0, -5.0, 0.0)]
    a, b = simulate(base).noiseless, simulate(moved).noiseless
    torch.testing.assert_close(b, torch.roll(a, shifts=(-5, 3), dims=(0, 1)), rtol=1e-4, atol=1e-3)


def test_dose_scales_counts_linearly(shared_data):
    a = simulate(cfg(beam__dose_e_per_a2=20)).noiseless
    b = simulate(cfg(beam__dose_e_per_a2=60)).noiseless
    torch.testing.assert_close(b, 3 * a, rtol=1e-5, atol=1e-4)


def test_poisson_micrograph_statistics_and_seed(shared_data):
    c = cfg(detector__noise="poisson")
    r1, r2 = simulate(c), simulate(c)
    assert torch.equal(r1.micrograph, r2.micrograph)  # same seed, same image
    c.seed = 4
    assert not torch.equal(simulate(c).micrograph, r1.micrograph)
    resid = (r1.micrograph - r1.noiseless) / r1.noiseless.sqrt()
    assert abs(float(resid.mean())) < 0.02 and float(resid.std()) == pytest.approx(1.0, abs=0.02)


def test_vacuum_counts_equal_dose(shared_data):
    c = cfg(sample__ice_thickness_nm=0)
    c.sample.particles = []
    r = simulate(c)
    np.testing.assert_allclose(r.noiseless.numpy(), 40.0, rtol=1e-5)


def test_ice_attenuation_matches_absorption_potential(shared_data):
    from difftem.forward.beam import interaction_constant

    c = cfg(sample__ice_thickness_nm=50)
    c.sample.particles = []
    r = simulate(c)
    expected = 40 * np.exp(-2 * interaction_constant(300) * 0.7591 * 500)
    np.testing.assert_allclose(r.noiseless.numpy(), expected, rtol=1e-4)


def test_result_metadata(shared_data):
    r = simulate(cfg(), keep_potential=True)
    assert r.projected_potential.shape == (128, 128) and r.exit_wave.dtype == torch.complex64
    assert r.metadata["n_atoms"] == 602 and r.metadata["seed"] == 3
    assert set(r.metadata["timings"]) >= {"multislice_s", "total_s"}


def test_window_matches_full_field(shared_data):
    auto = cfg(detector__shape_px=[288, 288])
    off = cfg(detector__shape_px=[288, 288], simulation__window="off")
    a, b = simulate(auto, keep_potential=True), simulate(off, keep_potential=True)
    assert a.metadata["multislice_window_px"] is not None and b.metadata["multislice_window_px"] is None
    outside = b.exit_wave[0, 0]
    assert float((a.exit_wave - outside).abs().pow(2).sum() / (b.exit_wave - outside).abs().pow(2).sum()) \
        == pytest.approx(1.0, abs=5e-3)
    # The two differ by the far ringing of the band-limited scattered wave (it decays slowly over
    # pixels): the window cuts it at its edge, the periodic field wraps it. Measured: 1.0 %.
    diff = (a.exit_wave - b.exit_wave).abs().pow(2).sum() / (b.exit_wave - outside).abs().pow(2).sum()
    assert float(diff.sqrt()) < 0.015
    assert float((a.noiseless - b.noiseless).abs().max()) < 0.002 * float(b.noiseless.mean())
    pa, pb = a.projected_potential, b.projected_potential
    assert float((pa - pb).abs().pow(2).sum().sqrt() / (pb - pb[0, 0]).abs().pow(2).sum().sqrt()) < 3e-3


def test_api_accepts_dict_and_path_and_warns(shared_data, tmp_path):
    import yaml

    c = cfg(sample__ice_thickness_nm=2)
    c.sample.particles[0].positions_a = [(70.0, 0.0, 0.0)]  # half outside a 128 Å field
    d = c.model_dump(mode="json")
    r = simulate(d)
    assert any("outside" in w for w in r.metadata["warnings"])
    assert any("stick out" in w for w in r.metadata["warnings"])
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    assert torch.equal(simulate(p).micrograph, r.micrograph)


def test_zero_dose_is_warned():
    """A zero dose gives all-zero images; the run says so (it was silent). A dose above zero says nothing."""
    import difftem
    from difftem.config import config_from_dict

    zero = difftem.simulate(config_from_dict({"beam": {"dose_e_per_a2": 0}, "detector": {"shape_px": [32, 32]}}))
    assert float(zero.noiseless.abs().max()) == 0.0
    assert any(w.startswith("beam.dose_e_per_a2 = 0") for w in zero.metadata["warnings"])
    some = difftem.simulate(config_from_dict({"beam": {"dose_e_per_a2": 5}, "detector": {"shape_px": [32, 32]}}))
    assert not any("dose" in w for w in some.metadata["warnings"])
    series = difftem.simulate_tilt_series(config_from_dict({
        "detector": {"shape_px": [32, 32]},
        "tilt_series": {"scheme": "list", "angles_deg": [-10, 10], "total_dose_e_per_a2": 0, "damage": "none"}}))
    assert any(w.startswith("tilt_series.total_dose_e_per_a2 = 0") for w in series.metadata["warnings"])
    both = difftem.simulate_tilt_series(config_from_dict({
        "detector": {"shape_px": [32, 32]},
        "tilt_series": {"scheme": "list", "angles_deg": [-10, 10], "total_dose_e_per_a2": 30,
                        "dose_per_tilt_e_per_a2": [5, 5], "damage": "none"}}))
    assert any("total_dose_e_per_a2 = 30 is not used" in w for w in both.metadata["warnings"])
