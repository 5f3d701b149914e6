"""Denoising through the detector model (difftem.denoise): physics, optimisation, metrics, alignment, errors.

Scenes are small analytic phantoms (discs of 15 % contrast on a flat background, the scale of
protein contrast in counts) so that every test runs in about a second on one core.
"""

import math
import socket
import warnings

import numpy as np
import pytest
import torch

from difftem.core.errors import ConfigError
from difftem.denoise import baselines as B
from difftem.denoise import denoise
from difftem.denoise import metrics as M
from difftem.denoise.algorithm import deconvolve_counts
from difftem.denoise.align import UnalignedWarning, correlation_peak, measure_shift, shift_image
from difftem.denoise.detector_params import estimate_gain_per_dqe
from difftem.denoise.priors import SpectralPrior
from difftem.forward.detector import MTFParams, apply_mtf, mtf_transfer
from difftem.learn.losses import focal_frequency_loss

TMV = MTFParams(0.7, 0.2, 0.1, 10.0, 40.0)  # the seed paper's TMV detector


pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops (conftest.one_thread)


def discs(h=96, w=96, seed=0, contrast=0.15, n=6) -> torch.Tensor:
    """Flat field of 1 with ``n`` darker discs (radius 4–12 px)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    img = torch.ones(h, w, dtype=torch.float64)
    for _ in range(n):
        cy, cx = torch.rand(2, generator=g) * torch.tensor([h, w])
        r = 4 + 8 * float(torch.rand(1, generator=g))
        img = img - contrast * (((y - cy) ** 2 + (x - cx) ** 2) < r * r)
    return img


def observe(rate, n, seed, mtf=TMV, gain=1.0, dqe=1.0):
    """n detector images of ``rate`` (electrons/px): Poisson(DQE λ)/DQE → MTF → gain (as the simulator)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.poisson((dqe * rate).expand(n, *rate.shape).contiguous(), generator=g) / dqe
    return apply_mtf(counts, mtf, True) * gain


@pytest.fixture(scope="module")
def case():
    rate = discs() * 20.0  # 20 electrons/px
    return rate, apply_mtf(rate, TMV, True), observe(rate, 4, seed=1)


# --- the denoiser -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,prior", [("poisson", "tv"), ("expected", "tv"), ("poisson", "spectral")])
def test_denoised_psnr_beats_averaging(case, method, prior):
    rate, truth, obs = case
    result = denoise(obs, TMV, method=method, prior=prior)
    ours, avg = M.psnr(result.denoised, truth), M.psnr(obs.mean(0), truth)
    assert ours > avg + 5.0, (ours, avg)  # measured: 27.8 / 27.4 / 23.8 dB against 14.9 dB
    assert M.ssim(result.denoised, truth) > M.ssim(obs.mean(0), truth)
    assert result.settings["weight_selection"]["chosen"] == result.settings["prior_weight"] > 0


@pytest.mark.parametrize("method", ["poisson", "expected"])
def test_optimiser_decreases_the_loss(case, method):
    _, _, obs = case
    result = denoise(obs, TMV, method=method, prior="tv", prior_weight=1.0, steps=60)
    h = np.asarray(result.loss_history)
    assert len(h) == 60 and np.all(np.isfinite(h))
    assert h[-1] < 0.5 * h[0]
    assert np.mean(np.diff(h) <= 1e-9) > 0.9  # essentially monotone (Adam may wobble once or twice)


def test_paper_algorithm2_decreases_its_sampled_loss(case):
    rate, _, obs = case
    result = denoise(obs, TMV, method="paper", steps=60, n_samples=4)
    h = np.asarray(result.loss_history)
    assert np.mean(h[-10:]) < 0.7 * np.mean(h[:5])  # from the random start towards the data
    assert result.settings["prior"] == "none"
    # its output is put back on the observations' scale (normalisation lost it)
    assert float(result.denoised.mean()) == pytest.approx(float(obs.mean()), rel=0.02)


def test_surrogate_variant_runs_and_beats_averaging(case):
    _, truth, obs = case
    result = denoise(obs, TMV, method="surrogate", prior="tv", prior_weight=1.0, steps=80, n_samples=4)
    assert M.psnr(result.denoised, truth) > M.psnr(obs.mean(0), truth) + 3.0


def test_without_prior_the_likelihood_optimum_is_the_average(case):
    """The Poisson likelihood of deconvolved counts is maximised by their mean: the result is the average."""
    _, _, obs = case
    result = denoise(obs, TMV, method="poisson", prior="none")
    assert torch.allclose(result.denoised, obs.mean(0), rtol=1e-4, atol=1e-3)


def test_expected_loss_minimiser_is_biased_low_by_half_the_kernel_energy(case):
    """E[(y − M I_q)²] = (y − Mμ)² + (h²*μ): its minimiser solves MᵀMμ = Mᵀȳ − ½Σh², so the mean rate
    sits mean(MTF²)/2 counts below the data's (the variance term prefers less shot noise)."""
    _, _, obs = case
    result = denoise(obs, TMV, method="expected", prior="none", steps=300, lr=0.01)
    kernel_energy = float((mtf_transfer(TMV, (96, 96), normalize_dc=True) ** 2).mean())  # Σ h² (Parseval)
    shift = float(obs.mean() - result.rate.mean())
    assert shift == pytest.approx(kernel_energy / 2, rel=0.05)


def test_gain_and_dqe_are_undone(case):
    rate, truth, _ = case
    obs = observe(rate, 4, seed=2, gain=3.0, dqe=0.5)
    result = denoise(obs, TMV, gain=3.0, dqe=0.5, prior="tv")
    assert float(result.rate.mean()) == pytest.approx(float(rate.mean()), rel=0.01)  # electrons
    assert M.psnr(result.denoised / 3.0, truth) > M.psnr(obs.mean(0) / 3.0, truth) + 5.0


def test_extra_observations_are_used(case):
    rate, truth, obs = case
    one = obs[:1]
    alone = denoise(one, TMV, prior="tv")
    assert "no hold-out" in alone.settings["weight_selection"]["note"]
    helped = denoise(one, TMV, prior="tv", extra_observations=truth[None])  # a perfect "Topaz" copy
    assert helped.settings["n_extra_observations"] == 1
    assert M.mse(helped.denoised, truth) < M.mse(alone.denoised, truth)


def test_deconvolve_counts_inverts_the_mtf():
    g = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((2, 48, 40), 7.0, dtype=torch.float64), generator=g)
    back = deconvolve_counts(apply_mtf(counts, TMV, True), TMV, True, min_transfer=1e-6)
    assert torch.allclose(back, counts, atol=1e-8)


def test_spectral_prior_minimiser_is_the_wiener_filter(case):
    """Gaussian data term + spectral prior at β: the gradient vanishes at C̄·S/(S + β N_c)."""
    _, _, obs = case
    counts = deconvolve_counts(obs, TMV, True)
    cbar, n = counts.mean(0), counts.shape[0]
    m = float(cbar.mean())
    prior = SpectralPrior(cbar, n)
    for beta in (0.5, 2.0):
        wiener = torch.fft.ifft2(torch.fft.fft2(cbar) * prior.wiener_gain(beta)).real.requires_grad_(True)
        energy = n / (2 * m) * ((wiener - cbar) ** 2).mean() + prior(wiener, beta)
        (grad,) = torch.autograd.grad(energy, wiener)
        start = cbar.clone().requires_grad_(True)
        (grad0,) = torch.autograd.grad(n / (2 * m) * ((start - cbar) ** 2).mean() + prior(start, beta), start)
        assert float(grad.norm()) < 1e-6 * float(grad0.norm())


def test_gain_estimate_from_shot_noise():
    rate = discs(128, 128) * 30.0
    obs = observe(rate, 3, seed=3, gain=3.0, dqe=0.8)
    assert estimate_gain_per_dqe(obs, TMV) == pytest.approx(3.0 / 0.8, rel=0.03)  # from differences
    assert estimate_gain_per_dqe(obs[:1], TMV) == pytest.approx(3.0 / 0.8, rel=0.05)  # from the high band


# --- bad input -----------------------------------------------------------------------------------------

def test_observations_of_different_shapes():
    with pytest.raises(ConfigError, match="different shapes"):
        denoise([torch.ones(32, 32), torch.ones(32, 30)], TMV)


def test_nan_in_observations():
    obs = torch.full((2, 32, 32), 10.0)
    obs[1, 3, 4] = float("nan")
    with pytest.raises(ConfigError, match="image 1 has 1 NaN"):
        denoise(obs, TMV)


def test_zero_dose():
    with pytest.raises(ConfigError, match="no dose"):
        denoise(torch.zeros(2, 32, 32), TMV)


def test_bad_method_prior_and_detector_values(case):
    _, _, obs = case
    for kwargs, text in [({"method": "magic"}, "method 'magic'"), ({"prior": "l1"}, "prior 'l1'"),
                         ({"dqe": 0.0}, "dqe"), ({"gain": -1.0}, "gain"), ({"prior_weight": -1.0}, "prior_weight")]:
        with pytest.raises(ConfigError, match=text):
            denoise(obs, TMV, **kwargs)


def test_unaligned_observations_warn_with_the_measured_shift():
    rate = discs(96, 96, seed=5, contrast=0.5, n=12) * 200.0
    moved = shift_image(rate, (0.0, 6.0)).clamp_min(0)
    obs = torch.stack([observe(rate, 1, 1)[0], observe(moved, 1, 2)[0]])
    with pytest.warns(UnalignedWarning, match=r"image 1 is shifted by \(dy, dx\) = \(-?0\.\d\d, 6\.\d\d\) px"):
        result = denoise(obs, TMV, prior="none")
    assert result.settings["measured_shifts_px"][1]["shift_px"][1] == pytest.approx(6.0, abs=0.3)
    with warnings.catch_warnings():  # aligned noisy repeats raise no warning
        warnings.simplefilter("error", UnalignedWarning)
        denoise(observe(discs() * 20.0, 3, 4), TMV, prior="none")


# --- alignment ----------------------------------------------------------------------------------------

def textured(h=128, w=128, seed=0) -> torch.Tensor:
    """Band-limited random texture (periodic, so Fourier shifts are exact)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(h, w, generator=g, dtype=torch.float64)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    return torch.fft.ifft2(torch.fft.fft2(noise) * torch.exp(-((fy**2 + fx**2) / 0.04**2))).real


def test_shift_image_matches_integer_roll():
    img = textured()
    assert torch.allclose(shift_image(img, (3.0, -5.0)), torch.roll(img, (3, -5), (0, 1)), atol=1e-10)


@pytest.mark.parametrize("shift", [(2.3, -4.6), (-0.4, 0.7)])
def test_low_pass_correlation_finds_subpixel_shift_at_low_snr(shift):
    """SNR 0.11 per pixel (signal variance / noise variance) on 256²: the low-pass correlation lands
    within 0.25 px, while the whitened phase correlation (scikit-image) is pixels off."""
    img = textured(256, 256)
    img = img / img.std()
    g = torch.Generator().manual_seed(1)
    sigma = 3.0
    a = img + sigma * torch.randn(img.shape, generator=g, dtype=torch.float64)
    b = shift_image(img, shift) + sigma * torch.randn(img.shape, generator=g, dtype=torch.float64)
    found = correlation_peak(a, b, lowpass_cycles_per_px=0.03)
    assert math.hypot(found.shift_px[0] - shift[0], found.shift_px[1] - shift[1]) < 0.25  # measured 0.17, 0.06
    assert found.agreement >= 0.75
    assert measure_shift(a, b, lowpass_cycles_per_px=0.03) == found.shift_px
    registration = pytest.importorskip("skimage.registration", reason="scikit-image not installed (comparison only)")
    phase, _, _ = registration.phase_cross_correlation(a.numpy(), b.numpy(), upsample_factor=20)
    assert np.hypot(*(np.asarray(phase) + np.asarray(shift))) > 1.0  # skimage reports −shift; it misses


def test_taper_does_not_bias_the_shift():
    img = textured(128, 128)
    found = correlation_peak(img, shift_image(img, (2.3, -4.6)), lowpass_cycles_per_px=0.08).shift_px
    assert math.hypot(found[0] - 2.3, found[1] + 4.6) < 0.15  # 0.2–0.4 px without the overlap correction


def test_noise_only_pairs_are_not_confirmed():
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        a, b = (torch.poisson(torch.full((128, 128), 20.0, dtype=torch.float64), generator=g) for _ in range(2))
        assert correlation_peak(a, b).agreement <= 0.5


# --- metrics -------------------------------------------------------------------------------------------

def test_metrics_against_definitions_and_scikit_image():
    ref = discs(64, 64)
    est = ref + 0.05 * textured(64, 64)
    x = (est - ref.min()) / (ref.max() - ref.min())
    r = (ref - ref.min()) / (ref.max() - ref.min())
    mse = float(((x - r) ** 2).mean())
    assert M.mse(est, ref) == pytest.approx(mse, rel=1e-12)
    assert M.psnr(est, ref) == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
    assert M.ffl(est, ref) == pytest.approx(float(focal_frequency_loss(x, r, alpha=1.0)), rel=1e-12)
    assert M.psnr(ref, ref) == math.inf and M.ffl(ref, ref) == 0.0 and M.ssim(ref, ref) == pytest.approx(1.0)
    # affine rescaling of both is invisible with the reference normalisation
    assert M.psnr(3 * est + 7, 3 * ref + 7) == pytest.approx(M.psnr(est, ref), rel=1e-9)
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image not installed (cross-check only)")
    ssim_sk = metrics.structural_similarity(x.numpy(), r.numpy(), data_range=1.0, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False)
    assert M.ssim(est, ref) == pytest.approx(ssim_sk, abs=2e-3)


def test_pairwise_table_shape_and_symmetry():
    imgs = {"a": discs(48, 48, 1), "b": discs(48, 48, 2), "c": discs(48, 48, 3)}
    table = M.pairwise_table(imgs)
    assert table["names"] == ["a", "b", "c"]
    mse = np.asarray(table["mse"])
    assert np.allclose(mse, mse.T) and np.all(np.diag(mse) == 0)
    assert all(table["psnr"][i][i] == math.inf for i in range(3))


# --- baselines -----------------------------------------------------------------------------------------

def test_lowpass_baseline_beats_average(case):
    _, truth, obs = case
    assert M.psnr(B.gaussian_lowpass(obs), truth) > M.psnr(B.average(obs), truth)


def test_noise2noise_trains_and_needs_two_observations(case):
    _, truth, obs = case
    estimate, record = B.noise2noise(obs, steps=30, crop_px=32, batch=4, width=8)
    assert estimate.shape == truth.shape and torch.isfinite(estimate).all()
    assert np.mean(record["loss_history"][-5:]) < np.mean(record["loss_history"][:5])
    with pytest.raises(ConfigError, match="≥ 2"):
        B.noise2noise(obs[:1], steps=1)


# --- Topaz (optional extra) ----------------------------------------------------------------------------

def _topaz_or_skip():
    from difftem.denoise.topaz_model import topaz_available

    if not topaz_available():
        pytest.skip("Topaz-Denoise (optional, GPL-3) is not installed: pip install --no-deps topaz-em==0.3.20 "
                    "and its small deps to run the Topaz tests")


def test_topaz_loads_pretrained_weights_offline(monkeypatch):
    _topaz_or_skip()
    from difftem.denoise import topaz_model

    def no_network(*args, **kwargs):
        raise AssertionError("Topaz tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    topaz_model._load_cpu.cache_clear()
    for name, (_filename, _, _) in topaz_model.TOPAZ_MODELS.items():
        net = topaz_model.load_topaz_model(name)
        assert not net.training and sum(p.numel() for p in net.parameters()) > 0
    # the weights are the shipped ones, not a fresh initialisation: two loads agree exactly and the
    # pretrained U-Net removes most of white noise from a flat image
    topaz_model._load_cpu.cache_clear()
    w = next(topaz_model.load_topaz_model("unet").parameters()).detach().clone()
    topaz_model._load_cpu.cache_clear()
    assert torch.equal(w, next(topaz_model.load_topaz_model("unet").parameters()))
    g = torch.Generator().manual_seed(0)
    noisy = 100 + 10 * torch.randn(96, 96, generator=g)
    out = topaz_model.topaz_denoise(noisy)
    assert out.shape == noisy.shape and float(out.std()) < 0.5 * float(noisy.std())
    assert float(out.mean()) == pytest.approx(100, abs=1.0)  # back in the input's units


def test_topaz_tiles_match_whole_image():
    _topaz_or_skip()
    from difftem.denoise.topaz_model import topaz_denoise

    img = 50 + 5 * textured(96, 96).float() / float(textured(96, 96).std())
    whole = topaz_denoise(img, "affine")
    tiled = topaz_denoise(img, "affine", tile_px=48, padding_px=24)  # the affine filter is 31 px wide
    assert torch.allclose(whole, tiled, atol=1e-4)


def test_topaz_missing_gives_clear_error(monkeypatch):
    from difftem.denoise import topaz_model

    monkeypatch.setattr(topaz_model.importlib.util, "find_spec", lambda name, *a: None)
    topaz_model._load_cpu.cache_clear()
    try:
        assert not topaz_model.topaz_available()
        with pytest.raises(topaz_model.TopazUnavailableError, match="pip install --no-deps topaz-em==0.3.20"):
            topaz_model.load_topaz_model("unet")
    finally:
        topaz_model._load_cpu.cache_clear()


def test_poisson_loss_keeps_its_digits_at_millions_of_counts():
    """At 3e6 counts per pixel (a bright real micrograph read with the gain estimated from its noise) the logged
    Poisson loss was n μ − C log μ minus its value at the mean, two float32 numbers of ~5e7 that agree to 7 digits,
    and it jumped between 0.04 and 4 from step to step. As a deviance it matches the float64 value at the returned
    image (the lowest-loss iterate) and starts at 0 (the mean image)."""
    gen = torch.Generator().manual_seed(0)
    truth = 3e6 * (1 + 0.01 * torch.randn(96, 96, generator=gen, dtype=torch.float64))
    counts = torch.poisson(truth, generator=gen).float()
    res = denoise(counts, None, method="poisson", prior="none", steps=40, init="mean")
    c = counts.double()
    r = res.rate.double() / c
    deviance = float((c * (r - 1 - torch.log(r))).mean())
    assert abs(res.loss_history[0]) < 1e-3
    assert abs(res.settings["lowest_loss"] - deviance) < 1e-3 * max(deviance, 1.0), (res.settings, deviance)
