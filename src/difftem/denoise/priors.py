r"""Image priors for the denoising objective, scaled so that one weight β means the same at any dose.

The data terms of :mod:`difftem.denoise.algorithm` are all written per pixel in the units of a
Poisson negative log-likelihood of ``n`` observations of mean ``m`` counts per pixel. In the
Gaussian limit that term is :math:`\tfrac{n}{2m}(\mu - \bar c)^2`: white noise of standard deviation
:math:`\sigma = \sqrt{m/n}` counts. The priors are scaled against it:

``tv``
    Total variation :math:`\beta\,\sqrt{n/m}\;\mathrm{mean}_x|\nabla\mu|`. For the Gaussian problem
    this is the Rudin–Osher–Fatemi model with the regularisation parameter :math:`\beta\sigma`
    (in counts), the scaling with the noise level that the ROF literature finds near optimal, so
    the best β moves little with the dose and the number of observations.
``spectral``
    A Gaussian prior whose power spectrum :math:`S(k)` is estimated from the data with the noise
    power removed (the noise power of the deconvolved counts is known exactly from the detector
    model: white, :math:`N\,m/n` per frequency in unnormalised DFT units). At β = 1 the minimiser of
    the Gaussian data term plus this prior is the Wiener filter :math:`S/(S + N_c)`; β scales the
    assumed noise power.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.fft import fft2, rfft2

PRIORS = ("none", "tv", "spectral")


def total_variation(image: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean isotropic total variation of ``(..., H, W)`` images, ``sqrt(|∇u|² + eps²)`` per pixel.

    Forward differences with a replicated last row/column (no wrap-around: the field is not
    periodic); ``eps`` (same units as the image) keeps the gradient finite on flat regions.
    """
    dx = torch.diff(image, dim=-1, append=image[..., -1:])
    dy = torch.diff(image, dim=-2, append=image[..., -1:, :])
    return torch.sqrt(dx**2 + dy**2 + eps**2).mean()


def tv_weight(beta: float, n_observations: float, mean_counts: float) -> float:
    """TV weight β·sqrt(n/m) against a per-pixel Poisson NLL of ``n`` observations of ``m`` counts."""
    return beta * math.sqrt(n_observations / mean_counts)


def tv_eps(mean_counts: float, n_observations: float) -> float:
    """Smoothing of |∇u| at 1 % of the noise σ = sqrt(m/n): well below any edge worth keeping."""
    return 0.01 * math.sqrt(mean_counts / n_observations)


def _smooth_periodic(power: torch.Tensor, sigma_bins: float) -> torch.Tensor:
    """Gaussian smoothing (σ in frequency bins) of a full (H, W) spectrum, periodic in both axes."""
    r = max(1, int(math.ceil(3 * sigma_bins)))
    taps = torch.arange(-r, r + 1, dtype=power.dtype, device=power.device)
    kernel = torch.exp(-0.5 * (taps / sigma_bins) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(power[None, None], (r, r, r, r), mode="circular")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[0, 0]


class SpectralPrior:
    r"""Gaussian prior with a data-estimated power spectrum (empirical Bayes, Wiener at β = 1).

    Parameters
    ----------
    counts_mean : torch.Tensor
        (H, W) mean of the deconvolved counts :math:`\bar c` of the observations.
    n_observations : float
        Number of observations averaged in ``counts_mean`` (sets the noise power N·m/n).
    smooth_bins : float
        Gaussian smoothing of the periodogram, in frequency bins (it trades the estimate's variance
        against its resolution; the signal's spectrum may be anisotropic, e.g. layer lines of a
        helix, so it is smoothed locally rather than radially averaged).
    floor : float
        Smallest signal power kept, as a fraction of the noise power (frequencies at or below it
        are suppressed almost completely).
    """

    def __init__(self, counts_mean: torch.Tensor, n_observations: float, smooth_bins: float = 2.0,
                 floor: float = 1e-3) -> None:
        h, w = counts_mean.shape[-2:]
        self.shape = (h, w)
        self.n_pixels = h * w
        mean_counts = float(counts_mean.mean())
        spectrum = fft2(counts_mean.to(torch.float64))  # full spectrum: smoothing needs both halves
        noise_power = self.n_pixels * max(mean_counts, 1e-12) / n_observations
        # The smoothed periodogram of pure noise scatters about N_c with a relative std 1/sqrt(4πσ²) (an
        # exponential variate per bin averaged over ≈ 4πσ² bins): subtract two of those stds as well, so
        # that noise-only frequencies are not mistaken for signal at low dose.
        excess = 1.0 + 2.0 / math.sqrt(4 * math.pi * smooth_bins**2)
        smoothed = _smooth_periodic(spectrum.abs() ** 2, smooth_bins)
        signal = (smoothed - excess * noise_power).clamp_min(floor * noise_power)
        inv = self.n_pixels / signal  # N/S(k); with the 1/N² of __call__ this is 1/(N·S)
        inv[0, 0] = 0.0  # the mean is left to the data
        half = inv[:, : w // 2 + 1]
        # rfft layout: columns 1 … ⌈W/2⌉−1 stand for two conjugate frequencies each
        col_weight = torch.full((w // 2 + 1,), 2.0, dtype=half.dtype, device=half.device)
        col_weight[0] = 1.0
        if w % 2 == 0:
            col_weight[-1] = 1.0
        self.weight = (half * col_weight).to(counts_mean.dtype)
        self.noise_power = noise_power
        self.signal_power = signal

    def wiener_gain(self, beta: float = 1.0) -> torch.Tensor:
        """The (H, W) full-spectrum gain S/(S + β·N_c) this prior gives with the Gaussian data term."""
        gain = self.signal_power / (self.signal_power + beta * self.noise_power)
        gain[0, 0] = 1.0
        return gain

    def __call__(self, image: torch.Tensor, beta: float) -> torch.Tensor:
        r"""Prior energy per pixel, :math:`\tfrac{\beta}{2N}\sum_k |U(k)|^2/S(k)` (k ≠ 0).

        Against the Gaussian data term :math:`\tfrac{n}{2m}\,\mathrm{mean}_x(u-\bar c)^2 =
        \tfrac{n}{2mN^2}\sum_k|U-\bar C|^2` the minimiser is :math:`U = \bar C\,S/(S + \beta N_c)`,
        :math:`N_c = N m/n`: the Wiener filter at β = 1.
        """
        spec = rfft2(image)
        energy = (spec.real**2 + spec.imag**2) * self.weight
        return 0.5 * beta * energy.sum() / self.n_pixels**2
