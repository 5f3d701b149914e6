import numpy as np
import torch

from difftem.core.grid import Grid
from difftem.forward.potential import IceModel, SlicedPotential, atoms_to_tensors
from difftem.forward.scattering import get_table
from difftem.specimen.structure import Atoms


def single_atom(z=6, xyz=(0.0, 0.0, 0.0), b=0.0, occ=1.0) -> Atoms:
    return Atoms(np.array([z]), np.array([xyz], dtype=np.float64), np.array([b], float), np.array([occ], float))


def sliced(atoms, shape=(128, 128), pixel_a=0.25, table="kirkland", slice_a=2.0, ice=None, dtype=torch.complex128,
           **kw):
    return SlicedPotential(*atoms_to_tensors(atoms, dtype=torch.float64), Grid(shape, pixel_a), get_table(table),
                           slice_a, ice or IceModel(0.0), dtype=dtype, **kw)


def rel(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).abs().pow(2).sum().sqrt() / b.abs().pow(2).sum().sqrt())
