"""Dataset generation: plan every item, run them on a Dask cluster (or in-process), write each atomically.

Tasks carry an item's index, seed and small config dict plus the store path — never arrays; each
worker simulates its item and writes it into the store itself. The client only collects small
status records, keeps the manifest and reports progress.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import logging
import os
import resource
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import SimulationConfig, config_from_dict
from ..core.errors import ConfigError, DifftemError
from ..core.version import __version__
from .spec import TILT_OUTPUTS, DatasetSpec, load_spec, validate_items
from .store import ITEMS, Store, array_file, item_name

UNITS = {
    "micrograph": "counts per pixel (x gain), noisy",
    "noiseless": "expected counts per pixel after the MTF (x gain)",
    "intensity": "image intensity relative to the incident beam",
    "potential": "projected potential, real part, V*A summed over slices",
    "exit_wave": "complex exit wave at the bottom of the specimen",
    "movie": "detected frames (n_frames, H, W) of the exposure, counts per pixel (x gain); the true motion "
             "(global shifts per frame, local field) is the ground truth's movie entry",
}


# --- one item -----------------------------------------------------------------------------------

@dataclass
class SimulatedItem:
    """What one dataset item stores: named arrays, ground truth, and simulation metadata (no timings)."""

    arrays: dict[str, np.ndarray]
    ground_truth: dict
    metadata: dict
    timings: dict = field(default_factory=dict)


def simulate_item(config: SimulationConfig, outputs: Iterable[str] = ("micrograph", "noiseless")) -> SimulatedItem:
    """Simulate one item: the single place a dataset calls the forward model.

    A config with ``tilt_series`` gives a tilt series: ``micrograph`` and ``noiseless`` are then
    (n_tilts, H, W) stacks ordered by angle, and the ground truth holds one CTF entry per tilt.
    """
    from ..simulate import pipeline

    outputs = list(outputs)
    if getattr(config, "tilt_series", None) is not None:
        extra = sorted(set(outputs) - TILT_OUTPUTS)
        if extra:
            raise ConfigError(f"outputs {extra}: a tilt-series item stores {sorted(TILT_OUTPUTS)} only")
        ts = pipeline.simulate_tilt_series(config)
        source = {"micrograph": ts.tilts, "noiseless": ts.noiseless}
        metadata, tilt_rows = dict(ts.metadata), ts.tilt_rows
        metadata["tilt_angles_deg"] = list(ts.angles_deg)
    else:
        result = pipeline.simulate(config, keep_potential="potential" in outputs)
        source = {"micrograph": result.micrograph, "noiseless": result.noiseless, "intensity": result.intensity,
                  "exit_wave": result.exit_wave,
                  "potential": None if result.projected_potential is None else result.projected_potential.real}
        if "movie" in outputs:
            if result.movie is None:
                raise ConfigError("outputs: 'movie' needs a movie section in the item's config")
            import torch

            source["movie"] = torch.stack(list(result.movie.frames()))
        metadata, tilt_rows = result.metadata, None
    arrays = {}
    for name in outputs:
        t = source[name].detach().cpu()
        arrays[name] = t.numpy().astype(np.complex64 if t.is_complex() else np.float32, copy=False)
    meta = {k: v for k, v in metadata.items() if k not in ("timings", "particles", "ctf")}
    return SimulatedItem(arrays, ground_truth(config, metadata, tilt_rows), meta, dict(metadata.get("timings", {})))



def ground_truth(config: SimulationConfig, metadata: dict, tilt_rows: list[dict] | None = None) -> dict:
    """Particle types/poses, CTF per image (per tilt for a tilt series), MTF and dose of one item.

    Particles: the simulator's own list (``metadata["particles"]``: positions after random placement,
    RELION and ZYZ angles) when it reports one; otherwise derived from the config's explicit copies.
    """
    det, opt = config.detector, config.optics
    ny, nx = det.shape_px
    p = det.pixel_size_a
    particles = metadata.get("particles")
    if particles is None:
        particles = []
        for kind, part in enumerate(config.sample.particles):
            positions = part.positions_a if part.positions_a is not None else [(0.0, 0.0, 0.0)]
            eulers = part.euler_zyz_deg * (len(positions) if len(part.euler_zyz_deg) == 1 else 1)
            for pos, euler in zip(positions, eulers, strict=False):
                particles.append({
                    "type": kind, "structure": part.structure, "centre": part.centre,
                    "position_a": list(pos), "euler_zyz_deg": list(euler),
                    # geometry convention: scene origin at pixel [H//2, W//2]; (x, y) in pixels
                    "position_px": [pos[0] / p + nx // 2, pos[1] / p + ny // 2],
                })
    common = {"voltage_kv": config.beam.voltage_kv, "astigmatism_um": opt.astigmatism_um,
              "astigmatism_angle_deg": opt.astigmatism_angle_deg, "cs_mm": opt.cs_mm, "cc_mm": opt.cc_mm,
              "energy_spread_ev": opt.energy_spread_ev, "illumination_semiangle_mrad": opt.illumination_semiangle_mrad,
              "aperture_mrad": opt.aperture_mrad, "phase_shift_deg": opt.phase_shift_deg}

    def entry(tilt_deg: float, defocus_um: float, dose: float, **more) -> dict:
        return {"tilt_deg": tilt_deg, "defocus_um": defocus_um, "defocus_u_um": defocus_um + opt.astigmatism_um / 2,
                "defocus_v_um": defocus_um - opt.astigmatism_um / 2, "dose_e_per_a2": dose, **common, **more}

    ctf = metadata.get("ctf")
    if ctf is None and tilt_rows is not None:  # defocus per tilt at the ice mid-plane, sorted by angle
        ctf = [entry(r["rlnTomoNominalStageTiltAngle"], (r["rlnDefocusU"] + r["rlnDefocusV"]) * 0.5e-4,
                     r["difftemDoseEPerA2"],
                     pre_exposure_e_per_a2=r["rlnMicrographPreExposure"],
                     acquisition_order=r["difftemAcquisitionOrder"]) for r in tilt_rows]
    elif ctf is None:
        z_exit_a = metadata.get("z_exit_a")
        # defocus is given at the ice mid-plane; the lens acted on the wave at the exit plane
        ctf = [entry(0.0, opt.defocus_um, config.beam.dose_e_per_a2,
                     defocus_exit_plane_um=None if z_exit_a is None else opt.defocus_um + z_exit_a * 1e-4)]
    mtf = det.mtf.model_dump(mode="json") if det.mtf is not None else None
    return {
        **({"movie": metadata["movie"]} if "movie" in metadata else {}),  # the frames' true motion
        "particles": particles, "ctf": ctf, "mtf": mtf, "normalize_mtf": det.normalize_mtf,
        "dose_e_per_a2": float(sum(c["dose_e_per_a2"] for c in ctf)), "dqe": det.dqe, "gain": det.gain,
        "noise": det.noise, "pixel_size_a": p, "shape_px": [ny, nx], "ice_thickness_nm": config.sample.ice_thickness_nm,
        **{k: metadata[k] for k in ("tilt_angles_deg", "tilt_axis_deg", "damage") if k in metadata},
    }


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"local:{os.getpid()}"


def _pin_gpu() -> None:
    """LocalCluster workers are named 0..n-1: spread them over the visible GPUs (no-op with one GPU)."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return
    if isinstance(name, int):
        torch.cuda.set_device(name % torch.cuda.device_count())


_MALLOC_CHECKED = False


def _tune_malloc() -> None:
    """Undo a worker-hostile allocator setting, once per process.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536. In glibc, setting it also pins
    the mmap threshold at 128 KiB, so every field-sized temporary becomes an mmap plus fresh page
    faults: a 512² item ran 2.5x slower in a worker than in a plain loop (measured here). Raising
    both thresholds to glibc's dynamic maxima restores plain-loop speed at the same peak RSS.
    """
    global _MALLOC_CHECKED
    if _MALLOC_CHECKED:
        return
    _MALLOC_CHECKED = True
    value = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
    if value.isdigit() and int(value) < 32 * 2**20:
        set_malloc_thresholds()


def set_malloc_thresholds() -> bool:
    """glibc: serve allocations below 32 MiB from the heap and trim only above 64 MiB (the upper
    ends of glibc's own dynamic thresholds). False where this is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 64 * 2**20))


def run_item(task: dict) -> dict:
    """Worker side: simulate item ``task['index']`` and write it into the store. Never raises for an
    item's own failure; returns a small status record instead."""
    import torch

    t0 = time.perf_counter()
    index = task["index"]
    threads = torch.get_num_threads()
    torch.set_num_threads(task["threads"])  # one thread per item: reproducible sums, no oversubscription
    try:
        _tune_malloc()
        _pin_gpu()
        cfg = config_from_dict(task["config"], f"item {index}")
        item = simulate_item(cfg, task["outputs"])
        attrs = {
            "index": index, "item_seed": cfg.seed, "dataset_seed": task["dataset_seed"],
            "spec_fingerprint": task["fingerprint"], "params": task["params"],
            "config": cfg.model_dump(mode="json"), "ground_truth": item.ground_truth, "simulation": item.metadata,
            "arrays": {n: {"dtype": str(a.dtype), "shape": list(a.shape), "units": UNITS[n],
                           "file": array_file(n, a, task["format"])} for n, a in item.arrays.items()},
            "record": {"simulate_s": time.perf_counter() - t0, "timings": item.timings, "worker": _worker_address(),
                       "worker_peak_rss_mb": _peak_rss_mb(), "difftem_version": __version__,
                       "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        }
        Store(task["store"], task["format"]).write_item(index, item.arrays, attrs, cfg.detector.pixel_size_a)
        return {"index": index, "status": "done", "seconds": time.perf_counter() - t0,
                "worker": attrs["record"]["worker"], "worker_peak_rss_mb": _peak_rss_mb()}
    except Exception as exc:  # recorded per item; the run goes on
        return {"index": index, "status": "failed", "error": _one_line(exc), "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - t0, "worker": _worker_address(),
                "worker_peak_rss_mb": _peak_rss_mb()}
    finally:
        torch.set_num_threads(threads)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# --- the run ----------------------------------------------------------------------------------------

@dataclass
class BuildReport:
    store: Path
    n_items: int
    selected: int  # items this run was asked for
    skipped: int  # of those, already complete in the store
    done: list[int] = field(default_factory=list)  # completed by this run
    failed: dict[int, str] = field(default_factory=dict)  # index -> error, this run
    interrupted: bool = False
    seconds: float = 0.0
    workers: int = 0
    dashboard: str | None = None
    manifest: Path | None = None
    cleaned_partial: int = 0


def _probe_worker(path: str) -> dict:
    """Runs on every worker: can it write the store, and which difftem does it have?"""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return {"writable": os.access(p, os.W_OK), "version": __version__}


def default_workers(spec_shape_px, device: str) -> int:
    """LocalCluster size: one worker per core (per GPU when items run on CUDA), capped by memory."""
    import psutil
    import torch

    from ..simulate.setup import estimate_memory_bytes

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_worker = 0.6e9 + estimate_memory_bytes(tuple(spec_shape_px), 0, 0)  # interpreter + torch + one item
    return max(1, min(cpus, int(0.8 * psutil.virtual_memory().available // per_worker)))


class _HeldSignals:
    """Ctrl-C (SIGINT) and SIGTERM that arrived while a step must not be cut short; :meth:`deliver` hands them
    to the handlers that were in place (Python's turns SIGINT into KeyboardInterrupt)."""

    def __init__(self):
        self.signals: list[int] = []
        self.previous: dict = {}

    def hold(self, signum, frame) -> None:
        self.signals.append(signum)

    def deliver(self) -> None:
        for signum in dict.fromkeys(self.signals):
            handler = self.previous.get(signum)
            if callable(handler):
                self.signals.clear()
                handler(signum, None)


@contextlib.contextmanager
def _held_signals(*, children_deaf_to_sigint: bool = False):
    """Hold SIGINT and SIGTERM during a step that must finish (starting the cluster, closing it and writing the
    manifest); the caller delivers them afterwards, once it can stop cleanly.

    ``children_deaf_to_sigint``: processes started meanwhile (the cluster's workers) inherit SIGINT blocked, so a
    Ctrl-C sent to the whole process group reaches only this process, which cancels the work and closes the
    cluster (instead of every worker dying with a traceback). This process blocks SIGINT in its main thread
    meanwhile (threads started meanwhile inherit that) and collects one that stays pending at the end; other
    threads hand theirs to the holding handler. A signal is never dropped."""
    import signal
    import threading

    held = _HeldSignals()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        if callable(signal.getsignal(signum)):  # left alone when ignored or default (nothing to deliver to)
            held.previous[signum] = signal.signal(signum, held.hold)
    if children_deaf_to_sigint:
        # multiprocessing's resource tracker, started on first use, unblocks SIGINT in the thread that starts it
        # (a Dask event-loop thread, which then spawns the workers): start it now, while nothing is blocked
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    ignored_sigint = children_deaf_to_sigint and signal.SIGINT not in held.previous
    if ignored_sigint:  # SIG_IGN or SIG_DFL: children inherit ignoring it, as this process does or dies anyway
        previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if children_deaf_to_sigint else None
    try:
        yield held
    finally:
        if mask is not None:
            if signal.SIGINT not in mask and signal.SIGINT in signal.sigpending():
                held.signals.append(signal.SIGINT)  # taken off the pending set before unblocking:
                if hasattr(signal, "sigtimedwait"):
                    signal.sigtimedwait({signal.SIGINT}, 0)
                else:  # macOS: let it arrive while ignored
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if ignored_sigint:
            signal.signal(signal.SIGINT, previous_sigint)
        for signum, handler in held.previous.items():
            signal.signal(signum, handler)


class _Cluster:
    """The Dask client for a run: a given one, a connection to ``scheduler``, a LocalCluster, or none
    (in-process). ``close`` stops only what this run started and may be called more than once."""

    def __init__(self, client, workers: int | None, scheduler: str | None, timeout_s: float, plan_cfg: dict,
                 log: Callable[[str], None]):
        self.client, self.remote, self._owned, self._local = client, True, False, None
        self.link = None
        if client is not None:
            self.link = client.dashboard_link
            return
        if workers == 0 and scheduler is None:
            self.remote = False
            return
        from distributed import Client, LocalCluster

        self._owned = True
        if scheduler is not None:
            try:
                self.client = Client(scheduler, timeout=timeout_s, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConfigError(
                    f"--scheduler {scheduler}: cannot connect within {timeout_s:g} s ({_one_line(exc)}); check the "
                    "address (tcp://host:port) and that `dask scheduler` is running there, or leave --scheduler "
                    "out to start a local cluster") from None
            self.link = self.client.dashboard_link
            return
        self.remote = False
        n = workers or default_workers(plan_cfg["detector"]["shape_px"], plan_cfg["simulation"]["device"])
        import importlib.util

        dashboard = ":8787" if importlib.util.find_spec("bokeh") else ":0"
        held = _HeldSignals()
        try:  # a Ctrl-C during the start-up (seconds) is held, then stops the run once the cluster can be closed
            with warnings.catch_warnings(), _held_signals(children_deaf_to_sigint=True) as held:
                warnings.simplefilter("ignore")  # "port 8787 in use" etc.: the link we print is the real one
                # workers log connection errors when stopped while still starting up (Ctrl-C): noise, as items
                # report their own failures
                self._local = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=dashboard, silence_logs=logging.CRITICAL)
                self.client = Client(self._local, set_as_default=False)
            held.deliver()
        except BaseException:
            self.close()
            if held.signals:  # a start-up cut short by the Ctrl-C itself
                raise KeyboardInterrupt from None
            raise
        if dashboard != ":0":
            self.link = self.client.dashboard_link
        else:
            log("dashboard: unavailable (install bokeh>=3.1 for the Dask dashboard)")

    @property
    def n_workers(self) -> int:
        return 0 if self.client is None else len(self.client.scheduler_info().get("workers", {}))

    def close(self) -> None:
        with _held_signals() as held:  # a Ctrl-C now would orphan the workers
            if self._owned:
                if self.client is not None:
                    self.client.close()
                if self._local is not None:
                    self._local.close()
            self._owned = False
        held.deliver()


def build(spec: DatasetSpec | dict | str | Path, out: str | Path, client=None, *, workers: int | None = None,
          scheduler: str | None = None, only: Iterable[int] | None = None, overwrite: bool = False,
          threads_per_item: int = 1, resources: dict | None = None, max_in_flight: int = 1000,
          connect_timeout_s: float = 10.0, progress: Callable[[dict], None] | None = None,
          log: Callable[[str], None] | None = None) -> BuildReport:
    """Generate (or complete) the dataset described by ``spec`` in the store ``out``.

    ``client``: an existing ``dask.distributed.Client``; otherwise ``scheduler`` (address) connects
    to a running cluster, ``workers=0`` runs in this process, and anything else starts a
    ``LocalCluster`` with ``workers`` (default: sized to the machine) single-threaded workers.
    Items already in the store are skipped, half-written ones are redone, failures are recorded in
    the manifest and ``failed/`` and retried by the next run. ``KeyboardInterrupt`` stops the run
    with a consistent store (and is re-raised).
    """
    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    spec = load_spec(spec)
    out = Path(out).expanduser().resolve()
    selected = list(range(spec.n_items)) if only is None else sorted(set(only))
    for i in selected:
        spec._check_index(i)
    if threads_per_item < 1:
        raise ConfigError(f"threads_per_item must be >= 1, got {threads_per_item}")
    plan = validate_items(spec, range(spec.n_items))  # every item's config, validated up front

    record = {"layout": 1, "format": spec.store, "fingerprint": spec.fingerprint, "n_items": spec.n_items,
              "spec": spec.to_dict(), "difftem_version": __version__}
    existing = Store.inspect(out)  # read-only; refuses folders that are not dataset stores
    replace = _must_replace(existing, spec, out, overwrite)

    cluster = _Cluster(client, workers, scheduler, connect_timeout_s, plan[0][0], log)
    try:
        cl = cluster.client
        if cl is not None and cluster.remote:
            _check_workers(cl, out)
        with _held_signals() as held:  # a Ctrl-C must not leave a store half removed for --overwrite
            store = _open_store(out, spec, record, existing, replace)
        held.deliver()
        with store.lock():
            if existing is not None and not replace and existing.get("n_items") != spec.n_items:
                store.write_record(record)  # the store grows
            report = BuildReport(out, spec.n_items, len(selected), 0, workers=cluster.n_workers,
                                 dashboard=cluster.link)
            report.cleaned_partial = store.clean_partial()
            run = _Run(spec, store, plan, report, progress, log)
            todo = [i for i in selected if i not in run.done]
            report.skipped = len(selected) - len(todo)
            if cluster.link:
                log(f"dashboard: {cluster.link}")
            log(f"{out}: {len(run.done)} of {spec.n_items} items done, {len(todo)} to simulate on "
                f"{'this process' if cl is None else f'{report.workers} workers'}")
            tasks = (_task(spec, plan, i, out, threads_per_item) for i in todo)
            try:
                _run_items(cl, tasks, run, resources, max_in_flight)
            except KeyboardInterrupt:
                report.interrupted = True
                raise
            finally:
                with _held_signals() as held:  # a second Ctrl-C must not cut the manifest short
                    cluster.close()  # local workers stop first, so the state recorded below is final
                    run.rescan()
                    report.manifest = run.write_manifest(force=True)
                    report.seconds = time.perf_counter() - t_start
                if not report.interrupted:
                    held.deliver()
    finally:
        cluster.close()
    return report


def _must_replace(existing: dict | None, spec: DatasetSpec, out: Path, overwrite: bool) -> bool:
    """Whether the store found at ``out`` (its record, or None) is to be replaced by one for ``spec``.

    A store written from another spec is an error unless ``overwrite``; one of this spec may grow but
    not shrink (items beyond ``n_items`` are an error).
    """
    if existing is None:
        return False
    if existing.get("fingerprint") != spec.fingerprint or existing.get("format") != spec.store:
        if not overwrite:
            raise ConfigError(
                f"--out {out}: this store was written from a different SPEC (store fingerprint "
                f"{existing.get('fingerprint')}, {existing.get('format')}; this spec {spec.fingerprint}, "
                f"{spec.store}); use --overwrite to replace it, or choose another --out")
        return True
    beyond = [i for i in Store(out, spec.store).done_indices() if i >= spec.n_items]
    if beyond:
        raise ConfigError(f"--out {out}: holds item {max(beyond)} but the spec has n_items {spec.n_items}; "
                          "raise n_items (a store can grow), or use another --out")
    return False


def _open_store(out: Path, spec: DatasetSpec, record: dict, existing: dict | None, replace: bool) -> Store:
    """The store at ``out``: removed first when ``replace``, created (with ``record``) when new."""
    store = Store(out, spec.store)
    if replace:
        with store.lock():
            store.remove()
    if replace or existing is None:
        store.create(record)
    return store


def _run_items(client, tasks, run: _Run, resources: dict | None, max_in_flight: int) -> None:
    """Run the tasks in this process (``client`` None) or on the Dask cluster, recording each result."""
    if client is None:
        for task in tasks:
            run.finish(run_item(task))
    else:
        _run_dask(client, tasks, run, resources, max_in_flight)


def _check_workers(client, out: Path) -> None:
    try:
        probes = client.run(_probe_worker, str(out))
    except Exception as exc:
        raise DifftemError(f"the cluster's workers cannot run difftem ({_one_line(exc)}); install the same difftem "
                           "version on every worker") from None
    for addr, p in probes.items():
        if p["version"] != __version__:
            raise DifftemError(f"worker {addr} has difftem {p['version']}, this client {__version__}; "
                               "install the same version everywhere")
        if not p["writable"]:
            raise DifftemError(f"worker {addr} cannot write {out}: put the store on a file system every worker "
                               "shares (workers write their own items)")


def _task(spec: DatasetSpec, plan: dict, index: int, out: Path, threads: int) -> dict:
    cfg, params = plan[index]
    return {"index": index, "config": cfg, "params": params, "outputs": spec.outputs, "store": str(out),
            "format": spec.store, "fingerprint": spec.fingerprint, "dataset_seed": spec.seed, "threads": threads}


def _run_dask(client, tasks, run: _Run, resources: dict | None, max_in_flight: int) -> None:
    """Keep at most ``max_in_flight`` items queued (enough for adaptive clusters to see the backlog)."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    in_flight: dict = {}
    ac = as_completed(loop=client.loop)

    def submit(k: int) -> None:
        for _ in range(k):
            task = next(tasks, None)
            if task is None:
                return
            fut = client.submit(run_item, task, key=f"difftem-item-{item_name(task['index'])}-{token}",
                                resources=resources, pure=False)
            in_flight[fut.key] = (task["index"], fut)
            ac.add(fut)

    submit(max_in_flight)
    try:
        for fut in ac:
            index, _ = in_flight.pop(fut.key)
            try:
                res = fut.result()
            except Exception as exc:  # the worker process died (KilledWorker) or the task was lost
                res = {"index": index, "status": "failed", "error": _one_line(exc)}
            fut.release()
            run.finish(res)
            submit(1)
    finally:
        if in_flight:
            client.cancel([f for _, f in in_flight.values()])


class _Run:
    """Client-side bookkeeping: item states, failure records, throttled atomic manifest rewrites."""

    def __init__(self, spec: DatasetSpec, store: Store, plan: dict, report: BuildReport, progress, log):
        self.spec, self.store, self.plan, self.report = spec, store, plan, report
        self.progress, self.log = progress, log
        self.done = store.done_indices()
        self.failed = {i: r for i, r in store.failed_records().items() if i not in self.done}
        self.records: dict[int, dict] = {}
        for i in self.done:  # timing/worker of items finished by earlier runs
            with contextlib.suppress(Exception):
                self.records[i] = store.read_attrs(i).get("record", {})
        self.t0 = time.perf_counter()
        self.last_write = 0.0
        self.write_cost = 0.0

    def rescan(self) -> None:
        """Items that completed while the run was stopping (their results never reached us)."""
        for i in self.store.done_indices() - self.done:
            self.done.add(i)
            self.failed.pop(i, None)
            self.store.clear_failed(i)
            with contextlib.suppress(Exception):
                self.records[i] = self.store.read_attrs(i).get("record", {})
            self.report.done.append(i)

    def finish(self, res: dict) -> None:
        i = res["index"]
        if res["status"] == "done":
            self.done.add(i)
            self.failed.pop(i, None)
            self.store.clear_failed(i)
            self.records[i] = res
            self.report.done.append(i)
        else:
            res = {**res, "failed_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            self.failed[i] = res
            self.store.write_failed(i, res)
            self.report.failed[i] = res["error"]
            self.log(f"item {i} failed: {res['error']}")
        if self.progress is not None:
            n = len(self.report.done) + len(self.report.failed)
            elapsed = time.perf_counter() - self.t0
            self.progress({"index": i, "status": res["status"], "completed": n, "done": len(self.report.done),
                           "failed": len(self.report.failed), "total": self.report.selected - self.report.skipped,
                           "elapsed_s": elapsed, "items_per_s": n / elapsed if elapsed > 0 else 0.0})
        self.write_manifest()

    def write_manifest(self, force: bool = False) -> Path | None:
        """Rewrite the manifest atomically; throttled so its cost stays a small fraction of the run."""
        now = time.perf_counter()
        if not force and now - self.last_write < max(1.0, 20 * self.write_cost):
            return None
        rows, star = [], []
        for i in range(self.spec.n_items):
            cfg, params = self.plan[i]
            status = "done" if i in self.done else "failed" if i in self.failed else "pending"
            rec = self.records.get(i) or self.failed.get(i) or {}
            rows.append({"index": i, "status": status, "item_seed": cfg["seed"], **params,
                         "error": self.failed[i].get("error") if status == "failed" else None,
                         "seconds": rec.get("seconds", rec.get("simulate_s")), "worker": rec.get("worker"),
                         "worker_peak_rss_mb": rec.get("worker_peak_rss_mb"),
                         "path": f"{ITEMS}/{item_name(i)}" if status == "done" else None})
            if status == "done" and self.spec.store == "mrc" and _star_image(self.spec.outputs):
                star.append(_star_row(i, cfg, _star_image(self.spec.outputs)))
        path = self.store.write_manifest(rows, self.spec.manifest)
        if self.spec.store == "mrc":
            self.store.write_star(star)
        self.write_cost = time.perf_counter() - now
        self.last_write = time.perf_counter()
        return path


def _star_image(outputs: list[str]) -> str | None:
    return next((n for n in ("micrograph", "noiseless", "intensity", "potential") if n in outputs), None)


def _star_row(index: int, cfg: dict, image: str) -> dict:
    o = cfg["optics"]
    return {"name": f"{ITEMS}/{item_name(index)}/{image}.mrc", "pixel": cfg["detector"]["pixel_size_a"],
            "kv": cfg["beam"]["voltage_kv"], "cs": o["cs_mm"],
            "du": (o["defocus_um"] + o["astigmatism_um"] / 2) * 1e4,
            "dv": (o["defocus_um"] - o["astigmatism_um"] / 2) * 1e4,
            "angle": o["astigmatism_angle_deg"], "phase": o["phase_shift_deg"]}
