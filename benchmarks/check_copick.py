"""copick's own reader on a project difftem wrote. copick pins zarr 2 (difftem's dataset store needs zarr 3), so it
runs in its own environment:

    python -m venv /tmp/copv && /tmp/copv/bin/pip install copick
    python benchmarks/check_copick.py --copick-python /tmp/copv/bin/python

Simulates a small tilt series with `--formats copick`, reads the project with copick (objects, runs, voxel
spacing, tomogram levels, picks with their transforms) and compares with the simulator's truth read by difftem's
readers. Prints the comparison and writes benchmarks/results/copick_check.json; exit status 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

from difftem.cli._app import app
from difftem.io.copick_project import read_picks, read_tomogram

READER = r"""
import json, sys, numpy as np, copick, zarr
root = copick.from_file(sys.argv[1])
out = {"copick": copick.__version__, "objects": [o.name for o in root.pickable_objects], "runs": []}
for run in root.runs:
    r = {"name": run.name, "voxel_spacings": [], "picks": []}
    for vs in run.voxel_spacings:
        tomos = []
        for t in vs.tomograms:
            g = zarr.open(t.zarr(), mode="r")
            tomos.append({"type": t.tomo_type, "levels": sorted(g.array_keys()), "shape0": list(g["0"].shape),
                          "sum0": float(np.asarray(g["0"][:], dtype=np.float64).sum())})
        r["voxel_spacings"].append({"voxel_size": vs.voxel_size, "tomograms": tomos})
    for p in run.picks:
        r["picks"].append({"object": p.pickable_object_name, "file_user": p.user_id,
                           "locations": [[q.location.x, q.location.y, q.location.z] for q in p.points],
                           "transforms": [np.asarray(q.transformation).tolist() for q in p.points]})
    out["runs"].append(r)
print(json.dumps(out))
"""

CONFIG = {"seed": 2, "beam": {"voltage_kv": 300}, "optics": {"defocus_um": 1.5},
          "detector": {"shape_px": [96, 96], "pixel_size_a": 3.0, "noise": "none", "mtf": None},
          "sample": {"ice_thickness_nm": 20, "ice_structure": {"mode": "off"},
                     "particles": [{"structure": "builtin:1ubi", "random": {"count": 3}}]},
          "simulation": {"slice_thickness_a": 10},
          "tilt_series": {"scheme": "dose_symmetric", "min_deg": -30, "max_deg": 30, "step_deg": 15,
                          "total_dose_e_per_a2": 60, "tilt_axis_deg": 10}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copick-python", required=True)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "copick_check.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "ts.yaml").write_text(yaml.safe_dump(CONFIG))
        res = CliRunner().invoke(app, ["simulate", str(d / "ts.yaml"), "--out", str(d / "run"), "--formats", "copick"])
        if res.exit_code:
            sys.exit(f"simulate failed: {res.output}")
        project = d / "run" / "copick"
        proc = subprocess.run([a.copick_python, "-c", READER, str(project / "copick_config.json")],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode:
            sys.exit(f"copick could not read the project: {proc.stderr.strip().splitlines()[-1]}")
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        run = seen["runs"][0]
        vs = run["voxel_spacings"][0]
        tomo_path = next((project / "ExperimentRuns" / run["name"]).glob("VoxelSpacing*/*.zarr"))
        vol, voxel = read_tomogram(tomo_path)
        loc, tr, _ = read_picks(next((project / "ExperimentRuns" / run["name"] / "Picks").glob("*.json")))
        picks = run["picks"][0]
        checks = {
            "one object, one run": len(seen["objects"]) == 1 and len(seen["runs"]) == 1,
            "voxel spacing": abs(vs["voxel_size"] - voxel) < 1e-9,
            "tomogram levels 0,1,2": vs["tomograms"][0]["levels"] == ["0", "1", "2"],
            "tomogram shape": vs["tomograms"][0]["shape0"] == list(vol.shape),
            "tomogram values": abs(vs["tomograms"][0]["sum0"] - float(vol.astype(np.float64).sum())) <= 1e-6 * max(
                1.0, float(np.abs(vol).sum())),
            "pick count": len(picks["locations"]) == len(loc) == CONFIG["sample"]["particles"][0]["random"]["count"],
            "pick locations (Å)": np.allclose(picks["locations"], loc, atol=1e-9),
            "pick transforms": np.allclose(picks["transforms"], tr, atol=1e-12),
        }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    Path(a.out).write_text(json.dumps({"copick_version": seen["copick"], "checks": checks, "read": seen}, indent=1))
    print(f"copick {seen['copick']}: {sum(checks.values())}/{len(checks)} checks; wrote {a.out}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
