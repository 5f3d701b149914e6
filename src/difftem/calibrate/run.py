"""`difftem calibrate`: from real micrographs to a simulation config that reproduces their statistics.

Per micrograph: the CTF (fit-ctf), the detector (noise level, MTF shape, gain for a chosen DQE: `stats.py`), the
dose and ice thickness (tied through the simulator's own transmission), written as ``<name>_calibrated.yaml``; then
the calibrated config is simulated and compared with the data (power spectra per band, Thon rings, intensity
histograms, crops side by side, a real-vs-simulated classifier), in ``<name>_report.png`` and ``calibration.json``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import MAX_DOSE_E_PER_A2, config_from_dict
from ..core.errors import ArgumentError
from ..io.files import staging_folder, write_json, write_text
from ..io.tlt import angles_beside, read_mrc_checked, tilt_axis_beside
from ..learn.ctf_fit import PIXEL_SIZE_RANGE_A, CTFFit, fit_ctf
from ..learn.mtf_fit import noise_power_spectrum
from ..simulate.output import prepare_out
from ..simulate.pipeline import simulate
from .ctf_run import input_stem
from .likeness import band_ratios, classifier_accuracy, grid_crops, ice_ring_excess, radial_bands
from .plots import report_figure
from .spectrum import SpectrumFit, fit_spectrum
from .stats import (
    DetectorStats,
    detector_statistics,
    mtf_config,
    thickness_from_transmission,
    tilt_doses,
)

#: Thickness probe: the simulator's transmission is measured at this ice thickness (nm) on a small field.
PROBE_THICKNESS_NM = 100.0
PROBE_PX = 64


def calibrated_config(fit: CTFFit, stats: DetectorStats, *, shape_px: tuple[int, int], dqe: float,
                      dose_e_per_a2: float, ice_thickness_nm: float, energy_filter: bool, seed: int = 0,
                      slice_thickness_a: float = 10.0, particles: list[dict] | None = None) -> dict:
    """The simulation config (a dict of the YAML's shape) the fitted values describe: structured ice of the fitted
    thickness, electron loss from its causes (with or without an energy filter). The optics' envelopes and Cc keep
    the defaults: a single micrograph does not separate them from the specimen's spectrum."""
    gain, _ = stats.detector(dqe)
    return {
        "seed": seed,
        "beam": {"voltage_kv": fit.voltage_kv, "dose_e_per_a2": round(dose_e_per_a2, 4)},
        "optics": {"defocus_um": round(fit.defocus_mean_a / 1e4, 5),
                   "astigmatism_um": round(fit.astigmatism_a / 1e4, 5),
                   "astigmatism_angle_deg": round(fit.defocus_angle_deg, 3), "cs_mm": fit.cs_mm,
                   "phase_shift_deg": round(fit.phase_shift_deg, 3),
                   "electron_loss": {"model": "explicit", "energy_filter": energy_filter}},
        "detector": {"shape_px": list(shape_px), "pixel_size_a": round(fit.pixel_size_a, 6), "noise": "poisson",
                     "dqe": dqe, "gain": round(gain, 6), "mtf": mtf_config(stats.mtf)},
        "sample": {"ice_thickness_nm": round(ice_thickness_nm, 3), "ice_structure": {"mode": "slices"},
                   "particles": copy.deepcopy(particles or [])},
        "simulation": {"slice_thickness_a": slice_thickness_a},
    }


def transmission(config: dict, thickness_nm: float) -> float:
    """Mean image intensity (vacuum = 1) of the config's ice alone at ``thickness_nm``, noise-free, in focus, on
    a small field: the loss the simulator applies, whatever its model."""
    probe = copy.deepcopy(config)
    probe["detector"] = {"shape_px": [PROBE_PX, PROBE_PX], "pixel_size_a": config["detector"]["pixel_size_a"],
                         "noise": "none", "dqe": 1.0, "gain": 1.0, "model": "perfect"}
    probe["sample"] = {**probe["sample"], "ice_thickness_nm": thickness_nm, "particles": [],
                       "ice_structure": {"mode": "off"}}  # the mean loss only: the ring's power is not the point
    probe["optics"] = {**probe["optics"], "defocus_um": 0.0, "astigmatism_um": 0.0}
    result = simulate(config_from_dict(probe, "thickness probe"))
    return float(result.intensity.mean())


def attenuation_length_nm(config: dict) -> float:
    """The ice's Beer–Lambert attenuation length (nm) under the config's loss model; infinite when the ice loses no
    electrons (no energy filter and nothing outside the aperture: every inelastic electron reaches the image)."""
    kept = transmission(config, PROBE_THICKNESS_NM)
    # the probe's mean intensity is float32: a lossless ice gives 1 to within a few 1e-8 (|ψ|² of unit phasors), not
    # exactly; 1e-6 of loss over the probe would be an attenuation length of 10⁸ nm, no loss at all
    return -PROBE_THICKNESS_NM / math.log(kept) if kept < 1 - 1e-6 else math.inf


#: doses (e/Å²) of real exposures, from one tilt of a series (~1) to a long single-particle exposure (~100): a dose read
#: from the noise outside this range says the image's values are not counts times one gain
PLAUSIBLE_DOSE_E_PER_A2 = (0.2, 200.0)


def dose_warnings(dose_e_per_a2: float, nominal: bool) -> list[str]:
    """A warning when the dose read from an image's noise (not ``nominal``: given by the user) is implausible."""
    lo, hi = PLAUSIBLE_DOSE_E_PER_A2
    if nominal or lo <= dose_e_per_a2 <= hi:
        return []
    return [f"the dose read from the image's noise, {dose_e_per_a2:.3g} e/Å², is outside the {lo:g}–{hi:g} e/Å² of "
            "real exposures: its values are not electron counts times one gain (scaled or normalised, summed from "
            "aligned or dose-weighted frames, or a camera's correlated noise); give the nominal dose (e/Å²) to fix "
            "the dose and the ice thickness"]


def _counts_to_dose(counts_px: float, px: float, thickness_nm: float, length_nm: float) -> float:
    return counts_px / (px * px * math.exp(-thickness_nm / length_nm))


def _simulate(config: dict) -> np.ndarray:
    return simulate(config_from_dict(config, "calibrated config")).micrograph.numpy()


#: Bands (cycles/px) where the ice amplitude is fitted when no particles are: above the particles' power.
ICE_FIT_FROM_PER_PX = 0.05


def fit_background(real_crops: torch.Tensor, config: dict, crop_px: int, stats: DetectorStats, *,
                   fit_mtf: bool) -> tuple[float, int | None, SpectrumFit, dict]:
    """The structured ice's amplitude a (and, with particles, their count), with the noise level and (``fit_mtf``)
    the MTF's shape, that best match the data's power spectrum (:mod:`.spectrum`): the ice's and the particles'
    power come from noise-free simulations with a perfect detector. The amplitude absorbs what the model does not
    know apart from the ice: the detector's signal transfer (a CCD passes less signal than its noise at 3.7 Å) and
    the structure factor's height. Returns (a, count or None, the fit, the parts' band ratios)."""
    parts = config["sample"]["particles"]

    def signal(amplitude: float, with_particles: bool) -> torch.Tensor:
        cfg = copy.deepcopy(config)
        cfg["detector"] = {**cfg["detector"], "noise": "none", "mtf": None, "model": "perfect"}
        cfg["sample"]["ice_structure"] = {**cfg["sample"]["ice_structure"], "amplitude": amplitude}
        cfg["sample"]["particles"] = parts if with_particles else []
        return noise_power_spectrum(grid_crops(_simulate(cfg), crop_px), detrend="plane")

    columns = [signal(1.0, False)] + ([signal(0.0, True)] if parts else [])
    real_nps = noise_power_spectrum(real_crops, detrend="plane")
    fit = fit_spectrum(real_nps, columns, noise_start=stats.noise_power_zero, mtf_start=stats.mtf, fit_mtf=fit_mtf,
                       from_per_px=0.0 if parts else ICE_FIT_FROM_PER_PX)
    real = radial_bands(real_nps)
    count = None
    if parts:
        count = int(round(fit.scales[1] * sum(p["random"]["count"] for p in parts)))
    return math.sqrt(min(fit.scales[0], 1e4)), count, fit, {
        "real_power": real.tolist(), "spectrum_fit": fit.as_dict(),
        "ice_at_amplitude_1_ratio": (radial_bands(columns[0]) / real).tolist(),
        **({"particles_at_start_count_ratio": (radial_bands(columns[1]) / real).tolist(),
            "count_scale": fit.scales[1]} if parts else {})}


def _refit_detector(stats: DetectorStats, fit: SpectrumFit, mean_units: float) -> DetectorStats:
    """The detector statistics with the jointly fitted noise level and MTF, on the mean of the whole micrograph
    (``mean_units``) whose spectrum was fitted: the emptiest crops are brighter than the field (measured: +0.4 %
    on the Falcon micrograph), and a simulation at their level is told apart by its mean alone."""
    return DetectorStats(mean_units=mean_units, noise_power_zero=fit.noise_power,
                         gain_over_dqe=fit.noise_power / mean_units, mtf=fit.mtf, n_crops=stats.n_crops,
                         crop_px=stats.crop_px)


def _thickness_and_dose(counts_px: float, px: float, length_nm: float, dose_e_per_a2: float | None,
                        ice_thickness_nm: float | None) -> tuple[float, str, float]:
    """(ice thickness nm, how it was found, dose e/Å²) from the detected counts per pixel."""
    if dose_e_per_a2 is not None and math.isfinite(length_nm):
        thickness = thickness_from_transmission(counts_px / (dose_e_per_a2 * px * px), length_nm)
        how = "transmission at the nominal dose"
    elif ice_thickness_nm is not None:
        thickness, how = ice_thickness_nm, "given"
    elif math.isfinite(length_nm):
        thickness, how = 50.0, "assumed (no nominal dose given)"
    else:
        thickness, how = 50.0, ("assumed (without an energy filter the ice loses no electrons, so the counts do not "
                                "tell its thickness)")
    dose = _counts_to_dose(counts_px, px, thickness, length_nm) if dose_e_per_a2 is None else dose_e_per_a2
    return thickness, how, dose


def calibrate_one(path: Path, *, pixel_size_a: float | None, dqe: float, dose_e_per_a2: float | None,
                  ice_thickness_nm: float | None, energy_filter: bool, particles: list[dict] | None,
                  mtf, field_px: int, crop_px: int, seed: int, fit_options: dict, log: Callable[[str], None]) -> dict:
    image, header_px = read_mrc_checked(path, "micrograph", missing=(
        "give the path of a real micrograph or tilt-series stack (MRC, .gz ok) in detector units"))
    stack = angles = None
    if image.ndim == 3:  # a tilt series: calibrate on the tilt nearest 0°, then dose and defocus per tilt
        found = angles_beside(path)
        if found is None or len(found[0]) != image.shape[0]:
            raise ArgumentError("inputs", f" {path}: a stack without one tilt angle per image beside it (.tlt or "
                                          "tilts.star); calibrate takes micrographs or tilt series")
        stack, angles = image, np.asarray(found[0], dtype=np.float64)
        image = stack[int(np.argmin(np.abs(angles)))]
    elif image.ndim != 2:
        raise ArgumentError("inputs", f" {path}: holds shape {image.shape}; micrographs or tilt series expected")
    px = pixel_size_a or header_px
    if not px:
        raise ArgumentError("pixel_size", f": {path} has no pixel size in its header; give it in Å")
    lo, hi = PIXEL_SIZE_RANGE_A  # a header's value checked here: the fit's own check would blame the option
    if not pixel_size_a and not lo <= px <= hi:
        raise ArgumentError("pixel_size", f": {path}'s header gives {px:.4g} Å, outside the {lo:g}–{hi:g} Å a CTF fit "
                                          "takes; give the pixel size in Å")
    t0 = time.perf_counter()
    log("CTF")
    fit = fit_ctf(image, px, **fit_options)
    log("detector")
    stats = detector_statistics(image, mtf=mtf)
    gain, counts_px = stats.detector(dqe)
    shape = (min(field_px, image.shape[0]), min(field_px, image.shape[1]))
    config = calibrated_config(fit, stats, shape_px=shape, dqe=dqe, dose_e_per_a2=1.0, ice_thickness_nm=50.0,
                               energy_filter=energy_filter, seed=seed, particles=particles)
    log("ice")
    length_nm = attenuation_length_nm(config)
    real_crops = grid_crops(image, crop_px)
    real_excess = ice_ring_excess(real_crops, px)
    thickness, how, dose = _thickness_and_dose(counts_px, px, length_nm, dose_e_per_a2, ice_thickness_nm)
    if dose > MAX_DOSE_E_PER_A2:  # not a dose a simulation takes: the noise is not counting statistics
        raise ArgumentError("dose_e_per_a2", f" missing: {path}: {dose_warnings(dose, False)[0]}")
    config["sample"]["ice_thickness_nm"] = round(thickness, 3)
    config["beam"]["dose_e_per_a2"] = round(dose, 4)
    log("ice structure, noise and MTF" + (" and particle count" if particles else ""))
    amplitude, count, spectrum, ice_fit = fit_background(real_crops, config, crop_px, stats, fit_mtf=mtf is None)
    # the noise level and MTF shape the whole spectrum asks for
    stats = _refit_detector(stats, spectrum, float(real_crops.mean()))
    gain, counts_px = stats.detector(dqe)
    probed_nm = thickness
    thickness, how, dose = _thickness_and_dose(counts_px, px, length_nm, dose_e_per_a2, ice_thickness_nm)
    amplitude *= math.sqrt(probed_nm / thickness) if thickness > 0 else 1.0  # the ice's power grows as t
    config = calibrated_config(fit, stats, shape_px=shape, dqe=dqe, dose_e_per_a2=dose, ice_thickness_nm=thickness,
                               energy_filter=energy_filter, seed=seed, particles=particles)
    config["sample"]["ice_structure"]["amplitude"] = round(amplitude, 4)
    if count is not None:  # one entry's count scaled (several entries: each scaled alike)
        scale = ice_fit["count_scale"]
        for p in config["sample"]["particles"]:
            p["random"]["count"] = int(round(p["random"]["count"] * scale))
    tilts = series = None
    if stack is not None:
        log("tilts")
        axis = tilt_axis_beside(path)
        doses = tilt_doses(stack.reshape(len(stack), -1).mean(1), angles, gain, px, thickness, length_nm)
        fits = [fit_ctf(im, px, tilt_deg=float(a), tilt_axis_deg=axis[0] if axis else 0.0,
                        **{**fit_options, "bootstrap": 0}) for im, a in zip(stack, angles, strict=True)]
        tilts = [{**d, "defocus_u_a": f.defocus_u_a, "defocus_v_a": f.defocus_v_a,
                  "defocus_angle_deg": f.defocus_angle_deg, "rings_in_band": f.rings_in_band}
                 for d, f in zip(doses, fits, strict=True)]
        series = {  # in stack order (a stack with its .tlt does not say the acquisition order)
            "scheme": "list", "angles_deg": [float(a) for a in angles],
            "tilt_axis_deg": float(axis[0]) if axis else 0.0,
            "dose_per_tilt_e_per_a2": [round(t["dose_e_per_a2"], 4) for t in tilts],
            "defocus_um": [round(0.5 * (t["defocus_u_a"] + t["defocus_v_a"]) / 1e4, 5) for t in tilts]}
    log("simulate")
    sim = _simulate(config)
    if series is not None:  # the micrograph compared above is the untilted one; the config makes the series
        config["tilt_series"] = series
    log("compare")
    sim_crops = grid_crops(sim, crop_px)
    sim_fit = fit_ctf(sim, px, **{**fit_options, "bootstrap": 0}) if min(sim.shape) >= 512 else None
    bands = band_ratios(real_crops, sim_crops, real_power=np.asarray(ice_fit["real_power"]))
    clf = classifier_accuracy(real_crops, sim_crops, seed=seed)
    return {"name": input_stem(path), "input": str(path), "pixel_size_a": px, "ctf": fit.as_dict(),
            "detector": {**stats.as_dict(), "dqe_assumed": dqe, "gain_units_per_e": gain,
                         "counts_per_px": counts_px},
            "ice": {"thickness_nm": thickness, "thickness_from": how,
                    "attenuation_length_nm": length_nm if math.isfinite(length_nm) else None,  # None: no loss
                    "transmission": math.exp(-thickness / length_nm), "real_ring_excess": real_excess,
                    "structure_amplitude": amplitude, "structure_fit": ice_fit, "particle_count": count,
                    "energy_filter": energy_filter},
            "dose_e_per_a2": dose, "warnings": dose_warnings(dose, dose_e_per_a2 is not None), "tilts": tilts,
            "config": config, "likeness": {"bands": bands, "classifier": clf},
            "simulated_ctf": sim_fit.as_dict() if sim_fit else None, "seconds": time.perf_counter() - t0,
            "_plot": {"fit": fit, "sim_fit": sim_fit, "real_crops": real_crops, "sim_crops": sim_crops}}


def _yaml(config: dict, record: dict) -> str:
    import yaml

    head = (f"# difftem calibrated config for {record['input']}\n"
            f"# CTF: U {record['ctf']['defocus_u_a']:.0f} Å, V {record['ctf']['defocus_v_a']:.0f} Å, angle "
            f"{record['ctf']['defocus_angle_deg']:.1f}°; gain {record['detector']['gain_units_per_e']:.4g} units/e "
            f"at DQE {record['detector']['dqe_assumed']}; ice {record['ice']['thickness_nm']:.1f} nm "
            f"({record['ice']['thickness_from']})\n")
    return head + yaml.safe_dump(config, sort_keys=False)


def run_calibrate(inputs: list[Path], out: Path, *, pixel_size_a: float | None = None, dqe: float = 0.8,
                  dose_e_per_a2: float | None = None, ice_thickness_nm: float | None = None,
                  energy_filter: bool = False, particles: list[dict] | None = None, mtf=None,
                  field_px: int = 1024,
                  crop_px: int = 128, seed: int = 0, overwrite: bool = False,
                  overwrite_hint: str = "pass overwrite=True", log: Callable[[str], None] | None = None,
                  **fit_options) -> dict:
    """Calibrate every micrograph; write ``<name>_calibrated.yaml`` (``calibrated.yaml`` for one input),
    ``<name>_report.png`` and ``calibration.json`` into ``out`` (all or nothing)."""
    if not inputs:
        raise ArgumentError("inputs", ": give at least one micrograph")
    if pixel_size_a is not None and not (0 < pixel_size_a < math.inf):  # 0 is not "the header's"
        raise ArgumentError("pixel_size_a", f" {pixel_size_a}: give a positive pixel size in Å (or none: the header's)")
    prepare_out(out, overwrite=overwrite, overwrite_hint=overwrite_hint)
    log = log or (lambda s: None)
    records = []
    with staging_folder(out, overwrite=overwrite) as tmp:
        for path in inputs:
            rec = calibrate_one(Path(path), pixel_size_a=pixel_size_a, dqe=dqe, dose_e_per_a2=dose_e_per_a2,
                                ice_thickness_nm=ice_thickness_nm, energy_filter=energy_filter,
                                particles=particles, mtf=mtf, field_px=field_px, crop_px=crop_px, seed=seed,
                                fit_options=fit_options, log=lambda s, p=path: log(f"{Path(p).name}: {s}"))
            plot = rec.pop("_plot")
            stem = "calibrated" if len(inputs) == 1 else f"{rec['name']}_calibrated"
            write_text(tmp / f"{stem}.yaml", _yaml(rec["config"], rec))
            report_figure(rec, plot, tmp / f"{rec['name']}_report.png")
            rec["outputs"] = [f"{stem}.yaml", f"{rec['name']}_report.png"]
            records.append(rec)
        write_json(tmp / "calibration.json", {"micrographs": records})
    return {"micrographs": records}
