"""A simulated exposure as a dose-fractionated movie: frames drawn one at a time from the exposure's noise-free
image (:mod:`difftem.forward.movie`), detected by the summed-image detector or a camera
(:mod:`difftem.forward.camera`), and written as real cameras and motion-correction programs expect: an MRC stack,
an LZW-compressed TIFF of integer counts, a gain reference and a defects list, and the ground truth of the motion
(RELION motion-correction STAR of the global shifts, the local field).

Everything is seeded: the drift's directions, the local field and the particles' walks from the run's seed, each
frame's noise from (seed, frame), so any frame can be drawn alone and the files do not depend on the order in
which frames are written; the camera's fixed pattern from its own ``pattern_seed``.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..forward.camera import CameraModel, camera_model
from ..forward.detector import Detector, make_mtf
from ..forward.movie import (
    FrameSource,
    MotionTruth,
    draw_local_coeffs,
    drift_trajectory_a,
    fast_profile,
    frame_dose_filters,
    jitter_walks_px,
)
from ..io.files import SequentialWriter, atomic_path, write_mrc, write_npy
from ..io.star import write_star
from .camera_images import write_camera_files

_MOVIE_TAG = 0x40F1E  # keeps the movie's random streams apart from the single exposure's


@dataclass
class MovieResult:
    """A movie ready to be drawn: frames come from :meth:`frame` (seeded per frame)."""

    source: FrameSource
    detector: Detector
    camera: CameraModel | None
    seed: int
    pixel_size_a: float
    frame_dose_e_per_a2: float
    voltage_kv: float
    metadata: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return self.source.n_frames

    @property
    def output_pixel_size_a(self) -> float:
        if self.camera is not None and self.camera.output_shape((2, 2)) == (4, 4):
            return self.pixel_size_a / 2
        return self.pixel_size_a

    def generator(self, f: int, device) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, _MOVIE_TAG, f]).generate_state(2, np.uint32)
        return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)

    def frame(self, f: int) -> torch.Tensor:
        """Frame f (0-based) as detected: counts (float32)."""
        expected = self.source.expected_counts(f)
        gen = self.generator(f, expected.device)
        if self.camera is not None:
            return self.camera.read(expected, gen)
        return self.detector.detect(expected, gen).float()

    def frames(self):
        for f in range(self.n_frames):
            yield self.frame(f)

    def shifts_star_blocks(self, movie_name: str, gain_name: str | None, defect_name: str | None) -> dict:
        """RELION motion-correction STAR blocks: ``general`` and ``global_shift`` (px of the movie, relative to
        the first frame; correct frame i by shifting it by −shift)."""
        scale = self.pixel_size_a / self.output_pixel_size_a
        g = self.source.truth.global_px * scale
        h, w = (int(n * scale) for n in self.source.shape)
        general = {"rlnImageSizeX": w, "rlnImageSizeY": h, "rlnImageSizeZ": self.n_frames,
                   "rlnMicrographMovieName": movie_name, "rlnMicrographBinning": 1.0,
                   "rlnMicrographOriginalPixelSize": self.output_pixel_size_a,
                   "rlnMicrographDoseRate": self.frame_dose_e_per_a2,
                   "rlnMicrographPreExposure": float(self.metadata.get("prior_dose_e_per_a2", 0.0)),
                   "rlnVoltage": self.voltage_kv, "rlnMicrographStartFrame": 1, "rlnMotionModelVersion": 0}
        if gain_name:
            general["rlnMicrographGainName"] = gain_name
        if defect_name:
            general["rlnMicrographDefectFile"] = defect_name
        rows = [{"rlnMicrographFrameNumber": f + 1, "rlnMicrographShiftX": float(g[f, 0]),
                 "rlnMicrographShiftY": float(g[f, 1])} for f in range(self.n_frames)]
        return {"general": general, "global_shift": rows}


def motion_truth(config, shape: tuple[int, int], centres_px: np.ndarray, radii_px: np.ndarray) -> MotionTruth:
    """Draw the movie's motion from the config and the run's seed."""
    mv = config.movie
    px = config.detector.pixel_size_a
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _MOVIE_TAG]))
    d = mv.drift
    angles = rng.uniform(0, 2 * math.pi, 2)
    u = math.radians(d.direction_deg) if d.direction_deg is not None else angles[0]
    v = math.radians(d.slow_direction_deg) if d.slow_direction_deg is not None else angles[1]
    glob = drift_trajectory_a(mv.n_frames, d.fast_a, d.fast_frames, d.slow_a_per_frame, u, v) / px
    coeffs = draw_local_coeffs(rng, mv.local_a / px, shape)
    walks = jitter_walks_px(rng, len(centres_px), mv.n_frames, mv.jitter_a / px)
    return MotionTruth(glob, coeffs, fast_profile(mv.n_frames, d.fast_frames), walks,
                       np.asarray(centres_px, dtype=np.float64).reshape(-1, 2),
                       np.asarray(radii_px, dtype=np.float64).reshape(-1))


def make_movie(config, intensity: torch.Tensor, centres_px: np.ndarray, radii_px: np.ndarray) -> MovieResult:
    """The movie of one exposure from its noise-free ``intensity`` (H, W), the particles' centres (x, y px) and
    radii (px) for their jitter."""
    mv = config.movie
    det = config.detector
    px = det.pixel_size_a
    n = mv.n_frames
    shape = tuple(intensity.shape[-2:])
    frame_dose = config.beam.dose_e_per_a2 / n
    truth = motion_truth(config, shape, centres_px, radii_px)
    filters = None
    if mv.damage == "exposure_filter" and config.beam.dose_e_per_a2 > 0:
        filters = frame_dose_filters(n, mv.prior_dose_e_per_a2, frame_dose, config.beam.voltage_kv, shape, px,
                                     device=intensity.device)
    source = FrameSource(intensity, truth, filters, frame_dose, px)
    frame_time = mv.exposure_time_s / n
    camera = camera_model(config, make_mtf(config), frame_time, intensity.device) if det.camera else None
    d = mv.drift
    meta = {"n_frames": n, "frame_dose_e_per_a2": frame_dose, "prior_dose_e_per_a2": mv.prior_dose_e_per_a2,
            "frame_time_s": frame_time, "damage": mv.damage,
            "dose_rate_e_per_px_s": frame_dose * px**2 / frame_time,
            "drift": {"fast_a": d.fast_a, "fast_frames": d.fast_frames, "slow_a_per_frame": d.slow_a_per_frame},
            "global_shift_px": truth.global_px.tolist(),
            "local_coeffs_px": truth.local_coeffs_px.tolist(),
            "local_basis": "zero-mean u^2, v^2, uv, u, v; u = (ix - W//2)/(W/2), v = (iy - H//2)/(H/2); rows dx, dy",
            "local_profile": truth.local_profile.tolist(),
            "jitter_step_a": mv.jitter_a}
    return MovieResult(source, Detector.from_config(config), camera, config.seed, px, frame_dose,
                       config.beam.voltage_kv, meta)


def write_movie(movie: MovieResult, out: Path, formats=("mrc", "tiff")) -> list[Path]:
    """Write the movie's files into ``out``; return their paths. Frames are drawn once each and streamed
    (memory: a frame, not the stack)."""
    import mrcfile
    import tifffile

    out = Path(out)
    first = movie.frame(0).cpu().numpy()
    shape = first.shape
    total = np.zeros(shape, dtype=np.float64)
    paths = {"mrc": out / "movie.mrc", "tiff": out / "movie.tif"}
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(paths[k])) for k in ("mrc", "tiff") if k in formats}
        mrc = tif = None
        if "mrc" in tmp:  # frames appended with plain writes: a memory map would count the stack in RSS
            with mrcfile.new(tmp["mrc"], overwrite=True) as m:
                m.set_data(np.zeros((1,) + shape, np.float32))
                m.voxel_size = movie.output_pixel_size_a
                m.set_image_stack()
                header = m.header.copy()
            header.nz = movie.n_frames
            mrc_file = stack.enter_context(open(tmp["mrc"], "wb", buffering=0))  # noqa: SIM115 (the exit stack's)
            mrc = SequentialWriter(mrc_file.fileno(), header.nbytes + movie.n_frames * first.size * 4)
            stack.callback(mrc.close)
            mrc.write(header)
        if "tiff" in tmp:
            tif = stack.enter_context(tifffile.TiffWriter(tmp["tiff"]))
        lo, hi, s1, s2 = math.inf, -math.inf, 0.0, 0.0
        for f in range(movie.n_frames):
            frame = first if f == 0 else movie.frame(f).cpu().numpy()
            total += frame
            if mrc is not None:
                mrc.write(np.ascontiguousarray(frame, dtype=np.float32))
                lo, hi = min(lo, float(frame.min())), max(hi, float(frame.max()))
                s1, s2 = s1 + float(frame.sum(dtype=np.float64)), s2 + float((frame.astype(np.float64) ** 2).sum())
            if tif is not None:  # integer counts, as cameras write them (rounded where not whole)
                tif.write(np.clip(np.rint(frame), 0, 65535).astype(np.uint16), compression="lzw")
        if mrc is not None:  # the header's statistics, from the running sums
            count = movie.n_frames * frame.size
            header.dmin, header.dmax, header.dmean = lo, hi, s1 / count
            header.rms = math.sqrt(max(0.0, s2 / count - (s1 / count) ** 2))
            mrc.finish()
            os.pwrite(mrc_file.fileno(), header.tobytes(), 0)
    written = [paths[k] for k in ("mrc", "tiff") if k in formats]
    written.append(write_mrc(out / "movie_sum.mrc", total.astype(np.float32), movie.output_pixel_size_a))
    gain_name = defect_name = None
    if movie.camera is not None:
        files, gain_name, defect_name = write_camera_files(movie.camera, out, shape, movie.output_pixel_size_a)
        written += files
    movie_name = "movie.tif" if "tiff" in formats else "movie.mrc"
    written.append(write_star(out / "movie_shifts.star", movie.shifts_star_blocks(movie_name, gain_name, defect_name),
                              "difftem ground truth of the movie's global motion, RELION motion-correction layout\n"
                              "rlnMicrographShiftX/Y: displacement of frame i's content from frame 1 in movie "
                              "pixels (x = column); correct a frame by shifting it by minus this"))
    step = max(1, max(movie.source.shape) // 128)
    local = _coarse_local(movie, step)
    written.append(write_npy(out / "movie_local_motion.npy", local))
    movie.metadata["local_motion_npy"] = {"shape": list(local.shape), "sampling_px": step,
                                          "content": "(frame, [dx, dy], y, x) displacement beyond the global shift, "
                                                     "px, sampled every sampling_px pixels from pixel [0, 0]"}
    integer = movie.camera is not None and movie.camera.integer_counts()
    movie.metadata["tiff_counts"] = "exact event counts" if integer else "counts rounded to integers"
    return written


def _coarse_local(movie: MovieResult, step: int) -> np.ndarray:
    """The local field sampled every ``step`` px without building it at full size for every frame."""
    shape = movie.source.shape
    out = []
    for f in range(movie.n_frames):
        d = movie.source.truth.residual_field_px(f, shape)
        out.append(np.zeros((2,) + tuple(-(-n // step) for n in shape), np.float32) if d is None
                   else d[:, ::step, ::step].cpu().numpy().astype(np.float32))
    return np.stack(out)


__all__ = ["MovieResult", "make_movie", "motion_truth", "write_movie"]
