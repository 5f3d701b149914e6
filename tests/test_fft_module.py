"""core/fft.py is the only module that touches torch.fft; its frequency grids and transforms match numpy."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import difftem
from difftem.core import fft

SRC = Path(difftem.__file__).resolve().parent
FFT_MODULE = SRC / "core" / "fft.py"
SIZES = [64, 255, 2048]
DTYPES = [torch.float32, torch.float64]
PIXEL_A = 0.7


def _torch_fft_uses(text: str) -> list[str]:
    """Every way ``text`` refers to torch.fft: the dotted name anywhere, ``from torch import fft`` (also in
    a parenthesised or aliased list) and ``import torch.fft``."""
    found = [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
             for m in re.finditer(r"torch\s*\.\s*fft\b", text)]
    try:
        tree = ast.parse(text)
    except SyntaxError:  # the text scan above still applies
        return found
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "fft" for a in node.names):
            found.append(f"line {node.lineno}: from torch import fft")
        elif isinstance(node, ast.Import) and any(a.name.startswith("torch.fft") for a in node.names):
            found.append(f"line {node.lineno}: import torch.fft")
    return found


@pytest.mark.parametrize("snippet", ["x = torch.fft.fft2(y)", "import torch.fft", "import torch.fft as tf",
                                     "from torch.fft import rfft", "from torch import fft",
                                     "from torch import nn, fft as F", "from torch import (\n    nn,\n    fft,\n)",
                                     "f = torch . fft .rfftfreq(4)"])
def test_scan_catches_every_form(snippet):
    assert _torch_fft_uses(snippet)


def test_scan_ignores_the_helpers():
    assert not _torch_fft_uses("from ..core.fft import fft2\nfrom ..core import fft as dfft\nx = dfft.rfft(y)\n")


def test_only_core_fft_calls_torch_fft():
    files = sorted(SRC.rglob("*.py"))
    assert FFT_MODULE in files and len(files) > 20
    offenders = {str(p.relative_to(SRC)): uses for p in files if p != FFT_MODULE
                 for uses in [_torch_fft_uses(p.read_text(encoding="utf-8"))] if uses}
    assert not offenders, f"torch.fft outside core/fft.py (use the difftem.core.fft helpers): {offenders}"


def _check(got: torch.Tensor, ref: np.ndarray, dtype: torch.dtype):
    """float64: bitwise equal to numpy; float32: within 2 ulp of numpy's float64 values."""
    assert got.dtype == dtype
    assert tuple(got.shape) == ref.shape
    if dtype == torch.float64:
        np.testing.assert_array_equal(got.numpy(), ref)
    else:
        np.testing.assert_allclose(got.numpy(), ref, rtol=2 * np.finfo(np.float32).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("half", [False, True])
def test_1d_frequencies(n, dtype, half):
    ref = np.fft.rfftfreq if half else np.fft.fftfreq
    _check(fft.freq_per_px(n, half=half, dtype=dtype), ref(n), dtype)
    _check(fft.freq_per_a(n, PIXEL_A, half=half, dtype=dtype), ref(n, d=PIXEL_A), dtype)
    index = fft.freq_index(n, half=half, dtype=dtype)
    assert index.dtype == dtype
    np.testing.assert_array_equal(index.numpy(), np.rint(ref(n) * n))  # exact integers


def test_1d_defaults_and_device():
    assert fft.freq_per_px(8).dtype == torch.float64
    assert fft.freq_per_a(8, 1.0).dtype == torch.float64
    assert fft.freq_index(7).tolist() == [0, 1, 2, 3, -3, -2, -1]
    assert fft.freq_index(8).tolist() == [0, 1, 2, 3, -4, -3, -2, -1]
    assert fft.freq_index(8, half=True).tolist() == [0, 1, 2, 3, 4]
    assert fft.freq_index(5, dtype=torch.int64).dtype == torch.int64
    assert fft.freq_per_px(6, device="cpu").device.type == "cpu"
    if torch.cuda.is_available():
        assert torch.equal(fft.freq_per_a(255, PIXEL_A, device="cuda").cpu(), fft.freq_per_a(255, PIXEL_A))


def _np_grid(shape, half, d=1.0):
    axes = [(np.fft.rfftfreq if half and i == len(shape) - 1 else np.fft.fftfreq)(n, d=d) for i, n in enumerate(shape)]
    return np.meshgrid(*axes, indexing="ij")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("half", [False, True])
def test_2d_grids(n, dtype, half):
    shape = (n, n + 1)  # unequal sides catch swapped axes
    ref_y, ref_x = _np_grid(shape, half)
    fy, fx = fft.freq_grid_per_px(shape, half=half, dtype=dtype)
    assert fy.shape == (n, 1) and fx.shape == (1, ref_x.shape[1])
    _check(fy.expand(ref_y.shape), ref_y, dtype)
    _check(fx.expand(ref_x.shape), ref_x, dtype)
    ky, kx = fft.freq_grid_per_a(shape, PIXEL_A, half=half, dtype=dtype)
    ay, ax = _np_grid(shape, half, PIXEL_A)
    _check(ky.expand(ay.shape), ay, dtype)
    _check(kx.expand(ax.shape), ax, dtype)
    oy, ox = fft.fftfreq_2d(shape, PIXEL_A, half=half, dtype=dtype)  # the older 1/Å helper, same values
    assert torch.equal(oy, ky) and torch.equal(ox, kx)
    ref_r = np.sqrt(ref_y.astype(np.float64) ** 2 + ref_x**2)
    radial = fft.radial_freq_per_px(shape, half=half, dtype=dtype)
    np.testing.assert_allclose(radial.numpy(), ref_r, rtol=4 * np.finfo(radial.numpy().dtype).eps, atol=0)
    k2 = fft.k2_per_a2(shape, PIXEL_A, half=half, dtype=dtype)
    np.testing.assert_allclose(k2.numpy(), ay**2 + ax**2, rtol=4 * np.finfo(k2.numpy().dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 18, 15), (64, 64, 64), (33, 64, 255)])
@pytest.mark.parametrize("half", [False, True])
def test_3d_grids(shape, dtype, half):
    ref = _np_grid(shape, half)
    grid = fft.freq_grid_per_px(shape, half=half, dtype=dtype)
    for axis, (g, r) in enumerate(zip(grid, ref, strict=True)):
        assert g.ndim == 3 and all(g.shape[j] == 1 for j in range(3) if j != axis)
        _check(g.expand(r.shape), r, dtype)
    ref_a = _np_grid(shape, half, PIXEL_A)
    for g, r in zip(fft.freq_grid_per_a(shape, PIXEL_A, half=half, dtype=dtype), ref_a, strict=True):
        _check(g.expand(r.shape), r, dtype)
    eps = 4 * np.finfo(np.float32 if dtype == torch.float32 else np.float64).eps
    radial = fft.radial_freq_per_px(shape, half=half, dtype=dtype)
    np.testing.assert_allclose(radial.numpy(), np.sqrt(sum(r**2 for r in ref)), rtol=eps, atol=0)
    k2 = fft.k2_per_a2(shape, PIXEL_A, half=half, dtype=dtype)
    np.testing.assert_allclose(k2.numpy(), sum(r**2 for r in ref_a), rtol=eps, atol=0)


def test_grids_follow_device_and_dtype():
    fy, fx = fft.freq_grid_per_px((8, 6), half=True, device="cpu", dtype=torch.float32)
    assert fy.device.type == fx.device.type == "cpu" and fy.dtype == fx.dtype == torch.float32
    assert fft.radial_freq_per_px((4, 5, 6)).dtype == torch.float64
    assert fft.k2_per_a2((4, 5, 6), 1.0, half=True).shape == (4, 5, 4)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_rfft_irfft_1d(n, dtype, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = np.random.default_rng(n).standard_normal((3, 5, n))
        spec = fft.rfft(torch.from_numpy(x).to(dtype))
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert spec.shape == (3, 5, n // 2 + 1)
        assert rel(spec.numpy(), np.fft.rfft(x)) < tol
        assert rel(fft.irfft(spec, n).numpy(), x) < tol
        assert rel(fft.irfft(torch.from_numpy(np.fft.rfft(x)), n).numpy(), np.fft.irfft(np.fft.rfft(x), n)) < 1e-12
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float64])
@pytest.mark.parametrize("shape", [(16, 18, 15), (64, 64, 64)])
def test_fft3_ifft3(shape, dtype, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(1)
        x = rng.standard_normal((2, *shape))
        if dtype.is_complex:
            x = x + 1j * rng.standard_normal((2, *shape))
        tol = 1e-5 if dtype == torch.complex64 else 1e-12
        spec = fft.fft3(torch.from_numpy(x).to(dtype))
        assert rel(spec.numpy(), np.fft.fftn(x, axes=(-3, -2, -1))) < tol
        assert rel(fft.ifft3(spec).numpy(), x) < tol
        assert rel(fft.ifft3(torch.from_numpy(x).to(dtype)).numpy(), np.fft.ifftn(x, axes=(-3, -2, -1))) < tol
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("shape", [(4, 5, 6), (7, 8, 9)])
def test_fftshift(shape):
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(fft.fftshift(t).numpy(), np.fft.fftshift(x))
    np.testing.assert_array_equal(fft.fftshift(t, dim=(-2, -1)).numpy(), np.fft.fftshift(x, axes=(-2, -1)))
    np.testing.assert_array_equal(fft.fftshift(t, dim=0).numpy(), np.fft.fftshift(x, axes=0))
    # the zero frequency lands at index n//2
    assert float(fft.fftshift(fft.freq_per_px(shape[0]))[shape[0] // 2]) == 0.0
