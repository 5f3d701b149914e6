"""Multislice propagation of a plane wave through a sliced potential.

Conventions (numpy/torch FFT sign: forward transform has e^{-2πi k·x}):
- transmission t = exp(iσ (V + i V_im)) — an attractive potential advances the phase and the
  imaginary part attenuates;
- Fresnel propagator over Δz: P(k) = exp(-iπ λ Δz k²), limited to |k| ≤ 2/3 Nyquist;
- each slice: ψ ← P ∗ (t · ψ); the exit wave is at the bottom of the last slice.
Consecutive slices holding only the ice continuum are merged exactly (a constant transmission
commutes with propagation), so thick ice costs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .fft import fft2, ifft2
from .grid import Grid
from .potential import SlicedPotential, antialias_mask, embed


def fresnel_propagator(grid: Grid, wavelength_a: float, distance_a: float, *, antialias_fraction: float | None = 2 / 3,
                       device=None, dtype=torch.complex64) -> torch.Tensor:
    """P(k) = exp(-iπ λ Δz k²) on the grid's FFT layout, with the anti-aliasing aperture."""
    k2 = grid.k2(device, torch.float64)
    prop = torch.polar(torch.ones_like(k2), -torch.pi * wavelength_a * distance_a * k2)
    if antialias_fraction is not None:
        prop = prop * antialias_mask(k2, grid.pixel_size_a, antialias_fraction)
    return prop.to(dtype)


def propagate(wave: torch.Tensor, propagator: torch.Tensor) -> torch.Tensor:
    """Apply a Fourier-space propagator to (..., H, W) waves."""
    return ifft2(fft2(wave) * propagator)


def transmission(potential_v_a: torch.Tensor, sigma: float) -> torch.Tensor:
    """t = exp(iσ V) for complex V = V_re + i V_im (V·Å)."""
    return torch.exp(1j * sigma * potential_v_a)


@dataclass
class MultisliceStats:
    n_slices: int = 0
    n_propagations: int = 0
    n_patches: int = 0
    extra: dict = field(default_factory=dict)


def multislice(potential: SlicedPotential, wavelength_a: float, sigma: float, *, incident: torch.Tensor | None = None,
               progress=None, stats: MultisliceStats | None = None) -> torch.Tensor:
    """Exit wave (H, W) complex of a plane wave (|ψ|² = 1) through ``potential``, streamed slice by slice."""
    grid = potential.grid
    device, cdtype = potential.device, potential.cdtype
    wave = torch.ones(grid.shape_px, dtype=cdtype, device=device) if incident is None else incident
    props: dict[float, torch.Tensor] = {}
    pending_a = 0.0  # propagation distance owed by merged empty slices
    stats = stats if stats is not None else MultisliceStats()

    def flush(wave):
        nonlocal pending_a
        if pending_a > 0:
            key = round(pending_a, 9)
            if key not in props:
                props[key] = fresnel_propagator(grid, wavelength_a, pending_a,
                                                antialias_fraction=potential.antialias_fraction, device=device,
                                                dtype=cdtype)
            wave = propagate(wave, props[key])
            stats.n_propagations += 1
            pending_a = 0.0
        return wave

    for content in potential.slices():
        uniform = potential.uniform_potential(content)
        if uniform != 0:
            wave = wave * complex(torch.exp(torch.tensor(1j * sigma * uniform, dtype=torch.complex128)))
        if content.patch is not None:
            wave = flush(wave)
            t = transmission(content.patch.potential, sigma)
            wave = wave * embed(type(content.patch)(content.patch.y0, content.patch.x0, t), grid.shape_px, 1.0)
            stats.n_patches += 1
        pending_a += content.thickness_a
        stats.n_slices += 1
        if progress is not None:
            progress(1)
    return flush(wave)
