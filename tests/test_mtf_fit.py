"""MTF estimation: curve fits, the NPS estimator, the seed paper's Algorithm 1, crop selection."""


import numpy as np
import pytest
import torch

from difftem.core.errors import ConfigError
from difftem.forward.detector import MTFParams, apply_mtf, read_mtf_star
from difftem.forward.estimators import LearnableMTF
from difftem.learn.losses import focal_frequency_loss
from difftem.learn.mtf_fit import (
    curve_rms,
    extract_crops,
    fit_algorithm1,
    fit_curve,
    fit_nps,
    noise_power_spectrum,
    select_background_crops,
)

TMV = MTFParams(0.7, 0.2, 0.1, 10, 40)
K3 = MTFParams(0.6, 1.24, -0.84, 0.97, 0.97)
SYNTHETIC = MTFParams(-2.86, 2.113, -0.1318, 57.288, 25.429)  # the seed paper's set: changes sign twice


def background_crops(mtf, n=20, size=64, counts=30.0, seed=0):
    """Crops cut from the middle of larger detector images (not periodic, like crops of real data)."""
    g = torch.Generator().manual_seed(seed)
    rate = torch.full((n, 2 * size, 2 * size), counts, dtype=torch.float64)
    full = apply_mtf(torch.poisson(rate, generator=g), mtf)
    return full[:, size // 2:size // 2 + size, size // 2:size // 2 + size]


def test_ffl_matches_reference_package():
    ffl = pytest.importorskip("focal_frequency_loss")
    x, y = torch.rand(2, 1, 32, 32, dtype=torch.float64), torch.rand(2, 1, 32, 32, dtype=torch.float64)
    for alpha in (0.0, 0.5, 1.0, 2.0):
        ref = ffl.FocalFrequencyLoss(loss_weight=1.0, alpha=alpha)(x, y)
        assert float(focal_frequency_loss(x[:, 0], y[:, 0], alpha)) == pytest.approx(float(ref), rel=1e-10)


def test_model_gradcheck_and_positivity():
    m = LearnableMTF.from_params(TMV)
    assert float(m.alpha.detach()) == pytest.approx(10) and float(m.beta.detach()) == pytest.approx(40)
    omega = torch.linspace(0, 0.5, 11, dtype=torch.float64)
    torch.testing.assert_close(m.curve(omega), TMV(omega))
    f = lambda a, b, c, ra, rb: a / (1 + torch.nn.functional.softplus(ra) * omega**2) + \
        b / (1 + torch.nn.functional.softplus(rb) * omega**2) + c  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(p.detach().clone().requires_grad_() for p in m.parameters()))


@pytest.mark.parametrize("name", ["mtf_k3_standard_300kV_FL2.star", "mtf_k2_300kV_FL2.star"])
def test_fit_measured_curves(shared_data, name):
    curve = read_mtf_star(shared_data / "mtf" / name)
    fit = fit_curve(curve.frequency_per_px, curve.value)
    assert fit.extra["rms_fit_error"] < 0.01
    assert fit.params.alpha > 0 and fit.params.beta > 0


def test_nps_of_white_noise_through_mtf_is_mtf_squared():
    crops = background_crops(TMV, n=40, size=64, counts=50.0)
    nps = noise_power_spectrum(crops, window=False)
    from difftem.forward.detector import radial_frequency_per_px

    omega = radial_frequency_per_px((64, 64))
    expected = 50.0 * TMV(omega) ** 2
    sel = omega > 0
    ratio = (nps[sel] / expected[sel]).mean()
    assert float(ratio) == pytest.approx(1.0, abs=0.03)


# where the crop's leakage matters most: the corner (smoothing across the Nyquist edge) and, without a
# taper, the lowest frequencies (the Fejér kernel's side lobes; above 3 bins, clear of the mean's removal)
@pytest.mark.parametrize("window,mtf,band", [("hann", K3, (0.6, 1.0)), ("none", K3, (0.6, 1.0)),
                                             ("none", TMV, (3 / 64, 0.1))])
def test_windowed_spectrum_model_predicts_the_measured_nps(window, mtf, band):
    from difftem.forward.detector import radial_frequency_per_px
    from difftem.learn.mtf_fit import WindowedSpectrum

    crops = background_crops(mtf, n=400, size=64, counts=50.0)
    measured = noise_power_spectrum(crops, window)
    op = WindowedSpectrum((64, 64), window)
    predicted = op(50.0 * mtf(op.omega_big) ** 2)
    omega = radial_frequency_per_px((64, 64))
    naive = 50.0 * mtf(omega) ** 2
    sel = (omega >= band[0]) & (omega < band[1])
    err = lambda p: float(((measured[sel] - p[sel]) / p[sel]).mean().abs())  # noqa: E731
    assert err(predicted) < 0.01 and err(predicted) <= err(naive)


def test_plane_detrend_makes_the_fit_blind_to_background_gradients():
    # removing each crop's plane changes only the kx = 0 and ky = 0 lines of its spectrum, which the
    # fit leaves out: a strong ramp (e.g. an ice-thickness gradient) does not move the fit at all
    crops = background_crops(K3, n=6, size=64, counts=30.0, seed=3)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = (0.5 * yy - 0.3 * xx + 20.0).double()
    ramped = crops + ramp * torch.arange(1.0, 7.0)[:, None, None]
    a, b = fit_nps(crops), fit_nps(ramped)
    assert curve_rms(a.params, K3) < 0.01 and curve_rms(b.params, a.params) < 1e-6
    # removing only the mean, the ramps' edge discontinuities leak into every frequency
    assert curve_rms(fit_nps(ramped, detrend="mean").params, K3) > 0.1


def test_whittle_fit_keeps_the_absolute_level_with_few_crops():
    # With the dose known, NPS = λ·MTF² fixes the absolute curve. The mean of N periodograms is
    # Gamma(N)-distributed: log least squares is biased by ψ(N) − log N (−0.13 in log NPS for N = 4,
    # an MTF 6 % low); the Whittle likelihood is not.
    crops = background_crops(TMV, n=4, size=128, counts=50.0, seed=5)
    omega = torch.linspace(0.05, 0.5, 46, dtype=torch.float64)
    level = lambda fit: float((fit.params(omega) / TMV(omega)).abs().mean())  # noqa: E731
    assert level(fit_nps(crops, counts_per_px=50.0)) == pytest.approx(1.0, abs=0.015)
    assert level(fit_nps(crops, counts_per_px=50.0, loss="log")) < 0.95


@pytest.mark.parametrize("mtf", [TMV, K3])
def test_nps_estimator_recovers_curve(mtf):
    fit = fit_nps(background_crops(mtf, n=20, size=128, counts=20.0))
    assert curve_rms(fit.params, mtf) < 0.01
    assert float(fit.params(torch.zeros((), dtype=torch.float64))) == pytest.approx(1.0)
    # K3's fitted parameters have α = β: one Lorentzian, which the likelihood-ratio test must find
    assert fit.extra["lorentzians"] == (1 if mtf is K3 else 2) and fit.extra["window"] == "none"


def test_nps_estimator_recovers_a_sign_changing_curve():
    # Two nearly cancelling Lorentzians: a curved, ill-conditioned valley (L-BFGS stopped at
    # curve RMS 0.003 here), and NPS zeros that the untapered crop's leakage fills (so a taper is chosen)
    crops = background_crops(SYNTHETIC, n=20, size=128, counts=20.0)
    fit = fit_nps(crops, counts_per_px=20.0)
    assert curve_rms(fit.params, SYNTHETIC) < 0.001
    assert fit.extra["window"] == "tukey" and fit.extra["lorentzians"] == 2


def test_algorithm1_optimises_its_loss_and_nps_wins():
    crops = background_crops(TMV, n=10, size=64, counts=20.0)
    fit = fit_algorithm1(crops, 20.0, ffl_alpha=1.0, steps=150, generator=torch.Generator().manual_seed(1))
    assert np.mean(fit.loss_history[-20:]) < np.mean(fit.loss_history[:20])
    # The published objective compares independent noise realisations pixel by pixel; its optimum
    # is not the true MTF. The NPS estimator on the same crops is far closer.
    assert curve_rms(fit_nps(crops).params, TMV) < 0.2 * curve_rms(fit.params, TMV)


def test_background_crop_selection_avoids_particles():
    rng = np.random.default_rng(0)
    img = rng.poisson(30.0, (512, 512)).astype(np.float64)
    yy, xx = np.mgrid[:512, :512]
    blob = np.exp(-((yy - 200) ** 2 + (xx - 300) ** 2) / (2 * 40.0**2))
    img -= 15 * blob  # a dark particle-like feature
    corners = select_background_crops(img, 64, 6)
    assert len(corners) == 6
    for y, x in corners:
        assert np.hypot(y + 32 - 200, x + 32 - 300) > 80
    crops = extract_crops(img, corners, 64)
    assert crops.shape == (6, 64, 64)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="at least 32"):
        fit_nps(torch.rand(3, 16, 16))
    bad = torch.rand(3, 64, 64)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        fit_nps(bad)
    with pytest.raises(ConfigError, match="window"):
        fit_nps(torch.rand(3, 64, 64), window="hamming")
    with pytest.raises(ConfigError, match="no .* crop"):
        select_background_crops(np.zeros((40, 40)), 32, 4)
    with pytest.raises(ConfigError, match="NaN"):
        select_background_crops(np.full((256, 256), np.nan), 64, 4)
    with pytest.raises(ConfigError, match="background counts"):
        fit_algorithm1(torch.rand(2, 64, 64), 0.0)


def test_fit_mtf_cli(tmp_path, shared_data):
    import json

    from typer.testing import CliRunner

    from difftem.cli import app
    from difftem.io.files import write_mrc

    runner = CliRunner()
    img = background_crops(TMV, n=1, size=1024, counts=25.0)[0].numpy()
    write_mrc(tmp_path / "bg.mrc", img, 1.0)
    res = runner.invoke(app, ["fit-mtf", str(tmp_path / "bg.mrc"), "--out", str(tmp_path / "o"), "--crop-size", "64",
                              "--n-crops", "100", "--reference", "0.7,0.2,0.1,10,40"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "mtf_fit.json").read_text())
    assert rep["fits"]["nps"]["rms_vs_reference_normalised"] < 0.02
    star = read_mtf_star(tmp_path / "o" / "mtf_fit.star")
    assert star.value[0] == pytest.approx(1.0) and (tmp_path / "o" / "crops.png").exists()
    res = runner.invoke(app, ["fit-mtf", "--curve", str(shared_data / "mtf" / "mtf_k2_300kV_FL2.star"),
                              "--out", str(tmp_path / "c")])
    assert res.exit_code == 0 and "rms_fit_error" in res.output


def test_fit_mtf_cli_bad_inputs(tmp_path):
    from typer.testing import CliRunner

    from difftem.cli import app
    from difftem.io.files import write_mrc

    runner = CliRunner()
    bad_star = tmp_path / "bad.star"
    bad_star.write_text("data_\nloop_\n_rlnFoo\n_rlnBar\n0 1\n0.5 0.2\n")
    res = runner.invoke(app, ["fit-mtf", "--curve", str(bad_star), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "_rlnMtfValue" in res.output
    img = np.ones((256, 256), np.float32)
    img[10, 10] = np.nan
    write_mrc(tmp_path / "nan.mrc", img, 1.0)
    res = runner.invoke(app, ["fit-mtf", str(tmp_path / "nan.mrc"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "NaN" in res.output
    res = runner.invoke(app, ["fit-mtf", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "give micrographs" in res.output
    assert not (tmp_path / "o").exists()


def test_fit_mtf_says_when_its_curve_cannot_be_a_detector_mtf(shared_data, tmp_path, one_thread):
    """The energy-filtered CCD micrograph's background crops: the fit rises above 1 (two terms of ±5000 that cancel)
    and the command says not to use it; micrographs of two pixel sizes pooled into one curve are named; a measured
    camera curve gets neither warning."""
    import json

    from typer.testing import CliRunner

    from difftem.cli._app import app
    from difftem.learn.mtf_run import _warnings

    mic = shared_data / "micrographs" / "real_micrograph_efccd_crop2048.mrc.gz"
    res = CliRunner().invoke(app, ["fit-mtf", str(mic), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "m" / "mtf_fit.json").read_text())
    assert any("exceeds 1" in w for w in report["warnings"]) and "exceeds 1" in " ".join(res.output.split())
    c = read_mtf_star(shared_data / "mtf" / "mtf_k3_standard_300kV_FL2.star")
    fit = fit_curve(c.frequency_per_px, c.value)
    assert _warnings(fit, {"crops": {"a": {"pixel_size_a": 1.0}}}) == []
    pooled = _warnings(fit, {"crops": {"a": {"pixel_size_a": 0.6666}, "b": {"pixel_size_a": 0.8538}}})
    assert len(pooled) == 1 and "2 pixel sizes" in pooled[0]
