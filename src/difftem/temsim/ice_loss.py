"""Electron loss in TEM-simulator's scattering model: screened (Lenz/Wentzel) elastic and inelastic cross
sections, the ice absorption potential that loses what TEM-simulator's ice loses, and carbon's share of
scattering outside the objective aperture.
"""

from __future__ import annotations

import math

import numpy as np

from ..forward.beam import interaction_constant, wavelength_a

ICE_MOLECULES_PER_A3 = 0.0335  # TEM-simulator's vitreous ice: 33.5 molecules per nm³
BOHR_RADIUS_A = 0.529177
ELECTRON_REST_ENERGY_EV = 510998.95


def screened_cross_sections_a2(z: int, voltage_kv: float, max_angle_rad: float = math.inf) -> tuple[float, float]:
    """(elastic, inelastic) cross-sections (Å²) of an atom of number ``z`` for scattering angles up to
    ``max_angle_rad``, in the screened (Lenz/Wentzel) small-angle model TEM-simulator uses:

    dσ_el/dΩ = 4 Z^{2/3} a₀² γ² / (1 + θ²/θ₀²)²,
    dσ_in/dΩ = 4 Z γ² / (k⁴ a₀² (θ² + θ_E²)²) · (1 − 1/(1 + θ²/θ₀²)²),
    θ₀ = Z^{1/3} / (k a₀), θ_E = 13.5 eV · Z / (4 E), k = 2π/λ, γ = 1 + E/(m₀c²).
    """
    k = 2 * math.pi / wavelength_a(voltage_kv)
    gamma = 1 + voltage_kv * 1e3 / ELECTRON_REST_ENERGY_EV
    t02 = z ** (2 / 3) / (k * BOHR_RADIUS_A) ** 2
    te2 = (13.5 * z / (4 * voltage_kv * 1e3)) ** 2
    el_total = 4 * math.pi * z ** (4 / 3) * (gamma / k) ** 2
    a = t02 - te2
    b = gamma / (k * k * BOHR_RADIUS_A * a)
    in_total = 4 * math.pi * z * b * b / a * (-3 * t02**2 + 4 * t02 * te2 - te2**2 + 2 * t02**2 * math.log(t02 / te2))
    if not math.isfinite(max_angle_rad):
        return el_total, in_total
    el = el_total * (1 - 1 / (1 + max_angle_rad**2 / t02))
    # inelastic: no closed form used here; integrate 2πθ dσ/dΩ on a log grid (the scales are θ_E ≪ θ₀)
    theta = np.concatenate([[0.0], np.geomspace(1e-3 * math.sqrt(te2), max(max_angle_rad, 2e-3 * math.sqrt(te2)),
                                                20000)])
    theta = theta[theta <= max_angle_rad] if max_angle_rad > 0 else np.zeros(1)
    th2 = theta**2
    d_in = 4 * z * gamma**2 / (k**4 * BOHR_RADIUS_A**2 * (th2 + te2) ** 2) * (1 - 1 / (1 + th2 / t02) ** 2)
    f = 2 * math.pi * theta * d_in
    inside = float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(theta))) if len(theta) > 1 else 0.0
    return el, inside


def temsim_ice_absorption_v(voltage_kv: float, aperture_semiangle_mrad: float | None) -> float:
    """The ice absorption potential (V) that makes difftem's ice lose, at zero frequency, what TEM-simulator's
    loses: the electrons water (O + 2 H) scatters *outside* the objective aperture, μ = n (σ_tot − σ(θ ≤ α)).
    (TEM-simulator returns the electrons scattered inside the aperture to the image, blurred; difftem's
    imaginary potential removes electrons, |t|² = exp(−2σ_int V t).) Without an aperture every scattered
    electron is lost and this is TEM-simulator's own ice absorption potential."""
    alpha = math.inf if aperture_semiangle_mrad is None else aperture_semiangle_mrad * 1e-3
    loss = 0.0
    for z, count in ((8, 1), (1, 2)):
        el_t, in_t = screened_cross_sections_a2(z, voltage_kv)
        el_a, in_a = (0.0, 0.0) if not math.isfinite(alpha) else screened_cross_sections_a2(z, voltage_kv, alpha)
        loss += count * (el_t + in_t - el_a - in_a)
    mu_per_a = ICE_MOLECULES_PER_A3 * max(loss, 0.0)
    return mu_per_a / (2 * interaction_constant(voltage_kv))


def carbon_loss_fraction(voltage_kv: float, aperture_semiangle_mrad: float | None) -> float:
    """Fraction of carbon's scattering (elastic + inelastic) that falls outside the objective aperture: the share
    of a particle's absorption that TEM-simulator does not return to the image."""
    if aperture_semiangle_mrad is None:
        return 1.0
    total = sum(screened_cross_sections_a2(6, voltage_kv))
    inside = sum(screened_cross_sections_a2(6, voltage_kv, aperture_semiangle_mrad * 1e-3))
    return max(0.0, 1.0 - inside / total)
