"""Single-particle analysis on simulated data: direct Fourier inversion from particle stacks, FSC."""

from .reconstruct import (
    fsc,
    low_pass,
    normalised_correlation,
    reconstruct_fourier,
    reconstruct_from_star,
    relion_ctf,
    resolution_shell,
)

__all__ = ["fsc", "low_pass", "normalised_correlation", "reconstruct_fourier", "reconstruct_from_star", "relion_ctf",
           "resolution_shell"]
