"""Electron beam: relativistic wavelength and interaction constant.

Units are in the names: ``voltage_kv`` (kV), ``_a`` (Å), ``sigma`` in rad/(V·Å).
"""

from __future__ import annotations

import math

# CODATA 2018 exact / recommended values (SI)
PLANCK_J_S = 6.62607015e-34
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19
SPEED_OF_LIGHT_M_S = 299792458.0

#: h² / (2π m0 e) in V·Å² — converts an electron scattering factor f_e (Å) to potential (V·Å³).
POTENTIAL_CONSTANT_V_A2 = PLANCK_J_S**2 / (2 * math.pi * ELECTRON_MASS_KG * ELEMENTARY_CHARGE_C) * 1e20


def _check_voltage(voltage_kv: float) -> float:
    if not (voltage_kv > 0 and math.isfinite(voltage_kv)):
        raise ValueError(f"voltage_kv must be a positive number, got {voltage_kv!r}")
    return float(voltage_kv)


def wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength λ = h / sqrt(2 m0 e V (1 + eV / 2 m0 c²)) in Å."""
    v = _check_voltage(voltage_kv) * 1e3
    e_v = ELEMENTARY_CHARGE_C * v
    p = math.sqrt(2 * ELECTRON_MASS_KG * e_v * (1 + e_v / (2 * ELECTRON_MASS_KG * SPEED_OF_LIGHT_M_S**2)))
    return PLANCK_J_S / p * 1e10


def lorentz_factor(voltage_kv: float) -> float:
    """γ = 1 + eV / (m0 c²)."""
    v = _check_voltage(voltage_kv) * 1e3
    return 1 + ELEMENTARY_CHARGE_C * v / (ELECTRON_MASS_KG * SPEED_OF_LIGHT_M_S**2)


def interaction_constant(voltage_kv: float) -> float:
    """σ = 2π γ m0 e λ / h² in rad/(V·Å): phase per unit projected potential."""
    lam_m = wavelength_a(voltage_kv) * 1e-10
    sigma_per_v_m = (2 * math.pi * lorentz_factor(voltage_kv) * ELECTRON_MASS_KG * ELEMENTARY_CHARGE_C * lam_m
                     / PLANCK_J_S**2)
    return sigma_per_v_m * 1e-10
