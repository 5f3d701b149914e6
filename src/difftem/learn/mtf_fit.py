"""Estimating a detector's MTF: from a measured curve, from background crops of micrographs.

Model (seed paper, eq. 1): MTF(ω) = a/(1+αω²) + b/(1+βω²) + c, ω in cycles/pixel.

Estimators
- ``fit_curve``: least squares of the model to a tabulated curve (e.g. a RELION STAR file).
- ``fit_algorithm1``: the seed paper's Algorithm 1 as published: simulated background crops
  MTF(Poisson(Ĩ)) and the real crops, both min-max normalised, compared by MSE (+ focal frequency
  loss with exponent α); Adam β = (0.8, 0.992), lr 0.1.
- ``fit_nps``: the noise power spectrum of the crops. Shot noise is white, and the detector filters
  the counts by the MTF, so the background's NPS is s·MTF(ω)² with an unknown scale s (dose, DQE,
  gain). Fitting the shape of the measured NPS with the model is a regression on all the crops'
  spectral samples instead of a stochastic image match, and needs no dose or gain. Its steps:
  * each crop minus its least-squares plane. That changes only the spectrum's lines kx = 0 and
    ky = 0, which are left out (so slow background gradients of real data go, exactly), as are the
    bins within 3 of zero frequency: few, and in real micrographs dominated by what is not shot noise
    (on a dose-weighted one they moved the normalised MTF at 0.1 cycles/px from 0.78 to 0.51).
  * no taper: a finite crop's expected periodogram is the NPS convolved with the Fejér kernel, which
    ``WindowedSpectrum`` computes exactly for the model (no leakage bias), and every frequency stays
    an independent sample; a Hann taper spends about 3.8× of them in 2-D (measured: 2× the spread
    of the TMV curve). Exception (``window="auto"``): when the fitted NPS has deep minima (an MTF that
    changes sign), Fejér side lobes of its peaks dominate > 1 % of the bins there, which are then
    strongly correlated; the fit is redone with a Tukey taper (25 %): for the paper's synthetic set,
    the error's spread 2.5× and its median 3.5× smaller.
  * the Whittle likelihood: the mean periodogram of N crops is S_k·Gamma(N)/N about its expectation
    S_k, so −log L/N = Σ_k [log S_k + P̄_k/S_k] (ML: unbiased, efficient). Least squares of log NPS
    is biased by ψ(N) − log N, which lowers the absolute curve (dose known) by about 1/(4N).
  * Levenberg–Marquardt on the Fisher information, from grid starts over (α, β) with the sign
    patterns of the radial profile: first on quarter-size tiles of the crops (exact and cheap), then
    on the full spectrum from the best three. L-BFGS crawled along the curved, ill-conditioned valleys
    of two nearly cancelling Lorentzians (e.g. the sign-changing synthetic set) and stopped short.
  * a likelihood-ratio test (5 %) against the one-Lorentzian sub-model a/(1+αω²) + c: a second
    Lorentzian that does not pass it fits noise at the lowest frequencies (a narrow spike that moves
    MTF(0), the normaliser): on a one-Lorentzian (K3-like) curve, always fitting two multiplied the
    mean curve error by 4-8.
  What remains is the statistical (Cramér–Rao) spread: e.g. σ ≈ 0.004 of the normalised TMV curve
  at 0.1 cycles/px with 50 crops of 256² (``benchmarks/mtf_paper.py``).
Only the shape MTF(ω)/MTF(0) is identifiable from images (the scale and sign fold into the gain),
so fitted curves are reported normalised, and compared with references normalised the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import ArgumentError, ConfigError
from ..core.fft import freq_grid_per_px, freq_index, irfft2, rfft2
from ..forward.detector import MTFParams, radial_frequency_per_px
from ..forward.estimators import LearnableMTF
from .losses import focal_frequency_loss, minmax_normalise

MIN_CROP_PX = 32


@dataclass
class MTFFit:
    params: MTFParams
    method: str
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"params": asdict(self.params), "method": self.method, "seconds": self.seconds,
                "final_loss": self.loss_history[-1] if self.loss_history else None, **self.extra}


def normalised_curve(params: MTFParams, omega: torch.Tensor) -> torch.Tensor:
    """MTF(ω)/MTF(0)."""
    return params(omega) / params(torch.zeros((), dtype=omega.dtype))


def curve_rms(params: MTFParams, reference, n: int = 501, normalise: bool = True) -> float:
    """RMS difference of the curves over ω ∈ [0, 0.5], each divided by its MTF(0) if ``normalise``."""
    omega = torch.linspace(0, 0.5, n, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    ref, fit = reference(omega), params(omega)
    if normalise:
        ref, fit = ref / reference(zero), fit / params(zero)
    return float(torch.sqrt(torch.mean((fit - ref) ** 2)))


_INITS = [MTFParams(0.7, 0.2, 0.1, 10, 40), MTFParams(0.6, 1.24, -0.84, 0.97, 0.97),
          MTFParams(0.5, 0.5, 0.0, 1.0, 20.0), MTFParams(0.9, 0.1, 0.0, 3.0, 100.0), MTFParams(0.3, 0.6, 0.1, 0.5, 5.0)]


def grid_init(omega: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
              n_grid: int = 41, single: bool = False) -> MTFParams:
    """Global start for the 5-parameter model: for fixed (α, β) the model is linear in (a, b, c), so
    solve that weighted least-squares problem on a log-spaced (α, β) grid and keep the best.
    ``single``: the 3-parameter sub-model a/(1+αω²) + c (returned with b = 0, β = α)."""
    w = torch.ones_like(target) if weight is None else weight
    grid = torch.logspace(-1, 3.5, n_grid, dtype=torch.float64)
    if single:
        al = be = grid
    else:
        al, be = torch.meshgrid(grid, grid, indexing="ij")
        keep = al <= be  # the model is symmetric in (a, α) ↔ (b, β)
        al, be = al[keep], be[keep]
    w2 = omega**2
    cols = [1 / (1 + al[:, None] * w2)] + ([] if single else [1 / (1 + be[:, None] * w2)])
    basis = torch.stack([*cols, torch.ones_like(al)[:, None].expand(-1, len(omega))], -1)  # (G, n, 2 or 3)
    sw = w.sqrt()[None, :, None]
    sol = torch.linalg.lstsq(basis * sw, (target * w.sqrt())[None, :, None].expand(len(al), -1, -1)).solution
    resid = ((basis @ sol).squeeze(-1) - target) ** 2 @ w
    i = int(torch.argmin(resid))
    v = [float(x) for x in sol[i, :, 0]]
    a, b, c = (v[0], 0.0, v[1]) if single else v
    return MTFParams(a, b, c, float(al[i]), float(be[i]))


def _sign_patterns(amplitude: torch.Tensor, n_dips: int = 4) -> list[torch.Tensor]:
    """Signed versions of a radial |MTF| profile: the model's numerator is quadratic in ω², so the
    curve crosses zero at most twice; crossings show as dips of |MTF|. Flip the sign after none,
    one or two of the deepest local minima."""
    a = amplitude
    interior = torch.arange(1, len(a) - 1)
    is_min = (a[interior] < a[interior - 1]) & (a[interior] <= a[interior + 1])
    dips = interior[is_min]
    dips = dips[torch.argsort(a[dips])][:n_dips].tolist()
    out = [a]
    idx = torch.arange(len(a))
    for i in dips:
        out.append(torch.where(idx >= i, -a, a))
    for i in dips:
        for j in dips:
            if j > i:
                out.append(torch.where((idx >= i) & (idx < j), -a, a))
    return out


def _lbfgs(model: LearnableMTF, loss_fn, steps: int = 200) -> list[float]:
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")
    history: list[float] = []

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        history.append(float(loss.detach()))
        return loss

    opt.step(closure)
    return history


def fit_curve(frequency_per_px, values, *, inits=_INITS) -> MTFFit:
    """Least-squares fit of the 5-parameter model to a tabulated MTF curve (several starts, best kept)."""
    t0 = time.perf_counter()
    f = torch.as_tensor(np.asarray(frequency_per_px), dtype=torch.float64)
    v = torch.as_tensor(np.asarray(values), dtype=torch.float64)
    if f.ndim != 1 or f.shape != v.shape or len(f) < 5:
        raise ConfigError("MTF curve: need at least 5 (frequency, value) pairs")
    best = None
    for init in [grid_init(f, v), *inits]:
        model = LearnableMTF.from_params(init)
        hist = _lbfgs(model, lambda model=model: torch.mean((model.curve(f) - v) ** 2))
        if best is None or hist[-1] < best[1][-1]:
            best = (model.to_params(), hist)
    params, hist = best
    rms = float(torch.sqrt(torch.mean((params(f) - v) ** 2)))
    extra = {"rms_fit_error": rms, "max_abs_fit_error": float((params(f) - v).abs().max())}
    return MTFFit(params, "curve", hist, time.perf_counter() - t0, extra)


WINDOWS = ("none", "tukey", "hann")
TUKEY_FRACTION = 0.25  # of each side's length in the cosine tapers (both ends together)
LEAKY, MAX_LEAKY_SHARE = 0.2, 0.01  # window="auto": when a taper pays (see fit_nps)
LR_THRESHOLD = 0.5 * 5.99  # ΔNLL for a second Lorentzian: χ²₂ at 5 %
DETRENDS = ("mean", "plane")
# The lowest bins are few, and in real micrographs the most exposed to what is not shot noise (ice
# thickness, specimen, dose-weighting filters): the fit starts 3 bins from zero frequency.
MIN_FIT_BINS = 3
LOSSES = ("whittle", "log")


def _tukey(n: int, fraction: float) -> torch.Tensor:
    """Tapered cosine: raised-cosine ramps over ``fraction``·n/2 samples at each end, flat between."""
    x = torch.arange(n, dtype=torch.float64) / (n - 1)
    edge = torch.minimum(x, 1 - x)
    ramp = 0.5 * (1 - torch.cos(2 * math.pi * edge / fraction))
    return torch.where(edge < fraction / 2, ramp, torch.ones_like(x))


def _window2d(shape: tuple[int, int], window) -> torch.Tensor | None:
    """Separable Hann or Tukey window scaled to mean(w²) = 1 (so white noise keeps its power); None for none."""
    window = _check_choice("window", {True: "hann", False: "none"}.get(window, window), WINDOWS)
    if window == "none":
        return None
    if window == "hann":
        wy, wx = (torch.hann_window(n, periodic=False, dtype=torch.float64) for n in shape)
    else:
        wy, wx = (_tukey(n, TUKEY_FRACTION) for n in shape)
    w = wy[:, None] * wx[None, :]
    return w / torch.sqrt(torch.mean(w**2))


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


class WindowedSpectrum:
    """Expected periodogram of a (windowed) crop, given the process's spectrum P(ω).

    E|DFT_S(w·x)|²(k)/N = Σ_τ R(τ) A_w(τ) e^{-2πikτ/S} with R the autocovariance (inverse transform of
    P) and A_w the window's linear autocorrelation (for no window, the triangle (S−|τ|): P convolved
    with the Fejér kernel); evaluated exactly on a 2S grid, whose even samples are the crop's
    frequencies. Fitting this instead of P itself removes the crop's leakage/smoothing bias.
    """

    def __init__(self, shape: tuple[int, int], window="none"):
        self.shape = shape
        self.big = (2 * shape[0], 2 * shape[1])
        w = _window2d(shape, window)
        w = torch.ones(shape, dtype=torch.float64) if w is None else w
        w = F.pad(w, (0, shape[1], 0, shape[0]))
        self.autocorr = irfft2(rfft2(w).abs() ** 2, self.big)  # Σ_n w[n] w[n+τ]
        self.omega_big = radial_frequency_per_px(self.big, dtype=torch.float64)

    def __call__(self, spectrum_big: torch.Tensor) -> torch.Tensor:
        """``spectrum_big``: P on the 2S grid's rfft layout (leading dims batch) → expected NPS on the
        crop's rfft layout."""
        r = irfft2(spectrum_big, self.big)
        g = rfft2(r * self.autocorr).real / (self.shape[0] * self.shape[1])
        return g[..., ::2, ::2]


def detrend_crops(crops: torch.Tensor, detrend: str = "plane") -> torch.Tensor:
    """Subtract each crop's mean (``"mean"``) or least-squares plane a + b·y + c·x (``"plane"``).

    1, y − ȳ and x − x̄ are orthogonal on the pixel grid, so the plane is three projections. The DFT of
    y − ȳ is zero off the column kx = 0 and that of x − x̄ off the row ky = 0: removing the plane
    changes only those two lines of the unwindowed spectrum (the mean only the zero bin).
    """
    x = crops.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    if _check_choice("detrend", detrend, DETRENDS) == "plane":
        h, w = x.shape[-2:]
        ry = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2)[:, None].expand(h, w)
        rx = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2)[None, :].expand(h, w)
        for r in (ry, rx):
            x = x - (x * r).sum(dim=(-2, -1), keepdim=True) / (r**2).sum() * r
    return x


def noise_power_spectrum(crops: torch.Tensor, window="none", detrend: str = "mean") -> torch.Tensor:
    """Mean |DFT|²/N of detrended (N, H, W) crops on the rfft layout (units: counts² per pixel).

    ``window``: ``"none"`` (rectangular), ``"tukey"`` or ``"hann"`` (separable, power-normalised);
    :class:`WindowedSpectrum` models each exactly. ``True``/``False`` mean ``"hann"``/``"none"``.
    """
    x = detrend_crops(crops, detrend)
    w = _window2d(tuple(x.shape[-2:]), window)
    if w is not None:
        x = x * w
    return (rfft2(x).abs() ** 2).mean(0) / (x.shape[-1] * x.shape[-2])


def _fit_mask(shape: tuple[int, int], window: str, detrend: str, min_omega: float | None = None) -> torch.Tensor:
    """Bins of the rfft layout that detrending leaves untouched, from ``min_omega`` (default
    ``MIN_FIT_BINS`` bins) up to the corner."""
    ky = freq_index(shape[0]).abs()[:, None]  # bins
    kx = freq_index(shape[1], half=True)[None, :]
    omega = radial_frequency_per_px(shape, dtype=torch.float64)
    keep = (omega <= 0.5 * math.sqrt(2)) & (omega >= (MIN_FIT_BINS / min(shape) if min_omega is None else min_omega))
    if detrend == "plane":  # a taper's main lobe (±2 bins) spreads the removed components
        keep = keep & ((ky > 0) & (kx > 0) if window == "none" else (ky > 2) & (kx > 2))
    return keep


def _rfft_weight(shape: tuple[int, int]) -> torch.Tensor:
    """1 per independent frequency: the rfft layout holds the columns kx = 0 and (W even) kx = W/2
    for both ±ky, so those count 1/2."""
    u = torch.ones(shape[0], shape[1] // 2 + 1, dtype=torch.float64)
    u[:, 0] = 0.5
    if shape[1] % 2 == 0:
        u[:, -1] = 0.5
    return u


def _check_crops(crops: torch.Tensor) -> torch.Tensor:
    crops = torch.as_tensor(crops)
    if crops.ndim != 3:
        raise ConfigError(f"crops must be a (N, H, W) stack, got shape {tuple(crops.shape)}")
    if min(crops.shape[-2:]) < MIN_CROP_PX:
        raise ConfigError(f"crops are {tuple(crops.shape[-2:])} px; at least {MIN_CROP_PX}x{MIN_CROP_PX} px are "
                          "needed to resolve the MTF (use larger crops)")
    if not torch.isfinite(crops).all():
        raise ConfigError("crops contain NaN or infinite values; check the micrograph")
    return crops


def _curve_and_jacobian(theta: torch.Tensor, omega2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model and its derivatives in θ = (a, b, c, log α, log β), or θ = (a, c, log α) for the
    one-Lorentzian sub-model (b = 0)."""
    if len(theta) == 3:
        a, c, la = theta
        la_ = torch.exp(la)
        la_l = 1 / (1 + la_ * omega2)
        return a * la_l + c, torch.stack([la_l, torch.ones_like(omega2), -a * la_ * omega2 * la_l**2])
    a, b, c, la, lb = theta
    al, be = torch.exp(la), torch.exp(lb)
    l1, l2 = 1 / (1 + al * omega2), 1 / (1 + be * omega2)
    return a * l1 + b * l2 + c, torch.stack([l1, l2, torch.ones_like(omega2), -a * al * omega2 * l1**2,
                                             -b * be * omega2 * l2**2])


def _theta(p: MTFParams, single: bool) -> torch.Tensor:
    v = [p.a, p.c, math.log(p.alpha)] if single else [p.a, p.b, p.c, math.log(p.alpha), math.log(p.beta)]
    return torch.tensor(v, dtype=torch.float64)


def _params(theta: torch.Tensor) -> MTFParams:
    t = [float(v) for v in theta]
    if len(t) == 3:
        return MTFParams(t[0], 0.0, t[1], math.exp(t[2]), math.exp(t[2]))
    return MTFParams(t[0], t[1], t[2], math.exp(t[3]), math.exp(t[4]))


class _NPSLikelihood:
    """−log L of the model for the crops' mean periodogram P̄, per independent sample, minus its value
    at S = P̄ (0 is a perfect fit), with gradient and Fisher information; the expected periodogram S is
    modelled exactly (:class:`WindowedSpectrum`).

    ``loss="whittle"``: P̄_k ~ S_k·Gamma(N, 1)/N independently over frequencies (exact for Gaussian
    noise and no taper, up to the leakage's weak correlations), so −log L/N = Σ_k [log S_k + P̄_k/S_k].
    ``loss="log"``: least squares of log P̄ − log S (biased by E log Gamma(N)/N = ψ(N) − log N).
    Without ``counts_per_px``, S = s·MTF² with the scale s profiled out (solved exactly); with it,
    S = λ·MTF².
    """

    def __init__(self, crops: torch.Tensor, window: str, detrend: str, loss: str, counts_per_px: float | None,
                 min_omega: float | None = None):
        shape = tuple(crops.shape[-2:])
        self.loss, self.counts_per_px = loss, counts_per_px
        self.mask = _fit_mask(shape, window, detrend, min_omega)
        self.p = noise_power_spectrum(crops, window, detrend)[self.mask].clamp_min(1e-30)
        self.log_p = torch.log(self.p)
        weight = _rfft_weight(shape)[self.mask]
        usum = float(weight.sum())
        self.u = weight / usum
        self.omega = radial_frequency_per_px(shape, dtype=torch.float64)[self.mask]
        self.windowed = WindowedSpectrum(shape, window)
        self.omega2_big = self.windowed.omega_big**2
        n = crops.shape[0]
        self.n_eff = n * usum  # independent periodogram samples
        trigamma = float(torch.special.polygamma(1, torch.tensor(float(n), dtype=torch.float64)))
        self.nll_per_unit = self.n_eff if loss == "whittle" else usum / (2 * trigamma)

    def __call__(self, theta: torch.Tensor, derivatives: bool = False):
        """Objective (and, if ``derivatives``, its gradient and Fisher information) at θ."""
        curve, d = _curve_and_jacobian(theta, self.omega2_big)
        lam = 1.0 if self.counts_per_px is None else self.counts_per_px
        spectra = lam * (torch.cat([curve[None] ** 2, 2 * curve * d]) if derivatives else curve**2)
        m = self.windowed(spectra)[..., self.mask]
        m0 = m[0].clamp_min(1e-300) if derivatives else m.clamp_min(1e-300)
        r = self.log_p - torch.log(m0)  # log(P̄/S)
        u = self.u
        free = self.counts_per_px is None
        if self.loss == "log":
            if free:
                r = r - (r * u).sum()  # the scale s, solved exactly in the log domain
            f = (r**2 * u).sum()
            resid, h_scale = -2 * r, 2.0
        else:
            ratio = torch.exp(r)
            if free:  # s = mean(P̄/m) profiled out
                sbar = (ratio * u).sum()
                f = torch.log(sbar) - (r * u).sum()
                resid = 1 - ratio / sbar
            else:
                f = ((ratio - r - 1) * u).sum()
                resid = 1 - ratio
            h_scale = 1.0
        if not derivatives:
            return float(f)
        jac = m[1:] / m0  # ∂ log S / ∂θ
        grad = jac @ (resid * u)
        if free:  # the profiled scale: the Fisher information of the centred Jacobian
            jac = jac - (jac @ u)[:, None]
        fisher = h_scale * (jac * u) @ jac.T
        return float(f), grad, fisher


def _levenberg_marquardt(lik: _NPSLikelihood, theta: torch.Tensor, log_cap: float, steps: int = 100,
                         ) -> tuple[torch.Tensor, list[float]]:
    """Minimise lik(θ) + Σ relu(log α − log cap)² by Levenberg–Marquardt on the Fisher information
    (Fisher scoring with damping): the model's valleys (two Lorentzians of opposite sign and close
    widths nearly cancel) are curved and ill-conditioned, where first-order methods crawl."""
    n_widths = 1 if len(theta) == 3 else 2

    def penalty(t):
        over = F.relu(t[-n_widths:] - log_cap)
        return float((over**2).sum()), over

    def total(t):
        try:
            return lik(t) + penalty(t)[0]
        except (RuntimeError, OverflowError):
            return math.inf

    f, g, h = lik(theta, True)
    pen, over = penalty(theta)
    f += pen
    history = [f]
    mu = 1e-3
    eye = torch.eye(len(theta), dtype=torch.float64)
    for _ in range(steps):
        g = g.clone()
        h = h.clone()
        g[-n_widths:] += 2 * over
        h[-n_widths:, -n_widths:] += torch.diag(2.0 * (over > 0).double())
        improved = False
        for _ in range(30):
            a = h + mu * torch.diag(torch.diag(h)) + 1e-12 * float(torch.diag(h).max()) * eye
            step = torch.linalg.solve(a, -g)
            trial = theta + step
            trial[-n_widths:] = trial[-n_widths:].clamp(-20.0, 20.0)
            ft = total(trial)
            if math.isfinite(ft) and ft < f:
                improved = True
                break
            mu *= 4
            if mu > 1e12:
                break
        if not improved:
            break
        theta, done = trial, (f - ft) < 1e-13 * max(abs(f), 1e-3)
        mu = max(mu / 3, 1e-9)
        f, g, h = lik(theta, True)
        pen, over = penalty(theta)
        f += pen
        history.append(f)
        if done:
            break
    return theta, history


def _tiles(crops: torch.Tensor, min_px: int = MIN_CROP_PX) -> torch.Tensor:
    """Each crop cut into tiles of about a quarter of its size (at least ``min_px``): the same samples
    at a coarser frequency resolution, for a cheap (but still exact) likelihood in the global search."""
    h, w = crops.shape[-2:]
    th, tw = max(min_px, h // 4), max(min_px, w // 4)
    ny, nx = h // th, w // tw
    t = crops[:, :ny * th, :nx * tw].reshape(crops.shape[0], ny, th, nx, tw)
    return t.permute(0, 1, 3, 2, 4).reshape(-1, th, tw)


def _fit_spectrum(crops: torch.Tensor, counts_per_px: float | None, inits, window: str, detrend: str,
                  loss: str, lorentzians: int | None, search: bool = True) -> tuple[MTFParams, list[float], dict]:
    """The NPS fit with one window: returns the parameters (absolute if ``counts_per_px``), the
    objective's history and facts for ``MTFFit.extra``. ``search=False``: start from ``inits`` only."""
    fine = _NPSLikelihood(crops, window, detrend, loss, counts_per_px)
    coarse = _NPSLikelihood(_tiles(crops), window, detrend, loss, counts_per_px, float(fine.omega.min()) - 1e-12)
    # global starts: |MTF| ∝ sqrt(NPS) is linear in (a, b, c) for fixed (α, β) (radially averaged first)
    w = fine.omega
    edges = torch.linspace(0, float(w.max()) + 1e-9, 65, dtype=torch.float64)
    idx = torch.bucketize(w, edges) - 1
    cnt = torch.zeros(64, dtype=torch.float64).index_add_(0, idx, torch.ones_like(w))
    amp = torch.zeros(64, dtype=torch.float64).index_add_(0, idx, fine.p.sqrt()) / cnt.clamp_min(1)
    wr = torch.zeros(64, dtype=torch.float64).index_add_(0, idx, w) / cnt.clamp_min(1)
    ok = cnt > 0
    amp, wr, cnt = amp[ok], wr[ok], cnt[ok]
    if counts_per_px is not None:
        amp = amp / math.sqrt(counts_per_px)  # NPS = λ·MTF²: the start is then on the absolute scale
    signed = _sign_patterns(amp)

    # A Lorentzian barely wider than the lowest fitted frequency moves MTF(0), the normaliser, while
    # fitting only the noise of the few low-frequency samples: keep α, β below cap (a half-width of at
    # least 4 ω_min, i.e. resolved by the crop) with a steep penalty.
    log_cap = -2 * math.log(4.0 * float(w.min()))

    def fit(starts, single: bool):
        """Fits from every start on the tiles' coarse spectrum, then on the full one from the best few."""
        ranked = []
        for init in starts:
            if not (init.alpha > 0 and init.beta > 0 and all(math.isfinite(v) for v in init.__dict__.values())):
                continue
            theta, hist = _levenberg_marquardt(coarse, _theta(init, single), log_cap, steps=60)
            if math.isfinite(hist[-1]):
                ranked.append((hist[-1], theta))
        ranked.sort(key=lambda t: t[0])
        best = None
        for _, theta in ranked[:3]:
            theta, hist = _levenberg_marquardt(fine, theta, log_cap)
            if math.isfinite(hist[-1]) and (best is None or hist[-1] < best[1][-1]):
                best = (_params(theta), hist)
        return best

    grid = [grid_init(wr, s, cnt) for s in signed] if search else []
    full = None if lorentzians == 1 else fit([*grid, *inits], single=False)
    # The sub-model a/(1+αω²) + c (one Lorentzian): unless the second Lorentzian passes a likelihood-
    # ratio test at the 5 % level (2ΔNLL > 5.99, χ² with its two parameters), it only fits noise
    # (typically a narrow spike at the lowest frequencies, which moves the normaliser MTF(0)), so the
    # sub-model is kept. (BIC's log(n) ≈ 12 dropped TMV's real second Lorentzian at 5 crops of 256².)
    one = [grid_init(wr, s, cnt, single=True) for s in signed] if search else \
        [MTFParams(p.a + p.b, 0.0, p.c, p.alpha, p.alpha) for p in inits]
    if full is not None:
        one += [MTFParams(full[0].a + full[0].b, 0.0, full[0].c, v, v) for v in (full[0].alpha, full[0].beta)]
    sub = None if lorentzians == 2 else fit(one, single=True)
    if full is None and sub is None:
        raise ConfigError("the NPS fit diverged from every start; check that the crops are background")
    if sub is None or full is None:
        delta_nll = math.inf if sub is None else -math.inf
    else:
        delta_nll = (sub[1][-1] - full[1][-1]) * fine.nll_per_unit
    n_lorentz = 1 if delta_nll < LR_THRESHOLD else 2
    params, hist = sub if n_lorentz == 1 else full
    # the fitted model's own leakage: the share of the rectangular crop's expected periodogram that comes
    # from other frequencies (Fejér side lobes), bin by bin
    rect = WindowedSpectrum(tuple(crops.shape[-2:]), "none")
    expected = rect(params(rect.omega_big) ** 2)[fine.mask].clamp_min(1e-300)
    leak = 1 - params(fine.omega) ** 2 / expected
    return params, hist, {"lorentzians": n_lorentz,
                          "delta_nll_one_vs_two": delta_nll if math.isfinite(delta_nll) else None,
                          "leaky_bins": float(((leak > LEAKY) * fine.u).sum())}


def fit_nps(crops: torch.Tensor, *, counts_per_px: float | None = None, inits=_INITS, window: str = "auto",
            detrend: str = "plane", loss: str = "whittle", lorentzians: int | None = None) -> MTFFit:
    """Fit s·MTF(ω)² to the crops' noise power spectrum (Whittle likelihood over all frequencies).

    Without ``counts_per_px`` the scale s is free and the result is normalised so MTF(0) = 1 (only the
    shape is identifiable). With it (λ, the expected counts per pixel before the MTF, known from the
    dose when the micrograph is in counts) Poisson statistics fix the scale: NPS = λ·MTF², so the
    curve's level is measured at every frequency instead of extrapolated to ω = 0, and the fitted
    parameters are absolute.

    ``window``: "auto" (default: none, unless the fitted NPS has so deep minima that side lobes of its
    peaks fill more than ``MAX_LEAKY_SHARE`` of the bins by more than ``LEAKY``; then a Tukey taper),
    "none", "tukey" or "hann". ``detrend`` ("plane" or "mean") and ``loss`` ("whittle" or "log": least
    squares of log NPS) select the estimator; the defaults are the most accurate (see the module
    docstring). ``lorentzians``: 1 or 2 forces the model's number of Lorentzians; None (default) lets a
    likelihood-ratio test choose (``extra["lorentzians"]`` says which was used).
    """
    t0 = time.perf_counter()
    crops = _check_crops(crops)
    window = _check_choice("window", window, ("auto", *WINDOWS))
    detrend = _check_choice("detrend", detrend, DETRENDS)
    loss = _check_choice("loss", loss, LOSSES)
    if lorentzians not in (None, 1, 2):
        raise ConfigError(f"lorentzians must be 1, 2 or None (a likelihood-ratio test chooses), got {lorentzians!r}")
    used = "none" if window == "auto" else window
    params, hist, extra = _fit_spectrum(crops, counts_per_px, inits, used, detrend, loss, lorentzians)
    if window == "auto" and extra["leaky_bins"] > MAX_LEAKY_SHARE:
        used = "tukey"
        params, hist, more = _fit_spectrum(crops, counts_per_px, [params], used, detrend, loss, lorentzians,
                                           search=False)  # (the untapered fit is in the right basin)
        extra = {**more, "leaky_bins": extra["leaky_bins"]}
    if counts_per_px is None:
        p0 = params(torch.zeros((), dtype=torch.float64))
        params = MTFParams(params.a / float(p0), params.b / float(p0), params.c / float(p0), params.alpha, params.beta)
    return MTFFit(params, "nps" if counts_per_px is None else "nps_counts", hist, time.perf_counter() - t0,
                  {"n_crops": int(crops.shape[0]), "crop_px": list(crops.shape[-2:]), "counts_per_px": counts_per_px,
                   "window": used, "detrend": detrend, "loss": loss, **extra})


#: Algorithm 1's starting MTF (the seed paper's initial values).
ALGORITHM1_START = MTFParams(0.5, 0.3, 0.2, 5.0, 20.0)


def fit_algorithm1(crops: torch.Tensor, background_counts: float, *, ffl_alpha: float | None = 1.0,
                   steps: int = 300, lr: float = 0.1, init: MTFParams = ALGORITHM1_START,
                   generator: torch.Generator | None = None, progress=None) -> MTFFit:
    """The seed paper's Algorithm 1: match MTF(Poisson(Ĩ)) to the real crops after min-max normalisation.

    ``background_counts`` is Ĩ, the noise-free expected counts per pixel of the (ice-only) background
    before the MTF. Loss: MSE, plus the focal frequency loss with exponent ``ffl_alpha`` (None: MSE only).
    Adam β = (0.8, 0.992), learning rate ``lr``; fresh Poisson samples every step.
    """
    t0 = time.perf_counter()
    crops = _check_crops(crops)
    if not background_counts > 0:
        raise ConfigError("background counts per pixel must be > 0 (check the dose and pixel size)")
    target = minmax_normalise(crops.double())
    model = LearnableMTF.from_params(init)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.8, 0.992))
    rate = torch.full(crops.shape, float(background_counts), dtype=torch.float64)
    hist = []
    for step in range(steps):
        counts = torch.poisson(rate, generator=generator)
        sim = minmax_normalise(model(counts))
        loss = F.mse_loss(sim, target)
        if ffl_alpha is not None:
            loss = loss + focal_frequency_loss(sim, target, ffl_alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps)
    name = "algorithm1_mse" + ("" if ffl_alpha is None else f"+ffl(alpha={ffl_alpha:g})")
    return MTFFit(model.to_params(), name, hist, time.perf_counter() - t0,
                  {"n_crops": int(crops.shape[0]), "steps": steps, "lr": lr})


def select_background_crops(image: np.ndarray, crop_px: int, n_crops: int, *, edge_px: int | None = None,
                            lowpass_px: float = 8.0) -> list[tuple[int, int]]:
    """Top-left corners of ``n_crops`` non-overlapping crops with the least low-frequency structure.

    Particles, carbon and contamination add low-frequency signal; empty ice does not. Each candidate
    tile is scored by the variance of the image low-passed (Gaussian, σ = ``lowpass_px``) inside it,
    relative to its shot-noise level; tiles whose mean departs from the median by more than 3 robust
    standard deviations (contamination, holes) are dropped. Edges (``edge_px``, default crop/4) are skipped.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ConfigError(f"micrograph must be 2-D, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise ConfigError("micrograph contains NaN or infinite values")
    if crop_px < MIN_CROP_PX:
        raise ArgumentError("crop_size", f" {crop_px} px is too small; use at least {MIN_CROP_PX}")
    edge = crop_px // 4 if edge_px is None else edge_px
    h, w = img.shape
    ys = list(range(edge, h - edge - crop_px + 1, crop_px))
    xs = list(range(edge, w - edge - crop_px + 1, crop_px))
    if not ys or not xs:
        raise ConfigError(f"micrograph {h}x{w} px holds no {crop_px} px crop away from the edges; "
                          "use smaller crops")
    t = torch.as_tensor(img)
    fy, fx = freq_grid_per_px((h, w), half=True, dtype=torch.float64)
    g = torch.exp(-2 * (math.pi * lowpass_px) ** 2 * (fy**2 + fx**2))
    low = irfft2(rfft2(t) * g, (h, w)).numpy()
    cand = []
    for y in ys:
        for x in xs:
            tile, lo = img[y:y + crop_px, x:x + crop_px], low[y:y + crop_px, x:x + crop_px]
            cand.append((lo.var() / max(tile.var(), 1e-30), tile.mean(), y, x))
    means = np.array([c[1] for c in cand])
    med = np.median(means)
    mad = 1.4826 * np.median(np.abs(means - med)) + 1e-12
    good = [c for c in cand if abs(c[1] - med) <= 3 * mad]
    good.sort(key=lambda c: c[0])
    if len(good) == 0:
        raise ConfigError("no usable background found in the micrograph (every tile is an outlier)")
    return [(c[2], c[3]) for c in good[:n_crops]]


def extract_crops(image: np.ndarray, corners: list[tuple[int, int]], crop_px: int) -> torch.Tensor:
    img = np.asarray(image, dtype=np.float64)
    out = []
    for y, x in corners:
        if y < 0 or x < 0 or y + crop_px > img.shape[0] or x + crop_px > img.shape[1]:
            raise ConfigError(f"box at (y={y}, x={x}) of {crop_px} px does not fit in the {img.shape} micrograph")
        out.append(img[y:y + crop_px, x:x + crop_px])
    return torch.as_tensor(np.stack(out))
