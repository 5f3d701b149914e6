"""How torch's CPU threads wait for each other, set before torch loads.

torch's CPU kernels share an OpenMP thread pool whose threads, by default, spin while they wait at the end of each
parallel region. On a loaded machine — dataset workers, CI runners, shared cluster nodes — a spinning thread
waits for peers the kernel has descheduled, and a small stage becomes many times slower at 2 threads than at 1
(measured on 2 cores under load: 400² FFT stages 0.79–1.48 s at 2 spinning threads vs 0.08–0.13 s passive and
0.22–0.36 s at 1 thread; benchmarks/bench_threads.py has the per-stage table). Passive waiting (threads sleep)
removes that cliff. OpenMP reads the policy once, when its runtime loads with torch, so this must run before the
first ``import torch``; a policy the user set is kept. Even sleeping, a second thread beside busy processes waits for
a core at every synchronisation, so work gets threads beyond the first only on idle cores (:func:`spare_threads`).
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

WAIT_POLICY = "PASSIVE"
#: fields smaller than this run on one intra-op thread: waking a second thread for each small kernel costs more
#: than it saves (measured idle, 400² stages: 2 passive threads 0.09–0.11 s, 1 thread 0.07–0.09 s)
MIN_PIXELS_FOR_THREADS = 512 * 512


def prefer_passive_waiting() -> None:
    """Set ``OMP_WAIT_POLICY`` to passive unless it is set or torch is already loaded (then it has no effect)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def one_thread_for_numpy_blas() -> None:
    """Run numpy's BLAS (OpenBLAS) on one thread unless the user set its count or numpy is loaded (it reads the
    count once, when it loads). difftem's numpy products are small (atom coordinates times 3×3 rotations); OpenBLAS's
    threads spin after each call instead of sleeping, and on 2 cores the TMV series spent 0.5–0.7 s more CPU with its
    default of one thread per core (torch's import 1.41 against 1.09–1.25 s, the scene 0.18 against 0.11 s, the
    writing 0.32–0.40 against 0.15 s) for no gain in wall time. torch's own BLAS is not OpenBLAS and keeps its
    threads."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def wait_policy() -> str:
    """The OpenMP wait policy this process asked for (for run metadata)."""
    return os.environ.get("OMP_WAIT_POLICY", "default").lower()


@contextmanager
def intra_op_threads(n: int):
    """Run the block with torch's intra-op thread count set to ``n`` (restored after)."""
    import torch

    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: per thread: the count set before :func:`threads_for` lowered it for small work (see :func:`large_work`); a tilt
#: worker's own threads_for (a small stage inside it) leaves the main thread's untouched
_budget = threading.local()


@contextmanager
def threads_for(n_pixels: int):
    """One torch thread when the work (``n_pixels``: the field) is small, else as many of those set as find an idle
    core (:func:`spare_threads`: beside two busy processes on 2 cores, a 512² micrograph took 0.58–0.67 s at 2
    threads against 0.31–0.36 s at 1, a 1024² one 1.81–1.88 s against 1.40–1.45 s); one-off large stages inside
    (:func:`large_work`) get them back where cores are idle."""
    import torch

    n = torch.get_num_threads()
    before, _budget.threads = getattr(_budget, "threads", None), n
    try:
        with intra_op_threads(1 if n_pixels < MIN_PIXELS_FOR_THREADS else spare_threads(n)):
            yield
    finally:
        _budget.threads = before


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_peers() -> int | None:
    """Threads running on the machine right now besides the calling one (Linux: the kernel's count of runnable
    tasks, ``/proc/loadavg``'s fourth field, minus the reader); None where the count is not available."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        return max(0, int(fields[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return None


def spare_threads(n: int) -> int:
    """Of ``n`` threads, how many find a core: all of them on an idle machine, one when other processes keep the
    cores busy (a second thread then waits for a core at every synchronisation)."""
    if n <= 1:
        return n
    peers = busy_peers()
    return n if peers is None else max(1, min(n, _usable_cores() - peers))


@contextmanager
def large_work():
    """Run a one-off large stage (a particle's 3-D map or projector: 3-D FFTs of ~10⁵–10⁶ voxels, millions of spread
    kernel entries) on every thread set that finds an idle core, even where :func:`threads_for` keeps the small
    per-image stages on one. Measured on 2 cores: idle, a 90³ projector builds in 0.10–0.12 s at 2 threads against
    0.16 s at 1 (60³: 0.032 against 0.039 s); with two busy processes beside it, 2 threads gained nothing there and
    made a 400² helix micrograph that builds a 72³ projector slower (0.104 against 0.077 s, minima), so then one.
    Only on the main thread: the tilt workers run side by side on one thread each, and the count is process-wide."""
    n = getattr(_budget, "threads", None)
    if n is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    with intra_op_threads(spare_threads(n)):
        yield
