"""Lipid vesicles (``sample.vesicles``): spherical bilayers in the ice, their potential profile and their placement.

**Profile.** A vesicle of radius R (to its bilayer's mid-plane) is the radially symmetric potential ΔV(r − R)
relative to the ice it displaces (lipid minus water: the lumen and the outside are ice, ΔV = 0 there). The bilayer
across its normal, u the distance from the mid-plane (Å):

    ΔV(u) = A_H [g(u − D/2; σ_H) + g(u + D/2; σ_H)] + A_C · box(u; ±h_C, σ_C) + A_M g(u; σ_M)

g(x; σ) = exp(−x²/2σ²), box a step of half-width h_C with Gaussian-blurred edges (½[erf((h_C − u)/√2σ_C) +
erf((h_C + u)/√2σ_C)]). Defaults: the X-ray electron-density profile of fluid phosphatidylcholine bilayers
(DOPC, POPC; Nagle & Tristram-Nagle, Biochim. Biophys. Acta 1469, 159 (2000); Kučerka et al., Biophys. J. 95, 2356
(2008)), read as contrast against water, Δρ/ρ_water, and turned into volts with the ice's potential (4.88 V): the
head groups (phosphocholine, glycerol, carbonyls; ρ ≈ 0.44 e/Å³ against water's 0.333) ≈ +0.33 → +1.6 V at peaks
D_HH ≈ 3.7–3.9 nm apart (3.8 nm; cryo-EM shows the leaflets of vesicles ~4 nm apart); the methylene core
(≈ 0.30 e/Å³, −0.08 → −0.4 V) over 2h_C = 28 Å (2D_C ≈ 27–29 Å); the chain-end methyl trough (≈ 0.2 e/Å³,
a further −0.28 → −1.4 V). Numbers are rounded readings of the published profiles; every one is a config field.
The membrane's dipole potential (≈ +0.3–0.5 V in the core, Wang, Bose & Sigworth, PNAS 103, 18528 (2006)) is left
out by default; add it to ``core_v``. Independent neutral atoms (the ice's and the support's rule) would put the
chains above water (CH₂ at 27 Å³: 6.2 V against 4.87 V): bonded hydrogen scatters far less than a free atom, so the
contrast here follows the measured profiles instead.

**Placement.** Radii are drawn (log-normal or normal, mean and sd, kept within [min, max]) and sorted largest first;
each vesicle's centre is drawn uniformly where the vesicle lies wholly inside the field and the ice (its outer extent
plus ``min_gap_a`` from the faces, the ice profile's thickness taken at the centre and around the rim), and
rejected if it comes closer than ``min_gap_a`` to another vesicle or to a particle's bounding capsule (fiducials
included). Explicit ``centres_a`` are kept as given (checked against the ice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import ConfigError
from .geometry import IceProfile
from .scene import _segments, segment_distances

TAIL_SIGMAS = 4.0  # the profile is taken as zero beyond this many σ of its outermost feature


@dataclass(frozen=True)
class Bilayer:
    """ΔV(u) (V) of ``sample.vesicles.profile``; ``blur_a`` widens every feature by a Gaussian (σ² adds) with its
    integral kept, as the projection through a pixel's area widens a line (see :meth:`blurred`)."""

    separation_a: float
    head_v: float
    head_sigma_a: float
    core_v: float
    core_half_a: float
    core_sigma_a: float
    methyl_v: float
    methyl_sigma_a: float

    @classmethod
    def from_config(cls, p) -> Bilayer:
        return cls(p.headgroup_separation_nm * 10.0, p.headgroup_v, p.headgroup_sigma_a, p.core_v,
                   p.core_half_width_a, p.core_edge_sigma_a, p.methyl_v, p.methyl_sigma_a)

    def blurred(self, blur_a: float) -> Bilayer:
        """The profile convolved with a Gaussian of σ = ``blur_a`` (each Gaussian's height scaled to keep its area)."""
        if blur_a <= 0:
            return self

        def wide(s):
            return math.sqrt(s * s + blur_a * blur_a)

        return Bilayer(self.separation_a, self.head_v * self.head_sigma_a / wide(self.head_sigma_a),
                       wide(self.head_sigma_a), self.core_v, self.core_half_a, wide(self.core_sigma_a),
                       self.methyl_v * self.methyl_sigma_a / wide(self.methyl_sigma_a), wide(self.methyl_sigma_a))

    @property
    def half_extent_a(self) -> float:
        """|u| beyond which ΔV is taken as zero."""
        return max(self.separation_a / 2 + TAIL_SIGMAS * self.head_sigma_a,
                   self.core_half_a + TAIL_SIGMAS * self.core_sigma_a, TAIL_SIGMAS * self.methyl_sigma_a)

    @property
    def finest_sigma_a(self) -> float:
        return min(self.head_sigma_a, self.core_sigma_a, self.methyl_sigma_a)

    def potential_v(self, u_a: torch.Tensor) -> torch.Tensor:
        """ΔV (V) at distances ``u_a`` (Å, any shape) from the mid-plane; zero beyond :attr:`half_extent_a`."""
        h = self.separation_a / 2
        sh, sc, sm = self.head_sigma_a, self.core_sigma_a, self.methyl_sigma_a
        v = self.head_v * (torch.exp(-0.5 * ((u_a - h) / sh) ** 2) + torch.exp(-0.5 * ((u_a + h) / sh) ** 2))
        v = v + self.core_v * 0.5 * (torch.erf((self.core_half_a - u_a) / (math.sqrt(2) * sc))
                                     + torch.erf((self.core_half_a + u_a) / (math.sqrt(2) * sc)))
        v = v + self.methyl_v * torch.exp(-0.5 * (u_a / sm) ** 2)
        return torch.where(u_a.abs() <= self.half_extent_a, v, torch.zeros_like(v))


@dataclass(frozen=True)
class Vesicles:
    """Centres (N, 3) Å in the specimen frame, radii (N,) Å to the bilayer's mid-plane, and the bilayer."""

    centres_a: np.ndarray
    radii_a: np.ndarray
    bilayer: Bilayer

    def __len__(self) -> int:
        return len(self.radii_a)

    @property
    def outer_radii_a(self) -> np.ndarray:
        return self.radii_a + self.bilayer.half_extent_a

    def metadata(self) -> dict:
        b = self.bilayer
        return {"count": len(self), "centres_a": self.centres_a.round(3).tolist(),
                "radii_a": self.radii_a.round(3).tolist(),
                "profile": {"headgroup_separation_a": b.separation_a, "headgroup_v": b.head_v,
                            "headgroup_sigma_a": b.head_sigma_a, "core_v": b.core_v, "core_half_width_a": b.core_half_a,
                            "core_edge_sigma_a": b.core_sigma_a, "methyl_v": b.methyl_v,
                            "methyl_sigma_a": b.methyl_sigma_a, "half_extent_a": b.half_extent_a},
                "frame": "specimen (untilted), Å; radius to the bilayer's mid-plane"}


def draw_radii_a(cfg, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` radii (Å) from the configured distribution, redrawn until within [radius_min_nm, radius_max_nm]."""
    mean, sd = cfg.radius_nm, cfg.radius_sd_nm
    if sd == 0 or n == 0:
        return np.full(n, mean * 10.0)
    out = np.zeros(0)
    for _ in range(1000):
        if cfg.distribution == "lognormal":  # the log-normal with this mean and sd
            s2 = math.log1p((sd / mean) ** 2)
            draw = rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), 2 * n)
        else:
            draw = rng.normal(mean, sd, 2 * n)
        out = np.concatenate([out, draw[(draw >= cfg.radius_min_nm) & (draw <= cfg.radius_max_nm)]])
        if len(out) >= n:
            return out[:n] * 10.0
    raise ConfigError(f"sample.vesicles.radius_sd_nm: too few radii fall within [{cfg.radius_min_nm:g}, "
                      f"{cfg.radius_max_nm:g}] nm; widen the bounds or change radius_nm")


def _thinnest_ice_a(profile: IceProfile, c: np.ndarray, reach_a: float) -> float:
    """The ice's least thickness at the centre (x, y) and at 8 points ``reach_a`` around it."""
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    xs = np.concatenate([[c[0]], c[0] + reach_a * np.cos(ang)])
    ys = np.concatenate([[c[1]], c[1] + reach_a * np.sin(ang)])
    t = profile.thickness_at(torch.as_tensor(xs, dtype=torch.float64), torch.as_tensor(ys, dtype=torch.float64))
    return float(t.min())


def place_vesicles(config, bounds, placement, *, max_failures: int = 2000, blocked=None) -> Vesicles | None:
    """The run's vesicles (None without ``sample.vesicles``), clear of ``placement``'s copies (type ``bounds``) and,
    with ``blocked(a, b, r)`` ((Q,) whether capsules touch fixed obstacles: the membrane sheets), of those."""
    cfg = config.sample.vesicles
    if cfg is None:
        return None
    bilayer = Bilayer.from_config(cfg.profile)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x7E51C, cfg.seed_offset]))
    profile = IceProfile.from_config(config.sample)
    det = config.detector
    wx, wy = det.shape_px[1] * det.pixel_size_a, det.shape_px[0] * det.pixel_size_a
    n_fixed = len(cfg.centres_a)
    radii = draw_radii_a(cfg, n_fixed + cfg.count, rng)
    fixed = np.asarray(cfg.centres_a, dtype=np.float64).reshape(-1, 3)
    extent = bilayer.half_extent_a
    for i, c in enumerate(fixed):
        ro = radii[i] + extent
        if abs(c[2]) + ro > _thinnest_ice_a(profile, c, ro) / 2:
            raise ConfigError(f"sample.vesicles.centres_a.{i}: a vesicle of {radii[i] / 10:g} nm (outer "
                              f"{ro / 10:g} nm) at z = {c[2]:g} Å leaves the ice; move it or thicken the ice")
    todo = np.sort(radii[n_fixed:])[::-1]  # largest first: they are the hardest to fit
    centres, rs = list(fixed), list(radii[:n_fixed])
    ea, eb, er = _segments(bounds, placement)
    gap = cfg.min_gap_a
    for r in todo:
        ro, fails = r + extent, 0
        while True:
            if fails >= max_failures or ro > min(wx, wy) / 2:
                raise ConfigError(f"sample.vesicles.count: placed only {len(rs) - n_fixed} of {cfg.count} vesicles "
                                  f"(next radius {r / 10:.3g} nm) in the {wx / 10:g} × {wy / 10:g} nm field and its "
                                  "ice without overlap; lower the count or radius_nm, or enlarge the field or ice")
            c = np.array([rng.uniform(-wx / 2 + ro, wx / 2 - ro), rng.uniform(-wy / 2 + ro, wy / 2 - ro), 0.0])
            room = _thinnest_ice_a(profile, c, ro) / 2 - ro - gap
            if room < 0:
                fails += 1
                continue
            c[2] = rng.uniform(-room, room)
            near = (segment_distances(c, c, ea, eb) < er + ro + gap).any() if len(ea) else False
            near = near or (blocked is not None and blocked(c[None], c[None], np.array([ro + gap]))[0])
            if near or (centres and (np.linalg.norm(np.asarray(centres) - c, axis=1)
                                     < np.asarray(rs) + extent + ro + gap).any()):
                fails += 1
                continue
            centres.append(c)
            rs.append(r)
            break
    return Vesicles(np.asarray(centres, dtype=np.float64).reshape(-1, 3), np.asarray(rs, dtype=np.float64), bilayer)


def _align(axis: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations taking unit ``axis`` onto each unit normal (the shortest turn; a half turn about a
    perpendicular when they are opposite)."""
    a = axis / np.linalg.norm(axis)
    v = np.cross(a, normals)
    c = normals @ a
    vx = np.zeros((len(normals), 3, 3))
    vx[:, 0, 1], vx[:, 0, 2], vx[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    vx[:, 1, 0], vx[:, 2, 0], vx[:, 2, 1] = v[:, 2], -v[:, 1], v[:, 0]
    k = 1.0 / np.where(c > -1 + 1e-12, 1.0 + c, 1.0)
    out = np.eye(3)[None] + vx + (vx @ vx) * k[:, None, None]
    flip = c <= -1 + 1e-12
    if flip.any():  # a half turn about any axis perpendicular to a
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        out[flip] = 2 * np.outer(perp, perp) - np.eye(3)
    return out


def embed_in_vesicles(config, bounds, placement, vesicles: Vesicles | None, *, max_failures: int = 2000,
                      blocked=None):
    """Copies of the particle types with ``membrane`` set, on the vesicles (see :class:`~difftem.config.
    MembraneEmbedding`): (type indices, centres (N, 3) Å, rotations (N, 3, 3)), clear of ``placement``'s copies, of
    each other and of the ice's faces (and, with ``blocked(a, b, r)``, of fixed obstacles: the membrane sheets); the
    type frame's origin at ``depth_a`` along the outward normal."""
    from ..core.rotations import rotation_about_axis
    from .scene import Placement

    wanted = [(t, p.membrane) for t, p in enumerate(config.sample.particles) if p.membrane is not None]
    if not wanted or all(m.count == 0 for _, m in wanted):
        return Placement.concatenate([])
    if vesicles is None or not len(vesicles):
        t = wanted[0][0]
        raise ConfigError(f"sample.particles.{t}.membrane: embedded copies need vesicles; set sample.vesicles "
                          "(count or centres_a)")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xE3BED]))
    profile = IceProfile.from_config(config.sample)
    det = config.detector
    wx, wy = det.shape_px[1] * det.pixel_size_a, det.shape_px[0] * det.pixel_size_a
    area = vesicles.radii_a**2 / (vesicles.radii_a**2).sum()
    ea, eb, er = _segments(bounds, placement)
    types, centres, rots = [], [], []
    sa, sb, sr = [np.zeros((0, 3))], [np.zeros((0, 3))], [np.zeros(0)]  # the embedded copies' capsules so far
    for t, m in wanted:
        axis = np.asarray(m.axis, dtype=np.float64)
        axis = axis / np.linalg.norm(axis)
        b = bounds[t]
        placed = fails = 0
        while placed < m.count:
            if fails >= max_failures:
                raise ConfigError(f"sample.particles.{t}.membrane.count: embedded only {placed} of {m.count} copies "
                                  "in the vesicles without overlap; lower the count or min_gap_a, or add vesicles")
            j = rng.choice(len(area), p=area)
            n = rng.standard_normal(3)
            n /= np.linalg.norm(n)
            pos = vesicles.centres_a[j] + (vesicles.radii_a[j] + m.depth_a) * n
            rot = _align(axis, n[None])[0] @ rotation_about_axis(axis, rng.uniform(0, 2 * np.pi))
            c = rot @ b.centre_a + pos
            half = rot @ b.axis * b.half_length_a
            a_end, b_end = c - half, c + half
            thick = _thinnest_ice_a(profile, c, 0.0)
            reach = b.radius_a + b.half_length_a
            inside = (max(abs(a_end[2]), abs(b_end[2])) + b.radius_a <= thick / 2
                      and abs(c[0]) + reach <= wx / 2 and abs(c[1]) + reach <= wy / 2)
            gap = m.min_gap_a
            clash = len(ea) and (segment_distances(a_end, b_end, ea, eb) < er + b.radius_a + gap).any()
            oa, ob, orr = np.concatenate(sa), np.concatenate(sb), np.concatenate(sr)
            clash = clash or (len(oa) and (segment_distances(a_end, b_end, oa, ob) < orr + b.radius_a + gap).any())
            others = np.arange(len(vesicles)) != j  # another vesicle's shell
            clash = clash or (segment_distances(a_end, b_end, vesicles.centres_a[others], vesicles.centres_a[others])
                              < vesicles.outer_radii_a[others] + b.radius_a + gap).any()
            clash = clash or (blocked is not None and blocked(a_end[None], b_end[None],
                                                              np.array([b.radius_a + gap]))[0])
            if not inside or clash:
                fails += 1
                continue
            fails = 0
            placed += 1
            types.append(t)
            centres.append(pos)
            rots.append(rot)
            sa.append(a_end[None])
            sb.append(b_end[None])
            sr.append(np.array([b.radius_a]))
    return Placement(np.asarray(types, np.int64), np.asarray(centres, np.float64).reshape(-1, 3),
                     np.asarray(rots, np.float64).reshape(-1, 3, 3))
