"""The memory and time estimate (issue 14): it covers the field, the atom path, maps and their sampling, copies
and tilts; it bounds the measured peak; a run it refuses is refused within seconds, before anything large is
allocated, naming the part that dominates and its fix; ``auto`` takes the mode estimated fastest that fits; and
an allocation failure at run time is a ResourceError, not a traceback.

Measured for the live-byte model, before the allocator's slack (×1.5) and the 24 MiB working set made the estimate
an upper bound (torch 2.13, CPU, one thread, idle machine; estimate / peak RSS increase of the run = ratio):
  1024² field, no particles 84 / 92 MB (0.91); 50 ubiquitins on the atom path, 512²: 114 / 167 MB (0.68);
  30 ubiquitins projected, 384²: 82 / 101 MB (0.81); 6 ubiquitins as slab maps, 256²: 198 / 226 MB (0.88);
  2 Zika virions (1.3 M atoms) on the atom path, 4 Å: 359 / 265 MB (1.35); 3 Zika at 8 Å: 965 / 679 MB (1.42);
  one Zika as a slab map: 4.17 / 3.17 GB (1.32); tilt series of 5 tilts, slab maps with damage: 213 / 189 MB
  (1.13); 13 tilts on the atom path: 157 / 168 MB (0.93); the issue's 20 random Zika virions in 1024² at 2 Å
  (auto: atoms, 13.2 M atoms): 3.21 / 2.22 GB (1.45).
Time (estimate / CPU seconds, one thread) over the same runs: 0.71–2.4 (e.g. 1200 / 995 s for the 20 Zika,
19.6 / 17.6 s for 3 Zika at 8 Å, 16.6 / 23.5 s for the Zika slab map): an order of magnitude, which is what
refusing runs of over a day needs.
"""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from difftem.config import config_from_dict
from difftem.core.errors import ConfigError, DifftemError, ResourceError
from difftem.core.grid import Grid
from difftem.forward.potential import FF_CACHE_BYTES, IceModel, SlicedPotential
from difftem.forward.resources import ALLOCATOR_SLACK, BASE_BYTES, Component, ResourceEstimate, most_atoms_in_slab
from difftem.forward.scattering import get_table
from difftem.forward.scene_build import TypeCache
from difftem.simulate import pipeline
from difftem.simulate.setup import Setup, cheapest_modes
from difftem.specimen.build import builtin_structure
from difftem.specimen.structure import read_structure

UBI = "builtin:1ubi"
ZIKA = Path(__file__).resolve().parents[2] / "shared" / "data" / "structures" / "5ire_zika.pdb.gz"


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ------------------------------------------------------------------------------------------ estimate vs peak
_MEASURE = r"""
import json, sys, torch
from difftem.simulate.pipeline import simulate
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
torch.set_num_threads(1)
simulate({"detector": {"shape_px": [32, 32]}, "sample": {"particles": []}})  # load every kernel first
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) here
r = simulate(json.loads(sys.argv[1]))
print(json.dumps({"peak": status("VmHWM") - base, "estimate": r.metadata["memory_estimate_bytes"],
                  "seconds": r.metadata["time_estimate_s"], "mode": [t["mode"] for t in r.metadata["particle_types"]]}))
"""


def _measured(config: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(config)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS accounting")
@pytest.mark.parametrize("config, mode", [
    ({"detector": {"shape_px": [1024, 1024]}, "sample": {"particles": []}}, []),
    ({"detector": {"shape_px": [512, 512]}, "sample": {"particles": [{"structure": UBI, "random": {"count": 50}}]}},
     ["atoms"]),
    ({"detector": {"shape_px": [256, 256], "pixel_size_a": 2.0},
      "sample": {"particles": [{"structure": UBI, "random": {"count": 6}, "representation": "map"}]}}, ["slab"]),
])
def test_estimate_bounds_the_measured_peak(config, mode):
    """The estimate is an upper bound, not a wild one: measured ratios (estimate / peak) 1.50–1.73, 1.19–1.21 and
    1.49–1.57 for these three at 1 and 2 threads; required 1…4."""
    r = _measured(config)
    assert r["mode"] == mode
    assert 1.0 <= r["estimate"] / r["peak"] < 4.0, r
    assert r["seconds"] > 0


# ------------------------------------------------------------------------------------------ refusals, fast
def _fast(fn, seconds: float, error=DifftemError) -> pytest.ExceptionInfo:
    t0 = time.perf_counter()
    with pytest.raises(error) as exc:
        fn()
    assert time.perf_counter() - t0 < seconds, f"took {time.perf_counter() - t0:.1f} s"
    return exc


def test_a_million_random_copies_are_refused_fast():
    exc = _fast(lambda: pipeline.simulate({"detector": {"shape_px": [8192, 8192]}, "sample": {"particles": [
        {"structure": UBI, "random": {"count": 1_000_000}}]}}), 5.0, ConfigError)
    _one_line(exc, "random")


def test_an_impossible_random_count_fails_before_placing():
    """10⁵ ubiquitins need 270 % of a 2048² field × 30 nm of ice: refused from the counts (placing them one by
    one took 35 s to give up)."""
    exc = _fast(lambda: pipeline.simulate({"detector": {"shape_px": [2048, 2048]}, "sample": {"particles": [
        {"structure": UBI, "random": {"count": 100_000}}]}}), 3.0, ConfigError)
    _one_line(exc, "sample.particles.0.random.count", "100,000 copies", "jams", "lower the count")


def test_a_million_explicit_copies_are_refused_by_time_within_seconds():
    """10⁶ explicit ubiquitins (slab maps: ~10¹² samples) would take days: refused from the estimate, which runs
    before any map is built, naming the copies."""
    rng = np.random.default_rng(0)
    pos = np.column_stack([rng.uniform(-120, 120, (10**6, 2)), rng.uniform(-100, 100, 10**6)])
    config = config_from_dict({"sample": {"particles": [{"structure": UBI, "positions_a": pos.tolist()}]}})
    exc = _fast(lambda: pipeline.simulate(config), 15.0, ResourceError)
    _one_line(exc, "1,000,000 copies", "sample.particles.0", "fewer copies", " h ")


def test_a_hundred_thousand_particle_entries_are_refused_fast():
    entries = [{"structure": UBI}] * 100_000
    exc = _fast(lambda: pipeline.simulate({"sample": {"particles": entries}}), 10.0, ConfigError)
    _one_line(exc, "sample.particles")


def test_a_million_helix_subunits_are_refused_fast():
    exc = _fast(lambda: pipeline.simulate({"sample": {"particles": [
        {"structure": UBI, "helix": {"rise_a": 1.4, "twist_deg": 22.0, "n_subunits": 1_000_000}}]}}), 3.0,
        ConfigError)
    _one_line(exc, "n_subunits")


def test_a_refusal_names_the_dominant_part():
    exc = _fast(lambda: pipeline.simulate_tilt_series({
        "detector": {"shape_px": [256, 256]}, "sample": {"particles": [{"structure": UBI, "random": {"count": 20}}]},
        "tilt_series": {"step_deg": 1}, "simulation": {"max_memory_gb": 0.1}}), 5.0, ResourceError)
    _one_line(exc, "tilt_series: 121 tilts", "larger tilt_series.step_deg", "simulation.max_memory_gb = 0.1")
    exc = _fast(lambda: pipeline.simulate({"detector": {"shape_px": [65536, 65536]},
                                           "simulation": {"max_memory_gb": 1}}), 5.0, ResourceError)
    _one_line(exc, "65536×65536 px field", "reduce detector.shape_px")


# ------------------------------------------------------------------------------------------ auto picks what fits
def test_zika_virions_auto_picks_what_fits(shared_data):
    """Issue 14: 20 random Zika virions (5IRE assembly 1, 661,440 atoms each) in a 1024² field at 2 Å were refused
    as needing 174.7 GB with "reduce detector.shape_px": the old per-slice term took four whole particles per slice.
    The atom path needs ~3 GB (13 M atoms, ~40 k of them per 2 Å slice); a slab map ~24 GB to build."""
    base = {"detector": {"shape_px": [1024, 1024], "pixel_size_a": 2.0},
            "sample": {"ice_thickness_nm": 150, "particles": [
                {"structure": str(ZIKA), "assembly": "1", "random": {"count": 20, "min_gap_a": 20}}]}}
    t0 = time.perf_counter()
    setup = Setup.build(config_from_dict({**base, "simulation": {"max_memory_gb": 8}}))
    need = setup.check_memory()
    assert time.perf_counter() - t0 < 15
    assert setup.modes == ["atoms"] and need < 6e9
    top = setup.estimate.by_memory()[0].cause
    assert top == "sample.particles.0 (5ire_zika), 20 copies × 661,440 atoms on the atom path"
    scene = setup.scene
    scene.types[0].representation = "map"  # as `representation: map` would make it
    with pytest.raises(ResourceError) as exc:
        Setup.build(setup.config, scene).check_memory()
    _one_line(exc, "as a slab map", "representation: atoms for sample.particles.0 (5ire_zika)")
    scene.types[0].representation = "auto"  # nothing fits 1 GB: the refusal names auto's own choice
    with pytest.raises(ResourceError) as exc:
        Setup.build(config_from_dict({**base, "simulation": {"max_memory_gb": 1}}), setup.scene).check_memory()
    _one_line(exc, "20 copies × 661,440 atoms on the atom path", "use representation: map", "fewer copies")


def test_auto_takes_the_mode_estimated_fastest():
    """200 ubiquitins at 4 Å: auto's first choice is the atom path (120 k atoms < 200 k) but projections are
    estimated faster (measured: 2.1 s vs 4.9 s CPU at one thread), so it takes them, and says so; the estimates
    of both are in the run's metadata. An explicit representation is never moved."""
    cfg = {"detector": {"shape_px": [512, 512], "pixel_size_a": 4.0},
           "sample": {"particles": [{"structure": UBI, "random": {"count": 200}}]}}
    free = Setup.build(config_from_dict(cfg))
    tried = free.mode_estimates[0]
    assert set(tried) == {"atoms", "projection"}
    assert tried["projection"]["seconds"] < tried["atoms"]["seconds"] and free.modes == ["projection"]
    assert free.particle_types()[0]["mode_estimates"] == tried
    assert any("auto chose projection" in n for n in free.notes)
    assert not any("auto chose" in w for w in free.warnings())  # information, not a warning
    limit_gb = (tried["projection"]["memory_bytes"] + tried["atoms"]["memory_bytes"]) / 2 / 1e9
    free.scene.types[0].representation = "atoms"
    pinned = Setup.build(config_from_dict({**cfg, "simulation": {"max_memory_gb": limit_gb}}), free.scene)
    assert pinned.modes == ["atoms"] and not pinned.mode_estimates
    with pytest.raises(ResourceError):
        pinned.check_memory()


def test_cheapest_modes_takes_the_fastest_mode_that_fits():
    size = {"atoms": [8e9, 1e9], "slab": [2e9, 3e9], "subunits": [1e9, 3e9]}
    secs = {"atoms": [10.0, 1.0], "slab": [50.0, 9.0], "subunits": [5.0, 9.0]}

    def estimate_of(modes):
        return ResourceEstimate([Component(f"t{t}", resident_bytes=size[m][t], seconds=secs[m][t], type_index=t)
                                 for t, m in enumerate(modes)])

    both = {0: ["atoms", "slab", "subunits"], 1: ["atoms", "slab"]}
    modes, est, tried = cheapest_modes(["atoms", "atoms"], both, estimate_of, 1e11)
    assert modes == ["subunits", "atoms"] and est.seconds == 6.0
    assert tried[0]["slab"]["seconds"] == 51.0 and set(tried[1]) == {"atoms", "slab"}
    # memory decides first: atoms for type 0 (8 GB) does not fit 5 GB, the slower slab does only with type 1's atoms
    modes, est, _ = cheapest_modes(["atoms", "atoms"], {0: ["atoms", "slab"], 1: ["atoms", "slab"]}, estimate_of, 5e9)
    assert modes == ["slab", "atoms"] and est.peak_bytes == int(BASE_BYTES + ALLOCATOR_SLACK * 3e9)
    # nothing fits: the least over the limit
    modes, _, _ = cheapest_modes(["atoms", "atoms"], {0: ["atoms", "slab"]}, estimate_of, 1e9)
    assert modes == ["slab", "atoms"]


# ------------------------------------------------------------------------------------------ allocation failures
@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
                 "allocate 1099511627776 bytes."),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes. Error code "
                 "12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 TiB"),
    MemoryError(),
])
def test_max_memory_gb_above_the_machine_gives_a_resource_error(monkeypatch, failure):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(pipeline, "expose", fail)
    cfg = {"detector": {"shape_px": [64, 64]}, "simulation": {"max_memory_gb": 100000}}
    with pytest.raises(ResourceError) as exc:
        pipeline.simulate(cfg)
    _one_line(exc, "ran out of memory", "simulation.max_memory_gb = 100000", "lower it", "the estimate was")
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_other_runtime_errors_are_not_disguised(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "expose", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        pipeline.simulate({"detector": {"shape_px": [64, 64]}})


# ------------------------------------------------------------------------------------------ per-view storage
def test_a_tilt_series_keeps_one_filtered_map_per_type():
    ubi = read_structure(builtin_structure("1ubi"), centre="mass")
    cache = TypeCache(get_table("kirkland"), 4.0, IceModel(300.0), 0.156, torch.device("cpu"))
    filters = [lambda k, b=b: torch.exp(-b * k**2) for b in (10.0, 20.0, 30.0)]
    maps = [cache.slab_map(0, ubi, f) for f in filters]
    assert len(cache.maps) == 2  # the map and the latest view's filtered copy, not one per tilt
    assert cache.slab_map(0, ubi, filters[-1]) is maps[-1]
    assert not torch.equal(maps[0].volume, maps[1].volume)
    assert cache.nbytes == 2 * maps[0].nbytes


def test_cached_form_factors_stay_bounded():
    pot = SlicedPotential(torch.tensor([6]), torch.zeros(1, 3), torch.tensor([20.0]), torch.tensor([1.0]),
                          Grid((2048, 2048), 1.0),
                          get_table("kirkland"), 2.0, IceModel(0.0))
    for side in (256, 384, 480, 512, 600, 640, 720, 768, 800, 864):
        for z in (1, 6, 7, 8, 16):
            pot._form_factors(z, 0, (side, side))
    held = sum(v.numel() * v.element_size() for v in pot._ff_cache.values())
    last = 5 * 2 * 864 * (864 // 2 + 1) * 4
    assert held <= FF_CACHE_BYTES + last
    assert all(key in pot._ff_cache for key in [(z, 0, (864, 864)) for z in (1, 6, 7, 8, 16)])


def test_slab_counts_follow_the_beam_direction():
    """A rod of 1000 atoms along x: a 2 Å slab across the rod holds ~2 %, one along it all of them."""
    x = np.linspace(-500, 500, 1000)
    rod = np.column_stack([x, np.zeros_like(x), np.zeros_like(x)])
    assert most_atoms_in_slab(rod, 2.0) == 1000
    assert most_atoms_in_slab(rod, 2.0, np.array([[1.0, 0.0, 0.0]])) <= 4
    assert math.isclose(most_atoms_in_slab(rod, 2.0, np.array([[0.0, 0.0, 1.0]])), 1000)
