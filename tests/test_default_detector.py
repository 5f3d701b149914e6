"""The default detector is a real counting camera: a config that names no detector gets the Gatan K3's measured MTF
(bundled from the shared RELION/vendor curves) and a DQE(0) of 0.8, not a perfect detector; ``model: perfect`` keeps
the ideal one. Its flat-field noise power spectrum follows the bundled curve, and the README's example and the
bundled demo agree with the defaults."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import DATA

from difftem.config import K3_DQE0, SimulationConfig, config_from_dict, k3_mtf_path, load_config
from difftem.forward.camera import radial_bands, transfers
from difftem.forward.detector import make_mtf
from difftem.io.star import read_mtf_curve
from difftem.learn.mtf_fit import fit_nps, noise_power_spectrum
from difftem.simulate.pipeline import simulate

ROOT = Path(__file__).resolve().parents[1]
BANDS_PER_PX = np.arange(0.02, 0.5001, 0.04)


def test_a_config_without_a_detector_gets_the_k3_and_perfect_keeps_the_ideal_detector():
    det = SimulationConfig().detector
    assert det.model == "k3" and det.dqe == K3_DQE0 == 0.8
    assert Path(det.mtf.star) == k3_mtf_path(300) and k3_mtf_path(300).name == "mtf_k3_standard_300kv.star"
    assert Path(SimulationConfig(beam={"voltage_kv": 200}).detector.mtf.star).name == "mtf_k3_standard_200kv.star"
    ideal = SimulationConfig(detector={"model": "perfect"}).detector
    assert ideal.dqe == 1.0 and ideal.mtf is None and make_mtf(SimulationConfig(detector={"model": "perfect"})) is None
    # values given explicitly win over the model's
    mixed = SimulationConfig(detector={"dqe": 0.5, "mtf": None}).detector
    assert mixed.dqe == 0.5 and mixed.mtf is None
    formula = SimulationConfig(detector={"model": "perfect", "mtf": {"a": 1, "b": 0, "c": 0, "alpha": 1, "beta": 1}})
    assert formula.detector.dqe == 1.0 and formula.detector.mtf.a == 1
    # switching the model later switches the values it filled in, not those given
    cfg = SimulationConfig(detector={"gain": 2.0})
    cfg.detector.model = "perfect"
    assert cfg.detector.dqe == 1.0 and cfg.detector.mtf is None and cfg.detector.gain == 2.0
    # the resolved config round-trips (run.json keeps the curve's path and the DQE)
    again = config_from_dict(SimulationConfig().model_dump(mode="json"))
    assert again.detector.dqe == 0.8 and Path(again.detector.mtf.star) == k3_mtf_path(300)


@pytest.mark.parametrize("kv", [200, 300])
def test_bundled_curves_are_the_shared_measurements(shared_data, kv):
    f, v = read_mtf_curve(k3_mtf_path(kv))
    f_ref, v_ref = read_mtf_curve(DATA / "mtf" / f"mtf_k3_standard_{kv}kV_FL2.star")
    np.testing.assert_array_equal(f, f_ref)
    np.testing.assert_array_equal(v, v_ref)


def test_default_flat_field_noise_power_follows_the_bundled_curve():
    """Vacuum at 40 e/Å² on 1 Å pixels (λ = 40 electrons/px) through the default detector: the image's noise power
    spectrum (fit-mtf's estimator) is (λ/DQE)·MTF(f)² of the bundled K3 curve within 5 % in every band to Nyquist;
    its mean is λ."""
    cfg = config_from_dict({"seed": 4, "detector": {"shape_px": [512, 512]},
                            "sample": {"ice_thickness_nm": 0, "particles": []}, "simulation": {"device": "cpu"}})
    assert cfg.detector.model == "k3"
    img = simulate(cfg).micrograph.double()
    lam = 40.0
    assert float(img.mean()) == pytest.approx(lam, rel=2e-3)
    nps = noise_power_spectrum(img[None], detrend="mean")  # the whole field: ≥ 10⁴ independent modes per band
    f_ref, v_ref = read_mtf_curve(k3_mtf_path(300))
    from difftem.core.fft import radial_freq_per_px

    omega = radial_freq_per_px((512, 512), half=True).numpy()
    expected = lam / 0.8 * (np.interp(omega, f_ref, v_ref) / v_ref[0]) ** 2
    measured_b = radial_bands(nps, (512, 512), BANDS_PER_PX)
    expected_b = radial_bands(torch.as_tensor(expected), (512, 512), BANDS_PER_PX)
    np.testing.assert_allclose(measured_b / expected_b, 1.0, atol=0.05)


@pytest.mark.slow
def test_fit_mtf_recovers_the_default_curve_from_flat_field_noise():
    """fit-mtf's fit (the 5-parameter formula, Whittle likelihood) to the default detector's flat-field noise gives
    the bundled curve within 5 % per band to Nyquist."""
    from difftem.core.fft import radial_freq_per_px

    cfg = config_from_dict({"seed": 5, "detector": {"shape_px": [512, 512]},
                            "sample": {"ice_thickness_nm": 0, "particles": []}, "simulation": {"device": "cpu"}})
    img = simulate(cfg).micrograph.double()
    crops = img.reshape(8, 64, 8, 64).permute(0, 2, 1, 3).reshape(64, 64, 64)
    omega = radial_freq_per_px((64, 64), half=True).numpy()
    f_ref, v_ref = read_mtf_curve(k3_mtf_path(300))
    fit = fit_nps(crops)
    fitted_b = radial_bands(fit.params(torch.as_tensor(omega)), (64, 64), BANDS_PER_PX)
    curve_b = radial_bands(torch.as_tensor(np.interp(omega, f_ref, v_ref) / v_ref[0]), (64, 64), BANDS_PER_PX)
    np.testing.assert_allclose(fitted_b / curve_b, 1.0, atol=0.05)


def test_a_camera_with_the_default_curve_leaves_out_the_pixel_sinc():
    """The measured curve already holds the pixel's aperture: ``camera: {}`` filters the signal by the curve alone
    (pixel_mtf false) unless pixel_mtf is given; with ``model: perfect`` the camera keeps its sinc."""
    cfg = SimulationConfig(detector={"camera": {}})
    assert cfg.detector.camera.pixel_mtf is False
    signal, noise = transfers(cfg.detector.camera, make_mtf(cfg), (64, 64))
    f_ref, v_ref = read_mtf_curve(k3_mtf_path(300))
    from difftem.core.fft import radial_freq_per_px

    omega = radial_freq_per_px((64, 64), half=True)
    torch.testing.assert_close(signal, torch.as_tensor(np.interp(omega.numpy(), f_ref, v_ref) / v_ref[0]))
    assert noise is None  # a counting camera's white noise: DQE(f) = DQE(0)·MTF(f)²
    assert SimulationConfig(detector={"camera": {"pixel_mtf": True}}).detector.camera.pixel_mtf is True
    assert SimulationConfig(detector={"model": "perfect", "camera": {}}).detector.camera.pixel_mtf is True


def _readme_config() -> dict:
    text = (ROOT / "README.md").read_text()
    return yaml.safe_load(re.search(r"### Configuration.*?```yaml\n(.*?)```", text, re.S).group(1))


def test_readme_example_and_demo_agree_with_the_defaults():
    """Every beam, optics, detector and simulation value the README's configuration example writes out is the
    default (the field size is the example's choice), and its detector resolves to the default detector; the
    bundled demo uses the default detector too."""
    readme = _readme_config()
    default = SimulationConfig().model_dump(mode="json")
    for section in ("beam", "optics", "detector", "simulation"):
        for key, value in readme[section].items():
            if (section, key) == ("detector", "shape_px"):
                continue
            assert default[section][key] == value, (section, key, value, default[section][key])
    readme["sample"]["particles"] = []  # the example's structure files are the reader's own
    resolved = config_from_dict(readme).detector
    ref = SimulationConfig().detector
    assert (resolved.model, resolved.dqe, resolved.mtf, resolved.camera) == (ref.model, ref.dqe, ref.mtf, ref.camera)
    demo = load_config(ROOT / "src" / "difftem" / "data" / "demo.yaml").detector
    assert (demo.model, demo.dqe, demo.mtf, demo.gain) == (ref.model, ref.dqe, ref.mtf, ref.gain)


def test_differentiable_simulator_with_the_default_detector():
    """The differentiable simulator reads the same K3 curve and DQE: its noise-free image equals simulate's, the
    DQE and defocus have gradients, and asking to learn the measured curve is refused by name."""
    from difftem.core.errors import ConfigError
    from difftem.simulate.differentiable import DifferentiableSimulator

    cfg = {"seed": 1, "detector": {"shape_px": [48, 48], "noise": "none"}, "simulation": {"window": "off"},
           "optics": {"defocus_um": 1.0},
           "sample": {"ice_thickness_nm": 5, "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]]}]}}
    ref = simulate(cfg)
    sim = DifferentiableSimulator(cfg)
    out = sim()
    scale = float(ref.noiseless.abs().max())
    assert float((out.noiseless.detach() - ref.noiseless).abs().max()) < 1e-5 * scale
    # the K3 curve blurs: the same run with the perfect detector differs
    perfect = simulate({**cfg, "detector": {**cfg["detector"], "model": "perfect"}}).noiseless
    assert float((perfect - ref.noiseless).abs().max()) > 1e-3 * scale
    p = sim.parameters(["dqe", "defocus_a"])
    data = ref.noiseless + 1.0
    sim.loss(data, p, estimator="expected").backward()  # the expected noisy error: DQE enters
    assert torch.isfinite(p["dqe"].grad) and torch.isfinite(p["defocus_a"].grad) and float(p["defocus_a"].grad) != 0
    with pytest.raises(ConfigError, match="parameter mtf: the config's detector.mtf is not a formula"):
        sim.parameters(["mtf"])
