"""The camera in every image: with ``detector.camera`` the single exposure and each tilt are read by the movie's
camera model (same fixed pattern, transfers and coincidence loss), so a movie's summed frames and the single
exposure agree in mean and NPS; the default (no camera) stays the summed-image detector."""

import math

import numpy as np
import pytest
import torch

import difftem
from difftem.config import config_from_dict
from difftem.core.fft import radial_freq_per_px
from difftem.forward.camera import nps_curve, radial_bands
from difftem.forward.detector import Detector, expected_counts
from difftem.learn.mtf_fit import noise_power_spectrum
from difftem.simulate.output import run_and_write

CAMERA = {"kind": "counting", "pixel_mtf": True, "nps": "curve", "nps_floor": 0.6, "nps_alpha": 8.0,
          "coincidence": "non_paralysable", "dead_time_s": 4e-3, "gain_sigma": 0.04, "gain_column_sigma": 0.02,
          "dead_pixel_fraction": 0.002}


def _config(size=128, camera=CAMERA, movie=None, **extra) -> dict:
    d = {"seed": 3, "beam": {"dose_e_per_a2": 40}, "optics": {"defocus_um": 2.0},
         "detector": {"shape_px": [size, size], "pixel_size_a": 1.0, "dqe": 0.8,
                      "mtf": {"a": 0.6, "b": 1.24, "c": -0.84, "alpha": 0.97, "beta": 0.97}, "camera": camera},
         "sample": {"ice_thickness_nm": 20, "particles": [{"structure": "builtin:1ubi", "random": {"count": 6}}]},
         "movie": movie}
    for k, v in extra.items():
        d[k] = {**(d.get(k) or {}), **v}
    return d


def _bands(images: torch.Tensor, edges) -> np.ndarray:
    return radial_bands(noise_power_spectrum(images, detrend="mean"), tuple(images.shape[-2:]), edges)


def test_single_exposure_and_summed_movie_agree_through_the_camera():
    """No motion, no damage: micrograph.mrc (one camera reading of the whole exposure) and the sum of its 8 frames
    (8 readings of an eighth each) have the same mean (coincidence loss at the same dose rate, the same gain
    pattern) and the same NPS per band (the frames' noise powers add up to the exposure's)."""
    cfg = config_from_dict(_config(movie={"n_frames": 8, "damage": "none", "exposure_time_s": 2.0,
                                          "drift": {"fast_a": 0, "slow_a_per_frame": 0}}))
    singles, sums = [], []
    for seed in range(6):
        r = difftem.simulate(cfg.model_copy(update={"seed": seed}))
        assert r.camera is not None and r.movie.camera.pattern.gain.equal(r.camera.pattern.gain)
        singles.append(r.micrograph.double())
        sums.append(sum(f.double() for f in r.movie.frames()))
    singles, sums = torch.stack(singles), torch.stack(sums)
    lam = float(r.intensity.double().mean()) * 40.0  # e/px (the ice absorbs a little)
    loss = 1 / (1 + lam / 2.0 * 4e-3)  # the exposure's dose rate, ~17 e/px/s: ~6 % counted away
    m1, m2 = float(singles.mean()), float(sums.mean())
    assert m1 == pytest.approx(0.8 * lam * loss, rel=0.02)  # events: DQE(0)·λ·coincidence (gain pattern mean 1)
    sigma_mean = math.sqrt(m1 / singles[0].numel() / singles.shape[0]) * 2  # gain spread and NPS: a generous σ
    assert abs(m1 - m2) < 5 * sigma_mean
    edges = np.linspace(0.02, 0.5, 9)
    ratio = _bands(sums, edges) / _bands(singles, edges)
    print(f"mean single {m1:.3f} vs frame sum {m2:.3f}; NPS sum/single per band {np.round(ratio, 3).tolist()}")
    np.testing.assert_allclose(ratio, 1.0, atol=0.1)
    # and the noise is the camera's: the variance about the noise-free reading (× the pattern) is q·λ times the
    # configured NPS averaged over the frequencies times ⟨g²⟩ (the summed-image detector would give λ/q)
    g = r.camera.pattern.gain.double()
    resid = (singles[-1] - r.noiseless.double() * g)[~r.camera.pattern.defects]
    mean_nps = float(nps_curve(r.camera.camera, radial_freq_per_px((128, 128))).mean())
    expect = 0.8 * lam * loss * mean_nps * float((g[~r.camera.pattern.defects] ** 2).mean())
    print(f"residual variance {float(resid.var()):.3f}, expected {expect:.3f} (NPS mean {mean_nps:.3f})")
    assert float(resid.var()) == pytest.approx(expect, rel=0.05)


def test_tilt_series_tilts_are_read_by_the_camera_and_the_gain_reference_is_written(tmp_path):
    import mrcfile

    d = _config(64, camera={**CAMERA, "pixel_mtf": False, "coincidence": "none", "gain_sigma": 0.1,
                            "gain_column_sigma": 0.0, "dead_columns": 1, "dead_pixel_fraction": 0.0},
                sample={"particles": [], "ice_structure": {"mode": "off"}})
    d["tilt_series"] = {"scheme": "uniform", "min_deg": -30, "max_deg": 30, "step_deg": 10,
                        "total_dose_e_per_a2": 700}
    run = run_and_write(config_from_dict(d), tmp_path / "ts")
    assert {"gain_reference.mrc", "defects.txt", "defect_map.mrc"} <= set(run["outputs"])
    assert run["camera"]["kind"] == "counting"
    with mrcfile.open(tmp_path / "ts" / "tilt_series.mrc") as m:
        stack = np.asarray(m.data, dtype=np.float64)
    with mrcfile.open(tmp_path / "ts" / "gain_reference.mrc") as m:
        gain_ref = np.asarray(m.data, dtype=np.float64)
    with mrcfile.open(tmp_path / "ts" / "defect_map.mrc") as m:
        bad = np.asarray(m.data) > 0
    assert stack.shape == (7, 64, 64) and bad.all(axis=0).sum() == 1 and np.all(stack[:, bad] == 0)
    # every tilt carries the same fixed pattern: the per-pixel mean over tilts follows 1/gain_reference
    mean = stack.mean(0)
    g = 1 / gain_ref[~bad]
    corr = np.corrcoef(mean[~bad], g)[0, 1]
    corrected = (stack * gain_ref)[:, ~bad]
    print(f"correlation of the tilts' mean with the gain pattern {corr:.3f}")
    assert corr > 0.5
    # after the gain reference, the spread of the per-pixel means over the 7 tilts is the shot noise's (~65
    # events per tilt), not the 10 % pattern's
    events = float(corrected.mean(0).mean())
    print(f"per-pixel mean spread {float(mean[~bad].std()):.2f} raw, {float(corrected.mean(0).std()):.2f} corrected; "
          f"shot noise {math.sqrt(events / 7):.2f}")
    assert float(corrected.mean(0).std()) < 1.2 * math.sqrt(events / 7)
    assert float(mean[~bad].std()) > 2 * math.sqrt(events / 7)


def test_integrating_camera_and_unbinned_super_resolution_keep_the_pixel():
    cam = {"kind": "integrating", "pixel_mtf": False, "nps": "signal", "gain_adu_per_e": 5.0, "offset_adu": 100.0,
           "read_noise_adu": 2.0}
    r = difftem.simulate(config_from_dict(_config(64, camera=cam, sample={"particles": []})))
    lam = float(r.intensity.double().mean()) * 40
    assert float(r.micrograph.double().mean()) == pytest.approx(5 * lam + 100, rel=0.01)
    assert float(r.noiseless.double().mean()) == pytest.approx(5 * lam + 100, rel=1e-3)
    sr = {"super_resolution": True, "bin_super_resolution": False, "pixel_mtf": False, "gain_sigma": 0.05}
    r = difftem.simulate(config_from_dict(_config(64, camera=sr, sample={"particles": []})))
    assert tuple(r.micrograph.shape) == (64, 64) and tuple(r.camera.pattern.gain.shape) == (128, 128)
    assert float(r.micrograph.double().mean()) == pytest.approx(0.8 * lam, rel=0.02)


def test_without_a_camera_images_are_the_summed_image_detector():
    """The default path is unchanged: the micrograph is Detector.detect of the expected counts with the run's
    seeded generator, bit for bit."""
    cfg = config_from_dict(_config(96, camera=None, sample={"particles": [{"structure": "builtin:1ubi",
                                                                       "random": {"count": 2}}]}))
    r = difftem.simulate(cfg)
    assert r.camera is None
    lam = expected_counts(r.intensity, 40.0, 1.0)
    again = Detector.from_config(cfg).detect(lam, torch.Generator().manual_seed(cfg.seed)).float()
    assert torch.equal(again, r.micrograph)
