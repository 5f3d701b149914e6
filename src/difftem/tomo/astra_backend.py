"""Optional astra-toolbox backend (for comparison): the same α = 0 problem solved slice by slice in 2-D.

ASTRA's CPU algorithms are 2-D only (its 3-D code needs a GPU), so each image row is one parallel-beam
x–z problem. Geometry mapping (checked against difftem's projector in the tests): ASTRA's image rows
run along −y_astra, so a difftem x–z slice is an ASTRA image with rows = z when the ASTRA angle is −θ;
the volume window is shifted so that voxel X//2 and row Z//2 sit at the origin, and an even detector
gets one replicated column on the right so that ASTRA's centre (D − 1)/2 is difftem's W//2 (ASTRA's
CPU FBP accepts only the plain parallel geometry, which has no detector offset). Not differentiable;
float32 on the CPU (or ASTRA's CUDA 2-D algorithms when ASTRA sees a GPU).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import TomoError
from .geometry import rotate_inplane, turned_frame


def _astra():
    try:
        import astra
    except ImportError:
        raise TomoError("backend astra: the astra-toolbox package is not installed (pip install astra-toolbox); "
                        "use the torch backend") from None
    return astra


def astra_geometries(angles_deg, shape_zx: tuple[int, int], width_px: int):
    """(volume geometry, parallel projection geometry) of one x–z slice; ``width_px`` must be odd."""
    astra = _astra()
    n_z, n_x = shape_zx
    x0 = -(n_x // 2) - 0.5
    z_top = n_z // 2 + 0.5
    vol_geom = astra.create_vol_geom(n_z, n_x, x0, x0 + n_x, z_top - n_z, z_top)
    if width_px % 2 == 0:
        raise ValueError("astra_geometries: the detector width must be odd (centre (D - 1)/2 = D//2)")
    return vol_geom, astra.create_proj_geom("parallel", 1.0, int(width_px),
                                            np.deg2rad(-np.asarray(angles_deg, dtype=np.float64)))


def astra_slices(sinograms: np.ndarray, angles_deg, thickness_px: int, n_x: int, *, method: str = "sirt",
                 iterations: int = 20, projector: str = "linear") -> np.ndarray:
    """Reconstruct (Y, T, W) sinograms into (Y, Z, X) slices with ASTRA's FBP or SIRT, one slice at a time."""
    astra = _astra()
    if sinograms.shape[-1] % 2 == 0:  # one more column keeps pixel W//2 at ASTRA's centre
        sinograms = np.concatenate([sinograms, sinograms[..., -1:]], axis=-1)
    n_y, _, width = sinograms.shape
    vol_geom, proj_geom = astra_geometries(angles_deg, (thickness_px, n_x), width)
    cuda = bool(astra.use_cuda())
    proj_id = None if cuda else astra.create_projector(projector, proj_geom, vol_geom)
    name = {"wbp": "FBP", "sirt": "SIRT"}[method] + ("_CUDA" if cuda else "")
    out = np.empty((n_y, thickness_px, n_x), dtype=np.float32)
    rec_id = astra.data2d.create("-vol", vol_geom, 0.0)
    sino_id = astra.data2d.create("-sino", proj_geom, 0.0)
    try:
        cfg = astra.astra_dict(name)
        cfg["ReconstructionDataId"], cfg["ProjectionDataId"] = rec_id, sino_id
        if proj_id is not None:
            cfg["ProjectorId"] = proj_id
        if method == "wbp":
            cfg["FilterType"] = "ram-lak"
        for iy in range(n_y):
            astra.data2d.store(sino_id, np.ascontiguousarray(sinograms[iy], dtype=np.float32))
            astra.data2d.store(rec_id, 0.0)
            alg_id = astra.algorithm.create(cfg)
            try:
                astra.algorithm.run(alg_id, iterations if method == "sirt" else 1)
            finally:
                astra.algorithm.delete(alg_id)
            out[iy] = astra.data2d.get(rec_id)
    finally:
        astra.data2d.delete([rec_id, sino_id])
        if proj_id is not None:
            astra.projector.delete(proj_id)
    return out


def astra_reconstruct(stack: torch.Tensor, angles_deg, thickness_px: int, *, method: str = "sirt",
                      tilt_axis_deg: float = 0.0, iterations: int = 20, relaxation: float = 1.0) -> torch.Tensor:
    """(T, H, W) → (Z, H, W) through ASTRA; the in-plane turn for α ≠ 0 is difftem's."""

    if relaxation != 1.0:
        raise TomoError("backend astra: only relaxation 1.0 is supported")
    image_yx = tuple(stack.shape[-2:])
    frame, det_w = turned_frame(image_yx, image_yx, tilt_axis_deg)
    turned = rotate_inplane(stack.detach(), tilt_axis_deg, (frame[0], det_w), padding_mode="border")
    sino = turned.permute(1, 0, 2).cpu().numpy()  # (rows, T, W)
    slices = astra_slices(sino, np.asarray(angles_deg, dtype=np.float64), thickness_px, frame[1], method=method,
                          iterations=iterations)
    vol = torch.from_numpy(slices).permute(1, 0, 2).to(device=stack.device, dtype=stack.dtype)
    return rotate_inplane(vol, -tilt_axis_deg, image_yx)
