"""Multislice propagation of a plane wave through a sliced potential.

Conventions (numpy/torch FFT sign: the forward transform has e^{-2πi k·x}):
- transmission t = exp(iσ (V + i V_im)): an attractive potential advances the phase and the
  imaginary part attenuates;
- Fresnel propagator over Δz: P(k) = exp(-iπ λ Δz k²);
- each slice: ψ ← P ∗ (t · ψ); the exit wave is at the bottom of the last slice.
Anti-aliasing: both t and P are limited to |k| ≤ 2/3 Nyquist, so the product t·ψ never wraps
around the grid. t is band-limited in the box that holds the slice's atoms (``"box"``, cheap:
t − 1 vanishes outside it) or over the whole field (``"field"``, two more full-size FFTs).
Consecutive slices holding only the ice continuum are merged exactly (a constant transmission
commutes with propagation), so thick ice costs nothing extra.

Windowing: outside the specimen's footprint the wave is the plane wave times the ice's uniform
transmission. When the atoms occupy a small part of the field, multislice runs on a window
around them (margin = the potential's tails + the Fresnel spread λ·T·k_max over the specimen
thickness T, doubled) and the result is placed into the field: cost and memory follow the
specimen, not the field.
"""

from __future__ import annotations

import cmath
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.utils.checkpoint

from ..core.complex_ops import polar, unit_phasor
from ..core.fft import fft2, filter2, ifft2
from ..core.grid import Grid, centred_span
from .potential import Patch, SlicedPotential, antialias_mask, embed, merge_patches

Bandlimit = Literal["box", "field", "none"]


def fresnel_propagator(grid: Grid, wavelength_a: float, distance_a: float, *, antialias_fraction: float | None = 2 / 3,
                       device=None, dtype=torch.complex64, taper_fraction: float = 0.04) -> torch.Tensor:
    """P(k) = exp(-iπ λ Δz k²) on the grid's FFT layout, times the anti-aliasing aperture."""
    k2 = grid.k2(device, torch.float64)
    prop = unit_phasor(-torch.pi * wavelength_a * distance_a * k2)
    if antialias_fraction is not None:
        prop = prop * antialias_mask(k2, grid.pixel_size_a, antialias_fraction, taper_fraction)
    return prop.to(dtype)


def propagate(wave: torch.Tensor, propagator: torch.Tensor) -> torch.Tensor:
    """Apply a Fourier-space propagator to (..., H, W) waves."""
    return ifft2(fft2(wave) * propagator)


def transmission(potential_v_a: torch.Tensor, sigma: float) -> torch.Tensor:
    """t = exp(iσ V) for complex V = V_re + i V_im (V·Å), as e^{−σ V_im}·e^{iσ V_re} (a real exponential and a
    sine/cosine pair: 5–6× faster on CPU than the complex exponential of the product)."""
    if not potential_v_a.is_complex():
        return unit_phasor(sigma * potential_v_a)
    return polar((potential_v_a.imag * -sigma).exp_(), sigma * potential_v_a.real)


def _checkpoint(fn, *args):
    """Recompute ``fn`` in the backward pass (deterministic: no RNG state to keep)."""
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False,
                                             determinism_check="none")


class KernelCache:
    """Fourier-space kernels that depend only on the grid, the wavelength and a distance (propagators, apertures),
    shared by every :class:`Multislice` of the process: a tilt series' views use the same few (the TMV example's 61
    tilts: five propagation distances, one field) instead of rebuilding them per view. Least recently used out
    beyond ``max_bytes``; safe for tilts simulated on several threads."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        size = value.numel() * value.element_size()
        if value.requires_grad or size > self.max_bytes:
            return value
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()
            return self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: the process's shared kernels (see :class:`KernelCache`)
KERNELS = KernelCache()


@dataclass
class MultisliceStats:
    n_slices: int = 0
    n_propagations: int = 0
    n_patches: int = 0


class Multislice:
    """Plane-wave multislice through a :class:`SlicedPotential`, streamed one slice at a time."""

    def __init__(self, potential: SlicedPotential, wavelength_a: float, sigma: float, *,
                 antialias_fraction: float | None = 2 / 3, bandlimit: Bandlimit = "box", checkpoint: bool = True,
                 taper_fraction: float = 0.04, ice=None):
        self.potential, self.wavelength_a, self.sigma = potential, wavelength_a, sigma
        self.ice = ice  # structured ice (forward.ice.ViewIce) or None
        self.taper_fraction = taper_fraction
        self.checkpoint = checkpoint
        self.antialias_fraction = antialias_fraction
        self.bandlimit = bandlimit if antialias_fraction is not None else "none"
        self._props: dict[float, torch.Tensor] = {}
        self._apertures: dict[tuple[int, int], torch.Tensor] = {}
        self.stats = MultisliceStats()

    def _aperture(self, shape: tuple[int, int]) -> torch.Tensor:
        """The anti-aliasing aperture of a (H, W) grid divided by H·W (for :func:`filter2`)."""
        if shape not in self._apertures:
            g = Grid(shape, self.potential.grid.pixel_size_a)

            def make():  # in the wave's real precision: each window shape of a series is new (~25 per tilt)
                mask = antialias_mask(g.k2(self.potential.device, self.potential.rdtype), g.pixel_size_a,
                                      self.antialias_fraction, self.taper_fraction)
                return mask.mul_(1.0 / (shape[0] * shape[1]))

            key = ("aperture", shape, g.pixel_size_a, self.antialias_fraction, self.taper_fraction,
                   str(self.potential.device), self.potential.rdtype)
            self._apertures[shape] = KERNELS.get(key, make)
        return self._apertures[shape]

    def _propagator(self, distance_a: float) -> torch.Tensor:
        """The Fresnel propagator over ``distance_a`` divided by H·W (for :func:`filter2`)."""
        key = round(distance_a, 9)
        if key not in self._props:
            grid = self.potential.grid

            def make():
                prop = fresnel_propagator(grid, self.wavelength_a, distance_a,
                                          antialias_fraction=self.antialias_fraction,
                                          taper_fraction=self.taper_fraction, device=self.potential.device,
                                          dtype=torch.complex128)
                return (prop / (grid.ny * grid.nx)).to(self.potential.cdtype)

            shared = ("propagator", grid.shape_px, grid.pixel_size_a, self.wavelength_a, key, self.antialias_fraction,
                      self.taper_fraction, str(self.potential.device), self.potential.cdtype)
            self._props[key] = KERNELS.get(shared, make)
        return self._props[key]

    def transmission_field(self, patch: Patch) -> torch.Tensor:
        """Band-limited transmission function of one slice's atoms over the whole field (ice excluded)."""
        shape = self.potential.grid.shape_px
        t_minus_1 = transmission(patch.potential, self.sigma) - 1
        if self.bandlimit == "box":
            t_minus_1 = filter2(t_minus_1, self._aperture(tuple(t_minus_1.shape)))
        t = embed(Patch(patch.y0, patch.x0, t_minus_1), shape, 0.0) + 1
        if self.bandlimit == "field":
            t = filter2(t, self._aperture(shape))
        return t

    def _transmit(self, k: int, wave: torch.Tensor, ice_chunk: int | None = None) -> torch.Tensor:
        patch = self._with_ice(self.potential.slice_patch(k), ice_chunk)
        if torch.is_grad_enabled() or self.bandlimit != "box":
            return wave * self.transmission_field(patch)
        return self._transmit_in_place(wave, patch)

    def _transmit_in_place(self, wave: torch.Tensor, patch: Patch) -> torch.Tensor:
        """``wave`` × the slice's transmission, written into ``wave`` over the patch's box only (no gradients):
        outside its box the band-limited t is 1."""
        my, mx = patch.potential.shape
        ny, nx = self.potential.grid.shape_px
        if patch.y0 < 0 or patch.x0 < 0 or patch.y0 + my > ny or patch.x0 + mx > nx:
            return wave * self.transmission_field(patch)
        t = filter2(transmission(patch.potential, self.sigma).sub_(1), self._aperture((my, mx))).add_(1)
        wave[patch.y0:patch.y0 + my, patch.x0:patch.x0 + mx].mul_(t)
        return wave

    def _with_ice(self, patch: Patch | None, ice_chunk: int | None) -> Patch:
        """The slice's patch plus the structured ice's (and other layers') field of chunk ``ice_chunk``: on the
        smallest box holding both when the layers give a box (:meth:`ViewLayers.patch`), else the whole grid."""
        if ice_chunk is None:
            return patch
        grid = self.potential.grid
        if hasattr(self.ice, "patch"):
            layers = self.ice.patch(ice_chunk, grid)
            layers = Patch(layers.y0, layers.x0, layers.potential.to(self.potential.cdtype))
            return merge_patches(patch, layers, grid.shape_px)
        field = self.ice.field(ice_chunk, grid).to(self.potential.cdtype)
        if patch is None:
            return Patch(0, 0, field)
        return Patch(0, 0, embed(patch, grid.shape_px, 0.0) + field)

    def _transmit_patch(self, potential: torch.Tensor, wave: torch.Tensor, y0: int, x0: int) -> torch.Tensor:
        return wave * self.transmission_field(Patch(y0, x0, potential))

    def run(self, incident: torch.Tensor | None = None, progress=None) -> torch.Tensor:
        """Exit wave (H, W) complex; the incident wave defaults to a plane wave with |ψ|² = 1."""
        pot = self.potential
        wave = torch.ones(pot.grid.shape_px, dtype=pot.cdtype, device=pot.device) if incident is None else incident
        if incident is not None and not torch.is_grad_enabled():
            wave = wave.clone()  # slices write into the wave in place: the caller's stays as it was
        pending_a = 0.0  # propagation owed by slices merged so far
        # the uniform (ice) phase is a constant factor: it commutes with transmission and propagation, so the
        # slices' phases are summed and applied once at the exit (one field-sized pass instead of one per slice)
        uniform_phase = 0.0
        ice = self.ice.plan(pot.z_start_a, pot.slice_thickness_a, pot.n_slices, pot.ice.thickness_a) \
            if self.ice is not None else None
        ice_done: set[int] = set()

        for k in range(pot.n_slices):
            content = pot.slice_content(k, with_patch=False)
            uniform_phase = uniform_phase + pot.uniform_potential(content)
            chunk = ice.chunk_of(k) if ice is not None else None
            if chunk is not None and (chunk in ice_done or k != ice.apply_slice(chunk)):
                chunk = None  # applied already, or waits for the chunk's middle slice
            if chunk is not None:
                ice_done.add(chunk)
            if pot.has_atoms(k) or chunk is not None:
                if pending_a > 0:
                    wave = filter2(wave, self._propagator(pending_a))
                    self.stats.n_propagations += 1
                    pending_a = 0.0
                if self.checkpoint and torch.is_grad_enabled():
                    if getattr(pot, "patch_graph_is_small", False) or chunk is not None:
                        # the patch's own graph holds only the atoms (custom backward): keep the patch and
                        # the incoming wave, rebuild the transmission in the backward pass (two arrays/slice)
                        patch = self._with_ice(pot.slice_patch(k), chunk)
                        wave = _checkpoint(self._transmit_patch, patch.potential, wave, patch.y0, patch.x0)
                    else:
                        # keep only the incoming wave per slice; the slice's potential and transmission are
                        # rebuilt from the atoms during the backward pass (memory O(field) per slice)
                        wave = _checkpoint(self._transmit, k, wave)
                else:
                    wave = self._transmit(k, wave, chunk)
                self.stats.n_patches += 1
            pending_a += content.thickness_a
            self.stats.n_slices += 1
            if progress is not None:
                progress(1)
        if pending_a > 0:
            wave = filter2(wave, self._propagator(pending_a))
            self.stats.n_propagations += 1
        if uniform_phase != 0:
            wave = wave * cmath.exp(1j * self.sigma * uniform_phase)
        return wave


def multislice(potential: SlicedPotential, wavelength_a: float, sigma: float, *, incident: torch.Tensor | None = None,
               antialias_fraction: float | None = 2 / 3, bandlimit: Bandlimit = "box", checkpoint: bool = True,
               progress=None, stats: MultisliceStats | None = None, taper_fraction: float = 0.04,
               ice=None) -> torch.Tensor:
    """Functional form of :class:`Multislice` (see there). With gradients enabled and ``checkpoint``,
    each slice is recomputed in the backward pass instead of stored. ``ice``: structured ice
    (:class:`~difftem.forward.ice.ViewIce`), added to the slices chunk by chunk."""
    ms = Multislice(potential, wavelength_a, sigma, antialias_fraction=antialias_fraction, bandlimit=bandlimit,
                    checkpoint=checkpoint, taper_fraction=taper_fraction, ice=ice)
    if stats is not None:
        ms.stats = stats
    return ms.run(incident, progress)


@dataclass(frozen=True)
class Window:
    y0: int
    x0: int
    grid: Grid


def plan_window(grid: Grid, positions_a: torch.Tensor, thickness_a: float, wavelength_a: float, *,
                margin_a: float = 24.0, min_margin_px: int = 64,
                antialias_fraction: float | None = 2 / 3) -> Window | None:
    """A window of ``grid`` holding every atom with a safe margin, or None if it would not be smaller.

    The margin covers the atoms' potential tails (``margin_a``), the ringing of the band limit
    (``min_margin_px``; it decays over pixels, not Å) and twice the Fresnel spread λ·T·k_max.
    """
    if positions_a.shape[0] == 0:
        return None
    p = grid.pixel_size_a
    k_max = (antialias_fraction or 1.0) * 0.5 / p
    margin_px = max(math.ceil(margin_a / p), min_margin_px) + math.ceil(2 * wavelength_a * thickness_a * k_max / p) + 8
    oy, ox = grid.origin_a
    spans = []
    for coord, origin, n in ((positions_a[:, 1], oy, grid.ny), (positions_a[:, 0], ox, grid.nx)):
        span = centred_span(float(coord.detach().min()) + origin, float(coord.detach().max()) + origin, p,
                            margin_px, n)
        if span is None or span[1] * 1.25 > n:
            return None  # not worth it, or the specimen wraps around the field edge
        spans.append(span)
    (y0, my), (x0, mx) = spans
    return Window(y0, x0, grid.window(y0, x0, (my, mx)))
