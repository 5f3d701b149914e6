"""Beam tilt: the axial coma in the lens against the first-order expansion of the wave aberration, the power
spectrum (Thon rings) unchanged while odd Fourier components turn, a simulated particle's image showing that
phase error, and rlnBeamTiltX/Y written where optics groups and tilts are."""

import math

import numpy as np
import pytest
import torch

import difftem
from difftem.config import config_from_dict
from difftem.core.fft import fft2, ifft2
from difftem.core.grid import Grid
from difftem.forward.beam import wavelength_a
from difftem.forward.optics import Optics, aberration_phase, coma_phase, image_intensity, transfer_function

LAM = wavelength_a(300.0)


class _Shifted:
    """A grid whose frequencies are another grid's moved by b (1/Å): χ evaluated at k + b."""

    def __init__(self, grid: Grid, by: float, bx: float):
        self.grid, self.by, self.bx = grid, by, bx

    def frequencies(self, device=None, dtype=torch.float64):
        ky, kx = self.grid.frequencies(device, dtype)
        return ky + self.by, kx + self.bx


def _chi_difference(grid, optics, beta_mrad):
    """χ(k + b) − χ(b) − χ(k), b = β/λ, by the lens's own χ (no tilt) evaluated at shifted frequencies."""
    bx, by = beta_mrad[0] * 1e-3 / LAM, beta_mrad[1] * 1e-3 / LAM
    chi = aberration_phase(grid, LAM, optics)
    chi_kb = aberration_phase(_Shifted(grid, by, bx), LAM, optics)
    chi_b = aberration_phase(_Shifted(Grid((1, 1), 1.0), by, bx), LAM, optics)[0, 0]
    return chi_kb - chi_b - chi


def _linear_fit(values, ky, kx):
    ky, kx = torch.broadcast_tensors(ky, kx)
    a = torch.stack([kx.flatten(), ky.flatten()], 1)
    coef = torch.linalg.lstsq(a, values.flatten()[:, None]).solution[:, 0]
    return coef, values - (a @ coef).reshape(values.shape)


@pytest.mark.parametrize("astigmatism_a", [0.0, 4000.0])
def test_coma_is_the_first_order_odd_term_of_the_shifted_aberration(astigmatism_a):
    """χ(k + β/λ) − χ(β/λ) − χ(k) = [a linear form in k: the image shift] + coma(k) + O(β²): with the coma
    −2π Cs λ² |k|² (k·β) taken away, what is left is linear in k up to an error that halves with β, and the
    linear part is the defocus's image shift 2π (D β)·k (D the defocus, astigmatic or not)."""
    grid = Grid((96, 96), 1.0)
    ky, kx = torch.broadcast_tensors(*grid.frequencies(None, torch.float64))
    optics = Optics(defocus_a=15000.0, astigmatism_a=astigmatism_a, astigmatism_angle_deg=30.0, cs_mm=2.7)
    errors = []
    for beta in ((0.04, -0.03), (0.02, -0.015)):
        diff = _chi_difference(grid, optics, beta)
        coma = coma_phase(ky, kx, LAM, 2.7, *beta)
        coef, rest = _linear_fit(diff - coma, ky, kx)  # what is left beyond the coma: linear in k, and O(β²)
        errors.append(float(rest.abs().max() / coma.abs().max()))
        # the linear part: 2π (D β)·k, D = Δf + ½Δf_a [[cos 2θ, sin 2θ], [sin 2θ, −cos 2θ]]
        t = math.radians(2 * 30.0)
        d = 15000.0 * np.eye(2) + 0.5 * astigmatism_a * np.array([[math.cos(t), math.sin(t)],
                                                                  [math.sin(t), -math.cos(t)]])
        shift_a = d @ (np.array(beta) * 1e-3)
        np.testing.assert_allclose(coef.numpy() / (2 * math.pi), shift_a, rtol=2e-3)
    print(f"relative error of the coma term at β and β/2: {errors}")
    # the O(β²) rest is Cs's defocus and astigmatism −π Cs λ (|k|²β² + 2(k·β)²): 0.5 % of the coma at 0.05 mrad
    assert errors[0] < 0.01 and errors[1] == pytest.approx(errors[0] / 2, rel=0.05)
    # and the lens with a beam tilt adds exactly this term
    tilted = Optics(defocus_a=15000.0, astigmatism_a=astigmatism_a, astigmatism_angle_deg=30.0, cs_mm=2.7,
                    beam_tilt_x_mrad=0.4, beam_tilt_y_mrad=-0.3)
    torch.testing.assert_close(aberration_phase(grid, LAM, tilted) - aberration_phase(grid, LAM, optics),
                               coma_phase(ky, kx, LAM, 2.7, 0.4, -0.3))


def test_beam_tilt_keeps_thon_rings_and_turns_odd_components():
    """A weak phase object imaged with and without 1.5 mrad of beam tilt: the same power at every frequency (to
    second order in the object), each Fourier component turned by coma(k), odd: −coma at −k."""
    n = 128
    grid = Grid((n, n), 1.0)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(n, n, generator=g, dtype=torch.float64)
    ky, kx = grid.frequencies(None, torch.float64)
    v = ifft2(fft2(v.to(torch.complex128)) * torch.exp(-(kx**2 + ky**2) / (2 * 0.15**2))).real
    wave = torch.exp(1j * 0.003 * v / v.std())  # 0.003 rad rms: weak phase
    base = dict(defocus_a=12000.0, cs_mm=2.7, cc_mm=0.0, energy_spread_ev=0.0)
    images = [image_intensity(wave, transfer_function(grid, LAM, 300.0, Optics(**base, beam_tilt_x_mrad=bx,
                                                                                 beam_tilt_y_mrad=by),
                                                      dtype=torch.complex128))
              for bx, by in ((0.0, 0.0), (1.5, -1.0))]
    f0, f1 = (fft2(i.to(torch.complex128)) for i in images)
    k = torch.sqrt(kx**2 + ky**2)
    sel = (k > 0.02) & (k < 0.35)
    band = sel & (f0.abs() > 0.05 * f0.abs()[sel].max())  # away from the CTF's zeros
    power_ratio = (f1.abs() ** 2)[band] / (f0.abs() ** 2)[band]
    ring_masks = [(k >= lo) & (k < lo + 0.02) for lo in np.arange(0.02, 0.35, 0.02)]
    rings = [float((f1.abs() ** 2)[m].sum() / (f0.abs() ** 2)[m].sum()) for m in ring_masks]
    print(f"power with / without beam tilt: {float(power_ratio.min()):.5f}-{float(power_ratio.max()):.5f} per "
          f"component, {min(rings):.5f}-{max(rings):.5f} per ring of 0.02/Å")
    # (the few % left per component near CTF zeros are the object's second-order term, |F⁻¹[HΦ]|²)
    assert float((power_ratio - 1).abs().max()) < 0.03 and max(abs(r - 1) for r in rings) < 1e-3
    coma = coma_phase(ky, kx, LAM, 2.7, 1.5, -1.0)
    turned = torch.angle(f1 * f0.conj() * torch.exp(-1j * coma))[band]
    print(f"phase of the cross spectrum minus coma: rms {float(turned.pow(2).mean().sqrt()):.4f} rad; coma up to "
          f"{float(coma[band].abs().max()):.2f} rad")
    assert float(turned.abs().max()) < 0.05 and float(coma[band].abs().max()) > 1.0
    neg = (-torch.arange(n)) % n  # the index of −k on the FFT layout
    inner = torch.ones(n, dtype=torch.bool)
    inner[n // 2] = False  # Nyquist: its own mirror
    torch.testing.assert_close(coma[neg][:, neg][inner][:, inner], -coma[inner][:, inner])  # odd


def _micrograph(beam_tilt, seed=2):
    d = {"seed": seed, "optics": {"defocus_um": 1.2, "beam_tilt_x_mrad": beam_tilt[0],
                                  "beam_tilt_y_mrad": beam_tilt[1]},
         "detector": {"shape_px": [128, 128], "pixel_size_a": 1.0, "noise": "none"},
         "sample": {"ice_thickness_nm": 10, "particles": [{"structure": "builtin:1ubi", "random": {"count": 5}}]}}
    return difftem.simulate(config_from_dict(d))


def test_simulated_particles_show_the_asymmetric_phase_error():
    """Round trip: a noise-free micrograph of known particles with beam tilt, against the same without: the cross
    spectrum's phase is the coma the config asks for (−2π Cs λ² |k|² (k·β)), reversed for −β."""
    r0, r1, r2 = (_micrograph(b) for b in ((0.0, 0.0), (2.0, 1.0), (-2.0, -1.0)))
    f0, f1, f2 = (fft2(r.noiseless.double().to(torch.complex128) - r.noiseless.double().mean()) for r in (r0, r1, r2))
    grid = Grid((128, 128), 1.0)
    ky, kx = grid.frequencies(None, torch.float64)
    k = torch.sqrt(kx**2 + ky**2)
    coma = coma_phase(ky, kx, r0.metadata["wavelength_a"], 2.7, 2.0, 1.0)
    w = (f0.abs() * f1.abs()) * ((k > 0.05) & (k < 0.33))
    residual = torch.angle(f1 * f0.conj() * torch.exp(-1j * coma))
    rms = float(torch.sqrt((w * residual**2).sum() / w.sum()))
    plain = float(torch.sqrt((w * torch.angle(f1 * f0.conj()) ** 2).sum() / w.sum()))
    reverse = torch.angle(f2 * f0.conj() * torch.exp(1j * coma))
    rms_rev = float(torch.sqrt((w * reverse**2).sum() / w.sum()))
    print(f"weighted rms phase error: {plain:.3f} rad without the coma model, {rms:.3f} with it; −β: {rms_rev:.3f}")
    assert plain > 0.5 and rms < 0.1 * plain and rms_rev < 0.1 * plain
    # the power (Thon rings) is the same
    bands = [(0.05, 0.15), (0.15, 0.25), (0.25, 0.33)]
    for lo, hi in bands:
        m = (k >= lo) & (k < hi)
        assert float((f1.abs() ** 2)[m].sum() / (f0.abs() ** 2)[m].sum()) == pytest.approx(1.0, abs=0.03)


def test_beam_tilt_is_written_to_the_optics_group_and_the_tilts(tmp_path):
    import starfile

    from difftem.simulate.output import run_and_write
    from difftem.simulate.particles import particles_from_result, write_particles

    d = {"seed": 1, "optics": {"beam_tilt_x_mrad": 0.3, "beam_tilt_y_mrad": -0.2},
         "detector": {"shape_px": [64, 64], "pixel_size_a": 1.0},
         "sample": {"ice_thickness_nm": 10, "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]]}]}}
    r = difftem.simulate(config_from_dict(d))
    write_particles(particles_from_result(r, box_px=32), tmp_path / "spa")
    optics = starfile.read(tmp_path / "spa" / "particles.star", always_dict=True)["optics"]
    assert float(optics["rlnBeamTiltX"][0]) == pytest.approx(0.3)
    assert float(optics["rlnBeamTiltY"][0]) == pytest.approx(-0.2)
    d["tilt_series"] = {"scheme": "uniform", "min_deg": -20, "max_deg": 20, "step_deg": 20,
                        "errors": {"beam_tilt_sigma_mrad": 0.5, "seed": 4}}
    run = run_and_write(config_from_dict(d), tmp_path / "ts")
    tilts = starfile.read(tmp_path / "ts" / "tilts.star")
    err = tilts[["difftemErrorBeamTiltXMrad", "difftemErrorBeamTiltYMrad"]].to_numpy()
    assert np.all(err != 0) and np.abs(err).max() < 3
    np.testing.assert_allclose(tilts["rlnBeamTiltX"], 0.3 + err[:, 0], atol=1e-6)
    np.testing.assert_allclose(tilts["rlnBeamTiltY"], -0.2 + err[:, 1], atol=1e-6)
    assert run["config"]["tilt_series"]["errors"]["beam_tilt_sigma_mrad"] == 0.5


def test_beam_tilt_reaches_the_relion5_particles_optics_and_tilt_series(tmp_path):
    """The RELION-5 set of a series with beam tilt: the optics group of particles.star carries the optics' beam
    tilt as rlnBeamTiltX/Y (mrad; RELION's observation model reads it there), the tilt-series STAR each tilt's
    total; from a run folder and from the in-memory result alike. Without beam tilt no such column appears."""
    import starfile

    from difftem.io.relion5 import read_optics_beam_tilt
    from difftem.simulate.export import export_tilt_series
    from difftem.simulate.output import run_and_write

    d = {"seed": 1, "optics": {"beam_tilt_x_mrad": 0.3, "beam_tilt_y_mrad": -0.2},
         "detector": {"shape_px": [48, 48], "pixel_size_a": 1.5},
         "sample": {"ice_thickness_nm": 8, "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]]}]},
         "tilt_series": {"scheme": "uniform", "min_deg": -20, "max_deg": 20, "step_deg": 20,
                         "errors": {"beam_tilt_sigma_mrad": 0.5, "seed": 4}}}
    run_and_write(config_from_dict(d), tmp_path / "ts")
    truth = starfile.read(tmp_path / "ts" / "tilts.star")
    export_tilt_series(tmp_path / "ts", tmp_path / "exp", "relion5")
    r5 = tmp_path / "exp" / "relion5"
    blocks = starfile.read(r5 / "particles.star", always_dict=True)
    assert float(blocks["optics"]["rlnBeamTiltX"][0]) == pytest.approx(0.3)
    assert float(blocks["optics"]["rlnBeamTiltY"][0]) == pytest.approx(-0.2)
    assert "rlnBeamTiltX" not in blocks["particles"].columns
    assert read_optics_beam_tilt(r5 / "particles.star") == pytest.approx((0.3, -0.2))
    series = next(iter(starfile.read(r5 / "tilt_series" / "ts.star", always_dict=True).values()))
    np.testing.assert_allclose(series["rlnBeamTiltX"], truth["rlnBeamTiltX"], atol=1e-6)
    np.testing.assert_allclose(series["rlnBeamTiltY"], truth["rlnBeamTiltY"], atol=1e-6)
    assert np.ptp(series["rlnBeamTiltX"].to_numpy()) > 0  # the per-tilt errors, not one value

    # the in-memory result exports the same
    export_tilt_series(difftem.simulate_tilt_series(config_from_dict(d)), tmp_path / "exp2", "relion5", name="ts")
    series2 = next(iter(starfile.read(tmp_path / "exp2" / "relion5" / "tilt_series" / "ts.star",
                                      always_dict=True).values()))
    np.testing.assert_allclose(series2["rlnBeamTiltX"], truth["rlnBeamTiltX"], atol=1e-6)
    assert read_optics_beam_tilt(tmp_path / "exp2" / "relion5" / "particles.star") == pytest.approx((0.3, -0.2))

    # no beam tilt: no beam-tilt columns (the files as before)
    d2 = {**d, "optics": {}, "tilt_series": {k: v for k, v in d["tilt_series"].items() if k != "errors"}}
    run_and_write(config_from_dict(d2), tmp_path / "ts0")
    export_tilt_series(tmp_path / "ts0", tmp_path / "exp0", "relion5")
    assert read_optics_beam_tilt(tmp_path / "exp0" / "relion5" / "particles.star") is None
