"""calibrate: detector statistics recovered from simulated micrographs of known gain, DQE and dose; the likeness
score separates different data and not alike data; the calibrate round trip on a simulated micrograph."""

import math

import pytest
import torch

import difftem
from difftem.calibrate.likeness import band_ratios, classifier_accuracy
from difftem.calibrate.stats import detector_statistics, thickness_from_transmission
from difftem.core.errors import ArgumentError, ConfigError

MTF = {"a": 0.6, "b": 1.24, "c": -0.84, "alpha": 0.97, "beta": 0.97}


def _flat(gain=3.0, dqe=0.8, dose=40.0, n=1024, seed=3, ice_nm=30.0):
    cfg = {"seed": seed, "beam": {"voltage_kv": 300, "dose_e_per_a2": dose}, "optics": {"defocus_um": 1.5},
           "detector": {"shape_px": [n, n], "pixel_size_a": 1.0, "dqe": dqe, "gain": gain, "mtf": MTF},
           "sample": {"ice_thickness_nm": ice_nm}, "simulation": {"slice_thickness_a": 50}}
    try:  # a featureless ice field: the structured ice (when the config has it) is not wanted here
        return difftem.simulate({**cfg, "sample": {**cfg["sample"], "ice_structure": {"mode": "off"}}})
    except ConfigError:
        return difftem.simulate(cfg)


@pytest.mark.parametrize("gain,dqe,dose", [(3.0, 0.8, 40.0), (50.0, 0.5, 15.0)])
def test_gain_over_dqe_and_counts_recovered(gain, dqe, dose, one_thread):
    r = _flat(gain, dqe, dose)
    img = r.micrograph.numpy()
    s = detector_statistics(img)
    assert abs(s.gain_over_dqe / (gain / dqe) - 1) < 0.04
    g, counts = s.detector(dqe)
    assert abs(counts / float(r.noiseless.mean() / gain) - 1) < 0.04
    with pytest.raises(ArgumentError, match="dqe"):
        s.detector(1.5)


def test_likeness_tells_different_data_apart_and_not_alike_data(one_thread):
    a = torch.as_tensor(_flat(seed=1).micrograph.numpy()).double()
    b = torch.as_tensor(_flat(seed=2).micrograph.numpy()).double()
    c = torch.as_tensor(_flat(seed=2, dose=30.0).micrograph.numpy()).double()

    def crops(x):
        return x.unfold(0, 128, 128).unfold(1, 128, 128).reshape(-1, 128, 128)

    same = classifier_accuracy(crops(a), crops(b))
    other = classifier_accuracy(crops(a), crops(c))
    assert same["accuracy"] <= 0.7 and other["accuracy"] >= 0.95
    ratios = band_ratios(crops(a), crops(b))
    # two noise draws of one field: 0.02–0.07 over 8 seed pairs (each Poisson method); a dose 3/4 of the other: 0.25
    assert ratios["max_abs_deviation"] < 0.08
    assert abs(band_ratios(crops(a), crops(c))["ratio"][8] - 0.75) < 0.05  # noise power ∝ dose


def test_thickness_from_transmission_and_its_errors():
    assert math.isclose(thickness_from_transmission(math.exp(-0.5), 300.0), 150.0)
    with pytest.raises(ArgumentError, match="dose"):
        thickness_from_transmission(1.3, 300.0)


def test_calibrate_round_trip_recovers_a_known_simulation(tmp_path, one_thread):
    """A micrograph simulated with structured ice, a known CTF, dose, gain and thickness: calibrate (told the
    nominal dose, the DQE and the camera's MTF) gives back the defocus, the gain, the thickness and the ice
    amplitude, and its own simulation matches the input band by band and cannot be told apart by the classifier.
    80 e/Å²: at 40 the Thon rings of 768² px of bare ice are at the noise (the CTF explains < 1 % of the band's
    variance) and the defocus came out for 2 of 6 noise seeds; at 80 it did for each of seeds 11–20 (0.994–1.000)."""
    import json

    from difftem.calibrate.run import run_calibrate
    from difftem.io.files import write_mrc

    truth = {"seed": 11, "beam": {"voltage_kv": 300, "dose_e_per_a2": 80.0},
             "optics": {"defocus_um": 1.2, "astigmatism_um": 0.1, "astigmatism_angle_deg": 25.0,
                        "electron_loss": {"model": "explicit", "energy_filter": True}},
             "detector": {"shape_px": [768, 768], "pixel_size_a": 1.0, "dqe": 0.8, "gain": 3.0, "mtf": MTF},
             "sample": {"ice_thickness_nm": 40.0, "ice_structure": {"mode": "slices", "amplitude": 0.25}},
             "simulation": {"slice_thickness_a": 10}}
    img = difftem.simulate(truth).micrograph.numpy()
    write_mrc(tmp_path / "mic.mrc", img, 1.0)
    from difftem.forward.detector import MTFParams

    run_calibrate([tmp_path / "mic.mrc"], tmp_path / "cal", dqe=0.8, dose_e_per_a2=80.0, energy_filter=True,
                  mtf=MTFParams(**MTF), field_px=768, bootstrap=0)
    rec = json.loads((tmp_path / "cal" / "calibration.json").read_text())["micrographs"][0]
    ctf = rec["ctf"]
    # the ice scatters from every depth symmetrically about the mid-plane, where the config gives the defocus
    assert abs(0.5 * (ctf["defocus_u_a"] + ctf["defocus_v_a"]) / 12000 - 1) < 0.01
    assert abs(ctf["defocus_u_a"] - ctf["defocus_v_a"] - 1000) < 250  # a weak, small field: see test_ctf_fit
    assert abs(rec["detector"]["gain_units_per_e"] / 3.0 - 1) < 0.05
    assert abs(rec["ice"]["thickness_nm"] / 40.0 - 1) < 0.15
    assert abs(rec["ice"]["structure_amplitude"] / 0.25 - 1) < 0.3
    assert rec["likeness"]["bands"]["max_abs_deviation"] < 0.1
    assert rec["likeness"]["classifier"]["accuracy"] <= 0.75
    assert (tmp_path / "cal" / "calibrated.yaml").is_file() and (tmp_path / "cal" / "mic_report.png").is_file()


def test_tilt_series_doses_and_defoci_per_tilt(tmp_path, one_thread):
    """A simulated tilt series (stack + .tlt + tilts.star beside it): calibrate gives each tilt's dose (through
    the ice's path t/cos θ) and defocus, and writes them as the calibrated config's tilt series."""
    import json

    import yaml
    from typer.testing import CliRunner

    from difftem.calibrate.run import run_calibrate
    from difftem.cli._app import app
    from difftem.forward.detector import MTFParams

    cfg = {"seed": 5, "beam": {"voltage_kv": 300, "dose_e_per_a2": 40.0},
           "optics": {"defocus_um": 1.5, "electron_loss": {"model": "explicit", "energy_filter": True}},
           "detector": {"shape_px": [512, 512], "pixel_size_a": 1.0, "dqe": 0.8, "gain": 2.0, "mtf": MTF},
           "sample": {"ice_thickness_nm": 60.0, "ice_structure": {"mode": "slices"}},
           "simulation": {"slice_thickness_a": 10},
           "tilt_series": {"scheme": "list", "angles_deg": [0.0, 30.0, -45.0],
                           "dose_per_tilt_e_per_a2": [30.0, 20.0, 40.0]}}
    (tmp_path / "ts.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["simulate", str(tmp_path / "ts.yaml"), "--out", str(tmp_path / "sim")])
    assert res.exit_code == 0, res.output
    run_calibrate([tmp_path / "sim" / "tilt_series.mrc"], tmp_path / "cal", dqe=0.8, dose_e_per_a2=30.0,
                  energy_filter=True, mtf=MTFParams(**MTF), field_px=512, bootstrap=0)
    rec = json.loads((tmp_path / "cal" / "calibration.json").read_text())["micrographs"][0]
    by_angle = {round(t["tilt_deg"]): t for t in rec["tilts"]}
    for angle, dose in ((0, 30.0), (30, 20.0), (-45, 40.0)):
        assert abs(by_angle[angle]["dose_e_per_a2"] / dose - 1) < 0.08, (angle, by_angle[angle])
        mean = 0.5 * (by_angle[angle]["defocus_u_a"] + by_angle[angle]["defocus_v_a"])
        assert abs(mean / 15000 - 1) < 0.03, (angle, mean)
    written = yaml.safe_load((tmp_path / "cal" / "calibrated.yaml").read_text())
    assert written["tilt_series"]["angles_deg"] == sorted([0.0, 30.0, -45.0])
    assert len(written["tilt_series"]["dose_per_tilt_e_per_a2"]) == 3


def test_unfiltered_micrograph_calibrates_without_a_loss(shared_data, tmp_path, one_thread):
    """The real Falcon micrograph with calibrate's defaults (no energy filter): the ice then loses no electrons,
    its attenuation length is infinite, and the thickness probe divided by log(1) (a ZeroDivisionError traceback).
    Now the dose is the counts themselves and the report says the thickness was assumed, and why."""
    import json

    from typer.testing import CliRunner

    from difftem.cli._app import app

    mic = shared_data / "micrographs" / "real_micrograph_falcon_epu_crop2048.mrc.gz"
    res = CliRunner().invoke(app, ["calibrate", str(mic), "--out", str(tmp_path / "cal"), "--field", "256",
                                   "--crop", "64"])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "cal" / "calibration.json").read_text())["micrographs"][0]
    assert rec["ice"]["attenuation_length_nm"] is None and rec["ice"]["transmission"] == 1.0
    assert "energy filter" in rec["ice"]["thickness_from"]
    counts = rec["detector"]["counts_per_px"]
    assert abs(rec["dose_e_per_a2"] / (counts / rec["pixel_size_a"] ** 2) - 1) < 1e-9
    # the dose read from the noise is near the nominal 41 e/Å²: no warning
    assert 20 < rec["dose_e_per_a2"] < 100 and rec["warnings"] == []


def test_dose_weighted_micrograph_asks_for_the_dose(shared_data, tmp_path, one_thread):
    """A dose-weighted sum (UCSF, its pixel a 1 Å placeholder) has far less noise than its counts: the dose read from
    it is no exposure's. That was a config validation error ("beam.dose_e_per_a2 ≤ 100000"); now one line that
    names --dose, and nothing is written."""
    from typer.testing import CliRunner

    from difftem.cli._app import app

    mic = shared_data / "micrographs" / "real_micrograph_ucsf_stack_1142_DW.mrc.gz"
    res = CliRunner().invoke(app, ["calibrate", str(mic), "--out", str(tmp_path / "cal"), "--field", "256",
                                   "--crop", "64"])
    assert res.exit_code == 2, res.output
    assert "--dose" in res.output and "not electron counts" in res.output and "Traceback" not in res.output
    assert "beam.dose_e_per_a2" not in res.output
    assert not (tmp_path / "cal").exists()


def test_dose_warning_only_for_implausible_doses_read_from_noise():
    from difftem.calibrate.run import dose_warnings

    assert dose_warnings(40.0, nominal=False) == [] and dose_warnings(1.5, nominal=False) == []
    assert dose_warnings(364.0, nominal=True) == []  # the user's own number is not second-guessed
    assert "364 e/Å²" in dose_warnings(364.0, nominal=False)[0]
    assert "0.05 e/Å²" in dose_warnings(0.05, nominal=False)[0]


def test_a_cancelling_mtf_fit_is_not_taken():
    """The fitted MTF's terms a, b and c = 1 − a − b: ones that cancel (the dose-weighted UCSF micrograph's fit ran
    off to |a| + |b| + |c| ≫ 1, which the config then refused) are rejected like a negative curve; real ones pass."""
    from difftem.calibrate.spectrum import _plausible_mtf

    w2 = torch.linspace(0, 0.25, 50, dtype=torch.float64)
    real = torch.tensor([0.5, 0.3, math.log(5.0), math.log(20.0)], dtype=torch.float64)
    runaway = torch.tensor([4000.0, -4100.0, math.log(5.0), math.log(5.2)], dtype=torch.float64)
    negative = torch.tensor([2.0, 0.0, math.log(50.0), math.log(20.0)], dtype=torch.float64)  # 2/(1+50w²) − 1
    assert _plausible_mtf(real, w2) and not _plausible_mtf(runaway, w2) and not _plausible_mtf(negative, w2)
