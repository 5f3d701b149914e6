"""Dataset generation without a cluster: spec sampling and validation, store layout, reader, resume rules.

The Dask cluster, a real SIGKILL mid-run and Ctrl-C are in test_dataset_cluster.py.
"""

import csv
import json
import os
import socket

import mrcfile
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

pytest.importorskip("zarr", reason="the dataset stage needs the `dataset` extra (zarr, dask[distributed])")

from difftem import simulate  # noqa: E402
from difftem.cli import app  # noqa: E402
from difftem.config import config_from_dict  # noqa: E402
from difftem.core.errors import ConfigError, DifftemError  # noqa: E402
from difftem.core.rotations import rotation_zyz_deg  # noqa: E402
from difftem.dataset import DatasetReader, build, collate_items, load_spec, spec_from_dict  # noqa: E402
from difftem.dataset.spec import item_seed, parameter_rng, parse_distribution, parse_only, random_rotations_zyz_deg  # noqa: E402
from difftem.dataset.store import Store, jsonable  # noqa: E402

runner = CliRunner()

BASE = {
    "beam": {"voltage_kv": 300, "dose_e_per_a2": 40},
    "detector": {"shape_px": [64, 64], "pixel_size_a": 1.0, "noise": "poisson"},
    "sample": {"ice_thickness_nm": 5,
               "particles": [{"structure": "builtin:1ubi", "positions_a": [[0, 0, 0], [12, -10, 0]]}]},
    "simulation": {"slice_thickness_a": 5.0, "device": "cpu"},
}
VARY = {
    "optics.defocus_um": {"uniform": [1.0, 3.0]},
    "beam.dose_e_per_a2": {"choice": [20, 40, 60]},
    "sample.ice_thickness_nm": {"normal": {"mean": 5, "std": 1, "min": 3, "max": 7}},
    "detector.mtf": {"choice": [{"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}, None]},
    "sample.particles.0.euler_zyz_deg": {"rotations_zyz_deg": {"n": 2}},
}


def spec_dict(n_items=4, **over):
    d = {"seed": 7, "n_items": n_items, "base": json.loads(json.dumps(BASE)), "vary": dict(VARY),
         "outputs": ["micrograph", "noiseless", "potential"], "store": "zarr"}
    d.update(over)
    return d


def tree(path):
    """Every file under path with its size and mtime: 'nothing was touched' means this is unchanged."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


# --- seeds and distributions ----------------------------------------------------------------------

def test_item_values_depend_only_on_seed_index_and_path():
    a = spec_from_dict(spec_dict(n_items=10))
    b = spec_from_dict(spec_dict(n_items=50, vary={**VARY, "optics.cs_mm": {"uniform": [2.0, 3.0]}}))
    for i in range(10):
        pa, pb = a.item_params(i), b.item_params(i)
        assert all(pa[k] == pb[k] for k in pa)  # a new vary entry and a larger n_items change nothing else
        assert a.item_config(i)[0].seed == b.item_config(i)[0].seed == item_seed(7, i)
    seeds = {item_seed(7, i) for i in range(1000)} | {item_seed(8, i) for i in range(1000)}
    assert len(seeds) == 2000 and all(0 <= s < 2**63 for s in seeds)
    assert a.item_params(3) != spec_from_dict(spec_dict(seed=8)).item_params(3)


def draw(dist_yaml, n=4000, path="x"):
    d = parse_distribution(path, dist_yaml)
    return np.array([d.sample(parameter_rng(1, i, path), i) for i in range(n)], dtype=object)


def test_uniform_loguniform_randint_choice_cycle():
    u = draw({"uniform": [1.0, 3.0]}).astype(float)
    assert u.min() >= 1.0 and u.max() <= 3.0 and abs(u.mean() - 2.0) < 0.03
    lu = np.log(draw({"loguniform": [0.1, 10.0]}).astype(float))
    assert abs(lu.mean()) < 0.08 and abs(lu.std() - np.log(100) / np.sqrt(12)) < 0.05
    r = draw({"randint": [2, 5]}).astype(int)
    assert set(r) == {2, 3, 4, 5}  # both ends included
    c = draw({"choice": {"values": ["a", "b"], "weights": [3, 1]}})
    assert abs(np.mean(c == "a") - 0.75) < 0.03
    cyc = draw({"cycle": [10, 20, 30]}, n=7)
    assert list(cyc) == [10, 20, 30, 10, 20, 30, 10]
    vec = draw({"uniform": {"low": [-5, 0, 10], "high": [5, 1, 20], "size": 4}}, n=50)
    arr = np.array([np.array(v) for v in vec])
    assert arr.shape == (50, 4, 3) and (arr[..., 2] >= 10).all() and (arr[..., 1] <= 1).all()


def test_truncated_normal_matches_scipy_moments():
    stats = pytest.importorskip("scipy.stats")
    for mean, std, lo, hi in [(40, 5, 20, 60), (40, 5, 42, 60), (0, 1, 2.5, None), (0, 1, None, -3.0)]:
        x = draw({"normal": {"mean": mean, "std": std, "min": lo, "max": hi}}, n=20000).astype(float)
        a = -np.inf if lo is None else (lo - mean) / std
        b = np.inf if hi is None else (hi - mean) / std
        ref = stats.truncnorm(a, b, loc=mean, scale=std)
        assert (lo is None or x.min() >= lo) and (hi is None or x.max() <= hi)
        assert abs(x.mean() - ref.mean()) < 4 * ref.std() / np.sqrt(len(x))
        assert abs(x.std() / ref.std() - 1) < 0.03
        assert stats.kstest(x, ref.cdf).pvalue > 1e-3


def test_random_rotations_are_uniform_on_so3():
    """Haar measure: E[R] = 0 and E[R_ij²] = 1/3 for every entry (θ uniform instead of cos θ fails)."""
    eul = random_rotations_zyz_deg(np.random.default_rng(0), 20000)
    mats = np.stack([rotation_zyz_deg(*e) for e in eul[:5000]])
    assert np.abs(mats.mean(0)).max() < 0.04
    assert np.abs((mats ** 2).mean(0) - 1 / 3).max() < 0.02
    assert abs(np.cos(np.radians(eul[:, 1])).mean()) < 0.02
    wrong = np.radians(np.random.default_rng(0).uniform(0, 180, 20000))
    assert abs((np.cos(wrong) ** 2).mean() - 1 / 3) > 0.1  # the check above has the power to catch it


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("vary, words", [
    ({"optics.defocus_um": {"uniform": [3.0, 1.0]}}, ["vary.optics.defocus_um", "low", "> high"]),
    ({"sample.ice_thickness_nm": {"normal": {"mean": 40, "std": 5, "min": 60, "max": 20}}},
     ["vary.sample.ice_thickness_nm", "min", "> max"]),
    ({"beam.dose_e_per_a2": {"uniform": [-10, 40]}}, ["vary.beam.dose_e_per_a2", "-10", "beam.dose_e_per_a2",
                                                      "greater than or equal to 0"]),
    ({"detector.shape_px.0": {"randint": [-4, 64]}}, ["vary.detector.shape_px.0", "between 16 and 65536"]),
    ({"sample.particles.0.positions_a": {"uniform": {"low": [0, 0, 0], "high": [1, 1, 1], "size": -2}}},
     ["vary.sample.particles.0.positions_a", "negative count"]),
    ({"sample.particles.3.structure": {"choice": ["builtin:1ubi"]}}, ["vary.sample.particles.3.structure",
                                                                     "has 1 entries"]),
    ({"optics.defocus_um": {"gaussian": [1, 2]}}, ["vary.optics.defocus_um", "expected one of"]),
    ({"optics.defocus_um": 2.0}, ["vary.optics.defocus_um", "fixed value belongs in base"]),
    ({"seed": {"randint": [0, 9]}}, ["vary.seed", "top-level seed"]),
    ({"optics.defocus_mm": {"uniform": [1, 2]}}, ["vary.optics.defocus_mm", "not a config field"]),
])
def test_impossible_distributions_are_refused_naming_the_path(vary, words):
    with pytest.raises(ConfigError) as exc:
        spec_from_dict(spec_dict(vary=vary))
    msg = str(exc.value)
    assert all(w in msg for w in words), msg
    assert "\n" not in msg


@pytest.mark.parametrize("over, words", [
    ({"n_items": -3}, ["n_items", "greater than or equal to 1"]),
    ({"n_items": 0}, ["n_items"]),
    ({"outputs": ["micrograph", "hologram"]}, ["outputs.1"]),
    ({"store": "hdf5"}, ["store"]),
    ({"workers": 3}, ["workers", "unknown field"]),
])
def test_bad_top_level_fields(over, words):
    with pytest.raises(ConfigError) as exc:
        spec_from_dict(spec_dict(**over))
    assert all(w in str(exc.value) for w in words), str(exc.value)


def test_a_sampled_item_that_is_invalid_names_the_item_and_field():
    spec = spec_from_dict(spec_dict(n_items=200, vary={"sample.ice_thickness_nm": {"normal": {"mean": 2, "std": 5}}}))
    with pytest.raises(ConfigError) as exc:
        build(spec, "/nonexistent/never-created", workers=0)
    msg = str(exc.value)
    assert "item" in msg and "sample.ice_thickness_nm" in msg and "greater than or equal to 0" in msg


def test_base_config_file_relative_to_spec(tmp_path):
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"n_items": 2, "base_config": "cfgs/base.yaml",
                                                        "base": {"detector": {"pixel_size_a": 1.5}}}))
    spec = load_spec(tmp_path / "spec.yaml")
    cfg, _ = spec.item_config(1)
    assert cfg.detector.pixel_size_a == 1.5 and tuple(cfg.detector.shape_px) == (64, 64)  # merged, base wins
    with pytest.raises(ConfigError, match="base_config not found"):
        spec_from_dict({"n_items": 1, "base_config": "missing.yaml"}, base_dir=tmp_path)


def test_parse_only():
    assert parse_only("17", 20) == [17]
    assert parse_only("3,5-7,3", 20) == [3, 5, 6, 7]
    for bad in ("20", "x", "7-5"):
        with pytest.raises(ConfigError, match="--only"):
            parse_only(bad, 20)


def check_particles(stored, metadata, eulers_deg):
    """Both copies of BASE at their positions (Å and pixels, origin at [H//2, W//2]) with the sampled poses."""
    if "particles" in metadata:  # the simulator's own rows are stored as given
        assert stored == jsonable(metadata["particles"])
        pos = [[r["difftemPositionXA"], r["difftemPositionYA"], r["difftemPositionZA"]] for r in stored]
        px = [[r["rlnCoordinateX"], r["rlnCoordinateY"]] for r in stored]
        mats = [rotation_zyz_deg(r["difftemEulerZyzPhi"], r["difftemEulerZyzTheta"], r["difftemEulerZyzPsi"])
                for r in stored]
    else:
        pos = [r["position_a"] for r in stored]
        px = [r["position_px"] for r in stored]
        mats = [rotation_zyz_deg(*r["euler_zyz_deg"]) for r in stored]
    assert pos == [[0.0, 0.0, 0.0], [12.0, -10.0, 0.0]] and px == [[32.0, 32.0], [44.0, 22.0]]
    for m, e in zip(mats, eulers_deg, strict=True):  # same rotation (angles may be written in another range)
        np.testing.assert_allclose(m, rotation_zyz_deg(*e), atol=1e-9)


# --- store and reader ---------------------------------------------------------------------------------

def test_items_equal_direct_simulation_and_reader_returns_them(tmp_path):
    spec = spec_from_dict(spec_dict(n_items=3, outputs=["micrograph", "noiseless", "potential", "exit_wave"]))
    report = build(spec, tmp_path / "st", workers=0)
    assert sorted(report.done) == [0, 1, 2] and not report.failed
    ds = DatasetReader(tmp_path / "st")
    assert len(ds) == 3 and ds.n_items == 3 and ds.fingerprint == spec.fingerprint
    for k in range(3):
        item = ds[k]
        assert item["index"] == k
        cfg = config_from_dict(item["config"])
        assert cfg.seed == item["item_seed"] == item_seed(7, k)
        assert item["config"]["optics"]["defocus_um"] == item["params"]["optics.defocus_um"]
        torch.set_num_threads(1)
        ref = simulate(cfg, keep_potential=True)
        torch.set_num_threads(2)
        for name, want, dtype in [("micrograph", ref.micrograph, torch.float32),
                                  ("noiseless", ref.noiseless, torch.float32),
                                  ("potential", ref.projected_potential.real.float(), torch.float32),
                                  ("exit_wave", ref.exit_wave, torch.complex64)]:
            assert item[name].dtype == dtype and item[name].shape == (64, 64)
            assert torch.equal(item[name], want.to(dtype)), name  # bit-for-bit what simulate() returns
        gt = item["ground_truth"]
        assert gt["dose_e_per_a2"] == cfg.beam.dose_e_per_a2 and gt["pixel_size_a"] == 1.0
        assert gt["ctf"][0]["defocus_um"] == cfg.optics.defocus_um
        assert gt["mtf"] == (None if cfg.detector.mtf is None else cfg.detector.mtf.model_dump(mode="json"))
        check_particles(gt["particles"], ref.metadata, item["params"]["sample.particles.0.euler_zyz_deg"])
    loader = torch.utils.data.DataLoader(DatasetReader(tmp_path / "st", outputs=["micrograph"]), batch_size=2,
                                         num_workers=2, collate_fn=collate_items)  # forked after reads above
    batches = list(loader)
    assert batches[0]["micrograph"].shape == (2, 64, 64) and batches[0]["index"] == [0, 1]
    assert "noiseless" not in batches[0] and batches[1]["micrograph"].shape == (1, 64, 64)


def test_manifest_lists_every_item_with_parameters(tmp_path):
    spec = spec_from_dict(spec_dict(n_items=3, manifest="parquet",
                                    vary={**VARY, "simulation.max_memory_gb": {"cycle": [None, 1e-9, None]}}))
    report = build(spec, tmp_path / "st", workers=0)
    assert report.failed.keys() == {1} and "simulation.max_memory_gb" in report.failed[1]
    pq = pytest.importorskip("pyarrow.parquet")
    rows = pq.read_table(tmp_path / "st" / "manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert "ResourceError" in rows[1]["error"] and rows[1]["path"] is None
    ds = DatasetReader(tmp_path / "st")
    assert [it["index"] for it in ds] == [0, 2]
    for r, it in zip([rows[0], rows[2]], ds, strict=True):
        assert r["item_seed"] == it["item_seed"] and r["optics.defocus_um"] == it["params"]["optics.defocus_um"]
        assert json.loads(r["sample.particles.0.euler_zyz_deg"]) == it["params"]["sample.particles.0.euler_zyz_deg"]
        assert r["seconds"] > 0 and r["worker_peak_rss_mb"] > 10
    record = json.loads((tmp_path / "st" / "failed" / "000001.json").read_text())
    assert record["index"] == 1 and "Traceback" in record["traceback"]


def test_mrc_store_matches_zarr_store(tmp_path):
    z = build(spec_from_dict(spec_dict(n_items=2)), tmp_path / "z", workers=0)
    m = build(spec_from_dict(spec_dict(n_items=2, store="mrc")), tmp_path / "m", workers=0)
    assert len(z.done) == len(m.done) == 2
    dz, dm = DatasetReader(tmp_path / "z"), DatasetReader(tmp_path / "m")
    for a, b in zip(dz, dm, strict=True):
        for name in ("micrograph", "noiseless", "potential"):
            assert torch.equal(a[name], b[name])
        assert a["ground_truth"] == b["ground_truth"]
    item = tmp_path / "m" / "items" / "000001"
    assert {"micrograph.mrc", "noiseless.mrc", "potential.mrc", "item.json"} <= {p.name for p in item.iterdir()}
    if "rlnCoordinateX" in dm[1]["ground_truth"]["particles"][0]:  # RELION coordinates beside the image
        star = (item / "particles.star").read_text()
        assert "_rlnCoordinateX" in star and star.count("items/000001/micrograph.mrc") == 2
    with mrcfile.open(item / "micrograph.mrc") as f:
        assert f.data.dtype == np.float32 and float(f.voxel_size.x) == 1.0
    star = (tmp_path / "m" / "micrographs.star").read_text().splitlines()
    rows = [ln.split("\t") for ln in star if ln.startswith("items/")]
    assert [r[0] for r in rows] == ["items/000000/micrograph.mrc", "items/000001/micrograph.mrc"]
    cfg = dm[1]["config"]["optics"]
    assert float(rows[1][4]) == pytest.approx(cfg["defocus_um"] * 1e4)  # _rlnDefocusU in Å


def test_tilt_series_items(tmp_path):
    """A config with tilt_series gives (n_tilts, H, W) stacks, one CTF entry per tilt, an IMOD .tlt (MRC)."""
    from difftem.simulate.pipeline import simulate_tilt_series

    base = json.loads(json.dumps(BASE))
    base["tilt_series"] = {"scheme": "list", "angles_deg": [0, -30, 30], "total_dose_e_per_a2": 60}
    d = spec_dict(n_items=2, base=base, outputs=["micrograph", "noiseless"], store="mrc",
                  vary={"optics.defocus_um": {"uniform": [1.0, 3.0]},
                        "tilt_series.tilt_axis_deg": {"uniform": [-90, 90]}})
    build(spec_from_dict(d), tmp_path / "ts", workers=0)
    ds = DatasetReader(tmp_path / "ts")
    item = ds[1]
    assert item["micrograph"].shape == item["noiseless"].shape == (3, 64, 64)
    torch.set_num_threads(1)
    ref = simulate_tilt_series(config_from_dict(item["config"]))
    torch.set_num_threads(2)
    assert torch.equal(item["micrograph"], ref.tilts) and torch.equal(item["noiseless"], ref.noiseless)
    gt = item["ground_truth"]
    assert gt["tilt_angles_deg"] == [-30.0, 0.0, 30.0] == [c["tilt_deg"] for c in gt["ctf"]]
    assert gt["tilt_axis_deg"] == pytest.approx(item["params"]["tilt_series.tilt_axis_deg"])
    assert [c["dose_e_per_a2"] for c in gt["ctf"]] == [20.0] * 3 and gt["dose_e_per_a2"] == 60.0
    assert sorted(c["acquisition_order"] for c in gt["ctf"]) == [0, 1, 2] and gt["ctf"][1]["acquisition_order"] == 0
    assert [c["defocus_um"] for c in gt["ctf"]] == pytest.approx([item["params"]["optics.defocus_um"]] * 3)
    folder = tmp_path / "ts" / "items" / "000001"
    assert (folder / "tilts.tlt").read_text().split() == ["-30.00", "0.00", "30.00"]
    with mrcfile.open(folder / "micrograph.mrc") as f:
        assert f.data.shape == (3, 64, 64) and f.is_image_stack()
    with pytest.raises(ConfigError, match="item 0 is a tilt series.*remove \\['potential'\\]"):
        build(spec_from_dict({**d, "outputs": ["micrograph", "potential"]}), tmp_path / "bad", workers=0)
    assert not (tmp_path / "bad").exists()


def test_only_regenerates_an_item_identically_and_store_grows(tmp_path):
    build(spec_from_dict(spec_dict(n_items=3)), tmp_path / "full", workers=0)
    build(spec_from_dict(spec_dict(n_items=3)), tmp_path / "one", workers=0, only=[2])
    one = DatasetReader(tmp_path / "one")
    assert one.indices == [2]
    a, b = DatasetReader(tmp_path / "full").item(2), one.item(2)
    assert all(torch.equal(a[k], b[k]) for k in ("micrograph", "noiseless", "potential")) and a["config"] == b["config"]
    before = tree(tmp_path / "one" / "items")
    report = build(spec_from_dict(spec_dict(n_items=4)), tmp_path / "one", workers=0)  # grow: same fingerprint
    assert sorted(report.done) == [0, 1, 3] and report.skipped == 1
    assert {k: v for k, v in tree(tmp_path / "one" / "items").items() if k in before} == before  # untouched
    with pytest.raises(ConfigError, match="n_items 3"):
        build(spec_from_dict(spec_dict(n_items=3)), tmp_path / "one", workers=0)


def test_rerun_skips_done_redoes_partial_and_retries_failed(tmp_path):
    spec = spec_from_dict(spec_dict(n_items=3, vary={**VARY, "simulation.max_memory_gb": {"cycle": [None, 1e-9]}}))
    out = tmp_path / "st"
    build(spec, out, workers=0)
    ref = DatasetReader(out).item(2)
    # what a SIGKILL mid-write leaves: a half-written item in .partial and no final folder
    import shutil
    shutil.copytree(out / "items" / "000002", out / ".partial" / "000002.deadbeef")
    (out / ".partial" / "000002.deadbeef" / "micrograph" / "zarr.json").unlink()
    shutil.rmtree(out / "items" / "000002")
    done_before = tree(out / "items" / "000000")
    report = build(spec, out, workers=0)
    assert report.cleaned_partial == 1 and not any((out / ".partial").iterdir())
    assert report.skipped == 1 and sorted(report.done) == [2] and list(report.failed) == [1]  # failed: retried
    assert tree(out / "items" / "000000") == done_before
    again = DatasetReader(out).item(2)
    assert all(torch.equal(ref[k], again[k]) for k in ("micrograph", "noiseless", "potential"))
    with open(out / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["done", "failed", "done"]


def test_store_of_another_spec_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "st"
    build(spec_from_dict(spec_dict(n_items=2)), out, workers=0)
    before = tree(out)
    other = spec_from_dict(spec_dict(n_items=2, seed=8))
    with pytest.raises(ConfigError, match="different SPEC.*--overwrite"):
        build(other, out, workers=0)
    with pytest.raises(ConfigError, match="different SPEC"):
        build(spec_from_dict(spec_dict(n_items=2, store="mrc")), out, workers=0)
    assert tree(out) == before  # nothing touched
    report = build(other, out, workers=0, overwrite=True)
    assert sorted(report.done) == [0, 1] and DatasetReader(out).fingerprint == other.fingerprint


def test_folder_that_is_not_a_store_is_never_touched(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not a difftem dataset"):
            build(spec_from_dict(spec_dict(n_items=1)), out, workers=0, overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_store_locked_by_another_run(tmp_path):
    out = tmp_path / "st"
    spec = spec_from_dict(spec_dict(n_items=1))
    build(spec, out, workers=0)
    with Store(out, "zarr").lock(), pytest.raises(DifftemError, match="another `difftem dataset` run"):
        build(spec, out, workers=0)


def test_unreachable_scheduler_is_a_clear_error_and_writes_nothing(tmp_path):
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "st"
    with pytest.raises(ConfigError, match=f"--scheduler tcp://127.0.0.1:{port}: cannot connect within 2 s"):
        build(spec_from_dict(spec_dict(n_items=1)), out, scheduler=f"tcp://127.0.0.1:{port}", connect_timeout_s=2)
    assert not out.exists()


def test_existing_scheduler_address(tmp_path):
    """--scheduler: connect to a running cluster (here an in-process one) instead of starting one."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as c:
        logs = []
        report = build(spec_from_dict(spec_dict(n_items=2)), tmp_path / "st", scheduler=c.scheduler_address,
                       log=logs.append)
        assert sorted(report.done) == [0, 1] and report.workers == 1
        assert any(line.startswith("dashboard: http") for line in logs)
    with open(tmp_path / "st" / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["worker"].startswith("inproc://") or r["worker"].startswith("tcp://") for r in rows)
    ref = build(spec_from_dict(spec_dict(n_items=2)), tmp_path / "ref", workers=0)
    assert sorted(ref.done) == [0, 1]
    for a, b in zip(DatasetReader(tmp_path / "st"), DatasetReader(tmp_path / "ref"), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("micrograph", "noiseless", "potential"))


def test_worker_allocator_thresholds_can_be_set():
    import platform

    from difftem.dataset.build import set_malloc_thresholds

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt thresholds are a glibc feature")
    assert set_malloc_thresholds()


# --- CLI -------------------------------------------------------------------------------------------------

def test_cli_dataset_in_process_and_errors(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(n_items=2)))
    res = runner.invoke(app, ["dataset", str(spec), "--out", str(tmp_path / "st"), "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "2 items written" in res.output and (tmp_path / "st" / "manifest.csv").exists()
    res = runner.invoke(app, ["dataset", str(spec), "--out", str(tmp_path / "st"), "--workers", "0", "--only", "1"])
    assert res.exit_code == 0 and "0 items written, 1 already there" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_dict(n_items=2, vary={"optics.defocus_um": {"uniform": [3, 1]}})))
    for args, words in [([str(bad)], "vary.optics.defocus_um"),
                        ([str(spec), "--workers", "2", "--scheduler", "tcp://x:1"], "exclude each other"),
                        ([str(spec), "--only", "9"], "--only: item 9"),
                        ([str(tmp_path / "missing.yaml")], "not found")]:
        res = runner.invoke(app, ["dataset", *args, "--out", str(tmp_path / "new")])
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "new").exists()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(spec_dict(n_items=2, seed=99)))
    res = runner.invoke(app, ["dataset", str(other), "--out", str(tmp_path / "st"), "--workers", "0"])
    assert res.exit_code == 2 and "different SPEC" in res.output
    res = runner.invoke(app, ["dataset", str(other), "--out", str(tmp_path / "st"), "--workers", "0", "--overwrite"])
    assert res.exit_code == 0, res.output


def test_cli_reports_failed_items_with_exit_code_1(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(n_items=2, vary={"simulation.max_memory_gb": {"cycle": [1e-9, None]}})))
    res = runner.invoke(app, ["dataset", str(spec), "--out", str(tmp_path / "st"), "--workers", "0"])
    assert res.exit_code == 1 and "item 0 failed" in res.output and "1 items written" in res.output
    assert os.path.exists(tmp_path / "st" / "failed" / "000000.json")


def test_movie_items_vary_their_drift_and_store_frames_and_truth(tmp_path):
    """outputs: movie — each item holds its frames (n_frames, H, W), bit for bit what simulate()'s movie draws,
    with the true global shifts in its ground truth; a varied drift amplitude changes the shifts item by item; the
    frames add up to the exposure's dose. A spec asking for frames without a movie section is refused."""
    base = {**json.loads(json.dumps(BASE)), "movie": {"n_frames": 6, "drift": {"fast_a": 4.0, "slow_a_per_frame": 0.5}}}
    vary = {"movie.drift.fast_a": {"choice": [2.0, 8.0]}, "movie.drift.slow_a_per_frame": {"uniform": [0.2, 1.0]}}
    spec = spec_from_dict(spec_dict(n_items=2, base=base, vary=vary, outputs=["micrograph", "movie"]))
    assert sorted(build(spec, tmp_path / "mv", workers=0).done) == [0, 1]
    ds = DatasetReader(tmp_path / "mv")
    shifts = []
    for k in range(2):
        item = ds[k]
        frames = item["movie"]
        assert frames.shape == (6, 64, 64) and frames.dtype == torch.float32
        cfg = config_from_dict(item["config"])
        torch.set_num_threads(1)
        ref = simulate(cfg)
        torch.set_num_threads(2)
        assert torch.equal(frames, torch.stack(list(ref.movie.frames())).float())
        truth = np.asarray(item["ground_truth"]["movie"]["global_shift_px"])
        assert truth.shape == (6, 2) and np.allclose(truth, ref.metadata["movie"]["global_shift_px"])
        shifts.append(truth)
        # six frames of dose/6 each: their sum's mean is the exposure's (shot noise on 4096 px: < 2 %)
        assert float(frames.sum(0).mean()) == pytest.approx(float(ref.noiseless.mean()), rel=0.02)
    assert not np.allclose(shifts[0], shifts[1])
    with pytest.raises(ConfigError, match="movie"):
        build(spec_from_dict(spec_dict(n_items=1, outputs=["micrograph", "movie"])), tmp_path / "no", workers=0)
