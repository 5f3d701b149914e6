"""The exit wave over the whole field, from any streamed potential: on the field itself, on a window around the
specimen (the rest is the plane wave through the uniform ice), or tile by tile.

``build(grid)`` makes the potential for a sub-grid of the field (``None``: the field), so the same function serves
the simulator's scene potentials (maps and atoms, per view) and the differentiable simulator's explicit atoms.
"""

from __future__ import annotations

import cmath
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.grid import Grid
from .multislice import MultisliceStats, Window, multislice
from .potential import Patch, SlicedBase, embed
from .scene_build import Tile


@dataclass
class ExitWave:
    """The complex exit wave over the field, the plane it leaves the specimen through, and optionally the
    projected potential (complex V·Å, summed over slices)."""

    wave: torch.Tensor
    exit_plane_a: float
    n_slices: int
    projected: torch.Tensor | None = None
    plan: dict = field(default_factory=dict)


def _run(build: Callable[[Grid | None], SlicedBase], grid: Grid | None, wavelength_a: float, sigma: float, sim, *,
         checkpoint: bool, progress, stats: MultisliceStats | None, keep_potential: bool, ice=None):
    pot = build(grid)
    wave = multislice(pot, wavelength_a, sigma, antialias_fraction=sim.antialias_fraction, bandlimit=sim.bandlimit,
                      checkpoint=checkpoint, progress=progress, stats=stats,
                      taper_fraction=sim.antialias_taper_fraction, ice=ice)
    projected = None
    if keep_potential:
        projected = pot.project()
        if ice is not None:  # the structured ice's chunks, as multislice added them
            ice.plan(pot.z_start_a, pot.slice_thickness_a, pot.n_slices, pot.ice.thickness_a)
            for c in sorted({ice.chunk_of(k) for k in range(pot.n_slices)} - {None}):
                projected = projected + ice.field(c, pot.grid).to(projected.dtype)
    return pot, wave, projected


def windowed_exit_wave(build: Callable[[Grid | None], SlicedBase], field_grid: Grid, window: Window | None,
                       wavelength_a: float, sigma: float, sim, *, checkpoint: bool = True, progress=None,
                       stats: MultisliceStats | None = None, keep_potential: bool = False, ice=None) -> ExitWave:
    """Multislice on ``window`` (or the whole field when None), placed into the field; ``sim``: the config's
    ``simulation`` section (band limit and its taper). ``ice``: structured ice (needs ``window`` None: outside a
    window the ice is no longer uniform)."""
    if ice is not None and window is not None:
        raise ValueError("structured ice needs the whole field (window None)")
    pot, wave, proj = _run(build, window.grid if window else None, wavelength_a, sigma, sim, checkpoint=checkpoint,
                           progress=progress, stats=stats, keep_potential=keep_potential, ice=ice)
    if window is not None:  # outside the window: the plane wave through the uniform ice
        uniform = pot.total_uniform_potential()
        wave = embed(Patch(window.y0, window.x0, wave), field_grid.shape_px, cmath.exp(1j * sigma * uniform))
        if proj is not None:
            proj = embed(Patch(window.y0, window.x0, proj), field_grid.shape_px, uniform)
    return ExitWave(wave, pot.exit_plane_a, pot.n_slices, proj,
                    {"multislice_window_px": list(window.grid.shape_px) if window else None})


def tiled_exit_wave(build: Callable[[Grid | None], SlicedBase], field_grid: Grid, tiles: list[Tile],
                    wavelength_a: float, sigma: float, sim, *, margin_px: int, progress=None,
                    stats: MultisliceStats | None = None, keep_potential: bool = False,
                    device: torch.device | None = None, ice=None) -> ExitWave:
    """Multislice tile by tile (each on its window with margins), keeping each tile's core. ``ice``: structured
    ice, each tile cut from the same realisation."""
    exit_wave = torch.empty(field_grid.shape_px, dtype=torch.complex64, device=device)
    projected = torch.empty_like(exit_wave) if keep_potential else None
    pot = None
    for tile in tiles:
        pot, wave, proj = _run(build, tile.window, wavelength_a, sigma, sim, checkpoint=True, progress=progress,
                               stats=stats, keep_potential=keep_potential, ice=ice)
        (h, w), oy, ox = tile.core_shape, tile.core_y0 - tile.y0, tile.core_x0 - tile.x0
        core = (slice(tile.core_y0, tile.core_y0 + h), slice(tile.core_x0, tile.core_x0 + w))
        exit_wave[core] = wave[oy:oy + h, ox:ox + w]
        if proj is not None:
            projected[core] = proj[oy:oy + h, ox:ox + w]
    return ExitWave(exit_wave, pot.exit_plane_a, pot.n_slices, projected,
                    {"tiles": len(tiles), "tile_margin_px": margin_px})
