"""A copick project on disk (its documented filesystem layout), written with zarr and JSON only.

The ``copick`` package itself pins zarr 2 and would replace the zarr 3 the dataset store needs, so difftem writes
the layout copick reads rather than calling it:

    <root>/copick_config.json                     config_type "filesystem", pickable objects, overlay_root
    <root>/ExperimentRuns/<run>/VoxelSpacing<v:.3f>/<tomo_type>.zarr   OME-NGFF 0.4 multiscale (levels 0, 1, 2 at
                                                  1×, 2×, 4× the voxel size; zarr format 2; axes z, y, x in Å)
    <root>/ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json   points in Å from the tomogram's corner,
                                                  ``transformation_``: 4×4 object → tomogram (rotation, no shift)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.errors import FormatError
from .files import write_json

COLOURS = [(255, 0, 0, 255), (0, 160, 255, 255), (0, 200, 0, 255), (255, 160, 0, 255), (200, 0, 255, 255)]


def voxel_folder(voxel_size_a: float) -> str:
    return f"VoxelSpacing{voxel_size_a:.3f}"


def write_config(root: str | Path, name: str, objects: list[dict], description: str = "difftem simulation",
                 final_root: str | Path | None = None) -> Path:
    """``objects``: [{name, radius_a, pdb_id?}] → pickable objects labelled 1, 2, … with distinct colours.
    ``final_root``: where the project will live when ``root`` is a staging folder (its overlay root)."""
    root = Path(root)
    pickable = []
    for i, obj in enumerate(objects):
        entry = {"name": _safe(obj["name"]), "is_particle": True, "label": i + 1,
                 "color": list(COLOURS[i % len(COLOURS)]), "radius": float(obj.get("radius_a", 50.0))}
        if obj.get("pdb_id"):
            entry["pdb_id"] = obj["pdb_id"]
        pickable.append(entry)
    config = {"config_type": "filesystem", "name": name, "description": description, "version": "1.0.0",
              "pickable_objects": pickable, "overlay_root": f"local://{Path(final_root or root).resolve()}",
              "overlay_fs_args": {"auto_mkdir": True}}
    return write_json(root / "copick_config.json", config)


def _safe(name: str) -> str:
    """copick object names: letters, digits, '-' (no '_', which separates the parts of a picks file name)."""
    return "".join(c if c.isalnum() or c == "-" else "-" for c in str(name)).strip("-") or "object"


def _downsample2(volume: np.ndarray) -> np.ndarray:
    """Mean over 2×2×2 blocks (odd edges dropped)."""
    z, y, x = (s // 2 * 2 for s in volume.shape)
    v = volume[:z, :y, :x]
    return v.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5)).astype(volume.dtype)


def write_tomogram(root: str | Path, run: str, volume_zyx: np.ndarray, voxel_size_a: float,
                   tomo_type: str = "wbp", levels: int = 3) -> Path:
    """The volume as an OME-NGFF 0.4 multiscale image (zarr format 2) at its voxel spacing."""
    import zarr

    path = Path(root) / "ExperimentRuns" / run / voxel_folder(voxel_size_a) / f"{tomo_type}.zarr"
    path.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = np.ascontiguousarray(volume_zyx, dtype=np.float32)
    datasets = []
    for level in range(levels):
        if level and min(data.shape) < 2:
            break
        if level:
            data = _downsample2(data)
        chunks = tuple(min(s, 256) for s in data.shape)
        arr = group.create_array(str(level), shape=data.shape, dtype=data.dtype, chunks=chunks,
                                 chunk_key_encoding={"name": "v2", "separator": "/"})
        arr[...] = data
        s = voxel_size_a * 2**level
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [s, s, s]}]})
    group.attrs["multiscales"] = [{
        "version": "0.4", "name": tomo_type, "datasets": datasets, "metadata": {},
        "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"]}]
    return path


def write_picks(root: str | Path, run: str, object_name: str, locations_a, rotations, voxel_size_a: float,
                user_id: str = "difftem", session_id: str = "0") -> Path:
    """Picks of one object type: ``locations_a`` (N, 3) x, y, z in Å from the tomogram's corner (voxel 0 centre),
    ``rotations`` (N, 3, 3) object → tomogram."""
    loc = np.asarray(locations_a, dtype=np.float64).reshape(-1, 3)
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    points = []
    for i in range(len(loc)):
        t = np.eye(4)
        t[:3, :3] = rot[i]
        points.append({"location": {"x": loc[i, 0], "y": loc[i, 1], "z": loc[i, 2]},
                       "transformation_": t.tolist(), "instance_id": 0, "score": 1.0})
    name = _safe(object_name)
    doc = {"pickable_object_name": name, "user_id": user_id, "session_id": session_id, "run_name": run,
           "voxel_spacing": float(voxel_size_a), "unit": "angstrom", "points": points, "trust_orientation": True}
    return write_json(Path(root) / "ExperimentRuns" / run / "Picks" / f"{user_id}_{session_id}_{name}.json", doc)


def read_picks(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(locations (N, 3) Å, transforms (N, 4, 4), the document) of a copick picks JSON."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        loc = np.array([[p["location"][a] for a in "xyz"] for p in doc["points"]], dtype=np.float64).reshape(-1, 3)
        tr = np.array([p.get("transformation_", np.eye(4).tolist()) for p in doc["points"]],
                      dtype=np.float64).reshape(-1, 4, 4)
    except (OSError, ValueError, KeyError, TypeError):
        raise FormatError("not a readable copick picks file", file=path) from None
    return loc, tr, doc


def read_tomogram(path: str | Path, level: int = 0) -> tuple[np.ndarray, float]:
    """(volume (Z, Y, X), voxel size Å) of one level of an OME-Zarr tomogram."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    ms = group.attrs["multiscales"][0]
    ds = ms["datasets"][level]
    return np.asarray(group[ds["path"]][...]), float(ds["coordinateTransformations"][0]["scale"][0])
