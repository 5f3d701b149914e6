"""The micrograph's power spectrum as the simulator makes it, fitted jointly to the data.

The simulator's detector is linear: image = g · MTF ∗ (Poisson(DQE·λ(x)) / DQE). With the mean m = g·λ̄ fixed by the
data, the crops' noise power spectrum is, frequency by frequency,

    NPS(ω) = MTF(ω)² · [N + a² · I(ω) + s · P(ω)]

N = g·m/DQE the white shot noise, I the structured ice's power at amplitude 1 and P the particles' at the start
count, both from noise-free simulations with a perfect detector (in data units: they depend on m only). The ice's
and the particles' cross-power vanishes on average (independent positions). So the MTF's shape, the noise level,
the ice amplitude and the particle count are fitted together, in fine radial bins, by least squares of log power:
no simulation inside the loop. Fitting the MTF from background crops alone (fit-mtf's estimator) leaves it to
absorb the specimen's own power, which the other terms then double count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.fft import radial_freq_per_px
from ..forward.detector import MeasuredMTF, MTFParams

#: The fitted band (cycles/px): the likeness bands' range, in this many bins.
FIT_BAND_PER_PX = (0.02, 0.48)
FIT_BINS = 92


@dataclass(frozen=True)
class SpectrumFit:
    mtf: MTFParams | MeasuredMTF  # MTF(0) = 1
    noise_power: float            # N: white shot-noise power before the MTF (data units² per px)
    scales: tuple[float, ...]     # per signal part (a² for the ice, s for the particles)
    rms_log_error: float          # over the fitted bins
    mtf_fitted: bool

    def as_dict(self) -> dict:
        mtf = ({"star": self.mtf.source} if isinstance(self.mtf, MeasuredMTF)
               else {k: float(getattr(self.mtf, k)) for k in ("a", "b", "c", "alpha", "beta")})
        return {"mtf": mtf, "mtf_fitted": self.mtf_fitted, "noise_power": self.noise_power,
                "scales": list(self.scales), "rms_log_error": self.rms_log_error,
                "band_per_px": list(FIT_BAND_PER_PX), "bins": FIT_BINS}


def _bins(n: int, from_per_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin index per rfft-layout sample, −1 outside the band or below ``from_per_px``; samples per bin)."""
    omega = radial_freq_per_px((n, n), half=True)
    edges = torch.linspace(*FIT_BAND_PER_PX, FIT_BINS + 1, dtype=torch.float64)
    idx = torch.bucketize(omega, edges, right=True) - 1
    inside = (omega >= max(edges[0], from_per_px)) & (omega < edges[-1])
    idx = torch.where(inside, idx, torch.full_like(idx, -1))
    counts = torch.bincount(idx[idx >= 0].flatten(), minlength=FIT_BINS).double()
    keep = counts > 0  # bins below from_per_px drop out
    remap = torch.cumsum(keep.long(), 0) - 1
    idx = torch.where(idx >= 0, remap[idx.clamp_min(0)], idx)
    return idx, counts[keep]


def _binned(x: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of (..., n, n//2+1) ``x`` per bin → (..., FIT_BINS)."""
    keep = idx >= 0
    flat = x[..., keep]
    out = torch.zeros(x.shape[:-2] + (len(counts),), dtype=x.dtype)
    out.index_add_(-1, idx[keep], flat)
    return out / counts


def _mtf_of(theta: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    a, b, la, lb = theta
    return a / (1 + la.exp() * w2) + b / (1 + lb.exp() * w2) + (1 - a - b)


def fit_spectrum(real_nps: torch.Tensor, parts: list[torch.Tensor], *, noise_start: float,
                 mtf_start: MTFParams | MeasuredMTF, fit_mtf: bool = True, from_per_px: float = 0.0) -> SpectrumFit:
    """Fit MTF shape (unless ``fit_mtf`` is False: the given curve is kept), N and one non-negative scale per signal
    part to the real crops' NPS (all on the rfft layout of one crop size, data units² per px), in the bins from
    ``from_per_px`` up."""
    n = real_nps.shape[-2]
    idx, counts = _bins(n, from_per_px)
    omega = radial_freq_per_px((n, n), half=True)
    real = _binned(real_nps.double(), idx, counts)
    part_b = torch.stack([_binned(p.double().clamp_min(0), idx, counts) for p in parts]) if parts else None
    log_real = real.clamp_min(1e-300).log()
    fixed = None if fit_mtf else _binned(mtf_start(omega).double() ** 2, idx, counts)
    w2 = omega**2

    def model(theta_mtf, log_noise, roots):
        mtf2 = fixed if theta_mtf is None else _binned(_mtf_of(theta_mtf, w2) ** 2, idx, counts)
        inner = log_noise.exp() + (0 if part_b is None else ((roots**2)[:, None] * part_b).sum(0))
        return mtf2 * inner

    best = None
    starts = [_theta_start(mtf_start)] if fit_mtf else [None]
    if fit_mtf:
        starts += [torch.tensor(s, dtype=torch.float64) for s in ((0.5, 0.3, np.log(5.0), np.log(20.0)),
                                                                  (0.8, 0.1, np.log(2.0), np.log(40.0)))]
    # every MTF start at the given level, and the given MTF start at other levels too
    tries = [(t, noise_start) for t in starts] + [(starts[0], noise_start * f) for f in OTHER_NOISE_STARTS]
    for theta0, noise0 in tries:
        theta = None if theta0 is None else theta0.clone().requires_grad_(True)
        log_noise = torch.tensor(float(np.log(noise0)), dtype=torch.float64, requires_grad=True)
        roots = torch.full((len(parts),), 0.5, dtype=torch.float64, requires_grad=True)
        params = [p for p in (theta, log_noise, roots) if p is not None]
        opt = torch.optim.LBFGS(params, lr=1, max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure(theta=theta, log_noise=log_noise, roots=roots, opt=opt):
            opt.zero_grad()
            m = model(theta, log_noise, roots)
            loss = ((m.clamp_min(1e-300).log() - log_real) ** 2).mean()
            if not torch.isfinite(loss):
                loss = torch.tensor(1e6, dtype=torch.float64, requires_grad=True)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            m = model(theta, log_noise, roots)
            mtf_ok = theta is None or _plausible_mtf(theta, w2)
            err = float(((m.clamp_min(1e-300).log() - log_real) ** 2).mean().sqrt())
        if np.isfinite(err) and mtf_ok and (best is None or err < best[0]):
            best = (err, None if theta is None else theta.detach(), float(log_noise.detach().exp()),
                    tuple(float(r) ** 2 for r in roots.detach()))
    if best is None:  # no start gave a positive MTF: keep the start curve, fit the rest
        return fit_spectrum(real_nps, parts, noise_start=noise_start, mtf_start=mtf_start, fit_mtf=False,
                            from_per_px=from_per_px)
    err, theta, noise, scales = best
    mtf = mtf_start if theta is None else _params_of(theta)
    return SpectrumFit(mtf, noise, scales, err, theta is not None)


#: a fitted MTF whose terms exceed its value at zero frequency this many times over is the optimiser running off along
#: a flat direction of the fit (two large terms of opposite sign), not a detector (real curves: |a| + |b| + |c| ≈ 1)
MAX_MTF_TERMS = 100.0

#: the noise level's other starts, times the given one: from that one alone L-BFGS stopped at 1.5× the level with 7×
#: the residual on one of 8 simulated micrographs (tests/test_calibrate_spectrum.py)
OTHER_NOISE_STARTS = (0.6, 1.6)


def _plausible_mtf(theta: torch.Tensor, w2: torch.Tensor) -> bool:
    """Positive at every frequency fitted and its three terms not cancelling (MTF(0) = 1)."""
    a, b = float(theta[0]), float(theta[1])
    return bool((_mtf_of(theta, w2) > 0).all()) and abs(a) + abs(b) + abs(1 - a - b) <= MAX_MTF_TERMS


def _theta_start(mtf: MTFParams | MeasuredMTF) -> torch.Tensor:
    if isinstance(mtf, MTFParams):
        dc = mtf.a + mtf.b + mtf.c
        return torch.tensor([mtf.a / dc, mtf.b / dc, np.log(mtf.alpha), np.log(mtf.beta)], dtype=torch.float64)
    return torch.tensor([0.5, 0.3, np.log(5.0), np.log(20.0)], dtype=torch.float64)


def _params_of(theta: torch.Tensor) -> MTFParams:
    a, b, la, lb = (float(t) for t in theta)
    return MTFParams(a, b, 1 - a - b, float(np.exp(la)), float(np.exp(lb)))
