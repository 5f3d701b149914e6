"""The one place difftem calls torch.fft.

torch 2.13 on CPU returns a wrong normalisation for complex64 2048×2048 transforms with
≥ 2 threads whenever the transform itself applies the 1/N factor. Only unnormalised
transforms are safe there, so every transform here is called unnormalised
(``fft2(norm="backward")``, ``ifft2(norm="forward")``) and the 1/N is applied explicitly.
Tests check these helpers against numpy at every size the package uses.
"""

from __future__ import annotations

import torch


def fft2(x: torch.Tensor) -> torch.Tensor:
    """Forward 2-D DFT over the last two dims, unnormalised: X[k] = Σ x[n] e^{-2πi kn/N}."""
    return torch.fft.fft2(x, norm="backward")


def ifft2(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse 2-D DFT over the last two dims with the 1/N factor: x[n] = (1/N) Σ X[k] e^{+2πi kn/N}."""
    n = spectrum.shape[-1] * spectrum.shape[-2]
    return torch.fft.ifft2(spectrum, norm="forward") / n


def rfft2(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised real-to-complex 2-D DFT over the last two dims (half spectrum along the last)."""
    return torch.fft.rfft2(x, norm="backward")


def irfft2(spectrum: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`rfft2` with the 1/N factor; ``shape`` is the real (H, W)."""
    return torch.fft.irfft2(spectrum, s=shape, norm="forward") / (shape[0] * shape[1])


def fftfreq_2d(shape: tuple[int, int], pixel_size_a: float, *, half: bool = False, device=None,
               dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequencies (1/Å) of a (H, W) grid as broadcastable (H,1) and (1,W) tensors.

    ``half=True`` gives the rfft layout along W (non-negative frequencies only).
    """
    ny, nx = shape
    ky = torch.fft.fftfreq(ny, d=pixel_size_a, device=device, dtype=dtype)
    kx = (torch.fft.rfftfreq if half else torch.fft.fftfreq)(nx, d=pixel_size_a, device=device, dtype=dtype)
    return ky[:, None], kx[None, :]


def good_fft_size(n: int) -> int:
    """Smallest integer ≥ n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def rfft3(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised real-to-complex 3-D DFT over the last three dims (half spectrum along the last)."""
    return torch.fft.rfftn(x, dim=(-3, -2, -1), norm="backward")


def irfft3(spectrum: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`rfft3` with the 1/N factor; ``shape`` is the real (D, H, W)."""
    return torch.fft.irfftn(spectrum, s=shape, dim=(-3, -2, -1), norm="forward") / (shape[0] * shape[1] * shape[2])
