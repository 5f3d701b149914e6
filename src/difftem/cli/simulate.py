"""`difftem simulate` and `difftem demo`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer
from rich.markup import escape

from ..core.errors import ArgumentError, DifftemError
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

    if str(path).startswith("example:"):  # a bundled example config, e.g. example:cellular
        return _example_config(str(path).split(":", 1)[1])
    if path.suffix.lower() == ".inp":
        from ..temsim import load_inp

        res = load_inp(path)
        for n in res.notes:
            note("note", n)
        return res.config
    return load_config(path)


EXAMPLES = ("cellular",)


def _example_config(name: str):
    """A bundled example (src/difftem/data/NAME.yaml) as a config."""
    import yaml

    from ..config import config_from_dict
    from ..core.errors import ConfigError

    if name not in EXAMPLES:
        raise ConfigError(f"example:{name}: unknown example; available: {', '.join(EXAMPLES)}")
    data = yaml.safe_load(resources.files("difftem").joinpath(f"data/{name}.yaml").read_text())
    return config_from_dict(data, f"builtin {name}.yaml")


def _override(cfg, flag: str, section: str | None, name: str, value) -> None:
    """Set a config value from a command-line flag through the config's own validation; a refused value is a
    one-line error naming the flag."""
    from pydantic import ValidationError

    target = cfg if section is None else getattr(cfg, section)
    try:
        setattr(target, name, value)
    except ValidationError as exc:
        errors = exc.errors()
        fail(f"{flag} {value!r}: {errors[0]['msg'] if errors else 'not accepted'}")


def _apply_overrides(cfg, device: str | None, seed: int | None) -> None:
    if device is not None:
        choices = ("auto", "cpu", "cuda")
        if device not in choices:
            fail(f"--device {device!r}: choose one of {', '.join(choices)}")
        _override(cfg, "--device", "simulation", "device", device)
    if seed is not None:
        if not 0 <= seed < 2**63:
            fail(f"--seed {seed}: must be between 0 and 2^63 - 1")
        _override(cfg, "--seed", None, "seed", seed)


def _preflight(cfg):
    """What can be refused before the long part: the scene (structures, placement), the tilt plan and the memory
    estimate. Returns the scene, which the simulation reuses."""
    from ..core.threads import threads_for
    from ..simulate.setup import Setup

    if cfg.tilt_series is not None:
        from ..forward.tilt import plan_tilts

        plan_tilts(cfg)
    # on the threads the simulation itself uses (one for a field under 512²: threads_for), not on every one set
    with threads_for(int(cfg.detector.shape_px[0]) * int(cfg.detector.shape_px[1])):
        setup = Setup.build(cfg)
    setup.check_memory()
    return setup.scene


def _prepare_out(out: Path, overwrite: bool, inputs=()) -> None:
    from ..simulate.output import prepare_out

    for folder in prepare_out(out, overwrite=overwrite, overwrite_hint="pass --overwrite", inputs=inputs):
        note("note", f"left {folder} alone: a run on another host may still be writing it (delete it if not)")


def run_and_write(config, out: Path, save: set[str], label: str, *, overwrite: bool = False, inputs=()) -> dict:
    """Check ``config`` and ``out`` (which must not hold the ``inputs``: the config file), simulate (a micrograph,
    or a tilt series) with progress, print its notes and warnings, write ``out`` (all or nothing)."""
    from ..simulate.output import write_simulation, write_tilt_series
    from ..simulate.pipeline import simulate, simulate_tilt_series

    scene = _preflight(config)
    _prepare_out(out, overwrite, inputs)
    series = config.tilt_series is not None
    with progress(label, "tilts" if series else "slices") as update:
        result = (simulate_tilt_series(config, progress=update, scene=scene) if series
                  else simulate(config, keep_potential="potential" in save, progress=update, scene=scene))
    for text in result.metadata.get("notes", []):
        note("note", text)
    for warning in result.metadata.get("warnings", []):
        note("warning", warning)
    if series:
        return write_tilt_series(result, out, overwrite=overwrite)
    return write_simulation(result, out, save, overwrite=overwrite)


def _interrupted(out: Path, run_written: bool = False) -> None:
    """Ctrl-C: the staging folder is removed, so ``out`` holds no partial run (or, stopped while its sets were being
    exported, the complete run without them); exit code 130 as a shell expects."""
    state = (f"the run in {escape(str(out))} is complete, its sets were not exported (difftem export {escape(str(out))}"
             " writes them)" if run_written else
             f"{escape(str(out))} holds no partial run (a run appears only when complete)")
    console.print(f"[yellow]interrupted:[/] {state}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=130)


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        config: Path = typer.Argument(..., help="YAML configuration file, a TEM-simulator 1.3 input file (.inp), or "
                                                "a bundled example: example:cellular"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder: new or empty (created; appears only when "
                                                           "the run is complete)"),
        save: str = typer.Option("", help="extra outputs, comma-separated: potential,exit_wave"),
        device: str | None = typer.Option(None, help="override simulation.device: auto, cpu or cuda"),
        seed: int | None = typer.Option(None, help="override the config's seed"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an --out folder that holds files (the "
                                                                  "old one is removed once the new run is complete)"),
        formats: str = typer.Option("", "--formats", help="tilt series: also write these sets into OUT/<format>/, "
                                                          "comma-separated: imod,relion5,copick"),
    ):
        """Simulate a micrograph (or a tilt series) from CONFIG and write MRC images, STAR ground truth, a preview
        and run.json into OUT."""
        from ..simulate.export import parse_formats
        from .export import export_run

        try:
            cfg = _load_any_config(config)
            _apply_overrides(cfg, device, seed)
            if parse_formats(formats) and cfg.tilt_series is None:
                raise ArgumentError("formats", ": imod, relion5 and copick sets are for tilt series (set tilt_series)")
            run = None
            run = run_and_write(cfg, out, _parse_save(save), "simulate", overwrite=overwrite,
                                inputs=[] if str(config).startswith("example:") else [config])
            if formats:
                export_run(out, out, formats)
        except DifftemError as exc:
            fail(exc)
        except KeyboardInterrupt:
            _interrupted(out, run_written=run is not None)
        console.print(f"wrote {', '.join(run['outputs'])} to {out} in {run['timings']['total_s']:.1f} s")

    @app.command()
    def demo(out: Path = typer.Option(Path("difftem_demo"), "--out", "-o", help="output folder: new or empty"),
             device: str | None = typer.Option(None, help="auto, cpu or cuda"),
             overwrite: bool = typer.Option(False, "--overwrite", help="replace an --out folder that holds files")):
        """Simulate the bundled example (five ubiquitins in ice) and say where the outputs are."""
        import yaml

        from ..config import config_from_dict

        data = yaml.safe_load(resources.files("difftem").joinpath("data/demo.yaml").read_text())
        try:  # resolved before the run: with --out . --overwrite the run replaces the working folder
            shown = out.resolve()
        except OSError:
            shown = out
        try:
            cfg = config_from_dict(data, "builtin demo.yaml")
            _apply_overrides(cfg, device, None)
            # rerunning the demo replaces its own earlier output (a difftem run folder), nothing else
            again = out.is_dir() and (out / "run.json").is_file() and out == Path("difftem_demo")
            run = run_and_write(cfg, out, {"potential"}, "demo", overwrite=overwrite or again)
        except DifftemError as exc:
            fail(exc)
        except KeyboardInterrupt:
            _interrupted(out)
        console.print(f"demo: {run['n_atoms']} atoms, {run['n_slices']} slices, {run['timings']['total_s']:.1f} s "
                      f"on {run['device']}")
        console.print(f"outputs in {shown}: {', '.join(run['outputs'])}")
        console.print(f"look at {shown / 'preview.png'}")
