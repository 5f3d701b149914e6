"""Applying an IMOD transform file (.xf) to a tilt series before reconstruction, as IMOD's newstack does: image i
is moved by its line's (A, D) about the centre pixel [H//2, W//2] (see :mod:`difftem.io.xf`)."""

from __future__ import annotations

import numpy as np
import torch

from ..forward.tilt_errors import transform_image
from .errors import TomoError


def apply_xf(stack, matrices, shifts_px) -> torch.Tensor:
    """The (T, H, W) stack with each image moved by its transform (T matrices (2, 2), T shifts (DX, DY) px)."""
    stack = torch.as_tensor(stack)
    move = xf_step(matrices, shifts_px, stack.shape[0])
    return torch.stack([move(i, img) for i, img in enumerate(stack)])


def xf_step(matrices, shifts_px, n_images: int):
    """``move(i, image)``: image i moved by its transform, as :func:`apply_xf` does it (for a stack made image by
    image, :meth:`difftem.tomo.stack.TiltStack.map`)."""
    a = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 2)
    d = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    if len(a) != n_images or len(d) != n_images:
        raise TomoError(f"apply_xf: {len(a)} transforms for {n_images} images; give one line per image")
    return lambda i, image: transform_image(image, a[i], d[i])
