"""Single exposures and tilts recorded by the camera model (``detector.camera``), as movie frames are.

With a camera configured, ``micrograph.mrc`` and every image of a tilt series are read by the same
:class:`~difftem.forward.camera.CameraModel` as the movie's frames: the same seeded fixed pattern, the same signal
(MTF × pixel sinc) and noise (√NPS) transfers, the same coincidence loss at the image's dose rate. A single exposure
is then, in distribution, the sum of its movie's frames (without motion or damage): the means add, and the noise
powers add (each frame's noise is q·λ_f·NPS(f)), while the fixed gain multiplies every frame alike. The noise-free
image beside it is the camera's expected reading without the fixed pattern. Super-resolution readings are binned to
the pixel (as motion correction writes a micrograph) so that images, coordinates and the tilt geometry keep the
simulation's pixel. The gain reference and defects of the camera are written beside the images.

The differentiable simulator keeps the summed-image detector of :mod:`difftem.forward.detector`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..forward.camera import CameraModel, camera_model, defects_text
from ..forward.detector import make_mtf
from ..io.files import write_mrc, write_text


def image_camera(config, device=None) -> CameraModel | None:
    """The camera that records a config's single images and tilts (None without ``detector.camera``). Its
    exposure time: ``camera.exposure_time_s``, else the movie's, else 1 s."""
    cam = config.detector.camera
    if cam is None:
        return None
    seconds = cam.exposure_time_s
    if seconds is None:
        seconds = config.movie.exposure_time_s if getattr(config, "movie", None) is not None else 1.0
    return camera_model(config, make_mtf(config), seconds, device)


def record(camera: CameraModel, expected_e: torch.Tensor, generator: torch.Generator | None, noise: str = "poisson"
           ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(detected, noise-free) readings of one image with ``expected_e`` electrons per pixel; detected is None
    without a generator, the noise-free image itself with ``noise`` "none"."""
    clean = camera.mean(expected_e, bin_to_pixel=True)
    if noise == "none":
        return clean, clean
    if generator is None:
        return None, clean
    return camera.read(expected_e, generator, bin_to_pixel=True), clean


def write_camera_files(camera: CameraModel, out: Path, shape: tuple[int, int], pixel_size_a: float
                       ) -> tuple[list[Path], str, str | None]:
    """The camera's gain reference (1/g, 1 at defects; ones without a fixed pattern), its defects list and map,
    into ``out``; returns (paths, gain file name, defects file name or None). ``shape``/``pixel_size_a``: the
    sensor's output grid."""
    pattern = camera.pattern
    gain = pattern.gain_reference().cpu().numpy() if pattern is not None else np.ones(shape, np.float32)
    written = [write_mrc(Path(out) / "gain_reference.mrc", gain, pixel_size_a)]
    if pattern is None:
        return written, "gain_reference.mrc", None
    written.append(write_text(Path(out) / "defects.txt", defects_text(pattern)))
    written.append(write_mrc(Path(out) / "defect_map.mrc", pattern.defects.cpu().numpy().astype(np.float32),
                             pixel_size_a))
    return written, "gain_reference.mrc", "defects.txt"


def sensor_grid(camera: CameraModel, image_shape, pixel_size_a: float) -> tuple[tuple[int, int], float]:
    """The sensor's output grid (shape, pixel Å) for images of ``image_shape`` (..., H, W) at ``pixel_size_a``:
    twice as fine for unbinned super-resolution."""
    h, w = (int(n) for n in tuple(image_shape)[-2:])
    shape = camera.output_shape((h, w))
    return shape, pixel_size_a * w / shape[1]


def camera_metadata(camera: CameraModel) -> dict:
    """run.json's record of how the images were read."""
    c = camera.camera
    units = "ADU" if c.kind == "integrating" else "detected events per pixel"
    return {"kind": c.kind, "units": units, "exposure_time_s": camera.frame_time_s, "dqe0": camera.dqe0,
            "super_resolution_binned": bool(c.super_resolution),
            "noiseless": "expected reading without the fixed pattern"}


__all__ = ["camera_metadata", "image_camera", "record", "sensor_grid", "write_camera_files"]
