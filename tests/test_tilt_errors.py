"""Tilt-series acquisition errors: applied while simulating, written as IMOD .xf truth; reconstructing without
the .xf degrades the FSC, aligning with it restores it."""

import numpy as np
import pytest
import torch

from difftem.config import config_from_dict
from difftem.forward.tilt_errors import TiltErrorSet, transform_image
from difftem.io.files import read_mrc
from difftem.io.xf import read_xf, write_xf
from difftem.simulate.output import run_and_write
from difftem.tomo.reconstruct import reconstruct
from difftem.tomo.scores import fsc
from difftem.tomo.xf import apply_xf


def test_xf_round_trip_and_inverse(tmp_path):
    e = TiltErrorSet(np.array([[3.0, -2.0]]), np.array([4.0]), np.array([1.03]), np.array([0.0]))
    a, d = e.xf(0)
    write_xf(tmp_path / "t.xf", a[None], d[None])
    a2, d2 = read_xf(tmp_path / "t.xf")
    np.testing.assert_allclose(a2[0], a, atol=1e-7)
    np.testing.assert_allclose(d2[0], d, atol=1e-3)
    # a smooth blob moved by the error, then by the .xf: back where it was
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    img = torch.exp(-((x - 60) ** 2 + (y - 40) ** 2) / (2 * 4.0**2)).double()
    moved = e.apply(img, 0)
    back = transform_image(moved, a2[0], d2[0])
    assert float((back - img).abs().max()) < 0.02
    # the blob's centre moved to E(p) = m R (p − c) + c + s
    c = np.array([48.0, 48.0])
    q = 1.03 * np.array([[np.cos(np.radians(4)), -np.sin(np.radians(4))],
                         [np.sin(np.radians(4)), np.cos(np.radians(4))]]) @ (np.array([60.0, 40.0]) - c) + c + [3, -2]
    w = moved.clamp(min=0)
    found = np.array([float((w * x).sum() / w.sum()), float((w * y).sum() / w.sum())])
    np.testing.assert_allclose(found, q, atol=0.05)


def _series(errors):
    return config_from_dict({
        "seed": 2, "beam": {"dose_e_per_a2": 60}, "optics": {"defocus_um": 2.0},
        "detector": {"shape_px": [96, 96], "pixel_size_a": 2.0, "noise": "none"},
        "sample": {"ice_thickness_nm": 10, "particles": [{"structure": "builtin:1ubi", "random": {"count": 8}}]},
        "simulation": {"slice_thickness_a": 4.0},
        "tilt_series": {"scheme": "uniform", "min_deg": -45, "max_deg": 45, "step_deg": 5, "damage": "none",
                        "errors": errors}})


@pytest.mark.slow
def test_reconstruction_with_the_written_xf_restores_the_fsc(tmp_path):
    errors = {"shift_sigma_a": 6.0, "rotation_sigma_deg": 1.5, "magnification_sigma": 0.01, "seed": 5}
    run_and_write(_series(None), tmp_path / "ideal")
    run = run_and_write(_series(errors), tmp_path / "err")
    assert {"tilt_errors.xf", "tilt_series_true.tlt"} <= set(run["outputs"])
    angles = np.loadtxt(tmp_path / "err" / "tilt_series.tlt")

    def rec(stack):
        return reconstruct(-torch.as_tensor(stack), angles, pixel_size_a=2.0, thickness_px=24).volume

    ideal = rec(read_mrc(tmp_path / "ideal" / "tilt_series.mrc")[0])
    raw = read_mrc(tmp_path / "err" / "tilt_series.mrc")[0]
    a, d = read_xf(tmp_path / "err" / "tilt_errors.xf")
    plain = rec(raw)
    aligned = rec(apply_xf(torch.as_tensor(raw), a, d).numpy())
    f_plain = fsc(plain, ideal, 2.0)
    f_aligned = fsc(aligned, ideal, 2.0)
    band = (f_plain.frequency_per_a > 0.02) & (f_plain.frequency_per_a < 0.12)
    lo, hi = float(f_plain.curve[band].mean()), float(f_aligned.curve[band].mean())
    print(f"mean FSC 1/50–1/8 Å⁻¹ against the error-free reconstruction: without .xf {lo:.3f}, with .xf {hi:.3f}")
    assert hi > 0.9 and lo < hi - 0.2


def test_reconstruct_cli_applies_the_xf(tmp_path):
    """`difftem reconstruct --xf` aligns the stack first: a stack of shifted copies plus the .xf that undoes the
    shifts reconstructs like the unshifted stack."""
    from typer.testing import CliRunner

    from difftem.cli import app
    from difftem.io.files import write_mrc
    from difftem.io.tlt import write_tlt

    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    img = torch.exp(-((x - 30) ** 2 + (y - 36) ** 2) / (2 * 3.0**2)).double()
    angles = [-30.0, 0.0, 30.0]
    e = TiltErrorSet(np.array([[2.0, -1.0], [0.0, 0.0], [-3.0, 2.5]]), np.zeros(3), np.ones(3), np.zeros(3))
    stack = torch.stack([e.apply(img, i) for i in range(3)]).float().numpy()
    write_mrc(tmp_path / "s.mrc", stack, 2.0)
    write_mrc(tmp_path / "ref.mrc", img.expand(3, -1, -1).float().numpy(), 2.0)
    write_tlt(tmp_path / "s.tlt", angles)
    write_tlt(tmp_path / "ref.tlt", angles)
    # named apart from the stack: an s.xf beside s.mrc would be read as its IMOD alignment (and used unasked)
    write_xf(tmp_path / "s_errors.xf", *zip(*(e.xf(i) for i in range(3)), strict=True))
    runner = CliRunner()
    for args in (["s.mrc", "--xf", str(tmp_path / "s_errors.xf"), "--out", "fixed.mrc"],
                 ["s.mrc", "--out", "plain.mrc"], ["ref.mrc", "--out", "ref_vol.mrc"]):
        res = runner.invoke(app, ["reconstruct", str(tmp_path / args[0]), *args[1:-1],
                                  str(tmp_path / args[-1]), "--thickness-vox", "8"])
        assert res.exit_code == 0, res.output
    vols = {k: torch.as_tensor(read_mrc(tmp_path / f"{k}.mrc")[0]).double() for k in ("fixed", "plain", "ref_vol")}
    err_fixed = float((vols["fixed"] - vols["ref_vol"]).norm() / vols["ref_vol"].norm())
    err_plain = float((vols["plain"] - vols["ref_vol"]).norm() / vols["ref_vol"].norm())
    assert err_fixed < 0.05 and err_plain > 4 * err_fixed
