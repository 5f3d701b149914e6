"""The forward model as a differentiable function of its continuous parameters.

:func:`difftem.simulate` runs without autograd (speed, memory, map-represented copies).
:class:`DifferentiableSimulator` builds the same scene from the same config, with every atom of
every copy explicit, and evaluates config → exit wave → image → expected counts → detector image
with torch autograd on: each quantity in :data:`PARAMETERS` is a tensor that may require grad.

What each gradient is
- positions (x, y), B-factors, occupancies: exact derivatives of the band-limited slice potentials
  (the structure factor is evaluated analytically, no splatting); an atom's z only chooses its
  slice, so ∂/∂z is zero (the slice potential is a projection).
- ice thickness: the slab's uniform potential multiplies the wave by a constant in every slice,
  which commutes with propagation and transmission, so ∂ψ/∂T = iσ(U_ice + i U_abs) ψ exactly; which
  atoms displace ice (inside or outside the slab) and the slicing are held fixed.
- structured ice (``sample.ice_structure``, per-slice fields here): its amplitude, exactly (the fields are
  drawn once per seed and scaled by it); the thickness scales each chunk's field by the square root of its
  ice (the outer chunks change), with the slicing and the draws held fixed.
- optics (defocus, astigmatism and its angle, Cs, Cc, energy spread, illumination, phase shift),
  dose, MTF parameters, gain: through the closed-form transfer and detector expressions.
- DQE: only the noise depends on it; :meth:`DifferentiableSimulator.loss` carries it (exactly for the
  expected squared error, or through the shot-noise estimators of :mod:`difftem.learn.estimators`).
Multislice keeps one wave per slice and rebuilds each slice's potential in the backward pass
(per-slice checkpointing), so memory grows with the number of slices × one field, not with atoms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import MTFFormula, SimulationConfig
from ..core.errors import ConfigError
from ..forward import estimators as est
from ..forward.detector import Detector, MTFParams
from ..forward.exit_wave import windowed_exit_wave
from ..forward.ice import ViewIce
from ..forward.image import expose
from ..forward.multislice import plan_window
from ..forward.optics import Optics
from ..forward.potential import IceModel, SlicedPotential
from ..forward.resources import Component, ResourceEstimate
from ..forward.scene_build import SceneView, view_z_range
from .setup import Setup, check_estimate, prepare_config

#: Parameter name → unit and shape (N: the number of atoms of the whole scene).
PARAMETERS: dict[str, str] = {
    "positions_a": "Å, (N, 3), scene frame: origin at the field centre and the ice mid-plane, z along the beam",
    "b_iso_a2": "Å², (N,)",
    "occupancy": "(N,)",
    "ice_thickness_a": "Å",
    "ice_amplitude": "scale of the structured ice's fluctuations (sample.ice_structure.amplitude)",
    "defocus_a": "Å at the ice mid-plane, positive = underfocus",
    "astigmatism_a": "Å (defocus u − v)",
    "astigmatism_angle_deg": "degrees from x",
    "cs_mm": "mm",
    "cc_mm": "mm",
    "energy_spread_ev": "eV",
    "illumination_semiangle_mrad": "mrad",
    "phase_shift_deg": "degrees",
    "dose_e_per_a2": "e/Å²",
    "dqe": "at zero frequency, (0, 1]",
    "gain": "output units per electron",
    "mtf": "(a, b, c, alpha, beta) of MTF(ω) = a/(1+αω²) + b/(1+βω²) + c; only with detector.mtf given as a formula",
}

Estimator = Literal["mean", "expected", "surrogate", "surrogate_baseline", "reparameterised"]
ESTIMATORS = ("mean", "expected", "surrogate", "surrogate_baseline", "reparameterised")


@dataclass
class DifferentiableOutput:
    """Every stage's result, each carrying the graph back to the parameters."""

    exit_wave: torch.Tensor  # complex (H, W), at the bottom of the specimen
    intensity: torch.Tensor  # image intensity relative to the incident beam
    expected_counts: torch.Tensor  # electrons per pixel before the MTF (the shot noise's mean)
    noiseless: torch.Tensor  # expected detector image: MTF and gain applied
    mtf: object  # the MTF as applied (MTFParams of tensors, a measured curve, or None)


class DifferentiableSimulator:
    """``sim = DifferentiableSimulator(config)``; ``p = sim.parameters(requires_grad=["defocus_a"])``;
    ``out = sim(p)``; ``sim.loss(data, p).backward()``; then ``p["defocus_a"].grad``.

    ``precision``: "single" (complex64, the simulator's default) or "double" (complex128, for gradcheck
    and finite-difference comparisons). ``checkpoint``: rebuild each slice in the backward pass.
    """

    def __init__(self, config: SimulationConfig | dict | str | Path, *,
                 precision: Literal["single", "double"] = "single", checkpoint: bool = True):
        self.config = config = prepare_config(config)
        if config.tilt_series is not None:
            raise ConfigError("tilt_series: the differentiable simulator makes single micrographs; remove the "
                              "tilt_series section (or build one simulator per tilt)")
        if config.sample.support is not None:
            raise ConfigError("sample.support: the differentiable simulator does not model support films; set it "
                              "to null (fiducials are supported)")
        if config.sample.vesicles is not None:
            raise ConfigError("sample.vesicles: the differentiable simulator does not model vesicles; set it to null")
        if config.sample.membrane_sheets:
            raise ConfigError("sample.membrane_sheets: the differentiable simulator does not model sheets; remove them")
        if precision not in ("single", "double"):
            raise ConfigError(f"precision {precision!r}: choose single or double")
        self.rdtype = torch.float32 if precision == "single" else torch.float64
        self.cdtype = torch.complex64 if precision == "single" else torch.complex128
        self.checkpoint = checkpoint
        # the same scene, device, grid, beam constants, ice and scattering table as simulate()
        setup = Setup.build(config)
        scene = setup.scene
        maps = [t for t, p in enumerate(scene.types) if p.density is not None]
        if maps:  # its parameters are atoms: a map's copies would silently be left out
            raise ConfigError(f"sample.particles.{maps[0]}.map: the differentiable simulator works on atoms; map "
                              "particles are simulated by simulate() and simulate_tilt_series() only")
        self.device, self.grid = setup.device, setup.grid
        self.wavelength_a, self.sigma = setup.wavelength_a, setup.sigma
        self.ice_absorption_v, self.table = setup.ice.absorption_potential_v, setup.cache.table
        # the detector as simulate() builds it (a measured MTF curve is read once); a formula's parameters,
        # DQE and gain are replaced by the parameter tensors in each forward pass
        self._detector = Detector.from_config(config)
        self.n_atoms = setup.n_atoms
        # structured ice (None: off), drawn per slice chunk as in simulate(); thickness profiles are not modelled here
        self.ice_model = setup.ice_model if setup.ice_mode != "off" else None
        self.estimate = self._estimate(setup, checkpoint)
        check_estimate(self.estimate, config, self.device)
        atoms = scene.atoms_of(range(len(scene.types)))
        self.scene = scene
        self.atomic_number = torch.as_tensor(atoms.atomic_number, device=self.device)
        self._defaults = self._initial_values(atoms)

    @staticmethod
    def _estimate(setup: Setup, checkpoint: bool) -> ResourceEstimate:
        """simulate()'s model with every copy's atoms explicit, plus what autograd keeps: per slice with atoms
        the incoming wave and the slice's potential (checkpointed; without checkpoints every intermediate),
        and per atom its parameters and their gradients."""
        est = setup.estimate_of(["atoms"] * len(setup.scene.types))
        for c in est.components:
            if c.cause.endswith("on the atom path"):  # no maps here: every atom is a parameter
                c.fix = ("use fewer particles or a smaller detector.shape_px; difftem.simulate (maps, no gradients) "
                         "handles scenes of this size")
        shape, _ = setup.multislice_plan()
        px = (shape[0] * shape[1]) if shape else setup.grid.ny * setup.grid.nx
        dz = setup.config.simulation.slice_thickness_a
        lo, hi = view_z_range(setup.scene, SceneView(np.eye(3), setup.ice.thickness_a, None), setup.radii)
        crossing = sum(setup.scene.copies_of(t) * (2 * float(setup.radii[t]) / dz + 1)
                       for t in range(len(setup.scene.types)))
        busy = int(min(math.ceil((hi - lo) / dz), crossing))
        per_slice = (2 if checkpoint else 10) * 8 * px
        est.components.append(Component(
            f"the gradient graph: {busy:,} slices with atoms × {px:,} px (simulation.slice_thickness_a, "
            "detector.shape_px), and the parameters of every atom",
            resident_bytes=busy * per_slice + 40 * setup.n_atoms,
            fix="use thicker simulation.slice_thickness_a, a smaller detector.shape_px or fewer particles; "
                "difftem.simulate (maps, no gradients) handles scenes of this size"))
        return est

    # ------------------------------------------------------------------ parameters
    def _initial_values(self, atoms) -> dict[str, torch.Tensor]:
        c = self.config
        oc, det = c.optics, c.detector

        def scalar(v):
            return torch.tensor(float(v), dtype=torch.float64, device=self.device)

        values = {
            "positions_a": torch.as_tensor(atoms.positions_a, dtype=self.rdtype, device=self.device),
            "b_iso_a2": torch.as_tensor(atoms.b_iso_a2, dtype=self.rdtype, device=self.device),
            "occupancy": torch.as_tensor(atoms.occupancy, dtype=self.rdtype, device=self.device),
            "ice_thickness_a": scalar(c.sample.ice_thickness_nm * 10.0),
            "ice_amplitude": scalar(c.sample.ice_structure.amplitude),
            "defocus_a": scalar(oc.defocus_um * 1e4),
            "astigmatism_a": scalar(oc.astigmatism_um * 1e4),
            "astigmatism_angle_deg": scalar(oc.astigmatism_angle_deg),
            "cs_mm": scalar(oc.cs_mm),
            "cc_mm": scalar(oc.cc_mm),
            "energy_spread_ev": scalar(oc.energy_spread_ev),
            "illumination_semiangle_mrad": scalar(oc.illumination_semiangle_mrad),
            "phase_shift_deg": scalar(oc.phase_shift_deg),
            "dose_e_per_a2": scalar(c.beam.dose_e_per_a2),
            "dqe": scalar(det.dqe),
            "gain": scalar(det.gain),
        }
        if isinstance(det.mtf, MTFFormula):
            m = det.mtf
            values["mtf"] = torch.tensor([m.a, m.b, m.c, m.alpha, m.beta], dtype=torch.float64, device=self.device)
        return values

    def parameters(self, requires_grad: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """Fresh leaf tensors holding the config's values; those named in ``requires_grad`` require grad."""
        names = [requires_grad] if isinstance(requires_grad, str) else list(requires_grad)
        for n in names:
            self._check_name(n)
        return {k: v.detach().clone().requires_grad_(k in names) for k, v in self._defaults.items()}

    def _check_name(self, name: str) -> None:
        if name == "mtf" and "mtf" not in self._defaults:
            raise ConfigError("parameter mtf: the config's detector.mtf is not a formula (a, b, c, alpha, beta); "
                              "a measured curve or no MTF has no parameters to differentiate")
        if name not in PARAMETERS:
            raise ConfigError(f"unknown parameter {name!r}; choose from {sorted(PARAMETERS)}")

    def _resolve(self, params: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        p = dict(self._defaults)
        for k, v in (params or {}).items():
            self._check_name(k)
            ref = self._defaults[k]
            v = torch.as_tensor(v, device=self.device)
            if v.shape != ref.shape:
                raise ConfigError(f"parameter {k}: shape {tuple(v.shape)}, expected {tuple(ref.shape)} "
                                  f"({PARAMETERS[k]})")
            p[k] = v
        if float(p["ice_thickness_a"].detach()) < 0:
            raise ConfigError("parameter ice_thickness_a must be ≥ 0")
        if not 0 < float(p["dqe"].detach()) <= 1:
            raise ConfigError("parameter dqe must be in (0, 1]")
        return p

    # ------------------------------------------------------------------ forward
    def exit_wave(self, p: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """Exit wave over the field and the exit plane's z (Å below the ice mid-plane)."""
        c, sim = self.config, self.config.simulation
        thickness = p["ice_thickness_a"]
        ice = IceModel(float(thickness.detach()), c.sample.ice_mean_potential_v, self.ice_absorption_v)
        positions = p["positions_a"].to(self.rdtype)
        window = ice_fields = None
        if self.ice_model is not None:
            ice_fields = ViewIce(replace(self.ice_model, amplitude=p["ice_amplitude"].to(self.rdtype)), self.grid,
                                 ("view", 0), device=self.device, rdtype=self.rdtype, thickness_a=thickness)
        elif sim.window == "auto" and self.n_atoms:
            extent = float(positions[:, 2].detach().max() - positions[:, 2].detach().min()) + 2.0
            window = plan_window(self.grid, positions.detach(), max(extent, ice.thickness_a), self.wavelength_a,
                                 antialias_fraction=sim.antialias_fraction)
        # the scene's slicing, as simulate() uses (it widens itself if atoms move outside it)
        z_range = view_z_range(self.scene, SceneView(np.eye(3), ice.thickness_a, None))

        def build(grid):
            return SlicedPotential(self.atomic_number, positions, p["b_iso_a2"].to(self.rdtype),
                                   p["occupancy"].to(self.rdtype), grid or self.grid, self.table,
                                   sim.slice_thickness_a, ice, absorption_ratio=c.sample.absorption_ratio,
                                   builder=sim.builder, dtype=self.cdtype, z_range_a=z_range)

        ew = windowed_exit_wave(build, self.grid, window, self.wavelength_a, self.sigma, sim,
                                checkpoint=self.checkpoint, ice=ice_fields)
        wave = ew.wave
        # the ice's uniform transmission is a constant factor in every slice (it commutes with everything), so
        # the wave's dependence on the thickness is this factor, exactly (value 1 at the built thickness)
        u = complex(c.sample.ice_mean_potential_v, self.ice_absorption_v)
        wave = wave * torch.exp(1j * self.sigma * u * (thickness - thickness.detach())).to(self.cdtype)
        return wave, ew.exit_plane_a

    def _detector_of(self, p) -> Detector:
        mtf = MTFParams(*p["mtf"].unbind()) if "mtf" in p else self._detector.mtf
        return replace(self._detector, dqe=p["dqe"], gain=p["gain"], mtf=mtf)

    def __call__(self, params: Mapping[str, torch.Tensor] | None = None) -> DifferentiableOutput:
        return self._forward(self._resolve(params))

    def _forward(self, p: dict[str, torch.Tensor]) -> DifferentiableOutput:
        c = self.config
        wave, exit_plane_a = self.exit_wave(p)
        optics = Optics(defocus_a=p["defocus_a"], astigmatism_a=p["astigmatism_a"],
                        astigmatism_angle_deg=p["astigmatism_angle_deg"], cs_mm=p["cs_mm"], cc_mm=p["cc_mm"],
                        energy_spread_ev=p["energy_spread_ev"],
                        illumination_semiangle_mrad=p["illumination_semiangle_mrad"],
                        aperture_mrad=c.optics.aperture_mrad, phase_shift_deg=p["phase_shift_deg"],
                        beam_tilt_x_mrad=c.optics.beam_tilt_x_mrad, beam_tilt_y_mrad=c.optics.beam_tilt_y_mrad)
        detector = self._detector_of(p)
        image = expose(wave, self.grid, self.wavelength_a, c.beam.voltage_kv, optics, detector,
                       exit_plane_a=exit_plane_a, dose_e_per_a2=p["dose_e_per_a2"])
        return DifferentiableOutput(wave, image.intensity, image.expected_counts, image.noiseless, detector.mtf)

    def loss(self, data: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None, *,
             estimator: Estimator = "mean", generator: torch.Generator | None = None,
             n_samples: int = 4) -> torch.Tensor:
        """A squared-error loss between a detector image ``data`` (H, W) and the simulation; the scalar to
        call backward on.

        ``mean`` (default): against the noise-free detector image. Its expectation over the data's noise is
        the squared bias plus a constant, so it is minimised at the true parameters of the image's mean
        (structure, optics, ice, dose, gain): use it to fit.
        ``expected``: the exact expectation of the squared error against the simulated *noisy* image (what
        the seed paper differentiates), adding the model's own noise (gain²/DQE)·(h²)∗λ; minimising it also
        shrinks that noise (it favours blurring MTFs, low DQE-weighted counts), so it is for studying the
        estimators, not for fitting noise parameters. ``surrogate`` (the seed paper's score-function loss,
        image-paired), ``surrogate_baseline`` and ``reparameterised`` are stochastic estimates of the same
        expectation whose gradients are unbiased. Noise parameters (MTF, DQE) are identified by the noise's
        statistics: see ``difftem fit-mtf``.
        """
        if estimator not in ESTIMATORS:
            raise ConfigError(f"estimator {estimator!r}: choose {', '.join(ESTIMATORS)}")
        data = torch.as_tensor(data, device=self.device)
        if tuple(data.shape) != self.grid.shape_px:
            raise ConfigError(f"data: shape {tuple(data.shape)}, expected the detector's {self.grid.shape_px}")
        if not torch.isfinite(data).all():
            raise ConfigError("data contains NaN or infinite values")
        p = self._resolve(params)
        out = self._forward(p)
        data = data.to(out.expected_counts.dtype)
        if estimator == "mean":
            return torch.mean((data - out.noiseless) ** 2)
        kw = dict(normalize_dc=self.config.detector.normalize_mtf, dqe=p["dqe"], gain=p["gain"])
        rate = out.expected_counts.clamp_min(0)
        if estimator == "expected":
            return est.expected_mse(rate, data, out.mtf, **kw)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        if estimator == "surrogate":
            return est.surrogate_loss(rate, data, out.mtf, generator, n_samples, **kw).surrogate
        if estimator == "surrogate_baseline":
            return est.surrogate_loss_baseline(rate, data, out.mtf, generator, max(2, n_samples), **kw).surrogate
        return est.reparameterised_loss(rate, data, out.mtf, generator, n_samples, **kw).surrogate
