"""`difftem denoise`: registered on the main typer app by ``difftem.cli`` (heavy imports stay inside)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("denoise")
    def denoise_command(
        inputs: list[Path] = typer.Argument(..., help="MRC image(s) (.gz ok): one micrograph, repeated exposures "
                                            "(several files or one stack), or a tilt-series stack"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder"),
        mode: str = typer.Option("auto", help="auto (stack/several files = repeated exposures), repeats, "
                                 "tilt-series (denoise each tilt with its aligned neighbours)"),
        config: Path | None = typer.Option(None, help="simulation config YAML: detector MTF, DQE, gain, dose"),
        mtf_fit: Path | None = typer.Option(None, help="fit-mtf result (mtf_fit.json): the MTF shape"),
        mtf: str | None = typer.Option(None, help="MTF as 'a,b,c,alpha,beta' or a RELION STAR file"),
        no_mtf: bool = typer.Option(False, "--no-mtf", help="the images have no MTF (MTF ≡ 1)"),
        dqe: float | None = typer.Option(None, help="detector DQE in (0, 1] (default: config, else 1)"),
        gain: float | None = typer.Option(None, help="image units per electron (default: config, else "
                                             "estimated from the shot noise)"),
        dose: float | None = typer.Option(None, help="dose per exposure (e/Å²), checked > 0"),
        method: str = typer.Option("poisson", help="poisson (default), expected, surrogate, or paper "
                                   "(Algorithm 2 as published)"),
        prior: str = typer.Option("tv", help="tv, spectral or none"),
        prior_weight: str = typer.Option("auto", help="prior weight β, or auto (hold-out validation)"),
        steps: int | None = typer.Option(None, help="optimiser steps (default 200; paper 300)"),
        lr: float | None = typer.Option(None, help="learning rate (default: scaled to the noise; paper 1.0)"),
        topaz: bool = typer.Option(False, "--topaz", help="add Topaz-Denoise (pretrained) outputs as extra "
                                   "observations (the paper's T augmentation; needs topaz-em)"),
        topaz_model: str = typer.Option("unet", help="Topaz pretrained model: unet, unet-small, fcnn, affine"),
        neighbours: int = typer.Option(1, help="tilt-series: neighbours used on each side"),
        align: bool = typer.Option(False, "--align", help="repeats: align the exposures to the first "
                                   "(low-pass cross-correlation)"),
        baselines: str = typer.Option("", help="also write baselines, comma-separated: average,lowpass,n2n,topaz"),
        pairwise: bool = typer.Option(False, "--pairwise", help="write the pairwise SSIM/PSNR/MSE/FFL table "
                                      "(the paper's Table 4) of input, baselines and result"),
        seed: int = typer.Option(0, help="random seed"),
        overwrite: bool = typer.Option(False, help="replace an existing output folder"),
    ):
        """Denoise micrographs through the detector model and write MRC, PNG and denoise.json into OUT."""
        from ..core.errors import DifftemError
        from ._console import fail, note, progress, say

        try:
            from ..denoise.run import resolve_detector, run_denoise

            weight = _prior_weight(prior_weight)
            detector = resolve_detector(config=config, mtf_fit=mtf_fit, mtf=mtf, dqe=dqe, gain=gain,
                                        dose_e_per_a2=dose, no_mtf=no_mtf)
            names = [b.strip() for b in baselines.split(",") if b.strip()]
            # the console's progress: rich's transient bar left a blank line before an error when not on a terminal
            with progress("denoise", "") as update:
                report = run_denoise(list(inputs), out, mode=mode, detector=detector, method=method, prior=prior,
                                     prior_weight=weight, steps=steps, lr=lr, topaz=topaz, topaz_model=topaz_model,
                                     neighbours=neighbours, align=align, baselines=names, pairwise=pairwise,
                                     seed=seed, overwrite=overwrite, overwrite_hint="pass --overwrite",
                                     progress=lambda d, i, n: update(i, n, d))
        except DifftemError as exc:
            fail(exc)
        for warning in report.get("warnings", []):
            note("warning", warning)
        s = report.get("settings") or report["tilts"][0]["settings"]
        say(f"{report['mode']}: {report['shape'][0]} image(s) {report['shape'][1]}x{report['shape'][2]}, "
            f"method {s['method']}, prior {s['prior']} (weight {s['prior_weight']:.3g}), "
            f"{report['seconds']:.1f} s")
        say(f"wrote {', '.join(report['outputs'])} to {out}")


def _prior_weight(text: str) -> float | str:
    """--prior-weight: 'auto' or a finite number ≥ 0."""
    import math

    from ..core.errors import ArgumentError

    if text == "auto":
        return text
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not (math.isfinite(weight) and weight >= 0):
        raise ArgumentError("prior_weight", f" {text!r}: give a number ≥ 0 or 'auto'")
    return weight
