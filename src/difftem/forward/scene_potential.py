"""The potential of a whole scene, streamed slice by slice: atoms where exactness is cheap, cached
per-type maps (:mod:`difftem.particle_map`) placed at every copy's pose where copies are many.

:class:`ScenePotential` has the interface :class:`~difftem.multislice.Multislice` consumes
(``slice_patch``, ``slice_content``, ``uniform_potential``, …), so multislice, windows and tiles
work the same for both representations. Cost per slice is the samples of the copies that cross
the slice; memory is one field-sized slice, independent of the number of copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.grid import Grid
from .particle_map import FourierProjector, ParticleMap, sample_slab
from .potential import CONTENT_BOX_MARGIN_PX, IceModel, Patch, SlicedBase, SlicedPotential, content_box, embed

SUPPORT_MARGIN_A = 24.0  # potential tails sampled beyond the outermost atom


@dataclass
class MapCopies:
    """Copies of one particle type drawn from its map: rotations (M, 3, 3), centres (M, 3) Å (scene frame)."""

    pmap: ParticleMap
    rotations: torch.Tensor
    centres_a: torch.Tensor
    support_a: float  # sampling radius about each copy centre


@dataclass
class ProjectionCopies:
    """Copies projected whole (Fourier slice) into the slice that holds their centre."""

    projector: FourierProjector
    rotations: torch.Tensor
    centres_a: torch.Tensor
    transfer: object = None  # optional isotropic H(|k|), e.g. radiation damage


class ScenePotential(SlicedBase):
    """Slices [z_start, z_start + n·Δz) of a scene: ice continuum + atom-built copies + map-sampled copies."""

    def __init__(self, grid: Grid, slice_thickness_a: float, ice: IceModel, *, z_range_a: tuple[float, float],
                 atoms: SlicedPotential | None = None, map_copies: list[MapCopies] = (),
                 projection_copies: list[ProjectionCopies] = (), periodic: bool = True,
                 device=None, dtype: torch.dtype = torch.complex64, max_samples_per_batch: int = 4_000_000):
        self.grid, self.ice = grid, ice
        self.slice_thickness_a = float(slice_thickness_a)
        self.atoms = atoms
        self.map_copies = [m for m in map_copies if m.centres_a.shape[0] > 0]
        self.projection_copies = [m for m in projection_copies if m.centres_a.shape[0] > 0]
        self.periodic = periodic
        self.device = torch.device(device or "cpu")
        self.cdtype = dtype
        self.rdtype = dtype.to_real()
        self.max_samples = max_samples_per_batch
        if atoms is not None:
            self.z_start_a, self.n_slices = atoms.z_start_a, atoms.n_slices
        else:
            lo, hi = z_range_a
            half = 0.5 * ice.thickness_a
            lo, hi = min(lo, -half), max(hi, half)
            if hi <= lo:
                hi = lo + self.slice_thickness_a
            self.z_start_a = lo
            self.n_slices = max(1, math.ceil((hi - lo) / self.slice_thickness_a - 1e-9))
        # which slices each map copy crosses
        self._slices_of: list[tuple[np.ndarray, np.ndarray]] = []
        occupied = np.zeros(self.n_slices, bool)
        for mc in self.map_copies:
            z = mc.centres_a[:, 2].detach().cpu().double().numpy()
            k_lo = np.clip(np.floor((z - mc.support_a - self.z_start_a) / self.slice_thickness_a), 0, self.n_slices - 1)
            k_hi = np.clip(np.floor((z + mc.support_a - self.z_start_a) / self.slice_thickness_a), 0, self.n_slices - 1)
            self._slices_of.append((k_lo.astype(np.int64), k_hi.astype(np.int64)))
            for a, b in zip(k_lo.astype(np.int64), k_hi.astype(np.int64), strict=True):
                occupied[a:b + 1] = True
        self._slice_of_projection = []
        for pc in self.projection_copies:
            z = pc.centres_a[:, 2].detach().cpu().double().numpy()
            k = np.clip(np.floor((z - self.z_start_a) / self.slice_thickness_a), 0, self.n_slices - 1).astype(np.int64)
            self._slice_of_projection.append(k)
            occupied[k] = True
        self._occupied = occupied

    # ------------------------------------------------------------------ the interface multislice uses
    def has_atoms(self, k: int) -> bool:
        return bool(self._occupied[k]) or (self.atoms is not None and self.atoms.has_atoms(k))

    def slice_patch(self, k: int) -> Patch | None:
        atom_patch = self.atoms.slice_patch(k) if self.atoms is not None else None
        if not self._occupied[k]:
            return atom_patch
        z0 = self.z_start_a + k * self.slice_thickness_a
        maps = [(mc, np.flatnonzero((k_lo <= k) & (k_hi >= k)))
                for mc, (k_lo, k_hi) in zip(self.map_copies, self._slices_of, strict=True)]
        projections = [(pc, np.flatnonzero(ks == k)) for pc, ks in zip(self.projection_copies,
                                                                        self._slice_of_projection, strict=True)]
        spans = [self._span(mc.centres_a[sel], self._map_box(mc)) for mc, sel in maps if sel.size]
        spans += [self._span(pc.centres_a[sel], pc.projector.box_px()) for pc, sel in projections if sel.size]
        if atom_patch is not None:
            h, w = atom_patch.potential.shape
            spans.append((atom_patch.y0, atom_patch.y0 + h, atom_patch.x0, atom_patch.x0 + w))
        # the copies' own box when they hold a small part of the field (a tilted lamella's band at one depth):
        # every later step of the slice (transmission, its band limit) then costs the box, not the field
        box = content_box(spans, self.grid.shape_px, CONTENT_BOX_MARGIN_PX, self.periodic)
        y0, x0, my, mx = box if box is not None else (0, 0) + self.grid.shape_px
        field = torch.zeros((my * mx, 2), dtype=self.rdtype, device=self.device)  # (re, im) pairs: a complex view
        target = (y0, x0, my, mx, self.periodic and box is None)
        for mc, sel in maps:
            if sel.size:
                self._add_copies(field, mc, torch.as_tensor(sel, device=self.device), z0, z0 + self.slice_thickness_a,
                                 target)
        for pc, sel in projections:
            if sel.size:
                self._add_projections(field, pc, torch.as_tensor(sel, device=self.device), target)
        total = torch.view_as_complex(field).reshape(my, mx).to(self.cdtype)
        if atom_patch is not None:
            total = total + embed(Patch(atom_patch.y0 - y0, atom_patch.x0 - x0, atom_patch.potential), (my, mx), 0.0)
        return Patch(y0, x0, total)

    def _map_box(self, mc: MapCopies) -> int:
        return 2 * math.ceil(mc.support_a / self.grid.pixel_size_a) + 3

    def _boxes(self, centres_a: torch.Tensor, box: int) -> tuple[torch.Tensor, ...]:
        """(cx, cy, x0, y0): the centres in fractional field pixels and the field pixel of the [0, 0] of the ``box``
        px patch about each (the copy's sub-pixel offset is then (c − corner)·p)."""
        p = self.grid.pixel_size_a
        oy, ox = self.grid.origin_a
        c = centres_a.double()
        cx, cy = (c[:, 0] + ox) / p, (c[:, 1] + oy) / p
        return cx, cy, torch.floor(cx - box / 2 + 0.5), torch.floor(cy - box / 2 + 0.5)

    def _span(self, centres_a: torch.Tensor, box: int) -> tuple[int, int, int, int]:
        """Field pixel rows and columns [y0, y1) × [x0, x1) that boxes of ``box`` px about the centres cover."""
        _, _, x0, y0 = self._boxes(centres_a, box)
        return int(y0.min()), int(y0.max()) + box, int(x0.min()), int(x0.max()) + box

    # ------------------------------------------------------------------ map sampling
    def _scatter(self, field: torch.Tensor, patches: torch.Tensor, corners: torch.Tensor, target) -> None:
        """Add (B, 2, box, box) patches whose pixel [0, 0] sits at field pixel corners (B, 2) = (y0, x0) to
        ``field``, the flat (h·w, 2) box ``target`` = (y0, x0, h, w, wraps) of the field."""
        by, bx, ny, nx, wraps = target
        box = patches.shape[-1]
        j = torch.arange(box, device=self.device)
        iy = corners[:, 0:1] - by + j[None, :]  # (B, box)
        ix = corners[:, 1:2] - bx + j[None, :]
        vals = patches.to(self.rdtype)
        if wraps:
            iy, ix = torch.remainder(iy, ny), torch.remainder(ix, nx)
        else:  # a window or tile: what falls outside belongs to a neighbour, not wrapped in
            keep = ((iy >= 0) & (iy < ny))[:, :, None] & ((ix >= 0) & (ix < nx))[:, None, :]
            iy, ix = iy.clamp(0, ny - 1), ix.clamp(0, nx - 1)
            vals = vals * keep[:, None]
        flat = (iy[:, :, None] * nx + ix[:, None, :]).reshape(-1)
        field.index_add_(0, flat, vals.permute(0, 2, 3, 1).reshape(-1, 2))

    def _add_projections(self, field: torch.Tensor, pc: ProjectionCopies, sel: torch.Tensor, target) -> None:
        p = self.grid.pixel_size_a
        box = pc.projector.box_px()
        batch = max(1, self.max_samples // (8 * box * box))
        for lo in range(0, sel.numel(), batch):
            idx = sel[lo:lo + batch]
            cx, cy, x0, y0 = self._boxes(pc.centres_a[idx], box)
            offsets = torch.stack([(cx - x0) * p, (cy - y0) * p], 1)
            patches = pc.projector.project(pc.rotations[idx], offsets, box, transfer=pc.transfer)
            self._scatter(field, patches, torch.stack([y0.long(), x0.long()], 1), target)

    def _add_copies(self, field: torch.Tensor, mc: MapCopies, sel: torch.Tensor, z0_a: float, z1_a: float,
                    target) -> None:
        p = self.grid.pixel_size_a
        oy, ox = self.grid.origin_a
        box = self._map_box(mc)
        nz = max(1, math.ceil((z1_a - z0_a) / p - 1e-9))
        batch = max(1, self.max_samples // (nz * box * box))
        for lo in range(0, sel.numel(), batch):
            idx = sel[lo:lo + batch]
            c = mc.centres_a[idx].double()
            centres_px = torch.stack([(c[:, 0] + ox) / p, (c[:, 1] + oy) / p, c[:, 2]], 1)
            patches, corners = sample_slab(mc.pmap, mc.rotations[idx], centres_px, p, z0_a, z1_a, box, n_z=nz)
            self._scatter(field, patches, corners, target)
