"""Movies: frames of one exposure (dose split, per-frame damage, drift and local motion) against the single
exposure's statistics, the ground truth written beside them, and frame alignment recovering the drift."""

import math
import os

import numpy as np
import pytest
import torch

import difftem
from difftem.config import config_from_dict
from difftem.core.fft import rfft2
from difftem.denoise.motion import align_frames, aligned_sum
from difftem.forward.camera import radial_bands
from difftem.forward.movie import drift_trajectory_a, frame_dose_filters, warp
from difftem.forward.tilt import exposure_filter
from difftem.learn.mtf_fit import noise_power_spectrum
from difftem.simulate.output import run_and_write


def _config(movie: dict, **extra) -> difftem.SimulationConfig:
    d = {"seed": 3, "beam": {"dose_e_per_a2": 40},
         "optics": {"defocus_um": 2.0},
         "detector": {"shape_px": [128, 128], "pixel_size_a": 1.0, "dqe": 0.8,
                      "mtf": {"a": 0.6, "b": 1.24, "c": -0.84, "alpha": 0.97, "beta": 0.97}},
         "sample": {"ice_thickness_nm": 20, "particles": [{"structure": "builtin:1ubi", "random": {"count": 6}}]},
         "movie": movie}
    for k, v in extra.items():
        d[k] = {**d.get(k, {}), **v}
    return config_from_dict(d)


def _bands_nps(images: torch.Tensor, edges) -> np.ndarray:
    crops = images.reshape(-1, *images.shape[-2:])
    return radial_bands(noise_power_spectrum(crops, detrend="mean"), tuple(crops.shape[-2:]), edges)


def test_drift_trajectory_is_relative_fast_then_linear():
    s = drift_trajectory_a(40, 12.0, 3.0, 0.5, 0.0, math.pi / 2)
    assert np.all(s[0] == 0)
    t = np.arange(40) + 0.5
    np.testing.assert_allclose(s[:, 0], 12 * (np.exp(-0.5 / 3) - np.exp(-t / 3)), atol=1e-12)
    np.testing.assert_allclose(s[:, 1], 0.5 * (t - 0.5), atol=1e-12)
    steps = np.linalg.norm(np.diff(s, axis=0), axis=1)
    assert steps[0] > 5 * steps[-1]  # the fast phase first


def test_frame_filters_sum_to_the_exposure_filter():
    """Σ_f ΔN·H_f (each frame's filter averaged over its own dose window) is N·H over the whole exposure."""
    shape, n, dose = (64, 64), 20, 2.0
    filters = frame_dose_filters(n, 5.0, dose, 300.0, shape, 1.0)
    filt = torch.stack([filters[f] for f in range(n)])
    k = difftem.core.fft.radial_freq_per_px(shape, half=True) / 1.0
    whole = exposure_filter(5.0, n * dose, 300.0)(k)
    torch.testing.assert_close(filt.sum(0) / n, whole, rtol=1e-10, atol=1e-12)
    assert float(filt[-1, 5, 5]) < float(filt[0, 5, 5])  # later frames more damaged


def test_warp_matches_a_fourier_shift_for_a_uniform_field():
    img = torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lowpass = torch.exp(-0.5 * (difftem.core.fft.radial_freq_per_px((64, 64), half=True) / 0.08) ** 2)
    img = difftem.core.fft.irfft2(rfft2(img) * lowpass, (64, 64))
    d = torch.zeros(2, 64, 64, dtype=torch.float64)
    d[0], d[1] = 0.4, -0.7
    from difftem.denoise.align import shift_image
    ref = shift_image(img, (-0.7, 0.4))
    inner = (slice(8, -8), slice(8, -8))
    # bicubic interpolation of content up to ~0.2 cycles/px: 1.5-2.3 % of the peak over 8 random images
    assert float((warp(img, d) - ref)[inner].abs().max()) < 0.03 * float(img.abs().max())


def test_frames_sum_to_the_single_exposure_statistics():
    """No motion, no damage: the frames' sum has the single exposure's mean and NPS (both Poisson of the same
    expectation, through the same MTF) within noise."""
    cfg = _config({"n_frames": 8, "damage": "none", "drift": {"fast_a": 0, "slow_a_per_frame": 0}})
    n_images = 6
    singles, sums = [], []
    for seed in range(n_images):
        r = difftem.simulate(cfg.model_copy(update={"seed": seed}))
        singles.append(r.micrograph.double())
        sums.append(sum(f.double() for f in r.movie.frames()))
    singles, sums = torch.stack(singles), torch.stack(sums)
    m1, m2 = float(singles.mean()), float(sums.mean())
    sigma_mean = math.sqrt(m1 / 0.8 / singles.numel())
    assert abs(m1 - m2) < 5 * sigma_mean * math.sqrt(2)
    edges = np.linspace(0.02, 0.5, 9)
    nps1, nps2 = _bands_nps(singles, edges), _bands_nps(sums, edges)
    # each band's NPS is a mean of ≥ ~100 independent χ² samples per image: a few % spread
    print(f"mean single {m1:.4f} vs frame sum {m2:.4f}; NPS ratio per band {np.round(nps2 / nps1, 3).tolist()}")
    np.testing.assert_allclose(nps2 / nps1, 1.0, atol=0.12)
    # and each frame's mean is the dose's share
    f0 = next(iter(r.movie.frames())).double()
    assert float(f0.mean()) == pytest.approx(float(r.noiseless.double().mean()) / 8, rel=0.05)


def test_motion_truth_files_and_blur(tmp_path):
    """The written files: MRC stack and LZW TIFF (integer counts) of the same frames, the RELION STAR of the
    global shifts equal to the truth, the local field; the unaligned sum is blurred, the aligned one not."""
    import mrcfile
    import starfile
    import tifffile

    cfg = _config({"n_frames": 10, "damage": "none", "local_a": 2.0, "jitter_a": 0.3,
                   "drift": {"fast_a": 8.0, "fast_frames": 2.0, "slow_a_per_frame": 0.3}},
                  detector={"camera": {"pixel_mtf": False, "gain_sigma": 0.05, "dead_columns": 1,
                                       "hot_pixel_fraction": 0.002}})
    run = run_and_write(cfg, tmp_path / "run")
    out = tmp_path / "run"
    assert {"movie.mrc", "movie.tif", "movie_shifts.star", "gain_reference.mrc", "defects.txt",
            "movie_local_motion.npy"} <= set(run["outputs"])
    with mrcfile.open(out / "movie.mrc") as m:
        stack = np.asarray(m.data).copy()
        assert stack.shape == (10, 128, 128) and m.voxel_size.x == pytest.approx(1.0) and m.is_image_stack()
        assert m.header.dmax == pytest.approx(stack.max()) and m.header.rms == pytest.approx(stack.std(), rel=1e-4)
    assert mrcfile.validate(out / "movie.mrc", print_file=open(os.devnull, "w"))  # noqa: SIM115
    with tifffile.TiffFile(out / "movie.tif") as t:
        assert len(t.pages) == 10 and t.pages[0].compression == tifffile.COMPRESSION.LZW
        tif = np.stack([p.asarray() for p in t.pages])
    assert tif.dtype == np.uint16
    np.testing.assert_array_equal(tif, np.clip(np.rint(stack), 0, 65535))
    star = starfile.read(out / "movie_shifts.star", always_dict=True)
    g = star["global_shift"]
    truth = np.asarray(run["movie"]["global_shift_px"])
    np.testing.assert_allclose(g["rlnMicrographShiftX"], truth[:, 0], atol=1e-5)
    np.testing.assert_allclose(g["rlnMicrographShiftY"], truth[:, 1], atol=1e-5)
    assert star["general"]["rlnImageSizeZ"] == 10 and star["general"]["rlnMicrographGainName"] == "gain_reference.mrc"
    local = np.load(out / "movie_local_motion.npy")
    assert local.shape[:2] == (10, 2) and np.abs(local[0]).max() < 1e-6 and np.abs(local[-1]).max() > 1.0
    # defects: the text rectangles cover exactly the map
    with mrcfile.open(out / "defect_map.mrc") as m:
        dmap = np.asarray(m.data) > 0
    rect = np.zeros_like(dmap)
    for line in (out / "defects.txt").read_text().splitlines():
        x, y, w, h = map(int, line.split())
        rect[y:y + h, x:x + w] = True
    np.testing.assert_array_equal(rect, dmap)
    dead_col = dmap.all(axis=0)
    assert dead_col.sum() == 1 and np.all(stack[:, :, dead_col] == 0)


def test_unaligned_sum_is_blurred_and_alignment_recovers_it():
    cfg = _config({"n_frames": 12, "damage": "none", "drift": {"fast_a": 10.0, "fast_frames": 2.0,
                                                                "slow_a_per_frame": 0.5}},
                  detector={"noise": "none", "shape_px": [256, 256]},
                  sample={"particles": [{"structure": "builtin:1ubi", "random": {"count": 20}}]})
    r = difftem.simulate(cfg)
    frames = torch.stack(list(r.movie.frames())).double()
    truth = r.movie.source.truth.global_px
    found = align_frames(frames, max_shift_px=20)
    assert np.abs(found - truth).max() < 0.1  # noise-free: the estimator's own accuracy (0.4 px on 128²)
    edges = [0.15, 0.3]
    plain = radial_bands(rfft2(frames.sum(0)).abs() ** 2, (256, 256), edges)[0]
    aligned = radial_bands(rfft2(aligned_sum(frames, truth)).abs() ** 2, (256, 256), edges)[0]
    print(f"power at 0.15-0.3 cycles/px: unaligned sum / aligned sum = {plain / aligned:.3f}; "
          f"noise-free alignment error max {np.abs(found - truth).max():.3f} px")
    assert plain < 0.5 * aligned


def test_movie_camera_and_tilt_error_fields_vary_in_a_dataset_spec():
    """The new sections are ordinary config fields: `difftem dataset` varies them by dotted path."""
    from difftem.dataset.spec import spec_from_dict

    spec = spec_from_dict({"seed": 1, "n_items": 3,
                           "base": {"detector": {"shape_px": [64, 64], "camera": {"kind": "counting"}},
                                    "movie": {"n_frames": 8},
                                    "tilt_series": {"errors": {"shift_sigma_a": 1.0}}},
                           "vary": {"movie.drift.fast_a": {"uniform": [2.0, 20.0]},
                                    "movie.n_frames": {"choice": [10, 20]},
                                    "detector.camera.nps_floor": {"uniform": [0.5, 1.0]},
                                    "tilt_series.errors.rotation_sigma_deg": {"uniform": [0.0, 2.0]}}})
    cfgs = [spec.item_config(i)[0] for i in range(3)]
    assert len({c.movie.drift.fast_a for c in cfgs}) == 3
    assert all(c.movie.n_frames in (10, 20) and 0.5 <= c.detector.camera.nps_floor <= 1.0 for c in cfgs)
    assert all(0 <= c.tilt_series.errors.rotation_sigma_deg <= 2 for c in cfgs)


def test_a_movie_with_a_tilt_series_is_refused():
    from difftem.core.errors import ConfigError

    cfg = _config({"n_frames": 4}).model_copy(update={"tilt_series": config_from_dict(
        {"tilt_series": {"scheme": "list", "angles_deg": [0.0]}}).tilt_series})
    with pytest.raises(ConfigError, match="movie"):
        difftem.simulate_tilt_series(cfg)


def test_a_movie_written_past_the_page_cache_is_byte_identical(tmp_path, monkeypatch):
    """movie.mrc streamed frame by frame through the direct (O_DIRECT) writer equals the plainly written file, its
    header's fields (statistics written last, over the placeholder) included."""
    from difftem.io import files

    cfg = _config({"n_frames": 3, "damage": "none"})
    monkeypatch.setenv("DIFFTEM_DIRECT_IO", "0")
    run_and_write(cfg, tmp_path / "plain")
    monkeypatch.delenv("DIFFTEM_DIRECT_IO")
    monkeypatch.setattr(files, "DIRECT_IO_MIN_BYTES", 1)
    monkeypatch.setattr(files, "_DIRECT_CHUNK_BYTES", 8192)
    run_and_write(cfg, tmp_path / "direct")
    plain, direct = ((tmp_path / d / "movie.mrc").read_bytes() for d in ("plain", "direct"))
    assert len(direct) == len(plain) == 1024 + 3 * 128 * 128 * 4
    assert direct[:224] == plain[:224] and direct[1024:] == plain[1024:]  # 224-1024: labels with the time of writing
