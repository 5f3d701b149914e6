"""Particle types drawn from a density map (an EMDB-style MRC volume) instead of an atomic model.

The map is read with its voxel size (per axis) and its header frame (origin, or the first voxel's index times the
voxel, mapped to x, y, z through the header's axis order). Its solvent level (the median of the box's outer two
voxel layers) is subtracted, the molecule's volume is the voxels above a threshold (given, or chosen so that they
hold the molecule's mass at 1.35 g/cm³, the volume each atom displaces on the atom path), and the map is flattened
outside a sphere around that volume (a raised-cosine edge), so that noise far from the molecule is not simulated.
The type's origin is the density's centre (``centre: mass``), the box centre (``box``, voxel n//2) or the header's
frame itself (``none``, the frame of a model fitted into the map).

What the map's numbers mean in volts is decided later (:mod:`difftem.forward.density_map`): ``scale_v`` is set there
from the entry's calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import config_path_fix, shown_path
from ..core.elements import atomic_mass_da
from ..core.errors import ConfigError, FormatError
from .structure import Atoms, read_structure

#: Å³ per Da of protein at 1.35 g/cm³ (the atom path's displaced volume, forward.potential)
VOLUME_A3_PER_DA = 1.66054 / 1.35
MAX_MAP_VOXELS = 400**3  # a map's voxels (float64 copies of it are made): ~0.5 GB
FLATTEN_MARGIN_A = 10.0  # the map is kept within the molecule's radius plus this (and 3 voxels)


@dataclass
class DensityMap:
    """A particle type's map in its own frame: voxel [i, j, k] = (z, y, x) has its centre at
    ``origin_a + (k·v_x, j·v_y, i·v_z)`` (Å, type frame)."""

    values: np.ndarray  # (Z, Y, X) float64, map units, solvent level subtracted, flattened outside the molecule
    voxel_a: np.ndarray  # (3,) x, y, z
    origin_a: np.ndarray  # (3,) x, y, z of voxel [0, 0, 0] in the type frame
    mask: np.ndarray  # (Z, Y, X) bool: the molecule's volume (what displaces the ice)
    source: str
    settings: object  # the config entry's ``map`` section
    mass_da: float | None = None  # the molecule's mass, when known (mass_kda or the model's atoms)
    model: Atoms | None = None  # the atomic model of the same molecule (calibration model), type frame
    scale_v: float | None = None  # V per map unit, set by the calibration
    calibration: dict = field(default_factory=dict)
    support_radius_a: float = 0.0

    @property
    def voxel_volume_a3(self) -> float:
        return float(np.prod(self.voxel_a))

    def voxel_centres_a(self, index: np.ndarray) -> np.ndarray:
        """(N, 3) x, y, z (Å, type frame) of voxels given as (N, 3) (z, y, x) indices."""
        return self.origin_a + index[:, ::-1] * self.voxel_a

    def mask_points_a(self, max_points: int = 200_000) -> np.ndarray:
        """Centres of the molecule's voxels (an even subsample of at most ``max_points``)."""
        idx = np.argwhere(self.mask)
        step = max(1, math.ceil(len(idx) / max_points))
        return self.voxel_centres_a(idx[::step].astype(np.float64))

    @property
    def radius_a(self) -> float:
        """Radius about the type origin outside which the (flattened) map is zero."""
        return self.support_radius_a


#: What a density map is, for the fix of a missing one.
MAP_FIX = "give the path of a density map: an MRC volume (Z, Y, X), .gz ok, with its voxel size in the header"


def read_map_file(path: str | Path, voxel_size_a: float | None = None, *, missing: str = MAP_FIX
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values (Z, Y, X) float64, voxel (x, y, z) Å, header position (x, y, z) Å of voxel [0, 0, 0]) of an MRC
    volume. Refuses (FormatError naming the file) anything but a finite 3-D map of at most MAX_MAP_VOXELS voxels with
    a voxel size (from the header, or ``voxel_size_a`` when given); ``missing``: the fix for a missing file."""
    import warnings

    import mrcfile

    from ..io.tlt import read_mrc_checked

    path = Path(path)
    shown = shown_path(path)
    try:  # refuse a huge map from its header, before reading it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, permissive=True, header_only=True) as mrc:
                dims = (int(mrc.header.nz), int(mrc.header.ny), int(mrc.header.nx))
    except Exception:  # noqa: BLE001 - the checked reader below names what is wrong
        dims = (0, 0, 0)
    if math.prod(dims) > MAX_MAP_VOXELS:
        raise FormatError(f"holds {math.prod(dims):,} voxels ({' x '.join(map(str, dims[::-1]))}), more than "
                          f"{MAX_MAP_VOXELS:,}; crop or bin the map", file=shown)
    data, _ = read_mrc_checked(path, "density map", missing=missing)  # existence, header, mode, NaN/inf
    if data.ndim != 3 or min(data.shape) < 2:
        raise FormatError(f"holds an array of shape {data.shape}; a density map is a 3-D volume (Z, Y, X) of at "
                          "least 2 voxels along each axis", file=shown)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True, header_only=True) as mrc:
            h = mrc.header
            vox = np.array([float(mrc.voxel_size.x), float(mrc.voxel_size.y), float(mrc.voxel_size.z)])
            origin = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
            start = np.array([int(h.nxstart), int(h.nystart), int(h.nzstart)], dtype=np.float64)
            axes = [int(h.mapc), int(h.mapr), int(h.maps)]  # which of x, y, z the columns, rows, sections are
            angles = [float(h.cellb.alpha), float(h.cellb.beta), float(h.cellb.gamma)]
    if any(abs(a - 90) > 1e-3 and a != 0 for a in angles):
        raise FormatError(f"has a non-orthogonal cell (angles {angles[0]:g}, {angles[1]:g}, {angles[2]:g}°); "
                          "resample it onto an orthogonal grid", file=shown)
    if sorted(axes) != [1, 2, 3]:
        axes = [1, 2, 3]  # an unset order (0s) is the usual one
    # data is (sections, rows, columns): make it (z, y, x)
    file_axes = [axes[2], axes[1], axes[0]]
    data = np.transpose(data, [file_axes.index(3), file_axes.index(2), file_axes.index(1)])
    by_xyz = np.empty(3)
    by_xyz[[a - 1 for a in axes]] = start  # nxstart … belong to columns, rows, sections
    start = by_xyz
    if voxel_size_a is not None:
        vox = np.full(3, float(voxel_size_a))
    elif not (np.isfinite(vox).all() and (vox > 0).all()):
        raise FormatError(f"the header gives no voxel size (cell / grid = {vox[0]:g}, {vox[1]:g}, {vox[2]:g} Å); "
                          "set the map's voxel_size_a in the config", file=shown)
    if not np.isfinite(origin).all():
        origin = np.zeros(3)
    position = origin if origin.any() else start * vox
    values = data.astype(np.float64)
    if not np.abs(values).max() > 0:
        raise FormatError("holds only zeros; a density map needs a molecule", file=shown)
    return values, vox, position


def _solvent_level(values: np.ndarray) -> float:
    """The median of the box's outer two voxel layers (the solvent around a boxed molecule)."""
    shell = np.ones(values.shape, dtype=bool)
    inner = tuple(slice(2, n - 2) if n > 4 else slice(0, 0) for n in values.shape)
    shell[inner] = False
    return float(np.median(values[shell]))


def molecule_mask(values: np.ndarray, voxel_volume_a3: float, *, threshold: float | None,
                  mass_da: float | None) -> np.ndarray:
    """The molecule's voxels: above ``threshold`` (map units), else the ``mass_da``·1.23 Å³/Da most dense ones."""
    if threshold is not None:
        return values > threshold
    n = int(round(mass_da * VOLUME_A3_PER_DA / voxel_volume_a3))
    n = min(max(n, 1), values.size)
    flat = values.ravel()
    cut = np.partition(flat, flat.size - n)[flat.size - n]
    return values >= cut


def load_density_map(particle, field_name: str, resolve_structure=Path) -> DensityMap:
    """A ``sample.particles`` entry's ``map``: read, solvent level removed, the molecule's mask, flattened outside
    it, in the type frame its ``centre`` asks for. ``field_name`` names the entry in errors."""
    cfg = particle.map
    raw, vox, position = read_map_file(cfg.file, cfg.voxel_size_a,
                                       missing=config_path_fix(cfg, "file", f"{field_name}.map.file", MAP_FIX))
    values = raw - (_solvent_level(raw) if cfg.subtract_background else 0.0)
    model = None
    mass_da = cfg.mass_kda * 1e3 if cfg.mass_kda is not None else None
    if cfg.model is not None:
        model = read_structure(resolve_structure(cfg.model), centre="none")  # the map's frame
        if not len(model):
            raise ConfigError(f"{field_name}.map.model: {shown_path(cfg.model)} holds no atoms")
        if mass_da is None:
            mass_da = float((atomic_mass_da(model.atomic_number) * model.occupancy).sum())
    if cfg.threshold is None and mass_da is None:
        raise ConfigError(f"{field_name}.map: give mass_kda (or a model, or a threshold) so that the molecule's "
                          "volume (the ice it displaces, its extent) is known")
    mask = molecule_mask(raw if cfg.threshold is not None else values, float(np.prod(vox)),
                         threshold=cfg.threshold, mass_da=mass_da)
    if not mask.any():
        raise ConfigError(f"{field_name}.map.threshold: no voxel of {shown_path(cfg.file)} is above "
                          f"{cfg.threshold:g} (its values span {raw.min():.4g} … {raw.max():.4g})")
    # the type origin, in header coordinates
    idx = np.argwhere(mask).astype(np.float64)
    pts = position + idx[:, ::-1] * vox
    if particle.centre == "mass":
        w = np.clip(values[mask], 0, None)
        centre = (pts * w[:, None]).sum(0) / w.sum() if w.sum() > 0 else pts.mean(0)
    elif particle.centre == "bbox":
        centre = position + (np.array(values.shape[::-1]) // 2) * vox
    else:
        centre = np.zeros(3)
    origin = position - centre
    # flatten outside a sphere around the molecule (raised-cosine edge over the margin)
    r_mask = float(np.sqrt(((pts - centre) ** 2).sum(1)).max())
    margin = max(FLATTEN_MARGIN_A, 3 * float(vox.max()))
    zz, yy, xx = (np.arange(n) for n in values.shape)
    r = np.sqrt((origin[0] + xx * vox[0])[None, None, :] ** 2 + (origin[1] + yy * vox[1])[None, :, None] ** 2
                + (origin[2] + zz * vox[2])[:, None, None] ** 2)
    edge = np.clip((r - r_mask) / margin, 0, 1)
    values = values * 0.5 * (1 + np.cos(np.pi * edge))
    support = min(r_mask + margin, float(r.max())) + 0.5 * float(np.linalg.norm(vox))
    if model is not None:
        model = model.transformed(np.eye(3), -centre)
    solvent = _solvent_level(raw) if cfg.subtract_background else 0.0
    notes = f"map {Path(cfg.file).name}: {' x '.join(map(str, raw.shape[::-1]))} voxels of {vox[0]:g} Å"
    return DensityMap(values, vox, origin, mask, str(cfg.file), cfg, mass_da, model,
                      calibration={"notes": notes, "mask_voxels": int(mask.sum()), "solvent_level": solvent,
                                   "mask_volume_a3": float(mask.sum() * np.prod(vox))},
                      support_radius_a=support)
