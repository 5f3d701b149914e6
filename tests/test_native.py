"""The compiled CPU kernels (forward/_native.c through forward/native.py) against the torch paths they stand in for:
Fourier slices of a projector's copies, and Poisson draws against the Poisson distribution itself."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from difftem.forward import native
from difftem.forward.particle_map import FourierProjector, cubic_bspline_sample

pytestmark = pytest.mark.skipif(native._native is None, reason="difftem was installed without its compiled kernels")


def _random_projector(channels: int, n: int = 48, seed: int = 0) -> FourierProjector:
    g = torch.Generator().manual_seed(seed)
    coeffs = torch.randn(channels, n, n, n, generator=g, dtype=torch.float64)
    return FourierProjector(coeffs=coeffs, pixel_size_a=4.0, support_a=40.0, band_limit_per_a=0.11,
                            absorption_ratio=0.2 if channels == 2 else None)


def _copies(b: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(b, 3, 3, generator=g, dtype=torch.float64))
    return q, torch.rand(b, 2, generator=g, dtype=torch.float64) * 80


@pytest.mark.parametrize("channels", [2, 4])
def test_projections_equal_the_torch_path(channels, monkeypatch):
    """Whole projections (spline, phase ramp, transfer, inverse DFT) of 7 copies with and without the kernel: equal to
    float32 rounding, with and without a transfer function."""
    proj = _random_projector(channels)
    rot, off = _copies(7)
    for transfer in (None, lambda k: torch.exp(-30 * k)):
        monkeypatch.setenv("DIFFTEM_NATIVE", "0")
        ref = proj.project(rot, off, 32, transfer)
        monkeypatch.setenv("DIFFTEM_NATIVE", "1")
        out = proj.project(rot, off, 32, transfer)
        assert out.shape == ref.shape == (7, 2, 32, 32)
        assert (out - ref).abs().max() <= 2e-5 * ref.abs().max()
    assert proj._padded is not None and proj.nbytes > proj.coeffs.numel() * 8


def test_spline_matches_float64_reference_and_is_zero_outside():
    """The kernel's spline at frequencies that reach past the volume (a scale that puts most of them outside) against
    the float64 3-D sampler: equal inside to float32 rounding, zero where no coefficient is touched."""
    n = 20
    g = torch.Generator().manual_seed(3)
    coeffs = torch.randn(2, n, n, n, generator=g, dtype=torch.float64)
    k = (torch.rand(300, 2, generator=g, dtype=torch.float64) - 0.5) * 0.4
    rot, off = _copies(3)
    scale, centre = 5.0 * n, n // 2
    out = native.spline_slices(native.padded_channels_last(coeffs), n, k, rot, off * 0, torch.ones(300), scale,
                               centre)
    index = (k @ rot[:, :2, :]) * scale + centre
    ref = cubic_bspline_sample(coeffs, index)  # (2, B, K)
    ref = torch.complex(ref[0], ref[1])
    assert (out[:, 0] - ref).abs().max() < 1e-5 * ref.abs().max()
    outside = ((index < -2.5) | (index > n + 1.5)).any(-1)
    assert outside.float().mean() > 0.3 and bool((out[:, 0][outside] == 0).all())


def test_gradients_and_the_switch_keep_the_torch_path(monkeypatch):
    """A projector whose coefficients need a gradient is sampled by torch (the gradient arrives); so is every one
    when the kernels are switched off or missing."""
    proj = _random_projector(2, n=24)
    rot, off = _copies(2)
    coeffs = proj.coeffs.clone().requires_grad_(True)
    learn = FourierProjector(coeffs=coeffs, pixel_size_a=4.0, support_a=20.0, absorption_ratio=0.2)
    learn.project(rot, off, 16).sum().backward()
    assert coeffs.grad is not None and coeffs.grad.abs().sum() > 0 and learn._padded is None
    monkeypatch.setenv("DIFFTEM_NATIVE", "0")
    assert not native.applies(proj.coeffs)
    monkeypatch.setenv("DIFFTEM_NATIVE", "1")
    assert native.applies(proj.coeffs)
    monkeypatch.setattr(native, "_native", None)
    assert not native.applies(proj.coeffs)
    proj.project(rot, off, 16)
    assert proj._padded is None


def _chi2_p_value(x: np.ndarray, expected_pmf, ks: np.ndarray) -> float:
    """The χ² test's p-value of integer draws ``x`` against expected probabilities ``expected_pmf`` of the counts
    ``ks`` (the tails, and bins expecting fewer than 10 draws, pooled into one)."""
    stats = pytest.importorskip("scipy.stats")
    expected = expected_pmf * x.size
    observed = np.array([(x == k).sum() for k in ks])
    keep = expected >= 10
    obs = np.append(observed[keep], x.size - observed[keep].sum())
    exp = np.append(expected[keep], x.size - expected[keep].sum())
    chi2 = ((obs - exp) ** 2 / exp).sum()
    return float(stats.chi2.sf(chi2, len(obs) - 1))


@pytest.mark.parametrize("tables", [True, False])
@pytest.mark.parametrize("mean", [1e-3, 0.7, 4.0, 9.99, 10.0, 37.5, 2500.0])
def test_poisson_draws_follow_the_poisson_distribution(mean, tables):
    """200,000 draws at means on both sides of the switch from inversion to transformed rejection (10), each pixel
    alone and (from a mean of 1) through the per-call table: a χ² test of their histogram against the Poisson
    probabilities, and their mean and variance."""
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(int(mean * 1000))
    x = native.poisson(torch.full((200_000,), mean), g, tables).numpy().astype(np.int64)
    ks = np.arange(int(stats.poisson.ppf(1e-7, mean)), int(stats.poisson.ppf(1 - 1e-7, mean)) + 2)
    assert _chi2_p_value(x, stats.poisson.pmf(ks, mean), ks) > 1e-3
    assert abs(x.mean() - mean) < 5 * math.sqrt(mean / x.size)
    assert abs(x.var() / mean - 1) < 0.03


@pytest.mark.parametrize("centre", [1.6, 9.8, 140.0])
def test_poisson_tables_draw_each_pixel_from_its_own_mean(centre):
    """A micrograph-like image (300,000 pixels at 997 rates spread ±15% around a centre, off the tables' levels;
    0.5% far below the band and 0.5% far above, drawn alone; a few zeros): its draws follow the mixture of the pixels'
    own Poisson distributions (χ²), and the pixels far below and far above follow theirs."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    levels = (centre * (1 + 0.15 * np.linspace(-1, 1, 997))).astype(np.float32)
    rate = levels[rng.integers(0, levels.size, 300_000)]
    rate[:1500], rate[1500:3000], rate[3000:3100] = centre / 8, centre * 3, 0.0
    rate = rng.permutation(rate)
    x = native.poisson(torch.from_numpy(rate), torch.Generator().manual_seed(4)).numpy().astype(np.int64)
    ks = np.arange(0, int(stats.poisson.ppf(1 - 1e-9, 3 * centre)) + 2)
    unique, weight = np.unique(rate.astype(np.float64), return_counts=True)
    pmf = stats.poisson.pmf(ks[:, None], unique[None, :]) @ weight / rate.size
    assert _chi2_p_value(x, pmf, ks) > 1e-3
    assert (x[rate == 0] == 0).all()
    total = rate.astype(np.float64).sum()
    assert abs(x.sum() / total - 1) < 5 / math.sqrt(total)
    for lam in (centre / 8, centre * 3):
        sel = x[rate == np.float32(lam)]
        assert _chi2_p_value(sel, stats.poisson.pmf(ks, float(np.float32(lam))), ks) > 1e-3


def test_poisson_image_of_varying_means_and_its_edge_cases():
    """An image whose mean varies from pixel to pixel: each pixel's draws (over 400 images) average to its mean. Zero,
    negative and NaN means draw 0; float64 stays float64; the same generator state gives the same image."""
    g = torch.Generator().manual_seed(5)
    rate = torch.linspace(0, 30, 64)[None, :].expand(400, 64).contiguous()
    draws = native.poisson(rate, g)
    assert draws.dtype == torch.float32 and draws.shape == rate.shape
    assert (draws.mean(0) - rate[0]).abs().max() < 5 * math.sqrt(30 / 400)
    edge = native.poisson(torch.tensor([0.0, -3.0, float("nan"), 1e9], dtype=torch.float64), g)
    assert edge.dtype == torch.float64 and edge[:3].tolist() == [0.0, 0.0, 0.0] and abs(edge[3] / 1e9 - 1) < 1e-3
    a = native.poisson(rate, torch.Generator().manual_seed(9))
    b = native.poisson(rate, torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and not torch.equal(a, native.poisson(rate, torch.Generator().manual_seed(10)))


def test_the_detector_draws_through_the_kernel_unless_switched_off(monkeypatch):
    """shot_noise takes the kernel on the CPU (the same generator state, the same image) and torch.poisson when the
    kernels are off; both have the Poisson mean and variance (DQE 0.5: variance λ/DQE)."""
    from difftem.forward.detector import shot_noise

    rate = torch.full((256, 256), 12.0)
    one = shot_noise(rate, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(one, shot_noise(rate, 0.5, torch.Generator().manual_seed(2)))
    monkeypatch.setenv("DIFFTEM_NATIVE", "0")
    other = shot_noise(rate, 0.5, torch.Generator().manual_seed(2))
    assert not torch.equal(one, other)
    for x in (one, other):
        assert abs(float(x.mean()) / 12 - 1) < 0.01 and abs(float(x.var()) / 24 - 1) < 0.03


def test_the_extension_is_built_from_the_source_in_the_package():
    """The installed kernels are the ones forward/_native.c builds (an editable or a regular install)."""
    spec = importlib.util.find_spec("difftem.forward._native")
    assert spec is not None and spec.origin.endswith((".so", ".pyd"))


def test_gridding_equals_the_torch_scatter(monkeypatch):
    """Atoms spread as Gaussians of several widths (chunks of different reach, positions past the grid's edges that
    wrap): the kernel's grid equals torch's index_add one to rounding, and so does a built projector."""
    from difftem.forward import particle_map as pm
    from difftem.forward.potential import IceModel
    from difftem.forward.scattering import get_table
    from difftem.specimen.build import builtin_structure
    from difftem.specimen.structure import read_structure

    g = torch.Generator().manual_seed(4)
    d, n = 30, 3000
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * (d + 12) - 6
    sigma = 0.8 + torch.rand(n, generator=g, dtype=torch.float64) ** 4 * 3
    weight = torch.rand(n, generator=g, dtype=torch.float64)
    grids = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("DIFFTEM_NATIVE", switch)
        grids[switch] = torch.zeros(d**3, dtype=torch.float64)
        pm._spread(grids[switch], pos, sigma, weight, d, max_entries=200_000)  # several chunks and reaches
    assert len({h for _, _, h in pm._spread_chunks(torch.sort(sigma).values, 200_000)}) > 2
    assert (grids["0"] - grids["1"]).abs().max() < 1e-12 * grids["0"].abs().max()
    assert abs(float(grids["1"].sum()) / float(weight.sum()) - 1) < 1e-3  # truncation below 1e-3 of each atom

    atoms = read_structure(builtin_structure("1ubi"), centre="mass")
    ice = IceModel(150.0, 4.8775, 0.7591)
    built = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("DIFFTEM_NATIVE", switch)
        built[switch] = pm.build_fourier_projector(atoms, get_table("kirkland"), pixel_size_a=2.0, ice=ice,
                                                   absorption_ratio=ice.absorption_ratio).coeffs
    assert (built["0"] - built["1"]).abs().max() < 1e-9 * built["0"].abs().max()


def test_run_metadata_says_whether_the_kernels_drew_the_noise(monkeypatch):
    """A seed's noise depends on the sampler, so a run records which one it used; with the kernels switched off the
    same seed draws torch's noise (another image), the noise-free image is the same."""
    import difftem

    cfg = {"seed": 3, "detector": {"shape_px": [64, 64], "pixel_size_a": 2.0}, "sample": {"ice_thickness_nm": 10.0}}
    on = difftem.simulate(cfg)
    monkeypatch.setenv("DIFFTEM_NATIVE", "0")
    off = difftem.simulate(cfg)
    assert on.metadata["compiled_kernels"] is True and off.metadata["compiled_kernels"] is False
    assert torch.allclose(on.noiseless, off.noiseless, rtol=1e-5) and not torch.equal(on.micrograph, off.micrograph)


def test_the_phase_ramp_along_rows_equals_the_direct_one():
    """Along a row of equally spaced frequencies the kernel steps the copies' phase ramps by one complex product;
    the same frequencies in shuffled order (every ramp computed directly) give the same slices."""
    n, box, p = 24, 32, 2.0
    g = torch.Generator().manual_seed(5)
    padded = native.padded_channels_last(torch.randn(2, n, n, n, generator=g, dtype=torch.float64))
    ky, kx = torch.meshgrid(torch.fft.fftfreq(box, d=p, dtype=torch.float64),
                            torch.fft.rfftfreq(box, d=p, dtype=torch.float64), indexing="ij")
    k = torch.stack([kx.reshape(-1), ky.reshape(-1)], 1)
    rot, off = _copies(4)
    off = off * 3 - 100  # far from the box origin: steep ramps, the most rounding a recurrence could gather
    weights = torch.rand(k.shape[0], generator=g)
    rows = native.spline_slices(padded, n, k, rot, off, weights, n * p, n // 2)
    order = torch.randperm(k.shape[0], generator=g)
    shuffled = native.spline_slices(padded, n, k[order], rot, off, weights[order], n * p, n // 2)
    assert (rows[..., order] - shuffled).abs().max() <= 1e-6 * rows.abs().max()


@pytest.mark.parametrize("rdtype", [torch.float32, torch.float64])
def test_axis_factors_equal_the_torch_path(rdtype, monkeypatch):
    """The per-atom structure-factor factors w exp(-Bk²/4) exp(-2πikx): the kernel's walk along the frequencies equals
    torch's direct evaluation (to float32's rounding, or 1e-10 in float64) on DFT axes of even, odd and tiny sizes
    (full and half), on sorted random frequencies (runs of one step broken anywhere), for 1–300 atoms (blocks of 8
    and a partial one), far from the origin (2·10⁴ Å: the phase's cycles reduced in float64), and B up to 2000 Å²
    (magnitudes down to 1e-270 on the walk outwards, none lost to underflow)."""
    from difftem.core.fft import freq_per_a
    from difftem.forward.potential import _axis_factors

    g = torch.Generator().manual_seed(6)
    axes = [freq_per_a(n, 1.3, half=half) for n in (1, 2, 17, 64, 289) for half in (False, True)]
    axes.append(torch.sort(torch.randn(50, generator=g, dtype=torch.float64)).values)
    tol = 2e-6 if rdtype == torch.float32 else 1e-10
    for k in axes:
        for count in (1, 9, 300):
            x = (torch.rand(count, generator=g, dtype=torch.float64) - 0.3) * 2e4
            b = torch.rand(count, generator=g, dtype=torch.float64) ** 3 * 2000
            w = torch.rand(count, generator=g, dtype=torch.float64)
            for weight in (w, None):
                monkeypatch.setenv("DIFFTEM_NATIVE", "0")
                ref = _axis_factors(x, b, weight, k, rdtype)
                monkeypatch.setenv("DIFFTEM_NATIVE", "1")
                got = _axis_factors(x, b, weight, k, rdtype)
                assert got.dtype == ref.dtype and got.shape == ref.shape
                assert ((got - ref).abs() <= tol * (1 + ref.abs())).all(), (k.shape, count)


def test_atom_slices_through_the_kernel_equal_the_torch_path(monkeypatch):
    """A slice's exact structure-factor potential (ubiquitin at 1 Å, windowed multislice exit wave) is the same with
    the compiled factors as with torch's, to float32's rounding, and a gradient still flows (the torch path)."""
    from difftem.core.grid import Grid
    from difftem.forward.beam import interaction_constant, wavelength_a
    from difftem.forward.multislice import multislice
    from difftem.forward.potential import IceModel, SlicedPotential, atoms_to_tensors
    from difftem.forward.scattering import get_table
    from difftem.specimen.build import builtin_structure
    from difftem.specimen.structure import read_structure

    atoms = read_structure(builtin_structure("1ubi"), centre="mass")
    waves = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("DIFFTEM_NATIVE", switch)
        pot = SlicedPotential(*atoms_to_tensors(atoms), Grid((96, 96), 1.0), get_table("kirkland"), 4.0, IceModel(0.0))
        with torch.no_grad():
            waves[switch] = multislice(pot, wavelength_a(300), interaction_constant(300))
    assert (waves["0"] - waves["1"]).abs().max() < 1e-5
    assert (waves["1"] - 1).abs().max() > 0.05  # the atoms are there
    z, pos, b, occupancy = atoms_to_tensors(atoms)
    pos = pos.clone().requires_grad_(True)
    pot = SlicedPotential(z, pos, b, occupancy, Grid((96, 96), 1.0), get_table("kirkland"), 4.0, IceModel(0.0))
    multislice(pot, wavelength_a(300), interaction_constant(300)).abs().square().sum().backward()
    assert pos.grad is not None and pos.grad.abs().max() > 0
