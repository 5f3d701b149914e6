"""Label volumes of a scene: per voxel, which particle type (class) and which copy (instance) occupies it.

Each type's molecular volume is made once in its own frame (:func:`type_mask`): for atoms, their masses spread on a
grid and blurred by a Gaussian (σ = max(1.5 Å, the grid's voxel)), keeping the densest voxels that hold the type's
mass at 1.35 g/cm³ (the volume the atom path displaces ice with); for a density map, its own mask (the same
definition, or its threshold). A copy's label voxels are those whose centres, taken into the type frame by the
copy's pose (Rᵀ(r − t)), fall in that volume (nearest voxel), all copies of a type in batches. Voxel [iz, iy, ix]
has its centre at ((ix − X//2)·v, (iy − Y//2)·v, (iz − Z//2)·v) Å, the frame of ``potential_volume`` and of
``difftem reconstruct``; x and y wrap around the field's edges (the field is periodic), z does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.elements import atomic_mass_da
from ..core.fft import irfft3, k2_per_a2, rfft3
from .density import molecule_mask
from .scene import ParticleType, Scene

BLUR_SIGMA_A = 1.5  # an atom's share of the molecular volume: about its van der Waals radius
MAX_TYPE_GRID = 160  # voxels along a type mask's side (coarser voxels for larger types)
BATCH_POINTS = 4_000_000  # sample points per batch of copies


@dataclass
class TypeMask:
    """A type's molecular volume: ``inside`` (Z, Y, X) bool, voxel [0, 0, 0] at ``origin_a`` (x, y, z, type
    frame), voxel sizes ``voxel_a`` (x, y, z)."""

    inside: np.ndarray
    voxel_a: np.ndarray
    origin_a: np.ndarray
    per_unit: bool = False  # the volume of a type's unit (each unit of each copy is placed), not the whole type

    @property
    def radius_a(self) -> float:
        idx = np.argwhere(self.inside)
        if not len(idx):
            return 0.0
        pts = self.origin_a + idx[:, ::-1] * self.voxel_a
        return float(np.sqrt((pts**2).sum(1)).max() + 0.5 * np.linalg.norm(self.voxel_a))


def type_mask(ptype: ParticleType, voxel_a: float) -> TypeMask:
    """The molecular volume of a type, on a grid fine enough for labels of ``voxel_a``."""
    if ptype.density is not None:
        d = ptype.density
        return TypeMask(d.mask, d.voxel_a, d.origin_a)
    if not ptype.atoms_built:  # a type of subunits: its unit's volume, placed unit by unit
        unit = type_mask_of_atoms(ptype.subunits.atoms, voxel_a)
        unit.per_unit = True
        return unit
    return type_mask_of_atoms(ptype.atoms, voxel_a)


def type_mask_of_atoms(atoms, voxel_a: float) -> TypeMask:
    """The molecular volume of ``atoms`` (see :func:`type_mask`)."""
    if not len(atoms):
        return TypeMask(np.zeros((1, 1, 1), bool), np.ones(3), np.zeros(3))
    pos = atoms.positions_a
    mass = atomic_mass_da(atoms.atomic_number) * atoms.occupancy
    lo, hi = pos.min(0) - 3 * BLUR_SIGMA_A - 2, pos.max(0) + 3 * BLUR_SIGMA_A + 2
    g = max(min(voxel_a / 2, 2.0), float((hi - lo).max()) / MAX_TYPE_GRID, 0.5)
    shape = tuple(int(math.ceil(n / g)) + 2 for n in (hi - lo)[::-1])  # (Z, Y, X)
    grid = torch.zeros(math.prod(shape), dtype=torch.float64)
    # trilinear spreading of every atom's mass (vectorised: 8 corners, one index_add_)
    f = torch.as_tensor((pos - lo)[:, ::-1] / g, dtype=torch.float64)  # (N, 3) z, y, x
    i0 = f.floor().long()
    w1 = f - i0
    m = torch.as_tensor(mass, dtype=torch.float64)
    for corner in range(8):  # the eight corners of every atom's cell, all atoms at once
        bits = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        idx = i0 + bits
        w = torch.where(bits.bool(), w1, 1 - w1).prod(1) * m
        grid.index_add_(0, (idx[:, 0] * shape[1] + idx[:, 1]) * shape[2] + idx[:, 2], w)
    sigma = max(BLUR_SIGMA_A, g)
    k2 = k2_per_a2(shape, g, half=True)
    blurred = irfft3(rfft3(grid.reshape(shape)) * torch.exp(-2 * math.pi**2 * sigma**2 * k2), shape).numpy()
    inside = molecule_mask(blurred, g**3, threshold=None, mass_da=float(mass.sum()))
    return TypeMask(inside, np.full(3, g), lo)


def label_shape(shape_px: tuple[int, int], pixel_size_a: float, voxel_a: float, thickness_a: float
                ) -> tuple[int, int, int]:
    """(Z, Y, X) of the label volume: the field at ``voxel_a`` (as ``potential_volume`` rounds it), ``thickness_a``
    deep."""
    ny, nx = (int(round(n * pixel_size_a / voxel_a)) for n in shape_px)
    return max(1, int(round(thickness_a / voxel_a))), ny, nx


def label_volumes(scene: Scene, shape_zyx: tuple[int, int, int], voxel_a: float,
                  masks: list[TypeMask] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(class int16, instance int32) volumes (Z, Y, X): 0 background, type index + 1, copy index + 1 (a filament's
    subunits all carry its first subunit's: one instance per filament)."""
    nz, ny, nx = shape_zyx
    cls = torch.zeros(nz * ny * nx, dtype=torch.int16)
    inst = torch.zeros(nz * ny * nx, dtype=torch.int32)
    masks = masks or [type_mask(t, voxel_a) for t in scene.types]
    pl = scene.placement
    fil = getattr(scene, "filaments", None)
    ids = torch.as_tensor(fil.instance_ids(len(pl)) if fil is not None else np.arange(1, len(pl) + 1),
                          dtype=torch.int32)
    centre_idx = torch.tensor([nx // 2, ny // 2, nz // 2], dtype=torch.float64)  # x, y, z
    for t, tm in enumerate(masks):
        copies = np.flatnonzero(pl.type_index == t)
        if not len(copies) or not tm.inside.any():
            continue
        positions, rotations, copy_ids = pl.positions_a[copies], pl.rotations[copies], ids[torch.as_tensor(copies)]
        if tm.per_unit:  # each unit of each copy, carrying its copy's instance
            units = scene.types[t].subunits
            rotations, positions = units.poses(rotations, positions)
            copy_ids = copy_ids.repeat_interleave(len(units))
        h = int(math.ceil(tm.radius_a / voxel_a)) + 1
        off = torch.arange(-h, h + 1, dtype=torch.float64)
        offs = torch.stack(torch.meshgrid(off, off, off, indexing="ij"), -1).reshape(-1, 3)  # (S³, 3) x, y, z
        vol = torch.as_tensor(tm.inside, dtype=torch.float32)[None, None]
        tvox = torch.as_tensor(tm.voxel_a, dtype=torch.float64)
        tori = torch.as_tensor(tm.origin_a, dtype=torch.float64)
        tsize = torch.tensor(tm.inside.shape[::-1], dtype=torch.float64)  # x, y, z
        batch = max(1, BATCH_POINTS // len(offs))
        for lo in range(0, len(positions), batch):
            sel = slice(lo, lo + batch)
            c = torch.as_tensor(positions[sel], dtype=torch.float64)  # (B, 3)
            rot = torch.as_tensor(rotations[sel], dtype=torch.float64)
            ic = torch.round(c / voxel_a) + centre_idx  # the copy's nearest label voxel (x, y, z index)
            idx = ic[:, None, :] + offs[None]  # (B, S³, 3)
            r = (idx - centre_idx) * voxel_a - c[:, None, :]  # scene offsets from the copy centre
            local = torch.einsum("bpi,bij->bpj", r, rot)  # Rᵀ r as row vectors
            g = (local - tori) / tvox  # type-mask voxel index (x, y, z)
            grid = (2 * g + 1) / tsize - 1  # align_corners=False
            hit = F.grid_sample(vol, grid.reshape(1, 1, 1, -1, 3).float(), mode="nearest", padding_mode="zeros",
                                align_corners=False).reshape(len(c), -1) > 0.5
            iz = idx[..., 2].long()
            ok = hit & (iz >= 0) & (iz < nz)
            ix = torch.remainder(idx[..., 0].long(), nx)
            iy = torch.remainder(idx[..., 1].long(), ny)
            flat = ((iz * ny + iy) * nx + ix)[ok]
            cls[flat] = t + 1
            inst[flat] = copy_ids[sel][:, None].expand_as(ok)[ok]
    return cls.reshape(nz, ny, nx).numpy(), inst.reshape(nz, ny, nx).numpy()


def membrane_half_thickness_a(bilayer) -> float:
    """Half the labelled thickness of a bilayer (``specimen.membranes.Bilayer``): from its mid-plane to the outer half
    maximum of a head-group peak, D_HH/2 + √(2 ln 2)·σ_H (22.5 Å by default: a 4.5 nm membrane)."""
    return bilayer.separation_a / 2 + math.sqrt(2 * math.log(2)) * bilayer.head_sigma_a


MEMBRANE_SLAB_PLANES = 16  # z planes of a vesicle's box evaluated at once (bounds the memory of large vesicles)


def membrane_volume(vesicles, shape_zyx: tuple[int, int, int], voxel_a: float) -> np.ndarray:
    """(Z, Y, X) int32 on the label frame: vesicle index + 1 (its row of vesicles.star) where a voxel centre lies
    within :func:`membrane_half_thickness_a` of the vesicle's mid-plane sphere, 0 elsewhere; x and y wrap (the
    field is periodic), z does not. Each vesicle visits only its own box of voxels, a few z planes at a time."""
    nz, ny, nx = shape_zyx
    out = torch.zeros((nz, ny, nx), dtype=torch.int32)
    if vesicles is None or not len(vesicles):
        return out.numpy()
    half = membrane_half_thickness_a(vesicles.bilayer)
    centre_idx = np.array([nx // 2, ny // 2, nz // 2])
    for i, (c, r) in enumerate(zip(vesicles.centres_a, vesicles.radii_a, strict=True)):  # per vesicle, not voxel
        ic = np.round(np.asarray(c) / voxel_a).astype(np.int64) + centre_idx
        reach = int(math.ceil((r + half) / voxel_a)) + 1
        axes = [torch.arange(ic[a] - reach, ic[a] + reach + 1) for a in range(3)]  # x, y, z voxel indices
        ax = [(axes[a] - int(centre_idx[a])).double() * voxel_a - float(c[a]) for a in range(3)]
        keep_z = (axes[2] >= 0) & (axes[2] < nz)
        iz_all, dz_all = axes[2][keep_z], ax[2][keep_z]
        d2_xy = ax[0][None, :] ** 2 + ax[1][:, None] ** 2  # (Y, X)
        iy, ix = torch.remainder(axes[1], ny), torch.remainder(axes[0], nx)
        for lo in range(0, len(iz_all), MEMBRANE_SLAB_PLANES):
            iz, dz = iz_all[lo:lo + MEMBRANE_SLAB_PLANES], dz_all[lo:lo + MEMBRANE_SLAB_PLANES]
            shell = (torch.sqrt(d2_xy[None] + dz[:, None, None] ** 2) - float(r)).abs() <= half  # (z, Y, X)
            zz, yy, xx = torch.nonzero(shell, as_tuple=True)
            out[iz[zz], iy[yy], ix[xx]] = i + 1
    return out.numpy()


def sheet_volume(sheets, shape_zyx: tuple[int, int, int], voxel_a: float, first: int = 1) -> np.ndarray:
    """(Z, Y, X) int32 on the label frame: ``first`` + k for sheet k of ``sample.membrane_sheets`` where a voxel
    centre lies within :func:`membrane_half_thickness_a` of the sheet's mid-plane (a disc: and within its radius of
    its centre in the plane, as forward/sheets.py cuts it), 0 elsewhere; x and y wrap (the field is periodic), z does
    not. Each sheet visits a few z planes of the volume at a time (a disc only its own box)."""
    nz, ny, nx = shape_zyx
    out = torch.zeros((nz, ny, nx), dtype=torch.int32)
    if sheets is None or not len(sheets):
        return out.numpy()
    centre_idx = np.array([nx // 2, ny // 2, nz // 2])
    for k in range(len(sheets)):  # per sheet (at most 100), not per voxel
        c, n, r = sheets.centres_a[k], sheets.normals[k], float(sheets.radii_a[k])
        half = membrane_half_thickness_a(sheets.bilayers[k])
        if math.isfinite(r):  # the disc's box about its centre
            ext = r * np.sqrt(np.clip(1 - n * n, 0, None)) + half * np.abs(n)
            ic = np.round(c / voxel_a).astype(np.int64) + centre_idx
            reach = np.ceil(ext / voxel_a).astype(np.int64) + 1
            axes = [torch.arange(ic[a] - reach[a], ic[a] + reach[a] + 1) for a in range(3)]
        else:
            axes = [torch.arange(nx), torch.arange(ny), torch.arange(nz)]
        ax = [(axes[a] - int(centre_idx[a])).double() * voxel_a - float(c[a]) for a in range(3)]
        keep_z = (axes[2] >= 0) & (axes[2] < nz)
        iz_all, dz_all = axes[2][keep_z], ax[2][keep_z]
        iy, ix = torch.remainder(axes[1], ny), torch.remainder(axes[0], nx)
        u_xy = float(n[0]) * ax[0][None, :] + float(n[1]) * ax[1][:, None]  # (Y, X)
        d2_xy = ax[0][None, :] ** 2 + ax[1][:, None] ** 2
        for lo in range(0, len(iz_all), MEMBRANE_SLAB_PLANES):
            iz, dz = iz_all[lo:lo + MEMBRANE_SLAB_PLANES], dz_all[lo:lo + MEMBRANE_SLAB_PLANES]
            u = u_xy[None] + float(n[2]) * dz[:, None, None]
            inside = u.abs() <= half
            if math.isfinite(r):
                inside &= d2_xy[None] + dz[:, None, None] ** 2 - u * u <= r * r
            zz, yy, xx = torch.nonzero(inside, as_tuple=True)
            out[iz[zz], iy[yy], ix[xx]] = first + k
    return out.numpy()
