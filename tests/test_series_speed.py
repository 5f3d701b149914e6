"""The fast paths of a tilt series give what the plain paths give: the Fourier slices sampled through tiled z planes
(one 2-D ``grid_sample``) equal the 3-D sampler's cubic B-spline, kernels shared across views are the kernels a view
would build, plain STAR tables are the text starfile writes, and a series written from a config loads none of the
heavy libraries (matplotlib, pandas, sympy) the writers and torch pull in."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from difftem.core.fft import _broadcasts_into
from difftem.core.grid import Grid
from difftem.core.rotations import rotation_zyz_deg
from difftem.forward import multislice as ms
from difftem.forward import particle_map as pm
from difftem.forward.potential import IceModel, Patch
from difftem.forward.scattering import get_table
from difftem.io.star import _frame, read_star, write_star
from difftem.specimen.build import builtin_structure
from difftem.specimen.structure import read_structure


@pytest.mark.parametrize("shape", [(2, 30, 30, 30), (4, 17, 23, 29)])
def test_tiled_planes_sample_the_same_spline(shape):
    """Every point, inside the volume, at its edges and beyond it (zero coefficients there), as the 3-D sampler."""
    gen = torch.Generator().manual_seed(1)
    coeffs = torch.randn(shape, generator=gen)
    d, h, w = shape[1:]
    size = torch.tensor([w, h, d], dtype=torch.float64)
    pts = torch.rand((5000, 3), generator=gen, dtype=torch.float64) * (size + 12) - 6  # 6 voxels beyond each face
    pts[:8] = torch.tensor([[0, 0, 0], [w - 1, h - 1, d - 1], [-2, 3, 4], [w, 3, 4], [5, -2.5, 4], [5, h + 0.5, 1],
                            [3, 3, -1.5], [3, 3, d + 0.9]], dtype=torch.float64)
    planes, ncol = pm.tile_planes(coeffs)
    ref = pm.cubic_bspline_sample(coeffs, pts)
    out = pm.cubic_bspline_sample_planes(planes, ncol, (d, h, w), pts)
    assert out.shape == ref.shape
    # float32 coordinates on the tiled image (hundreds of pixels wide): ~1e-5 of a voxel off for white noise
    assert float((out - ref).abs().max()) < 2e-4 * float(ref.abs().max())
    far = (pts < -3).any(1) | (pts > size + 2).any(1)  # beyond the spline's reach: exactly zero, as outside the volume
    assert float(out[:, far].abs().max()) == 0.0


def test_projections_through_tiled_planes_match_the_3d_sampler(monkeypatch):
    """A real projector's copies (ubiquitin, 2 Å pixels, random poses): the two samplers agree to 1e-5, and sampling
    only the band's disc changes nothing (1e-6). (The torch samplers: the compiled kernel is tested in test_native.)"""
    monkeypatch.setenv("DIFFTEM_NATIVE", "0")
    ice = IceModel(150.0, 4.8775, 0.7591)
    fp = pm.build_fourier_projector(read_structure(builtin_structure("1ubi"), centre="mass"), get_table("kirkland"),
                                    pixel_size_a=2.0, ice=ice, absorption_ratio=ice.absorption_ratio)
    rng = np.random.default_rng(0)
    rots = torch.as_tensor(np.stack([rotation_zyz_deg(*rng.uniform(-180, 180, 3)) for _ in range(12)]))
    offsets = torch.as_tensor(rng.uniform(0, 30, (12, 2)))
    fast = fp.project(rots, offsets, fp.box_px())
    assert fp._planes is not None and fp.nbytes == (fp.coeffs.numel() + fp._planes[0].numel()) * 4
    monkeypatch.setattr(pm, "PLANES_MAX_BYTES", 0)  # a projector too big for a second copy: the 3-D sampler
    plain = pm.FourierProjector(fp.coeffs, fp.pixel_size_a, fp.support_a, fp.absorption_ratio)
    slow = plain.project(rots, offsets, fp.box_px())
    assert plain._planes is None
    assert float((fast - slow).norm() / slow.norm()) < 1e-5
    # the slice sampled only inside its band (+ the spline's reach), as built, against every frequency sampled
    assert fp.band_limit_per_a == pytest.approx(0.25)
    monkeypatch.undo()
    monkeypatch.setenv("DIFFTEM_NATIVE", "0")
    everywhere = pm.FourierProjector(fp.coeffs, fp.pixel_size_a, fp.support_a, fp.absorption_ratio)
    full = everywhere.project(rots, offsets, fp.box_px())
    assert float((fast - full).norm() / full.norm()) < 1e-6


def _two_bumps(grid: Grid):
    """A thin potential: two slices with a bump each, for a multislice run."""
    class Pot:
        ice = IceModel(60.0, 4.8775, 0.7591)
        z_start_a, slice_thickness_a, n_slices = -30.0, 20.0, 3
        device, cdtype, rdtype = torch.device("cpu"), torch.complex64, torch.float32

        def __init__(self):
            self.grid = grid

        def slice_content(self, k, with_patch=True):
            from difftem.forward.potential import SlicedBase

            return SlicedBase.slice_content(self, k, with_patch=False)

        def uniform_potential(self, content):
            return content.ice_thickness_a * 4.8775

        def has_atoms(self, k):
            return k != 1

        def slice_patch(self, k):
            yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
            bump = 30 * torch.exp(-((yy - 11 - k) ** 2 + (xx - 12) ** 2) / 8)
            return Patch(20, 16 + 4 * k, torch.complex(bump, 0.1 * bump))

    return Pot()


def test_shared_kernels_are_the_views_own():
    """A second multislice reuses the first one's propagators and apertures (the same tensors) and gets the same
    wave as a run with an empty cache; the cache stays within its bytes."""
    grid = Grid((64, 64), 2.0)
    ms.KERNELS.clear()
    first = ms.multislice(_two_bumps(grid), 0.0197, 7.29e-4, checkpoint=False)
    held = dict(ms.KERNELS._items)
    assert any(k[0] == "propagator" for k in held) and any(k[0] == "aperture" for k in held)
    again = ms.Multislice(_two_bumps(grid), 0.0197, 7.29e-4, checkpoint=False)
    second = again.run()
    assert all(v is held[k] for k, v in ms.KERNELS._items.items() if k in held)
    assert torch.equal(first, second)
    ms.KERNELS.clear()
    assert torch.equal(ms.multislice(_two_bumps(grid), 0.0197, 7.29e-4, checkpoint=False), first)
    small = ms.KernelCache(max_bytes=3 * 64 * 64 * 8)
    for i in range(5):
        small.get(i, lambda: torch.zeros(64, 64, dtype=torch.complex64))
    assert small._bytes <= small.max_bytes and list(small._items) == [2, 3, 4]


@pytest.mark.parametrize("a, b", [((3, 1), (2, 3, 4)), ((4,), (2, 3, 4)), ((3, 4), (3, 4)), ((), (5,)),
                                  ((2, 3, 4), (3, 4)), ((5,), (3, 4)), ((2, 1, 1), (1, 3, 4))])
def test_broadcast_check_is_torchs(a, b):
    expect = len(a) <= len(b) and tuple(torch.broadcast_shapes(a, b)) == tuple(b) if _broadcastable(a, b) else False
    assert _broadcasts_into(torch.Size(a), torch.Size(b)) == expect


def _broadcastable(a, b) -> bool:
    try:
        torch.broadcast_shapes(a, b)
        return True
    except RuntimeError:
        return False


def test_plain_star_tables_are_starfiles_text(tmp_path):
    rows = [{"rlnMicrographName": f"{i + 1}@tilt_series.mrc", "rlnTomoNominalStageTiltAngle": -3.0 + 3 * i,
             "difftemTiltIndex": i, "difftemSeconds": np.float32(0.1 * i), "difftemFlag": i % 2 == 0,
             "difftemNote": "two words" if i else "", "difftemNan": float("nan") if i == 1 else 1.0,
             "difftemCount": np.int64(7)} for i in range(3)]
    blocks = {"tilts": rows, "more": [{"a": 1, "b": 2.5}]}
    write_star(tmp_path / "ours.star", blocks, "a comment\nsecond line")
    starfile.write({k: _frame(v) for k, v in blocks.items()}, tmp_path / "theirs.star", float_format="%.6f")
    ours = (tmp_path / "ours.star").read_text().splitlines()
    theirs = (tmp_path / "theirs.star").read_text().splitlines()
    assert ours[:2] == ["# a comment", "# second line"]
    assert ours[3:] == theirs[1:]  # past starfile's dated header line, the same text
    back = read_star(tmp_path / "ours.star")
    assert back["tilts"]["rlnMicrographName"].tolist() == [r["rlnMicrographName"] for r in rows]
    # rows with different columns go through starfile (missing values), and still read back
    write_star(tmp_path / "mixed.star", {"t": [{"a": 1}, {"a": 2, "b": "x"}]})
    assert read_star(tmp_path / "mixed.star")["t"].shape == (2, 2)


def test_a_written_series_loads_no_heavy_library(tmp_path):
    """Simulating and writing a small tilt series imports neither matplotlib, pandas nor sympy (0.4–0.8 s each)."""
    cfg = {"seed": 1, "beam": {"voltage_kv": 300, "dose_e_per_a2": 10}, "optics": {"defocus_um": 1.0},
           "detector": {"shape_px": [48, 48], "pixel_size_a": 3.0},
           "sample": {"ice_thickness_nm": 10, "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0]]}]},
           "simulation": {"slice_thickness_a": 25.0, "device": "cpu"},
           "tilt_series": {"scheme": "list", "angles_deg": [-20, 0, 20], "total_dose_e_per_a2": 30}}
    code = textwrap.dedent(f"""
        import json, sys
        from difftem.config import config_from_dict
        from difftem.simulate.output import run_and_write
        run_and_write(config_from_dict(json.loads({json.dumps(json.dumps(cfg))})), {str(tmp_path / "out")!r})
        print(json.dumps(sorted(m for m in ("matplotlib", "pandas", "sympy", "starfile") if m in sys.modules)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []
    assert (tmp_path / "out" / "preview.png").stat().st_size > 10_000


def test_large_work_gets_the_threads_small_work_gave_up(monkeypatch):
    """Inside a small field's one-thread block, a one-off large stage (a map or projector build) runs on every
    thread set (here on an idle machine), on the main thread only: a tilt worker's count is process-wide and stays
    at one."""
    from concurrent.futures import ThreadPoolExecutor

    from difftem.core import threads
    from difftem.core.threads import large_work, threads_for

    monkeypatch.setattr(threads, "busy_peers", lambda: 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threads_for(64 * 64):
            assert torch.get_num_threads() == 1
            with large_work():
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1

            def in_worker():
                with threads_for(64 * 64):  # a small stage inside a tilt worker: its own count, not the main's
                    pass
                with large_work():
                    return torch.get_num_threads()

            with ThreadPoolExecutor(1) as pool:
                assert pool.submit(in_worker).result() == 1
            with large_work():  # the main thread's budget is as it was
                assert torch.get_num_threads() == 2
        with large_work():  # outside any threads_for: as set
            assert torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "busy_peers", lambda: 2)  # two busy processes on the two cores
        monkeypatch.setattr(threads, "_usable_cores", lambda: 2)
        with threads_for(64 * 64), large_work():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_large_fields_take_threads_only_on_idle_cores(monkeypatch):
    """A field large enough for threads gets them where cores are idle and keeps to one beside busy processes."""
    from difftem.core import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_usable_cores", lambda: 2)
    try:
        torch.set_num_threads(2)
        for peers, want in ((0, 2), (1, 1), (2, 1), (None, 2)):
            monkeypatch.setattr(threads, "busy_peers", lambda p=peers: p)
            with threads.threads_for(1024 * 1024):
                assert torch.get_num_threads() == want, peers
            with threads.threads_for(64 * 64):  # small: one thread whatever the load
                assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "peers", "want"), [(2, 0, 2), (2, 1, 1), (2, 3, 1), (8, 3, 4), (8, 0, 4)])
def test_spare_threads_are_the_idle_cores(monkeypatch, cores, peers, want):
    """Of 4 threads asked for: as many as there are cores nobody else is running on, at least one; all where the
    machine cannot tell."""
    from difftem.core import threads

    monkeypatch.setattr(threads, "_usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_peers", lambda: peers)
    assert threads.spare_threads(4) == min(4, want)
    monkeypatch.setattr(threads, "busy_peers", lambda: None)
    assert threads.spare_threads(4) == 4


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="no /proc/loadavg (not Linux)")
def test_busy_peers_sees_busy_processes():
    """The kernel's count of runnable tasks sees two spinning processes (at least: other tests may run beside)."""
    import time

    from difftem.core.threads import busy_peers

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        seen, deadline = [], time.monotonic() + 20
        while time.monotonic() < deadline and max(seen, default=0) < 2:
            seen.append(busy_peers())
            time.sleep(0.05)
        assert max(seen) >= 2, seen
    finally:
        for p in spinners:
            p.kill()
            p.wait(10)
