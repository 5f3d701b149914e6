"""calibrate: detector statistics recovered from simulated micrographs of known gain, DQE and dose; the likeness
score separates different data and not alike data; the calibrate round trip on a simulated micrograph."""

import math

import numpy as np
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
    assert ratios["max_abs_deviation"] < 0.05
    assert abs(band_ratios(crops(a), crops(c))["ratio"][8] - 0.75) < 0.05  # noise power ∝ dose


def test_thickness_from_transmission_and_its_errors():
    assert math.isclose(thickness_from_transmission(math.exp(-0.5), 300.0), 150.0)
    with pytest.raises(ArgumentError, match="dose"):
        thickness_from_transmission(1.3, 300.0)
