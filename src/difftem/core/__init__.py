"""Infrastructure every layer uses: FFTs and frequency grids, sampling grids, rotations, elements, devices, errors.

Nothing here knows about microscopes: it imports only numpy, torch and gemmi.
"""
