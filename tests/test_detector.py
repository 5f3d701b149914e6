import math

import numpy as np
import pytest
import torch

from difftem.config import config_from_dict, load_config
from difftem.core.errors import ConfigError
from difftem.forward.detector import (
    MTFParams,
    apply_mtf,
    expected_counts,
    make_mtf,
    read_mtf_star,
    shot_noise,
)


def test_mtf_formula_values():
    tmv = MTFParams(0.7, 0.2, 0.1, 10, 40)
    w = torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64)
    expected = [1.0, 0.7 / 1.625 + 0.2 / 3.5 + 0.1, 0.7 / 3.5 + 0.2 / 11 + 0.1]
    np.testing.assert_allclose(tmv(w).numpy(), expected, rtol=1e-12)
    k3 = MTFParams(0.6, 1.24, -0.84, 0.97, 0.97)
    assert float(k3(torch.tensor(0.0))) == pytest.approx(1.0)


def test_measured_curve(shared_data):
    m = read_mtf_star(shared_data / "mtf" / "mtf_k3_standard_300kV_FL2.star")
    assert m.frequency_per_px[0] == 0.0 and m.frequency_per_px[-1] == pytest.approx(0.5, abs=0.02)
    w = torch.tensor([0.0, 0.015873016, 0.0079365080], dtype=torch.float64)
    np.testing.assert_allclose(m(w).numpy(), [0.999999586, 0.994780311, 0.5 * (0.999999586 + 0.994780311)],
                               rtol=1e-8)
    long = read_mtf_star(shared_data / "mtf" / "mtf_k2_300kV.star")
    assert len(long.frequency_per_px) >= 1000


def test_star_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found; give the path of a RELION MTF STAR file"):
        read_mtf_star(tmp_path / "missing.star")
    bad = tmp_path / "bad.star"
    bad.write_text("data_\nloop_\n_rlnFoo\n_rlnBar\n0 1\n0.5 0.2\n")
    with pytest.raises(ConfigError, match="_rlnMtfValue"):
        read_mtf_star(bad)


def test_a_missing_config_curve_names_the_field(tmp_path, monkeypatch):
    """A config read from a file looks for a relative curve in the file's folder and says so; one built from a dict
    (no file) reads it from the working folder and names the field to check."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "sim.yaml").write_text("detector: {mtf: {star: k3.star}}\n")
    with pytest.raises(ConfigError) as exc:
        make_mtf(load_config("cfg/sim.yaml"))
    assert str(exc.value).startswith(f"{tmp_path / 'cfg' / 'k3.star'}: STAR file not found; detector.mtf.star "
                                     f"'k3.star' is read relative to the config file's folder ({tmp_path / 'cfg'}); "
                                     "give the path of a RELION MTF STAR file"), exc.value
    with pytest.raises(ConfigError) as exc:
        make_mtf(config_from_dict({"detector": {"mtf": {"star": "k3.star"}}}))
    assert str(exc.value).startswith(f"k3.star: STAR file not found (looked for {tmp_path / 'k3.star'}); check "
                                     "detector.mtf.star in the config: give the path of a RELION MTF STAR file"), \
        exc.value


def test_apply_mtf_attenuates_a_cosine_by_mtf():
    n = 128
    x = torch.arange(n, dtype=torch.float64)
    for cycles in (8, 32, 60):
        w = cycles / n
        img = 100 + 10 * torch.cos(2 * math.pi * w * x)[None, :].repeat(n, 1)
        mtf = MTFParams(0.7, 0.2, 0.1, 10, 40)
        out = apply_mtf(img, mtf)
        amp = float((out - out.mean()).abs().max())
        assert amp == pytest.approx(10 * float(mtf(torch.tensor(w, dtype=torch.float64))), rel=1e-9)
        assert float(out.mean()) == pytest.approx(100.0)


def test_poisson_moments_with_dqe():
    lam = torch.full((512, 512), 7.5, dtype=torch.float64)
    for dqe in (1.0, 0.5):
        g = torch.Generator().manual_seed(1)
        x = shot_noise(lam, dqe, g)
        n = x.numel()
        assert float(x.mean()) == pytest.approx(7.5, abs=5 * math.sqrt(7.5 / dqe / n))
        assert float(x.var()) == pytest.approx(7.5 / dqe, rel=0.02)
    with pytest.raises(ConfigError):
        shot_noise(lam, 0.0)


def test_expected_counts_linear_in_dose_and_area():
    i = torch.rand(8, 8, dtype=torch.float64)
    assert torch.allclose(expected_counts(i, 40, 1.5), 40 * 2.25 * i)
    assert torch.allclose(expected_counts(i, 80, 1.5), 2 * expected_counts(i, 40, 1.5))
