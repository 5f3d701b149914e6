r"""Gradients of the expected detector loss through Poisson shot noise.

The detector model (PHYSICS.md §5–6): expected counts :math:`\lambda \ge 0` per pixel, noisy
counts :math:`I_q \sim \mathrm{Poisson}(\lambda)` independently per pixel, the detected image
:math:`I_n = M * I_q` (the MTF applied in Fourier space, a linear, shift-invariant, periodic
filter with real-space kernel :math:`h`), compared with data :math:`R_D` by a per-pixel loss. The
target is the gradient of the *expected* loss

.. math:: \mathcal{L}(\lambda, M) = \mathbb{E}_{I_q \sim \mathrm{Poisson}(\lambda)}
          \big[\operatorname{mean}_x (R_D - M * I_q)^2(x)\big]

with respect to :math:`\lambda` (and through it anything upstream) and to the MTF parameters.
Every estimator also takes the detector's DQE and gain
(counts :math:`\mathrm{Poisson}(\mathrm{DQE}\,\lambda)/\mathrm{DQE}`, image :math:`g\,M * I_q`,
as :mod:`difftem.detector` simulates them), floats or tensors with gradients.
Sampling has no pathwise derivative in :math:`\lambda`, hence the estimators here:

``surrogate_loss``
    Score-function (REINFORCE) surrogate of Schulman et al. 2015, the seed paper's estimator.
``surrogate_loss_baseline``
    The same with a leave-one-out baseline over ``n_samples ≥ 2`` draws (unbiased, lower variance).
``reparameterised_loss``
    Gaussian approximation :math:`I_q \approx \lambda + \sqrt{\lambda}\,\varepsilon`, pathwise.
``expected_mse``
    The exact expectation for the squared error, :math:`(R_D - M*\lambda)^2 + (h^2) * \lambda`:
    no sampling, exact gradients. Prefer it whenever the loss is the MSE.

Every function takes ``(..., H, W)`` tensors (``rate`` and ``data`` broadcast against each other),
float32 or float64, on the device of its inputs; randomness comes only from the ``generator``
passed in (on the same device as ``rate``). The MTF argument may be ``None`` (identity), a
:class:`difftem.detector.MTFParams` of floats, any callable mapping |ω| (cycles/pixel) to the
MTF value (e.g. :class:`difftem.detector.MeasuredMTF`), or a :class:`LearnableMTF` whose
parameters receive gradients. All of them are applied exactly as
:func:`difftem.detector.apply_mtf` does, through :func:`apply_detector_mtf`.

Which pixels a count's score is paired with matters (``pairing`` below). The score of
:math:`I_q(y)` must multiply every loss term that depends on :math:`I_q(y)`. The seed paper
multiplies the per-pixel loss :math:`\ell(x)` by the per-pixel log-likelihood of the *same* pixel
(``pairing="pixel"``); that is unbiased only when :math:`\ell(x)` depends on :math:`I_q(x)` alone,
i.e. with no MTF (or any MTF that is the identity). With a blurring MTF, :math:`\ell(x)` depends on
the neighbours' counts and the pixel pairing drops the cross terms: for the squared error its
expected gradient is
:math:`\tfrac1N[-2h(0)\,r(y) + h(0)^2]` instead of the true
:math:`\tfrac1N[-2(h \star r)(y) + \textstyle\sum_x h(x)^2]` with :math:`r = R_D - M*\lambda`
(for the paper's TMV MTF on 32² pixels, a 52–55 % relative error of the mean gradient at 10 to
1000 counts, see ``benchmarks/estimator_report.py``). The default ``pairing="image"`` multiplies
each image's mean loss by the log-likelihood of all of its pixels: unbiased for any MTF and any
per-pixel loss, at the price of a variance that grows with the number of pixels (on 32² pixels the
noise of one single-draw call is 700–3000 × the gradient's norm; the leave-one-out baseline with
4 draws brings it to ~20 ×, 16 draws to ~10 ×). For the squared error use :func:`expected_mse`
(exact) or, if a sample path is wanted, :func:`reparameterised_loss` (unbiased for this loss; one
call's noise 0.01–0.5 × the gradient's norm at 1000–10 counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.fft import irfft2, rfft2
from .detector import MTFParams, apply_mtf, mtf_transfer

__all__ = [
    "EstimatorOutput",
    "LearnableMTF",
    "MTFLike",
    "apply_detector_mtf",
    "expected_mse",
    "mtf_transfer",
    "poisson_log_prob",
    "reparameterised_loss",
    "squared_error",
    "surrogate_loss",
    "surrogate_loss_baseline",
]

PixelLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Pairing = Literal["image", "pixel"]


def squared_error(prediction: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error ``(data − prediction)²`` (counts²); the default ``pixel_loss``."""
    return (data - prediction) ** 2


class EstimatorOutput(NamedTuple):
    """What a stochastic estimator returns.

    Attributes
    ----------
    surrogate : torch.Tensor
        Scalar to call ``.backward()`` on: its gradient is the estimate of the gradient of the
        expected loss. Its *value* is not the loss (for the score-function surrogates it is
        meaningless); log ``loss`` instead.
    loss : torch.Tensor
        Scalar, detached: the Monte-Carlo mean of the sampled loss (counts²), an unbiased
        estimate of the expected loss (of the Gaussian-approximated one for
        :func:`reparameterised_loss`).
    """

    surrogate: torch.Tensor
    loss: torch.Tensor


def _inverse_softplus(value: float) -> float:
    # log(expm1(v)) written so that it neither overflows for large v nor loses digits for small v.
    return value + math.log(-math.expm1(-value))


class LearnableMTF(nn.Module):
    r"""The seed paper's MTF with learnable parameters.

    MTF(ω) = a / (1 + α ω²) + b / (1 + β ω²) + c, ω in cycles/pixel. ``a``, ``b`` and ``c`` are
    free parameters; α and β are kept > 0 as softplus of the raw parameters ``raw_alpha`` and
    ``raw_beta`` (so gradients are reported w.r.t. the raw values).

    Parameters
    ----------
    a, b, c : float
        Amplitudes (dimensionless).
    alpha, beta : float
        Widths (pixel²), > 0.
    dtype : torch.dtype, optional
        Parameter dtype (float64 by default: five scalars, and fits like the precision).
    device : torch.device or str, optional
        Parameter device; it must be the device of the images filtered.
    """

    def __init__(self, a: float, b: float, c: float, alpha: float, beta: float, *,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        super().__init__()
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"LearnableMTF: alpha and beta must be > 0, got alpha={alpha}, beta={beta}")

        def scalar(value: float) -> nn.Parameter:
            return nn.Parameter(torch.tensor(float(value), dtype=dtype, device=device))

        self.a, self.b, self.c = scalar(a), scalar(b), scalar(c)
        self.raw_alpha, self.raw_beta = scalar(_inverse_softplus(alpha)), scalar(_inverse_softplus(beta))

    @property
    def alpha(self) -> torch.Tensor:
        """α = softplus(raw_alpha) (pixel²), a 0-d tensor carrying gradients."""
        return F.softplus(self.raw_alpha)

    @property
    def beta(self) -> torch.Tensor:
        """β = softplus(raw_beta) (pixel²), a 0-d tensor carrying gradients."""
        return F.softplus(self.raw_beta)

    def curve(self, omega: torch.Tensor) -> torch.Tensor:
        """MTF at spatial frequencies ``omega`` (cycles/pixel, any shape); same shape, differentiable."""
        omega_sq = omega**2
        return self.a / (1 + self.alpha * omega_sq) + self.b / (1 + self.beta * omega_sq) + self.c

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Filter ``(..., H, W)`` images like ``apply_mtf(image, mtf, normalize_dc=False)``."""
        return apply_detector_mtf(image, self, normalize_dc=False)

    @classmethod
    def from_params(cls, params: MTFParams, **kwargs) -> LearnableMTF:
        """Start from a :class:`difftem.detector.MTFParams`; ``kwargs`` go to the constructor."""
        return cls(params.a, params.b, params.c, params.alpha, params.beta, **kwargs)

    def to_params(self) -> MTFParams:
        """The current values as a frozen :class:`difftem.detector.MTFParams` of floats."""
        values = (self.a, self.b, self.c, self.alpha, self.beta)
        return MTFParams(*(float(v.detach()) for v in values))

    def extra_repr(self) -> str:
        p = self.to_params()
        return f"a={p.a:.6g}, b={p.b:.6g}, c={p.c:.6g}, alpha={p.alpha:.6g}, beta={p.beta:.6g}"


MTFLike = MTFParams | LearnableMTF | Callable[[torch.Tensor], torch.Tensor] | None


def apply_detector_mtf(image: torch.Tensor, mtf: MTFLike, normalize_dc: bool = False) -> torch.Tensor:
    """:func:`difftem.detector.apply_mtf` with this module's default ``normalize_dc=False``."""
    return apply_mtf(image, mtf, normalize_dc)


def poisson_log_prob(counts: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Elementwise log Poisson pmf, ``counts·log(rate) − rate − lgamma(counts + 1)``.

    Differentiable in ``rate``; its derivative, the score ``counts/rate − 1``, is taken as −1 at
    ``rate = 0`` (where ``counts`` is 0), the one-sided derivative, instead of 0/0.
    """
    # Clamping keeps log finite at rate = 0; the clamp passes no gradient there, leaving −1 from −rate.
    safe_rate = rate.clamp_min(torch.finfo(rate.dtype).tiny)
    return counts * torch.log(safe_rate) - rate - torch.lgamma(counts + 1)


def _check_samples(n_samples: int, minimum: int) -> None:
    if int(n_samples) != n_samples or n_samples < minimum:
        raise ValueError(f"n_samples must be an integer ≥ {minimum}, got {n_samples!r}")


def _check_pairing(pairing: str) -> None:
    if pairing not in ("image", "pixel"):
        raise ValueError(f"pairing must be 'image' or 'pixel', got {pairing!r}")


def _sampled_pixel_loss(rate: torch.Tensor, data: torch.Tensor, mtf: MTFLike, generator: torch.Generator,
                        n_samples: int, pixel_loss: PixelLoss, normalize_dc: bool, dqe=1.0, gain=1.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_samples`` detector images; return (per-pixel loss, log pmf), both ``(n, *shape)``.

    Counts n ~ Poisson(DQE·λ), detected image gain · M * (n/DQE). The draws carry no gradient; the
    log pmf carries the gradient in ``rate`` (and DQE); the loss carries the pathwise gradient in the
    MTF parameters, the gain, DQE (through n/DQE) and ``data``, if they require grad.
    """
    shape = torch.broadcast_shapes(rate.shape, data.shape)
    detected_rate = rate * dqe
    counts = torch.poisson(detected_rate.detach().expand(n_samples, *shape).contiguous(), generator=generator)
    log_prob = poisson_log_prob(counts, detected_rate)
    per_pixel = pixel_loss(gain * apply_detector_mtf(counts / dqe, mtf, normalize_dc), data)
    return per_pixel, log_prob


def _score_term(weight: torch.Tensor, log_prob: torch.Tensor, pairing: Pairing) -> torch.Tensor:
    """Mean over samples, batch and pixels of (detached weight) × log pmf, paired as asked."""
    weight = weight.detach()
    if pairing == "pixel":
        return (weight * log_prob).mean()
    # Each image's mean loss times its whole log-likelihood: the per-image score-function identity.
    return (weight.mean(dim=(-2, -1)) * log_prob.sum(dim=(-2, -1))).mean()


def surrogate_loss(rate: torch.Tensor, data: torch.Tensor, mtf: MTFLike, generator: torch.Generator,
                   n_samples: int = 1, *, pairing: Pairing = "image", pixel_loss: PixelLoss = squared_error,
                   normalize_dc: bool = False, dqe=1.0, gain=1.0) -> EstimatorOutput:
    r"""Score-function (REINFORCE) surrogate of the expected loss (Schulman et al. 2015).

    Draws :math:`I_q^{(k)} \sim \mathrm{Poisson}(\lambda)`, k = 1…n (no gradient), computes the
    log pmf :math:`ll_k = I_q^{(k)}\log\lambda - \lambda - \log\Gamma(I_q^{(k)}+1)` (gradient in
    :math:`\lambda`), :math:`I_n^{(k)} = M * I_q^{(k)}` (gradient in the MTF parameters) and the
    per-pixel loss :math:`\ell_k = \mathrm{pixel\_loss}(I_n^{(k)}, R_D)`, and returns

    - ``pairing="pixel"`` (the seed paper):
      :math:`SL = \operatorname{mean}_{k,x}[\bar\ell_k(x)\, ll_k(x)] + \operatorname{mean}_{k,x}\ell_k(x)`;
    - ``pairing="image"`` (default):
      :math:`SL = \operatorname{mean}_k[\bar L_k \sum_x ll_k(x)] + \operatorname{mean}_{k,x}\ell_k(x)`,
      :math:`L_k = \operatorname{mean}_x \ell_k(x)`,

    where the bar means detached; means also run over leading batch dims, each image paired with
    its own log-likelihood. The first term's gradient is the score-function estimate of
    :math:`\nabla_\lambda \mathbb{E}[L]`, the second's the pathwise estimate of
    :math:`\nabla_{\mathrm{MTF}} \mathbb{E}[L]` (it has no gradient in λ, the draws being
    detached). Both are unbiased for ``pairing="image"``, for any MTF and any per-pixel loss.
    ``pairing="pixel"`` is unbiased in λ only when each pixel's loss depends on its own count
    alone (``mtf=None``); with a blurring MTF its λ-gradient is biased (module docstring).

    Parameters
    ----------
    rate : torch.Tensor
        Expected counts λ ≥ 0, ``(..., H, W)`` electrons/pixel; may carry a graph.
    data : torch.Tensor
        Observed image :math:`R_D`, broadcastable with ``rate`` (counts).
    mtf : None, MTFParams, LearnableMTF or callable
        The detector MTF applied to the counts.
    generator : torch.Generator
        Source of all randomness (same device as ``rate``).
    n_samples : int
        Draws per call, ≥ 1; the estimate is their mean.
    pairing : {"image", "pixel"}
        Which log-likelihoods multiply which losses (above).
    pixel_loss : callable
        ``pixel_loss(prediction, data)`` → per-pixel loss of the broadcast shape; squared error
        by default.
    normalize_dc : bool
        Divide the MTF by MTF(0) (as ``apply_mtf(..., normalize_dc=True)``).
    dqe, gain : float or tensor
        The detector's DQE (counts Poisson(DQE·λ)/DQE: mean λ, variance λ/DQE) and gain (output units
        per electron; the data are then in those units). Tensors that require grad get gradients.

    Returns
    -------
    EstimatorOutput
        ``surrogate`` (scalar, call ``backward`` on it) and ``loss`` (scalar, detached, the
        sampled mean loss in counts²).
    """
    _check_samples(n_samples, 1)
    _check_pairing(pairing)
    per_pixel, log_prob = _sampled_pixel_loss(rate, data, mtf, generator, n_samples, pixel_loss, normalize_dc,
                                              dqe, gain)
    surrogate = _score_term(per_pixel, log_prob, pairing) + per_pixel.mean()
    return EstimatorOutput(surrogate, per_pixel.detach().mean())


def surrogate_loss_baseline(rate: torch.Tensor, data: torch.Tensor, mtf: MTFLike, generator: torch.Generator,
                            n_samples: int = 4, *, pairing: Pairing = "image",
                            pixel_loss: PixelLoss = squared_error, normalize_dc: bool = False,
                            dqe=1.0, gain=1.0) -> EstimatorOutput:
    r"""Score-function surrogate with a leave-one-out baseline (unbiased, lower variance).

    As :func:`surrogate_loss`, but each draw's per-pixel loss in the score term is replaced by its
    advantage over the mean of the *other* draws,
    :math:`\ell_k - \frac{1}{n-1}\sum_{j\ne k}\ell_j = \frac{n\,\ell_k - \sum_j \ell_j}{n-1}`
    (per pixel for ``pairing="pixel"``, per image mean loss for ``pairing="image"``). The
    baseline of draw k is independent of draw k, and the score has zero mean, so the estimator
    stays unbiased (under the same condition on ``pairing`` as :func:`surrogate_loss`) while
    the large common part of the loss no longer multiplies the noisy score. The pathwise MTF
    term is unchanged.

    Parameters
    ----------
    rate, data, mtf, generator, pairing, pixel_loss, normalize_dc
        As in :func:`surrogate_loss`.
    n_samples : int
        Draws per call, ≥ 2 (the baseline needs another draw).

    Returns
    -------
    EstimatorOutput
        ``surrogate`` (scalar) and ``loss`` (scalar, detached, counts²).
    """
    _check_samples(n_samples, 2)
    _check_pairing(pairing)
    per_pixel, log_prob = _sampled_pixel_loss(rate, data, mtf, generator, n_samples, pixel_loss, normalize_dc,
                                              dqe, gain)
    # The image-mean of the per-pixel advantage is the advantage of the image mean loss, so one
    # expression serves both pairings.
    advantage = (n_samples * per_pixel - per_pixel.sum(dim=0, keepdim=True)) / (n_samples - 1)
    surrogate = _score_term(advantage, log_prob, pairing) + per_pixel.mean()
    return EstimatorOutput(surrogate, per_pixel.detach().mean())


def reparameterised_loss(rate: torch.Tensor, data: torch.Tensor, mtf: MTFLike, generator: torch.Generator,
                         n_samples: int = 1, *, pixel_loss: PixelLoss = squared_error,
                         normalize_dc: bool = False, dqe=1.0, gain=1.0) -> EstimatorOutput:
    r"""Pathwise estimator through the Gaussian approximation of Poisson noise.

    :math:`I_q \approx \lambda + \sqrt{\lambda}\,\varepsilon`, :math:`\varepsilon \sim N(0, 1)`
    per pixel, then :math:`I_n = M * I_q` and the mean per-pixel loss, all differentiable; the
    returned ``surrogate`` is that loss itself (gradients in λ and the MTF parameters by the
    chain rule). Draws may be negative and are not rounded.

    Where it is accurate: the Gaussian matches the Poisson mean and variance exactly but not
    its higher cumulants (skewness :math:`\lambda^{-1/2}`, excess kurtosis :math:`\lambda^{-1}`). An
    expected loss that depends on the counts only through their first two moments — any loss
    quadratic in :math:`I_q`, in particular the squared error through a linear MTF — has the
    *same* expectation under both, and this estimator is then unbiased for its gradient at every
    λ > 0 (tested down to λ = 2, and see ``benchmarks/estimator_report.py``). For other losses
    (absolute error, Poisson deviance, quartic, anything after a non-linearity or clamp of
    :math:`I_q`) the gradient is biased by the missing cumulants: large at a few counts per pixel
    (tests show it at λ = 2 for a quartic loss) and, for residuals at the noise scale
    (:math:`|R_D - \lambda| \sim \sqrt{\lambda}`), shrinking relative to the gradient like
    :math:`\lambda^{-1/2}`; so for those losses use it only at high counts (≳ 100–200 per pixel),
    and mind that a loss weighting residuals much smaller than the noise can stay biased even
    there. Its gradient also grows like :math:`\lambda^{-1/2}` as λ → 0 (no gradient is passed at
    λ = 0 exactly).

    Parameters
    ----------
    rate, data, mtf, generator, pixel_loss, normalize_dc
        As in :func:`surrogate_loss`.
    n_samples : int
        Draws per call, ≥ 1.

    Returns
    -------
    EstimatorOutput
        ``surrogate`` (scalar, the differentiable sampled loss) and ``loss`` (its detached value).
    """
    _check_samples(n_samples, 1)
    shape = torch.broadcast_shapes(rate.shape, data.shape)
    noise = torch.randn((n_samples, *shape), generator=generator, dtype=rate.dtype, device=rate.device)
    # Clamp only under the sqrt: λ = 0 gets no (infinite) gradient from the noise term.
    counts = rate + torch.sqrt(rate.clamp_min(torch.finfo(rate.dtype).tiny) / dqe) * noise  # variance λ/DQE
    per_pixel = pixel_loss(gain * apply_detector_mtf(counts, mtf, normalize_dc), data)
    surrogate = per_pixel.mean()
    return EstimatorOutput(surrogate, surrogate.detach())


def expected_mse(rate: torch.Tensor, data: torch.Tensor, mtf: MTFLike = None, *, normalize_dc: bool = False,
                 reduction: Literal["mean", "sum", "none"] = "mean", dqe=1.0, gain=1.0) -> torch.Tensor:
    r"""Exact expected squared error through the MTF under Poisson noise; exact gradients.

    For independent :math:`I_q(y) \sim \mathrm{Poisson}(\lambda(y))` and the periodic filter
    :math:`(M * I)(x) = \sum_y h(x - y)\, I(y)` (what ``apply_mtf`` computes, with
    :math:`h = \mathrm{IDFT}[\mathrm{MTF}]` real and even),

    .. math:: \mathbb{E}\big[(R_D - M * I_q)^2\big](x) = (R_D - M * \lambda)^2(x)
              + \sum_y h(x - y)^2\, \lambda(y),

    the second term being the variance, :math:`(h^2) * \lambda`, computed as the circular
    convolution with the squared kernel (inverse FFT of the MTF, square, FFT again), consistent
    with ``apply_mtf``'s periodic FFT. Holds exactly for any rate (only the Poisson mean and
    variance enter), and is differentiable in ``rate``, ``data`` and a ``LearnableMTF``.

    Parameters
    ----------
    rate : torch.Tensor
        Expected counts λ ≥ 0, ``(..., H, W)`` electrons/pixel.
    data : torch.Tensor
        Observed image :math:`R_D`, broadcastable with ``rate`` (counts).
    mtf : None, MTFParams, LearnableMTF or callable
        The detector MTF.
    normalize_dc : bool
        Divide the MTF by MTF(0).
    dqe, gain : float or tensor
        As in :func:`surrogate_loss`: the loss is :math:`(R_D - g\,M*\lambda)^2 + (g^2/\mathrm{DQE})\,(h^2)*\lambda`.
    reduction : {"mean", "sum", "none"}
        Mean or sum over all elements (batch and pixels), or the per-pixel expected loss of the
        broadcast shape.

    Returns
    -------
    torch.Tensor
        Expected loss in counts²: a scalar, or ``(..., H, W)`` for ``reduction="none"``.
    """
    shape = tuple(rate.shape[-2:])
    transfer = mtf_transfer(mtf, shape, device=rate.device, dtype=rate.dtype, normalize_dc=normalize_dc)
    if transfer is None:
        mean_image, variance = rate, rate
    else:
        rate_spectrum = rfft2(rate)
        mean_image = irfft2(rate_spectrum * transfer, shape)
        kernel = irfft2(transfer, shape)
        variance = irfft2(rate_spectrum * rfft2(kernel**2), shape)
    # counts Poisson(DQE·λ)/DQE have variance λ/DQE; the gain scales the image, its variance by gain²
    per_pixel = (data - gain * mean_image) ** 2 + (gain**2 / dqe) * variance
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return per_pixel.sum()
    if reduction == "mean":
        return per_pixel.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
