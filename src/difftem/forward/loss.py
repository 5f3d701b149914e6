"""Electron loss in ice from its causes (``optics.electron_loss.model: explicit``).

The default (``absorption``) keeps TEM-simulator's ice absorption potential (0.7591 V at 300 kV: an attenuation
length of ~100 nm, every electron scattered by the ice counted as lost). The explicit model instead follows each
electron scattered by the ice along the beam path t (t = T / cos θ at tilt θ):

- **elastic, outside the objective aperture** (k > α/λ): lost. Its rate per Å is the structured ice's own
  spectrum, μ_el(k_c) = σ² ∫_{k>k_c} P₃(k) d²k (σ the interaction constant; P₃ from :mod:`difftem.forward.ice`:
  the fraction of the beam the fluctuations scatter beyond k_c per Å of ice, first order). With structured ice on,
  scattering inside the multislice's band is simulated, so only what lies beyond both the band and the aperture
  is removed; without an aperture nothing elastic is lost (the detector collects every angle).
- **inelastic** (plasmons, ionisation): a fraction 1 − exp(−t/Λ_in) of the beam. Λ_in = 395 nm at 300 kV, measured
  on a Titan Krios with an energy filter (Rice et al., J. Struct. Biol. 204, 38 (2018); the value Leginon's ice
  thickness tool uses), scaled to other voltages with the energy dependence of Malis, Cheng & Egerton
  (J. Electron Microsc. Tech. 8, 193 (1988)): Λ ∝ F(E₀) E₀ / ln(2βE₀/E_m), F = (1 + E₀/1022)/(1 + E₀/511)²
  (E₀ in keV), β = 10 mrad, E_m = 7.6 Z_eff^0.36 eV with Z_eff = 7.42 for water (about 340 nm at 200 kV).
  With an energy filter the slit passes only the losses below half its width: the fraction
  :func:`slit_pass_fraction` of a Drude plasmon loss function of ice (E_p = 21 eV, Γ = 13 eV, no losses below the
  8 eV band gap) — about 3 % of the inelastic electrons for a 20 eV slit. Without a filter every inelastic electron
  reaches the detector; its image is the elastic image low-passed (chromatic defocus spread and delocalisation
  wipe out everything but low resolution), modelled as a Gaussian of ``inelastic_blur_a``.

So the image intensity is I = e^{−μ_el t} [e^{−t/Λ} I_el + (1 − e^{−t/Λ}) f G∗I_el], f = 1 without a filter, and
the mean transmitted fraction at uniform ice e^{−μ_el t} [e^{−t/Λ} + (1 − e^{−t/Λ}) f].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.fft import filter2
from ..core.grid import Grid
from .beam import interaction_constant, wavelength_a
from .ice import ice_power_spectrum_3d
from .scattering import ScatteringTable

ICE_INELASTIC_MFP_300KV_NM = 395.0
MALIS_BETA_MRAD = 10.0
WATER_Z_EFF = 7.42
PLASMON_EV, PLASMON_WIDTH_EV, BAND_GAP_EV = 21.0, 13.0, 8.0


def inelastic_mean_free_path_nm(voltage_kv: float) -> float:
    """Λ_in of vitreous ice (nm) at ``voltage_kv``: 395 nm at 300 kV, Malis et al.'s energy scaling elsewhere."""
    e_m = 7.6 * WATER_Z_EFF**0.36

    def shape(e0_kev: float) -> float:
        f = (1 + e0_kev / 1022) / (1 + e0_kev / 511) ** 2
        return f * e0_kev / math.log(2 * MALIS_BETA_MRAD * e0_kev / e_m)

    return ICE_INELASTIC_MFP_300KV_NM * shape(voltage_kv) / shape(300.0)


def slit_pass_fraction(slit_width_ev: float, *, n: int = 4000) -> float:
    """Share of single inelastic losses below slit_width/2 (a slit centred on the zero-loss peak), from the Drude
    loss function E Γ E_p² / ((E² − E_p²)² + (E Γ)²) above the band gap, up to 200 eV."""
    e = np.linspace(BAND_GAP_EV, 200.0, n)
    s = e * PLASMON_WIDTH_EV * PLASMON_EV**2 / ((e**2 - PLASMON_EV**2) ** 2 + (e * PLASMON_WIDTH_EV) ** 2)
    c = np.concatenate([[0.0], np.cumsum(0.5 * (s[1:] + s[:-1]) * np.diff(e))])
    return float(np.interp(slit_width_ev / 2, e, c) / c[-1])


def elastic_loss_per_a(voltage_kv: float, k_cut_per_a: float, table: ScatteringTable, *, amplitude: float = 1.0,
                       k_max_per_a: float = 8.0, n: int = 8000) -> float:
    """μ_el (1/Å): the fraction of the beam the ice scatters elastically beyond ``k_cut_per_a`` per Å of path,
    σ² ∫_{k>k_c} P₃(k) 2πk dk (first order; P₃ of :mod:`difftem.forward.ice`)."""
    if k_cut_per_a >= k_max_per_a:
        return 0.0
    k = torch.linspace(k_cut_per_a, k_max_per_a, n, dtype=torch.float64)
    f = ice_power_spectrum_3d(k * k, table) * 2 * math.pi * k
    return float(interaction_constant(voltage_kv) ** 2 * amplitude**2 * torch.trapezoid(f, k))


@dataclass(frozen=True)
class ElectronLoss:
    """The explicit loss of one view: factors for the path through the ice and the inelastic image's blur."""

    elastic_per_a: float  # μ_el beyond the aperture (and the simulated band), 1/Å
    inelastic_mfp_a: float
    pass_fraction: float  # share of inelastic electrons reaching the detector (1: no filter)
    blur_a: float

    @classmethod
    def from_config(cls, loss_cfg, voltage_kv: float, aperture_mrad: float | None, table: ScatteringTable, *,
                    band_per_a: float | None = None, amplitude: float = 1.0) -> ElectronLoss:
        """``band_per_a``: the multislice band (1/Å) when structured ice is on (its scattering is simulated)."""
        lam = wavelength_a(voltage_kv)
        if aperture_mrad is None:
            mu = 0.0
        else:
            k_cut = aperture_mrad * 1e-3 / lam
            if band_per_a is not None:
                k_cut = max(k_cut, band_per_a)
            mu = elastic_loss_per_a(voltage_kv, k_cut, table, amplitude=amplitude)
        mfp_nm = loss_cfg.inelastic_mean_free_path_nm or inelastic_mean_free_path_nm(voltage_kv)
        passed = slit_pass_fraction(loss_cfg.slit_width_ev) if loss_cfg.energy_filter else 1.0
        return cls(mu, mfp_nm * 10.0, passed, loss_cfg.inelastic_blur_a)

    def transmitted_fraction(self, path_a: float) -> float:
        """The mean intensity through ``path_a`` Å of uniform ice (vacuum = 1)."""
        zl = math.exp(-path_a / self.inelastic_mfp_a)
        return math.exp(-self.elastic_per_a * path_a) * (zl + (1 - zl) * self.pass_fraction)

    def apply(self, intensity: torch.Tensor, grid: Grid, path_a) -> torch.Tensor:
        """The detected intensity from the elastic image ``intensity`` (H, W) through ``path_a`` Å of ice (a number,
        or an (H, W) map of each pixel's path through a thickness profile)."""
        path = torch.as_tensor(path_a, dtype=torch.float64, device=intensity.device)
        zl = torch.exp(-path / self.inelastic_mfp_a).to(intensity.dtype)
        out = zl * intensity
        if self.pass_fraction > 0 and bool((zl < 1).any()):
            k2 = grid.k2(intensity.device, torch.float64)
            g = torch.exp(-2 * math.pi**2 * self.blur_a**2 * k2) / (grid.ny * grid.nx)
            blurred = filter2(intensity.to(torch.complex128 if intensity.dtype == torch.float64
                                           else torch.complex64), g.to(intensity.dtype)).real
            out = out + (1 - zl) * self.pass_fraction * blurred
        return out * torch.exp(-self.elastic_per_a * path).to(intensity.dtype)
