"""Electron scattering factors of neutral atoms, from published parametrisations (data/).

Conventions: ``k`` is the spatial frequency |k| = 1/d in 1/Å, ``s = k/2 = sin θ / λ``.
``f_e`` is the first-Born electron scattering amplitude in Å. The 2-D Fourier transform of
one atom's projected potential is ``C · f_e(k)`` in V·Å³ with C = h²/(2π m0 e) = 47.878 V·Å².

Tables (Z = 1…92):
- ``peng_s2``: Peng et al. (1996) five Gaussians fitted for s ≤ 2 1/Å (ITC Vol. C 4.3.2.2);
- ``peng_s6``: the s ≤ 6 1/Å fit (ITC Vol. C 4.3.2.3);
- ``kirkland``: Kirkland (2010), three Lorentzians + three Gaussians.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

import torch

from .beam import POTENTIAL_CONSTANT_V_A2

PARAMETRIZATIONS = {"peng_s2": "peng1996_s2", "peng_s6": "peng1996_s6", "kirkland": "kirkland2010"}
ALIASES = {"peng": "peng_s6"}
MAX_Z = 92


def canonical_parametrization(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PARAMETRIZATIONS:
        raise ValueError(
            f"unknown parametrization {name!r}: choose one of {sorted(PARAMETRIZATIONS) + sorted(ALIASES)}"
        )
    return key


@functools.cache
def _load_tables() -> dict[str, dict[int, tuple[str, tuple[float, ...]]]]:
    text = resources.files("difftem").joinpath("data/scattering_factors.csv").read_text()
    rows = csv.reader(line for line in io.StringIO(text) if not line.startswith("#"))
    header = next(rows)
    assert header[:3] == ["table", "element", "Z"], header
    tables: dict[str, dict[int, tuple[str, tuple[float, ...]]]] = {}
    for row in rows:
        if not row:
            continue
        params = tuple(float(v) for v in row[3:] if v.strip() != "")
        tables.setdefault(row[0], {})[int(row[2])] = (row[1], params)
    return tables


def element_symbol(z: int) -> str:
    return _load_tables()["kirkland2010"][int(z)][0]


def atomic_number(symbol: str) -> int:
    """Z of an element symbol (case-insensitive; D and T count as hydrogen)."""
    s = symbol.strip().capitalize()
    if s in ("D", "T"):
        return 1
    for z, (sym, _) in _load_tables()["kirkland2010"].items():
        if sym == s:
            return z
    raise KeyError(symbol)


@dataclass(frozen=True)
class ScatteringTable:
    """One parametrisation; evaluates projected form factors on frequency grids."""

    name: str

    def params(self, z: int) -> tuple[float, ...]:
        table = _load_tables()[PARAMETRIZATIONS[self.name]]
        if int(z) not in table:
            raise KeyError(f"no {self.name} scattering factors for Z={z} (tables cover Z=1..{MAX_Z})")
        return table[int(z)][1]

    @property
    def is_gaussian(self) -> bool:
        return self.name.startswith("peng")

    def f_e(self, z: int, k2: torch.Tensor) -> torch.Tensor:
        """Electron scattering factor f_e (Å) at squared spatial frequency k² (1/Å²)."""
        p = self.params(z)
        if self.is_gaussian:
            s2 = k2 / 4
            return sum(a * torch.exp(-b * s2) for a, b in zip(p[0:5], p[5:10], strict=True))
        a, b = p[0:6:2], p[1:6:2]
        c, d = p[6:12:2], p[7:12:2]
        return (sum(ai / (k2 + bi) for ai, bi in zip(a, b, strict=True))
                + sum(ci * torch.exp(-di * k2) for ci, di in zip(c, d, strict=True)))

    def projected_form_factor(self, z: int, k2: torch.Tensor) -> torch.Tensor:
        """2-D Fourier transform of one atom's projected potential, C·f_e(k), in V·Å³."""
        return POTENTIAL_CONSTANT_V_A2 * self.f_e(z, k2)

    def projected_integral_v_a3(self, z: int) -> float:
        """∫ V_z dA (V·Å³): the k = 0 value of the projected form factor."""
        return float(self.projected_form_factor(z, torch.zeros((), dtype=torch.float64)))

    def gaussian_terms(self, z: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(amplitudes in V·Å³, widths b in Å² of exp(-b s²)) for Gaussian-only tables."""
        if not self.is_gaussian:
            raise ValueError(f"{self.name} has Lorentzian terms; the real-space builder needs peng_s2 or peng_s6")
        p = self.params(z)
        return tuple(POTENTIAL_CONSTANT_V_A2 * a for a in p[0:5]), tuple(p[5:10])


def get_table(name: str) -> ScatteringTable:
    return ScatteringTable(canonical_parametrization(name))


def radial_lookup(fn, k: torch.Tensor, k_max: float, n: int = 4096) -> torch.Tensor:
    """fn(k²) on a grid of |k| values, through a fine 1-D table (linear interpolation) up to k_max; 0 beyond.

    Form factors and spectra built from them are smooth in |k| (relative interpolation error < 1e-7 with 4096
    nodes), and evaluating them once per node instead of once per voxel makes 3-D maps and fields cheap."""
    return RadialGrid(k, k_max, n)(fn)


class RadialGrid:
    """A grid of |k| values with its place in a 1-D table of ``n`` nodes on [0, k_max], found once for the several
    functions (one per element) looked up on it (see :func:`radial_lookup`)."""

    def __init__(self, k: torch.Tensor, k_max: float, n: int = 4096):
        self.nodes = torch.linspace(0.0, k_max, n, dtype=torch.float64, device=k.device)
        pos = (k / k_max * (n - 1)).clamp(max=n - 1)
        self.i0 = pos.floor().long().clamp(max=n - 2)
        self.w = (pos - self.i0).to(self.nodes.dtype)
        self.inside = k <= k_max

    def __call__(self, fn) -> torch.Tensor:
        table = fn(self.nodes**2)
        out = torch.lerp(table[self.i0], table[self.i0 + 1], self.w.to(table.dtype))
        return out.masked_fill_(~self.inside, 0)
