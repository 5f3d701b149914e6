"""`difftem denoise`: read micrographs, assemble the observations, denoise, write MRC/PNG/JSON."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..core.errors import ArgumentError, ConfigError, FormatError
from ..io.files import atomic_path, json_safe, staging_folder, write_json, write_mrc
from ..io.tlt import read_mrc_checked
from ..learn.mtf_run import parse_reference
from ..simulate.output import prepare_out
from . import baselines as B
from .algorithm import METHODS, PRIORS, DenoiseResult, as_observation_stack, denoise
from .align import MIN_AGREEMENT, UnalignedWarning, check_alignment, correlation_peak, measure_shift, shift_image
from .detector_params import DetectorSettings, estimate_gain_per_dqe, settings_from_config, settings_from_mtf_fit
from .metrics import pairwise_table

__all__ = ["load_images", "resolve_detector", "run_denoise", "write_before_after"]

Progress = Callable[[str, int, int], None]
MODES = ("auto", "repeats", "tilt-series")
BASELINE_CHOICES = ("average", "lowpass", "n2n", "topaz")


def load_images(paths: Sequence[Path]) -> tuple[np.ndarray, float]:
    """(n, H, W) float32 from MRC files (2-D images or stacks, .gz ok) and the first file's pixel size."""
    if not paths:
        raise ConfigError("give at least one input MRC file")
    images, pixel = [], None
    for path in paths:
        path = Path(path)
        data, px = read_mrc_checked(path, "input image", missing="give the path of an MRC image or stack (.gz ok)")
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise FormatError(f"expected a 2-D image or an (n, H, W) stack, got shape {data.shape}", file=path)
        if images and data.shape[1:] != images[0].shape[1:]:
            raise ConfigError(f"{path}: images are {data.shape[1:]} but {paths[0]} has {images[0].shape[1:]}; "
                              "all inputs must cover the same field at one size")
        images.append(data)
        pixel = px if pixel is None else pixel
    return np.concatenate(images), float(pixel or 1.0)


def _parse_mtf(text: str):
    return parse_reference(text, argument="mtf")


def resolve_detector(*, config: Path | None = None, mtf_fit: Path | None = None, mtf: str | None = None,
                     dqe: float | None = None, gain: float | None = None, dose_e_per_a2: float | None = None,
                     no_mtf: bool = False) -> DetectorSettings:
    """Merge the detector sources; later, more specific ones win: config < fit-mtf result < flags."""
    settings = settings_from_config(config) if config else DetectorSettings()
    if mtf_fit:
        fit = settings_from_mtf_fit(mtf_fit)
        settings.mtf, settings.normalize_mtf = fit.mtf, True
        settings.sources += fit.sources
    if mtf:
        settings.mtf, settings.normalize_mtf = _parse_mtf(mtf), True
        settings.sources.append(f"mtf {mtf}")
    if no_mtf:
        settings.mtf = None
    _check_detector_numbers(dqe, gain, dose_e_per_a2)
    settings.dqe = settings.dqe if dqe is None else dqe
    settings.gain = settings.gain if gain is None else gain
    settings.dose_e_per_a2 = settings.dose_e_per_a2 if dose_e_per_a2 is None else dose_e_per_a2
    if settings.dose_e_per_a2 is not None and not settings.dose_e_per_a2 > 0:
        raise ArgumentError("dose_e_per_a2", f" {settings.dose_e_per_a2} e/Å²: a zero dose records no electrons, "
                            "there is nothing to denoise; give the exposure's dose (or the config's "
                            "beam.dose_e_per_a2)")
    if settings.mtf is None and not no_mtf:
        if config:  # the config was given but names no MTF: say so, not "give a config"
            raise ArgumentError("config", f" {config}: the config has no detector MTF (detector.mtf is null); set "
                                "detector.mtf in it, or give the MTF separately (mtf: 'a,b,c,alpha,beta' or a STAR "
                                "file; mtf_fit: a fit-mtf result), or no_mtf if the images have no MTF",
                                mentions=("mtf", "mtf_fit", "no_mtf"))
        raise ArgumentError("mtf", ": no detector MTF given; give a config (detector.mtf), a fit-mtf result "
                                   "(mtf_fit.json), the curve ('a,b,c,alpha,beta' or a STAR file), or no_mtf",
                            mentions=("no_mtf",))
    return settings


def _check_detector_numbers(dqe: float | None, gain: float | None, dose_e_per_a2: float | None) -> None:
    """The detector numbers given as arguments (None: not given), each with its fix."""
    if dqe is not None and not 0 < dqe <= 1:
        raise ArgumentError("dqe", f" must be in (0, 1], got {dqe}")
    if gain is not None and not (gain > 0 and math.isfinite(gain)):
        raise ArgumentError("gain", f" must be a finite number > 0 (image units per electron), got {gain}")
    if dose_e_per_a2 is not None and not (dose_e_per_a2 >= 0 and math.isfinite(dose_e_per_a2)):
        raise ArgumentError("dose_e_per_a2", f" {dose_e_per_a2} e/Å²: give the exposure's dose, a finite number > 0")


def _neighbour_observations(stack: torch.Tensor, i: int, neighbours: int) -> tuple[torch.Tensor, list]:
    """Tilt i plus its ±k neighbours, each aligned onto tilt i; returns (obs, measured shifts)."""
    idx = [i] + [j for d in range(1, neighbours + 1) for j in (i - d, i + d) if 0 <= j < stack.shape[0]]
    obs, shifts = [stack[i]], []
    for j in idx[1:]:
        m = correlation_peak(stack[i], stack[j])
        # a shift the quadrants do not confirm is noise: applying it would misalign a neighbour
        # that the tilt-series alignment already put in register
        applied = m.shift_px if m.agreement >= MIN_AGREEMENT else (0.0, 0.0)
        obs.append(shift_image(stack[j], (-applied[0], -applied[1])) if applied != (0.0, 0.0) else stack[j])
        shifts.append({"tilt": j, "shift_px": list(m.shift_px), "agreement": m.agreement,
                       "applied": list(applied)})
    return torch.stack(obs), shifts


def _check_numbers(steps: int | None, lr: float | None) -> None:
    """Adam's steps and learning rate, before any work (denoise's own check names neither as an option)."""
    if steps is not None and steps < 1:
        raise ArgumentError("steps", f" {steps}: give at least 1 optimiser step (default 200; paper 300)")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise ArgumentError("lr", f" {lr}: give a finite learning rate > 0, or leave it out (scaled to the noise)")


def _check_choices(method: str, prior: str, mode: str, baselines: Sequence[str], neighbours: int) -> None:
    if method not in METHODS:
        raise ArgumentError("method", f" {method!r}: choose one of {', '.join(METHODS)}")
    if prior not in PRIORS:
        raise ArgumentError("prior", f" {prior!r}: choose one of {', '.join(PRIORS)}")
    if mode not in MODES:
        raise ArgumentError("mode", f" {mode!r}: choose one of {', '.join(MODES)}")
    unknown = set(baselines) - set(BASELINE_CHOICES)
    if unknown:
        raise ArgumentError("baselines", f": unknown {sorted(unknown)}; choose from {', '.join(BASELINE_CHOICES)}")
    if neighbours < 1:
        raise ArgumentError("neighbours", f" must be ≥ 1, got {neighbours}")


def _resolve_mode(mode: str, n_images: int) -> str:
    """"auto" and "repeats" of one image become "single"; a tilt series needs ≥ 2 tilts."""
    mode = ("repeats" if n_images > 1 else "single") if mode == "auto" else mode
    if mode == "tilt-series" and n_images < 2:
        raise ArgumentError("mode", " tilt-series needs a stack of ≥ 2 tilts")
    if mode == "repeats" and n_images == 1:
        mode = "single"
    return mode


def _gain_and_dqe(detector: DetectorSettings, stack: torch.Tensor, mode: str, report: dict) -> tuple[float, float]:
    """The detector's gain and DQE; without a gain, gain/DQE estimated from the shot noise (and DQE 1)."""
    gain, dqe = detector.gain, detector.dqe
    if gain is None:
        per_dqe = estimate_gain_per_dqe(stack[: min(2, stack.shape[0])] if mode != "tilt-series" else stack[:1],
                                        detector.mtf, detector.normalize_mtf)
        gain, dqe = per_dqe, 1.0
        report["gain_estimated_from_noise"] = {"gain_per_dqe": per_dqe, "note": "variance/mean of the "
                                               "deconvolved counts; give the gain (and DQE) if known"}
    return gain, dqe


class _Denoised(NamedTuple):
    denoised: torch.Tensor
    rate: torch.Tensor
    noisy_shown: torch.Tensor  # the input shown in before_after.png
    ours_shown: torch.Tensor  # the denoised image shown beside it
    references: dict[str, torch.Tensor]  # "noisy" and the baselines


def _denoise_tilts(stack: torch.Tensor, detector: DetectorSettings, common: dict, *, neighbours: int,
                   topaz_model: str | None, progress: Progress | None, report: dict) -> _Denoised:
    """Each tilt denoised with its aligned ±``neighbours`` tilts as further observations."""
    results, extra_info = [], []
    for i in range(stack.shape[0]):
        obs, shifts = _neighbour_observations(stack, i, neighbours)
        extras = _topaz_extra(obs, topaz_model) if topaz_model is not None else None
        cb = (lambda d, k, n, i=i: progress(f"tilt {i + 1}/{stack.shape[0]}: {d}", k, n)) if progress else None
        results.append(denoise(obs, detector.mtf, extra_observations=extras, progress=cb, **common))
        extra_info.append({"tilt": i, "neighbour_shifts": shifts})
    denoised = torch.stack([r.denoised for r in results])
    rate = torch.stack([r.rate for r in results])
    report["tilts"] = [{**e, "settings": r.settings, "loss_history": r.loss_history}
                       for e, r in zip(extra_info, results, strict=True)]
    shown = stack.shape[0] // 2
    return _Denoised(denoised, rate, stack[shown], denoised[shown], {})


def _aligned_repeats(obs: torch.Tensor, align: bool, report: dict) -> torch.Tensor:
    """Repeated exposures shifted onto the first (``align``), or only checked (shifts and warnings reported)."""
    if obs.shape[0] <= 1:
        return obs
    if align:
        shifts = [[0.0, 0.0]] + [list(measure_shift(obs[0], obs[k])) for k in range(1, obs.shape[0])]
        obs = torch.stack([obs[0]] + [shift_image(obs[k], (-shifts[k][0], -shifts[k][1]))
                                      for k in range(1, obs.shape[0])])
        report["alignment_shifts_px"] = shifts
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnalignedWarning)
            report["measured_shifts_px"] = check_alignment(obs)
        report["warnings"] = [str(w.message) for w in caught]
    return obs


def _denoise_repeats(stack: torch.Tensor, detector: DetectorSettings, common: dict, *, align: bool,
                     topaz_model: str | None, baselines: Sequence[str], baseline_topaz_model: str, seed: int,
                     progress: Progress | None, report: dict) -> _Denoised:
    """One image or repeated exposures of one field, denoised together; the requested baselines beside."""
    obs = _aligned_repeats(stack, align, report)
    extras = _topaz_extra(obs, topaz_model) if topaz_model is not None else None
    cb = (lambda d, k, n: progress(d, k, n)) if progress else None
    result: DenoiseResult = denoise(obs, detector.mtf, extra_observations=extras, progress=cb, **common)
    report["settings"], report["loss_history"] = result.settings, result.loss_history
    _warn_unsettled(result.settings, report)
    references = {"noisy": obs[0]}
    if obs.shape[0] > 1:
        references["average"] = obs.mean(0)
    if extras is not None:
        references["topaz"] = extras.mean(0)
    references.update(_baselines(obs, baselines, baseline_topaz_model, seed, progress, report))
    return _Denoised(result.denoised, result.rate, obs[0], result.denoised, references)


def run_denoise(inputs: Sequence[Path], out: Path, *, mode: str = "auto", detector: DetectorSettings,
                method: str = "poisson", prior: str = "tv", prior_weight: float | str = "auto",
                steps: int | None = None, lr: float | None = None, topaz: bool = False, topaz_model: str = "unet",
                neighbours: int = 1, align: bool = False, baselines: Sequence[str] = (), pairwise: bool = False,
                seed: int = 0, progress: Progress | None = None, overwrite: bool = False,
                overwrite_hint: str = "pass overwrite=True") -> dict:
    """Denoise the inputs and write ``denoised.mrc``, ``rate.mrc``, ``before_after.png`` and ``denoise.json`` into
    ``out``, all or nothing: a folder with files only with ``overwrite`` (``overwrite_hint`` says how to ask),
    checked before the work."""
    t0 = time.perf_counter()
    _check_choices(method, prior, mode, baselines, neighbours)
    _check_numbers(steps, lr)
    prepare_out(out, overwrite=overwrite, overwrite_hint=overwrite_hint)
    images, pixel_a = load_images(list(inputs))
    stack = as_observation_stack(torch.from_numpy(images), "input images")
    mode = _resolve_mode(mode, stack.shape[0])
    if baselines and mode == "tilt-series":  # they were skipped without a word
        raise ArgumentError("baselines", f" {', '.join(baselines)}: baselines are computed for one image or repeated "
                                         "exposures, not per tilt of a series; leave --baselines out, or run them on "
                                         "a tilt (or repeats) with --mode repeats")
    if "n2n" in baselines and mode == "single":  # checked before the denoising, not after it
        raise ArgumentError("baselines", ": n2n (noise2noise) needs ≥ 2 exposures of one field, got one image; give "
                                         "repeated exposures or leave n2n out")
    if topaz or "topaz" in baselines:
        from .topaz_model import load_topaz_model

        load_topaz_model(topaz_model)  # fail early, with the install line, before any long work
    report: dict = {"inputs": [str(p) for p in inputs], "mode": mode, "pixel_size_a": pixel_a,
                    "shape": list(stack.shape), "detector": detector.describe()}
    gain, dqe = _gain_and_dqe(detector, stack, mode, report)
    common = dict(method=method, prior=prior, prior_weight=prior_weight, steps=steps, lr=lr, dqe=dqe, gain=gain,
                  normalize_mtf=detector.normalize_mtf, seed=seed, check_alignment=False)
    if mode == "tilt-series":
        res = _denoise_tilts(stack, detector, common, neighbours=neighbours, topaz_model=topaz_model if topaz else None,
                             progress=progress, report=report)
    else:
        res = _denoise_repeats(stack, detector, common, align=align, topaz_model=topaz_model if topaz else None,
                               baselines=baselines, baseline_topaz_model=topaz_model, seed=seed, progress=progress,
                               report=report)
    denoised, rate, noisy_shown, ours_shown, references = res
    _check_finite(denoised, rate, report, weight_given=not isinstance(prior_weight, str))
    with staging_folder(out, overwrite=overwrite) as tmp:
        _write(tmp, report, denoised, rate, noisy_shown, ours_shown, references, stack, mode, pixel_a, pairwise, t0)
    return report


def _write(out: Path, report: dict, denoised, rate, noisy_shown, ours_shown, references: dict, stack, mode: str,
           pixel_a: float, pairwise: bool, t0: float) -> None:
    written = [write_mrc(out / "denoised.mrc", denoised.cpu().numpy(), pixel_a),
               write_mrc(out / "rate.mrc", rate.cpu().numpy(), pixel_a)]
    for name, image in references.items():
        if name not in ("noisy",):
            written.append(write_mrc(out / f"baseline_{name}.mrc", image.cpu().numpy(), pixel_a))
    panels = {"input" if mode != "tilt-series" else f"input (tilt {stack.shape[0] // 2})": noisy_shown}
    panels.update({k: v for k, v in references.items() if k != "noisy"})
    panels["denoised (ours)"] = ours_shown
    written.append(write_before_after(out / "before_after.png", panels, report.get("loss_history"), pixel_a))
    if pairwise and mode != "tilt-series":
        report["pairwise"] = json_safe(pairwise_table({**references, "ours": denoised}))
    report["seconds"] = time.perf_counter() - t0
    report["outputs"] = [p.name for p in written] + ["denoise.json"]
    report["units"] = {"denoised.mrc": "input units (MTF(rate) x gain/DQE)", "rate.mrc":
                       "expected electrons per pixel before the MTF", "pixel_size": "A"}
    write_json(out / "denoise.json", report)  # strict JSON: write_json turns NaN into null


def _check_finite(denoised: torch.Tensor, rate: torch.Tensor, report: dict, weight_given: bool = False) -> None:
    """Refuse to write NaN or infinite images; warn when the objective itself became NaN or infinite (a learning rate
    too large, or a prior weight the user gave: the result is then the lowest-loss iterate before it)."""
    # the config error names config fields, the warning the command's flags
    weight_fix, weight_flag = (", or a smaller prior weight (or auto)", ", or a smaller --prior-weight (or auto)") \
        if weight_given else ("", "")
    if not (torch.isfinite(denoised).all() and torch.isfinite(rate).all()):
        raise ArgumentError("lr", ": the denoised images hold NaN or infinite values (the optimisation diverged); "
                            "nothing was written; give a smaller lr, or leave it out (scaled to the noise)"
                            f"{weight_fix}")
    runs = [("", report.get("loss_history") or [])] + [(f"tilt {t['tilt'] + 1}: ", t.get("loss_history") or [])
                                                       for t in report.get("tilts", [])]
    for where, history in runs:
        step = next((k for k, v in enumerate(history) if not math.isfinite(v)), None)
        if step is not None:
            result = ("is NaN or infinite at the starting estimate, which is the result" if step == 0 else
                      f"became NaN or infinite at step {step + 1}, so the result is the lowest-loss iterate of the "
                      "steps before it")
            report.setdefault("warnings", []).append(
                f"{where}the objective {result}; a smaller --lr (or none: scaled to the noise)"
                f"{weight_flag} avoids it")
            break


def _warn_unsettled(settings: dict, report: dict) -> None:
    """A warning when the optimisation ended far above the lowest loss it saw (that iterate is the result)."""
    low, last = settings.get("lowest_loss"), settings.get("final_loss")
    if low is not None and last is not None and last - low > 0.5 * abs(low) + 1e-3:
        report.setdefault("warnings", []).append(
            f"the optimisation did not settle (final loss {last:.4g}, lowest {low:.4g} at step "
            f"{settings['lowest_loss_step'] + 1}): the lowest-loss iterate is the result; a smaller --lr or a known "
            "--gain (very bright images: millions of counts per pixel) may settle it")


def _topaz_extra(obs: torch.Tensor, model: str) -> torch.Tensor:
    from .topaz_model import topaz_denoise

    return topaz_denoise(obs, model).to(obs.dtype)


def _baselines(obs: torch.Tensor, names: Sequence[str], topaz_model: str, seed: int, progress: Progress | None,
               report: dict) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name in names:
        t = time.perf_counter()
        if name == "average":
            out[name] = B.average(obs)
        elif name == "lowpass":
            out[name] = B.gaussian_lowpass(obs)
        elif name == "topaz":
            out["topaz_p"] = B.topaz_pretrained(obs, topaz_model)
        elif name == "n2n":
            cb = (lambda k, n: progress("noise2noise", k, n)) if progress else None
            out[name], record = B.noise2noise(obs, seed=seed, progress=cb)
            report.setdefault("baselines", {})["n2n"] = record
        report.setdefault("baseline_seconds", {})[name] = time.perf_counter() - t
    return out


def write_before_after(path: Path, panels: dict[str, torch.Tensor], loss_history=None,
                       pixel_size_a: float | None = None) -> Path:
    """Grey-scale panels side by side (each clipped to its own 0.5–99.5 percentiles) plus the loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels) + (1 if loss_history else 0)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4.3), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels.items(), strict=False):
        a = image.detach().cpu().numpy().astype(np.float64)
        lo, hi = np.percentile(a, [0.5, 99.5])
        ax.imshow(a, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if loss_history:
        ax = axes[0][-1]
        ax.plot(np.asarray(loss_history))
        ax.set_xlabel("iteration")
        ax.set_ylabel("objective per pixel")
        ax.set_title("loss", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)
