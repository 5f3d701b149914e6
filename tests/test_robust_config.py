"""Bad numbers are refused up front: the config and the structure reader refuse non-finite and absurd values with
one line naming the field (or the file and atom), and nothing hangs on huge numbers (issue 14)."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest

from difftem.config import config_from_dict, load_config, read_yaml_mapping
from difftem.core.errors import ConfigError, DifftemError, ResourceError, StructureError
from difftem.core.fft import GOOD_FFT_SIZE_MAX, good_fft_size
from difftem.specimen.build import builtin_structure, load_particle_type, resolve_structure, scene_of
from difftem.specimen.scene import bounding_capsule, random_placement
from difftem.specimen.structure import Atoms, read_structure

UBI = "builtin:1ubi"
NAN, INF = math.nan, math.inf


def _set(data: dict, path: str, value) -> dict:
    data = copy.deepcopy(data)
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    node[keys[-1]] = value
    return data


def _one_line_error(exc_info, *needles: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


BASE = {"detector": {"shape_px": [64, 64], "pixel_size_a": 2.0},
        "sample": {"ice_thickness_nm": 10, "particles": [{"structure": UBI, "positions_a": [[0, 0, 0]]}]}}
MTF = {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}
TILTS = {"scheme": "list", "angles_deg": [-30, 0, 30]}

# (field set, value, text the error must contain)
BAD = [
    ("optics.defocus_um", NAN, "optics.defocus_um"),
    ("optics.defocus_um", 1e6, "optics.defocus_um"),
    ("optics.astigmatism_um", INF, "optics.astigmatism_um"),
    ("optics.astigmatism_angle_deg", NAN, "optics.astigmatism_angle_deg"),
    ("optics.phase_shift_deg", INF, "optics.phase_shift_deg"),
    ("optics.cs_mm", 1e300, "optics.cs_mm"),
    ("optics.aperture_mrad", INF, "optics.aperture_mrad"),
    ("beam.voltage_kv", NAN, "beam.voltage_kv"),
    ("beam.dose_e_per_a2", INF, "beam.dose_e_per_a2"),
    ("beam.dose_e_per_a2", 1e300, "beam.dose_e_per_a2"),
    ("seed", 18446744073709551616, "seed"),
    ("seed", 2**63, "seed"),
    ("seed", -1, "seed"),
    ("detector.pixel_size_a", INF, "detector.pixel_size_a"),
    ("detector.pixel_size_a", 1e-300, "detector.pixel_size_a"),
    ("detector.gain", NAN, "detector.gain"),
    ("detector.mtf", {**MTF, "a": INF}, "detector.mtf.a"),
    ("detector.mtf", {**MTF, "b": NAN}, "detector.mtf.b"),
    ("detector.mtf", {**MTF, "c": -INF}, "detector.mtf.c"),
    ("detector.mtf", {**MTF, "alpha": INF}, "detector.mtf.alpha"),
    ("detector.mtf", {**MTF, "beta": NAN}, "detector.mtf.beta"),
    ("detector.mtf", {**MTF, "a": -1.0}, "MTF(0)"),
    ("detector.mtf", {**MTF, "a": 1e5, "b": -1e5}, "MTF(0)"),
    ("detector.mtf", {"star": "a\x00b"}, "detector.mtf.star"),
    ("sample.ice_thickness_nm", 1e6, "sample.ice_thickness_nm"),
    ("sample.ice_thickness_nm", NAN, "sample.ice_thickness_nm"),
    ("sample.particles.0.positions_a", [[NAN, 0, 0]], "sample.particles.0.positions_a.0.0"),
    ("sample.particles.0.positions_a", [[0, 0, 0], [0, 1e20, 0]], "sample.particles.0.positions_a.1.1"),
    ("sample.particles.0.positions_a", [[0, 0, 0], [5e4, 0, 0]], "sample.particles.0.positions_a.1"),
    ("sample.particles.0.euler_zyz_deg", [[INF, 0, 0]], "sample.particles.0.euler_zyz_deg.0.0"),
    ("sample.particles.0.extra_b_a2", NAN, "sample.particles.0.extra_b_a2"),
    ("sample.particles.0.structure", "a" * 5000, "sample.particles.0.structure"),
    ("sample.particles.0.structure", "x\x00.pdb", "sample.particles.0.structure"),
    ("sample.particles.0.name", "a\nb", "sample.particles.0.name"),
    ("simulation.slice_thickness_a", 1e-300, "simulation.slice_thickness_a"),
    ("simulation.slice_thickness_a", 1e-6, "simulation.slice_thickness_a"),
    ("simulation.slice_thickness_a", NAN, "simulation.slice_thickness_a"),
    ("simulation.max_memory_gb", INF, "simulation.max_memory_gb"),
    ("simulation.tile_px", 10**9, "simulation.tile_px"),
    ("tilt_series", {"step_deg": 1e-6}, "tilt_series.step_deg"),
    ("tilt_series", {"step_deg": 0.05}, "tilt_series.step_deg"),
    ("tilt_series", {"step_deg": NAN}, "tilt_series.step_deg"),
    ("tilt_series", {**TILTS, "angles_deg": [0, NAN]}, "tilt_series.angles_deg"),
    ("tilt_series", {**TILTS, "angles_deg": [0, 89.99]}, "simulation.slice_thickness_a"),
    ("tilt_series", {**TILTS, "angles_deg": list(range(-50, 50)) * 11}, "tilt_series.angles_deg"),
    ("tilt_series", {**TILTS, "defocus_um": [1, NAN, 1]}, "tilt_series.defocus_um.1"),
    ("tilt_series", {**TILTS, "dose_per_tilt_e_per_a2": [1, INF, 1]}, "tilt_series.dose_per_tilt_e_per_a2.1"),
    ("tilt_series", {**TILTS, "total_dose_e_per_a2": 1e300}, "tilt_series.total_dose_e_per_a2"),
    ("tilt_series", {**TILTS, "tilt_axis_deg": INF}, "tilt_series.tilt_axis_deg"),
]


@pytest.mark.parametrize(("field", "value", "needle"), BAD, ids=[f"{f}={v!r}"[:60] for f, v, _ in BAD])
def test_bad_numbers_are_one_line_config_errors(field, value, needle):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(_set(BASE, field, value))
    _one_line_error(exc, needle)


HELIX = {"rise_a": 1.4, "twist_deg": 22.0, "n_subunits": 3}
BAD_PARTICLES = [
    ({"helix": {**HELIX, "n_subunits": 10**6}}, "helix.n_subunits"),
    ({"helix": {**HELIX, "rise_a": NAN}}, "helix.rise_a"),
    ({"helix": {**HELIX, "twist_deg": INF}}, "helix.twist_deg"),
    ({"helix": {**HELIX, "axis": [0, 0, 0]}}, "helix.axis"),
    ({"helix": {**HELIX, "axis_point_a": [NAN, 0, 0]}}, "helix.axis_point_a"),
    ({"helix": {"rise_a": 1e-3, "twist_deg": 22.0, "length_a": 1e5}}, "helix.length_a"),
    ({"helix": {"rise_a": 1e4, "twist_deg": 22.0, "n_subunits": 1000}}, "helix.n_subunits"),
    ({"random": {"count": 10**6}}, "random.count"),
    ({"random": {"density_per_um3": INF}}, "random.density_per_um3"),
    ({"random": {"density_per_um3": 1e9}, "_detector": {"shape_px": [4096, 4096]}}, "random.density_per_um3"),
    ({"random": {"count": 3, "min_gap_a": NAN}}, "random.min_gap_a"),
]


@pytest.mark.parametrize(("particle", "needle"), BAD_PARTICLES, ids=[n for _, n in BAD_PARTICLES])
def test_bad_particle_numbers_are_config_errors(particle, needle):
    particle = dict(particle)
    detector = particle.pop("_detector", BASE["detector"])
    data = {**BASE, "detector": detector, "sample": {"particles": [{"structure": UBI, **particle}]}}
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    _one_line_error(exc, "sample.particles.0." + needle)


def test_too_many_copies_and_entries():
    many = [{"structure": UBI, "random": {"count": 60_000}}] * 2
    with pytest.raises(ConfigError) as exc:
        config_from_dict({**BASE, "sample": {"particles": many}})
    _one_line_error(exc, "sample.particles", "100000")
    with pytest.raises(ConfigError) as exc:
        config_from_dict({**BASE, "sample": {"particles": [{"structure": UBI}] * 1001}})
    _one_line_error(exc, "sample.particles")


def test_far_positions_fail_fast():
    """positions_a [[0,0,0],[0,1e20,0]] once hung in good_fft_size; now the config refuses it at once."""
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="positions_a"):
        config_from_dict(_set(BASE, "sample.particles.0.positions_a", [[0, 0, 0], [0, 1.0e20, 0]]))
    with pytest.raises(ConfigError, match="simulation.slice_thickness_a"):  # 1e6 Å in z: 5e5 slices
        config_from_dict(_set(BASE, "sample.particles.0.positions_a", [[0, 0, 0], [0, 0, 1e6]]))
    assert time.perf_counter() - t0 < 1.0


def test_real_experiments_are_accepted():
    """The bounds are generous: demanding but real settings pass."""
    config_from_dict({})
    config_from_dict({"seed": 2**63 - 1, "beam": {"voltage_kv": 80, "dose_e_per_a2": 1000},
                      "optics": {"defocus_um": -50, "astigmatism_um": 5, "cs_mm": 0.001, "phase_shift_deg": 90},
                      "detector": {"shape_px": [8192, 8192], "pixel_size_a": 0.3,
                                   "mtf": {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}},
                      "sample": {"ice_thickness_nm": 1000, "particles": [
                          {"structure": UBI, "random": {"count": 5000}},
                          {"structure": UBI, "positions_a": [[1000, -1000, 400]], "euler_zyz_deg": [[720, 90, -400]]},
                          {"structure": UBI, "helix": {"rise_a": 1.408, "twist_deg": 22.03, "length_a": 30000}}]},
                      "simulation": {"slice_thickness_a": 0.5},
                      "tilt_series": {"scheme": "dose_symmetric", "min_deg": -70, "max_deg": 70, "step_deg": 0.5,
                                      "total_dose_e_per_a2": 200}})


def test_config_errors_from_yaml_name_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optics:\n  defocus_um: .nan\nsample:\n  particles:\n  - structure: builtin:1ubi\n"
                    "    positions_a: [[.inf, 0, 0]]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    _one_line_error(exc, str(path), "optics.defocus_um", "sample.particles.0.positions_a.0.0")


# ------------------------------------------------------------------------------------------------ YAML loading
def test_yaml_loading_refuses_hostile_files(tmp_path, monkeypatch):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"seed: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(latin)
    _one_line_error(exc, str(latin), "UTF-8", "line 2")

    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(deep)
    _one_line_error(exc, str(deep), "nested")
    deep_map = tmp_path / "deep_map.yaml"
    deep_map.write_text("a: " + "{b: " * 200 + "1" + "}" * 200 + "\n")
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(deep_map)
    _one_line_error(exc, str(deep_map), "nested")

    laughs = tmp_path / "laughs.yaml"
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    laughs.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(laughs)
    _one_line_error(exc, str(laughs), "aliases")
    assert time.perf_counter() - t0 < 10

    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(str(tmp_path / "a\x00b.yaml"))
    _one_line_error(exc, "NUL")
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(tmp_path / ("x" * 5000 + ".yaml"))
    assert len(_one_line_error(exc, "4096 characters")) < 400
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(tmp_path / ("x" * 300 + ".yaml"))  # a file name longer than the file system allows
    _one_line_error(exc, "config file")
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(tmp_path)
    _one_line_error(exc, "folder")

    import difftem.config as config_module

    monkeypatch.setattr(config_module, "MAX_YAML_BYTES", 1000)
    big = tmp_path / "big.yaml"
    big.write_text("seed: 1\n" + "# padding\n" * 200)
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(big)
    _one_line_error(exc, str(big), "larger than")


# ------------------------------------------------------------------------------------------------ good_fft_size
def _good_fft_size_counting(n: int) -> int:
    """The implementation before issue 14: count up one integer at a time."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def test_good_fft_size_equals_the_counting_version():
    old = [_good_fft_size_counting(n) for n in range(-3, 10001)]
    assert [good_fft_size(n) for n in range(-3, 10001)] == old
    for n in (0.5, 2.5, 97.9, 10_007, 123_457, 999_999, 4_194_305):
        assert good_fft_size(n) == _good_fft_size_counting(n)


def test_good_fft_size_is_fast_and_has_a_ceiling():
    t0 = time.perf_counter()
    for n in range(GOOD_FFT_SIZE_MAX - 1000, GOOD_FFT_SIZE_MAX + 1):
        m = good_fft_size(n)
        assert m >= n and m <= GOOD_FFT_SIZE_MAX
    assert good_fft_size(1_244_159_999) == 1_244_160_000  # 2^11 · 3^5 · 5^4
    assert time.perf_counter() - t0 < 2.0
    for bad in (GOOD_FFT_SIZE_MAX + 1, 10**20, 1e300, INF, NAN):
        with pytest.raises(ValueError):
            good_fft_size(bad)


# ------------------------------------------------------------------------------------------------ structures
PDB_OK = ("ATOM      1  N   MET A   1      27.340  24.430   2.614  1.00  9.67           N\n"
          "ATOM      2  CA  MET A   1      26.266  25.413   2.842  1.00 10.38           C\n")


def _pdb_atom(x="  28.000", y="  25.000", z="   3.000", occ="  1.00", b=" 10.00") -> str:
    return f"ATOM      3  C   MET A   1    {x}{y}{z}{occ}{b}           C\n"


BAD_ATOMS = [
    (dict(x="     nan"), "coordinates"),
    (dict(y="     inf"), "coordinates"),
    (dict(z="    -inf"), "coordinates"),
    (dict(b="   nan"), "B-factor"),
    (dict(b="   inf"), "B-factor"),
    (dict(b="  -5.0"), "B-factor"),
    (dict(occ=" -5.00"), "occupancy"),
    (dict(occ="   nan"), "occupancy"),
    (dict(occ="   inf"), "occupancy"),
]


@pytest.mark.parametrize(("fields", "problem"), BAD_ATOMS, ids=[f"{k}={v.strip()}" for d, _ in BAD_ATOMS
                                                                 for k, v in d.items()])
def test_bad_atoms_are_structure_errors(tmp_path, fields, problem):
    path = tmp_path / "bad.pdb"
    path.write_text(PDB_OK + _pdb_atom(**fields) + "END\n")
    with pytest.raises(StructureError) as exc:
        read_structure(path)
    _one_line_error(exc, str(path), "atom 3 'C'", "chain A MET1", problem)


def test_bad_atoms_in_mmcif_and_through_a_config(tmp_path):
    import gemmi

    st = gemmi.read_pdb_string(PDB_OK + _pdb_atom() + "END\n")
    st[0]["A"][0][2].pos = gemmi.Position(1e20, 0, 0)
    st.setup_entities()
    cif = tmp_path / "far.cif"
    st.make_mmcif_document().write_file(str(cif))
    with pytest.raises(StructureError) as exc:
        read_structure(cif)
    _one_line_error(exc, str(cif), "coordinates")
    # through the whole pipeline: the reader stops them before any scene geometry (no LinAlgError, no hang)
    pdb = tmp_path / "neg.pdb"
    pdb.write_text(PDB_OK + _pdb_atom(occ=" -5.00") + "END\n")
    cfg = config_from_dict(_set(BASE, "sample.particles.0.structure", str(pdb)))
    with pytest.raises(StructureError) as exc:
        scene_of(cfg)
    _one_line_error(exc, str(pdb), "occupancy")


def test_unreadable_structure_paths_and_multiline_parser_messages(tmp_path):
    for path, needle in ((tmp_path / "a\x00b.pdb", "NUL byte"), (tmp_path / ("x" * 300 + ".pdb"), "cannot open"),
                         (tmp_path, "folder")):
        with pytest.raises(StructureError) as exc:
            read_structure(path)
        assert "\x00" not in _one_line_error(exc, needle)
    cif = tmp_path / "broken.cif"
    cif.write_text("data_x\nloop_\n_atom_site.id\n_atom_site.Cartn_x\n1 2 3\n'unterminated\n")
    with pytest.raises(StructureError) as exc:
        read_structure(cif)
    _one_line_error(exc, str(cif))


def test_weighted_centre_stays_inside_the_atoms():
    pos = np.array([[0.0, 0, 0], [10.0, 0, 0], [0, 10.0, 0]])
    z = np.full(3, 6)
    for occ in ([1.0, -1.0 + 1e-15, 0.0], [0.0, 0.0, 0.0], [1.0, -5.0, 1.0]):
        centred = Atoms(z, pos, np.zeros(3), np.array(occ)).centred("mass")
        shift = pos - centred.positions_a
        assert np.all(np.isfinite(shift)) and np.all(shift >= pos.min(0)) and np.all(shift <= pos.max(0))


def test_scene_geometry_refuses_non_finite_atoms():
    with pytest.raises(StructureError):
        bounding_capsule(np.array([[0.0, 0, 0], [np.nan, 1, 2]]))


# ------------------------------------------------------------------------------------------------ big scenes
def test_a_huge_helix_is_refused_before_it_is_built():
    from difftem.config import Particle

    p = Particle(structure=UBI, centre="none", helix={"rise_a": 1.4, "twist_deg": 22, "n_subunits": 100_000})
    t0 = time.perf_counter()
    with pytest.raises(ResourceError) as exc:
        load_particle_type(p, resolve_structure, field="sample.particles.0", max_bytes=1e9)
    _one_line_error(exc, "sample.particles.0.helix.n_subunits", "atoms")
    assert time.perf_counter() - t0 < 2.0


def test_far_transforms_are_refused(tmp_path):
    from difftem.config import Particle

    ops = tmp_path / "far.txt"
    ops.write_text("2 4\n1 0 0 0\n0 1 0 0\n0 0 1 0\n1 0 0 1e20\n0 1 0 0\n0 0 1 0\n")
    p = Particle(structure=UBI, transforms_file=str(ops))
    with pytest.raises(DifftemError) as exc:
        load_particle_type(p, resolve_structure, field="sample.particles.0")
    _one_line_error(exc)


def test_random_placement_scales_and_never_overlaps():
    """Many random copies are placed in seconds (a cell grid, not all pairs) and never overlap."""
    ubi = read_structure(builtin_structure("1ubi"))
    bounds = [bounding_capsule(ubi.positions_a, "sphere")]
    t0 = time.perf_counter()
    placement = random_placement(bounds, [3000], field_a=(4000.0, 4000.0), ice_thickness_a=300.0,
                                 rng=np.random.default_rng(1), names=["ubi"], gap_a=2.0, random_orientation=[True])
    assert len(placement) == 3000 and time.perf_counter() - t0 < 5.0
    c = placement.positions_a + np.einsum("mij,j->mi", placement.rotations, bounds[0].centre_a)
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(c)) * 1e9
    assert d.min() >= 2 * bounds[0].radius_a + 2.0 - 1e-9  # spheres: centre distance ≥ 2r + gap


def test_unknown_builtin_structure_lists_the_builtins():
    """The list of built-in structures reads as the names a config takes (it was a Python list: ['1ubi'])."""
    from difftem.specimen.build import resolve_structure

    with pytest.raises(ConfigError, match=r"unknown builtin:zzzz; available: builtin:1ubi \(or give"):
        resolve_structure("builtin:zzzz")
