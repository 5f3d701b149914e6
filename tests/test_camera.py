"""Camera physics on flat fields: the configured NPS(f) and DQE(f) measured back with fit-mtf's NPS estimator,
the gain reference removing the fixed pattern, coincidence loss, super-resolution binning, integrating cameras."""

import numpy as np
import pytest
import torch

from difftem.config import config_from_dict
from difftem.forward.camera import camera_model, dqe_curve, nps_curve, radial_bands
from difftem.forward.detector import make_mtf
from difftem.learn.mtf_fit import noise_power_spectrum

EDGES = np.linspace(0.05, 0.5, 10)  # 9 bands, cycles/px
CENTRES = 0.5 * (EDGES[1:] + EDGES[:-1])


def _camera(camera: dict, mtf=None, dqe: float = 0.9, shape=(128, 128)):
    cfg = config_from_dict({"detector": {"shape_px": list(shape), "dqe": dqe, "mtf": mtf, "camera": camera}})
    return camera_model(cfg, make_mtf(cfg), frame_time_s=0.05)


def _flat(model, lam: float, n: int, shape=(128, 128), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    expected = torch.full(shape, lam, dtype=torch.float64)
    return torch.stack([model.read(expected, g) for _ in range(n)]).double()


def _nps_bands(frames: torch.Tensor) -> np.ndarray:
    return radial_bands(noise_power_spectrum(frames, detrend="mean"), tuple(frames.shape[-2:]), EDGES)


@pytest.mark.parametrize("curve", ["mtf_k3_standard_300kV_FL2.star", "mtf_k2_300kV.star"])
def test_flat_fields_reproduce_configured_nps_and_dqe(shared_data, curve):
    """Counting camera, measured K3/K2 MTF, NPS(f) = (1 − 0.6)/(1 + 8f²) + 0.6: measured NPS and DQE within 5 %
    per band."""
    model = _camera({"nps": "curve", "nps_floor": 0.6, "nps_alpha": 8.0, "pixel_mtf": True},
                    mtf={"star": str(shared_data / "mtf" / curve)}, dqe=0.9)
    lam = 5.0
    frames = _flat(model, lam, 48)
    measured = _nps_bands(frames)
    omega = torch.as_tensor(CENTRES)
    expected = 0.9 * lam * nps_curve(model.camera, omega).numpy()
    # the band average of the curve (not its centre value): average the model over each band's bins too
    from difftem.core.fft import radial_freq_per_px
    om = radial_freq_per_px((128, 128), half=True)
    model_bands = radial_bands(0.9 * lam * nps_curve(model.camera, om), (128, 128), EDGES)
    np.testing.assert_allclose(measured / model_bands, 1.0, atol=0.05)
    assert np.all(np.abs(model_bands / expected - 1) < 0.1)
    # DQE(f) from the measured NPS: mean² · MTF² / (λ · NPS), against the configured DQE(0)·MTF²/NPS
    mean = float(frames.mean())
    signal_bands = radial_bands(_signal2(model, (128, 128)), (128, 128), EDGES)
    dqe_measured = mean**2 * signal_bands / (lam * measured)
    dqe_model = radial_bands(dqe_curve_grid(model, (128, 128)), (128, 128), EDGES)
    np.testing.assert_allclose(dqe_measured / dqe_model, 1.0, atol=0.05)
    assert mean == pytest.approx(0.9 * lam, rel=0.01)
    # the radial DQE curve helper agrees with the grid at the band centres along x
    assert float(dqe_curve(model.camera, model.mtf, 0.9, torch.tensor([0.0]))[0]) == pytest.approx(0.9)


def _signal2(model, shape):
    from difftem.forward.camera import transfers
    s, _ = transfers(model.camera, model.mtf, shape)
    return s**2


def dqe_curve_grid(model, shape):
    from difftem.core.fft import radial_freq_per_px
    return model.dqe0 * _signal2(model, shape) / nps_curve(model.camera, radial_freq_per_px(shape, half=True))


def test_white_counting_gives_integer_poisson_counts():
    model = _camera({"nps": "curve", "nps_floor": 1.0, "pixel_mtf": False}, dqe=0.8)
    frames = _flat(model, 2.0, 16)
    assert model.integer_counts()
    assert torch.equal(frames, frames.round())
    assert float(frames.mean()) == pytest.approx(1.6, rel=0.02)
    np.testing.assert_allclose(_nps_bands(frames) / 1.6, 1.0, atol=0.05)


def test_gain_reference_removes_the_fixed_pattern():
    """Per-pixel and per-column gain: the raw flat field's NPS is far above Poisson (columns put power on the
    ky = 0 line); raw × gain reference is white at the Poisson level again."""
    model = _camera({"nps": "curve", "nps_floor": 1.0, "pixel_mtf": False, "gain_sigma": 0.05,
                     "gain_column_sigma": 0.05}, dqe=1.0)
    lam = 20.0
    frames = _flat(model, lam, 32)
    raw = noise_power_spectrum(frames, detrend="mean")
    corrected = noise_power_spectrum(frames * model.pattern.gain_reference().double(), detrend="mean")
    # the column pattern: the line ky = 0 (all kx > 0) of one frame's spectrum
    raw_line, corr_line = float(raw[0, 1:].mean()), float(corrected[0, 1:].mean())
    assert raw_line > 5 * lam
    assert corr_line == pytest.approx(lam, rel=0.1)
    bands = radial_bands(corrected, (128, 128), EDGES) / lam
    np.testing.assert_allclose(bands, 1.0, atol=0.05)
    # off the line, the per-pixel pattern: white but raised by σ²λ² (1 count² here, 5 %)
    off = raw.clone()
    off[0, :] = lam
    assert np.all(radial_bands(off, (128, 128), EDGES) / lam > 1.02)


def test_defects_and_gain_reference_values():
    model = _camera({"pixel_mtf": False, "dead_pixel_fraction": 0.01, "hot_pixel_fraction": 0.01,
                     "hot_pixel_counts": 200, "dead_columns": 2, "hot_columns": 1, "gain_sigma": 0.1})
    p = model.pattern
    frame = _flat(model, 1.0, 1)[0]
    assert torch.all(frame[p.dead] == 0)
    assert float(frame[p.hot].mean()) == pytest.approx(200, rel=0.05)
    assert int(p.dead.all(0).sum()) == 2 and int(p.hot.all(0).sum()) == 1
    ref = p.gain_reference()
    assert torch.all(ref[p.defects] == 1)
    torch.testing.assert_close(ref[~p.defects] * p.gain[~p.defects], torch.ones_like(ref[~p.defects]))


@pytest.mark.parametrize("kind", ["non_paralysable", "paralysable"])
def test_coincidence_loss_follows_the_dead_time_model(kind):
    model = _camera({"pixel_mtf": False, "coincidence": kind, "dead_time_s": 0.01}, dqe=1.0)
    lam = 2.0  # per 0.05 s frame: 40 e/px/s, rate × dead time = 0.4
    frames = _flat(model, lam, 8)
    x = lam / 0.05 * 0.01
    factor = 1 / (1 + x) if kind == "non_paralysable" else np.exp(-x)
    assert float(frames.mean()) == pytest.approx(lam * factor, rel=0.02)


def test_super_resolution_binning_keeps_counts_and_white_noise():
    model = _camera({"pixel_mtf": True, "super_resolution": True, "bin_super_resolution": True}, dqe=1.0)
    frames = _flat(model, 4.0, 24)
    assert frames.shape[-2:] == (128, 128)
    assert float(frames.mean()) == pytest.approx(4.0, rel=0.01)
    # events on the half-pixel grid, binned by cropping the spectrum: the noise stays white at λ (no aliasing)
    np.testing.assert_allclose(_nps_bands(frames) / 4.0, 1.0, atol=0.05)
    unbinned = _camera({"pixel_mtf": True, "super_resolution": True, "bin_super_resolution": False}, dqe=1.0)
    assert _flat(unbinned, 4.0, 1).shape[-2:] == (256, 256)


def test_integrating_camera_read_noise_and_gain():
    model = _camera({"kind": "integrating", "nps": "signal", "pixel_mtf": False, "read_noise_adu": 3.0,
                     "gain_adu_per_e": 2.0, "offset_adu": 100.0}, dqe=0.5)
    lam = 10.0
    frames = _flat(model, lam, 16)
    # mean: gain·λ + bias; variance: gain²·λ/DQE + read²
    assert float(frames.mean()) == pytest.approx(2 * lam + 100, rel=0.01)
    assert float(frames.var()) == pytest.approx(4 * lam / 0.5 + 9, rel=0.05)
