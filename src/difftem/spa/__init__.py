"""Single-particle analysis on simulated data: direct Fourier inversion from particle stacks, FSC."""
