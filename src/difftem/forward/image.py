"""From the exit wave to the detector image, for one exposure: lens (CTF, envelopes, aperture), then detector
(dose, shot noise, MTF, gain). Both the simulator and the differentiable simulator call :func:`expose`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.grid import Grid
from .detector import Detector, expected_counts
from .optics import Optics, image_intensity, transfer_function


@dataclass
class Exposure:
    intensity: torch.Tensor  # image intensity relative to the incident beam (vacuum = 1)
    expected_counts: torch.Tensor  # electrons per pixel before the MTF (the shot noise's mean)
    noiseless: torch.Tensor  # expected detector image: MTF and gain applied
    detected: torch.Tensor | None  # one noisy detector image (None without a generator)


def expose(exit_wave: torch.Tensor, grid: Grid, wavelength_a: float, voltage_kv: float, optics: Optics,
           detector: Detector, *, exit_plane_a: float, dose_e_per_a2, generator: torch.Generator | None = None,
           loss=None, ice_path_a: float = 0.0) -> Exposure:
    """Image one exit wave. ``optics.defocus_a`` is at the ice mid-plane (z = 0); the wave leaves the specimen
    ``exit_plane_a`` below it, so the lens sees that much more underfocus. ``loss``: the explicit electron loss
    (:class:`~difftem.forward.loss.ElectronLoss`) through ``ice_path_a`` Å of ice."""
    h = transfer_function(grid, wavelength_a, voltage_kv, optics, defocus_a=optics.defocus_a + exit_plane_a,
                          device=exit_wave.device, dtype=exit_wave.dtype)
    intensity = image_intensity(exit_wave, h)
    if loss is not None:
        intensity = loss.apply(intensity, grid, ice_path_a)
    expected = expected_counts(intensity, dose_e_per_a2, detector.pixel_size_a)
    detected = detector.detect(expected, generator) if generator is not None else None
    return Exposure(intensity, expected, detector.noiseless(expected), detected)
