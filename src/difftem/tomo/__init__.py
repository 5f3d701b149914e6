"""Tomography: tilt-series reconstruction (WBP, SIRT), volume scores (FSC, NCC) and volume rendering.

Geometry follows difftem's conventions (tilt about u = (−sin α, cos α, 0), active right-handed
rotation, projection along z; volumes (Z, Y, X) with the origin at voxel [Z//2, Y//2, X//2]).
"""

from ..io.tlt import parse_tlt, read_tlt, write_tlt
from .errors import TomoError
from .geometry import project_points, tilt_rotation
from .projector import TiltProjector, backproject, project
from .reconstruct import Reconstruction, bin_stack, reconstruct, sirt, weighted_backprojection
from .render import render_volume, turntable_frames
from .scores import FSCResult, fsc, ncc, plot_fsc

__all__ = ["FSCResult", "Reconstruction", "TiltProjector", "TomoError", "backproject", "bin_stack", "fsc", "ncc",
           "parse_tlt", "plot_fsc", "project", "project_points", "read_tlt", "reconstruct", "render_volume", "sirt",
           "tilt_rotation", "turntable_frames", "weighted_backprojection", "write_tlt"]
