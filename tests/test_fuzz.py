"""Hostile input: mutated configs and corrupted files never crash, hang or give non-finite images.

Every outcome must be one of: a difftem error whose message is one line (naming a field or a file), or a finite
image. The default run draws a few dozen cases with hypothesis (shrinking a failure to its smallest form); the
long profile (``-m fuzz``) draws thousands with a seeded generator, counts every outcome and writes the table to
``fuzz_report.json`` in the pytest temporary folder (path printed).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import gc
import gzip
import json
import math
import random
import signal
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from difftem import simulate, simulate_tilt_series
from difftem.config import config_from_dict
from difftem.core.errors import DifftemError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HANG_S = 20
UBQ_GZ = Path(str(resources.files("difftem").joinpath("data", "1ubi_ubiquitin.pdb.gz")))
SHARED_MTF = Path(__file__).resolve().parents[2] / "shared" / "data" / "mtf" / "mtf_k3_standard_300kV_FL2.star"

BASE = {
    "seed": 1,
    "beam": {"voltage_kv": 300, "dose_e_per_a2": 30},
    "optics": {"defocus_um": 1.0, "astigmatism_um": 0.05, "astigmatism_angle_deg": 10, "cs_mm": 2.7, "cc_mm": 2.7,
               "energy_spread_ev": 0.8, "illumination_semiangle_mrad": 0.02, "aperture_mrad": None,
               "phase_shift_deg": 0},
    "detector": {"shape_px": [48, 48], "pixel_size_a": 2.0, "noise": "poisson", "dqe": 0.8, "gain": 1.0,
                 "mtf": {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}},
    "sample": {"ice_thickness_nm": 6, "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]],
                                                     "euler_zyz_deg": [[0, 0, 0]]}]},
    "simulation": {"slice_thickness_a": 6.0, "device": "cpu", "max_memory_gb": 4},
}
TILTS = {"scheme": "list", "angles_deg": [-20, 0, 20], "total_dose_e_per_a2": 30, "tilt_axis_deg": 0}

# values a hostile user (or a broken script) puts into a config
HOSTILE = [math.nan, math.inf, -math.inf, 0, -0.0, -1, -1e300, 1e-300, 1e300, 1e20, 2**64, -(2**63), 2**63, 0.5,
           "abc", "", None, True, False, [], {}, [[]], [1, 2, 3], [[math.nan, 0, 0]], {"x": 1}, "builtin:nope",
           "/nonexistent/structure.pdb", "a" * 5000, "\x00", "1e999", [0, 1e20, 0], [[0, 0, 0], [0, 1e20, 0]]]
EXTRA_SECTIONS = {
    "tilt_series": [TILTS, {**TILTS, "angles_deg": [0, 89.99]}, {"scheme": "dose_symmetric", "step_deg": 1e-6},
                    {"scheme": "dose_symmetric", "min_deg": -60, "max_deg": 60, "step_deg": 30}],
    "sample.particles.0.random": [{"count": 3}, {"count": 10**6}, {"density_per_um3": 1e12}, {"count": -1}],
    "sample.particles.0.helix": [{"rise_a": 1.4, "twist_deg": 22, "n_subunits": 3},
                                 {"rise_a": 1.4, "twist_deg": 22, "n_subunits": 10**6},
                                 {"rise_a": 0, "twist_deg": 22, "length_a": 100}],
    "simulation.tile_px": [64, 0, 10**9],
    "sample.particles.0.assembly": ["1", "999", ""],
    "detector.mtf": [None, {"star": str(SHARED_MTF)}, {"star": "/nonexistent.star"}],
}


def _leaf_paths(d, prefix=""):
    for k, v in d.items():
        p = f"{prefix}{k}"
        yield p
        if isinstance(v, dict):
            yield from _leaf_paths(v, p + ".")
        elif isinstance(v, list):
            for i, item in enumerate(v):
                yield f"{p}.{i}"
                if isinstance(item, dict):
                    yield from _leaf_paths(item, f"{p}.{i}.")
                elif isinstance(item, list):
                    yield from (f"{p}.{i}.{j}" for j in range(len(item)))


PATHS = sorted(set(_leaf_paths(BASE)))


def _set(d, path: str, value) -> None:
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _get(d, path: str):
    node = d
    for k in path.split("."):
        node = node[int(k)] if isinstance(node, list) else node[k]
    return node


def mutate_config(rng: random.Random) -> tuple[dict, list[str]]:
    """The base config with one to three hostile changes; returns it and the changed paths."""
    cfg = copy.deepcopy(BASE)
    changed = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        with contextlib.suppress(KeyError, IndexError, TypeError, ValueError, AttributeError):
            if kind < 0.2:
                path = rng.choice(sorted(EXTRA_SECTIONS))
                _set(cfg, path, copy.deepcopy(rng.choice(EXTRA_SECTIONS[path])))
            elif kind < 0.5:  # scale a number by a power of ten
                path = rng.choice(PATHS)
                value = _get(cfg, path)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    _set(cfg, path, value * 10.0 ** rng.randint(-15, 15) if value else rng.choice([1e-12, 1e12]))
                else:
                    continue
            elif kind < 0.95:
                path = rng.choice(PATHS)
                _set(cfg, path, copy.deepcopy(rng.choice(HOSTILE)))
            else:  # a field that does not exist
                path = rng.choice(["beam.dose", "optics.defocus", "detector.pixel_size", "sample.ice", "seeds"])
                _set(cfg, path, 1.0)
            changed.append(path)
    return cfg, changed


class _Hang(BaseException):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(exc: BaseException) -> bool:
    msg = str(exc)
    return bool(msg.strip()) and "\n" not in msg.strip()


CLEAR_REFS = Path("/proc/self/clear_refs")
_LIBC_NAME = ctypes.util.find_library("c")  # looked up once: each lookup runs ldconfig
LIBC = ctypes.CDLL(_LIBC_NAME) if _LIBC_NAME else None
CAN_MEASURE_PEAK = CLEAR_REFS.exists() and LIBC is not None


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@contextlib.contextmanager
def _peak_rss_increase():
    """Measures the peak resident-set increase of the block (``box["bytes"]``; None where Linux's peak reset is
    unavailable): freed heap returned to the system first, then the kernel's high-water mark restarted."""
    box: dict = {"bytes": None}
    if not CAN_MEASURE_PEAK:
        yield box
        return
    gc.collect()
    LIBC.malloc_trim(0)
    base = _status_bytes("VmRSS")
    CLEAR_REFS.write_text("5")
    try:
        yield box
    finally:
        box["bytes"] = _status_bytes("VmHWM") - base


def run_config_case(cfg: dict, peaks: list | None = None) -> tuple[str, str]:
    """(outcome, detail): outcome is error, ran, nonfinite, over_estimate (the run's peak RSS increase beyond its
    memory estimate), bad_message, uncaught or hang. ``peaks`` collects (peak, estimate) of the runs."""
    try:
        with _time_limit(HANG_S), _peak_rss_increase() as peak:
            config = config_from_dict(copy.deepcopy(cfg), "fuzz.yaml")
            if config.tilt_series is not None:
                r = simulate_tilt_series(config)
                images = [r.tilts, r.noiseless]
            else:
                r = simulate(config)
                images = [r.micrograph, r.noiseless]
    except _Hang:
        return "hang", f"> {HANG_S} s"
    except DifftemError as exc:
        return ("error" if _one_line(exc) else "bad_message"), str(exc)[:300]
    except Exception as exc:  # a bug: the outcome the suite exists to find
        return "uncaught", f"{type(exc).__name__}: {str(exc)[:300]}"
    if not all(bool(torch.isfinite(t).all()) for t in images):
        return "nonfinite", ""
    estimate = r.metadata["memory_estimate_bytes"]
    if peak["bytes"] is not None:
        if peaks is not None:
            peaks.append((peak["bytes"], estimate))
        if peak["bytes"] > estimate:
            return "over_estimate", f"peak RSS increase {peak['bytes'] / 2**20:.1f} MiB > {estimate / 2**20:.1f} MiB"
    return "ran", ""


# ------------------------------------------------------------------------------------------------ files
def _base_files(tmp: Path) -> dict[str, Path]:
    """Small valid files of every kind difftem reads."""
    import mrcfile

    tmp.mkdir(parents=True, exist_ok=True)
    files = {}
    pdb = tmp / "model.pdb"
    lines = gzip.decompress(UBQ_GZ.read_bytes()).decode().splitlines()
    pdb.write_text("\n".join(ln for ln in lines if ln.startswith(("ATOM", "HETATM", "CRYST1")))[:20000] + "\nEND\n")
    files["structure"] = pdb
    star = tmp / "mtf.star"
    freq = np.linspace(0, 0.5, 12)
    star.write_text("data_\n\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n"
                    + "".join(f"{f:.6f} {1 / (1 + 8 * f * f):.6f}\n" for f in freq))
    files["mtf_star"] = star
    tlt = tmp / "series.tlt"
    tlt.write_text("-30.00\n0.00\n30.00\n")
    files["tlt"] = tlt
    stack = tmp / "series.mrc"
    with mrcfile.new(stack, overwrite=True) as m:
        m.set_data(np.random.default_rng(0).random((3, 16, 16), dtype=np.float32))
        m.voxel_size = 2.0
    files["mrc"] = stack
    inp = tmp / "run.inp"
    inp.write_text("=== simulation ===\ngenerate_micrographs = yes\nrand_seed = 1\n=== sample ===\ndiameter = 500\n"
                   "thickness_edge = 10\nthickness_center = 10\n=== particle P ===\nsource = pdb\n"
                   f"pdb_file_in = {pdb.name}\n=== particleset ===\nparticle_type = P\nparticle_coords = random\n"
                   "num_particles = 1\n=== geometry ===\ngen_tilt_data = yes\nntilts = 1\ntheta_start = 0\n"
                   "theta_incr = 0\ngeom_errors = none\n=== electronbeam ===\nacc_voltage = 300\nenergy_spread = 1\n"
                   "gen_dose = yes\ndose_per_im = 2000\n=== optics ===\nmagnification = 50000\ncs = 2\ncc = 2\n"
                   "aperture = 50\nfocal_length = 3\ncond_ap_angle = 0.1\ngen_defocus = yes\ndefocus_nominal = 2\n"
                   "=== detector ===\ndet_pix_x = 32\ndet_pix_y = 32\npixel_size = 10\ngain = 1\n"
                   "use_quantization = yes\ndqe = 0.5\nmtf_a = 0.7\nmtf_b = 0.2\nmtf_c = 0.1\nmtf_alpha = 10\n"
                   "mtf_beta = 40\nimage_file_out = out.mrc\n")
    files["inp"] = inp
    return files


def _read(kind: str, path: Path):
    if kind == "structure":
        from difftem.specimen.structure import read_structure

        atoms = read_structure(path)
        assert np.isfinite(atoms.positions_a).all() and np.isfinite(atoms.b_iso_a2).all()
        assert (atoms.occupancy >= 0).all()
    elif kind == "mtf_star":
        from difftem.forward.detector import read_mtf_star

        curve = read_mtf_star(path)
        assert np.isfinite(curve.value).all() and np.isfinite(curve.frequency_per_px).all()
    elif kind == "tlt":
        from difftem.io.tlt import read_tlt

        assert np.isfinite(read_tlt(path)).all()
    elif kind == "mrc":
        from difftem.io.tlt import read_volume_mrc

        data, _ = read_volume_mrc(path, "tilt series", 2.0)
        assert np.isfinite(data).all()
    else:
        from difftem.temsim import load_inp

        load_inp(path)


NUMBER = __import__("re").compile(rb"-?\d+\.?\d*(?:[eE][-+]?\d+)?")


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """One of the ways files go bad: truncation, flipped or inserted bytes, a number made absurd, lines lost
    or doubled, binary junk, an empty file."""
    kind = rng.randrange(8)
    n = len(data)
    if kind == 0:
        return data[: rng.randrange(max(n, 1))]
    if kind == 1:
        b = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:
        i = rng.randrange(n + 1)
        return data[:i] + rng.choice([b"\x00", b"\xff\xfe", b"\xc3\x28", b"nan", b"\n\n\n", b"#", b"=" * 40]) + data[i:]
    if kind == 3:
        numbers = list(NUMBER.finditer(data))
        if numbers:
            m = rng.choice(numbers)
            bad = rng.choice([b"nan", b"inf", b"-inf", b"1e300", b"-5", b"0", b"1e-300", b"99999999999999999999"])
            return data[: m.start()] + bad + data[m.end():]
        return data
    if kind == 4:
        lines = data.split(b"\n")
        if len(lines) > 1:
            del lines[rng.randrange(len(lines))]
        return b"\n".join(lines)
    if kind == 5:
        lines = data.split(b"\n")
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i] * rng.randint(1, 3))
        return b"\n".join(lines)
    if kind == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))
    return b""


def run_file_case(kind: str, path: Path) -> tuple[str, str]:
    try:
        with _time_limit(HANG_S):
            _read(kind, path)
    except _Hang:
        return "hang", f"> {HANG_S} s"
    except DifftemError as exc:
        ok = _one_line(exc) and path.name in str(exc)
        return ("error" if ok else "bad_message"), str(exc)[:300]
    except AssertionError as exc:
        return "nonfinite", str(exc)[:300]
    except Exception as exc:
        return "uncaught", f"{type(exc).__name__}: {str(exc)[:300]}"
    return "ran", ""


GOOD = {"error", "ran"}


# ------------------------------------------------------------------------------------------------ default profile
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.randoms(use_true_random=False))
def test_mutated_configs(rng):
    cfg, changed = mutate_config(rng)
    outcome, detail = run_config_case(cfg)
    assert outcome in GOOD, f"{outcome} after changing {changed}: {detail}\n{json.dumps(cfg, default=str)[:2000]}"


@pytest.fixture(scope="module")
def base_files(tmp_path_factory):
    return _base_files(tmp_path_factory.mktemp("fuzz_base"))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rng=st.randoms(use_true_random=False), kind=st.sampled_from(["structure", "mtf_star", "tlt", "mrc", "inp"]))
def test_corrupted_files(base_files, tmp_path_factory, rng, kind):
    src = base_files[kind]
    folder = tmp_path_factory.mktemp("fuzz_case")
    for f in base_files.values():  # the .inp names the structure beside it
        (folder / f.name).write_bytes(f.read_bytes())
    bad = folder / src.name
    bad.write_bytes(corrupt(src.read_bytes(), rng))
    outcome, detail = run_file_case(kind, bad)
    assert outcome in GOOD, f"{kind}: {outcome}: {detail}"


def test_the_harness_catches_what_it_should():
    """The classifier is not blind: NaN images, multi-line errors and hangs are failures."""
    assert run_file_case("tlt", Path("/nonexistent/x.tlt"))[0] == "error"
    with _time_limit(0.2), contextlib.suppress(_Hang):
        time.sleep(1)
        pytest.fail("the time limit did not fire")
    assert not _one_line(DifftemError("two\nlines"))
    if CAN_MEASURE_PEAK:  # the memory probe sees an allocation of 64 MiB
        with _peak_rss_increase() as peak:
            block = np.ones(8 * 2**20)
            del block
        assert peak["bytes"] >= 60 * 2**20, peak


# ------------------------------------------------------------------------------------------------ long profile
@pytest.mark.fuzz
def test_long_profile(tmp_path):
    """≥ 2,000 mutated configs and ≥ 300 corrupted files; every outcome counted (report in the tmp folder)."""
    rng = random.Random(20261202)
    counts: dict = {"configs": {}, "files": {}}
    failures, peaks = [], []
    t0 = time.perf_counter()
    for i in range(2000):
        cfg, changed = mutate_config(rng)
        outcome, detail = run_config_case(cfg, peaks)
        counts["configs"][outcome] = counts["configs"].get(outcome, 0) + 1
        if outcome not in GOOD:
            failures.append({"case": i, "changed": changed, "outcome": outcome, "detail": detail})
    files = _base_files(tmp_path / "base")
    for i in range(400):
        kind = rng.choice(sorted(files))
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        for f in files.values():
            (folder / f.name).write_bytes(f.read_bytes())
        bad = folder / files[kind].name
        bad.write_bytes(corrupt(files[kind].read_bytes(), rng))
        outcome, detail = run_file_case(kind, bad)
        counts["files"][outcome] = counts["files"].get(outcome, 0) + 1
        if outcome not in GOOD:
            failures.append({"file_case": i, "kind": kind, "outcome": outcome, "detail": detail})
    ratios = sorted(p / e for p, e in peaks)
    memory = {"runs_measured": len(peaks), "max_peak_mib": max((p for p, _ in peaks), default=0) / 2**20,
              "peak_over_estimate": {"max": ratios[-1], "median": ratios[len(ratios) // 2]} if ratios else None}
    report = {"counts": counts, "memory": memory, "seconds": time.perf_counter() - t0, "failures": failures[:200]}
    (tmp_path / "fuzz_report.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"fuzz report: {tmp_path / 'fuzz_report.json'}: {json.dumps(counts)} {json.dumps(memory)}")
    assert not failures, json.dumps(failures[:10], indent=1, default=str)
