"""Tilt series: schemes, dose bookkeeping, damage, geometry and outputs."""

import math

import mrcfile
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from difftem import simulate_tilt_series
from difftem.cli import app
from difftem.config import TiltSeries, config_from_dict
from difftem.core.errors import ConfigError
from difftem.core.grid import Grid
from difftem.core.rotations import tilt_rotation
from difftem.forward.potential import IceModel
from difftem.forward.scattering import get_table
from difftem.forward.scene_build import SceneView, TypeCache, build_view_potential, view_z_range
from difftem.forward.tilt import acquisition_angles, critical_exposure_e_per_a2, exposure_filter, plan_tilts
from difftem.specimen.build import builtin_structure
from difftem.specimen.scene import ParticleType, Placement, Scene, bounding_capsule
from difftem.specimen.structure import Atoms, read_structure


def ts(**kw):
    return TiltSeries(**kw)


def test_schemes():
    assert acquisition_angles(ts(scheme="uniform", min_deg=-6, max_deg=6, step_deg=3)) == [-6, -3, 0, 3, 6]
    assert acquisition_angles(ts(scheme="bidirectional", min_deg=-6, max_deg=6, step_deg=3, start_deg=0)) == \
        [0, 3, 6, -3, -6]
    hagen = acquisition_angles(ts(scheme="dose_symmetric", min_deg=-9, max_deg=9, step_deg=3, group_size=2))
    assert hagen == [0, 3, 6, -3, -6, 9, -9]
    assert acquisition_angles(ts(scheme="dose_symmetric", min_deg=-60, max_deg=60, step_deg=3, group_size=1))[:5] == \
        [0, 3, -3, 6, -6]
    assert sorted(acquisition_angles(ts(scheme="dose_symmetric", min_deg=-60, max_deg=60, step_deg=3))) == \
        [float(a) for a in range(-60, 61, 3)]
    assert acquisition_angles(ts(scheme="list", angles_deg=[10, -20, 30])) == [10, -20, 30]


def test_doses_sum_and_accumulate_in_acquisition_order():
    cfg = config_from_dict({"tilt_series": {"scheme": "dose_symmetric", "min_deg": -60, "max_deg": 60, "step_deg": 3,
                                            "total_dose_e_per_a2": 120}})
    plan = plan_tilts(cfg)
    assert len(plan.angles_deg) == 41
    assert sum(plan.doses_e_per_a2) == pytest.approx(120)
    assert plan.prior_doses_e_per_a2[0] == 0 and plan.angles_deg[0] == 0
    assert np.allclose(np.diff(plan.prior_doses_e_per_a2), plan.doses_e_per_a2[:-1])
    cfg = config_from_dict({"beam": {"dose_e_per_a2": 2.5},
                            "tilt_series": {"scheme": "list", "angles_deg": [0, 20, -20]}})
    assert plan_tilts(cfg).doses_e_per_a2 == [2.5, 2.5, 2.5]
    cfg = config_from_dict({"tilt_series": {"scheme": "list", "angles_deg": [0, 20], "dose_per_tilt_e_per_a2": [1]}})
    with pytest.raises(ConfigError, match="dose_per_tilt_e_per_a2 has 1 values for 2 tilts"):
        plan_tilts(cfg)


def test_bad_tilt_angles_are_clear_errors():
    with pytest.raises(ConfigError, match="strictly between -90 and 90"):
        config_from_dict({"tilt_series": {"scheme": "list", "angles_deg": [0, 95]}})
    with pytest.raises(ConfigError, match="tilt_series.max_deg"):
        config_from_dict({"tilt_series": {"scheme": "uniform", "max_deg": 120}})
    with pytest.raises(ConfigError, match="min_deg"):
        config_from_dict({"tilt_series": {"scheme": "uniform", "min_deg": 30, "max_deg": 10}})


def test_exposure_filter():
    k = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.3], dtype=torch.float64)
    h = exposure_filter(20.0, 5.0, 300.0)(k)
    assert h[0] == pytest.approx(1.0) and torch.all(torch.diff(h) < 0)
    # the exposure average equals the mean of exp(-N/2Ne) over the exposure (numerical quadrature)
    ne = critical_exposure_e_per_a2(k[3:4], 300.0)
    n = torch.linspace(20, 25, 20001, dtype=torch.float64)
    assert float(h[3]) == pytest.approx(float(torch.exp(-n / (2 * ne)).mean()), rel=1e-6)
    # Grant & Grigorieff: at 1/(4 Å) the critical exposure at 300 kV is 0.245·4^1.665 + 2.81
    assert float(critical_exposure_e_per_a2(torch.tensor(0.25), 300.0)) == pytest.approx(0.245 * 4**1.665 + 2.81)
    assert float(critical_exposure_e_per_a2(torch.tensor(0.25), 200.0)) == pytest.approx(
        0.8 * (0.245 * 4**1.665 + 2.81))


def test_tilt_rotation_convention():
    th = math.radians(30)
    r = tilt_rotation(30, 0)
    x, y, z = 10.0, 4.0, 6.0
    assert np.allclose(r @ [x, y, z], [x * math.cos(th) + z * math.sin(th), y, -x * math.sin(th) + z * math.cos(th)])
    r90 = tilt_rotation(30, 90)  # axis along -x: points on the x axis do not move
    assert np.allclose(r90 @ [5.0, 0, 0], [5.0, 0, 0])


def _scene_of_atoms(atoms: Atoms, position=(0.0, 0.0, 0.0)):
    t = ParticleType("p", atoms, bounding_capsule(atoms.positions_a), "atoms")
    return Scene([t], Placement(np.zeros(1, np.int64), np.array([position], float), np.eye(3)[None]))


def _projection(scene, angle_deg, pixel=2.0, n=96, mode="projection"):
    """Projected potential of a one-particle scene at a tilt (Fourier-slice projector: no box edges)."""
    ice = IceModel(0.0)
    cache = TypeCache(get_table("kirkland"), pixel, ice, 0.0, torch.device("cpu"))
    view = SceneView(tilt_rotation(angle_deg, 0.0), 0.0, None)
    pot = build_view_potential(scene, view, [mode], cache, field_grid=Grid((n, n), pixel), window=None,
                               slice_thickness_a=1000.0, ice=ice, z_range_a=view_z_range(scene, view))
    return pot.project().real.double()


def test_mirror_consistency_at_plus_minus_theta():
    """Projecting at +θ and mirroring the image (x → −x) equals projecting the mirrored particle at −θ."""
    ubi = read_structure(builtin_structure("1ubi"), centre="mass")
    mirrored = Atoms(ubi.atomic_number, ubi.positions_a * [-1, 1, 1], ubi.b_iso_a2, ubi.occupancy)
    for theta in (25.0, 50.0):
        a = _projection(_scene_of_atoms(ubi), theta)
        b = _projection(_scene_of_atoms(mirrored), -theta)
        a_flipped = torch.roll(torch.flip(a, dims=[1]), 1, dims=1)  # pixel ix ↔ W − ix about column W//2
        assert float((a_flipped - b).norm() / (b - b.mean()).norm()) < 1e-4
        c = _projection(_scene_of_atoms(ubi), -theta)  # and ±θ of the chiral particle itself differ
        assert float((a_flipped - c).norm() / (c - c.mean()).norm()) > 0.1


def test_off_axis_particle_lands_where_the_geometry_says():
    ubi = read_structure(builtin_structure("1ubi"), centre="mass")
    x0, z0 = 40.0, 30.0
    for theta in (-40.0, 0.0, 35.0):
        img = _projection(_scene_of_atoms(ubi, (x0, 0.0, z0)), theta)
        prof = (img - img.mean()).sum(0)
        prof = torch.clamp(prof, min=0)
        cx = float((prof * torch.arange(96)).sum() / prof.sum())
        # the particle's mass centre moves to x' = x cos θ + z sin θ
        expect = (x0 * math.cos(math.radians(theta)) + z0 * math.sin(math.radians(theta))) / 2.0 + 48
        assert cx == pytest.approx(expect, abs=0.5)


def _tilt_cfg(tmp=None, **over):
    d = {"seed": 4, "beam": {"voltage_kv": 300, "dose_e_per_a2": 10},
         "detector": {"shape_px": [96, 96], "pixel_size_a": 3.0, "noise": "poisson"},
         "sample": {"ice_thickness_nm": 20, "particles": [{"structure": "builtin:1ubi", "random": {"count": 4}}]},
         "simulation": {"slice_thickness_a": 20.0},
         "tilt_series": {"scheme": "dose_symmetric", "min_deg": -30, "max_deg": 30, "step_deg": 15,
                         "total_dose_e_per_a2": 50, "tilt_axis_deg": 10}}
    d.update(over)
    return d


def test_tilt_series_result_and_damage():
    r = simulate_tilt_series(_tilt_cfg())
    assert r.angles_deg == [-30, -15, 0, 15, 30] and r.tilts.shape == (5, 96, 96)
    assert sum(row["difftemDoseEPerA2"] for row in r.tilt_rows) == pytest.approx(50)
    assert r.metadata["particle_types"][0]["copies"] == 4
    # mean counts: dose per tilt (10 e/Å² × 9 Å²) × the ice's absorption along the tilted path t / cos θ
    from difftem.forward.beam import interaction_constant

    sigma = interaction_constant(300.0)
    for img, angle in zip(r.noiseless, r.angles_deg, strict=True):
        expect = 90 * math.exp(-2 * sigma * 0.7591 * 200 / math.cos(math.radians(angle)))
        assert float(img.mean()) == pytest.approx(expect, rel=0.01)
    # damage lowers the contrast of later exposures: compare the same view without damage
    undamaged = simulate_tilt_series(_tilt_cfg(tilt_series={**_tilt_cfg()["tilt_series"], "damage": "none"}))
    last = int(np.argmax([row["rlnMicrographPreExposure"] for row in r.tilt_rows]))
    first = int(np.argmin([row["rlnMicrographPreExposure"] for row in r.tilt_rows]))
    def change(i):  # relative change of the image contrast caused by damage
        a, b = r.noiseless[i] - r.noiseless[i].mean(), undamaged.noiseless[i] - undamaged.noiseless[i].mean()
        return float((a - b).norm() / b.norm())

    assert 0 < change(first) < 0.5 * change(last)  # the first exposure is damaged only during itself
    assert float(r.noiseless[last].std()) < float(undamaged.noiseless[last].std())


def test_cli_writes_tilt_series_outputs(tmp_path):
    path = tmp_path / "ts.yaml"
    path.write_text(yaml.safe_dump(_tilt_cfg()))
    res = CliRunner().invoke(app, ["simulate", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    with mrcfile.open(out / "tilt_series.mrc") as m:
        assert m.data.shape == (5, 96, 96) and float(m.voxel_size.x) == pytest.approx(3.0)
    assert [float(v) for v in (out / "tilt_series.tlt").read_text().split()] == [-30, -15, 0, 15, 30]
    star = (out / "tilts.star").read_text()
    assert "_rlnTomoNominalStageTiltAngle" in star and "_rlnMicrographPreExposure" in star
    assert (out / "particles.star").read_text().count("1ubi") == 4


@pytest.mark.parametrize("representation, placement", [("atoms", "auto"), ("map", "slab"), ("map", "projection")])
def test_tilts_side_by_side_give_the_same_images(representation, placement):
    """Two threads simulate tilts side by side (each on one torch thread), then draw the shot noise in acquisition
    order: the images equal the one-at-a-time run's bit for bit, damage-filtered maps included."""
    cfg = _tilt_cfg(simulation={"slice_thickness_a": 20.0, "map_placement": placement})
    cfg["sample"]["particles"][0]["representation"] = representation
    before = torch.get_num_threads()
    runs = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs[threads] = simulate_tilt_series(cfg)
    finally:
        torch.set_num_threads(before)
    assert runs[1].metadata["tilt_workers"] == 1 and runs[2].metadata["tilt_workers"] == 2
    assert runs[2].metadata["particle_types"][0]["mode"] == {"auto": "atoms"}.get(placement, placement)
    assert torch.equal(runs[1].tilts, runs[2].tilts) and torch.equal(runs[1].noiseless, runs[2].noiseless)


def test_a_failing_tilt_stops_the_series_without_running_the_rest():
    """Tilts side by side: when one fails (or Ctrl-C), the error comes back and the tilts not yet started are not
    run (the pool would otherwise work through the whole series before letting go)."""
    import threading
    import time

    from difftem.simulate.pipeline import _in_parallel

    ran = []
    lock = threading.Lock()

    def tilt(i):
        with lock:
            ran.append(i)
        if i == 3:
            raise RuntimeError("tilt 3 failed")
        time.sleep(0.01)
        return i

    stored = {}
    with pytest.raises(RuntimeError, match="tilt 3 failed"):
        _in_parallel(tilt, 200, 2, None, stored.__setitem__)
    assert len(ran) < 20 and all(stored[i] == i for i in stored)
