"""FSC and NCC: an independent full-spectrum FSC, analytic signal-to-noise values, resolutions, errors."""

import numpy as np
import pytest
import torch

from difftem.tomo import TomoError, fsc, ncc, plot_fsc


def numpy_fsc(a, b, voxel_a):
    """Reference: full complex spectrum (numpy), shells of 1/(N_max·v) by rounding, no Hermitian shortcut."""
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    k = np.meshgrid(*(np.fft.fftfreq(n) for n in a.shape), indexing="ij")
    n_max = max(a.shape)
    shell = np.round(np.sqrt(sum(x**2 for x in k)) * n_max).astype(int)
    n_shells = n_max // 2 + 1
    inside = shell < n_shells
    s = shell[inside]
    cross = np.bincount(s, (fa * fb.conj()).real[inside], n_shells)
    pa = np.bincount(s, (abs(fa) ** 2)[inside], n_shells)
    pb = np.bincount(s, (abs(fb) ** 2)[inside], n_shells)
    return np.arange(n_shells) / (n_max * voxel_a), cross / np.sqrt(pa * pb), np.bincount(s, minlength=n_shells)


@pytest.mark.parametrize("shape", [(16, 20, 24), (17, 12, 15), (8, 32, 32)])
def test_fsc_matches_full_spectrum_reference(shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape)
    b = 0.7 * a + rng.standard_normal(shape)
    res = fsc(torch.tensor(a), torch.tensor(b), 2.5)
    freq, curve, count = numpy_fsc(a, b, 2.5)
    np.testing.assert_allclose(res.frequency_per_a, freq)
    np.testing.assert_allclose(res.curve, curve, atol=1e-10)
    np.testing.assert_array_equal(res.n_voxels, count)


def test_fsc_of_signal_plus_independent_noise_is_snr_over_one_plus_snr():
    gen = torch.Generator().manual_seed(1)
    signal = torch.randn(48, 48, 48, generator=gen, dtype=torch.float64)
    for snr in (1.0, 0.25):
        a = signal + torch.randn(signal.shape, generator=gen, dtype=torch.float64) / snr**0.5
        b = signal + torch.randn(signal.shape, generator=gen, dtype=torch.float64) / snr**0.5
        res = fsc(a, b, 1.0)
        expected = snr / (1 + snr)
        shells = res.n_voxels[4:] > 500  # shells with enough voxels for a tight estimate
        assert np.abs(res.curve[4:][shells] - expected).max() < 5 / np.sqrt(res.n_voxels[4:][shells]).min() + 0.02
    same = fsc(signal, signal, 1.0)
    np.testing.assert_allclose(same.curve, 1.0, atol=1e-12)
    assert same.resolution_0143_a is None and same.resolution_05_a is None  # never crosses: better than Nyquist


def test_fsc_resolution_of_a_band_limited_pair():
    # identical content below 1/(8 Å), independent noise only: the curve drops at 8 Å
    gen = torch.Generator().manual_seed(2)
    n, voxel_a, cut_a = 64, 2.0, 8.0
    k = torch.sqrt(sum(g**2 for g in torch.meshgrid(*(torch.fft.fftfreq(n, d=voxel_a, dtype=torch.float64),) * 3,
                                                      indexing="ij")))
    low = (k < 1 / cut_a).to(torch.float64)

    def band(x, mask):
        return torch.fft.ifftn(torch.fft.fftn(x) * mask).real

    common = band(torch.randn(n, n, n, generator=gen, dtype=torch.float64), low)
    a = common + band(torch.randn(n, n, n, generator=gen, dtype=torch.float64), 1 - low)
    b = common + band(torch.randn(n, n, n, generator=gen, dtype=torch.float64), 1 - low)
    res = fsc(a, b, voxel_a)
    shell_a = 1 / (1 / cut_a - 1 / (n * voxel_a))  # one shell either side of the edge
    assert 1 / (1 / cut_a + 1 / (n * voxel_a)) <= res.resolution_0143_a <= shell_a
    assert 1 / (1 / cut_a + 1 / (n * voxel_a)) <= res.resolution_05_a <= shell_a
    assert res.curve[1] > 0.99


def test_ncc_is_pearson_and_invariant():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 6, 7))
    b = a + 0.5 * rng.standard_normal(a.shape)
    assert float(ncc(a, b)) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], rel=1e-12)
    assert float(ncc(a, 3 * b + 7)) == pytest.approx(float(ncc(a, b)), rel=1e-12)
    assert float(ncc(a, -b)) == pytest.approx(-float(ncc(a, b)), rel=1e-12)
    mask = np.zeros(a.shape, bool)
    mask[:, :3] = True
    assert float(ncc(a, b, mask)) == pytest.approx(np.corrcoef(a[mask], b[mask])[0, 1], rel=1e-12)
    t = torch.tensor(a, requires_grad=True)
    ncc(t, torch.tensor(b)).backward()
    assert torch.isfinite(t.grad).all()


def test_score_errors():
    with pytest.raises(TomoError, match="differ"):
        fsc(torch.zeros(8, 8, 8), torch.zeros(8, 8, 9), 1.0)
    with pytest.raises(TomoError, match="3-D"):
        fsc(torch.zeros(8, 8), torch.zeros(8, 8), 1.0)
    with pytest.raises(TomoError, match="voxel size"):
        fsc(torch.zeros(8, 8, 8), torch.zeros(8, 8, 8), 0.0)
    with pytest.raises(TomoError, match="differ"):
        ncc(torch.zeros(3, 4), torch.zeros(4, 3))


def test_plot_fsc_writes_png(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((16, 16, 16))
    res = fsc(a, a + rng.standard_normal(a.shape), 1.5)
    path = plot_fsc(tmp_path / "fsc.png", {"noisy": res, "self": fsc(a, a, 1.5)}, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
