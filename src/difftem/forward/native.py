"""difftem's compiled CPU kernels (``_native.c``, built at install when a C compiler is there) and when to use them.

Stages that torch runs as many passes over memory are one loop in C: the Fourier slices of a projector's copies
(:func:`spline_slices`, for :meth:`FourierProjector.project`), Poisson draws (:func:`poisson`, for the detector's
shot noise), the gridding of atoms as Gaussians (:func:`spread_gaussians`, for the maps and projectors) and the
per-atom factors of the atoms' exact structure factors (:func:`axis_factors`, for the atom slices). They
serve the CPU forward pass only: on a GPU, and wherever a gradient must flow, the torch paths run. Without the build
(no compiler at install), or with ``DIFFTEM_NATIVE=0`` in the environment (to compare both paths), every caller keeps
its torch path.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:
    from . import _native
except ImportError:  # installed without a C compiler
    _native = None


def available() -> bool:
    return _native is not None and os.environ.get("DIFFTEM_NATIVE", "1") != "0"


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may stand in for torch on these tensors: built, on the CPU, and no gradient asked for."""
    if not available():
        return False
    grad = torch.is_grad_enabled()
    return all(t.device.type == "cpu" and not (grad and t.requires_grad) for t in tensors)


def padded_channels_last(coeffs: torch.Tensor) -> np.ndarray:
    """A projector's (C, N, N, N) coefficients as the (N + 6)³ × C float32 array :func:`spline_slices` reads: channel
    last, with the spline's reach (3 voxels) of zeros on every side, so that no tap needs a bounds check."""
    vol = torch.nn.functional.pad(coeffs.detach().float(), (3, 3, 3, 3, 3, 3))
    return np.ascontiguousarray(vol.permute(1, 2, 3, 0).numpy())


def spline_slices(padded: np.ndarray, n: int, k_per_a: torch.Tensor, rotations: torch.Tensor, offsets_a: torch.Tensor,
                  weights: torch.Tensor, scale: float, centre: float) -> torch.Tensor:
    """(B, C/2, K) complex64: the cubic B-spline of the coefficients at each copy's rotated frequencies, times its
    phase ramp exp(−2πi k·offset) and ``weights`` — the same as sampling with
    :func:`~difftem.forward.particle_map.cubic_bspline_sample` and multiplying in torch, in one pass.

    padded: :func:`padded_channels_last`; k_per_a (K, 2) (kx, ky); rotations (B, 3, 3) (rows 0 and 1 used); offsets_a
    (B, 2); weights (K,); index = (kx R₀ + ky R₁)·scale + centre in voxels (x, y, z)."""
    c = padded.shape[-1]
    nb, nk = rotations.shape[0], k_per_a.shape[0]
    out = torch.empty((nb, c // 2, nk), dtype=torch.complex64)
    _native.spline_slices(padded, n, c, _f64(k_per_a), _f64(rotations[:, :2, :].reshape(nb, 6)), _f64(offsets_a),
                          weights.detach().to(torch.float32).contiguous().numpy(),
                          torch.view_as_real(out).numpy(), nk, nb, float(scale), float(centre))
    return out


def poisson(rate: torch.Tensor, generator: torch.Generator | None = None, tables: bool = True) -> torch.Tensor:
    """Poisson draws of mean ``rate`` (a rate ≤ 0 draws 0), like ``torch.poisson``; the kernel's own generator
    (xoshiro256**) is seeded from ``generator`` (torch's default one when None), so the same generator state gives the
    same image. ``tables``: draw the band of rates most pixels lie in as the sum of a count from a table of the rate
    just below (tabulated once per call) and one of the small rest (the same distribution, ~4× faster for a
    micrograph); False draws every pixel alone."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
    dbl = rate.dtype == torch.float64
    src = rate.detach().to(torch.float64 if dbl else torch.float32).contiguous()
    out = torch.empty_like(src)
    _native.poisson(src.view(-1).numpy(), out.view(-1).numpy(), src.numel(), seed, dbl, tables)
    return out


def axis_factors(coord_a: torch.Tensor, b_a2: torch.Tensor, weight: torch.Tensor | None, k: torch.Tensor,
                 rdtype: torch.dtype) -> torch.Tensor:
    """(N, K) complex factors w_j exp(-B_j k²/4) exp(-2πi k x_j) along one axis (float64 inside, complex of
    ``rdtype``'s precision out): what potential._axis_factors forms in torch, walked along ``k`` by recurrence."""
    n, nk = coord_a.shape[0], k.shape[0]
    dbl = rdtype == torch.float64
    out = torch.empty((n, nk), dtype=torch.complex128 if dbl else torch.complex64)
    w = _f64(weight) if weight is not None else np.empty(0)
    _native.axis_factors(_f64(coord_a), _f64(b_a2), w, _f64(k), torch.view_as_real(out).numpy(), n, nk,
                         weight is not None, dbl)
    return out


def spread_gaussians(grid_flat: torch.Tensor, d: int, pos_vox: torch.Tensor, sigma_vox: torch.Tensor,
                     weight: torch.Tensor, half_vox: torch.Tensor) -> None:
    """Add Σ_j w_j N(r; r_j, σ_j²) (per voxel volume, separable, reaching ``half_vox`` voxels around the rounded centre,
    periodic) into a contiguous float64 (d³,) grid in place: what particle_map's gridding adds with index_add."""
    _native.spread_gaussians(grid_flat.numpy(), d, _f64(pos_vox), _f64(sigma_vox), _f64(weight), _f64(half_vox),
                             pos_vox.shape[0])


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).contiguous().numpy()
