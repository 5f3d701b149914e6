"""Crowds excluded by capsules and by atoms, side by side: docs/img/crowd_by_atoms.png (placement only, ~1 min).

    python examples/crowd_by_atoms.py [--png docs/img/crowd_by_atoms.png]

The same four types (β-galactosidase, apoferritin, adenylate kinase, ubiquitin from ../shared/data/structures, 20, 10,
30 and 40 % of the crowd by molecules) in a 60 × 60 × 30 nm box: left, excluded by their bounding capsules (the
most that fits, 10 % by molecules); right, by their atoms (`sample.crowding.shape: atoms`, 25 %). Each panel shows
the heavy atoms within 1.5 nm of the box's mid-plane, coloured by type; the title gives the copies and the
fraction by molecules from the placement's report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from difftem.config import config_from_dict
from difftem.specimen.build import scene_of

ROOT = Path(__file__).resolve().parents[1]
S = ROOT.parent / "shared" / "data" / "structures"
MIX = [("β-gal", "5a1a_betagal.cif.gz", 0.2, "#e41a1c"), ("apoferritin", "6z6u_apoferritin.pdb.gz", 0.1, "#377eb8"),
       ("adenylate kinase", "1ake_adk_chimerax.cif.gz", 0.3, "#4daf4a"),
       ("ubiquitin", "1ubi_ubiquitin.pdb.gz", 0.4, "#ff7f00")]


def crowd(total: float, shape: str):
    parts = [{"name": n, "structure": str(S / f), "volume_fraction": total * w} for n, f, w, _ in MIX]
    return scene_of(config_from_dict({"seed": 4, "detector": {"shape_px": [150, 150], "pixel_size_a": 4.0},
                                      "sample": {"ice_thickness_nm": 30, "particles": parts,
                                                 "crowding": {"basis": "molecular", "shape": shape}}}))


def slab_atoms(scene, half_nm: float = 1.5):
    """(x, y) nm of the heavy atoms within ``half_nm`` of the mid-plane, and their type index."""
    pl, xy, kind = scene.placement, [], []
    for t, ty in enumerate(scene.types):
        sel = pl.type_index == t
        p = (np.einsum("mij,aj->mai", pl.rotations[sel], ty.atoms.positions_a) + pl.positions_a[sel, None])
        p = p.reshape(-1, 3) / 10.0
        p = p[np.abs(p[:, 2]) < half_nm]
        xy.append(p[:, :2])
        kind.append(np.full(len(p), t))
    return np.concatenate(xy), np.concatenate(kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "crowd_by_atoms.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    for ax, (total, shape) in zip(axes, ((0.10, "capsule"), (0.25, "atoms")), strict=True):
        scene = crowd(total, shape)
        xy, kind = slab_atoms(scene)
        for t, (name, _, _, colour) in enumerate(MIX):
            k = kind == t
            ax.scatter(xy[k, 0], xy[k, 1], s=0.15, c=colour, lw=0, label=name)
        rep = scene.crowding
        ax.set_title(f"excluded by {'capsules' if shape == 'capsule' else 'atoms'}: {rep['copies']:,} copies, "
                     f"{100 * rep['molecular_fraction']:.0f} % by molecules", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlabel("x (nm)")
        ax.set_ylabel("y (nm)")
    axes[1].legend(markerscale=30, fontsize=8, loc="upper right")
    fig.suptitle("heavy atoms within 1.5 nm of the mid-plane of a 60 × 60 × 30 nm box", fontsize=11)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=95)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
