"""STAR files, the tables RELION and its neighbours read."""

from __future__ import annotations

import numpy as np


def star_text(rows: list[dict], block: str = "particles", comment: str = "") -> str:
    """A RELION-style STAR loop (one data block) from a list of same-keyed dicts."""
    lines = [f"# {line}" for line in comment.splitlines()] + ["", f"data_{block}", "", "loop_"]
    keys = list(rows[0].keys()) if rows else ["rlnMicrographName"]
    lines += [f"_{k} #{i + 1}" for i, k in enumerate(keys)]
    for row in rows:
        vals = []
        for k in keys:
            v = row[k]
            vals.append(f"{v:.6f}" if isinstance(v, (float, np.floating)) else str(v))
        lines.append(" ".join(vals))
    return "\n".join(lines) + "\n"


STAR_CONVENTION = (
    "difftem ground truth. rlnCoordinateX/Y: particle centre in pixels (x = column, y = row, pixel [0, 0] first)\n"
    "rlnAngleRot/Tilt/Psi: RELION convention (the reference map rotated by A(rot, tilt, psi), projected along z)\n"
    "difftemPositionX/Y/Z_A: centre in Å, scene frame (origin at the field centre and the ice mid-plane, beam +z)\n"
    "difftemEulerZyz*: active r_scene = Rz(phi) Ry(theta) Rz(psi) r_model + position")
