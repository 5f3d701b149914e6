"""The one place difftem calls torch.fft.

torch 2.13 on CPU returns a wrong normalisation for complex64 2048×2048 transforms with
≥ 2 threads whenever the transform itself applies the 1/N factor. Only unnormalised
transforms are safe there, so every transform here is called unnormalised
(``fft2(norm="backward")``, ``ifft2(norm="forward")``) and the 1/N is applied explicitly.
Tests check these helpers against numpy at every size the package uses.

Frequency grids live here too, named by their unit: ``*_per_px`` in cycles per pixel (or voxel),
``*_per_a`` in 1/Å, ``freq_index`` in DFT bins (exact integers). ``half=True`` gives the rfft layout
along the last axis (non-negative frequencies only, n//2 + 1 of them). Grids over several axes
come as one broadcastable tensor per axis, e.g. (H, 1) and (1, W) for an (H, W) image.
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


def filter2(x: torch.Tensor, kernel_over_n: torch.Tensor) -> torch.Tensor:
    """ifft2(fft2(x) · K) for a Fourier-space kernel given already divided by N = H·W (one pass fewer than
    :func:`ifft2` of the product: the kernel carries the 1/N)."""
    spectrum = torch.fft.fft2(x, norm="backward")
    in_place = (not (torch.is_grad_enabled() and (x.requires_grad or kernel_over_n.requires_grad))
                and torch.result_type(spectrum, kernel_over_n) == spectrum.dtype
                and _broadcasts_into(kernel_over_n.shape, spectrum.shape))
    # without a graph the spectrum is ours to scale in place (one field-sized allocation fewer)
    return torch.fft.ifft2(spectrum.mul_(kernel_over_n) if in_place else spectrum * kernel_over_n, norm="forward")


def _broadcasts_into(shape: torch.Size, target: torch.Size) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without growing it (torch.broadcast_shapes, without the symbolic
    shape machinery it imports on first use: 0.7 s of sympy at start-up)."""
    pairs = zip(reversed(shape), reversed(target), strict=False)
    return len(shape) <= len(target) and all(a in (1, b) for a, b in pairs)


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
    Same as :func:`freq_grid_per_a` with a float32 default.
    """
    ky, kx = freq_grid_per_a(shape, pixel_size_a, half=half, device=device, dtype=dtype)
    return ky, kx


def freq_per_px(n: int, *, half: bool = False, device=None, dtype=torch.float64) -> torch.Tensor:
    """DFT sample frequencies of an n-point axis in cycles per pixel, as ``np.fft.fftfreq(n)``
    (``half=True``: ``np.fft.rfftfreq(n)``, the n//2 + 1 non-negative ones)."""
    return (torch.fft.rfftfreq if half else torch.fft.fftfreq)(n, device=device, dtype=dtype)


def freq_per_a(n: int, pixel_size_a: float, *, half: bool = False, device=None, dtype=torch.float64) -> torch.Tensor:
    """DFT sample frequencies in 1/Å of an n-point axis sampled every ``pixel_size_a`` Å, as
    ``np.fft.fftfreq(n, d=pixel_size_a)`` (``half=True``: ``np.fft.rfftfreq``)."""
    return (torch.fft.rfftfreq if half else torch.fft.fftfreq)(n, d=pixel_size_a, device=device, dtype=dtype)


def freq_index(n: int, *, half: bool = False, device=None, dtype=torch.float64) -> torch.Tensor:
    """Signed DFT bin index k = 0, 1, …, ⌈n/2⌉−1, −⌊n/2⌋, …, −1 of an n-point axis as exact integers
    (``np.fft.fftfreq(n) * n``; ``half=True``: 0 … n//2). Also the periodic shift, in pixels, that
    each sample of a circular correlation stands for."""
    i = torch.arange(n // 2 + 1 if half else n, device=device, dtype=torch.int64)
    if not half:
        i = torch.where(i < (n + 1) // 2, i, i - n)
    return i.to(dtype)


def _grid(axes: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """1-D axes as broadcastable tensors: axis j keeps its length in dim j, size 1 elsewhere."""
    nd = len(axes)
    return tuple(a.reshape([-1 if j == i else 1 for j in range(nd)]) for i, a in enumerate(axes))


def freq_grid_per_px(shape: tuple[int, ...], *, half: bool = False, device=None,
                     dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    """Frequencies in cycles per pixel (voxel) of a 2-D (H, W) or 3-D (D, H, W) grid, one broadcastable
    tensor per axis: (H,1), (1,W) or (D,1,1), (1,H,1), (1,1,W); ``half=True``: rfft layout along the last."""
    last = len(shape) - 1
    return _grid([freq_per_px(n, half=half and i == last, device=device, dtype=dtype) for i, n in enumerate(shape)])


def freq_grid_per_a(shape: tuple[int, ...], pixel_size_a: float, *, half: bool = False, device=None,
                    dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    """As :func:`freq_grid_per_px` in 1/Å, for square pixels (cubic voxels) of ``pixel_size_a`` Å."""
    last = len(shape) - 1
    return _grid([freq_per_a(n, pixel_size_a, half=half and i == last, device=device, dtype=dtype)
                  for i, n in enumerate(shape)])


def _sum_of_squares(axes: tuple[torch.Tensor, ...]) -> torch.Tensor:
    total = axes[0] ** 2
    for a in axes[1:]:
        total = total + a**2
    return total


def radial_freq_per_px(shape: tuple[int, ...], *, half: bool = False, device=None, dtype=torch.float64) -> torch.Tensor:
    """|k| in cycles per pixel (voxel) on a 2-D or 3-D grid (``half=True``: the rfft layout), full-size."""
    return torch.sqrt(_sum_of_squares(freq_grid_per_px(shape, half=half, device=device, dtype=dtype)))


def k2_per_a2(shape: tuple[int, ...], pixel_size_a: float, *, half: bool = False, device=None,
              dtype=torch.float64) -> torch.Tensor:
    """|k|² in 1/Å² on a 2-D or 3-D grid of ``pixel_size_a`` Å samples (``half=True``: the rfft layout)."""
    return _sum_of_squares(freq_grid_per_a(shape, pixel_size_a, half=half, device=device, dtype=dtype))


GOOD_FFT_SIZE_MAX = 2**31
"""The largest size :func:`good_fft_size` is asked for: beyond it no transform could be allocated."""


def good_fft_size(n: int) -> int:
    """Smallest integer ≥ n whose prime factors are 2, 3 and 5 (fast FFT sizes).

    O(log² n): for every 3^b·5^c below the answer, the smallest power of two that lifts it to n. Sizes above
    :data:`GOOD_FFT_SIZE_MAX` (and non-finite ``n``) raise ``ValueError`` rather than search astronomically far.
    """
    try:
        m = max(int(n), 1)
    except (OverflowError, ValueError):  # inf, NaN
        raise ValueError(f"good_fft_size: size {n} is not a finite number") from None
    if m > GOOD_FFT_SIZE_MAX:
        raise ValueError(f"good_fft_size: size {m} exceeds the largest supported transform ({GOOD_FFT_SIZE_MAX})")
    best = 1 << (m - 1).bit_length()  # the smallest power of two ≥ m
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            q = -(-m // p35)  # ceil(m / p35): the power of two must reach it
            best = min(best, p35 << (q - 1).bit_length())
            p35 *= 3
        p5 *= 5
    return best


def rfft3(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised real-to-complex 3-D DFT over the last three dims (half spectrum along the last)."""
    return torch.fft.rfftn(x, dim=(-3, -2, -1), norm="backward")


def irfft3(spectrum: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`rfft3` with the 1/N factor; ``shape`` is the real (D, H, W)."""
    return torch.fft.irfftn(spectrum, s=shape, dim=(-3, -2, -1), norm="forward") / (shape[0] * shape[1] * shape[2])


def fft3(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised complex 3-D DFT over the last three dims (real input is promoted to complex)."""
    return torch.fft.fftn(x, dim=(-3, -2, -1), norm="backward")


def ifft3(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft3` with the 1/N factor over the last three dims."""
    n = spectrum.shape[-1] * spectrum.shape[-2] * spectrum.shape[-3]
    return torch.fft.ifftn(spectrum, dim=(-3, -2, -1), norm="forward") / n


def rfft(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised real-to-complex 1-D DFT over the last dim (n//2 + 1 outputs)."""
    return torch.fft.rfft(x, norm="backward")


def irfft(spectrum: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`rfft` with the 1/n factor; ``n`` is the real length."""
    return torch.fft.irfft(spectrum, n=n, norm="forward") / n


def fftshift(x: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Move the zero frequency to the centre (index n//2) along ``dim`` (default: every dim), as ``np.fft.fftshift``."""
    return torch.fft.fftshift(x, dim=dim)
