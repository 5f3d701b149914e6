"""Fit the contrast transfer function to a micrograph's power spectrum.

The tiles' mean periodogram is modelled as P(k) = B(|k|) + E(|k|)·CTF²(k): B (background: noise, MTF, inelastic
fog) and E (envelope × specimen spectrum) are smooth, isotropic and linear in their coefficients (polynomials in
|k| over the fitted band), so for given optics they are solved exactly by weighted least squares (variable
projection) and only the CTF's few parameters are searched. CTF = −sin(χ + φ) with the RELION convention of
`forward/optics.py`: χ = πλΔf(θ)k² − ½πCsλ³k⁴, Δf(θ) = ½(U + V) + ½(U − V)·cos 2(θ − θ_astig), defocus > 0
underfocus, φ = arcsin(amplitude contrast) + phase shift.

Search: (1) mean defocus on a log grid against the rotational average (blind to astigmatism, robust);
(2) astigmatism as (a_c, a_s) = (U − V)(cos 2θ_a, sin 2θ_a) on a grid against the 2-D spectrum (no angle
wrap-around); (3) L-BFGS on all parameters. Tilted images: each tile's defocus is Δf + d·tan(tilt), d its signed
distance from the tilt axis (Å), so one set of parameters fits every tile of the tilt.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..core.errors import ArgumentError
from ..core.fft import freq_grid_per_a, rfft2
from ..forward.beam import wavelength_a
from .mtf_fit import detrend_crops

POLY_DEGREE = 4          # B and E: polynomials of this degree in |k| over the band
GRID_DEFOCI = 320        # log-spaced mean-defocus candidates
ASTIG_GRID = 13          # (a_c, a_s) candidates per axis
FIT_CORRELATION = 0.3    # fit resolution: where the local data/model correlation first drops below this,
FIT_SIGNIFICANCE = 3.0   # or below this many times noise's own correlation with the model, 1/√(n − 2) for n bins
EQUIPHASE_BINS = 400     # equiphase bins over the band (the fit-resolution profile)
AMBIGUITY_CHI2 = 12.0    # a defocus whose fit beats every other by less than this Δχ² is flagged (fit_is_weak): on
#                          bare ice the five wrong fits seen came within 0.7–9.4, right fits at 80 e/Å² without a
#                          camera by 38 or more (docs/calibration.md)


@dataclass(frozen=True)
class CTFFit:
    """A fitted CTF in RELION conventions (Å, degrees). ``*_sd``: bootstrap standard deviations over tiles."""

    defocus_u_a: float
    defocus_v_a: float
    defocus_angle_deg: float
    phase_shift_deg: float
    amplitude_contrast: float
    voltage_kv: float
    cs_mm: float
    pixel_size_a: float
    fit_band_a: tuple[float, float]
    fit_resolution_a: float
    score: float                      # fraction of the band's spectral variance the CTF term explains
    tilt_deg: float = 0.0
    tilt_axis_deg: float = 0.0
    gradient_sign: int = 0            # +1/−1: defocus grows along +d (tilted fits), 0: untilted
    defocus_sd_a: float = float("nan")
    astigmatism_sd_a: float = float("nan")
    angle_sd_deg: float = float("nan")
    n_tiles: int = 0
    rings_in_band: int = 0            # CTF zeros inside the fitted band: below 2 the defocus is not determined
    defocus_runner_up_a: float = float("nan")  # the best other defocus of the search (:func:`_runner_up`)
    defocus_margin_chi2: float = float("inf")  # how much worse it fits (Δχ²): below AMBIGUITY_CHI2, either may be right
    extras: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def defocus_mean_a(self) -> float:
        return 0.5 * (self.defocus_u_a + self.defocus_v_a)

    @property
    def astigmatism_a(self) -> float:
        return self.defocus_u_a - self.defocus_v_a

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extras")
        d["fit_band_a"] = list(self.fit_band_a)
        return d


def fit_is_weak(fit: dict) -> bool:
    """Whether a fit (:meth:`CTFFit.as_dict`) may have found a wrong defocus: another defocus of the search fits the
    spectrum almost as well (Δχ² below AMBIGUITY_CHI2, :func:`_runner_up`), so the Thon rings are too close to the
    noise to choose. Measured on 768² px of bare ice (CTF scores 0.002–0.02; `docs/calibration.md`): every wrong fit
    and every pure-noise fit is flagged, no right fit at 80 e/Å² without a camera is. (The previous test, a fit
    resolution at the band's low-resolution edge, let 3 of the 5 wrong fits pass.)"""
    return fit.get("defocus_margin_chi2", math.inf) < AMBIGUITY_CHI2


# ---------------------------------------------------------------------------------------------- spectra
def tile_corners(shape: tuple[int, int], tile_px: int, overlap: float = 0.5) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering the image with the given overlap (at least one tile)."""
    h, w = shape
    if tile_px > min(h, w):
        raise ArgumentError("tile_px", f" {tile_px}: larger than the image ({h}×{w}); give a smaller tile")
    step = max(1, int(round(tile_px * (1 - overlap))))
    ys = list(range(0, h - tile_px + 1, step))
    xs = list(range(0, w - tile_px + 1, step))
    return [(y, x) for y in ys for x in xs]


def detrended_periodograms(tiles: torch.Tensor) -> torch.Tensor:
    """(T, n, n//2 + 1) periodograms |DFT|²/n² of plane-detrended (T, n, n) tiles (float64)."""
    n = tiles.shape[-1]
    return rfft2(detrend_crops(tiles.double(), "plane")).abs() ** 2 / n**2


def default_band_a(pixel_size_a: float) -> tuple[float, float]:
    """(low, high) resolution of the fit in Å: 30–5 Å as CTF fitters use; for coarse pixels up to 0.42
    cycles/px and from 2.5× that resolution."""
    high = max(5.0, pixel_size_a / 0.42)
    return float(max(30.0, 2.5 * high)), float(high)


def _spectrum_geometry(tile_px: int, pixel_size_a: float):
    """k (Å⁻¹) and its azimuth θ on the rfft half plane."""
    ky, kx = freq_grid_per_a((tile_px, tile_px), pixel_size_a, half=True)
    ky, kx = torch.broadcast_tensors(ky, kx)
    return torch.sqrt(kx**2 + ky**2), torch.atan2(ky, kx)


# ---------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class _Problem:
    """Band pixels of the spectra and what the CTF needs there."""

    k: torch.Tensor          # (P,) Å⁻¹
    theta: torch.Tensor      # (P,) rad
    data: torch.Tensor       # (T, P) periodograms (T = 1 when tiles are averaged)
    weight: torch.Tensor     # (P,) 1/smooth² : relative errors
    basis: torch.Tensor      # (P, m) polynomial basis in |k|
    offsets_a: torch.Tensor  # (T,) per-tile defocus offset / tan(tilt) (the signed distance d), zeros untilted
    wavelength_a: float
    cs_a: float
    phase0_rad: float


def _basis(k: torch.Tensor, k_lo: float, k_hi: float) -> torch.Tensor:
    x = 2 * (k - k_lo) / (k_hi - k_lo) - 1
    cols = [torch.ones_like(x), x]
    for _ in range(2, POLY_DEGREE + 1):
        cols.append(2 * x * cols[-1] - cols[-2])  # Chebyshev: well conditioned
    return torch.stack(cols, dim=-1)


def _smooth_profile(k: torch.Tensor, values: torch.Tensor, n_bins: int = 48) -> torch.Tensor:
    """A smooth isotropic level of ``values`` (mean over tiles) at each pixel: binned median-free mean over
    wide shells, interpolated; used only for the relative weights."""
    v = values.mean(0)
    edges = torch.linspace(float(k.min()), float(k.max()) + 1e-12, n_bins + 1, dtype=torch.float64)
    idx = torch.clamp(torch.bucketize(k, edges) - 1, 0, n_bins - 1)
    sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, v)
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(v))
    level = sums / counts.clamp_min(1)
    filled = level[counts > 0]
    level = torch.where(counts > 0, level, filled.mean())
    return level[idx]


def ctf_squared(p: _Problem, defocus_a, astig_c_a, astig_s_a, phase_rad, tile_offsets_a=None) -> torch.Tensor:
    """sin²(χ + φ) at the band pixels, (..., T, P) for parameter tensors of shape (...,)."""
    df = torch.as_tensor(defocus_a, dtype=torch.float64)[..., None, None]
    ac = torch.as_tensor(astig_c_a, dtype=torch.float64)[..., None, None]
    as_ = torch.as_tensor(astig_s_a, dtype=torch.float64)[..., None, None]
    ph = torch.as_tensor(phase_rad, dtype=torch.float64)[..., None, None]
    offs = (p.offsets_a if tile_offsets_a is None else tile_offsets_a)[:, None]
    dfk = df + offs + 0.5 * (ac * torch.cos(2 * p.theta) + as_ * torch.sin(2 * p.theta))
    k2 = p.k**2
    chi = math.pi * p.wavelength_a * dfk * k2 - 0.5 * math.pi * p.cs_a * p.wavelength_a**3 * k2**2
    return torch.sin(chi + p.phase0_rad + ph) ** 2


def _residual_loss(p: _Problem, c2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable projection: for CTF² ``c2`` (..., T, P) solve B, E (shared over tiles) by weighted least squares;
    returns (weighted RSS (...,), coefficients (..., 2m))."""
    b = p.basis                                                   # (P, m)
    g = torch.cat([b.expand(c2.shape + (b.shape[-1],)), b * c2[..., None]], dim=-1)  # (..., T, P, 2m)
    w = p.weight
    gw = g * w[:, None]
    gram = torch.einsum("...tpi,...tpj->...ij", gw, g)
    rhs = torch.einsum("...tpi,tp->...i", gw, p.data)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype) * 1e-10 * gram.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None,
                                                                                                         None]
    coef = torch.linalg.solve(gram + eye, rhs)
    fit = torch.einsum("...tpi,...i->...tp", g, coef)
    return ((p.data - fit) ** 2 * w).sum((-2, -1)), coef


def _total_ss(p: _Problem) -> torch.Tensor:
    """Weighted RSS of the background-only model (B alone): the baseline the CTF term must beat."""
    b = p.basis
    g = b.expand(p.data.shape + (b.shape[-1],))
    w = p.weight
    gram = torch.einsum("tpi,tpj->ij", g * w[:, None], g)
    coef = torch.linalg.solve(gram, torch.einsum("tpi,tp->i", g * w[:, None], p.data))
    return ((p.data - g @ coef) ** 2 * w).sum()


# ---------------------------------------------------------------------------------------------- search
def _problem(spectra: torch.Tensor, offsets_a: torch.Tensor, tile_px: int, pixel_size_a: float, band_a,
             voltage_kv: float, cs_mm: float, amplitude_contrast: float) -> _Problem:
    k, theta = _spectrum_geometry(tile_px, pixel_size_a)
    lo, hi = 1.0 / band_a[0], 1.0 / band_a[1]
    inside = (k >= lo) & (k <= hi)
    inside[tile_px // 2 + 1:, 0] = False  # the kx = 0 column's negative half repeats the positive half
    kk, th = k[inside], theta[inside]
    data = spectra[:, inside]
    weight = 1.0 / _smooth_profile(kk, data) ** 2
    return _Problem(k=kk, theta=th, data=data, weight=weight, basis=_basis(kk, lo, hi), offsets_a=offsets_a,
                    wavelength_a=wavelength_a(voltage_kv), cs_a=cs_mm * 1e7,
                    phase0_rad=math.asin(min(max(amplitude_contrast, 0.0), 0.999)))


def _search_defocus(p: _Problem, range_a: tuple[float, float]) -> tuple[float, float, float]:
    """Best mean defocus on a log grid against the rotationally averaged spectrum (astigmatism ignored), with the
    best other one and its Δχ² (:func:`_runner_up`)."""
    edges = torch.linspace(float(p.k.min()), float(p.k.max()) + 1e-12, 257, dtype=torch.float64)
    idx = torch.clamp(torch.bucketize(p.k, edges) - 1, 0, 255)
    counts = torch.zeros(256, dtype=torch.float64).index_add_(0, idx, torch.ones_like(p.k))
    keep = counts > 0
    k1 = (torch.zeros(256, dtype=torch.float64).index_add_(0, idx, p.k) / counts.clamp_min(1))[keep]
    avg = torch.zeros(p.data.shape[0], 256, dtype=torch.float64).index_add_(1, idx, p.data)
    d1 = (avg / counts.clamp_min(1))[:, keep].mean(0, keepdim=True)
    lo, hi = float(p.k.min()), float(p.k.max())
    p1 = _Problem(k=k1, theta=torch.zeros_like(k1), data=d1, weight=1.0 / _smooth_profile(k1, d1) ** 2,
                  basis=_basis(k1, lo, hi), offsets_a=torch.zeros(1, dtype=torch.float64),
                  wavelength_a=p.wavelength_a, cs_a=p.cs_a, phase0_rad=p.phase0_rad)
    grid = torch.logspace(math.log10(range_a[0]), math.log10(range_a[1]), GRID_DEFOCI, dtype=torch.float64)
    zeros = torch.zeros_like(grid)
    loss, _ = _residual_loss(p1, ctf_squared(p1, grid, zeros, zeros, zeros))
    best = int(torch.argmin(loss))
    other_a, margin = _runner_up(grid, loss, best, dof=k1.numel() - 2 * p1.basis.shape[-1] - 1,
                                 ring_slip_a=1.0 / (2 * p.wavelength_a * hi * hi))
    # golden-section refinement between the neighbours
    a, b = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, GRID_DEFOCI - 1)])
    f = lambda d: float(_residual_loss(p1, ctf_squared(p1, torch.tensor(d), 0.0, 0.0, 0.0))[0])  # noqa: E731
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(30):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return 0.5 * (a + b), other_a, margin


def _runner_up(grid: torch.Tensor, loss: torch.Tensor, best: int, dof: int, ring_slip_a: float) -> tuple[float, float]:
    """The best other defocus of the grid search and how much worse it fits: (defocus (Å), Δχ²), the loss difference
    in units of the best fit's residual variance per degree of freedom. Other means a local minimum farther than
    ``ring_slip_a`` (the defocus change that moves the band's last ring by half a ring) from the best, or else the
    lowest loss that far away."""
    far = (grid - grid[best]).abs() > ring_slip_a
    inner = torch.zeros_like(far)
    inner[1:-1] = (loss[1:-1] < loss[:-2]) & (loss[1:-1] < loss[2:])
    pick = far & inner if bool((far & inner).any()) else far
    if not bool(pick.any()):
        return float("nan"), float("inf")
    masked = torch.where(pick, loss, torch.full_like(loss, float("inf")))
    j = int(torch.argmin(masked))
    sigma2 = float(loss[best]) / max(dof, 1)
    return float(grid[j]), float(loss[j] - loss[best]) / max(sigma2, 1e-300)


def _search_astigmatism(p: _Problem, defocus_a: float, max_astig_a: float) -> tuple[float, float, float]:
    """Best (defocus, a_c, a_s) over a grid of astigmatism (and a small defocus neighbourhood)."""
    a = torch.linspace(-max_astig_a, max_astig_a, ASTIG_GRID, dtype=torch.float64)
    dfs = defocus_a * torch.tensor([0.98, 0.99, 1.0, 1.01, 1.02], dtype=torch.float64)
    D, AC, AS = torch.meshgrid(dfs, a, a, indexing="ij")
    D, AC, AS = D.reshape(-1), AC.reshape(-1), AS.reshape(-1)
    # within the search limit, and V = D − |a|/2 > 0: a lens underfocused along every direction
    ok = (max_astig_a**2 * 1.0001 >= AC**2 + AS**2) & (AC**2 + AS**2 < (1.98 * D) ** 2)
    D, AC, AS = D[ok], AC[ok], AS[ok]
    losses = []
    for chunk in torch.split(torch.arange(D.numel()), 16):
        losses.append(_residual_loss(p, ctf_squared(p, D[chunk], AC[chunk], AS[chunk], torch.zeros(len(chunk))))[0])
    i = int(torch.argmin(torch.cat(losses)))
    return float(D[i]), float(AC[i]), float(AS[i])


def _refine(p: _Problem, start: tuple[float, float, float, float], fit_phase: bool, steps: int = 60):
    """L-BFGS on (defocus, a_c, a_s[, phase]), scaled to O(1)."""
    scale = torch.tensor([1e3, 1e3, 1e3, 0.1], dtype=torch.float64)
    x = (torch.tensor(start, dtype=torch.float64) / scale).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-14)
    base = float(_total_ss(p))

    def closure():
        opt.zero_grad()
        v = x * scale
        ph = v[3] if fit_phase else v[3].detach()
        loss = _residual_loss(p, ctf_squared(p, v[0], v[1], v[2], ph))[0] / base
        loss.backward()
        return loss

    opt.step(closure)
    out = (x.detach() * scale).tolist()
    if not all(map(math.isfinite, out)) or math.hypot(out[1], out[2]) >= 1.98 * out[0]:
        return list(start)  # the refinement ran to V ≤ 0 (no ring left along one axis): keep the grid's point
    return out


def _to_relion(defocus_a: float, ac: float, as_: float) -> tuple[float, float, float]:
    """(U, V, angle°) with U ≥ V, angle in (−90, 90]."""
    astig = math.hypot(ac, as_)
    angle = 0.5 * math.degrees(math.atan2(as_, ac))
    return defocus_a + 0.5 * astig, defocus_a - 0.5 * astig, angle


# ---------------------------------------------------------------------------------------------- resolution
def equiphase_profile(p: _Problem, params, coef, n_bins: int | None = None):
    """Data and model averaged over pixels of equal phase (astigmatism undone), background subtracted:
    (k_eq (Å⁻¹), data − B, E·CTF², χ) per bin."""
    n_bins = n_bins or EQUIPHASE_BINS
    df, ac, as_, ph = params
    k2 = p.k**2
    dfk = df + 0.5 * (ac * torch.cos(2 * p.theta) + as_ * torch.sin(2 * p.theta))
    # the isotropic k with the same defocus phase: πλ df k_eq² = πλ dfk k² (Cs term small within the band)
    k_eq = torch.sqrt(k2 * (dfk / df).clamp_min(0))
    m = p.basis.shape[-1]
    c2 = ctf_squared(p, df, ac, as_, ph)[0]
    data = p.data.mean(0)
    bgr = p.basis @ coef[:m]
    env = p.basis @ coef[m:]
    edges = torch.linspace(float(k_eq.min()), float(k_eq.max()) + 1e-12, n_bins + 1, dtype=torch.float64)
    idx = torch.clamp(torch.bucketize(k_eq, edges) - 1, 0, n_bins - 1)
    cnt = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(k_eq)).clamp_min(1)
    mean = lambda v: torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, v) / cnt  # noqa: E731
    kb = mean(k_eq)
    chi = math.pi * p.wavelength_a * df * kb**2 - 0.5 * math.pi * p.cs_a * p.wavelength_a**3 * kb**4
    return kb, mean(data - bgr), mean(env * c2), chi


def fit_resolution_a(kb, data, model, chi, threshold: float = FIT_CORRELATION,
                     significance: float = FIT_SIGNIFICANCE) -> tuple[float, np.ndarray]:
    """The resolution up to which data and model correlate in a sliding window of ±π in χ (two rings: sin² has
    period π) at least ``threshold`` and at least ``significance`` / √(n − 2), n the window's bins: the spread of
    the correlation of independent noise with a fixed pattern. Far out, where the rings crowd, a window holds few
    bins, and noise alone would pass a fixed threshold (pure Poisson noise, 1024² px: 3 of 6 seeds reported 14–22
    Å with the threshold alone, none with both). Returns (Å, the local correlation per bin)."""
    win = (chi[:, None] - chi[None, :]).abs() <= math.pi
    w = win.double()
    n = w.sum(1)
    threshold = torch.clamp(significance / torch.sqrt((n - 2).clamp_min(1)), min=threshold)
    md = (w @ data) / n
    mm = (w @ model) / n
    dd = data[None, :] - md[:, None]
    mo = model[None, :] - mm[:, None]
    cov = (w * dd * mo).sum(1)
    corr = cov / torch.sqrt((w * dd**2).sum(1) * (w * mo**2).sum(1)).clamp_min(1e-300)
    below = torch.nonzero(corr < threshold)
    last = int(below[0]) - 1 if below.numel() else kb.numel() - 1
    last = max(last, 0)
    return float(1.0 / kb[last]), corr.numpy()


# ---------------------------------------------------------------------------------------------- entry points
def _tile_offsets(corners, tile_px: int, shape, pixel_size_a: float, tilt_deg: float,
                  tilt_axis_deg: float) -> torch.Tensor:
    """Each tile's signed distance from the tilt axis (Å) × tan(tilt): the defocus change at its centre for
    gradient sign +1. The axis runs along (−sin α, cos α) (α = 0: along y), as in `core/rotations`."""
    if tilt_deg == 0:
        return torch.zeros(len(corners), dtype=torch.float64)
    c = torch.tensor(corners, dtype=torch.float64) + (tile_px - 1) / 2
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    a = math.radians(tilt_axis_deg)
    d = ((c[:, 1] - cx) * math.cos(a) + (c[:, 0] - cy) * math.sin(a)) * pixel_size_a
    return d * math.tan(math.radians(tilt_deg))


#: The pixel sizes (Å) the CTF fit takes, narrower than the simulator's at the low end. fit-ctf and calibrate check
#: --pixel-size (and a header's pixel size) against this range before fitting, so their message is the one users see.
PIXEL_SIZE_RANGE_A = (0.05, 100.0)


def _check_inputs(image, pixel_size_a, voltage_kv, cs_mm, amplitude_contrast, defocus_range_um):
    if not torch.isfinite(image).all():
        raise ArgumentError("image", ": contains NaN or infinite values")
    for name, v, lo, hi in (("pixel_size_a", pixel_size_a, *PIXEL_SIZE_RANGE_A),
                            ("voltage_kv", voltage_kv, 20.0, 3000.0), ("cs_mm", cs_mm, 0.0, 20.0),
                            ("amplitude_contrast", amplitude_contrast, 0.0, 0.5)):
        if not (lo <= v <= hi):
            raise ArgumentError(name, f" {v}: outside {lo}–{hi}")
    lo, hi = defocus_range_um
    if not (0.01 <= lo < hi <= 100):
        raise ArgumentError("defocus_range_um", f" {lo}–{hi}: give 0.01 ≤ low < high ≤ 100 µm")


#: the tile side (px) of a micrograph's averaged spectrum unless one is given (smaller images: their largest power of
#: two); tiles below MIN_TILE_PX hold too few frequencies between Thon rings
DEFAULT_TILE_PX = 512
MIN_TILE_PX = 32


def fit_ctf(image, pixel_size_a: float, *, tile_px: int | None = None, tilt_deg: float = 0.0,
            tilt_axis_deg: float = 0.0, **options) -> CTFFit:
    """Fit defocus U/V, astigmatism angle (and optionally a phase shift) to one micrograph, from the mean
    periodogram of half-overlapping ``tile_px`` tiles (default DEFAULT_TILE_PX, or the image's largest power of
    two when it is smaller; a tile given larger than the image is an error, not a silent single tile).

    ``tilt_deg``/``tilt_axis_deg``: a tilted image; every tile's defocus follows the tilt plane (the sign of the
    gradient is chosen by the fit). ``options``: those of :func:`fit_ctf_tiles`.
    """
    image = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image)
    if image.ndim != 2:
        raise ArgumentError("image", f": expected one 2-D micrograph, got shape {tuple(image.shape)}")
    if tile_px is None:
        tile_px = min(DEFAULT_TILE_PX, 1 << int(math.log2(min(image.shape))))
    elif tile_px < MIN_TILE_PX:
        raise ArgumentError("tile_px", f" {tile_px}: tiles under {MIN_TILE_PX} px hold too few frequencies for the "
                                       f"Thon rings; give at least {MIN_TILE_PX} (default {DEFAULT_TILE_PX})")
    corners = tile_corners(tuple(image.shape), tile_px)
    tiles = torch.stack([image[y:y + tile_px, x:x + tile_px] for y, x in corners])
    offsets = _tile_offsets(corners, tile_px, tuple(image.shape), pixel_size_a, tilt_deg, tilt_axis_deg)
    fit = fit_ctf_tiles(tiles, pixel_size_a, offsets_a=offsets, **options)
    return replace(fit, tilt_deg=tilt_deg, tilt_axis_deg=tilt_axis_deg)


def fit_ctf_tiles(tiles, pixel_size_a: float, *, offsets_a=None, voltage_kv: float = 300.0, cs_mm: float = 2.7,
                  amplitude_contrast: float = 0.07, fit_phase_shift: bool = False,
                  band_a: tuple[float, float] | None = None, defocus_range_um: tuple[float, float] = (0.2, 8.0),
                  max_astigmatism_um: float = 0.5, bootstrap: int = 8, seed: int = 0) -> CTFFit:
    """Fit one CTF to (T, n, n) image tiles (crops of one micrograph, or particle images of one tilt).

    ``offsets_a``: per tile, the defocus change for a gradient of sign +1 (Å; tilted images), else None.
    Uncertainties: standard deviations over refits of ``bootstrap`` resamples of the tiles.
    """
    tiles = torch.as_tensor(np.asarray(tiles) if not torch.is_tensor(tiles) else tiles)
    if tiles.ndim != 3 or tiles.shape[-1] != tiles.shape[-2] or tiles.shape[-1] < MIN_TILE_PX:
        raise ArgumentError("tiles", f": expected square tiles (T, n, n) with n ≥ {MIN_TILE_PX}, got "
                                     f"{tuple(tiles.shape)}")
    _check_inputs(tiles, pixel_size_a, voltage_kv, cs_mm, amplitude_contrast, defocus_range_um)
    tile_px = int(tiles.shape[-1])
    band_a = tuple(band_a) if band_a else default_band_a(pixel_size_a)
    if not (band_a[0] > band_a[1] >= 2 * pixel_size_a * 0.999):
        raise ArgumentError("band_a", f" {band_a}: give (low, high) Å with low > high ≥ 2 × pixel size")
    spectra = detrended_periodograms(tiles)
    offsets = torch.zeros(len(tiles), dtype=torch.float64) if offsets_a is None else \
        torch.as_tensor(offsets_a, dtype=torch.float64)
    tilted = bool(offsets.abs().max() > 0)
    problem = _problem(spectra, offsets, tile_px, pixel_size_a, band_a, voltage_kv, cs_mm, amplitude_contrast)
    range_a = (defocus_range_um[0] * 1e4, defocus_range_um[1] * 1e4)

    best = None
    for sign in ((1, -1, 0) if tilted else (0,)):  # 0 too: a specimen whose depth does not follow the tilt plane
        p = _replace(problem, offsets_a=offsets * sign)
        if not tilted:  # one averaged spectrum: the same fit, T times cheaper (tilted: every tile, so the three
            p = _replace(p, data=p.data.mean(0, keepdim=True), offsets_a=offsets[:1])  # losses compare)
        averaged = _replace(p, data=p.data.mean(0, keepdim=True), offsets_a=offsets[:1] * 0)
        df0, other_a, margin = _search_defocus(averaged, range_a)
        # the grids run on the tiles' mean spectrum (the tilt blurs its rings a little; the refinement below sees
        # every tile's own defocus): a grid over every tile would cost T times more
        df1, ac1, as1 = _search_astigmatism(averaged, df0, max_astigmatism_um * 1e4)
        params = _refine(p, (df1, ac1, as1, 0.0), fit_phase_shift)
        loss, coef = _residual_loss(p, ctf_squared(p, *params))
        if best is None or float(loss) < best[0]:
            best = (float(loss), sign, p, params, coef, other_a, margin)
    loss, sign, p, params, coef, other_a, margin = best
    score = 1.0 - loss / float(_total_ss(p))
    kb, d1, m1, chi = equiphase_profile(p, params, coef)
    res_a, corr = fit_resolution_a(kb, d1, m1, chi)
    res_a = min(res_a, band_a[0])  # a strongly astigmatic fit's equiphase radii reach below the band
    sd = _bootstrap(_replace(problem, offsets_a=offsets * sign), params, fit_phase_shift, bootstrap, seed,
                    average=not tilted)
    u, v, ang = _to_relion(params[0], params[1], params[2])
    zeros = int(math.floor((chi.max() + p.phase0_rad + params[3]) / math.pi) -
                math.floor((chi.min() + p.phase0_rad + params[3]) / math.pi))
    return CTFFit(rings_in_band=zeros, defocus_u_a=u, defocus_v_a=v, defocus_angle_deg=ang,
                  phase_shift_deg=math.degrees(params[3]) if fit_phase_shift else 0.0,
                  amplitude_contrast=amplitude_contrast, voltage_kv=voltage_kv, cs_mm=cs_mm,
                  pixel_size_a=pixel_size_a, fit_band_a=band_a, fit_resolution_a=res_a, score=score,
                  gradient_sign=sign, defocus_sd_a=sd[0] if sd else float("nan"),
                  astigmatism_sd_a=sd[1] if sd else float("nan"), angle_sd_deg=sd[2] if sd else float("nan"),
                  n_tiles=len(tiles), defocus_runner_up_a=other_a, defocus_margin_chi2=margin,
                  extras={"profile_k_per_a": kb.numpy(), "profile_data": d1.numpy(), "profile_model": m1.numpy(),
                          "profile_correlation": corr, "problem": p, "params": params, "coef": coef,
                          "tile_px": tile_px, "mean_spectrum": spectra.mean(0)})


def model_spectrum(fit: CTFFit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(background B, envelope E, CTF²) of the fit on the full rfft half plane of its tiles (zero-offset tiles;
    B and E held constant outside the band), for figures."""
    p: _Problem = fit.extras["problem"]
    n = fit.extras["tile_px"]
    k, theta = _spectrum_geometry(n, fit.pixel_size_a)
    lo, hi = 1.0 / fit.fit_band_a[0], 1.0 / fit.fit_band_a[1]
    q = _replace(p, k=k.reshape(-1), theta=theta.reshape(-1), offsets_a=torch.zeros(1, dtype=torch.float64))
    c2 = ctf_squared(q, *fit.extras["params"])[0].reshape(k.shape)
    b = _basis(k.clamp(lo, hi).reshape(-1), lo, hi)
    m = b.shape[-1]
    coef = fit.extras["coef"]
    return (b @ coef[:m]).reshape(k.shape), (b @ coef[m:]).reshape(k.shape), c2


def _replace(p: _Problem, **changes) -> _Problem:
    d = {f: getattr(p, f) for f in p.__dataclass_fields__}
    d.update(changes)
    return _Problem(**d)


def _bootstrap(p: _Problem, params, fit_phase: bool, n: int, seed: int, average: bool):
    """Standard deviations of (mean defocus, astigmatism, angle) over refits of tile resamples."""
    if n < 2 or p.data.shape[0] < 2:
        return None
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        pick = torch.randint(0, p.data.shape[0], (p.data.shape[0],), generator=g)
        q = _replace(p, data=p.data[pick], offsets_a=p.offsets_a[pick])
        if average:
            q = _replace(q, data=q.data.mean(0, keepdim=True), offsets_a=q.offsets_a[:1])
        r = _refine(q, tuple(params), fit_phase, steps=25)
        u, v, a = _to_relion(*r[:3])
        out.append((0.5 * (u + v), u - v, a))
    arr = np.asarray(out)
    ang = np.deg2rad(arr[:, 2]) * 2  # angles are axial (period 180°)
    ang_sd = math.degrees(math.sqrt(max(-2 * math.log(max(np.hypot(np.cos(ang).mean(), np.sin(ang).mean()),
                                                               1e-12)), 0.0))) / 2
    return float(arr[:, 0].std(ddof=1)), float(arr[:, 1].std(ddof=1)), ang_sd
