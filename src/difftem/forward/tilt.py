"""Tilt series: acquisition schemes, dose bookkeeping, radiation damage and the tilt geometry.

Geometry: the tilt axis is u = (−sin α, cos α, 0), the image y axis turned by the tilt-axis
angle α about +z. At tilt θ the specimen turns actively and right-handed by θ about u, then is
imaged along +z; for α = 0 a point (x, y, z) moves to (x cos θ + z sin θ, y, −x sin θ + z cos θ).
Particles away from the axis move up or down, so the defocus gradient across a tilted field
comes out of the multislice itself. The ice slab's path length becomes t / cos θ.

Damage: the specimen's potential is filtered, isotropically in 3-D, by the exposure it has
received. ``exposure_filter`` uses the critical exposure of Grant & Grigorieff (2015),
N_e(k) = 0.245 k^−1.665 + 2.81 e/Å² at 300 kV (k in 1/Å; ×0.8 at 200 kV, linear in between), and
averages the amplitude decay exp(−N / 2N_e) over the exposure [N₀, N₀ + ΔN]; ``b_factor`` adds
B = b · N₀ (Å²), i.e. multiplies by exp(−B k²/4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import EDGE_ON_RULE, edge_on_angles
from ..core.errors import ConfigError


def _arange(lo: float, hi: float, step: float) -> list[float]:
    n = int(math.floor((hi - lo) / step + 1e-9))
    return [round(lo + i * step, 9) for i in range(n + 1)]


def acquisition_angles(ts) -> list[float]:
    """Tilt angles (deg) in acquisition order for a :class:`~difftem.config.TiltSeries`."""
    if ts.scheme == "list":
        return [float(a) for a in ts.angles_deg]
    if ts.scheme == "uniform":
        return _arange(ts.min_deg, ts.max_deg, ts.step_deg)
    if ts.scheme == "bidirectional":
        if not ts.min_deg <= ts.start_deg <= ts.max_deg:
            raise ConfigError(f"tilt_series.start_deg {ts.start_deg} lies outside [min_deg, max_deg]")
        up = _arange(ts.start_deg, ts.max_deg, ts.step_deg)
        n_down = int((ts.start_deg - ts.min_deg) / ts.step_deg + 1e-9)
        down = [round(ts.start_deg - ts.step_deg * (i + 1), 9) for i in range(n_down)]
        return up + down
    # dose-symmetric (Hagen et al. 2017): 0, then groups alternating between the two sides
    pos = [a for a in _arange(0.0, ts.max_deg, ts.step_deg) if a > 0]
    neg = [-a for a in _arange(0.0, -ts.min_deg, ts.step_deg) if a > 0]
    out = [0.0] if ts.min_deg <= 0 <= ts.max_deg else []
    side = 0
    while pos or neg:
        src = (pos, neg)[side] if (pos, neg)[side] else (pos, neg)[1 - side]
        out += src[:ts.group_size]
        del src[:ts.group_size]
        side = 1 - side
    return out


def doses_per_tilt(ts, n: int, beam_dose: float) -> list[float]:
    if ts.dose_per_tilt_e_per_a2 is not None:
        if len(ts.dose_per_tilt_e_per_a2) != n:
            raise ConfigError(f"tilt_series.dose_per_tilt_e_per_a2 has {len(ts.dose_per_tilt_e_per_a2)} values for "
                              f"{n} tilts; give one per tilt in acquisition order")
        if min(ts.dose_per_tilt_e_per_a2) < 0:
            raise ConfigError("tilt_series.dose_per_tilt_e_per_a2: doses must be ≥ 0")
        return [float(d) for d in ts.dose_per_tilt_e_per_a2]
    if ts.total_dose_e_per_a2 is not None:
        return [ts.total_dose_e_per_a2 / n] * n
    return [float(beam_dose)] * n


def defoci_per_tilt(ts, n: int, defocus_um: float) -> list[float]:
    if ts.defocus_um is None:
        return [float(defocus_um)] * n
    if len(ts.defocus_um) != n:
        raise ConfigError(f"tilt_series.defocus_um has {len(ts.defocus_um)} values for {n} tilts; give one per tilt")
    return [float(d) for d in ts.defocus_um]


def critical_exposure_e_per_a2(k_per_a: torch.Tensor, voltage_kv: float) -> torch.Tensor:
    """Grant & Grigorieff (2015) critical exposure N_e(k) in e/Å² (infinite at k = 0)."""
    scale = 0.8 + 0.2 * min(max((voltage_kv - 200.0) / 100.0, 0.0), 1.0)
    k = torch.clamp(k_per_a, min=1e-12)
    return scale * (0.245 * k ** (-1.665) + 2.81)


def exposure_filter(prior_e_per_a2: float, exposure_e_per_a2: float, voltage_kv: float):
    """H(|k|): amplitude decay averaged over the exposure [N₀, N₀ + ΔN]."""
    def h(k):
        ne2 = 2 * critical_exposure_e_per_a2(k, voltage_kv)
        a = torch.exp(-prior_e_per_a2 / ne2)
        if exposure_e_per_a2 <= 0:
            return a
        x = exposure_e_per_a2 / ne2
        return a * torch.where(x > 1e-12, -torch.expm1(-x) / x.clamp(min=1e-12), torch.ones_like(x))
    return h


def b_factor_filter(b_a2: float):
    return lambda k: torch.exp(-b_a2 * k**2 / 4)


@dataclass
class TiltPlan:
    """Per tilt, in acquisition order."""

    angles_deg: list[float]
    doses_e_per_a2: list[float]
    prior_doses_e_per_a2: list[float]
    defoci_um: list[float]
    axis_deg: float

    @property
    def order_by_angle(self) -> list[int]:
        return sorted(range(len(self.angles_deg)), key=lambda i: self.angles_deg[i])

    def transfer(self, i: int, ts, voltage_kv: float):
        if ts.damage == "none" or self.prior_doses_e_per_a2[i] + self.doses_e_per_a2[i] == 0:
            return None
        if ts.damage == "b_factor":
            return b_factor_filter(ts.b_factor_a2_per_e_per_a2 * self.prior_doses_e_per_a2[i]) \
                if self.prior_doses_e_per_a2[i] > 0 else None
        return exposure_filter(self.prior_doses_e_per_a2[i], self.doses_e_per_a2[i], voltage_kv)


def plan_tilts(config) -> TiltPlan:
    ts = config.tilt_series
    angles = acquisition_angles(ts)
    if not angles:
        raise ConfigError("tilt_series: the scheme gives no angles; check min_deg, max_deg and step_deg")
    bad = edge_on_angles(angles)
    if bad:
        raise ConfigError(f"tilt_series: angles {bad} from the scheme; {EDGE_ON_RULE}")
    doses = doses_per_tilt(ts, len(angles), config.beam.dose_e_per_a2)
    prior = list(np.concatenate([[0.0], np.cumsum(doses)[:-1]]))
    return TiltPlan(angles, doses, [float(p) for p in prior],
                    defoci_per_tilt(ts, len(angles), config.optics.defocus_um), ts.tilt_axis_deg)
