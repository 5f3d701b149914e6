"""Tilt-series acquisition errors: per-tilt image shift, in-plane rotation, magnification change and tilt-angle
error, drawn from the config (seeded) or given, applied while simulating, and reported as truth.

The angle error changes the view itself (the specimen is simulated at nominal + offset). The others act on the
image: the specimen point that would appear at p appears at E(p) = m·R(ρ)·(p − c) + c + s (c the field centre,
pixel [H//2, W//2]; s = (sx, sy) px; R turns counter-clockwise from +x towards +y), applied to the expected
counts before the detector's noise and MTF. The transform that aligns the image again is T = E⁻¹:
A = (m·R)⁻¹, D = −A·s, which is what the IMOD ``.xf`` written as truth holds (x' = A·(x − c) + D + c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from .image import Exposure


@dataclass(frozen=True)
class TiltErrorSet:
    """Per tilt in acquisition order: shifts (x, y) px, rotations (deg), magnifications, angle offsets (deg)."""

    shifts_px: np.ndarray
    rotations_deg: np.ndarray
    magnifications: np.ndarray
    angle_offsets_deg: np.ndarray
    beam_tilts_mrad: np.ndarray | None = None  # (n, 2) x, y, added to the optics' beam tilt

    def optics_at(self, optics, i: int):
        """Tilt i's lens: ``optics`` (a :class:`~difftem.forward.optics.Optics`) with this tilt's beam tilt added."""
        if self.beam_tilts_mrad is None or not np.any(self.beam_tilts_mrad[i]):
            return optics
        bx, by = (float(v) for v in self.beam_tilts_mrad[i])
        return replace(optics, beam_tilt_x_mrad=optics.beam_tilt_x_mrad + bx,
                       beam_tilt_y_mrad=optics.beam_tilt_y_mrad + by)

    def forward_matrix(self, i: int) -> np.ndarray:
        r = math.radians(float(self.rotations_deg[i]))
        return float(self.magnifications[i]) * np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])

    def xf(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(A, D) of the aligning transform of tilt i."""
        a = np.linalg.inv(self.forward_matrix(i))
        return a, -a @ self.shifts_px[i]

    def is_identity(self, i: int) -> bool:
        return (not np.any(self.shifts_px[i]) and self.rotations_deg[i] == 0 and self.magnifications[i] == 1)

    def apply(self, image: torch.Tensor, i: int) -> torch.Tensor:
        """Image i as acquired: out(q) = image(E⁻¹ q), bicubic, edges mirrored."""
        if self.is_identity(i):
            return image
        return transform_image(image, self.forward_matrix(i), self.shifts_px[i])

    def apply_to_exposure(self, exposure: Exposure, i: int) -> Exposure:
        if self.is_identity(i):
            return exposure
        return replace(exposure, intensity=self.apply(exposure.intensity, i),
                       expected_counts=self.apply(exposure.expected_counts, i).clamp(min=0),
                       noiseless=self.apply(exposure.noiseless, i))

    def rows(self, i: int) -> dict:
        return {"difftemErrorShiftXPx": float(self.shifts_px[i, 0]),
                "difftemErrorShiftYPx": float(self.shifts_px[i, 1]),
                "difftemErrorRotationDeg": float(self.rotations_deg[i]),
                "difftemErrorMagnification": float(self.magnifications[i]),
                "difftemErrorTiltOffsetDeg": float(self.angle_offsets_deg[i]),
                **({"difftemErrorBeamTiltXMrad": float(self.beam_tilts_mrad[i, 0]),
                    "difftemErrorBeamTiltYMrad": float(self.beam_tilts_mrad[i, 1])}
                   if self.beam_tilts_mrad is not None else {})}


def transform_image(image: torch.Tensor, a: np.ndarray, d: np.ndarray) -> torch.Tensor:
    """(..., H, W) images moved by the transform (A, D) as IMOD's newstack applies an .xf line: the output at
    x' = A(x − c) + D + c takes the input's value at x, i.e. out(y) = image(A⁻¹(y − c − D) + c), c = pixel
    [H//2, W//2]; bicubic, edges mirrored."""
    h, w = image.shape[-2:]
    inv = np.linalg.inv(a)
    dtype = torch.float64
    y = torch.arange(h, dtype=dtype, device=image.device) - h // 2
    x = torch.arange(w, dtype=dtype, device=image.device) - w // 2
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    ux, uy = xx - float(d[0]), yy - float(d[1])
    sx = inv[0, 0] * ux + inv[0, 1] * uy + w // 2
    sy = inv[1, 0] * ux + inv[1, 1] * uy + h // 2
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)[None]
    src = image.reshape(-1, 1, h, w)
    out = F.grid_sample(src.to(dtype), grid.expand(src.shape[0], -1, -1, -1), mode="bicubic",
                        padding_mode="reflection", align_corners=False)
    return out.reshape(image.shape).to(image.dtype)


def _given(values, n: int, name: str):
    if values is None:
        return None
    if len(values) != n:
        raise ConfigError(f"tilt_series.errors.{name} has {len(values)} values for {n} tilts; give one per tilt in "
                          "acquisition order")
    return np.asarray(values, dtype=np.float64)


def draw_tilt_errors(errors, n: int, seed: int, pixel_size_a: float) -> TiltErrorSet:
    """The errors of ``n`` tilts from a :class:`~difftem.config.TiltErrors` section: given lists as they are,
    the rest drawn from zero-mean normals (σ from the config) with ``errors.seed`` (default the run's seed)."""
    rng = np.random.default_rng(np.random.SeedSequence([errors.seed if errors.seed is not None else seed, 0x7E27]))
    drawn_shift = rng.standard_normal((n, 2)) * errors.shift_sigma_a / pixel_size_a
    drawn_rot = rng.standard_normal(n) * errors.rotation_sigma_deg
    drawn_mag = 1 + rng.standard_normal(n) * errors.magnification_sigma
    drawn_off = rng.standard_normal(n) * errors.angle_offset_sigma_deg
    shifts = _given(errors.shifts_a, n, "shifts_a")
    rot = _given(errors.rotations_deg, n, "rotations_deg")
    mag = _given(errors.magnifications, n, "magnifications")
    off = _given(errors.angle_offsets_deg, n, "angle_offsets_deg")
    # drawn after the others, so adding beam tilt leaves a seed's other errors as they were
    drawn_bt = rng.standard_normal((n, 2)) * getattr(errors, "beam_tilt_sigma_mrad", 0.0)
    bt = _given(getattr(errors, "beam_tilts_mrad", None), n, "beam_tilts_mrad")
    if bt is None and getattr(errors, "beam_tilt_sigma_mrad", 0.0) > 0:
        bt = drawn_bt
    return TiltErrorSet(shifts / pixel_size_a if shifts is not None else drawn_shift,
                        rot if rot is not None else drawn_rot,
                        np.clip(mag if mag is not None else drawn_mag, 0.5, 2.0),
                        off if off is not None else drawn_off, bt)
