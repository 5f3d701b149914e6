"""On-disk layout of a dataset store (Zarr v3 or MRC + STAR), written so a kill never leaves a half item.

```
STORE/
  zarr.json            root group; attributes.difftem_dataset = spec, fingerprint, n_items  (zarr)
  dataset.json         the same record                                                       (mrc)
  items/000017/        one item: a Zarr group (arrays + attributes) or a folder of MRC + item.json
                       (+ particles.star; a tilt series also tilts.tlt and tilts.star)                     (mrc)
  failed/000017.json   the error of an item that failed (removed when it later succeeds)
  manifest.csv         one row per item: index, status, seed, sampled parameters, error, timing
  micrographs.star     RELION micrograph table with CTF parameters                           (mrc)
  .partial/            items being written; an item becomes visible by one rename into items/
  .lock                held (flock) by the run writing the store
```
An item folder exists under ``items/`` only once complete, so "done" is simply "present". The
manifest is an index rebuilt from that state at the start of every run and rewritten atomically
while running; nothing depends on it being current when a run is killed.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, DifftemError
from ..io.files import _json_default, atomic_path, read_mrc, write_json, write_mrc, write_npy
from ..io.star import write_star
from ..io.tlt import write_tlt

ITEMS, FAILED, PARTIAL, LOCK = "items", "failed", ".partial", ".lock"
ATTR_KEY = "difftem_dataset"
MRC_ARRAYS = ("micrograph", "noiseless", "intensity", "potential")


def item_name(index: int) -> str:
    return f"{index:06d}"


def jsonable(obj):
    """Plain JSON types only (numpy scalars/arrays and paths converted), as stored in attributes."""
    return json.loads(json.dumps(obj, default=_json_default))


class StoreBusyError(DifftemError):
    """Another run holds the store's lock."""


class Store:
    """A dataset folder of format ``zarr`` or ``mrc``; all writes are atomic at item granularity."""

    def __init__(self, root: str | Path, fmt: str):
        self.root = Path(root)
        self.fmt = fmt

    # --- dataset-level record --------------------------------------------------------------------
    @staticmethod
    def inspect(root: str | Path) -> dict | None:
        """The dataset record of an existing store; None when ``root`` is absent or an empty folder.

        Anything else that is not a difftem dataset is refused: we never write into (or delete)
        a folder we did not create.
        """
        root = Path(root)
        if not root.exists():
            return None
        if not root.is_dir():
            raise ConfigError(f"--out {root}: exists and is a file, not a dataset store; choose another --out")
        if not any(root.iterdir()):
            return None
        for name, key in (("zarr.json", "attributes"), ("dataset.json", None)):
            path = root / name
            if path.exists():
                try:
                    data = json.loads(path.read_text())
                    record = data[key][ATTR_KEY] if key else data[ATTR_KEY]
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                return record
        raise ConfigError(f"--out {root}: folder exists and is not a difftem dataset store; choose an empty or "
                          "new folder (it is left untouched)")

    def _record_path(self) -> Path:
        return self.root / ("zarr.json" if self.fmt == "zarr" else "dataset.json")

    def write_record(self, record: dict, root: Path | None = None) -> None:
        root = root or self.root
        record = jsonable(record)
        if self.fmt == "zarr":  # a Zarr v3 group node, written by hand so the update is one rename
            write_json(root / "zarr.json", {"zarr_format": 3, "node_type": "group",
                                            "attributes": {ATTR_KEY: record}})
        else:
            write_json(root / "dataset.json", {ATTR_KEY: record})

    def create(self, record: dict) -> None:
        """Build the empty store beside its final place, then rename it there (never half-created)."""
        tmp = self.root.parent / f".{self.root.name}.creating-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            (tmp / ITEMS).mkdir()
            (tmp / FAILED).mkdir()
            (tmp / PARTIAL).mkdir()
            if self.fmt == "zarr":
                write_json(tmp / ITEMS / "zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": {}})
            self.write_record(record, tmp)
            try:
                os.rename(tmp, self.root)  # onto a missing or empty folder
            except OSError:
                raise StoreBusyError(f"--out {self.root}: another run created this store meanwhile; "
                                     "rerun the command to continue that store") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove(self) -> None:
        shutil.rmtree(self.root)

    @contextlib.contextmanager
    def lock(self):
        """Exclusive advisory lock for the whole run; the kernel releases it if the process dies."""
        with open(self.root / LOCK, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                raise StoreBusyError(f"--out {self.root}: another `difftem dataset` run (pid {holder}) is writing "
                                     "this store; wait for it to finish or choose another --out") from None
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(str(os.getpid()))
                fh.flush()
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- state ---------------------------------------------------------------------------------------
    def item_path(self, index: int) -> Path:
        return self.root / ITEMS / item_name(index)

    def done_indices(self) -> set[int]:
        return {int(p.name) for p in (self.root / ITEMS).iterdir() if p.is_dir() and p.name.isdigit()}

    def failed_records(self) -> dict[int, dict]:
        out = {}
        for p in (self.root / FAILED).glob("*.json"):
            with contextlib.suppress(ValueError, OSError):
                out[int(p.stem)] = json.loads(p.read_text())
        return out

    def clean_partial(self) -> int:
        """Remove items left half-written by a killed run; returns how many."""
        partial = self.root / PARTIAL
        partial.mkdir(exist_ok=True)
        n = 0
        for p in partial.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
        return n

    def write_failed(self, index: int, record: dict) -> None:
        write_json(self.root / FAILED / f"{item_name(index)}.json", jsonable(record))

    def clear_failed(self, index: int) -> None:
        (self.root / FAILED / f"{item_name(index)}.json").unlink(missing_ok=True)

    # --- items -------------------------------------------------------------------------------------
    def write_item(self, index: int, arrays: dict[str, np.ndarray], attrs: dict, pixel_size_a: float) -> bool:
        """Write into .partial/, then one rename into items/. False if a complete copy was already there."""
        final = self.item_path(index)
        tmp = self.root / PARTIAL / f"{item_name(index)}.{uuid.uuid4().hex[:12]}"
        attrs = jsonable(attrs)
        try:
            if self.fmt == "zarr":
                _write_zarr_item(tmp, arrays, attrs)
            else:
                _write_mrc_item(tmp, arrays, attrs, pixel_size_a)
            try:
                os.rename(tmp, final)
            except OSError:
                if final.is_dir():  # a duplicate finished first (e.g. a worker orphaned by a killed run)
                    shutil.rmtree(tmp, ignore_errors=True)
                    return False
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return True

    def read_attrs(self, index: int) -> dict:
        path = self.item_path(index)
        if self.fmt == "zarr":
            return json.loads((path / "zarr.json").read_text())["attributes"]
        return json.loads((path / "item.json").read_text())

    def read_item(self, index: int, names=None) -> tuple[dict[str, np.ndarray], dict]:
        attrs = self.read_attrs(index)
        names = list(attrs["arrays"]) if names is None else list(names)
        missing = [n for n in names if n not in attrs["arrays"]]
        if missing:
            raise ConfigError(f"{self.root}: item {index} has no {missing}; it holds {list(attrs['arrays'])}")
        path = self.item_path(index)
        if self.fmt == "zarr":
            import zarr

            group = zarr.open_group(str(path), mode="r")
            return {n: np.asarray(group[n][...]) for n in names}, attrs

        out = {}
        for n in names:
            file = attrs["arrays"][n]["file"]
            out[n] = np.load(path / file) if file.endswith(".npy") else read_mrc(path / file)[0]
        return out, attrs

    # --- manifest ----------------------------------------------------------------------------------
    def write_manifest(self, rows: list[dict], fmt: str) -> Path:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({c: _column([r.get(c) for r in rows]) for c in columns})
            path = self.root / "manifest.parquet"
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        else:
            path = self.root / "manifest.csv"
            with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=columns)
                w.writeheader()
                for row in rows:
                    w.writerow({k: _cell(v) for k, v in row.items()})
        return path

    def read_manifest(self) -> list[dict]:
        """The last manifest written (CSV or Parquet), values as written; [] if there is none."""
        csv_path, pq_path = self.root / "manifest.csv", self.root / "manifest.parquet"
        try:
            if pq_path.exists():
                import pyarrow.parquet as pq

                return pq.read_table(pq_path).to_pylist()
            if csv_path.exists():
                with open(csv_path, newline="") as fh:
                    return list(csv.DictReader(fh))
        except Exception:  # a manifest is an index, never the source of truth
            return []
        return []

    def write_star(self, rows: list[dict]) -> Path:
        """RELION micrograph table (CTF per micrograph, defocus in Å at the ice mid-plane) for the MRC layout;
        ``rows`` hold the values in the order of :data:`MICROGRAPH_LABELS`."""
        import pandas as pd

        table = pd.DataFrame([list(r.values()) for r in rows], columns=list(MICROGRAPH_LABELS))
        return write_star(self.root / "micrographs.star", {"micrographs": table},
                          "written by difftem dataset: one row per item image; pixel size in A, voltage in kV, "
                          "Cs in mm, defocus in A at the ice mid-plane, angles and phase shift in degrees")


#: The columns of micrographs.star, in the order of the values of each row given to :meth:`Store.write_star`.
MICROGRAPH_LABELS = ("rlnMicrographName", "rlnMicrographPixelSize", "rlnVoltage", "rlnSphericalAberration",
                     "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift")


def _write_zarr_item(tmp: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    import zarr

    group = zarr.open_group(str(tmp), mode="w", zarr_format=3, attributes=attrs)
    for name, arr in arrays.items():
        chunks = (1, *arr.shape[1:]) if arr.ndim == 3 else arr.shape  # one chunk per image / per tilt
        group.create_array(name, data=np.ascontiguousarray(arr), chunks=chunks)


def array_file(name: str, arr: np.ndarray, fmt: str) -> str:
    """Where an array lives inside its item: a Zarr array name, or an MRC (real images) / NPY file."""
    if fmt == "zarr":
        return name
    return f"{name}.mrc" if name in MRC_ARRAYS and not np.iscomplexobj(arr) else f"{name}.npy"


def _write_mrc_item(tmp: Path, arrays: dict[str, np.ndarray], attrs: dict, pixel_size_a: float) -> None:
    tmp.mkdir(parents=True)
    for name, arr in arrays.items():
        file = array_file(name, arr, "mrc")
        if file.endswith(".mrc"):
            write_mrc(tmp / file, arr, pixel_size_a)
        else:
            write_npy(tmp / file, arr)
    truth = attrs.get("ground_truth", {})
    image = next((n for n in ("micrograph", "noiseless") if n in arrays), None)
    if truth.get("tilt_angles_deg"):  # IMOD-style: one angle per line, in stack order; RELION-style per-tilt table
        write_tlt(tmp / "tilts.tlt", truth["tilt_angles_deg"])
        if image:
            write_star(tmp / "tilts.star", {"tilts": _tilt_rows(truth, f"{image}.mrc")},
                       "written by difftem dataset: one row per image of the stack, ordered by angle; angles in "
                       "degrees, doses in e/A^2, defocus in A at the ice mid-plane, pixel size in A")
    rows = truth.get("particles") or []
    if rows and all("rlnCoordinateX" in r for r in rows):  # RELION coordinates, relative to the store
        name = f"{ITEMS}/{tmp.name.split('.')[0]}/{image}.mrc" if image else ""
        write_star(tmp / "particles.star", {"particles": [{**r, "rlnMicrographName": name} for r in rows]},
                   "written by difftem dataset")
    write_json(tmp / "item.json", attrs)


def _tilt_rows(truth: dict, stack: str) -> list[dict]:
    """tilts.star rows of a tilt-series item, with the labels of a simulated series' tilts.star."""
    rows = []
    for j, c in enumerate(truth.get("ctf") or []):
        rows.append({"rlnMicrographName": f"{j + 1}@{stack}", "rlnTomoNominalStageTiltAngle": c["tilt_deg"],
                     "rlnTomoNominalTiltAxisAngle": truth.get("tilt_axis_deg", 0.0),
                     "rlnMicrographPreExposure": c.get("pre_exposure_e_per_a2", 0.0),
                     "difftemDoseEPerA2": c["dose_e_per_a2"],
                     "rlnDefocusU": c["defocus_u_um"] * 1e4, "rlnDefocusV": c["defocus_v_um"] * 1e4,
                     "rlnDefocusAngle": c["astigmatism_angle_deg"], "rlnMicrographPixelSize": truth["pixel_size_a"],
                     "rlnVoltage": c["voltage_kv"], "rlnSphericalAberration": c["cs_mm"]})
    return rows


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _column(values: list):
    """Parquet column: numbers stay numbers; anything structured becomes its JSON text."""
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int} or kinds <= {int, float} or kinds <= {bool} or kinds <= {str}:
        return pa.array(values)
    return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
