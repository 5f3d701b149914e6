"""A tilt series made one image at a time: read, corrected and binned tilt by tilt, never held whole at full size.

A :class:`TiltStack` knows its shape and how to make image i; each step added with :meth:`TiltStack.map` (per-tilt
shifts, inversion, an IMOD transform, CTF correction) runs on that one image when it is asked for. ``reconstruct``
bins each image as it comes (:func:`difftem.tomo.reconstruct.bin_tilts`), so a 41 × 2500² series costs its binned
stack plus one full-size image and its work copies, instead of several copies of the whole stack.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Step = Callable[[int, torch.Tensor], torch.Tensor]


class TiltStack:
    """(n_tilts, H, W) images made by ``make(i)`` → (H, W) tensor, then passed through each step in turn."""

    def __init__(self, n_tilts: int, shape_yx: tuple[int, int], make: Callable[[int], torch.Tensor],
                 steps: tuple[Step, ...] = ()):
        self.n_tilts, self.shape_yx = int(n_tilts), (int(shape_yx[0]), int(shape_yx[1]))
        self._make, self._steps = make, tuple(steps)

    @classmethod
    def of(cls, images, indices=None) -> TiltStack:
        """From anything with ``image(i)`` (an :class:`~difftem.io.mrc_stack.MrcStack`) or a (N, H, W) array/tensor;
        ``indices`` picks and orders the images used (a particle's tilts in a larger stack)."""
        n, *shape = images.shape
        get = images.image if hasattr(images, "image") else (lambda i: images[i])
        pick = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        return cls(len(pick), tuple(shape[-2:]), lambda i: _own_tensor(get(int(pick[i]))))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_tilts, *self.shape_yx)

    def __len__(self) -> int:
        return self.n_tilts

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` with every step applied."""
        img = self._make(int(i))
        for step in self._steps:
            img = step(int(i), img)
        return img

    def map(self, step: Step) -> TiltStack:
        """The same stack with ``step(i, image)`` applied to each image after the steps already there."""
        return TiltStack(self.n_tilts, self.shape_yx, self._make, (*self._steps, step))


def _own_tensor(image) -> torch.Tensor:
    """A tensor of its own (writable, not a view of the caller's array)."""
    return image.clone() if torch.is_tensor(image) else torch.from_numpy(np.array(image))
