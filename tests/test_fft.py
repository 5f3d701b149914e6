"""The FFT helpers are the only FFT entry points; check them against numpy at every size used."""

import numpy as np
import pytest
import torch

from difftem.core import fft


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [64, 128, 256, 384, 512, 1024, 2048, 4096])
def test_complex_fft_matches_numpy(n, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(n)
        x = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))).astype(np.complex64)
        ref = np.fft.fft2(x.astype(np.complex128))
        got = fft.fft2(torch.from_numpy(x)).numpy()
        assert rel(got, ref) < 1e-5
        back = fft.ifft2(torch.from_numpy(ref.astype(np.complex64))).numpy()
        assert rel(back, np.fft.ifft2(ref)) < 1e-5
        kernel = np.exp(-((np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2) * 40)
                        + 1j * rng.uniform(0, 6, (n, n)))
        filtered = fft.filter2(torch.from_numpy(x), torch.from_numpy((kernel / (n * n)).astype(np.complex64)))
        assert rel(filtered.numpy(), np.fft.ifft2(np.fft.fft2(x.astype(np.complex128)) * kernel)) < 1e-5
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("n", [256, 2048])
def test_real_fft_and_batches(n):
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, n, n)).astype(np.float32)
    spec = fft.rfft2(torch.from_numpy(x))
    assert rel(spec.numpy(), np.fft.rfft2(x.astype(np.float64))) < 1e-5
    assert rel(fft.irfft2(spec, (n, n)).numpy(), x) < 1e-5
    xc = torch.from_numpy(x.astype(np.complex64))
    assert rel(fft.ifft2(fft.fft2(xc)).numpy(), x) < 1e-5


def test_good_fft_size():
    assert fft.good_fft_size(97) == 100
    assert fft.good_fft_size(128) == 128
    assert fft.good_fft_size(1025) == 1080
