"""Estimating a detector's MTF: from a measured curve, from background crops of micrographs.

Model (seed paper, eq. 1): MTF(ω) = a/(1+αω²) + b/(1+βω²) + c, ω in cycles/pixel.

Estimators
- ``fit_curve``: least squares of the model to a tabulated curve (e.g. a RELION STAR file).
- ``fit_algorithm1``: the seed paper's Algorithm 1 as published: simulated background crops
  MTF(Poisson(Ĩ)) and the real crops, both min-max normalised, compared by MSE (+ focal frequency
  loss with exponent α); Adam β = (0.8, 0.992), lr 0.1.
- ``fit_nps``: the noise power spectrum of the crops. Shot noise is white, and the detector filters
  the counts by the MTF, so the background's NPS is s·MTF(ω)² with an unknown scale s (dose, DQE,
  gain). Fitting the shape of the measured NPS with the model is a regression on thousands of
  averaged spectral samples instead of a stochastic image match, and needs no dose or gain.
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

from ..detector import MTFParams, radial_frequency_per_px
from ..errors import ConfigError
from ..fft import irfft2, rfft2
from .estimators import LearnableMTF
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
              n_grid: int = 41) -> MTFParams:
    """Global start for the 5-parameter model: for fixed (α, β) the model is linear in (a, b, c), so
    solve that weighted least-squares problem on a log-spaced (α, β) grid and keep the best."""
    w = torch.ones_like(target) if weight is None else weight
    grid = torch.logspace(-1, 3.5, n_grid, dtype=torch.float64)
    al, be = torch.meshgrid(grid, grid, indexing="ij")
    keep = al <= be  # the model is symmetric in (a, α) ↔ (b, β)
    al, be = al[keep], be[keep]
    w2 = omega**2
    basis = torch.stack([1 / (1 + al[:, None] * w2), 1 / (1 + be[:, None] * w2), torch.ones_like(al)[:, None]
                         .expand(-1, len(omega))], -1)  # (G, n, 3)
    sw = w.sqrt()[None, :, None]
    sol = torch.linalg.lstsq(basis * sw, (target * w.sqrt())[None, :, None].expand(len(al), -1, -1)).solution
    resid = ((basis @ sol).squeeze(-1) - target) ** 2 @ w
    i = int(torch.argmin(resid))
    a, b, c = (float(v) for v in sol[i, :, 0])
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
        hist = _lbfgs(model, lambda: torch.mean((model.curve(f) - v) ** 2))
        if best is None or hist[-1] < best[1][-1]:
            best = (model.to_params(), hist)
    params, hist = best
    rms = float(torch.sqrt(torch.mean((params(f) - v) ** 2)))
    return MTFFit(params, "curve", hist, time.perf_counter() - t0, {"rms_fit_error": rms,
                                                                      "max_abs_fit_error": float((params(f) - v).abs().max())})


def _hann2d(shape: tuple[int, int]) -> torch.Tensor:
    """Separable Hann window scaled to mean(w²) = 1 (so white noise keeps its power)."""
    wy = torch.hann_window(shape[0], periodic=False, dtype=torch.float64)
    wx = torch.hann_window(shape[1], periodic=False, dtype=torch.float64)
    w = wy[:, None] * wx[None, :]
    return w / torch.sqrt(torch.mean(w**2))


class WindowedSpectrum:
    """Expected Hann-windowed periodogram of a crop, given the process's spectrum P(ω).

    E|DFT_S(w·x)|²(k)/N = Σ_τ R(τ) A_w(τ) e^{-2πikτ/S} with R the autocovariance (inverse transform of
    P) and A_w the window's linear autocorrelation; evaluated exactly on a 2S grid, whose even samples
    are the crop's frequencies. Fitting this instead of P itself removes the window's smoothing bias.
    """

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.big = (2 * shape[0], 2 * shape[1])
        w = F.pad(_hann2d(shape), (0, shape[1], 0, shape[0]))
        self.autocorr = irfft2(rfft2(w).abs() ** 2, self.big)  # Σ_n w[n] w[n+τ]
        self.omega_big = radial_frequency_per_px(self.big, dtype=torch.float64)

    def __call__(self, spectrum_big: torch.Tensor) -> torch.Tensor:
        """``spectrum_big``: P on the 2S grid's rfft layout → expected NPS on the crop's rfft layout."""
        r = irfft2(spectrum_big, self.big)
        g = rfft2(r * self.autocorr).real / (self.shape[0] * self.shape[1])
        return g[::2, ::2]


def noise_power_spectrum(crops: torch.Tensor, window: bool = True) -> torch.Tensor:
    """Mean |DFT|²/N of mean-subtracted (N, S, S) crops on the rfft layout (units: counts² per pixel).

    Crops cut from a larger image are not periodic: their edges leak power across frequencies and
    flatten the spectrum. A separable Hann window (power-normalised) suppresses that leakage.
    """
    x = crops.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    if window:
        x = x * _hann2d(tuple(x.shape[-2:]))
    return (rfft2(x).abs() ** 2).mean(0) / (x.shape[-1] * x.shape[-2])


def _check_crops(crops: torch.Tensor) -> torch.Tensor:
    crops = torch.as_tensor(crops)
    if crops.ndim != 3:
        raise ConfigError(f"crops must be a (N, H, W) stack, got shape {tuple(crops.shape)}")
    if min(crops.shape[-2:]) < MIN_CROP_PX:
        raise ConfigError(f"crops are {tuple(crops.shape[-2:])} px; at least {MIN_CROP_PX}x{MIN_CROP_PX} px are "
                          "needed to resolve the MTF (use a larger --crop-size)")
    if not torch.isfinite(crops).all():
        raise ConfigError("crops contain NaN or infinite values; check the micrograph")
    return crops


def fit_nps(crops: torch.Tensor, *, counts_per_px: float | None = None, inits=_INITS) -> MTFFit:
    """Fit s·MTF(ω)² to the crops' noise power spectrum (log-domain least squares over all frequencies).

    Without ``counts_per_px`` the scale s is free and the result is normalised so MTF(0) = 1 (only the
    shape is identifiable). With it (λ, the expected counts per pixel before the MTF, known from the
    dose when the micrograph is in counts) Poisson statistics fix the scale: NPS = λ·MTF², so the
    curve's level is measured at every frequency instead of extrapolated to ω = 0, and the fitted
    parameters are absolute.
    """
    t0 = time.perf_counter()
    crops = _check_crops(crops)
    nps = noise_power_spectrum(crops)
    omega = radial_frequency_per_px(tuple(crops.shape[-2:]), dtype=torch.float64)
    # each crop's mean is removed, which depletes the bins within the window's main lobe (±2 bins)
    # of zero frequency: fit from 3 bins up
    mask = (omega >= 3.0 / min(crops.shape[-2:])) & (omega <= 0.5 * math.sqrt(2))
    log_nps = torch.log(nps[mask].clamp_min(1e-30))
    w = omega[mask]
    # global start: |MTF| ∝ sqrt(NPS) is linear in (a, b, c) for fixed (α, β) (radially averaged first)
    edges = torch.linspace(0, float(w.max()) + 1e-9, 65, dtype=torch.float64)
    idx = torch.bucketize(w, edges) - 1
    cnt = torch.zeros(64, dtype=torch.float64).index_add_(0, idx, torch.ones_like(w))
    amp = torch.zeros(64, dtype=torch.float64).index_add_(0, idx, nps[mask].sqrt()) / cnt.clamp_min(1)
    wr = torch.zeros(64, dtype=torch.float64).index_add_(0, idx, w) / cnt.clamp_min(1)
    ok = cnt > 0
    if counts_per_px is not None:
        amp = amp / math.sqrt(counts_per_px)  # NPS = λ·MTF²: the start is then on the absolute scale
    starts = [grid_init(wr[ok], signed, cnt[ok]) for signed in _sign_patterns(amp[ok])]
    weight = torch.ones_like(w)
    windowed = WindowedSpectrum(tuple(crops.shape[-2:]))
    zero = torch.zeros((), dtype=torch.float64)

    def residual(model, exact: bool):
        norm = model.curve(zero) if counts_per_px is None else 1.0 / math.sqrt(counts_per_px)
        if exact:  # the window's smoothing modelled exactly
            m2 = windowed((model.curve(windowed.omega_big) / norm) ** 2)[mask]
        else:
            m2 = (model.curve(w) / norm) ** 2
        r = log_nps - torch.log(m2.clamp_min(1e-12))
        if counts_per_px is None:
            r = r - (r * weight).sum() / weight.sum()  # the scale s, solved exactly in the log domain
        return r * weight.sqrt()

    # A Lorentzian barely wider than the lowest fitted frequency moves MTF(0), the normaliser, while
    # fitting only the noise of the few low-frequency samples: keep α, β below cap (a half-width of at
    # least 4 ω_min, i.e. resolved by the crop) with a steep penalty.
    cap = 1.0 / (4.0 * float(w.min())) ** 2

    def penalty(model):
        return F.relu(torch.log(model.alpha / cap)) ** 2 + F.relu(torch.log(model.beta / cap)) ** 2

    # cheap fits from every start, then the exact windowed model from the best few
    ranked = []
    for init in [*starts, *inits]:
        model = LearnableMTF.from_params(init)
        hist = _lbfgs(model, lambda: torch.sum(residual(model, False) ** 2) / weight.sum() + penalty(model), steps=100)
        if math.isfinite(hist[-1]) and all(math.isfinite(v) for v in model.to_params().__dict__.values()):
            ranked.append((hist[-1], model.to_params()))
    ranked.sort(key=lambda t: t[0])
    best = None
    for _, init in ranked[:3]:
        model = LearnableMTF.from_params(init)
        hist = _lbfgs(model, lambda: torch.sum(residual(model, True) ** 2) / weight.sum() + penalty(model))
        if not math.isfinite(hist[-1]):
            continue
        if best is None or hist[-1] < best[1][-1]:
            best = (model.to_params(), hist)
    params, hist = best
    if counts_per_px is None:
        p0 = params(torch.zeros((), dtype=torch.float64))
        params = MTFParams(params.a / float(p0), params.b / float(p0), params.c / float(p0), params.alpha, params.beta)
    return MTFFit(params, "nps" if counts_per_px is None else "nps_counts", hist, time.perf_counter() - t0,
                  {"n_crops": int(crops.shape[0]), "crop_px": list(crops.shape[-2:]), "counts_per_px": counts_per_px})


def fit_algorithm1(crops: torch.Tensor, background_counts: float, *, ffl_alpha: float | None = 1.0,
                   steps: int = 300, lr: float = 0.1, init: MTFParams = MTFParams(0.5, 0.3, 0.2, 5.0, 20.0),
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
        raise ConfigError(f"--crop-size {crop_px} px is too small; use at least {MIN_CROP_PX}")
    edge = crop_px // 4 if edge_px is None else edge_px
    h, w = img.shape
    ys = list(range(edge, h - edge - crop_px + 1, crop_px))
    xs = list(range(edge, w - edge - crop_px + 1, crop_px))
    if not ys or not xs:
        raise ConfigError(f"micrograph {h}x{w} px holds no {crop_px} px crop away from the edges; "
                          "use a smaller --crop-size")
    t = torch.as_tensor(img)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
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
