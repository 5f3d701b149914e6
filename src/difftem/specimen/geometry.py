"""Ice thickness profiles in the specimen frame: a flat slab (a lamella), a hole whose ice thickens toward its edge
(TEM-simulator's ``thickness_center``/``thickness_edge``: t(r) = t_c + (t_e − t_c)(r/R)² inside the hole of radius
R, t_e outside), or a wedge (thickness linear along a direction). The ice occupies |z| ≤ t(x, y)/2 about the
mid-plane; views cross it along their tilted rays (forward/ice.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IceProfile:
    kind: str  # flat, hole or wedge
    thickness_a: float  # flat; hole: at the centre; wedge: at the field centre
    edge_thickness_a: float = 0.0  # hole: at and beyond the rim
    radius_a: float = 0.0  # hole
    centre_a: tuple[float, float] = (0.0, 0.0)  # hole centre (x, y)
    slope: float = 0.0  # wedge: thickness change per Å along the direction
    direction_deg: float = 0.0  # wedge: from +x toward +y

    @classmethod
    def from_config(cls, sample) -> IceProfile:
        g, t = sample.ice_profile, sample.ice_thickness_nm * 10.0
        if g.kind == "hole":
            return cls("hole", t, g.edge_thickness_nm * 10.0, g.hole_diameter_nm * 5.0, tuple(g.centre_a))
        if g.kind == "wedge":
            return cls("wedge", t, slope=g.wedge_slope_deg and math.tan(math.radians(g.wedge_slope_deg)),
                       direction_deg=g.wedge_direction_deg)
        return cls("flat", t)

    @property
    def is_flat(self) -> bool:
        return self.kind == "flat" or (self.kind == "wedge" and self.slope == 0)

    def thickness_at(self, x_a: torch.Tensor, y_a: torch.Tensor) -> torch.Tensor:
        """t(x, y) in Å (specimen frame), never negative."""
        if self.kind == "hole":
            r2 = ((x_a - self.centre_a[0]) ** 2 + (y_a - self.centre_a[1]) ** 2) / self.radius_a**2
            return torch.where(r2 <= 1, self.thickness_a + (self.edge_thickness_a - self.thickness_a) * r2,
                               torch.full_like(r2, self.edge_thickness_a))
        if self.kind == "wedge":
            a = math.radians(self.direction_deg)
            return torch.clamp(self.thickness_a + self.slope * (x_a * math.cos(a) + y_a * math.sin(a)), min=0.0)
        return torch.full_like(x_a, self.thickness_a)

    def bounds_a(self, half_width_a: float) -> tuple[float, float]:
        """(min, max) thickness over a square of half-width ``half_width_a`` about the origin (what the views see)."""
        if self.kind == "hole":
            lo, hi = sorted((self.thickness_a, self.edge_thickness_a))
            return lo, hi
        if self.kind == "wedge":
            reach = abs(self.slope) * half_width_a * math.sqrt(2)
            return max(0.0, self.thickness_a - reach), self.thickness_a + reach
        return self.thickness_a, self.thickness_a
