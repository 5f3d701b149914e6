"""Flat lipid bilayers (``sample.membrane_sheets``): discs or unbounded planes in the ice, with the vesicles' profile.

A sheet is the bilayer ΔV(u) of :class:`~difftem.specimen.membranes.Bilayer` across a plane, u = n·(r − c) the
distance from its mid-plane (n the unit normal, c the centre, specimen frame), ΔV relative to the ice it displaces.
A disc holds the material whose in-plane distance from c is at most its radius (a cylinder about n cut by the
bilayer's slab: a hard rim, softened over one pixel in the images, forward/sheets.py). Without a radius the plane
is unbounded; it is cut by the ice's faces (the thickest ice's slab), so a tilted plane ends where it leaves the ice.

The config is checked against the field and the ice here: a disc must lie inside the ice (its extent along z,
R·√(1 − n_z²) + W·|n_z|, W the profile's half extent, within the thinnest ice at its centre and rim) and its
footprint inside the field; an unbounded plane must not be vertical and must stay inside the ice over the field.
Sheets are placed as given: they do not push particles or vesicles aside (the config keeps them apart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ConfigError
from .geometry import IceProfile
from .membranes import Bilayer


@dataclass(frozen=True)
class Sheets:
    """Centres (N, 3) Å and unit normals (N, 3), specimen frame; radii (N,) Å (inf: an unbounded plane); one bilayer
    per sheet; ``ice_half_a``: half the thickest ice over the field, where unbounded planes are cut."""

    centres_a: np.ndarray
    normals: np.ndarray
    radii_a: np.ndarray
    bilayers: tuple[Bilayer, ...]
    ice_half_a: float

    def __len__(self) -> int:
        return len(self.radii_a)

    def metadata(self) -> dict:
        return {"count": len(self), "centres_a": self.centres_a.round(3).tolist(),
                "normals": self.normals.round(9).tolist(),
                "radii_a": [None if math.isinf(r) else round(float(r), 3) for r in self.radii_a],
                "headgroup_separation_a": [b.separation_a for b in self.bilayers],
                "frame": "specimen (untilted), Å; radius to the rim, null: an unbounded plane cut by the ice faces"}


def disc_half_extents_a(normal: np.ndarray, radius_a: float, half_width_a: float) -> np.ndarray:
    """(3,) half extents (Å) along x, y, z of a disc of ``radius_a`` and bilayer half width ``half_width_a``."""
    n = np.abs(np.asarray(normal, dtype=np.float64))
    return radius_a * np.sqrt(np.clip(1.0 - n * n, 0.0, None)) + half_width_a * n


def sheets_from_config(config) -> Sheets | None:
    """The run's sheets (None without any), checked against the field and the ice (``ConfigError`` naming the
    sheet's field)."""
    entries = config.sample.membrane_sheets
    if not entries:
        return None
    profile = IceProfile.from_config(config.sample)
    det = config.detector
    wx, wy = det.shape_px[1] * det.pixel_size_a, det.shape_px[0] * det.pixel_size_a
    # the ice over the field on a 9 × 9 grid (the corners included): thinnest for the checks, thickest for the cut
    gx, gy = np.meshgrid(np.linspace(-wx / 2, wx / 2, 9), np.linspace(-wy / 2, wy / 2, 9))
    tx, ty = torch.as_tensor(gx.ravel()), torch.as_tensor(gy.ravel())
    ice = profile.thickness_at(tx, ty).numpy()
    ice_half = float(max(ice.max(), profile.bounds_a(max(wx, wy) / 2)[1])) / 2
    centres, normals, radii, bilayers = [], [], [], []
    for i, s in enumerate(entries):
        where = f"sample.membrane_sheets.{i}"
        c = np.asarray(s.centre_a, dtype=np.float64)
        n = np.asarray(s.normal, dtype=np.float64)
        n = n / np.linalg.norm(n)
        b = Bilayer.from_config(s.profile)
        w = b.half_extent_a
        if s.radius_nm is not None:
            r = s.radius_nm * 10.0
            ext = disc_half_extents_a(n, r, w)
            if abs(c[0]) + ext[0] > wx / 2 or abs(c[1]) + ext[1] > wy / 2:
                raise ConfigError(f"{where}.centre_a: the disc of {s.radius_nm:g} nm reaches beyond the "
                                  f"{wx / 10:g} × {wy / 10:g} nm field; move it or shrink radius_nm")
            ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            reach = max(ext[0], ext[1])
            xs = torch.as_tensor(np.concatenate([[c[0]], c[0] + reach * np.cos(ang)]))
            ys = torch.as_tensor(np.concatenate([[c[1]], c[1] + reach * np.sin(ang)]))
            half = float(profile.thickness_at(xs, ys).min()) / 2
            if abs(c[2]) + ext[2] > half:
                raise ConfigError(f"{where}.centre_a: the disc (z = {c[2]:g} Å, reaching ±{ext[2]:.4g} Å along z) "
                                  f"leaves the ice (its faces at ±{half:.4g} Å); move it, tilt it less or thicken "
                                  "the ice")
        else:
            r = math.inf
            if abs(n[2]) < 1e-6:
                raise ConfigError(f"{where}.normal: an unbounded sheet cannot be vertical; set radius_nm for a disc")
            # the mid-plane's height over the field, ± the bilayer's vertical half width W/|n_z|
            z = c[2] - (n[0] * (gx.ravel() - c[0]) + n[1] * (gy.ravel() - c[1])) / n[2]
            over = np.abs(z) + w / abs(n[2]) - ice / 2
            if (over > 0).any():
                raise ConfigError(f"{where}.centre_a: the unbounded sheet leaves the ice within the field (by "
                                  f"{over.max():.4g} Å); tilt it less, move it, thicken the ice or set radius_nm")
        centres.append(c)
        normals.append(n)
        radii.append(r)
        bilayers.append(b)
    return Sheets(np.asarray(centres), np.asarray(normals), np.asarray(radii, dtype=np.float64), tuple(bilayers),
                  ice_half)
