"""Baselines for the denoising study: averaging, Gaussian low-pass, a Noise2Noise U-Net, Topaz-Denoise (P).

Each takes the observations ``(n, H, W)`` (or a sequence of (H, W) images) in detector units and
returns one (H, W) estimate of the noise-free detected image (after the MTF) in the same units.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.fft import freq_grid_per_px, irfft2, rfft2
from .algorithm import as_observation_stack

__all__ = ["BASELINES", "N2NUNet", "average", "gaussian_lowpass", "noise2noise", "topaz_pretrained"]

BASELINES = ("average", "lowpass", "n2n", "topaz")


def average(observations) -> torch.Tensor:
    """Mean of the observations (the maximum-likelihood estimate under Poisson noise and a known MTF)."""
    return as_observation_stack(observations).mean(0)


def _gaussian_filter(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Periodic Gaussian blur (σ in pixels) of (..., H, W) images in Fourier space."""
    if sigma_px <= 0:
        return image
    shape = tuple(image.shape[-2:])
    fy, fx = freq_grid_per_px(shape, half=True, device=image.device, dtype=image.dtype)
    transfer = torch.exp(-2 * math.pi**2 * sigma_px**2 * (fy**2 + fx**2))
    return irfft2(rfft2(image) * transfer, shape)


def gaussian_lowpass(observations, sigma_px: float | str = "auto",
                     candidates: Sequence[float] = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)) -> torch.Tensor:
    """Gaussian low-pass of the mean observation.

    ``sigma_px="auto"`` picks σ by two-fold hold-out (filter the mean of the even observations, score
    the squared error against the odd ones and vice versa) when there are ≥ 2 observations, else
    uses 1.5 px.
    """
    obs = as_observation_stack(observations)
    if sigma_px == "auto":
        if obs.shape[0] < 2:
            sigma_px = 1.5
        else:
            a, b = obs[0::2], obs[1::2]
            scores = [float(((_gaussian_filter(a.mean(0), s) - b) ** 2).mean()
                            + ((_gaussian_filter(b.mean(0), s) - a) ** 2).mean()) for s in candidates]
            sigma_px = float(candidates[min(range(len(scores)), key=scores.__getitem__)])
    return _gaussian_filter(obs.mean(0), float(sigma_px))


class N2NUNet(nn.Module):
    """A small 3-level U-Net (≈0.47 M parameters at ``width=32``) for Noise2Noise training."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1))

        w = width
        self.enc1, self.enc2, self.enc3 = block(1, w), block(w, 2 * w), block(2 * w, 2 * w)
        self.dec2, self.dec1 = block(4 * w, 2 * w), block(3 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4  # two poolings need sizes divisible by 4
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        e1 = self.enc1(xp)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        return (xp + self.out(d1))[..., :h, :w]  # residual: the net predicts the correction


def noise2noise(observations, *, steps: int = 200, crop_px: int = 64, batch: int = 8, width: int = 32,
                lr: float = 1e-3, seed: int = 0, progress: Callable[[int, int], None] | None = None
                ) -> tuple[torch.Tensor, dict]:
    """Train a small U-Net on pairs of independent observations (input one, target another) and return
    the mean of its predictions over all observations, with a dict of the training record.

    Noise2Noise (Lehtinen et al. 2018): with zero-mean noise independent between input and target,
    the L2 minimiser is the clean image. Needs ≥ 2 observations. Training is short by default
    (random ``crop_px`` crops, ``steps`` Adam steps); images are standardised by the observations'
    mean and std and scaled back.
    """
    obs = as_observation_stack(observations)
    n, h, w = obs.shape
    if n < 2:
        raise ConfigError("noise2noise: needs ≥ 2 independent observations of the same field (got 1)")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # layer initialisation draws from the global generator
    net = N2NUNet(width).to(obs.device)
    torch.random.set_rng_state(torch_state)
    mean, std = float(obs.mean()), float(obs.std().clamp_min(1e-12))
    z = ((obs - mean) / std).to(torch.float32)
    c = min(crop_px, h, w)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history = []
    for step in range(steps):
        i = torch.randint(n, (batch,), generator=gen)
        j = (i + torch.randint(1, n, (batch,), generator=gen)) % n  # a different observation: independent noise
        y0 = torch.randint(h - c + 1, (batch,), generator=gen)
        x0 = torch.randint(w - c + 1, (batch,), generator=gen)
        rows = (y0[:, None] + torch.arange(c)[None, :])[:, :, None]
        cols = (x0[:, None] + torch.arange(c)[None, :])[:, None, :]
        src = z[i[:, None, None], rows, cols][:, None]
        dst = z[j[:, None, None], rows, cols][:, None]
        k = int(torch.randint(4, (1,), generator=gen))  # random 90° rotations: the noise is isotropic
        src, dst = torch.rot90(src, k, (-2, -1)), torch.rot90(dst, k, (-2, -1))
        loss = F.mse_loss(net(src), dst)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps)
    net.eval()
    with torch.no_grad():
        pred = torch.stack([net(z[k][None, None])[0, 0] for k in range(n)]).mean(0)
    record = {"steps": steps, "crop_px": c, "batch": batch, "width": width, "lr": lr, "loss_history": history,
              "parameters": sum(p.numel() for p in net.parameters()), "seconds": time.perf_counter() - t0}
    return (pred * std + mean).to(obs.dtype), record


def topaz_pretrained(observations, model: str = "unet") -> torch.Tensor:
    """Topaz-Denoise pretrained model ("Topaz P") applied to each observation, outputs averaged."""
    from .topaz_model import topaz_denoise

    obs = as_observation_stack(observations)
    return topaz_denoise(obs, model).mean(0).to(obs.dtype)
