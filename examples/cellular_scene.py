"""The crowded lamella of the `cellular` example, drawn from its placement alone (no simulation):
docs/img/cellular_scene.png.

    python examples/cellular_scene.py [--config PATH] [--png docs/img/cellular_scene.png]

Left: a 20 nm thick slab about the lamella's mid-plane seen from above (every copy whose centre lies in it, as its
bounding capsule's outline, coloured by type; the vesicles' bilayers cut by the mid-plane). Right: the whole lamella
seen edge-on (x–z), copies as dots. The title gives each type's copies and capsule volume fraction from the
placement's report. Default config: the bundled example (example:cellular).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from difftem.specimen.build import scene_of
from difftem.specimen.scene import _segments

COLOURS = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#a65628"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="a YAML config (default: the bundled example)")
    ap.add_argument("--png", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img"
                    / "cellular_scene.png")
    args = ap.parse_args()
    if args.config is None:
        from difftem.cli.simulate import _example_config

        cfg = _example_config("cellular")
    else:
        from difftem.config import load_config

        cfg = load_config(args.config)
    scene = scene_of(cfg)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    a, b, r = _segments([t.bounds for t in scene.types], scene.placement)
    mid = 0.5 * (a + b) / 10.0  # nm
    wx, wy = (s * cfg.detector.pixel_size_a / 10.0 for s in cfg.detector.shape_px[::-1])
    ice = cfg.sample.ice_thickness_nm
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), gridspec_kw={"width_ratios": [1, 1.1]})
    top, side = axes
    slab = np.abs(mid[:, 2]) < 10.0
    rep = {row["type"]: row for row in (scene.crowding or {}).get("types", [])}
    for t, ptype in enumerate(scene.types):
        sel = scene.placement.type_index == t
        c = COLOURS[t % len(COLOURS)]
        row = rep.get(ptype.name)
        label = (f"{ptype.name}: {row['copies']:,} copies, {100 * row['capsule_fraction']:.1f} %" if row
                 else f"{ptype.name}: {int(sel.sum())} copies")
        s_top = sel & slab
        # a capsule seen from above: its segment drawn with the capsule's diameter (in points, from the axis scale)
        segs = np.stack([a[s_top, :2], b[s_top, :2]], 1) / 10.0
        width_pt = 2 * r[s_top] / 10.0 * (6.2 * 72 * 0.8 / wy)
        ball = np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1) < 0.1  # a sphere: a disc of its diameter
        top.add_collection(LineCollection(segs[~ball], linewidths=np.maximum(width_pt[~ball], 0.5), colors=c,
                                          alpha=0.55, capstyle="round"))
        top.scatter(segs[ball, 0, 0], segs[ball, 0, 1], s=np.maximum(width_pt[ball], 0.5) ** 2, c=c, alpha=0.55, lw=0)
        side.scatter(mid[sel, 0], mid[sel, 2], s=2 if ptype.bounds.radius_a < 30 else 5, c=c, lw=0, label=label)
    if scene.vesicles is not None:
        for (cx, cy, cz), rad in zip(scene.vesicles.centres_a / 10.0, scene.vesicles.radii_a / 10.0, strict=True):
            if abs(cz) < rad:
                top.add_patch(plt.Circle((cx, cy), np.sqrt(rad**2 - cz**2), fill=False, color="k", lw=1.2))
            side.add_patch(plt.Circle((cx, cz), rad, fill=False, color="k", lw=1.0))
    top.set_xlim(-wx / 2, wx / 2)
    top.set_ylim(-wy / 2, wy / 2)
    top.set_aspect("equal")
    top.set_title("from above: copies centred within ±10 nm of the mid-plane; vesicles (black)", fontsize=10)
    top.set_xlabel("x (nm)")
    top.set_ylabel("y (nm)")
    side.set_xlim(-wx / 2, wx / 2)
    side.set_ylim(-ice / 2, ice / 2)
    side.set_aspect("equal")
    side.axhline(ice / 2, color="0.5", lw=0.8)
    side.axhline(-ice / 2, color="0.5", lw=0.8)
    side.set_title(f"edge-on (x–z, projected along y): the whole {ice:g} nm lamella", fontsize=10)
    side.set_xlabel("x (nm)")
    side.set_ylabel("z (nm)")
    fig.legend(*side.get_legend_handles_labels(), loc="lower center", fontsize=9, markerscale=3, ncol=3,
               frameon=False)
    crowd = scene.crowding or {}
    fig.suptitle(f"{len(scene.placement):,} copies, crowd {100 * crowd.get('capsule_fraction', 0):.1f} % of the free "
                 f"volume by bounding capsules ({100 * crowd.get('molecular_fraction', 0):.1f} % by molecules), "
                 f"placed in {crowd.get('seconds', 0):.2f} s", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=72)
    plt.close(fig)
    print(f"wrote {args.png} ({args.png.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
