"""Flat lipid bilayers (``sample.membrane_sheets``): discs or unbounded planes in the ice, with the vesicles' profile.

A sheet is the bilayer ΔV(u) of :class:`~difftem.specimen.membranes.Bilayer` across a plane, u = n·(r − c) the
distance from its mid-plane (n the unit normal, c the centre, specimen frame), ΔV relative to the ice it displaces.
A disc holds the material whose in-plane distance from c is at most its radius (a cylinder about n cut by the
bilayer's slab: a hard rim, softened over one pixel in the images, forward/sheets.py). Without a radius the plane
is unbounded; it is cut by the ice's faces (the thickest ice's slab), so a tilted plane ends where it leaves the ice.

The config is checked against the field and the ice here: a disc must lie inside the ice (its extent along z,
R·√(1 − n_z²) + W·|n_z|, W the profile's half extent, within the thinnest ice at its centre and rim) and its
footprint inside the field; an unbounded plane must not be vertical and must stay inside the ice over the field.
Sheets are placed as given; random copies, filaments, the crowd, gold beads, vesicles and their membrane proteins
keep clear of their bilayers (:func:`sheet_hits`: the least distance from a capsule's segment to the mid-surface, by
golden section along it).
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


# ---------------------------------------------------------------------------------------------- as obstacles
GOLDEN_STEPS = 40  # golden-section steps along a segment: the bracket shrinks by 0.618⁴⁰ ≈ 4e-9


def point_sheet_distances_a(p: np.ndarray, centres_a: np.ndarray, normals: np.ndarray, radii_a: np.ndarray
                            ) -> np.ndarray:
    """Distance (Å) from points ``p`` (..., 3) to sheets' mid-surfaces (broadcast against (..., 3) centres and
    normals and (...) radii): √(u² + max(ρ − R, 0)²), u the height over the plane and ρ the in-plane distance from
    the centre (R = inf: an unbounded plane, |u|)."""
    rel = p - centres_a
    u = (rel * normals).sum(-1)
    rho = np.sqrt(np.maximum((rel * rel).sum(-1) - u * u, 0.0))
    out = np.maximum(rho - radii_a, 0.0)
    return np.sqrt(u * u + np.where(np.isfinite(radii_a), out, 0.0) ** 2)


def segment_sheet_distances_a(a: np.ndarray, b: np.ndarray, centres_a: np.ndarray, normals: np.ndarray,
                              radii_a: np.ndarray) -> np.ndarray:
    """Least distance (Å) from segments [a, b] to sheets' mid-surfaces (broadcast as
    :func:`point_sheet_distances_a`). The distance to a convex set is convex along a segment, so a golden-section
    search finds its minimum (to ~4e-9 of the segment's length); a segment crossing a plane is at distance 0."""
    shape = np.broadcast_shapes(a.shape, b.shape, centres_a.shape, normals.shape)[:-1]
    a, b = np.broadcast_to(a, shape + (3,)), np.broadcast_to(b, shape + (3,))
    c, n = np.broadcast_to(centres_a, shape + (3,)), np.broadcast_to(normals, shape + (3,))
    r = np.broadcast_to(radii_a, shape)
    g = (math.sqrt(5) - 1) / 2
    lo, hi = np.zeros(shape), np.ones(shape)
    d = b - a

    def f(s):
        return point_sheet_distances_a(a + s[..., None] * d, c, n, r)

    for _ in range(GOLDEN_STEPS):  # every segment at once
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        left = f(x1) < f(x2)
        hi, lo = np.where(left, x2, hi), np.where(left, lo, x1)
    best = np.minimum(f(0.5 * (lo + hi)), np.minimum(f(np.zeros(shape)), f(np.ones(shape))))
    ua, ub = ((a - c) * n).sum(-1), ((b - c) * n).sum(-1)
    crosses = (ua * ub <= 0) & ~np.isfinite(r)  # through an unbounded plane
    return np.where(crosses, 0.0, best)


def sheet_hits(a: np.ndarray, b: np.ndarray, r: np.ndarray, sheets: Sheets | None, gap_a: float) -> np.ndarray:
    """(Q,) whether each capsule [a, b] of radius r comes within ``gap_a`` of a sheet's bilayer (its mid-surface ±
    the profile's half extent W)."""
    q = len(a)
    hit = np.zeros(q, bool)
    if sheets is None or not len(sheets) or q == 0:
        return hit
    w = np.array([bl.half_extent_a for bl in sheets.bilayers])
    reach = r + gap_a
    mid, half = 0.5 * (a + b), 0.5 * np.linalg.norm(b - a, axis=-1)
    # the distance is 1-Lipschitz: pairs whose midpoint is farther than the half length + reach cannot touch
    dmid = point_sheet_distances_a(mid[:, None], sheets.centres_a[None], sheets.normals[None], sheets.radii_a[None])
    qi, si = np.nonzero(dmid - half[:, None] < w[None] + reach[:, None])
    if len(qi):
        d = segment_sheet_distances_a(a[qi], b[qi], sheets.centres_a[si], sheets.normals[si], sheets.radii_a[si])
        hit[qi[d < w[si] + reach[qi]]] = True
    return hit


def sheets_volume_a3(sheets: Sheets | None, field_a: tuple[float, float]) -> float:
    """The sheets' bilayers' volume (Å³): a disc πR²·2W, a plane its area over the field (wx·wy/|n_z|) times 2W."""
    if sheets is None:
        return 0.0
    total = 0.0
    for r, n, bl in zip(sheets.radii_a, sheets.normals, sheets.bilayers, strict=True):
        area = math.pi * r * r if math.isfinite(r) else field_a[0] * field_a[1] / abs(n[2])
        total += area * 2 * bl.half_extent_a
    return total
