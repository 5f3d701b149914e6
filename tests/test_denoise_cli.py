"""`difftem denoise`: outputs, headers, detector sources, modes and one-line errors."""

import json

import mrcfile
import numpy as np
import pytest
import torch
import yaml
from test_denoise import discs, observe
from typer.testing import CliRunner

from difftem.cli import app
from difftem.io.files import write_json, write_mrc

runner = CliRunner()
MTF_FLAG = "0.7,0.2,0.1,10,40"


pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops (conftest.one_thread)


@pytest.fixture
def repeats(tmp_path):
    obs = observe(discs(64, 64) * 20.0, 3, seed=1, gain=2.0).float()
    path = tmp_path / "repeats.mrc"
    write_mrc(path, obs.numpy(), 1.7)
    return path


def test_repeats_write_everything_and_keep_the_pixel_size(repeats, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["denoise", str(repeats), "--out", str(out), "--mtf", MTF_FLAG, "--gain", "2",
                              "--steps", "40", "--baselines", "average,lowpass", "--pairwise"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert names == {"denoised.mrc", "rate.mrc", "baseline_average.mrc", "baseline_lowpass.mrc", "before_after.png",
                     "denoise.json"}
    with mrcfile.open(out / "denoised.mrc") as m:
        assert m.data.shape == (64, 64)
        assert float(m.voxel_size.x) == pytest.approx(1.7, rel=1e-5)
    report = json.loads((out / "denoise.json").read_text())
    assert report["mode"] == "repeats" and report["settings"]["method"] == "poisson"
    assert report["settings"]["gain"] == 2.0 and len(report["loss_history"]) == 40
    assert report["pairwise"]["names"] == ["noisy", "average", "lowpass", "ours"]
    assert report["detector"]["mtf"] == {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10.0, "beta": 40.0}
    with mrcfile.open(out / "rate.mrc") as m:  # electrons before the MTF: the gain is undone
        assert float(m.data.mean()) == pytest.approx(20.0 * float(discs(64, 64).mean()), rel=0.05)


def test_detector_from_config_and_from_fit_mtf_result(repeats, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"beam": {"dose_e_per_a2": 20}, "detector": {
        "pixel_size_a": 1.0, "gain": 2.0, "dqe": 1.0, "mtf": {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10, "beta": 40}}}))
    res = runner.invoke(app, ["denoise", str(repeats), "--out", str(tmp_path / "a"), "--config", str(cfg),
                              "--steps", "20", "--prior-weight", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "a" / "denoise.json").read_text())
    assert report["detector"]["gain"] == 2.0 and report["detector"]["dose_e_per_a2"] == 20
    fit = tmp_path / "mtf_fit.json"
    write_json(fit, {"primary": "nps", "fits": {"nps": {"params": {"a": 0.7, "b": 0.2, "c": 0.1, "alpha": 10,
                                                                    "beta": 40}, "method": "nps"}}})
    res = runner.invoke(app, ["denoise", str(repeats), "--out", str(tmp_path / "b"), "--mtf-fit", str(fit),
                              "--steps", "20", "--prior-weight", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "b" / "denoise.json").read_text())
    assert report["gain_estimated_from_noise"]["gain_per_dqe"] == pytest.approx(2.0, rel=0.1)


def test_tilt_series_uses_aligned_neighbours(tmp_path):
    base = discs(64, 64, seed=3, contrast=0.5, n=10) * 50.0
    from difftem.denoise.align import shift_image

    tilts = torch.stack([observe(shift_image(base, (0.0, 3.0 * k)).clamp_min(0), 1, seed=k)[0] for k in range(3)])
    path = tmp_path / "tilts.mrc"
    write_mrc(path, tilts.float().numpy(), 2.0)
    res = runner.invoke(app, ["denoise", str(path), "--out", str(tmp_path / "o"), "--mode", "tilt-series",
                              "--mtf", MTF_FLAG, "--gain", "1", "--steps", "20"])
    assert res.exit_code == 0, res.output
    with mrcfile.open(tmp_path / "o" / "denoised.mrc") as m:
        assert m.data.shape == (3, 64, 64)
    report = json.loads((tmp_path / "o" / "denoise.json").read_text())
    middle = report["tilts"][1]
    assert [s["tilt"] for s in middle["neighbour_shifts"]] == [0, 2]
    assert middle["settings"]["n_observations"] == 3
    found = {s["tilt"]: s["shift_px"][1] for s in middle["neighbour_shifts"]}
    assert found[0] == pytest.approx(-3.0, abs=0.5) and found[2] == pytest.approx(3.0, abs=0.5)


@pytest.mark.parametrize("args,message", [
    ([], "no detector MTF given; give a config (detector.mtf), a fit-mtf result (mtf_fit.json), the curve "
         "('a,b,c,alpha,beta' or a STAR file), or --no-mtf"),
    (["--mtf", MTF_FLAG, "--dose", "0"], "--dose 0.0 e/Å²: a zero dose"),
    (["--mtf", MTF_FLAG, "--method", "magic"], "--method 'magic'"),
    (["--mtf", MTF_FLAG, "--prior-weight", "lots"], "--prior-weight 'lots'"),
    (["--mtf", MTF_FLAG, "--baselines", "median"], "--baselines: unknown"),
    (["--mtf", MTF_FLAG, "--dqe", "1.5"], "--dqe must be in"),
])
def test_errors_are_one_line(repeats, tmp_path, args, message):
    out = tmp_path / "out"
    res = runner.invoke(app, ["denoise", str(repeats), "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    # one line, nothing before it (rich's transient progress bar left a blank line when not on a terminal)
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, repr(res.output)
    assert not out.exists()


@pytest.mark.parametrize("args,line", [
    (["--dose", "-1"], "--dose -1.0 e/Å²: give the exposure's dose, a finite number > 0"),
    (["--dose", "inf"], "--dose inf e/Å²: give the exposure's dose, a finite number > 0"),
    (["--gain", "inf"], "--gain must be a finite number > 0 (image units per electron), got inf"),
    (["--gain", "1e-300"], "--gain 1e-300: the images in electrons (image × dqe / gain) overflow; give the gain in "
                           "image units per electron"),
    (["--steps", "0"], "--steps 0: give at least 1 optimiser step (default 200; paper 300)"),
    (["--lr", "-1"], "--lr -1.0: give a finite learning rate > 0, or leave it out (scaled to the noise)"),
    (["--lr", "inf"], "--lr inf: give a finite learning rate > 0, or leave it out (scaled to the noise)"),
    (["--baselines", "n2n"], "--baselines: n2n (noise2noise) needs ≥ 2 exposures of one field, got one image; give "
                             "repeated exposures or leave n2n out"),
    (["--topaz", "--topaz-model", "magic"], "--topaz-model 'magic': choose one of unet, unet-small, fcnn, affine, "
                                            "unet-v0.2.1"),
    (["--mtf", "1,2,3"], "--mtf 1,2,3: STAR file not found (looked for {cwd}/1,2,3); give the curve as "
                         "'a,b,c,alpha,beta' (five numbers) or the path of a RELION MTF STAR file (columns "
                         "_rlnResolutionInversePixel, _rlnMtfValue; difftem fit-mtf writes one, mtf_fit.star)"),
])
def test_bad_numbers_and_curves_name_the_flag_and_the_fix(tmp_path, monkeypatch, args, line):
    """Library messages reached the user raw: "steps must be ≥ 1 and lr > 0, got steps=0, lr=None", an infinite
    dose or gain accepted (NaN images written), a negative dose called "a zero dose", n2n refused only after the whole
    denoising, "1,2,3: STAR file not found; check the path" for a curve of too few numbers. Each is now one line naming
    the flag and the fix, before anything is written."""
    monkeypatch.chdir(tmp_path)
    write_mrc(tmp_path / "one.mrc", observe(discs(32, 32) * 20.0, 1, seed=2).float().numpy()[0], 1.0)
    flags = [] if "--mtf" in args else ["--no-mtf"]
    res = runner.invoke(app, ["denoise", "one.mrc", "--out", "o", "--steps", "5", *flags, *args])
    assert res.exit_code == 2 and not (tmp_path / "o").exists(), res.output
    # one line, nothing before it (rich's transient progress bar left a blank line when not on a terminal)
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, repr(res.output)
    assert " ".join(res.output.split()) == "error: " + line.format(cwd=tmp_path), res.output


def test_a_diverging_optimisation_is_reported(tmp_path):
    """A learning rate so large that the objective became NaN at the second step wrote the starting image as the
    result without a word (denoise.json's loss null): now a warning says so and names --lr."""
    write_mrc(tmp_path / "one.mrc", observe(discs(32, 32) * 20.0, 1, seed=2).float().numpy()[0], 1.0)
    res = runner.invoke(app, ["denoise", str(tmp_path / "one.mrc"), "--out", str(tmp_path / "o"), "--no-mtf",
                              "--steps", "5", "--lr", "1000"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert ("warning: the objective became NaN or infinite at step 2, so the result is the lowest-loss iterate of the "
            "steps before it; a smaller --lr (or none: scaled to the noise) avoids it") in text, res.output
    with mrcfile.open(tmp_path / "o" / "denoised.mrc") as m:
        assert np.isfinite(m.data).all()
    assert json.loads((tmp_path / "o" / "denoise.json").read_text())["warnings"]


def test_a_prior_weight_that_overflows_is_named_in_the_warning(tmp_path):
    """--prior-weight 1e308 (finite, so accepted) made the objective infinite, and the warning blamed --lr alone."""
    write_mrc(tmp_path / "one.mrc", observe(discs(32, 32) * 20.0, 1, seed=2).float().numpy()[0], 1.0)
    res = runner.invoke(app, ["denoise", str(tmp_path / "one.mrc"), "--out", str(tmp_path / "o"), "--no-mtf",
                              "--steps", "5", "--prior-weight", "1e308"])
    assert res.exit_code == 0, res.output
    assert ("warning: the objective is NaN or infinite at the starting estimate, which is the result; a smaller --lr "
            "(or none: scaled to the noise), or a smaller --prior-weight (or auto) avoids it"
            ) in " ".join(res.output.split()), res.output
    with mrcfile.open(tmp_path / "o" / "denoised.mrc") as m:
        assert np.isfinite(m.data).all()


def test_inputs_of_different_shapes(tmp_path):
    a, b = tmp_path / "a.mrc", tmp_path / "b.mrc"
    write_mrc(a, np.full((32, 32), 10, np.float32), 1.0)
    write_mrc(b, np.full((32, 30), 10, np.float32), 1.0)
    res = runner.invoke(app, ["denoise", str(a), str(b), "--out", str(tmp_path / "o"), "--mtf", MTF_FLAG])
    assert res.exit_code == 2 and "same field" in res.output


def test_nan_and_empty_images(tmp_path):
    bad = np.full((2, 32, 32), 10, np.float32)
    bad[0, 1, 1] = np.nan
    write_mrc(tmp_path / "nan.mrc", bad, 1.0)
    res = runner.invoke(app, ["denoise", str(tmp_path / "nan.mrc"), "--out", str(tmp_path / "o"), "--mtf", MTF_FLAG])
    assert res.exit_code == 2 and "NaN" in res.output
    write_mrc(tmp_path / "zero.mrc", np.zeros((2, 32, 32), np.float32), 1.0)
    res = runner.invoke(app, ["denoise", str(tmp_path / "zero.mrc"), "--out", str(tmp_path / "o"), "--mtf", MTF_FLAG,
                              "--gain", "1"])
    assert res.exit_code == 2 and "no dose" in res.output


def test_unaligned_repeats_print_the_measured_shift(tmp_path):
    from difftem.denoise.align import shift_image

    rate = discs(96, 96, seed=5, contrast=0.5, n=12) * 200.0
    obs = torch.stack([observe(rate, 1, 1)[0], observe(shift_image(rate, (0.0, 6.0)).clamp_min(0), 1, 2)[0]])
    write_mrc(tmp_path / "u.mrc", obs.float().numpy(), 1.0)
    res = runner.invoke(app, ["denoise", str(tmp_path / "u.mrc"), "--out", str(tmp_path / "o"), "--mtf", MTF_FLAG,
                              "--gain", "1", "--steps", "10", "--prior", "none"])
    assert res.exit_code == 0, res.output
    assert "not aligned" in res.output and "6.0" in res.output
    res = runner.invoke(app, ["denoise", str(tmp_path / "u.mrc"), "--out", str(tmp_path / "p"), "--mtf", MTF_FLAG,
                              "--gain", "1", "--steps", "10", "--prior", "none", "--align"])
    assert res.exit_code == 0 and "not aligned" not in res.output
    report = json.loads((tmp_path / "p" / "denoise.json").read_text())
    assert report["alignment_shifts_px"][1][1] == pytest.approx(6.0, abs=0.3)


def test_topaz_flag(repeats, tmp_path, monkeypatch):
    from difftem.denoise import topaz_model

    if topaz_model.topaz_available():
        res = runner.invoke(app, ["denoise", str(repeats), "--out", str(tmp_path / "t"), "--mtf", MTF_FLAG,
                                  "--gain", "2", "--steps", "10", "--topaz", "--topaz-model", "affine"])
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / "t" / "denoise.json").read_text())
        assert report["settings"]["n_extra_observations"] == 3
        assert (tmp_path / "t" / "baseline_topaz.mrc").exists()
    monkeypatch.setattr(topaz_model.importlib.util, "find_spec", lambda name, *a: None)
    topaz_model._load_cpu.cache_clear()
    try:
        res = runner.invoke(app, ["denoise", str(repeats), "--out", str(tmp_path / "u"), "--mtf", MTF_FLAG, "--topaz"])
        assert res.exit_code == 2 and "topaz-em==0.3.20" in res.output
        assert not (tmp_path / "u").exists()
    finally:
        topaz_model._load_cpu.cache_clear()


@pytest.mark.parametrize("text", ["", "# detector: {gain: 2}\n\n"])
def test_an_empty_config_says_what_denoise_reads_from_it(repeats, tmp_path, text):
    """An empty config (or one of only comments) got simulate's fix (a sample section with particles): now what
    denoise reads from a config, and the flags that give the MTF without one."""
    cfg = tmp_path / "empty.yaml"
    cfg.write_text(text)
    res = runner.invoke(app, ["denoise", str(repeats), "--out", str(tmp_path / "o"), "--config", str(cfg)])
    assert res.exit_code == 2 and not (tmp_path / "o").exists(), res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert " ".join(res.output.split()) == (
        f"error: --config {cfg}: the config file is empty (or only comments); denoise reads a simulation config's "
        "detector.mtf (the formula's a, b, c, alpha, beta, or a RELION MTF STAR file), detector.dqe, detector.gain "
        "and beam.dose_e_per_a2: give them (the README's configuration example shows both sections), or give the "
        "MTF without a config (--mtf 'a,b,c,alpha,beta' or a STAR file; --mtf-fit: a fit-mtf result)")


def test_config_without_mtf_names_the_flags(repeats, tmp_path):
    """A config whose detector has no MTF: the error names the command's flags for the other ways to give one, and
    leaves the config's own field names (detector.mtf) as they are."""
    cfg = tmp_path / "no_mtf.yaml"
    cfg.write_text("detector: {mtf: null}\n")
    res = runner.invoke(app, ["denoise", str(repeats), "--out", str(tmp_path / "o"), "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert f"--config {cfg}: the config has no detector MTF (detector.mtf is null); set detector.mtf in it" in text
    assert "(--mtf: 'a,b,c,alpha,beta' or a STAR file; --mtf-fit: a fit-mtf result), or --no-mtf" in text


def test_baselines_in_tilt_series_mode_are_refused_not_skipped(tmp_path):
    """Baselines are computed for one image or repeats; in tilt-series mode they were skipped without a word. Now one
    line naming --baselines and the fix, before any work."""
    stack = tmp_path / "tilts.mrc"
    write_mrc(stack, observe(discs(32, 32) * 20.0, 3, seed=4).float().numpy(), 1.0)
    res = runner.invoke(app, ["denoise", str(stack), "--out", str(tmp_path / "o"), "--mode", "tilt-series",
                              "--no-mtf", "--steps", "5", "--baselines", "lowpass"])
    assert res.exit_code == 2 and not (tmp_path / "o").exists(), res.output
    assert res.output.startswith("error: --baselines lowpass: baselines are computed for one image or repeated "
                                 "exposures, not per tilt of a series") and res.output.count("\n") == 1, res.output
