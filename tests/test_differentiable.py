"""The config-level differentiable simulator: same images as simulate(), correct gradients for every
continuous parameter (gradcheck in float64), the ice-thickness derivative against its analytic value,
shot-noise estimators against the exact expected loss, and a small inverse problem."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from difftem import DifferentiableSimulator, simulate
from difftem.core.errors import ConfigError
from difftem.forward.beam import interaction_constant
from difftem.forward.detector import MTFParams, apply_mtf
from difftem.simulate.differentiable import PARAMETERS

TMV_MTF = {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10.0, "beta": 40.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops (conftest.one_thread)


def write_pdb(path, rows):
    """rows: (element, x, y, z, B) → a minimal PDB file."""
    lines = []
    for i, (el, x, y, z, b) in enumerate(rows, 1):
        lines.append(f"ATOM  {i:5d} {el:<3s}  GLY A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{b:6.2f}"
                     f"          {el:>2s}")
    path.write_text("\n".join(lines + ["END"]) + "\n")
    return path


def tiny_config(tmp_path, **detector):
    pdb = write_pdb(tmp_path / "three.pdb", [("C", 0.4, -0.7, -6.0, 12.0), ("N", 1.6, 0.9, 0.0, 20.0),
                                             ("O", -1.2, 0.3, 5.0, 15.0)])
    return {"seed": 3,
            "beam": {"voltage_kv": 300, "dose_e_per_a2": 50.0},
            "detector": {"shape_px": [24, 24], "pixel_size_a": 0.5, "mtf": TMV_MTF, "dqe": 0.8, "gain": 1.5,
                         **detector},
            "optics": {"defocus_um": 0.5, "astigmatism_um": 0.05, "astigmatism_angle_deg": 30.0,
                       "phase_shift_deg": 10.0, "illumination_semiangle_mrad": 0.5},
            "sample": {"ice_thickness_nm": 0.6, "particles": [{"structure": str(pdb), "positions_a": [[0, 0, 0]],
                                                               "representation": "atoms"}]}}


def test_images_match_simulate():
    cfg = {"seed": 1, "detector": {"shape_px": [64, 64], "pixel_size_a": 1.0, "mtf": TMV_MTF, "noise": "none"},
           "simulation": {"window": "off"}, "optics": {"defocus_um": 1.0, "astigmatism_um": 0.1},
           "sample": {"ice_thickness_nm": 5, "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]]}]}}
    ref = simulate(cfg)
    out = DifferentiableSimulator(cfg)()
    scale = float(ref.noiseless.abs().max())
    assert float((out.noiseless.detach() - ref.noiseless).abs().max()) < 1e-5 * scale
    assert float((out.intensity.detach() - ref.intensity).abs().max()) < 1e-5


def test_gradcheck_every_parameter(tmp_path):
    sim = DifferentiableSimulator(tiny_config(tmp_path), precision="double")
    p0 = sim.parameters()
    # atoms well away from slice boundaries and from the ice surfaces (|z| = 3 Å), so the
    # finite differences do not move an atom between slices or in/out of the ice
    p0["positions_a"] = torch.tensor([[0.4, -0.7, -5.1], [1.6, 0.9, 0.1], [-1.2, 0.3, 5.2]], dtype=torch.float64)
    names = sorted(PARAMETERS)
    weights = torch.randn((5, 24 * 24), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def f(*tensors):
        out = sim(dict(zip(names, tensors, strict=True)))
        return weights @ out.noiseless.reshape(-1)

    inputs = tuple(p0[n].detach().clone().requires_grad_() for n in names)
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)
    # every parameter of the noise-free image has a non-zero gradient (DQE enters only the noise)
    grads = torch.autograd.grad(f(*inputs).sum(), inputs, allow_unused=True)
    for n, g in zip(names, grads, strict=True):
        if n == "dqe":
            assert g is None or float(g.abs().max()) == 0
        else:
            assert g is not None and float(g.abs().max()) > 0, n


def test_ice_thickness_gradient_is_the_absorption_law(tmp_path):
    """Mean intensity ∝ exp(−2σ U_abs T): d ln<I>/dT = −2σ U_abs, exactly (the continuum: no structured ice)."""
    cfg = tiny_config(tmp_path)
    cfg["sample"]["ice_structure"] = {"mode": "off"}
    sim = DifferentiableSimulator(cfg, precision="double")
    p = sim.parameters(requires_grad=["ice_thickness_a"])
    mean = sim(p).intensity.mean()
    mean.backward()
    expected = -2 * interaction_constant(300) * sim.ice_absorption_v
    assert float(p["ice_thickness_a"].grad) / float(mean.detach()) == pytest.approx(expected, rel=1e-9)
    # and the value follows the same law between two built thicknesses (the model, not only its derivative;
    # 1.5 Å more ice leaves every atom on its side of the ice surfaces)
    thicker = sim({"ice_thickness_a": p["ice_thickness_a"].detach() + 1.5}).intensity.mean()
    assert math.log(float(thicker) / float(mean.detach())) == pytest.approx(1.5 * expected, rel=1e-6)


@pytest.mark.parametrize("estimator", ["reparameterised", "surrogate_baseline"])
def test_noisy_loss_gradients_match_the_expected_loss(tmp_path, estimator):
    sim = DifferentiableSimulator(tiny_config(tmp_path), precision="double")
    names = ["defocus_a", "dose_e_per_a2", "dqe", "gain"]
    truth = sim.parameters()
    truth["defocus_a"] = truth["defocus_a"] + 300.0
    with torch.no_grad():
        data = sim(truth).noiseless
    p = sim.parameters(requires_grad=names)
    sim.loss(data, p, estimator="expected").backward()
    exact = torch.stack([p[n].grad for n in names])
    generator = torch.Generator().manual_seed(5)
    samples = []
    for _ in range(16):
        p = sim.parameters(requires_grad=names)
        sim.loss(data, p, estimator=estimator, generator=generator, n_samples=64).backward()
        samples.append(torch.stack([p[n].grad for n in names]))
    s = torch.stack(samples)
    z = (s.mean(0) - exact) / (s.std(0) / len(s) ** 0.5)
    assert float(exact.abs().min()) > 0
    assert float(z.abs().max()) < 4.5


def test_fit_defocus_and_ice_thickness_from_a_noisy_image():
    """Ubiquitin in 10 nm ice, 48² at 1.5 Å/px, one noisy detector image (DQE 0.8, gain 1.5, TMV MTF):
    minimising the squared error to the noise-free image recovers defocus and ice thickness from a start
    150 Å and 20 Å off."""
    cfg = {"seed": 3, "beam": {"dose_e_per_a2": 2000.0},
           "detector": {"shape_px": [48, 48], "pixel_size_a": 1.5, "mtf": TMV_MTF, "dqe": 0.8, "gain": 1.5},
           "optics": {"defocus_um": 1.0}, "simulation": {"slice_thickness_a": 5.0},
           "sample": {"ice_thickness_nm": 10, "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]]}]}}
    sim = DifferentiableSimulator(cfg, precision="double")
    truth = sim.parameters()
    truth["defocus_a"], truth["ice_thickness_a"] = truth["defocus_a"] + 150.0, truth["ice_thickness_a"] + 20.0
    with torch.no_grad():
        expected = sim(truth).expected_counts
        counts = torch.poisson(expected * 0.8, generator=torch.Generator().manual_seed(2)) / 0.8
        data = apply_mtf(counts, MTFParams(**TMV_MTF), True) * 1.5
    start = sim.parameters()
    # optimise offsets in natural units (100 Å of defocus, 10 Å of ice) so the problem is well scaled
    u = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([u], lr=1, max_iter=60, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def params():
        return {"defocus_a": start["defocus_a"] + 100.0 * u[0], "ice_thickness_a": start["ice_thickness_a"] + 10 * u[1]}

    def closure():
        opt.zero_grad()
        loss = sim.loss(data, params())
        loss.backward()
        return loss

    opt.step(closure)
    fit = {k: float(v.detach()) for k, v in params().items()}
    assert fit["defocus_a"] == pytest.approx(float(truth["defocus_a"]), abs=100.0)
    assert fit["ice_thickness_a"] == pytest.approx(float(truth["ice_thickness_a"]), abs=1.0)
    assert abs(fit["defocus_a"] - float(truth["defocus_a"])) < 150.0 / 2  # closer than the start


def test_bad_parameters_are_clear_errors(tmp_path):
    sim = DifferentiableSimulator(tiny_config(tmp_path, mtf=None))
    with pytest.raises(ConfigError, match="unknown parameter 'defocus'"):
        sim.parameters(requires_grad=["defocus"])
    with pytest.raises(ConfigError, match="parameter mtf"):
        sim.parameters(requires_grad=["mtf"])
    with pytest.raises(ConfigError, match=r"positions_a: shape \(2, 3\)"):
        sim({"positions_a": torch.zeros(2, 3)})
    with pytest.raises(ConfigError, match="dqe"):
        sim({"dqe": torch.tensor(1.5)})
    with pytest.raises(ConfigError, match="data: shape"):
        sim.loss(torch.zeros(5, 5))
    with pytest.raises(ConfigError, match="NaN"):
        sim.loss(torch.full((24, 24), float("nan")))
    with pytest.raises(ConfigError, match="estimator"):
        sim.loss(torch.zeros(24, 24), estimator="magic")
