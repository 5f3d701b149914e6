"""`difftem fit-mtf`: the detector MTF from micrograph backgrounds or a measured curve."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.errors import DifftemError
from ._console import fail, note, progress, say


def register(app: typer.Typer) -> None:
    @app.command("fit-mtf")
    def fit_mtf(
        micrographs: list[Path] = typer.Argument(
            None, help="micrographs (MRC, .gz ok) whose background crops are fitted"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder"),
        curve: Path | None = typer.Option(None, help="fit the model to a measured curve (RELION STAR)"),
        method: str = typer.Option("nps", help="nps (noise power spectrum), algorithm1 (seed paper) or both"),
        crop_size: int = typer.Option(128, help="background crop size (px)"),
        n_crops: int = typer.Option(20, help="background crops per micrograph (chosen automatically)"),
        boxes: Path | None = typer.Option(None, help="file of 'y x' crop corners instead of automatic choice"),
        background_counts: float | None = typer.Option(
            None, help="noise-free counts per pixel before the MTF (micrograph in counts): fixes the NPS fit's scale "
                       "and is Algorithm 1's Ĩ"),
        alpha: float = typer.Option(1.0, help="Algorithm 1: focal-frequency-loss exponent (negative: MSE only)"),
        steps: int = typer.Option(300, help="Algorithm 1: Adam iterations"),
        reference: str | None = typer.Option(None, help="reference curve: STAR path or 'a,b,c,alpha,beta'"),
        seed: int = typer.Option(0, help="random seed (Algorithm 1)"),
        overwrite: bool = typer.Option(False, help="replace an existing output folder"),
    ):
        """Estimate the detector MTF (5-parameter model) and write mtf_fit.json/.star/.png into OUT."""
        from ..learn.mtf_run import run_fit_mtf

        try:
            with progress("fit-mtf", "") as update:
                report = run_fit_mtf(list(micrographs or []), out, curve=curve, method=method, crop_px=crop_size,
                                     n_crops=n_crops, boxes=boxes, background_counts=background_counts,
                                     ffl_alpha=None if alpha < 0 else alpha, steps=steps, reference=reference,
                                     seed=seed, progress=lambda d, i, n: update(i, n, d), overwrite=overwrite,
                                     overwrite_hint="pass --overwrite")
        except DifftemError as exc:
            fail(exc)
        for name, fit in report["fits"].items():
            p = fit["params"]
            extra = "".join(f", {k} {fit[k]:.4f}" for k in ("rms_fit_error", "rms_vs_reference_normalised") if k in fit)
            say(f"{name}: a={p['a']:.4f} b={p['b']:.4f} c={p['c']:.4f} alpha={p['alpha']:.4f} "
                f"beta={p['beta']:.4f} ({fit['seconds']:.1f} s{extra})")
        for warning in report.get("warnings", []):
            note("warning", warning)
        say(f"wrote {', '.join(report['outputs'])} to {out}")
