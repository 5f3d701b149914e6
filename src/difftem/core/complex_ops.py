"""Complex numbers from magnitude and phase, faster on the CPU than torch's own.

torch.polar's CPU kernel evaluates cos and sin one element at a time; torch.cos and torch.sin are vectorised. Written
into the two halves of one buffer and interleaved, they give the same numbers (within an ulp of the phase's
cosine and sine) 2–2.7× faster (400² float32: 0.62–0.91 ms against 1.42–2.44 ms; 1024²: 4.6 against 14.8 ms;
float64 400²: 1.6 against 3.9 ms, one thread). Every transmission function, lens transfer and atom phase factor
of a simulation goes through here.
"""

from __future__ import annotations

import torch

#: below this many elements torch.polar's single pass is as fast as two vectorised ones and a copy
MIN_ELEMENTS = 16384


def polar(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``torch.polar(magnitude, phase)``: magnitude · (cos phase + i sin phase). On the CPU, for same-shaped float
    tensors without a gradient to track, in two vectorised passes; otherwise torch.polar itself (GPU, autograd,
    broadcasting, small tensors)."""
    if not _fast(phase, magnitude):
        return torch.polar(magnitude, phase)
    return _phasor(phase, magnitude)


def unit_phasor(phase: torch.Tensor) -> torch.Tensor:
    """exp(i·phase) for a real ``phase``: :func:`polar` with magnitude 1 (no pass for the magnitude)."""
    if not _fast(phase, phase):
        return torch.polar(torch.ones_like(phase), phase)
    return _phasor(phase, None)


def abs2(z: torch.Tensor) -> torch.Tensor:
    """|z|² of a complex tensor as re² + im² (two passes; abs() ** 2 takes a square root first: 0.61 against
    0.20 ms at 400² complex64, one thread)."""
    return z.real.square() + z.imag.square()


def _fast(phase: torch.Tensor, magnitude: torch.Tensor) -> bool:
    return (phase.device.type == "cpu" and magnitude.device == phase.device and magnitude.shape == phase.shape
            and magnitude.dtype == phase.dtype and phase.dtype in (torch.float32, torch.float64)
            and phase.numel() >= MIN_ELEMENTS
            and not (torch.is_grad_enabled() and (magnitude.requires_grad or phase.requires_grad)))


def _phasor(phase: torch.Tensor, magnitude: torch.Tensor | None) -> torch.Tensor:
    parts = torch.empty((2,) + tuple(phase.shape), dtype=phase.dtype)
    torch.cos(phase, out=parts[0])
    torch.sin(phase, out=parts[1])
    if magnitude is not None:
        parts.mul_(magnitude)
    return torch.view_as_complex(parts.movedim(0, -1).contiguous())
