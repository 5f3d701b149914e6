r"""Physics-in-the-loop denoising: recover the expected counts before the MTF from noisy observations.

Forward model (``difftem.detector``): an observation is :math:`P_k = g\,M * (Q_k/D)`,
:math:`Q_k \sim \mathrm{Poisson}(D\,\tilde I)` per pixel, with gain g, DQE D and the detector MTF M
applied in Fourier space. The unknown is :math:`\tilde I` (electrons per pixel before the MTF); the
denoised image is :math:`I_d = g\,M * \tilde I` (the seed paper's Algorithm 2 output). Internally the
work is done in *effective counts* :math:`y_k = D P_k / g`, whose deconvolution :math:`c_k = M^{-1} y_k`
is exactly :math:`Q_k`, with rate :math:`\mu = D\tilde I`.

Methods (``method=``):

``paper``
    Algorithm 2 as published: observations min-max normalised to [0, 1], :math:`\tilde I` initialised
    at random, each iteration draws :math:`I_q \sim \mathrm{Poisson}(\tilde I)`, takes its log-likelihood
    ``ll`` and :math:`I_n = M * I_q`, and descends the surrogate :math:`\mathrm{mean}((P - I_n)^2\,ll)`
    with Adam (β = (0.8, 0.992), lr 1.0). The paper normalises the observations only; the predictions
    are normalised the same way here (as in the authors' released code), otherwise a [0, 1] target
    forces rates below one count, where Poisson draws carry no image. Normalisation loses the
    count scale, so the output is mapped back by the least-squares affine fit to the mean observation.
``surrogate``
    The same score-function estimator in counts, with a leave-one-out baseline over the draws
    (:func:`difftem.learn.estimators.surrogate_loss_baseline`, per-pixel pairing: lower variance than
    the image pairing, but biased once the MTF couples pixels, see that module).
``expected``
    The exact expected squared error through the MTF (:func:`difftem.learn.estimators.expected_mse`):
    no sampling, exact gradients.
``poisson``
    The Poisson negative log-likelihood of the counts. The MTF is a known invertible linear map of
    the counts, so each observation's counts are recovered by deconvolution and the likelihood of the
    observations is exactly the Poisson likelihood of those counts; its gradient needs no FFT.

All the data terms depend on the observations only through their mean, so without a prior every
method converges to the average of the observations (the maximum-likelihood estimate). What beats
averaging is a prior (``prior=``, :mod:`difftem.denoise.priors`): total variation or a Gaussian prior
with a spectrum estimated from the data (Wiener at β = 1). Its weight β is chosen by hold-out
validation when there are two or more independent observations (``prior_weight="auto"``): fit on
half of them, score the squared error of :math:`M * \mu` against the other half (whose noise is
independent, so the score's expectation is the true error plus a constant: a Noise2Noise criterion),
swap, and keep the β with the lowest score.

Every method except ``paper`` works on :math:`\theta = \log\mu` (the rate stays positive) and is
scaled per pixel in units of the Poisson negative log-likelihood (the squared-error terms are
divided by 2m, m the mean counts), so one β means the same for all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.errors import ArgumentError, ConfigError
from ..core.fft import fft2, ifft2, irfft2, rfft2
from ..forward.detector import apply_mtf, mtf_transfer
from ..forward.estimators import expected_mse, poisson_log_prob, surrogate_loss_baseline
from ..learn.losses import minmax_normalise
from .align import check_alignment as _check_alignment
from .priors import PRIORS, SpectralPrior, total_variation, tv_eps, tv_weight

__all__ = ["DenoiseResult", "METHODS", "PRIORS", "as_observation_stack", "deconvolve_counts", "denoise",
           "DEFAULT_WEIGHTS", "WEIGHT_GRIDS"]

METHODS = ("paper", "surrogate", "expected", "poisson")
PAPER_BETAS = (0.8, 0.992)
# Used when β cannot be validated (a single independent observation). TV: the hold-out choice ranged
# 0.7–2.7 over the 80 settings of benchmarks/denoise_study.py --full (median 2.4 TMV, 1.25 apoferritin);
# spectral: 1 is the Wiener filter.
DEFAULT_WEIGHTS = {"tv": 2.0, "spectral": 1.0, "none": 0.0}
WEIGHT_GRIDS = {"tv": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0), "spectral": (0.25, 1.0, 4.0, 16.0, 64.0, 256.0)}
Progress = Callable[[str, int, int], None]


@dataclass
class DenoiseResult:
    """What :func:`denoise` returns.

    Attributes
    ----------
    denoised : torch.Tensor
        (H, W) :math:`I_d = g\\,M * \\tilde I`, in the observations' units (counts × gain).
    rate : torch.Tensor
        (H, W) :math:`\\tilde I`, expected electrons per pixel before the MTF.
    loss_history : list of float
        Objective per iteration (data term + prior, per pixel; for ``paper`` the sampled
        normalised squared error).
    settings : dict
        Method, prior, chosen weight (with the validation scores), steps, learning rate, seconds.
    """

    denoised: torch.Tensor
    rate: torch.Tensor
    loss_history: list[float]
    settings: dict = field(default_factory=dict)


def as_observation_stack(observations, name: str = "observations") -> torch.Tensor:
    """(n, H, W) float tensor from a tensor/array (H, W) or (n, H, W), or a sequence of (H, W) images.

    Raises ConfigError naming ``name`` for mismatched shapes, wrong dimensions, NaN/inf or an empty input.
    """
    if isinstance(observations, (list, tuple)):
        if not observations:
            raise ConfigError(f"{name}: no images given")
        images = [torch.as_tensor(np.asarray(o) if not torch.is_tensor(o) else o) for o in observations]
        shapes = [tuple(im.shape) for im in images]
        if any(len(s) != 2 for s in shapes):
            raise ConfigError(f"{name}: every image must be 2-D (H, W); got shapes {shapes}")
        if len(set(shapes)) > 1:
            raise ConfigError(f"{name}: images have different shapes {shapes}; crop or resample them to one "
                              "(H, W) first (repeated exposures must cover the same field)")
        dtype = torch.float64 if any(im.dtype == torch.float64 for im in images) else torch.float32
        stack = torch.stack([im.to(dtype) for im in images])
    else:
        stack = observations if torch.is_tensor(observations) else torch.as_tensor(np.asarray(observations))
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3:
            raise ConfigError(f"{name}: expected (H, W) or (n, H, W), got shape {tuple(stack.shape)}")
    if not stack.is_floating_point():
        stack = stack.to(torch.float32)
    if stack.shape[0] == 0 or min(stack.shape[-2:]) < 8:
        raise ConfigError(f"{name}: need at least one image of at least 8×8 pixels, got shape {tuple(stack.shape)}")
    bad = ~torch.isfinite(stack)
    if bad.any():
        k = int(bad.flatten(1).any(1).nonzero()[0])
        raise ConfigError(f"{name}: image {k} has {int(bad[k].sum())} NaN/inf pixels; mask or inpaint them first")
    return stack


def deconvolve_counts(y: torch.Tensor, mtf, normalize_dc: bool = True, min_transfer: float = 1e-3) -> torch.Tensor:
    """Counts from MTF-filtered images: ``M⁻¹ y`` (``(..., H, W)``), exact where |MTF| ≫ ``min_transfer``.

    The inverse is T/(T² + min_transfer²): 1/T to within (min_transfer/T)² (2·10⁻⁵ for the paper's TMV
    MTF, whose smallest value on the grid is 0.23), and at most 1/(2·min_transfer) where a measured
    curve comes near zero.
    """
    shape = tuple(y.shape[-2:])
    transfer = mtf_transfer(mtf, shape, device=y.device, dtype=y.dtype, normalize_dc=normalize_dc)
    if transfer is None:
        return y
    inverse = transfer / (transfer**2 + min_transfer**2)
    return irfft2(rfft2(y) * inverse, shape)


def _blur(image: torch.Tensor, mtf, normalize_dc: bool) -> torch.Tensor:
    return apply_mtf(image, mtf, normalize_dc) if mtf is not None else image


@dataclass
class _Data:
    """One problem: effective counts y (n, H, W), their deconvolved counts, extras, the MTF."""

    y: torch.Tensor
    counts: torch.Tensor
    mtf: object
    normalize_dc: bool

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def mean_counts(self) -> float:
        return max(float(self.counts.mean()), 1e-6)

    def crop(self, box: tuple[int, int, int, int], rows: Sequence[int] | None = None) -> _Data:
        y0, y1, x0, x1 = box
        idx = list(range(self.n)) if rows is None else list(rows)
        return _Data(self.y[idx, y0:y1, x0:x1], self.counts[idx, y0:y1, x0:x1], self.mtf, self.normalize_dc)


def _objective(method: str, data: _Data, prior: str, beta: float, spectral: SpectralPrior | None,
               generator: torch.Generator, n_samples: int):
    """Return f(theta) → (scalar to backward, float value) for the log-rate parameter theta."""
    n, m = data.n, data.mean_counts
    counts_sum = data.counts.sum(0)
    ybar = data.y.mean(0)
    eps = tv_eps(m, n)
    w_tv = tv_weight(beta, n, m)
    # the logged Poisson loss is the deviance from μ = c̄, n c̄ (r − 1 − log r) with r = μ/c̄, so it reads ≥ 0; written
    # so (not as the loss minus its value at c̄) it keeps its digits in float32 at millions of counts per pixel, where
    # n μ − C log μ and its offset agree to 7 digits and their difference was rounding noise (±4 on a real
    # micrograph whose loss was 0.04)
    cbar = (counts_sum / n).clamp_min(1e-12)
    log_cbar = torch.log(cbar)

    def f(theta: torch.Tensor):
        rate = theta.exp()
        if method == "poisson":
            term = (n * rate - counts_sum * theta).mean()
            with torch.no_grad():
                d = theta.detach() - log_cbar
                value = float((n * cbar * (torch.expm1(d) - d)).mean())
        elif method == "expected":
            term = n * expected_mse(rate, ybar, data.mtf, normalize_dc=data.normalize_dc) / (2 * m)
            value = float(term.detach())
        elif method == "surrogate":
            out = surrogate_loss_baseline(rate, ybar, data.mtf, generator, n_samples, pairing="pixel",
                                          normalize_dc=data.normalize_dc)
            term = n * out.surrogate / (2 * m)
            value = n * float(out.loss) / (2 * m)
        else:
            raise ConfigError(f"method {method!r}: choose one of {METHODS}")
        if prior == "tv" and beta > 0:
            p = w_tv * total_variation(rate, eps)
        elif prior == "spectral" and beta > 0:
            p = spectral(rate, beta)
        else:
            p = None
        if p is not None:
            term = term + p
            value += float(p.detach())
        return term, value

    return f


def _initial_log_rate(data: _Data, init: str, generator: torch.Generator,
                      spectral: SpectralPrior | None = None, beta: float = 0.0) -> torch.Tensor:
    m = data.mean_counts
    if init == "mean" and spectral is not None and beta > 0:
        # the closed-form minimiser of the Gaussian data term + this prior (Wiener): Adam then only
        # corrects for the Poisson term, instead of crawling along the prior's stiff directions
        cbar = data.counts.mean(0)
        gain = spectral.wiener_gain(beta).to(torch.complex128)
        start = ifft2(fft2(cbar.to(torch.float64)) * gain).real.to(cbar.dtype).clamp_min(0.05 * m)
    elif init == "mean":
        start = data.counts.mean(0).clamp_min(0.05 * m)
    elif init == "random":
        start = torch.rand(data.y.shape[-2:], generator=generator, dtype=data.y.dtype,
                           device=data.y.device) * (2 * m) + 0.01 * m
    else:
        raise ConfigError(f"init {init!r}: choose 'mean' or 'random'")
    return torch.log(start)


def _fit(method: str, data: _Data, prior: str, beta: float, *, steps: int, lr: float | None, init: str,
         generator: torch.Generator, n_samples: int, betas=PAPER_BETAS,
         progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Adam on θ = log μ with a cosine-decaying learning rate (to 5 %); returns (μ at the lowest loss seen, the loss
    history). The lowest, not the last: on very bright images (millions of counts per pixel) Adam's steps can
    overshoot the objective's narrow minimum for the whole run, and the last iterate was then up to 300× worse
    than the best one (measured on a real dose-weighted micrograph)."""
    lr = _default_lr(method, prior, data.n, data.mean_counts) if lr is None else lr
    spectral = SpectralPrior(data.counts.mean(0), data.n) if prior == "spectral" else None
    f = _objective(method, data, prior, beta, spectral, generator, n_samples)
    theta = _initial_log_rate(data, init, generator, spectral, beta).clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr, betas=betas)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=0.05 * lr)
    history = []
    best_value, best_theta = math.inf, None
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        term, value = f(theta)  # the loss at θ before this step
        if value < best_value or best_theta is None:
            best_value, best_theta = value, theta.detach().clone()
        term.backward()
        opt.step()
        sched.step()
        history.append(value)
        if progress is not None:
            progress(i + 1, steps)
    return (best_theta if best_theta is not None else theta.detach()).exp(), history


def _fit_paper(data: _Data, *, steps: int, lr: float, generator: torch.Generator, n_samples: int,
               progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Algorithm 2 of the seed paper (see the module docstring for the one addition)."""
    targets = minmax_normalise(data.y)  # (n, H, W) in [0, 1]
    n = data.n
    rate = (torch.rand(data.y.shape[-2:], generator=generator, dtype=data.y.dtype, device=data.y.device)
            * (2 * data.mean_counts)).requires_grad_(True)
    opt = torch.optim.Adam([rate], lr=lr, betas=PAPER_BETAS)
    pair = torch.arange(n_samples, device=data.y.device) % n  # draw s is compared with observation s mod n
    history = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        lam = rate.abs()  # the authors take |Ĩ| so that the Poisson rate is defined
        draws = torch.poisson(lam.detach().expand(n_samples, *lam.shape).contiguous(), generator=generator)
        ll = poisson_log_prob(draws, lam)
        with torch.no_grad():
            pred = minmax_normalise(_blur(draws, data.mtf, data.normalize_dc))
            se = (targets[pair] - pred) ** 2
        surrogate = (se * ll).mean()  # Eq. 3: SL = mean((RD − I_n)² · ll)
        surrogate.backward()
        opt.step()
        history.append(float(se.mean()))
        if progress is not None:
            progress(i + 1, steps)
    return rate.detach().abs(), history


def _centre_box(shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    h, w = shape
    ch, cw = min(h, size), min(w, size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return y0, y0 + ch, x0, x0 + cw


def _holdout_score(rate: torch.Tensor, held: _Data, margin: int) -> float:
    """Mean squared error of M * μ against held-out observations, away from the crop's wrapped edges."""
    pred = _blur(rate, held.mtf, held.normalize_dc)
    diff = held.y - pred
    h, w = diff.shape[-2:]
    mh, mw = min(margin, h // 4), min(margin, w // 4)
    return float((diff[..., mh:h - mh, mw:w - mw] ** 2).mean())


def select_prior_weight(method: str, data: _Data, prior: str, candidates: Sequence[float], *, steps: int,
                        lr: float | None, init: str, generator: torch.Generator, n_samples: int, crop_px: int = 256,
                        margin_px: int = 16, progress: Callable[[int, int], None] | None = None) -> tuple[float, dict]:
    """Two-fold hold-out choice of β on a central crop (even/odd observations as the folds)."""
    box = _centre_box(tuple(data.y.shape[-2:]), crop_px)
    folds = (list(range(0, data.n, 2)), list(range(1, data.n, 2)))
    scores = []
    total, done = len(candidates) * 2, 0
    for beta in candidates:
        s = 0.0
        for a, b in (folds, folds[::-1]):
            fit_data, held = data.crop(box, a), data.crop(box, b)
            rate, _ = _fit(method, fit_data, prior, beta, steps=steps, lr=lr, init=init, generator=generator,
                           n_samples=n_samples)
            s += _holdout_score(rate, held, margin_px) / 2
            done += 1
            if progress is not None:
                progress(done, total)
        scores.append(s)
    best = int(np.argmin(scores))
    chosen = float(candidates[best])
    if 0 < best < len(candidates) - 1:  # parabola through the three best points in log β
        x = np.log(np.asarray(candidates[best - 1:best + 2], dtype=float))
        yv = np.asarray(scores[best - 1:best + 2])
        denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
        a2 = (x[2] * (yv[1] - yv[0]) + x[1] * (yv[0] - yv[2]) + x[0] * (yv[2] - yv[1])) / denom
        a1 = (x[2] ** 2 * (yv[0] - yv[1]) + x[1] ** 2 * (yv[2] - yv[0]) + x[0] ** 2 * (yv[1] - yv[2])) / denom
        if a2 > 0:
            chosen = float(np.exp(np.clip(-a1 / (2 * a2), x[0], x[2])))
    table = {"candidates": [float(c) for c in candidates], "holdout_mse": scores, "chosen": chosen,
             "crop_box_yx": list(box)}
    return chosen, table


def _default_steps(method: str) -> int:
    return {"paper": 300, "surrogate": 300, "expected": 200, "poisson": 200}[method]


def _default_lr(method: str, prior: str, n: int, mean_counts: float) -> float:
    """Adam's first steps move every pixel by about lr (in log μ): keep that a fraction of the relative noise
    σ/m = 1/sqrt(n m) of the mean counts, or it buries a low-contrast image in the optimiser's own noise.
    The spectral prior starts at its Wiener minimiser and only needs the small Poisson correction."""
    if method == "paper":
        return 1.0
    relative_noise = 1.0 / math.sqrt(max(n * mean_counts, 1e-12))
    return min(0.05, (0.03 if prior == "spectral" else 0.3) * relative_noise)


def _check_choices(method: str, prior: str, dqe: float, gain: float) -> None:
    if method not in METHODS:
        raise ConfigError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    if prior not in PRIORS:
        raise ConfigError(f"prior {prior!r}: choose one of {', '.join(PRIORS)}")
    if not (0 < dqe <= 1):
        raise ConfigError(f"dqe must be in (0, 1], got {dqe}")
    if not gain > 0:
        raise ConfigError(f"gain must be > 0, got {gain}")


def _observation_stack(observations, extra_observations, check_alignment: bool):
    """The observations with any extra ones appended, the number of (non-extra) observations, and their
    measured shifts (None when not checked); refuses mismatched shapes and a non-positive mean."""
    obs = as_observation_stack(observations, "observations")
    n_obs = obs.shape[0]
    shifts = _check_alignment(obs) if check_alignment and n_obs > 1 else None
    if extra_observations is not None:
        extra = as_observation_stack(extra_observations, "extra_observations").to(obs.device, obs.dtype)
        if extra.shape[-2:] != obs.shape[-2:]:
            raise ConfigError(f"extra_observations: shape {tuple(extra.shape[-2:])} differs from the observations' "
                              f"{tuple(obs.shape[-2:])}")
        obs = torch.cat([obs, extra])
    mean_level = float(obs[:n_obs].mean())
    if not mean_level > 0:
        raise ConfigError(f"observations: mean value {mean_level:g} ≤ 0: there is no dose (zero or negative counts); "
                          "pass images in counts × gain with a positive dose (subtract no background)")
    return obs, n_obs, shifts


def _prior_weight(method: str, prior: str, prior_weight: float | str, data: _Data, n_independent: int,
                  settings: dict, *, steps: int, lr: float | None, init: str, generator: torch.Generator,
                  n_samples: int, crop_px: int, progress: Progress | None) -> float:
    """β: as given, or ("auto") validated on the first ``n_independent`` observations when there are ≥ 2,
    else the prior's default; the choice is recorded in ``settings["weight_selection"]``."""
    if prior_weight != "auto":
        beta = float(prior_weight)
        if beta < 0:
            raise ConfigError(f"prior_weight must be ≥ 0 or 'auto', got {prior_weight}")
        return beta
    if n_independent < 2:
        beta = DEFAULT_WEIGHTS[prior]
        settings["weight_selection"] = {"chosen": beta, "note": "one independent observation: no hold-out "
                                        "validation possible, default weight used"}
        return beta
    cb = (lambda i, n: progress("select prior weight", i, n)) if progress else None
    # The weight belongs to the objective, not to its gradient estimator: the sampling
    # method is validated with the exact expected loss it estimates (far cheaper).
    independent = data.crop((0, data.y.shape[-2], 0, data.y.shape[-1]), range(n_independent))
    beta, table = select_prior_weight("expected" if method == "surrogate" else method, independent, prior,
                                      WEIGHT_GRIDS[prior], steps=steps, lr=lr, init=init, generator=generator,
                                      n_samples=n_samples, crop_px=crop_px, progress=cb)
    settings["weight_selection"] = table
    return beta


def _fit_paper_rescaled(data: _Data, settings: dict, *, steps: int, lr: float, generator: torch.Generator,
                        n_samples: int, progress: Callable[[int, int], None] | None):
    """Algorithm 2 as published, mapped back to counts: (rate, blurred rate, loss history)."""
    mtf, normalize_mtf = data.mtf, data.normalize_dc
    rate_eff, history = _fit_paper(data, steps=steps, lr=lr, generator=generator, n_samples=n_samples,
                                   progress=progress)
    blurred = _blur(rate_eff, mtf, normalize_mtf)
    # Normalisation lost the count scale: map back by the least-squares affine fit to the mean observation.
    ybar = data.y.mean(0)
    xc, yc = blurred - blurred.mean(), ybar - ybar.mean()
    slope = float((xc * yc).sum() / (xc * xc).sum().clamp_min(1e-30))
    offset = float(ybar.mean()) - slope * float(blurred.mean())
    blurred = slope * blurred + offset
    dc = mtf_transfer(mtf, (1, 1), dtype=torch.float64, normalize_dc=normalize_mtf)
    rate_eff = slope * rate_eff + offset / (float(dc[0, 0]) if dc is not None else 1.0)  # M maps c to MTF(0)·c
    settings["rescale_slope_offset"] = [slope, offset]
    return rate_eff, blurred, history


def denoise(observations, mtf=None, *, method: str = "poisson", prior: str = "tv",
            prior_weight: float | str = "auto", steps: int | None = None, lr: float | None = None,
            dqe: float = 1.0, gain: float = 1.0, normalize_mtf: bool = True, extra_observations=None,
            independent: int | None = None, init: str | None = None, n_samples: int | None = None,
            seed: int = 0, generator: torch.Generator | None = None, cv_crop_px: int = 256,
            cv_steps: int | None = None, check_alignment: bool = True,
            progress: Progress | None = None) -> DenoiseResult:
    """Denoise repeated observations of one scene through the detector model.

    Parameters
    ----------
    observations : tensor/array (n, H, W) or (H, W), or a sequence of (H, W) images
        Detector images of the same field (counts × gain), aligned.
    mtf : None, MTFParams, MeasuredMTF or callable
        The detector MTF (as :func:`difftem.detector.apply_mtf`); None for none.
    method : {"poisson", "expected", "surrogate", "paper"}
        The data term (module docstring).
    prior : {"tv", "spectral", "none"}
        Image prior (ignored by ``paper``, which has none).
    prior_weight : float or "auto"
        β; "auto" validates it on held-out observations when there are ≥ 2 independent ones,
        otherwise uses ``DEFAULT_WEIGHTS[prior]``.
    steps, lr : int, float
        Adam iterations and learning rate (defaults: 200 steps, lr on log μ = 0.3 × the relative
        noise 1/sqrt(n m) of the mean counts, at most 0.05, 0.03 × for the spectral prior;
        ``paper``: 300 and 1.0).
    dqe, gain : float
        Detector DQE in (0, 1] and gain (> 0), as in the simulation config.
    normalize_mtf : bool
        Divide the MTF by MTF(0) (the simulator's default).
    extra_observations : tensor (k, H, W) or sequence, optional
        Images used as further observations in the data term but not in the validation: e.g.
        Topaz-denoised copies (the seed paper's augmentation), in the same units.
    independent : int, optional
        How many of ``observations`` are independent exposures usable for validation (default all).
    init : {"mean", "random"}
        Start from the deconvolved mean counts (default) or at random (``paper`` always random).
    n_samples : int
        Poisson draws per iteration for the sampling methods (default 8; ``paper``: 16).
    seed, generator
        Randomness (draws, random init) comes only from ``generator`` (or one seeded with ``seed``).
    cv_crop_px, cv_steps : int
        Size of the central crop and Adam steps of each validation fit.
    check_alignment : bool
        Measure each observation's shift against the first and warn (``UnalignedWarning``, with the
        shift) above 0.5 px.
    progress : callable(stage, done, total), optional

    Returns
    -------
    DenoiseResult
    """
    t0 = time.perf_counter()
    _check_choices(method, prior, dqe, gain)
    obs, n_obs, shifts = _observation_stack(observations, extra_observations, check_alignment)
    steps = _default_steps(method) if steps is None else int(steps)
    if steps < 1 or (lr is not None and not (lr > 0 and math.isfinite(lr))):
        raise ConfigError(f"steps must be ≥ 1 and lr > 0, got steps={steps}, lr={lr}")
    generator = generator if generator is not None else torch.Generator(device=obs.device).manual_seed(seed)
    n_samples = (16 if method == "paper" else 8) if n_samples is None else int(n_samples)
    if method == "surrogate" and n_samples < 2:
        raise ConfigError("n_samples must be ≥ 2 for the baseline-subtracted surrogate")
    init = ("random" if method == "paper" else "mean") if init is None else init

    y = obs * (dqe / gain)
    if not torch.isfinite(y).all():  # a gain too small for float: the counts overflow
        raise ArgumentError("gain", f" {gain:g}: the images in electrons (image × dqe / gain) overflow; give the gain "
                                    "in image units per electron")
    data = _Data(y, deconvolve_counts(y, mtf, normalize_mtf), mtf, normalize_mtf)
    user_lr = None if lr is None else float(lr)
    lr = _default_lr(method, prior, data.n, data.mean_counts) if lr is None else float(lr)
    settings = {"method": method, "prior": prior if method != "paper" else "none", "steps": steps, "lr": lr,
                "n_observations": n_obs, "n_extra_observations": int(obs.shape[0] - n_obs), "dqe": dqe,
                "gain": gain, "normalize_mtf": normalize_mtf, "init": init, "seed": seed,
                "mean_counts_per_px": data.mean_counts / dqe,
                "shape_px": list(obs.shape[-2:])}
    if method in ("paper", "surrogate"):
        settings["n_samples"] = n_samples
    if shifts is not None:
        settings["measured_shifts_px"] = shifts

    beta = 0.0
    if method != "paper" and prior != "none":
        n_ind = n_obs if independent is None else int(independent)
        beta = _prior_weight(method, prior, prior_weight, data, n_ind, settings, steps=cv_steps or min(steps, 150),
                             lr=user_lr, init=init, generator=generator, n_samples=n_samples, crop_px=cv_crop_px,
                             progress=progress)
    settings["prior_weight"] = beta

    cb = (lambda i, n: progress("optimise", i, n)) if progress else None
    if method == "paper":
        rate_eff, blurred, history = _fit_paper_rescaled(data, settings, steps=steps, lr=lr, generator=generator,
                                                         n_samples=n_samples, progress=cb)
    else:
        rate_eff, history = _fit(method, data, settings["prior"], beta, steps=steps, lr=lr, init=init,
                                 generator=generator, n_samples=n_samples, progress=cb)
        blurred = _blur(rate_eff, mtf, normalize_mtf)
    settings["final_loss"] = history[-1] if history else None
    if history and method != "paper":
        settings["lowest_loss"], settings["lowest_loss_step"] = min((v, k) for k, v in enumerate(history))
    settings["seconds"] = time.perf_counter() - t0
    return DenoiseResult(blurred * (gain / dqe), rate_eff / dqe, history, settings)
