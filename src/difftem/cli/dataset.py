"""`difftem dataset`: generate a dataset store from a SPEC on a Dask cluster."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("dataset")
    def dataset(
        spec: Path = typer.Argument(..., help="dataset SPEC (YAML): seed, n_items, base config, vary, outputs, store"),
        out: Path = typer.Option(..., "--out", "-o", help="store folder (created; rerun the same command to resume)"),
        workers: int | None = typer.Option(
            None, help="local Dask workers (default: sized to the machine; 0: run in this process)"),
        scheduler: str | None = typer.Option(None, help="address of a running Dask scheduler (tcp://host:port)"),
        only: str | None = typer.Option(
            None, help="only these items, e.g. 17 or 3,5-8 (same result as in a full run)"),
        overwrite: bool = typer.Option(False, help="replace a store that was written from a different SPEC"),
        threads_per_item: int = typer.Option(1, help="torch threads per item (results are bit-identical only "
                                                     "between runs with the same value)"),
        connect_timeout: float = typer.Option(10.0, help="seconds to wait for --scheduler"),
        resources: str | None = typer.Option(
            None, help="Dask resources each item needs, e.g. GPU=1 (workers started with --resources GPU=1)"),
    ):
        """Simulate a dataset described by SPEC into the store OUT (Zarr or MRC + STAR, with a manifest)."""
        from ._console import console

        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        stop = threading.Event()

        def _interrupt(signum, frame):  # Ctrl-C; batch systems stop jobs with SIGTERM: stop as cleanly
            # remembered as well as raised: a KeyboardInterrupt that lands in a finalizer (a Dask future's
            # __del__) is swallowed there, so the item loop and the end of the run look at this too
            stop.set()
            raise KeyboardInterrupt

        try:  # from the first moment: a Ctrl-C (or SIGTERM) at any point exits 130 with a consistent store
            signal.signal(signal.SIGINT, _interrupt)
            signal.signal(signal.SIGTERM, _interrupt)
            report = _run(spec, out, workers, scheduler, only, overwrite, threads_per_item, connect_timeout,
                          resources, stop)
            if stop.is_set():  # the interrupt was swallowed and the run went on: it still means stop
                raise KeyboardInterrupt
            _summary(out, report)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            state = (f"the store {out} is consistent (complete items only)" if out.exists()
                     else f"nothing was written to {out}")
            console.print(f"[yellow]interrupted:[/] {state}; rerun the same command to resume", soft_wrap=True,
                          highlight=False)
            raise typer.Exit(code=130) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if report.failed:
            raise typer.Exit(code=1)


def _run(spec: Path, out: Path, workers: int | None, scheduler: str | None, only: str | None, overwrite: bool,
         threads_per_item: int, connect_timeout: float, resources: str | None, stop: threading.Event | None = None):
    """Check the flags, load SPEC and build the store with a progress bar; a library error is one line (exit 2).
    ``stop``: set by the signal handler; the next finished item raises KeyboardInterrupt if the one the handler
    raised was lost."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..core.errors import DifftemError
    from ._console import console, fail

    if workers is not None and scheduler is not None:
        fail("--workers and --scheduler exclude each other: --workers starts a local cluster, "
             "--scheduler uses a running one")
    if workers is not None and workers < 0:
        fail(f"--workers must be >= 0 (0: run in this process), got {workers}")
    progress = Progress(TextColumn("[bold]dataset"), BarColumn(), TextColumn("{task.completed}/{task.total} items"),
                        TextColumn("{task.fields[rate]} items/s"), TextColumn("[red]{task.fields[failed]}"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                        transient=True)
    task = None

    def on_progress(state: dict) -> None:
        nonlocal task
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        if task is None:
            task = progress.add_task("items", total=state["total"], rate="-", failed="")
        progress.update(task, completed=state["completed"], total=state["total"],
                        rate=f"{state['items_per_s']:.2f}",
                        failed=f"{state['failed']} failed" if state["failed"] else "")

    try:
        from ..dataset.build import build
        from ..dataset.spec import load_spec, parse_only

        needs = _parse_resources(resources) if resources else None
        spec_obj = load_spec(spec)
        selection = parse_only(only, spec_obj.n_items) if only else None
        with progress:
            return build(spec_obj, out, workers=workers, scheduler=scheduler, only=selection,
                         overwrite=overwrite, threads_per_item=threads_per_item, resources=needs,
                         connect_timeout_s=connect_timeout, progress=on_progress,
                         log=lambda msg: console.print(msg, soft_wrap=True, highlight=False))
    except DifftemError as exc:
        fail(exc)


def _summary(out: Path, report) -> None:
    from ._console import console

    n = len(report.done) + len(report.failed)
    rate = n / report.seconds if report.seconds > 0 else 0.0
    console.print(f"{out}: {len(report.done)} items written, {report.skipped} already there, "
                  f"{len(report.failed)} failed, {report.seconds:.1f} s ({rate:.2f} items/s); "
                  f"manifest {report.manifest.name if report.manifest else '-'}", soft_wrap=True, highlight=False)
    for index, error in sorted(report.failed.items())[:10]:
        console.print(f"[red]item {index} failed:[/] {error}", soft_wrap=True, highlight=False)
    if report.failed:
        console.print("failed items are listed in the manifest and failed/; rerun to retry them",
                      soft_wrap=True, highlight=False)


def _parse_resources(text: str) -> dict[str, float]:
    from ..core.errors import ConfigError

    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--resources: cannot read '{part}'; give NAME=AMOUNT pairs such as GPU=1") from None
        if not name.strip() or out[name.strip()] <= 0:
            raise ConfigError(f"--resources: '{part}' needs a name and a positive amount, e.g. GPU=1")
    return out
