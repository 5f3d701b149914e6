"""The joint spectrum fit (calibrate/spectrum.py): MTF shape, shot-noise level, ice amplitude and particle count
recovered from a spectrum built by the model's own law, and from a simulated micrograph without being told the
MTF."""

import numpy as np
import pytest
import torch

import difftem
from difftem.calibrate.likeness import grid_crops
from difftem.calibrate.spectrum import fit_spectrum
from difftem.core.fft import radial_freq_per_px
from difftem.forward.detector import MTFParams
from difftem.learn.mtf_fit import noise_power_spectrum

TRUE_MTF = MTFParams(0.6, 1.24, -0.84, 0.97, 0.97)


def test_fit_recovers_a_spectrum_made_by_its_law():
    """NPS = MTF² (N + a² I + s P) with a ring-like I and a low-frequency P: every parameter comes back, from a
    start MTF far from the truth."""
    n = 128
    w = radial_freq_per_px((n, n), half=True)
    ice = 40.0 * torch.exp(-((w - 0.23) / 0.04) ** 2)  # a ring
    parts = 300.0 / (1 + (w / 0.03) ** 2)  # particles: low frequencies
    truth = MTFParams(0.5, 0.4, 0.1, 3.0, 30.0)
    nps = truth(w) ** 2 * (100.0 + 0.3 * ice + 1.7 * parts)
    fit = fit_spectrum(nps, [ice, parts], noise_start=60.0, mtf_start=MTFParams(0.2, 0.2, 0.6, 1.0, 10.0))
    assert fit.rms_log_error < 1e-3
    assert abs(fit.noise_power / 100.0 - 1) < 0.01
    assert abs(fit.scales[0] / 0.3 - 1) < 0.02 and abs(fit.scales[1] / 1.7 - 1) < 0.02
    probe = torch.linspace(0.02, 0.48, 24, dtype=torch.float64)
    assert torch.allclose(fit.mtf(probe), truth(probe), rtol=0.01)
    # the MTF kept fixed when given: the rest still fitted
    kept = fit_spectrum(nps, [ice, parts], noise_start=60.0, mtf_start=truth, fit_mtf=False)
    assert kept.mtf is truth and abs(kept.scales[0] / 0.3 - 1) < 0.01


@pytest.mark.parametrize("seed", [4, 8])
def test_fit_recovers_a_simulated_micrographs_noise_and_ice(seed, one_thread):
    """A simulated micrograph with structured ice through a known MTF, gain and DQE. Told the MTF (as calibrate is
    when given the camera's curve), the fit gives the noise level g·m/DQE within 3 % and the ice amplitude within 15 %,
    although the ice's power is a third of the noise's at its ring (seeds 4–11: 0.990–1.001 and 1.006–1.037). Left
    to fit the MTF too, it finds a curve and level that explain the spectrum at least as well as the true ones; the
    level itself is not identified at this size: in 2 of those 8 seeds a lower residual trades it against MTF² (0.13×
    and 0.09× the true level; at 1536² too). At seed 8, L-BFGS from the given level alone stopped at 1.52× with 7×
    the residual; the fit now also starts at 0.6× and 1.6× (spectrum.OTHER_NOISE_STARTS). This test asserted the free
    fit's level within 3 % at seed 4 until a change of the Poisson draws' stream moved that realisation to 0.95×."""
    gain, dqe = 3.0, 0.8
    cfg = {"seed": seed, "beam": {"voltage_kv": 300, "dose_e_per_a2": 40.0}, "optics": {"defocus_um": 1.0},
           "detector": {"shape_px": [768, 768], "pixel_size_a": 1.0, "dqe": dqe, "gain": gain,
                        "mtf": {k: getattr(TRUE_MTF, k) for k in ("a", "b", "c", "alpha", "beta")}},
           "sample": {"ice_thickness_nm": 40.0, "ice_structure": {"mode": "slices", "amplitude": 0.5}},
           "simulation": {"slice_thickness_a": 10}}
    img = difftem.simulate(cfg).micrograph.numpy()
    noise_free = {**cfg, "detector": {**cfg["detector"], "noise": "none", "mtf": None, "model": "perfect"}}
    ice = noise_power_spectrum(grid_crops(difftem.simulate(
        {**noise_free, "sample": {**cfg["sample"], "ice_structure": {"mode": "slices", "amplitude": 1.0}}}
    ).micrograph.numpy(), 128), detrend="plane")
    real = noise_power_spectrum(grid_crops(img, 128), detrend="plane")
    level = gain * float(np.mean(img)) / dqe
    known = fit_spectrum(real, [ice], noise_start=float(real.mean()), mtf_start=TRUE_MTF, fit_mtf=False)
    assert abs(known.noise_power / level - 1) < 0.03
    assert abs(known.scales[0] / 0.25 - 1) < 0.15  # a² = 0.25
    free = fit_spectrum(real, [ice], noise_start=float(real.mean()), mtf_start=MTFParams(0.5, 0.3, 0.2, 5.0, 20.0))
    assert free.mtf_fitted and free.rms_log_error <= known.rms_log_error * 1.001
    assert known.rms_log_error < 0.05  # the model explains the spectrum to its estimate's noise
