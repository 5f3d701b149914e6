"""`difftem simulate` and `difftem demo`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from ..core.errors import DifftemError
from ._console import console, fail, note, progress


def _parse_save(save: str) -> set[str]:
    from ..simulate.output import SAVE_CHOICES

    items = {s.strip() for s in save.split(",") if s.strip()}
    unknown = items - SAVE_CHOICES
    if unknown:
        fail(f"--save: unknown item(s) {sorted(unknown)}; choose from {sorted(SAVE_CHOICES)}")
    return items


def _load_any_config(path: Path):
    """A YAML config, or a TEM-simulator input file (.inp) translated to one."""
    from ..config import load_config

    if path.suffix.lower() == ".inp":
        from ..temsim import load_inp

        res = load_inp(path)
        for n in res.notes:
            note("note", n)
        return res.config
    return load_config(path)


def run_and_write(config, out: Path, save: set[str], label: str) -> dict:
    """Simulate ``config`` (a micrograph, or a tilt series) with progress, print its warnings, write ``out``."""
    from ..simulate.output import write_simulation, write_tilt_series
    from ..simulate.pipeline import simulate, simulate_tilt_series

    series = config.tilt_series is not None
    with progress(label, "tilts" if series else "slices") as update:
        result = (simulate_tilt_series(config, progress=update) if series
                  else simulate(config, keep_potential="potential" in save, progress=update))
    for warning in result.metadata.get("warnings", []):
        note("warning", warning)
    return write_tilt_series(result, out) if series else write_simulation(result, out, save)


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        config: Path = typer.Argument(..., help="YAML configuration file, or a TEM-simulator 1.3 input file (.inp)"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder (created if missing)"),
        save: str = typer.Option("", help="extra outputs, comma-separated: potential,exit_wave"),
        device: str | None = typer.Option(None, help="override simulation.device: auto, cpu or cuda"),
        seed: int | None = typer.Option(None, help="override the config's seed"),
    ):
        """Simulate a micrograph (or a tilt series) from CONFIG and write MRC images, STAR ground truth, a preview
        and run.json into OUT."""
        try:
            cfg = _load_any_config(config)
            if device is not None:
                cfg.simulation.device = device
            if seed is not None:
                cfg.seed = seed
            run = run_and_write(cfg, out, _parse_save(save), "simulate")
        except DifftemError as exc:
            fail(exc)
        except ValueError as exc:  # pydantic assignment validation of --device/--seed
            fail(str(exc).splitlines()[0] if str(exc) else repr(exc))
        console.print(f"wrote {', '.join(run['outputs'])} to {out} in {run['timings']['total_s']:.1f} s")

    @app.command()
    def demo(out: Path = typer.Option(Path("difftem_demo"), "--out", "-o", help="output folder"),
             device: str | None = typer.Option(None, help="auto, cpu or cuda")):
        """Simulate the bundled example (five ubiquitins in ice) and say where the outputs are."""
        import yaml

        from ..config import config_from_dict

        data = yaml.safe_load(resources.files("difftem").joinpath("data/demo.yaml").read_text())
        try:
            cfg = config_from_dict(data, "builtin demo.yaml")
            if device is not None:
                cfg.simulation.device = device
            run = run_and_write(cfg, out, {"potential"}, "demo")
        except DifftemError as exc:
            fail(exc)
        console.print(f"demo: {run['n_atoms']} atoms, {run['n_slices']} slices, {run['timings']['total_s']:.1f} s "
                      f"on {run['device']}")
        console.print(f"outputs in {out.resolve()}: {', '.join(run['outputs'])}")
        console.print(f"look at {out.resolve() / 'preview.png'}")
