"""TEM-simulator 1.3 input files: parsing, translation to a SimulationConfig, conventions, errors, CLI."""

import math
import os
import shutil
import subprocess
from importlib import resources
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from difftem.cli import app
from difftem.config import load_config
from difftem.core.errors import ConfigError
from difftem.core.rotations import rotation_zxz_deg
from difftem.temsim import (
    InpError,
    carbon_loss_fraction,
    load_inp,
    parse_inp_text,
    read_table,
    read_transforms_file,
    temsim_ice_absorption_v,
)

runner = CliRunner()
UBQ = Path(str(resources.files("difftem").joinpath("data", "1ubi_ubiquitin.pdb.gz")))

EVERY_SECTION = """\
# every component of a TEM-simulator 1.3 input file
=== simulation ===
generate_micrographs = yes
rand_seed = 7
log_file = sim.log
=== sample ===
diameter = 2000
thickness_edge = 30
thickness_center = 30
=== particle UBQ ===
source = pdb
pdb_file_in = ubq.pdb.gz
pdb_transf_file_in = ubq_transf.txt
voxel_size = 0.1
use_imag_pot = no
famp = 0.6
add_hydrogen = no
map_file_re_out = ubq_map.mrc
=== particleset ===
particle_type = UBQ
particle_coords = file
coord_file_in = ubq_coord.txt
num_particles = 2
=== geometry ===
gen_tilt_data = yes
ntilts = 3
theta_start = -30
theta_incr = 30
tilt_axis = 20
geom_errors = none
=== electronbeam ===
acc_voltage = 300
energy_spread = 0.9
gen_dose = yes
dose_per_im = 2500
=== optics ===
magnification = 50000
cs = 2.7
cc = 2.7
aperture = 100
focal_length = 2.5
cond_ap_angle = 0.05
gen_defocus = yes
defocus_nominal = 2.5
=== detector ===
det_pix_x = 96
det_pix_y = 64
pixel_size = 10
gain = 2
use_quantization = yes
dqe = 0.6
mtf_a = 0.7
mtf_b = 0.2
mtf_c = 0.1
mtf_alpha = 10
mtf_beta = 40
image_file_out = noisy.mrc
=== volume ===
voxel_size = 0.5
nx = 10
ny = 10
nz = 10
map_file_re_out = vol.mrc
"""

# the same specimen written by hand in difftem's units: pixel 10 µm / 50000 = 2 Å; aperture 100 µm / (2 · 2.5 mm)
# = 20 mrad; 2500 e/nm² = 25 e/Å² per image; tilt axis 20° from x = −70° from y; famp 0.6 → 0.6/√(1−0.36) = 0.75
# (× the share scattered outside the aperture);
# coordinates in nm → Å; Rz(ψ)Rx(θ)Rz(φ) = Rz(ψ−90)Ry(θ)Rz(φ+90), so (φ, θ, ψ) = (30, 40, 50) → (−40, 40, 120)
YAML_TWIN = """\
seed: 7
beam: {voltage_kv: 300, dose_e_per_a2: 25}
optics: {defocus_um: 2.5, cs_mm: 2.7, cc_mm: 2.7, energy_spread_ev: 0.9, illumination_semiangle_mrad: 0.05,
         aperture_mrad: 20, astigmatism_um: 0, astigmatism_angle_deg: 0, phase_shift_deg: 0}
detector: {shape_px: [64, 96], pixel_size_a: 2.0, noise: poisson, dqe: 0.6, gain: 2,
           mtf: {a: 0.7, b: 0.2, c: 0.1, alpha: 10, beta: 40}, model: perfect}
sample:
  ice_thickness_nm: 30
  ice_structure: {mode: "off"}
  ice_absorption_potential_v: ICE_V
  absorption_ratio: RATIO
  particles:
    - name: UBQ
      structure: ubq.pdb.gz
      transforms_file: ubq_transf.txt
      positions_a: [[15, -20, 0], [-30, 40, 10]]
      euler_zyz_deg: [[-40, 40, 120], [-90, 90, 90]]
      models: all
      remove_waters: false
      centre: bbox
      representation: auto
simulation: {slice_thickness_a: 25.4}
tilt_series: {scheme: list, angles_deg: [-30, 0, 30], tilt_axis_deg: -70, damage: none}
"""


def write_every_section(tmp_path: Path, text: str = EVERY_SECTION) -> Path:
    shutil.copy(UBQ, tmp_path / "ubq.pdb.gz")
    (tmp_path / "ubq_transf.txt").write_text("# t (Å), phi theta psi (deg)\n2 6\n0 0 0 0 0 0\n20 0 0 90 0 0\n")
    (tmp_path / "ubq_coord.txt").write_text("# x y z (nm) phi theta psi\n 3 6\n1.5 -2 0 30 40 50\n"
                                            "# comment between rows\n-3 4 1 0 90 0\n9 9 9 0 0 0\n")
    p = tmp_path / "every.inp"
    p.write_text(text)
    return p


def assert_same(a, b, path="config"):
    """Recursive equality of dumped configs, floats to 1e-9 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


# ---------------------------------------------------------------------------------------------- translation
def test_every_section_matches_its_yaml_twin(tmp_path):
    result = load_inp(write_every_section(tmp_path))
    twin = tmp_path / "twin.yaml"
    # the two values from TEM-simulator's scattering model (tested below): ice loss, carbon's share outside 20 mrad
    twin.write_text(YAML_TWIN.replace("ICE_V", repr(temsim_ice_absorption_v(300, 20.0)))
                    .replace("RATIO", repr(0.75 * carbon_loss_fraction(300, 20.0))))
    assert_same(result.config.model_dump(mode="json"), load_config(twin).model_dump(mode="json"))
    # every key of the file is accounted for, and the ignored ones are said to be
    keys = {(m.section, m.key) for m in result.mapping}
    assert ("particle UBQ", "voxel_size") in keys and ("detector", "image_file_out") in keys
    assert any("vol" in n and "ignored" in n for n in result.notes)
    assert any("image_file_out" in n and "ignored (difftem writes its own outputs)" in n for n in result.notes)


def test_convert_writes_the_same_config_with_the_mapping_as_comments(tmp_path):
    inp = write_every_section(tmp_path)
    out = tmp_path / "converted" / "config.yaml"
    res = runner.invoke(app, ["convert", str(inp), "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "aperture_mrad: 20.0  # <- aperture = 100, focal_length = 2.5" in text
    assert "pixel_size_a: 2.0  # <- magnification = 50000, pixel_size = 10" in text
    assert_same(load_config(out).model_dump(mode="json"), load_inp(inp).config.model_dump(mode="json"))
    printed = runner.invoke(app, ["convert", str(inp)])  # no -o: the YAML goes to stdout
    assert printed.exit_code == 0 and "tilt_axis_deg: -70.0" in printed.stdout
    # the input is never the output (it was replaced by its YAML), an existing file only with --overwrite
    before = inp.read_bytes()
    same = runner.invoke(app, ["convert", str(inp), "-o", str(inp)])
    assert same.exit_code == 2 and "is the input file" in same.output and inp.read_bytes() == before
    again = runner.invoke(app, ["convert", str(inp), "-o", str(out)])
    assert again.exit_code == 2 and "pass --overwrite" in " ".join(again.output.split())
    assert runner.invoke(app, ["convert", str(inp), "-o", str(out), "--overwrite"]).exit_code == 0


@pytest.mark.parametrize("old, new", [
    ("particle_coords = file\ncoord_file_in = ubq_coord.txt\nnum_particles = 2",
     "particle_coords = random\nwhere = volume\nparticle_conc = 1000000"),
    ("particle_coords = file\ncoord_file_in = ubq_coord.txt\nnum_particles = 2",
     "particle_coords = grid\nnx = 3\nparticle_dist = 4"),
    ("mtf_a = 0.7\nmtf_b = 0.2", "mtf_a = 0\nmtf_b = 0"),
    ("ntilts = 3\ntheta_start = -30", "ntilts = 1\ntheta_start = 0"),
    ("dose_per_im = 2500", "dose_per_im = 2500\ndose_sd = 0.1"),
])
def test_converted_yaml_round_trips(tmp_path, old, new):
    inp = write_every_section(tmp_path, EVERY_SECTION.replace(old, new))
    out = tmp_path / "c.yaml"
    assert runner.invoke(app, ["convert", str(inp), "-o", str(out)]).exit_code == 0
    assert_same(load_config(out).model_dump(mode="json"), load_inp(inp).config.model_dump(mode="json"))


ALL_OTHER_KEYS = {
    "simulation": "generate_volumes = no\ngenerate_particle_maps = no",
    "sample": "offset_x = 0\noffset_y = 0",
    "particle UBQ": "nx = 10\nny = 10\nnz = 10\nuse_defocus_corr = no\nmap_file_re_in = a\nmap_file_im_in = b\n"
                    "contrast_re = 1\ncontrast_im = 1\nsmoothness = 1\nmake_positive = no\nmap_file_im_out = x\n"
                    "map_file_format = mrc\nmap_axis_order = xyz\nmap_file_byte_order = native",
    "particleset": "nx = 2\nny = 1\nnz = 1\noffset_x = 0\noffset_y = 0\noffset_z = 0\nparticle_dist = 3\n"
                   "where = volume\nparticle_conc = 5\noccupancy = 1\ncoord_file_out = c.txt\ngen_rand_positions = no",
    "geometry": "tilt_mode = tiltseries\ngeom_file_in = g.txt\ngeom_file_out = o.txt\ntilt_err = 0\n"
                "align_err_rot = 0\nalign_err_tr = 0\nerror_file_in = e\nerror_file_out = f",
    "electronbeam": "total_dose = 100\ndose_sd = 0\ndose_file_in = d\ndose_file_out = o",
    "optics": "defocus_syst_error = 0\ndefocus_nonsyst_error = 0\ndefocus_file_in = d\ndefocus_file_out = o",
    "detector": "padding = 20\nmtf_p = 1\nmtf_q = 1\nimage_file_format = mrc\nimage_axis_order = xy\n"
                "image_file_byte_order = native",
    "volume": "offset_x = 0\noffset_y = 0\noffset_z = 0\nmap_file_im_out = v\nmap_file_format = mrc\n"
              "map_axis_order = xyz\nmap_file_byte_order = native",
}


def test_every_key_of_the_file_is_accounted_for(tmp_path):
    """With every TEM-simulator parameter present, each one appears in the mapping (a field, or None + a note)."""
    from difftem.temsim import PARAMETERS

    text = EVERY_SECTION
    for section, extra in ALL_OTHER_KEYS.items():
        text = text.replace(f"=== {section} ===\n", f"=== {section} ===\n{extra}\n")
    sections, _ = parse_inp_text(text, "x")
    for sec in sections:  # the file now sets every parameter TEM-simulator 1.3 knows
        assert set(sec.values) == set(PARAMETERS[sec.kind]), sec.label
    result = load_inp(write_every_section(tmp_path, text))
    mapped = {(m.section, m.key) for m in result.mapping}
    assert [(s.label, k) for s in sections for k in s.values if (s.label, k) not in mapped] == []


def test_one_untilted_image_is_a_micrograph_and_total_dose_is_split_over_tilts(tmp_path):
    one = EVERY_SECTION.replace("ntilts = 3", "ntilts = 1").replace("theta_start = -30", "theta_start = 0")
    cfg = load_inp(write_every_section(tmp_path, one)).config
    assert cfg.tilt_series is None and cfg.beam.dose_e_per_a2 == 25.0
    total = EVERY_SECTION.replace("dose_per_im = 2500", "total_dose = 6000")
    cfg = load_inp(write_every_section(tmp_path, total)).config
    assert cfg.tilt_series.total_dose_e_per_a2 == 60.0 and cfg.beam.dose_e_per_a2 == pytest.approx(20.0)


def test_geometry_dose_and_defocus_files_match_generated_values(tmp_path):
    """gen_tilt_data/gen_dose/gen_defocus = no: the same tilts from a (psi, theta, phi) file (psi = −axis,
    phi = axis), doses (e/nm²) and defoci (µm) per image from one-column files."""
    text = EVERY_SECTION.replace("gen_tilt_data = yes\nntilts = 3\ntheta_start = -30\ntheta_incr = 30\ntilt_axis = 20",
                                 "gen_tilt_data = no\ngeom_file_in = geom.txt")
    text = text.replace("gen_dose = yes\ndose_per_im = 2500", "gen_dose = no\ndose_file_in = dose.txt")
    text = text.replace("gen_defocus = yes\ndefocus_nominal = 2.5", "gen_defocus = no\ndefocus_file_in = defocus.txt")
    (tmp_path / "geom.txt").write_text("# psi theta phi\n3 3\n-20 -30 20\n-20 0 20\n-20 30 20\n")
    (tmp_path / "dose.txt").write_text("3 1\n2500\n2000\n1500\n")
    (tmp_path / "defocus.txt").write_text("4 1\n2.5\n3.0\n3.5\n9\n")
    cfg = load_inp(write_every_section(tmp_path, text)).config
    ts = cfg.tilt_series
    assert ts.angles_deg == [-30.0, 0.0, 30.0] and ts.tilt_axis_deg == -70.0
    assert ts.dose_per_tilt_e_per_a2 == [25.0, 20.0, 15.0] and ts.defocus_um == [2.5, 3.0, 3.5]
    (tmp_path / "geom.txt").write_text("3 3\n-20 -30 20\n-20 0 20\n-10 30 20\n")  # a second axis
    with pytest.raises(InpError, match="single-axis"):
        load_inp(tmp_path / "every.inp")


def test_two_detectors_noisy_and_noise_free_are_one_difftem_detector(tmp_path):
    second = EVERY_SECTION.replace("=== volume ===", """=== detector ===
det_pix_x = 96
det_pix_y = 64
pixel_size = 10
gain = 2
use_quantization = no
dqe = 0.6
mtf_a = 0.7
mtf_b = 0.2
mtf_c = 0.1
mtf_alpha = 10
mtf_beta = 40
image_file_out = clean.mrc
=== volume ===""")
    result = load_inp(write_every_section(tmp_path, second))
    assert result.config.detector.noise == "poisson"
    assert any("noiseless" in n for n in result.notes)
    differing = second.replace("pixel_size = 10\ngain = 2\nuse_quantization = no", "pixel_size = 12\ngain = 2\n"
                                                                                  "use_quantization = no")
    with pytest.raises(InpError, match='section "detector #2", key "pixel_size": differs'):
        load_inp(write_every_section(tmp_path, differing))


def test_random_and_grid_placement(tmp_path):
    # 1000 particles over a 2000 nm hole; the 19.2 × 12.8 nm field sees 245.76 nm² of π·10⁶ nm²
    rnd = EVERY_SECTION.replace("particle_coords = file\ncoord_file_in = ubq_coord.txt\nnum_particles = 2",
                                "particle_coords = random\nwhere = volume\nnum_particles = 100000")
    cfg = load_inp(write_every_section(tmp_path, rnd)).config
    assert cfg.sample.particles[0].random.count == round(100000 * 19.2 * 12.8 / (math.pi * 1000**2))
    with pytest.raises(InpError, match='section "particleset", key "where": \'surface\''):
        load_inp(write_every_section(tmp_path, rnd.replace("where = volume", "where = surface")))
    grid = EVERY_SECTION.replace("particle_coords = file\ncoord_file_in = ubq_coord.txt\nnum_particles = 2",
                                 "particle_coords = grid\nnx = 2\nny = 1\nnz = 1\nparticle_dist = 5\noffset_x = 1")
    p = load_inp(write_every_section(tmp_path, grid)).config.sample.particles[0]
    assert p.positions_a == [(-15.0, 0.0, 0.0), (35.0, 0.0, 0.0)]  # (i − (nx−1)/2)·dist + offset, nm → Å
    assert len(p.euler_zyz_deg) == 2


# ---------------------------------------------------------------------------------------------- conventions
def test_particle_euler_angles_convert_to_the_same_rotation():
    """TEM-simulator's R = Rz(ψ)Rx(θ)Rz(φ), written as our (φ', θ', ψ') z-y-z pose, is the same matrix."""
    from difftem.core.rotations import euler_zyz_from_matrix, rotation_zyz_deg

    rng = np.random.default_rng(3)
    angles = np.column_stack([rng.uniform(-180, 180, 20), rng.uniform(5, 175, 20), rng.uniform(-180, 180, 20)])
    angles[0] = (30, 40, 50)
    r_temsim = rotation_zxz_deg(angles[:, 0], angles[:, 1], angles[:, 2])
    ref = Rotation.from_euler("ZXZ", angles[:, ::-1], degrees=True).as_matrix()  # intrinsic: Rz(ψ)·Rx(θ)·Rz(φ)
    np.testing.assert_allclose(r_temsim, ref, atol=1e-12)
    ours = euler_zyz_from_matrix(r_temsim)
    back = np.stack([rotation_zyz_deg(*a) for a in ours])
    points = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [1.0, -2.0, 0.5]])  # no symmetry
    np.testing.assert_allclose(points @ back.transpose(0, 2, 1), points @ ref.transpose(0, 2, 1), atol=1e-9)
    np.testing.assert_allclose(ours[0], (-40.0, 40.0, 120.0), atol=1e-9)
    # TEM-simulator's TMV example: (0, 90, 90) = "90° about x, then 90° about z" lays the rod (z) along x
    np.testing.assert_allclose(rotation_zxz_deg(0, 90, 90) @ [0, 0, 1], [1, 0, 0], atol=1e-12)


def test_tilt_axis_convention_matches_temsimulator():
    """TEM-simulator tilts the sample by Rz(α)Rx(θ)Rz(−α) (axis α from x); ours turns about y rotated by α − 90°."""
    from difftem.core.rotations import tilt_rotation

    def rz(a):
        a = math.radians(a)
        return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])

    for axis, theta in ((0.0, 30.0), (20.0, -45.0), (85.0, 12.0)):
        temsim = rz(axis) @ rotation_zxz_deg(0.0, theta, 0.0) @ rz(-axis)
        np.testing.assert_allclose(tilt_rotation(theta, axis - 90.0), temsim, atol=1e-12)


def test_transform_file_formats_agree_and_build_the_particle(tmp_path):
    six = tmp_path / "six.txt"
    six.write_text("2 6\n0 0 0 0 0 0\n1 2 3 30 40 50\n")
    ops6 = read_transforms_file(six)
    r = rotation_zxz_deg(30, 40, 50)
    rows = ["1 0 0 0", "0 1 0 0", "0 0 1 0"] + [" ".join(f"{v:.15g}" for v in [*r[i], (1, 2, 3)[i]]) for i in range(3)]
    four = tmp_path / "four.txt"
    four.write_text("# R | t\n6 4\n" + "\n".join(rows) + "\n")
    ops4 = read_transforms_file(four)
    assert ops6.shape == ops4.shape == (2, 3, 4)
    np.testing.assert_allclose(ops6, ops4, atol=1e-12)

    from difftem.config import Particle
    from difftem.specimen.build import load_particle_type, resolve_structure
    from difftem.specimen.structure import read_structure

    single = read_structure(UBQ, centre="none", remove_waters=False)
    ptype = load_particle_type(Particle(structure=str(UBQ), transforms_file=str(six), centre="none",
                                        remove_waters=False), resolve_structure)
    expected = np.concatenate([single.positions_a, single.positions_a @ r.T + [1, 2, 3]])
    np.testing.assert_allclose(ptype.atoms.positions_a, expected, atol=1e-9)


def test_ice_absorption_reproduces_temsimulator_values():
    """No aperture: every scattered electron lost → TEM-simulator's ice absorption potential (0.8245 V at 200 kV,
    0.7591 V at 300 kV). With an aperture, only what scatters outside it: 40 nm at 300 kV, 16.7 mrad → I/I0 = 0.972."""
    from difftem.forward.beam import interaction_constant
    from difftem.forward.potential import ice_absorption_potential_v

    for kv in (200.0, 300.0):
        assert temsim_ice_absorption_v(kv, None) == pytest.approx(ice_absorption_potential_v(kv), rel=2e-3)
    v = temsim_ice_absorption_v(300, 16.7)
    assert math.exp(-2 * interaction_constant(300) * v * 400) == pytest.approx(0.972, abs=1e-3)
    assert temsim_ice_absorption_v(300, 5) > temsim_ice_absorption_v(300, 10) > temsim_ice_absorption_v(300, 30) > 0


def test_screened_cross_sections_are_consistent():
    """The numerically integrated inelastic cross-section inside a wide cone reaches the closed-form total; the
    elastic share inside α is α²/(θ₀² + α²); the lost fraction falls from 1 (no aperture) towards 0."""
    from difftem.forward.beam import wavelength_a
    from difftem.temsim import BOHR_RADIUS_A, screened_cross_sections_a2

    for z in (1, 6, 8):
        el, inel = screened_cross_sections_a2(z, 300)
        el_in, inel_in = screened_cross_sections_a2(z, 300, 0.5)
        assert inel_in == pytest.approx(inel, rel=2e-3)
        alpha = 0.01
        t02 = z ** (2 / 3) / (2 * math.pi / wavelength_a(300) * BOHR_RADIUS_A) ** 2
        assert screened_cross_sections_a2(z, 300, alpha)[0] == pytest.approx(el * alpha**2 / (t02 + alpha**2))
    fractions = [carbon_loss_fraction(300, a) for a in (None, 1, 5, 20, 100)]
    assert fractions[0] == 1 and all(a > b for a, b in pairwise(fractions)) and fractions[-1] < 0.01


def test_ice_only_dose_level(tmp_path):
    """An empty sample (no particleset): counts = dose/image · pixel area · gain · TEM-simulator's ice transmission."""
    from difftem.forward.beam import interaction_constant
    from difftem.simulate.pipeline import simulate_tilt_series

    head, tail = EVERY_SECTION.split("=== particle UBQ ===")
    text = head + "=== geometry ===" + tail.split("=== geometry ===")[1]  # no particle, no particleset
    for a, b in (("ntilts = 3", "ntilts = 2"), ("theta_incr = 30", "theta_incr = 70"),
                 ("det_pix_x = 96", "det_pix_x = 32"), ("det_pix_y = 64", "det_pix_y = 32"),
                 ("use_quantization = yes", "use_quantization = no")):
        text = text.replace(a, b)
    p = tmp_path / "ice.inp"
    p.write_text(text)
    result = load_inp(p)
    assert result.config.sample.particles == []
    res = simulate_tilt_series(result.config)
    v = temsim_ice_absorption_v(300, 20.0)
    for angle, image in zip(res.angles_deg, res.noiseless, strict=True):
        transmission = math.exp(-2 * interaction_constant(300) * v * 300 / math.cos(math.radians(angle)))
        assert float(image.mean()) == pytest.approx(25.0 * 2.0**2 * 2 * transmission, rel=1e-4)


# ---------------------------------------------------------------------------------------------- reading rules & errors
def test_reader_follows_temsimulator_rules():
    text = ("# comment\r\n=== optics ===\r\nmagnification = 30000   extra words\r\n"
            'cs = 2\ncs = 2.7\n=== particle A B ===\npdb_file_in = "my file.pdb"\n=== end ===\n=== bogus ===\n')
    sections, notes = parse_inp_text(text, "t.inp")
    assert [(s.kind, s.name) for s in sections] == [("optics", ""), ("particle", "A")]
    opt = sections[0]
    assert opt.get("magnification") == 30000.0 and opt.get("cs") == 2.7
    assert sections[1].get("pdb_file_in") == "my file.pdb"
    assert any("set twice" in n for n in notes) and any("extra words" in n for n in notes)


@pytest.mark.parametrize("line, section, key, match", [
    ("defocus = 5", "optics", "defocus", "unknown TEM-simulator 1.3 parameter"),
    ("dqe = 2", "detector", "dqe", "outside TEM-simulator's allowed range"),
    ("gen_defocus = Yes", "optics", "gen_defocus", "must be yes or no"),
    ("det_pix_x = 40.5", "detector", "det_pix_x", "not an integer"),
])
def test_bad_values_name_file_line_section_and_key(tmp_path, line, section, key, match):
    text = EVERY_SECTION.replace(f"=== {section} ===\n", f"=== {section} ===\n{line}\n")
    lineno = text.splitlines().index(line) + 1
    with pytest.raises(InpError) as info:
        load_inp(write_every_section(tmp_path, text))
    err = info.value
    assert isinstance(err, ConfigError)
    assert (err.line, err.section, err.key) == (lineno, section, key)
    assert f'every.inp:{lineno}, section "{section}", key "{key}": ' in str(err) and match in str(err)


@pytest.mark.parametrize("old, new, section, key, match", [
    ("source = pdb", "source = map", "particle UBQ", "source", "'map': difftem builds particles from atomic models"),
    ("geom_errors = none", "geom_errors = random\ntilt_err = 1", "geometry", "tilt_err", "random geometry"),
    ("mtf_beta = 40", "mtf_beta = 40\nmtf_p = 2", "detector", "mtf_p", "generalised MTF exponent"),
    ("geom_errors = none", "geom_errors = none\ntilt_mode = single_particle", "geometry", "tilt_mode",
     "single_particle"),
    ("generate_micrographs = yes", "generate_micrographs = no", "simulation", "generate_micrographs", "no micrographs"),
    ("particle_type = UBQ", "particle_type = TMV", "particleset", "particle_type", "no particle component named 'TMV'"),
    ("theta_incr = 30", "theta_incr = 60", "geometry", "theta_start", "tilt angles"),
])
def test_unsupported_keys_are_refused_by_name(tmp_path, old, new, section, key, match):
    with pytest.raises(InpError) as info:
        load_inp(write_every_section(tmp_path, EVERY_SECTION.replace(old, new)))
    assert (info.value.section, info.value.key) == (section, key)
    assert f'section "{section}", key "{key}": ' in str(info.value) and match in str(info.value)


def test_value_difftem_refuses_names_the_temsimulator_key(tmp_path):
    with pytest.raises(InpError, match='section "detector", key "gain" = 0 → detector.gain'):
        load_inp(write_every_section(tmp_path, EVERY_SECTION.replace("gain = 2", "gain = 0")))


def test_missing_required_key_is_named(tmp_path):
    with pytest.raises(InpError) as info:
        load_inp(write_every_section(tmp_path, EVERY_SECTION.replace("cc = 2.7\n", "")))
    assert (info.value.section, info.value.key) == ("optics", "cc") and "required" in str(info.value)


def test_data_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("# header\n2 6\n1 2 3 4 5 6\n1 2 x 4 5 6\n")
    with pytest.raises(InpError, match=r"bad.txt:4: row 2 is not 6 numbers"):
        read_table(bad, columns=6)
    bad.write_text("4 4\n1 0 0 0\n0 1 0 0\n0 0 1 0\n1 0 0 0\n")
    with pytest.raises(InpError, match="3 rows per copy"):
        read_transforms_file(bad)
    inp = write_every_section(tmp_path)
    (tmp_path / "ubq_coord.txt").write_text("1 6\n0 0 0 0 0 0\n")
    with pytest.raises(InpError, match="holds 1 rows but 2 are needed"):
        load_inp(inp)


def test_cli_error_is_one_line_naming_the_key(tmp_path):
    inp = write_every_section(tmp_path, EVERY_SECTION.replace("cs = 2.7", "spherical = 2.7"))
    res = runner.invoke(app, ["convert", str(inp), "-o", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2
    assert 'section "optics", key "spherical": unknown TEM-simulator 1.3 parameter' in " ".join(res.output.split())
    assert not (tmp_path / "c.yaml").exists()
    res = runner.invoke(app, ["simulate", str(inp), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "spherical" in res.output


# ---------------------------------------------------------------------------------------------- against the binary
@pytest.mark.slow
def test_same_images_as_temsimulator(tmp_path):
    """Opt-in (TEMSIM_BINARY=/path/to/TEM-simulator): the noise-free tilt images of both programs agree in
    particle positions, orientation, tilt direction and contrast sign (correlation after removing each image's
    smooth background), and in mean counts."""
    binary = os.environ.get("TEMSIM_BINARY")
    if not binary or not Path(binary).exists():
        pytest.skip("set TEMSIM_BINARY to a TEM-simulator 1.3 executable")
    import gzip

    import mrcfile
    from scipy.ndimage import gaussian_filter

    from difftem.simulate.pipeline import simulate_tilt_series

    (tmp_path / "ubq.pdb").write_bytes(gzip.decompress(UBQ.read_bytes()))
    text = EVERY_SECTION.replace("ubq.pdb.gz", "ubq.pdb").replace("use_quantization = yes", "use_quantization = no")
    text = text.replace("magnification = 50000", "magnification = 20000").replace("theta_incr = 30", "theta_incr = 40")
    text = text.replace("det_pix_x = 96", "det_pix_x = 128").replace("det_pix_y = 64", "det_pix_y = 128")
    inp = write_every_section(tmp_path, text)
    (tmp_path / "ubq_coord.txt").write_text("2 6\n-4 3 0 30 40 50\n5 -2 5 0 90 0\n")
    subprocess.run([binary, str(inp)], cwd=tmp_path, check=True, capture_output=True, timeout=600)
    with mrcfile.open(tmp_path / "noisy.mrc", permissive=True) as m:
        theirs = m.data.astype(np.float64)
    ours = simulate_tilt_series(load_inp(inp).config).noiseless.numpy().astype(np.float64)
    for a, b in zip(theirs, ours, strict=True):
        assert b.mean() == pytest.approx(a.mean(), rel=0.05)
        x, y = a - gaussian_filter(a, 10, mode="wrap"), b - gaussian_filter(b, 10, mode="wrap")
        x, y = x[16:-16, 16:-16], y[16:-16, 16:-16]
        assert (x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()) > 0.8
