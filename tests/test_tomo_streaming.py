"""`difftem reconstruct` streams a tilt series: each image is read from the file, corrected (shifts, inversion, .xf,
CTF phase flip) and binned on its own, and only the binned stack is kept. The streamed result equals the
whole-stack computation, and the peak memory of a mid-size run stays below one copy of its stack."""

import json
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from difftem.cli import app
from difftem.io import imod
from difftem.io.files import write_mrc
from difftem.io.mrc_stack import open_mrc_stack
from difftem.io.tlt import read_mrc_checked
from difftem.io.xf import read_xf
from difftem.tomo import reconstruct
from difftem.tomo.ctf import TiltCTF, ctf_correct
from difftem.tomo.reconstruct import bin_stack, bin_tilts
from difftem.tomo.stack import TiltStack
from difftem.tomo.xf import apply_xf

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


def padded_convolution_bin(stack: torch.Tensor, factor: int) -> torch.Tensor:
    """The binning as it was written before streaming: replicate padding, two 1-D convolutions at full size, then
    every factor-th pixel from the origin's phase."""
    h, w = stack.shape[-2:]
    half = factor // 2
    taps = torch.ones(2 * half + 1, dtype=stack.dtype)
    if factor % 2 == 0:
        taps[0] = taps[-1] = 0.5
    taps = taps / factor
    flat = F.pad(stack.reshape(-1, 1, h, w), (half, half, half, half), mode="replicate")
    flat = F.conv2d(F.conv2d(flat, taps.reshape(1, 1, 1, -1)), taps.reshape(1, 1, -1, 1))
    hb, wb = h // factor, w // factor
    y0, x0 = h // 2 - (hb // 2) * factor, w // 2 - (wb // 2) * factor
    out = flat[:, :, y0:y0 + (hb - 1) * factor + 1:factor, x0:x0 + (wb - 1) * factor + 1:factor]
    return out.reshape(*stack.shape[:-2], hb, wb)


@pytest.mark.parametrize("shape", [(3, 17, 23), (2, 64, 64), (4, 101, 98)])
def test_binning_equals_the_padded_convolution(shape):
    stack = 100 * torch.rand(shape, generator=torch.Generator().manual_seed(1))
    for factor in (1, 2, 3, 4, 5, 7):
        old, new = padded_convolution_bin(stack, factor), bin_stack(stack, factor)
        assert new.shape == old.shape
        # the same sums in another order: a few float32 roundings apart (even factors: exact)
        torch.testing.assert_close(new, old, rtol=0, atol=4 * torch.finfo(torch.float32).eps * float(old.abs().max()))
        assert torch.equal(bin_stack(stack[1], factor), new[1])  # one image binned alone: the same numbers


def test_binning_stays_differentiable():
    x = torch.rand(2, 12, 14, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: bin_stack(t, 3), (x,))


def test_images_are_made_one_at_a_time():
    """bin_tilts asks for each image once, in order, and every earlier full-size image is freed by then."""
    made, alive = [], set()

    def make(i):
        assert not alive, f"image {sorted(alive)} still held when image {i} is made"
        made.append(i)
        img = torch.full((60, 66), float(i))
        alive.add(i)
        weakref.finalize(img, alive.discard, i)
        return img

    stack = TiltStack(5, (60, 66), make).map(lambda i, image: 2 * image).map(lambda i, image: image + 1)
    binned = bin_tilts(stack, 3)
    assert made == [0, 1, 2, 3, 4] and binned.shape == (5, 20, 22)
    torch.testing.assert_close(binned[:, 0, 0], 2 * torch.arange(5.0) + 1)


def test_mrc_stack_reads_the_same_images_as_mrcfile(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 9, 11)).astype(np.float32)
    write_mrc(tmp_path / "s.mrc", data, 2.5)
    with mrcfile.new(tmp_path / "i16.mrc") as m:  # another mode, big-endian: converted per image as before
        m.set_data((data * 100).astype(">i2"))
    for name in ("s.mrc", "i16.mrc"):
        stack = open_mrc_stack(tmp_path / name)
        whole, px = read_mrc_checked(tmp_path / name)
        assert stack.shape == whole.shape and stack.pixel_size_a == px and stack._data is None
        for i in range(len(stack)):
            assert np.array_equal(stack.image(i), whole[i]) and stack.image(i).dtype == np.float32
    bad = data.copy()
    bad[2, 3, 4] = np.nan
    write_mrc(tmp_path / "nan.mrc", bad, 2.5)
    with pytest.raises(Exception, match="1 NaN or infinite pixel"):
        open_mrc_stack(tmp_path / "nan.mrc")


def _series(folder: Path, n_tilts=7, shape=(64, 70), px=4.0, axis_deg=10.0, turn_deg=2.0):
    """A noisy stack with an mdoc beside it (angles, per-tilt defocus, tilt axis) and an IMOD .xf (shifts and
    in-plane turns up to ``turn_deg``)."""
    rng = np.random.default_rng(3)
    stack = (1.0 + 0.1 * rng.standard_normal((n_tilts, *shape))).astype(np.float32)
    angles = np.linspace(-60.0, 60.0, n_tilts)
    defocus = np.linspace(30000.0, 42000.0, n_tilts)
    write_mrc(folder / "s.mrc", stack, px)
    imod.write_mdoc(folder / "s.mrc.mdoc", imod.mdoc_frame(
        angles, pixel_size_a=px, image_shape_yx=shape, tilt_axis_deg=axis_deg, exposure_e_per_a2=np.full(n_tilts, 3.0),
        prior_dose_e_per_a2=np.zeros(n_tilts), defocus_a=defocus, voltage_kv=300.0, image_file="s.mrc"))
    turn = np.deg2rad(rng.uniform(-turn_deg, turn_deg, n_tilts))
    mats = np.stack([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]).transpose(2, 0, 1)
    shifts = rng.uniform(-3, 3, (n_tilts, 2))
    (folder / "s.xf").write_text(imod.xf_text(np.concatenate([mats, shifts[:, :, None]], axis=2)))
    return stack, angles, TiltCTF(defocus, defocus, 0.0, 300.0, 2.7, 0.07)


@pytest.mark.parametrize("method", ["wbp", "sirt"])
def test_streamed_cli_equals_the_whole_stack_computation(tmp_path, method):
    """`difftem reconstruct --invert --xf --binning 3` with phase flip from the mdoc, against the same steps run on
    the whole stack in memory (invert, apply_xf, ctf_correct, reconstruct of the tensor)."""
    stack, angles, ctf = _series(tmp_path)
    out = tmp_path / "rec.mrc"
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "s.mrc"), "-o", str(out), "--binning", "3",
                              "--thickness-vox", "8", "--invert", "--xf", str(tmp_path / "s.xf"), "--method", method,
                              "--iterations", "3", "--defocus-tolerance", "50", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["ctf_correction"]["mode"] == "phase_flip" and record["tilt_axis_deg"] == 10.0
    whole = apply_xf(torch.from_numpy(-stack), *read_xf(tmp_path / "s.xf"))  # the file's rounded transforms
    whole, ctf_record = ctf_correct(whole, angles, ctf, 4.0, tilt_axis_deg=10.0, defocus_tolerance_a=50.0)
    assert record["ctf_correction"]["levels_per_tilt"] == ctf_record["levels_per_tilt"]
    assert max(ctf_record["levels_per_tilt"]) > 1  # strips: the high tilts need several defocus levels
    expect = reconstruct(whole, angles, method=method, pixel_size_a=4.0, tilt_axis_deg=10.0, thickness_px=8,
                         binning=3, iterations=3, device="cpu").volume.numpy()
    got = mrcfile.read(out)
    assert got.shape == expect.shape == (8, 21, 23)
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-5 * float(np.abs(expect).max()))


def test_streamed_shifts_from_an_xf_set_equal_the_whole_stack(tmp_path):
    """--metadata s.xf: the per-tilt shifts (Fourier phase ramps) applied image by image."""
    from difftem.tomo.series import from_xf, shift_images

    stack, angles, _ = _series(tmp_path, axis_deg=0.0, turn_deg=0.0)
    (tmp_path / "s.tlt").write_text("\n".join(f"{a:g}" for a in angles) + "\n")
    meta = from_xf(tmp_path / "s.xf")
    out = tmp_path / "rec.mrc"
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "s.mrc"), "-o", str(out), "--binning", "2",
                              "--thickness-vox", "8", "--metadata", str(tmp_path / "s.xf"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    shifted = shift_images(torch.from_numpy(stack), meta.shifts_px)
    expect = reconstruct(shifted, angles, pixel_size_a=4.0, tilt_axis_deg=meta.tilt_axis_deg, thickness_px=8,
                         binning=2, device="cpu").volume.numpy()
    np.testing.assert_allclose(mrcfile.read(out), expect, rtol=0, atol=1e-5 * float(np.abs(expect).max()))


PEAK_SCRIPT = textwrap.dedent("""
    import json, re, sys
    from typer.testing import CliRunner
    from difftem.cli import app

    def status(key):
        return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    def growth(stack, out):
        base = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from the current resident set
        res = CliRunner().invoke(app, ["reconstruct", stack, "-o", out, "--binning", "4", "--thickness-vox", "16",
                                       "--device", "cpu"])
        assert res.exit_code == 0, res.output
        return status("VmHWM") - base

    growth(sys.argv[1], sys.argv[4] + "/w.mrc")  # warm-up on a small series: every import the command makes
    print(json.dumps([growth(sys.argv[2], sys.argv[4] + "/a.mrc"), growth(sys.argv[3], sys.argv[4] + "/b.mrc")]))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_does_not_grow_with_the_number_of_tilts(tmp_path):
    """`difftem reconstruct --binning 4` with phase flip of 4 and of 64 tilts of 512² float32: the peak resident set
    the command adds grows by less than one copy of the 60 more full-size images (60 MiB; measured 10–32 MiB, the
    binned images, the projector's larger matrix and the allocator's slack), and stays below two copies of the
    larger stack. Before streaming it grew by 1,200 MiB here, 20 copies of them (the stack read twice,
    corrected into a copy, and a padded full-size binning that alone took ~16 copies)."""
    n_few, n_many, side = 4, 64, 512
    for name, n in (("w", 2), ("a", n_few), ("b", n_many)):
        (tmp_path / name).mkdir()
        _write_series(tmp_path / name, n, 96 if name == "w" else side)
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(script), *(str(tmp_path / n / "stack.mrc") for n in "wab"),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    few, many = json.loads(done.stdout.strip().splitlines()[-1])
    image_bytes = side * side * 4
    assert many - few < (n_many - n_few) * image_bytes, (few / 2**20, many / 2**20)
    assert many < 2 * n_many * image_bytes, many / 2**20


def _write_series(folder: Path, n_tilts: int, side: int) -> Path:
    rng = np.random.default_rng(0)
    stack = folder / "stack.mrc"
    with mrcfile.new_mmap(stack, shape=(n_tilts, side, side), mrc_mode=2, overwrite=True) as mrc:
        for t in range(n_tilts):
            mrc.data[t] = 1.0 + 0.1 * rng.standard_normal((side, side), dtype=np.float32)
        mrc.set_image_stack()
        mrc.voxel_size = 4.0
    angles = np.linspace(-30.0, 30.0, n_tilts)
    imod.write_mdoc(folder / "stack.mrc.mdoc", imod.mdoc_frame(
        angles, pixel_size_a=4.0, image_shape_yx=(side, side), tilt_axis_deg=0.0,
        exposure_e_per_a2=np.full(n_tilts, 3.0), prior_dose_e_per_a2=np.zeros(n_tilts),
        defocus_a=np.full(n_tilts, 40000.0), voltage_kv=300.0, image_file=stack.name))
    return stack
