"""Command-line interface: one command per job (`difftem --help`)."""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .errors import DifftemError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="difftem: fast, differentiable TEM simulation of biological specimens.")
console = Console(stderr=True)
SAVE_CHOICES = {"potential", "exit_wave"}


def _fail(msg: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


def run_and_write(config, out: Path, save: set[str], label: str) -> dict:
    """Simulate ``config`` (a micrograph, or a tilt series when ``tilt_series`` is set) with a progress bar
    and write every output atomically into ``out``."""
    if config.tilt_series is not None:
        return run_tilt_series_and_write(config, out, label)
    import numpy as np

    from .io import write_json, write_mrc, write_npy, write_preview_png, write_text
    from .pipeline import simulate
    from .scene import STAR_CONVENTION, star_text

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total} slices"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("multislice", total=None)
        result = simulate(config, keep_potential="potential" in save,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
    for warning in result.metadata.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
    t = time.perf_counter()
    px = result.pixel_size_a
    written = [write_mrc(out / "micrograph.mrc", result.micrograph.cpu().numpy(), px),
               write_mrc(out / "noiseless.mrc", result.noiseless.cpu().numpy(), px)]
    if result.projected_potential is not None:
        written.append(write_mrc(out / "projected_potential.mrc", result.projected_potential.real.cpu().numpy(), px))
    if "exit_wave" in save:
        written.append(write_npy(out / "exit_wave.npy", result.exit_wave.cpu().numpy().astype(np.complex64)))
    preview = np.concatenate([result.noiseless.cpu().numpy(), result.micrograph.cpu().numpy()], axis=1)
    written.append(write_preview_png(out / "preview.png", preview, "noise-free (left) | detected (right)"))
    particles = result.metadata.pop("particles", [])
    written.append(write_text(out / "particles.star", star_text(particles, "particles", STAR_CONVENTION)))
    result.metadata["timings"]["write_s"] = time.perf_counter() - t
    run = {"config": config.model_dump(mode="json"), **result.metadata,
           "outputs": [p.name for p in written] + ["run.json"],
           "units": {"micrograph": "counts per pixel (x gain)", "noiseless": "expected counts after MTF (x gain)",
                     "projected_potential": "V*A, real part, summed over slices", "pixel_size": "A"}}
    write_json(out / "run.json", run)
    return run


def run_tilt_series_and_write(config, out: Path, label: str) -> dict:
    import numpy as np

    from .io import write_json, write_mrc, write_preview_png, write_text
    from .pipeline import simulate_tilt_series
    from .scene import STAR_CONVENTION, star_text

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total} tilts"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("tilts", total=None)
        result = simulate_tilt_series(config, progress=lambda done, total: bar.update(task, completed=done,
                                                                                        total=total))
    for warning in result.metadata.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
    px = result.pixel_size_a
    stem = "tilt_series"
    written = [write_mrc(out / f"{stem}.mrc", result.tilts.cpu().numpy(), px),
               write_mrc(out / f"{stem}_noiseless.mrc", result.noiseless.cpu().numpy(), px),
               write_text(out / f"{stem}.tlt", "".join(f"{a:.2f}\n" for a in result.angles_deg)),
               write_text(out / "tilts.star", star_text(result.tilt_rows, "tilts",
                                                        "difftem tilt series: one row per image of tilt_series.mrc, "
                                                        "ordered by angle; doses in e/A^2, defocus in A")),
               write_text(out / "particles.star", star_text(result.metadata.pop("particles", []), "particles",
                                                            STAR_CONVENTION + "\npositions and angles are in the "
                                                            "untilted specimen frame"))]
    picks = sorted({0, len(result.angles_deg) // 2, len(result.angles_deg) - 1})
    montage = np.concatenate([result.tilts[i].cpu().numpy() for i in picks], axis=1)
    titles = " | ".join(f"{result.angles_deg[i]:+.0f} deg" for i in picks)
    written.append(write_preview_png(out / "preview.png", montage, titles))
    run = {"config": config.model_dump(mode="json"), **result.metadata, "angles_deg": result.angles_deg,
           "outputs": [p.name for p in written] + ["run.json"],
           "units": {"tilt_series": "counts per pixel (x gain), tilts along the first axis", "pixel_size": "A"}}
    write_json(out / "run.json", run)
    return run


def _parse_save(save: str) -> set[str]:
    items = {s.strip() for s in save.split(",") if s.strip()}
    unknown = items - SAVE_CHOICES
    if unknown:
        _fail(f"--save: unknown item(s) {sorted(unknown)}; choose from {sorted(SAVE_CHOICES)}")
    return items


@app.command()
def simulate(
    config: Path = typer.Argument(..., help="YAML configuration file, or a TEM-simulator 1.3 input file (.inp)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (created if missing)"),
    save: str = typer.Option("", help="extra outputs, comma-separated: potential,exit_wave"),
    device: Optional[str] = typer.Option(None, help="override simulation.device: auto, cpu or cuda"),
    seed: Optional[int] = typer.Option(None, help="override the config's seed"),
):
    """Simulate a micrograph (or a tilt series) from CONFIG and write MRC images, STAR ground truth, a preview and
    run.json into OUT."""
    try:
        cfg = _load_any_config(config)
        if device is not None:
            cfg.simulation.device = device
        if seed is not None:
            cfg.seed = seed
        run = run_and_write(cfg, out, _parse_save(save), "simulate")
    except DifftemError as exc:
        _fail(str(exc))
    except ValueError as exc:  # pydantic assignment validation of --device/--seed
        _fail(str(exc).splitlines()[0] if str(exc) else repr(exc))
    console.print(f"wrote {', '.join(run['outputs'])} to {out} in {run['timings']['total_s']:.1f} s")


def _load_any_config(path: Path):
    """A YAML config, or a TEM-simulator input file (.inp) translated to one."""
    from .config import load_config

    if path.suffix.lower() == ".inp":
        from rich.markup import escape

        from .temsim import load_inp

        res = load_inp(path)
        for note in res.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True, highlight=False)
        return res.config
    return load_config(path)


@app.command()
def demo(out: Path = typer.Option(Path("difftem_demo"), "--out", "-o", help="output folder"),
         device: Optional[str] = typer.Option(None, help="auto, cpu or cuda")):
    """Simulate the bundled example (five ubiquitins in ice) and say where the outputs are."""
    from .config import config_from_dict

    import yaml

    data = yaml.safe_load(resources.files("difftem").joinpath("data/demo.yaml").read_text())
    try:
        cfg = config_from_dict(data, "builtin demo.yaml")
        if device is not None:
            cfg.simulation.device = device
        run = run_and_write(cfg, out, {"potential"}, "demo")
    except DifftemError as exc:
        _fail(str(exc))
    console.print(f"demo: {run['n_atoms']} atoms, {run['n_slices']} slices, {run['timings']['total_s']:.1f} s "
                  f"on {run['device']}")
    console.print(f"outputs in {out.resolve()}: {', '.join(run['outputs'])}")
    console.print(f"look at {out.resolve() / 'preview.png'}")


@app.command("fit-mtf")
def fit_mtf(
    micrographs: list[Path] = typer.Argument(None, help="micrographs (MRC, .gz ok) whose background crops are fitted"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    curve: Optional[Path] = typer.Option(None, help="fit the model to a measured curve (RELION STAR)"),
    method: str = typer.Option("nps", help="nps (noise power spectrum), algorithm1 (seed paper) or both"),
    crop_size: int = typer.Option(128, help="background crop size (px)"),
    n_crops: int = typer.Option(20, help="background crops per micrograph (chosen automatically)"),
    boxes: Optional[Path] = typer.Option(None, help="file of 'y x' crop corners instead of automatic choice"),
    background_counts: Optional[float] = typer.Option(
        None, help="noise-free counts per pixel before the MTF (micrograph in counts): fixes the NPS fit's scale "
                   "and is Algorithm 1's Ĩ"),
    alpha: float = typer.Option(1.0, help="Algorithm 1: focal-frequency-loss exponent (negative: MSE only)"),
    steps: int = typer.Option(300, help="Algorithm 1: Adam iterations"),
    reference: Optional[str] = typer.Option(None, help="reference curve: STAR path or 'a,b,c,alpha,beta'"),
    seed: int = typer.Option(0, help="random seed (Algorithm 1)"),
):
    """Estimate the detector MTF (5-parameter model) and write mtf_fit.json/.star/.png into OUT."""
    from .learn.mtf_run import run_fit_mtf

    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("fit-mtf", total=None)
            report = run_fit_mtf(list(micrographs or []), out, curve=curve, method=method, crop_px=crop_size,
                                 n_crops=n_crops, boxes=boxes, background_counts=background_counts,
                                 ffl_alpha=None if alpha < 0 else alpha, steps=steps, reference=reference, seed=seed,
                                 progress=lambda d, i, n: bar.update(task, description=d, completed=i, total=n))
    except DifftemError as exc:
        _fail(str(exc))
    for name, fit in report["fits"].items():
        p = fit["params"]
        extra = "".join(f", {k} {fit[k]:.4f}" for k in ("rms_fit_error", "rms_vs_reference_normalised") if k in fit)
        console.print(f"{name}: a={p['a']:.4f} b={p['b']:.4f} c={p['c']:.4f} alpha={p['alpha']:.4f} "
                      f"beta={p['beta']:.4f} ({fit['seconds']:.1f} s{extra})")
    console.print(f"wrote {', '.join(report['outputs'])} to {out}")


@app.command()
def info():
    """Print versions, devices and thread settings."""
    import torch

    console.print(f"difftem {__version__}")
    console.print(f"python {sys.version.split()[0]}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    console.print(f"cuda available: {cuda}")
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            console.print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB")


def _register_subcommands() -> None:
    """Commands that live beside their stage (tomography, denoising, datasets) register themselves here."""
    import importlib

    for module in ("difftem.tomo.cli", "difftem.denoise.cli", "difftem.dataset.cli", "difftem.temsim"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                continue  # that stage is not part of this build
            raise
        mod.register(app)


_register_subcommands()


def main():  # console-script entry point
    app()


if __name__ == "__main__":
    main()
