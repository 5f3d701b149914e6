"""The layout's rules hold: layered imports without cycles, the CLI alone prints, and one forward model."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import difftem
from difftem.cli import _console, app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def small_config(**optics):
    return {"seed": 3, "beam": {"voltage_kv": 300, "dose_e_per_a2": 40},
            "optics": {"defocus_um": 1.2, **optics},
            "detector": {"shape_px": [64, 64], "pixel_size_a": 1.5,
                         "mtf": {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}},
            "sample": {"ice_thickness_nm": 8, "particles": [{"structure": "builtin:1ubi"}]}}


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed")
def test_import_contracts_hold():
    """pyproject's contracts: layers import downward, applications are independent, no cycles, typer/rich only
    in the CLI. A violation prints the offending import chain."""
    proc = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


def test_library_import_does_not_load_the_cli():
    code = ("import sys, difftem, difftem.simulate.output, difftem.dataset; "
            "print('typer' in sys.modules, 'rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_simulator_and_differentiable_simulator_agree():
    """One forward model: the noise-free detector image of simulate() and of the differentiable simulator at the
    config's own parameters are the same function of the config (different code would drift apart)."""
    cfg = difftem.config.config_from_dict(small_config(astigmatism_um=0.1, astigmatism_angle_deg=20))
    ref = difftem.simulate(cfg)
    out = difftem.DifferentiableSimulator(cfg)()
    torch.testing.assert_close(out.noiseless.detach().float(), ref.noiseless, rtol=2e-4, atol=2e-4 * 40 * 1.5**2)
    torch.testing.assert_close(out.intensity.detach().float(), ref.intensity, rtol=2e-4, atol=2e-4)


def test_progress_reaches_a_log_file(tmp_path):
    """When stderr is not a terminal (a log file, a batch job) progress still prints plain lines."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(small_config()))
    res = runner.invoke(app, ["simulate", str(cfg), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("simulate: ") and "slices after" in ln]
    assert lines, res.output


def test_progress_lines_are_periodic(monkeypatch, capsys):
    monkeypatch.setattr(_console.console, "_force_terminal", False)
    ticks = iter(np.arange(0.0, 100.0, 10.0))
    monkeypatch.setattr(_console.time, "monotonic", lambda: float(next(ticks)))
    with _console.progress("job", "tilts", interval_s=25.0) as update:
        for done in range(1, 6):
            update(done, 5)
    err = capsys.readouterr().err.splitlines()
    # t = 0 start; updates at 10, 20, 30 (≥ 25 s: a line), 40, 50; and the closing line
    assert len(err) == 2 and err[0].startswith("job: 3/5 tilts after 30 s") and err[1].startswith("job: 5/5")
