import math

import pytest

from difftem.forward.beam import POTENTIAL_CONSTANT_V_A2, interaction_constant, wavelength_a

# Independent route: λ = hc / sqrt(E (E + 2 mc²)) with E in eV, hc and mc² from CODATA in eV units;
# σ = (2π / (λ V)) (mc² + eV) / (2 mc² + eV)  (Kirkland, Advanced Computing in EM, eq. 5.6).
HC_EV_A = 12398.419843320026
MC2_EV = 510998.95000


def ref_wavelength(kv):
    e = kv * 1e3
    return HC_EV_A / math.sqrt(e * (e + 2 * MC2_EV))


def ref_sigma(kv):
    e = kv * 1e3
    return 2 * math.pi / (ref_wavelength(kv) * e) * (MC2_EV + e) / (2 * MC2_EV + e)


@pytest.mark.parametrize("kv", [100, 200, 300])
def test_wavelength_and_sigma_five_digits(kv):
    assert wavelength_a(kv) == pytest.approx(ref_wavelength(kv), rel=5e-6)
    assert interaction_constant(kv) == pytest.approx(ref_sigma(kv), rel=5e-6)


def test_published_values():
    # PHYSICS.md / Kirkland table values
    assert wavelength_a(200) == pytest.approx(0.025079, abs=1e-6)
    assert wavelength_a(300) == pytest.approx(0.019687, abs=1e-6)
    assert interaction_constant(200) == pytest.approx(7.29e-4, rel=2e-3)
    assert interaction_constant(300) == pytest.approx(6.53e-4, rel=2e-3)
    assert pytest.approx(47.878, abs=1e-3) == POTENTIAL_CONSTANT_V_A2


def test_bad_voltage():
    with pytest.raises(ValueError, match="voltage_kv"):
        wavelength_a(-1)
