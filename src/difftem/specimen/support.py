"""A support film's geometry in the specimen frame: a layer of thickness t against one face of the ice, with
circular holes of diameter D on a square or hexagonal lattice of pitch p (one hole centred at the offset).

The film lies against the plane of the ice's thickest face, |z| = T_max/2 (T_max: the thickest ice of the
profile; the flat slab's thickness without one): specimen depths [−T_max/2 − t, −T_max/2] on the top (the beam's
entrance face, z grows along the beam) or [T_max/2, T_max/2 + t] on the bottom. The ice inside the holes and under
the film is whatever the ice profile says.

A view crosses it along straight rays: between two specimen depths a ray moves along a segment in (x, y), and the
length of its path through film material is the path through the layer minus the chords the segment cuts from the
holes (exact: line–circle intersections with the holes nearest the segment's ends and middle, which are all it can
meet while a segment's reach stays below the gap between holes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SupportGeometry:
    thickness_a: float
    hole_radius_a: float  # 0: a continuous film
    pitch_a: float
    lattice: str  # square | hexagonal
    offset_a: tuple[float, float]
    face: str  # top | bottom

    @classmethod
    def from_config(cls, support, ice_face_a: float) -> tuple[SupportGeometry, tuple[float, float]]:
        """(geometry, specimen depth range (z0, z1) Å) of ``sample.support``; ``ice_face_a``: T_max/2."""
        g = cls(support.thickness_nm * 10.0, support.hole_diameter_nm * 5.0, support.pitch_nm * 10.0,
                support.lattice, tuple(support.hole_offset_a), support.face)
        return g, g.depth_range_a(ice_face_a)

    def depth_range_a(self, ice_face_a: float) -> tuple[float, float]:
        if self.face == "top":
            return -ice_face_a - self.thickness_a, -ice_face_a
        return ice_face_a, ice_face_a + self.thickness_a

    def nearest_hole(self, x_a: torch.Tensor, y_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre (x, y) Å of the hole nearest each point."""
        p, (ox, oy) = self.pitch_a, self.offset_a
        u, v = x_a - ox, y_a - oy
        if self.lattice == "square":
            return torch.round(u / p) * p + ox, torch.round(v / p) * p + oy
        # hexagonal: basis a1 = (p, 0), a2 = (p/2, p√3/2); the nearest node is a corner of the rhombic cell
        h = p * math.sqrt(3) / 2
        j0 = torch.floor(v / h)
        i0 = torch.floor(u / p - 0.5 * v / h)
        best_d = best_x = best_y = None
        for di in (0, 1):
            for dj in (0, 1):
                i, j = i0 + di, j0 + dj
                cx, cy = i * p + j * (p / 2), j * h
                d = (u - cx) ** 2 + (v - cy) ** 2
                if best_d is None:
                    best_d, best_x, best_y = d, cx, cy
                else:
                    closer = d < best_d
                    best_d = torch.where(closer, d, best_d)
                    best_x, best_y = torch.where(closer, cx, best_x), torch.where(closer, cy, best_y)
        return best_x + ox, best_y + oy

    def material_fraction(self, x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor
                          ) -> torch.Tensor:
        """The share of each segment (x0, y0) → (x1, y1) (Å, tensors of one shape) that lies on film, not in a hole;
        a segment of zero length is 1 or 0 by whether its point is outside the holes."""
        if self.hole_radius_a <= 0:
            return torch.ones_like(x0)
        dx, dy = x1 - x0, y1 - y0
        a = dx * dx + dy * dy
        moving = a > 1e-18
        a_safe = torch.where(moving, a, torch.ones_like(a))
        r2 = self.hole_radius_a**2
        inside = torch.zeros_like(x0)
        seen = []
        for sx, sy in ((x0, y0), (x1, y1), (0.5 * (x0 + x1), 0.5 * (y0 + y1))):
            cx, cy = self.nearest_hole(sx, sy)
            new = torch.ones_like(x0, dtype=torch.bool)
            for px, py in seen:  # count each hole once
                new = new & ((cx - px).abs() + (cy - py).abs() > 1e-6 * self.pitch_a)
            seen.append((cx, cy))
            ex, ey = x0 - cx, y0 - cy
            b = 2 * (dx * ex + dy * ey)
            c = ex * ex + ey * ey - r2
            disc = torch.clamp(b * b - 4 * a_safe * c, min=0.0)
            root = torch.sqrt(disc)
            s1 = ((-b - root) / (2 * a_safe)).clamp(0.0, 1.0)
            s2 = ((-b + root) / (2 * a_safe)).clamp(0.0, 1.0)
            chord = torch.where(moving, (s2 - s1).clamp(min=0.0), (c < 0).to(x0.dtype))
            inside = inside + torch.where(new, chord, torch.zeros_like(chord))
        return (1 - inside).clamp(0.0, 1.0)
