"""Label volumes for machine learning (``config.labels``): class, instance and particle-mask MRC volumes and their
legend, on the frame of ``potential_volume`` and of ``difftem reconstruct`` (specimen/labels.py). With vesicles
(``sample.vesicles``) or membrane sheets (``sample.membrane_sheets``) their bilayers are a class of their own (after
the types), one instance per vesicle, then per sheet (after the copies) and a membrane mask volume; a particle
embedded in a membrane keeps its own labels where they meet.

Integer MRC modes: class and mask as int8 (mode 0) while there are fewer than 128 types, else uint16 (mode 6);
instance as uint16 (mode 6) up to 65 535 copies, else float32 (mode 2; exact integers up to 2²⁴, beyond the
1e6 copies a config may hold). ``labels.json`` maps class values to type names and says what instance values are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.files import atomic_path, new_mrc, write_json
from ..specimen.labels import (
    label_shape,
    label_volumes,
    membrane_half_thickness_a,
    membrane_volume,
    sheet_volume,
)
from ..specimen.scene import Scene
from .export import reconstruction_depth_px

FILES = {"class": "labels_class.mrc", "instance": "labels_instance.mrc", "mask": "labels_mask.mrc"}
MEMBRANE_FILE = "labels_membrane.mrc"


@dataclass
class LabelVolumes:
    classes: np.ndarray  # (Z, Y, X) int16: 0 background, type index + 1
    instances: np.ndarray  # (Z, Y, X) int32: 0 background, copy index + 1 (row of particles.star)
    voxel_a: float
    type_names: list[str]
    membranes: np.ndarray | None = None  # (Z, Y, X) int32: vesicle index + 1 (row of vesicles.star), then sheets
    membrane_half_thickness_a: float = 0.0
    n_vesicles: int = 0  # membrane values 1…n_vesicles are vesicles, the next ones sample.membrane_sheets entries

    @property
    def mask(self) -> np.ndarray:
        """1 where any particle is (membranes not included)."""
        return (self.classes > 0) & (self.classes <= len(self.type_names))

    @property
    def membrane_class(self) -> int | None:
        return None if self.membranes is None else len(self.type_names) + 1


def default_thickness_a(scene: Scene, config) -> float:
    """The depth `difftem reconstruct` gives this run's tomogram, in Å."""
    p = config.detector.pixel_size_a
    return reconstruction_depth_px(scene.placement.positions_a, config.sample.ice_thickness_nm * 10.0, p) * p


def make_labels(scene: Scene, config) -> LabelVolumes:
    """The label volumes ``config.labels`` asks for, of ``scene`` (untilted)."""
    cfg, det = config.labels, config.detector
    v = float(cfg.voxel_size_a or det.pixel_size_a)
    thickness = cfg.thickness_a if cfg.thickness_a is not None else default_thickness_a(scene, config)
    shape = label_shape(tuple(det.shape_px), det.pixel_size_a, v, thickness)
    classes, instances = label_volumes(scene, shape, v)
    names = [t.name for t in scene.types]
    ves, sheets = scene.vesicles, getattr(scene, "sheets", None)
    n_ves, n_sheets = (len(ves) if ves is not None else 0), (len(sheets) if sheets is not None else 0)
    if not n_ves and not n_sheets:
        return LabelVolumes(classes, instances, v, names)
    membranes = membrane_volume(ves, shape, v) if n_ves else np.zeros(shape, np.int32)
    if n_sheets:  # sheets after the vesicles: vesicle j is j + 1, sheet k is V + k + 1
        on_sheet = sheet_volume(sheets, shape, v, first=n_ves + 1)
        membranes = np.where(membranes > 0, membranes, on_sheet)
    free = (membranes > 0) & (classes == 0)  # an embedded protein keeps its labels where it meets the bilayer
    classes[free] = len(names) + 1
    instances[free] = len(scene.placement.positions_a) + membranes[free]
    half = membrane_half_thickness_a(ves.bilayer if n_ves else sheets.bilayers[0])
    return LabelVolumes(classes, instances, v, names, membranes, half, n_ves)


def _write_int_volume(path: Path, data: np.ndarray, voxel_a: float) -> Path:
    with atomic_path(path) as tmp, new_mrc(tmp) as mrc:
        mrc.set_data(np.ascontiguousarray(data))
        mrc.set_volume()
        mrc.voxel_size = voxel_a
    return Path(path)


def write_labels(labels: LabelVolumes, out: Path) -> list[Path]:
    """The three volumes (four with membranes) and labels.json into ``out`` (each file atomically)."""
    n_classes = len(labels.type_names) + (labels.membranes is not None)
    small = n_classes < 128
    cls_dtype = np.int8 if small else np.uint16
    n_copies = int(labels.instances.max()) if labels.instances.size else 0
    inst_dtype = np.uint16 if n_copies <= 65535 else np.float32
    written = [_write_int_volume(out / FILES["class"], labels.classes.astype(cls_dtype), labels.voxel_a),
               _write_int_volume(out / FILES["instance"], labels.instances.astype(inst_dtype), labels.voxel_a),
               _write_int_volume(out / FILES["mask"], labels.mask.astype(np.int8), labels.voxel_a)]
    nz, ny, nx = labels.classes.shape
    classes = {"0": "background", **{str(i + 1): name for i, name in enumerate(labels.type_names)}}
    instances = ("0: background; k: the copy in row k of particles.star (copy index + 1); a filament's subunits all "
                 "carry the row of its first subunit (filaments.star)")
    files = dict(FILES)
    if labels.membranes is not None:
        classes[str(labels.membrane_class)] = "membrane"
        instances += ("; N + j (N the copies): the bilayer of the vesicle in row j of vesicles.star, where no "
                      f"particle is; N + {labels.n_vesicles} + k: the bilayer of sample.membrane_sheets entry k "
                      "(run.json membrane_sheets), where no particle or vesicle is")
        files["membrane"] = MEMBRANE_FILE
        written.append(_write_int_volume(out / MEMBRANE_FILE, (labels.membranes > 0).astype(np.int8), labels.voxel_a))
    legend = {
        "classes": classes,
        "instances": instances,
        "mask": "1 where any particle is",
        **({"membrane": f"1 within {labels.membrane_half_thickness_a:.2f} A of a vesicle's or membrane sheet's "
                        "bilayer mid-plane (the head groups' outer half maxima; a sheet's own profile), particles "
                        "included"} if labels.membranes is not None
           else {}),
        "files": files, "dtypes": {"class": np.dtype(cls_dtype).name, "instance": np.dtype(inst_dtype).name,
                                   "mask": "int8", **({"membrane": "int8"} if labels.membranes is not None else {})},
        "voxel_size_a": labels.voxel_a, "shape_zyx": [nz, ny, nx],
        "geometry": "voxel [iz, iy, ix] centre at ((ix - X//2) v, (iy - Y//2) v, (iz - Z//2) v) A in the untilted "
                    "specimen frame (origin at the field centre and the ice mid-plane): the frame of "
                    "potential_volume and of difftem reconstruct; x and y wrap around the field's edges",
        "voxels_per_class": {str(c): int(np.count_nonzero(labels.classes == c)) for c in range(n_classes + 1)},
    }
    written.append(write_json(out / "labels.json", legend))
    return written
