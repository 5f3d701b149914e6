"""Gradient estimators through Poisson shot noise (difftem.learn.estimators).

Stochastic estimators are checked the way DESIGN.md §4 asks: the mean of many seeded gradient
samples against the exact gradient of the expectation (autograd of ``expected_mse``, itself
checked against central finite differences and gradcheck), within a few standard errors.
Per-sample gradients come from one backward pass: the rate is replicated along a batch dim, each
replica an independent problem whose gradient is ``replicas ×`` its share of the batch mean.
"""

import pytest
import torch

from difftem.forward.detector import MeasuredMTF, MTFParams, apply_mtf
from difftem.forward.estimators import (
    LearnableMTF,
    apply_detector_mtf,
    expected_mse,
    poisson_log_prob,
    reparameterised_loss,
    surrogate_loss,
    surrogate_loss_baseline,
)

TMV = MTFParams(0.7, 0.2, 0.1, 10.0, 40.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops (conftest.one_thread)


def smooth_rate(shape, mean_counts, dtype=torch.float64):
    """A smooth positive pattern with the given mean (counts/pixel), ranging ±60 %."""
    h, w = shape
    y = torch.arange(h, dtype=dtype)[:, None]
    x = torch.arange(w, dtype=dtype)[None, :]
    pattern = 1 + 0.6 * torch.sin(2 * torch.pi * x / w + 0.3) * torch.cos(2 * torch.pi * y / h - 0.2)
    return mean_counts * pattern


def observed(rate, mtf, seed):
    """Data: one noisy detector image from a slightly different rate (so the loss has a slope)."""
    g = torch.Generator().manual_seed(seed)
    return apply_mtf(torch.poisson(1.15 * rate.roll(1, -1), generator=g), mtf, normalize_dc=False)


def exact_rate_gradient(rate, data, mtf):
    leaf = rate.detach().clone().requires_grad_()
    expected_mse(leaf, data, mtf).backward()
    return leaf.grad


def finite_difference_rate_gradient(rate, data, mtf, step=1e-3):
    flat = rate.detach().clone().reshape(-1)
    grad = torch.empty_like(flat)
    for i in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += step
        minus[i] -= step
        difference = expected_mse(plus.view_as(rate), data, mtf) - expected_mse(minus.view_as(rate), data, mtf)
        grad[i] = difference / (2 * step)
    return grad.view_as(rate)


def per_sample_rate_gradients(estimator, rate, data, mtf, seed, replicas, **kwargs):
    """(replicas, H, W) independent gradient samples of one estimator call each."""
    leaf = rate.detach().expand(replicas, *rate.shape).clone().requires_grad_()
    estimator(leaf, data, mtf, torch.Generator().manual_seed(seed), **kwargs).surrogate.backward()
    return leaf.grad * replicas


def z_scores(samples, reference):
    """Per-pixel (mean − reference) / standard error over the leading sample dim."""
    return (samples.mean(0) - reference) / (samples.std(0) / samples.shape[0] ** 0.5)


def hotelling_ratio(samples, reference):
    """Hotelling T² / dof of the sample mean against ``reference``: ≈ 1 ± sqrt(2/dof) when unbiased.

    Pixels' gradient samples are correlated (they share the image's residual), so per-pixel z² do
    not add up to a χ²; whitening with the sample covariance makes them do so.
    """
    flat = samples.flatten(1)
    difference = flat.mean(0) - reference.flatten()
    covariance = torch.cov(flat.T)
    return float(flat.shape[0] * difference @ torch.linalg.solve(covariance, difference) / flat.shape[1])


# --- MTF plumbing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize_dc", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_detector_mtf_matches_detector_apply_mtf(normalize_dc, dtype):
    image = torch.rand(2, 3, 12, 10, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 50
    measured = MeasuredMTF(torch.linspace(0, 0.75, 7).numpy(), torch.linspace(1, 0.2, 7).numpy())
    for mtf in (None, TMV, measured):
        assert torch.equal(apply_detector_mtf(image, mtf, normalize_dc), apply_mtf(image, mtf, normalize_dc))
    learnable = LearnableMTF.from_params(TMV)
    torch.testing.assert_close(apply_detector_mtf(image, learnable, normalize_dc), apply_mtf(image, TMV, normalize_dc))
    torch.testing.assert_close(learnable(image), apply_mtf(image, TMV, normalize_dc=False))


def test_learnable_mtf_round_trip_and_positivity():
    learnable = LearnableMTF.from_params(TMV)
    back = learnable.to_params()
    for name in ("a", "b", "c", "alpha", "beta"):
        assert getattr(back, name) == pytest.approx(getattr(TMV, name), rel=1e-12)
    omega = torch.linspace(0, 0.7, 9, dtype=torch.float64)
    torch.testing.assert_close(learnable.curve(omega), TMV(omega))
    with torch.no_grad():
        learnable.raw_alpha.fill_(-30.0)
    assert float(learnable.alpha.detach()) > 0
    assert {n for n, _ in learnable.named_parameters()} == {"a", "b", "c", "raw_alpha", "raw_beta"}
    with pytest.raises(ValueError):
        LearnableMTF(0.7, 0.2, 0.1, 0.0, 40.0)


def test_poisson_log_prob_matches_torch_distribution_and_is_finite_at_zero_rate():
    rate = torch.tensor([0.0, 0.5, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([0.0, 1.0, 2.0, 37.0], dtype=torch.float64)
    log_prob = poisson_log_prob(counts, rate)
    torch.testing.assert_close(log_prob[1:], torch.distributions.Poisson(rate[1:]).log_prob(counts[1:]))
    log_prob.sum().backward()
    torch.testing.assert_close(rate.grad, torch.tensor([-1.0, 1.0, 2 / 3 - 1, 37 / 40 - 1], dtype=torch.float64))


# --- exact expectation ------------------------------------------------------------------------------

@pytest.mark.parametrize("mtf", [None, TMV], ids=["identity", "tmv"])
def test_expected_mse_equals_monte_carlo_mean(mtf):
    rate = smooth_rate((16, 16), 20.0)
    data = observed(rate, TMV, seed=1)
    draws = 4000
    counts = torch.poisson(rate.expand(draws, 16, 16).contiguous(), generator=torch.Generator().manual_seed(2))
    per_pixel = (data - apply_mtf(counts, mtf, normalize_dc=False)) ** 2
    image_loss = per_pixel.mean(dim=(-2, -1))
    standard_error = image_loss.std() / draws**0.5
    assert abs(float(image_loss.mean() - expected_mse(rate, data, mtf))) < 4 * float(standard_error)
    pixel_z = z_scores(per_pixel, expected_mse(rate, data, mtf, reduction="none"))
    assert pixel_z.abs().max() < 4.5


def test_expected_mse_normalize_dc_and_batch_broadcast():
    rate = smooth_rate((8, 8), 10.0).expand(3, 8, 8) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)[:, None, None]
    data = observed(smooth_rate((8, 8), 10.0), TMV, seed=3)
    per_image = torch.stack([expected_mse(r, data, TMV, normalize_dc=True) for r in rate])
    torch.testing.assert_close(expected_mse(rate, data, TMV, normalize_dc=True, reduction="none").mean((-2, -1)),
                               per_image)
    # Scaling the MTF by s: (data − s·M∗λ)² + s²·Var; normalize_dc removes s.
    scaled = MTFParams(2 * TMV.a, 2 * TMV.b, 2 * TMV.c, TMV.alpha, TMV.beta)
    torch.testing.assert_close(expected_mse(rate, data, scaled, normalize_dc=True),
                               expected_mse(rate, data, TMV, normalize_dc=True))


def test_expected_mse_gradients_match_central_finite_differences():
    rate = smooth_rate((8, 8), 15.0)
    data = observed(rate, TMV, seed=4)
    for mtf in (None, TMV):
        torch.testing.assert_close(exact_rate_gradient(rate, data, mtf),
                                   finite_difference_rate_gradient(rate, data, mtf), rtol=1e-6, atol=1e-9)
    learnable = LearnableMTF.from_params(TMV)
    expected_mse(rate, data, learnable).backward()
    for name, parameter in learnable.named_parameters():
        step = 1e-5
        with torch.no_grad():
            parameter += step
            plus = float(expected_mse(rate, data, learnable))
            parameter -= 2 * step
            minus = float(expected_mse(rate, data, learnable))
            parameter += step
        assert float(parameter.grad) == pytest.approx((plus - minus) / (2 * step), rel=1e-6), name


def test_expected_mse_gradcheck_learnable_mtf_and_rate():
    rate = smooth_rate((6, 8), 12.0).requires_grad_()
    data = observed(rate.detach(), TMV, seed=5)

    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mtf = LearnableMTF(0.7, 0.2, 0.1, 3.0, 6.0)  # moderate α, β keep softplus away from its switch

        def forward(self, rate_in):
            return expected_mse(rate_in, data, self.mtf)

    objective = Objective()
    names = [n for n, _ in objective.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for _, p in objective.named_parameters())

    def as_function(rate_in, *params):
        return torch.func.functional_call(objective, dict(zip(names, params, strict=True)), (rate_in,))

    assert torch.autograd.gradcheck(as_function, (rate, *values))


# --- stochastic estimators: unbiasedness -------------------------------------------------------------

UNBIASED_CASES = [
    # (estimator, mtf, mean counts, kwargs)
    pytest.param(surrogate_loss, TMV, 20.0, {"pairing": "image"}, id="surrogate-image-tmv"),
    pytest.param(surrogate_loss, None, 20.0, {"pairing": "pixel"}, id="surrogate-pixel-identity"),
    pytest.param(surrogate_loss, TMV, 5.0, {"pairing": "image", "n_samples": 2}, id="surrogate-image-tmv-low"),
    pytest.param(surrogate_loss_baseline, TMV, 20.0, {"pairing": "image", "n_samples": 4}, id="baseline-image-tmv"),
    pytest.param(surrogate_loss_baseline, None, 50.0, {"pairing": "pixel", "n_samples": 2},
                 id="baseline-pixel-identity"),
    pytest.param(reparameterised_loss, TMV, 200.0, {}, id="reparam-tmv-high"),
    # MSE depends on the counts' mean and variance only, which the Gaussian matches: exact even at 2 counts.
    pytest.param(reparameterised_loss, TMV, 2.0, {}, id="reparam-tmv-mse-low"),
]


@pytest.mark.parametrize("estimator,mtf,mean_counts,kwargs", UNBIASED_CASES)
def test_mean_rate_gradient_matches_exact_and_finite_difference(estimator, mtf, mean_counts, kwargs):
    rate = smooth_rate((8, 8), mean_counts)
    data = observed(rate, TMV, seed=6)
    exact = exact_rate_gradient(rate, data, mtf)
    finite_difference = finite_difference_rate_gradient(rate, data, mtf)
    samples = per_sample_rate_gradients(estimator, rate, data, mtf, seed=7, replicas=4000, **kwargs)
    for reference in (exact, finite_difference):
        assert z_scores(samples, reference).abs().max() < 5
        assert hotelling_ratio(samples, reference) < 1.7  # 64 dof: 1 ± 0.18 when unbiased (score tails add a bit)
    # and the estimate is not vacuous: the exact gradient is resolved from the noise
    assert float(samples.mean(0).flatten() @ exact.flatten()) > 0


def test_seed_paper_pixel_pairing_is_biased_under_a_blurring_mtf():
    rate = smooth_rate((8, 8), 20.0)
    data = observed(rate, TMV, seed=6)
    samples = per_sample_rate_gradients(surrogate_loss, rate, data, TMV, seed=8, replicas=4000, pairing="pixel")
    assert hotelling_ratio(samples, exact_rate_gradient(rate, data, TMV)) > 25


def expected_pixel_loss_by_pmf_sum(rate, data, pixel_loss, max_count=80):
    """Exact E[pixel_loss(I, data)] per pixel for I ~ Poisson(rate), no MTF (pixels independent)."""
    counts = torch.arange(max_count + 1, dtype=rate.dtype)
    pmf = torch.exp(poisson_log_prob(counts, rate[..., None]))
    return (pmf * pixel_loss(counts, data[..., None])).sum(-1)


def test_reparameterised_is_biased_at_low_counts_for_a_non_quadratic_loss():
    """The Gaussian lacks the Poisson skewness; a quartic loss sees it, the score function does not care."""
    def quartic(prediction, data):
        return (data - prediction) ** 4

    rate = smooth_rate((8, 8), 2.0)
    data = torch.full_like(rate, 2.0)
    leaf = rate.clone().requires_grad_()
    expected_pixel_loss_by_pmf_sum(leaf, data, quartic).mean().backward()
    exact = leaf.grad

    reparam = per_sample_rate_gradients(reparameterised_loss, rate, data, None, seed=9, replicas=4000,
                                        pixel_loss=quartic)
    bias = reparam.mean(0) - exact
    standard_error = reparam.std(0) / reparam.shape[0] ** 0.5
    assert (bias / standard_error).abs().mean() > 8  # detectable at every pixel on average
    assert (bias.norm() / exact.norm()) > 0.2  # and large

    score = per_sample_rate_gradients(surrogate_loss_baseline, rate, data, None, seed=10, replicas=4000,
                                      n_samples=4, pairing="pixel", pixel_loss=quartic)
    assert z_scores(score, exact).abs().max() < 4.5


# --- stochastic estimators: MTF-parameter gradients ------------------------------------------------

@pytest.mark.parametrize("estimator,kwargs", [
    (surrogate_loss, {"pairing": "image"}),
    (surrogate_loss_baseline, {"pairing": "pixel"}),
    (reparameterised_loss, {}),
])
def test_mean_mtf_parameter_gradient_matches_exact(estimator, kwargs):
    rate = smooth_rate((8, 8), 30.0)
    data = observed(rate, TMV, seed=11)
    exact_mtf = LearnableMTF.from_params(TMV)
    expected_mse(rate, data, exact_mtf).backward()
    exact = torch.stack([p.grad for p in exact_mtf.parameters()])

    mtf = LearnableMTF.from_params(TMV)
    generator = torch.Generator().manual_seed(12)
    batches = []
    for _ in range(20):  # 20 batch means of 200 draws: their spread gives the standard error
        mtf.zero_grad()
        estimator(rate, data, mtf, generator, n_samples=200, **kwargs).surrogate.backward()
        batches.append(torch.stack([p.grad.clone() for p in mtf.parameters()]))
    z = z_scores(torch.stack(batches), exact)
    assert z.abs().max() < 4.5


# --- the detector's DQE and gain -----------------------------------------------------------------------

def test_expected_mse_with_dqe_and_gain_equals_the_detectors_monte_carlo_mean():
    """The detector draws Poisson(DQE·λ)/DQE then applies the MTF and the gain (difftem.detector)."""
    from difftem.forward.detector import shot_noise

    rate = smooth_rate((16, 16), 20.0)
    dqe, gain = 0.6, 2.5
    data = gain * observed(rate, TMV, seed=21)
    draws = 4000
    counts = shot_noise(rate.expand(draws, 16, 16).contiguous(), dqe, torch.Generator().manual_seed(22))
    image_loss = ((data - gain * apply_mtf(counts, TMV, normalize_dc=False)) ** 2).mean(dim=(-2, -1))
    exact = float(expected_mse(rate, data, TMV, dqe=dqe, gain=gain))
    assert abs(float(image_loss.mean()) - exact) < 4 * float(image_loss.std()) / draws**0.5
    # the noise term alone scales as gain²/DQE
    no_noise = float(((data - gain * apply_mtf(rate, TMV, normalize_dc=False)) ** 2).mean())
    base = float(expected_mse(rate, data, TMV)) - float(((data - apply_mtf(rate, TMV, normalize_dc=False)) ** 2).mean())
    assert exact - no_noise == pytest.approx(gain**2 / dqe * base, rel=1e-10)


@pytest.mark.parametrize("estimator,kwargs", [
    (surrogate_loss, {"pairing": "image"}),
    (surrogate_loss_baseline, {"pairing": "image"}),
    (reparameterised_loss, {}),
])
def test_mean_dqe_and_gain_gradients_match_exact(estimator, kwargs):
    rate = smooth_rate((8, 8), 30.0)
    data = 1.7 * observed(rate, TMV, seed=23)

    def leaves():
        return (torch.tensor(0.7, dtype=torch.float64, requires_grad=True),
                torch.tensor(1.5, dtype=torch.float64, requires_grad=True))

    dqe, gain = leaves()
    expected_mse(rate, data, TMV, dqe=dqe, gain=gain).backward()
    exact = torch.stack([dqe.grad, gain.grad])
    generator = torch.Generator().manual_seed(24)
    batches = []
    for _ in range(20):
        dqe, gain = leaves()
        estimator(rate, data, TMV, generator, n_samples=200, dqe=dqe, gain=gain, **kwargs).surrogate.backward()
        batches.append(torch.stack([dqe.grad, gain.grad]))
    assert float(exact.abs().min()) > 0
    assert z_scores(torch.stack(batches), exact).abs().max() < 4.5


# --- variance reduction, dtypes, batches, randomness ---------------------------------------------------

@pytest.mark.parametrize("mtf,pairing", [(TMV, "image"), (None, "pixel")], ids=["image-tmv", "pixel-identity"])
def test_leave_one_out_baseline_reduces_variance(mtf, pairing):
    rate = smooth_rate((8, 8), 20.0)
    data = observed(rate, TMV, seed=13)
    plain = per_sample_rate_gradients(surrogate_loss, rate, data, mtf, seed=14, replicas=2000, n_samples=4,
                                      pairing=pairing)
    baseline = per_sample_rate_gradients(surrogate_loss_baseline, rate, data, mtf, seed=14, replicas=2000,
                                         n_samples=4, pairing=pairing)
    ratio = baseline.var(0).sum() / plain.var(0).sum()
    assert ratio < 0.8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_estimators_run_on_batches_in_the_input_dtype(dtype):
    rate = smooth_rate((8, 10), 25.0, dtype).expand(2, 3, 8, 10).clone().requires_grad_()
    data = observed(smooth_rate((8, 10), 25.0), TMV, seed=15).to(dtype)
    mtf = LearnableMTF.from_params(TMV)
    for estimator, kwargs in ((surrogate_loss, {"n_samples": 2}), (surrogate_loss_baseline, {}),
                              (reparameterised_loss, {}), (surrogate_loss, {"pairing": "pixel"})):
        rate.grad = None
        mtf.zero_grad()
        out = estimator(rate, data, mtf, torch.Generator().manual_seed(16), **kwargs)
        assert out.surrogate.shape == () and out.loss.shape == () and not out.loss.requires_grad
        assert out.surrogate.dtype == dtype
        out.surrogate.backward()
        assert rate.grad.dtype == dtype and torch.isfinite(rate.grad).all()
        assert all(torch.isfinite(p.grad) for p in mtf.parameters())
    exact = expected_mse(rate, data, TMV)
    assert exact.dtype == dtype
    sampled = surrogate_loss(rate, data, TMV, torch.Generator().manual_seed(17), n_samples=64).loss
    assert float(sampled) == pytest.approx(float(exact.detach()), rel=0.05)


def test_randomness_comes_only_from_the_generator():
    rate = smooth_rate((8, 8), 10.0).requires_grad_()
    data = observed(rate.detach(), TMV, seed=18)
    global_state = torch.get_rng_state()
    for estimator in (surrogate_loss, surrogate_loss_baseline, reparameterised_loss):
        first = estimator(rate, data, TMV, torch.Generator().manual_seed(19), n_samples=2)
        torch.manual_seed(1234)  # global RNG must not matter
        second = estimator(rate, data, TMV, torch.Generator().manual_seed(19), n_samples=2)
        assert torch.equal(first.surrogate, second.surrogate)
    torch.set_rng_state(global_state)


def test_argument_validation():
    rate = smooth_rate((4, 4), 10.0)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        surrogate_loss_baseline(rate, rate, None, generator, n_samples=1)
    with pytest.raises(ValueError):
        surrogate_loss(rate, rate, None, generator, pairing="pixels")
    with pytest.raises(ValueError):
        surrogate_loss(rate, rate, None, generator, n_samples=0)
    with pytest.raises(ValueError):
        expected_mse(rate, rate, None, reduction="max")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_estimators_follow_the_cuda_device():
    device = torch.device("cuda")
    rate = smooth_rate((16, 16), 20.0).to(device).requires_grad_()
    data = observed(smooth_rate((16, 16), 20.0), TMV, seed=20).to(device)
    mtf = LearnableMTF.from_params(TMV, device=device)
    generator = torch.Generator(device=device).manual_seed(21)
    exact = expected_mse(rate, data, mtf)
    assert exact.device.type == "cuda"
    for estimator in (surrogate_loss, surrogate_loss_baseline, reparameterised_loss):
        out = estimator(rate, data, mtf, generator, n_samples=256)
        assert out.surrogate.device.type == "cuda"
        out.surrogate.backward()
        assert rate.grad.device.type == "cuda"
        assert float(out.loss) == pytest.approx(float(exact), rel=0.02)
        rate.grad = None
    cpu_rate = rate.detach().cpu()
    torch.testing.assert_close(expected_mse(rate, data, TMV).cpu(), expected_mse(cpu_rate, data.cpu(), TMV))
