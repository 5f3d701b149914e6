"""`difftem fit-ctf`: per micrograph, per tilt of a tilt series, or per tilt of a STAR-described set of particle
images, fit the CTF and write ``ctf.json``, a RELION ``ctf.star`` and Thon-ring figures into an output folder
(all or nothing)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ArgumentError, FormatError
from ..io.files import staging_folder, write_json
from ..io.star import read_star, write_star
from ..io.tlt import angles_beside, read_mrc_checked, read_tlt, tilt_axis_beside
from ..learn.ctf_fit import PIXEL_SIZE_RANGE_A, CTFFit, fit_ctf, fit_ctf_tiles
from ..simulate.output import prepare_out
from .plots import thon_figure, tilt_defocus_figure


@dataclass
class Item:
    """One thing to fit: a micrograph, one tilt of a stack, or the particle images of one tilt."""

    name: str
    pixel_size_a: float
    image: np.ndarray | None = None          # (H, W) micrograph or tilt
    tiles: np.ndarray | None = None          # (T, n, n) particle images
    tilt_deg: float | None = None
    tilt_axis_deg: float = 0.0
    reference: dict | None = None            # defocus the input's own metadata gives (for comparison)


def input_stem(path: Path) -> str:
    """A file's name without its image or STAR suffix (and .gz): the stem outputs are named after."""
    return re.sub(r"(\.mrcs?|\.st|\.ali|\.star)?(\.gz)?$", "", Path(path).name)


def _beside(stack: Path) -> Path:
    """The stack a STAR names, or its compressed copy (``.gz``) when only that is there."""
    zipped = stack.with_name(stack.name + ".gz")
    return zipped if not stack.exists() and zipped.exists() else stack


def _star_pixel_size(table, path: Path, notes: list[str] | None) -> float | None:
    """The images' pixel size (Å) a particle STAR gives: rlnImagePixelSize, or (RELION 3.0 and older) the detector
    pixel (µm) over the magnification, which is the pixel before any binning (said in ``notes``); None if neither."""
    if "rlnImagePixelSize" in table.columns:
        return _in_fit_range(float(table["rlnImagePixelSize"].iloc[0]), "rlnImagePixelSize", path)
    if {"rlnMagnification", "rlnDetectorPixelSize"} <= set(table.columns):
        px = float(table["rlnDetectorPixelSize"].iloc[0]) * 1e4 / float(table["rlnMagnification"].iloc[0])
        px = _in_fit_range(px, "rlnDetectorPixelSize / rlnMagnification", path)
        if notes is not None:
            notes.append(f"{path.name}: pixel size {px:.4g} Å from rlnDetectorPixelSize / rlnMagnification (pass "
                         "--pixel-size for binned images)")
        return px
    return None


def _in_fit_range(px: float, source: str, path: Path) -> float:
    """A pixel size a file gives, refused (naming the file and its source) outside the range a CTF fit takes: the
    fit's own check would blame --pixel-size, which was not given."""
    lo, hi = PIXEL_SIZE_RANGE_A
    if not (math.isfinite(px) and lo <= px <= hi):
        raise FormatError(f"its {source} gives a pixel size of {px:.4g} Å, outside the {lo:g}–{hi:g} Å a CTF fit "
                          "takes; give the pixel size in Å with --pixel-size", file=path)
    return px


def _pixel_size(header_px: float, given: float | None, path: Path) -> float:
    if given is not None:
        if not (given > 0 and math.isfinite(given)):
            raise ArgumentError("pixel_size", f" {given}: give a positive pixel size in Å")
        return float(given)
    if header_px > 0:
        lo, hi = PIXEL_SIZE_RANGE_A  # checked here: the fit's own check would blame --pixel-size
        if not lo <= header_px <= hi:
            raise FormatError(f"its header's pixel size {header_px:.4g} Å is outside the {lo:g}–{hi:g} Å a CTF fit "
                              "takes; give the pixel size in Å with --pixel-size", file=path)
        return header_px
    raise FormatError("has no pixel size in its header (or a placeholder 1 Å); give it in Å with --pixel-size",
                      file=path)


def mrc_items(path: Path, pixel_size_a: float | None, tilts: Path | None, tilt_axis_deg: float | None) -> list[Item]:
    """A 2-D micrograph, or a stack: a tilt series when angles are given or found beside it (``.tlt``,
    ``tilts.star``), else independent micrographs."""
    data, header_px = read_mrc_checked(path, "micrograph", missing=(
        "give the path of a micrograph or a tilt-series stack (MRC, .gz ok), or of a RELION STAR file of particle "
        "images"))
    px = _pixel_size(header_px, pixel_size_a, path)
    stem = input_stem(path)
    if data.ndim == 2:
        return [Item(stem, px, image=data)]
    if data.ndim != 3:
        raise FormatError(f"holds an array of shape {data.shape}; a micrograph or a stack expected", file=path)
    angles = None
    if tilts is not None:
        angles = read_tlt(tilts)
    elif (found := angles_beside(path)) is not None:
        angles = found[0]
    if angles is not None and len(angles) != data.shape[0]:
        raise FormatError(f"{len(angles)} tilt angles for {data.shape[0]} images", file=tilts or path)
    axis = tilt_axis_deg
    if axis is None:
        found_axis = tilt_axis_beside(path)
        axis = found_axis[0] if found_axis else 0.0
    return [Item(f"{stem}_{i:03d}", px, image=data[i], tilt_deg=None if angles is None else float(angles[i]),
                 tilt_axis_deg=axis) for i in range(data.shape[0])]


def star_items(path: Path, stack: Path | None, pixel_size_a: float | None, notes: list[str] | None = None
               ) -> list[Item]:
    """Particle images described by a RELION STAR (``rlnImageName`` N@stack, ``rlnMicrographName``): one item per
    micrograph (tilt), its images pooled; the STAR's own defocus per tilt kept as the reference."""
    blocks = read_star(path, missing="give the path of a RELION STAR file of particle images (columns rlnImageName, "
                                    "rlnMicrographName), or of a micrograph (MRC)")
    table = next((b for b in blocks.values() if hasattr(b, "columns") and "rlnImageName" in b.columns), None)
    if table is None:
        raise FormatError("no table with rlnImageName (particle images) found", file=path)
    if "rlnMicrographName" not in table.columns:
        raise FormatError("has no rlnMicrographName column to group the images by tilt", file=path)
    names = table["rlnImageName"].astype(str)
    index = names.str.split("@").str[0].astype(int).to_numpy() - 1
    files = names.str.split("@").str[1].unique()
    if stack is None:
        if len(files) != 1:
            raise FormatError(f"names {len(files)} image stacks; give the one to read with --stack", file=path)
        stack = _beside(path.parent / files[0])
        # the STAR's own name is read from its folder, not the working folder
        missing = (f"{path.name}'s rlnImageName names {files[0]!r}, read relative to the STAR file's folder; give "
                   "the stack's path with --stack")
    else:
        missing = "give the path of the MRC stack that the STAR file's rlnImageName refers to"
    data, header_px = read_mrc_checked(stack, "particle stack", missing=missing)
    if data.ndim == 2:
        data = data[None]
    if index.min() < 0 or index.max() >= data.shape[0]:
        raise FormatError(f"refers to image {index.max() + 1} but {stack} holds {data.shape[0]}", file=path)
    px = pixel_size_a if pixel_size_a is not None else _star_pixel_size(table, path, notes)
    px = _pixel_size(header_px if header_px != 1.0 else 0.0, px, stack)  # 1.0 Å is a common placeholder
    items = []
    for mic, rows in table.groupby("rlnMicrographName", sort=False):
        ref = None
        if {"rlnDefocusU", "rlnDefocusV"} <= set(rows.columns):
            u, v = rows["rlnDefocusU"].astype(float), rows["rlnDefocusV"].astype(float)
            ref = {"defocus_mean_a": float(((u + v) / 2).mean()), "astigmatism_a": float((u - v).mean())}
        items.append(Item(str(mic), px, tiles=data[index[rows.index.to_numpy()]], reference=ref))
    return items


def fit_item(item: Item, options: dict) -> CTFFit:
    if item.tiles is not None:
        opts = dict(options)
        opts.pop("tile_px", None)
        return fit_ctf_tiles(item.tiles, item.pixel_size_a, **opts)
    return fit_ctf(item.image, item.pixel_size_a, tilt_deg=item.tilt_deg or 0.0, tilt_axis_deg=item.tilt_axis_deg,
                   **options)


def _row(item: Item, fit: CTFFit) -> dict:
    row = {"name": item.name, "tilt_deg": item.tilt_deg, **fit.as_dict(), "defocus_mean_a": fit.defocus_mean_a,
           "astigmatism_a": fit.astigmatism_a}
    if item.reference:
        row["reference_defocus_mean_a"] = item.reference["defocus_mean_a"]
        row["reference_astigmatism_a"] = item.reference["astigmatism_a"]
        row["defocus_error_percent"] = 100 * (fit.defocus_mean_a / item.reference["defocus_mean_a"] - 1)
    return row


def ctf_star_blocks(rows: list[dict]) -> dict:
    """RELION-style CTF table: one optics group per distinct (pixel size, voltage, Cs, amplitude contrast), in order
    of first appearance, and one row per micrograph pointing at its group."""
    import pandas as pd

    keys = ("pixel_size_a", "voltage_kv", "cs_mm", "amplitude_contrast")
    groups: dict[tuple, int] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), len(groups) + 1)
    optics = pd.DataFrame([{"rlnOpticsGroupName": f"opticsGroup{g}", "rlnOpticsGroup": g,
                            "rlnMicrographPixelSize": px, "rlnVoltage": kv, "rlnSphericalAberration": cs,
                            "rlnAmplitudeContrast": ac} for (px, kv, cs, ac), g in groups.items()])
    mics = pd.DataFrame([{"rlnMicrographName": r["name"], "rlnOpticsGroup": groups[tuple(r[k] for k in keys)],
                          "rlnDefocusU": r["defocus_u_a"],
                          "rlnDefocusV": r["defocus_v_a"], "rlnDefocusAngle": r["defocus_angle_deg"],
                          "rlnCtfAstigmatism": r["defocus_u_a"] - r["defocus_v_a"],
                          "rlnPhaseShift": r["phase_shift_deg"], "rlnCtfMaxResolution": r["fit_resolution_a"],
                          "rlnCtfFigureOfMerit": r["score"]} for r in rows])
    return {"optics": optics, "micrographs": mics}


def run_fit_ctf(inputs: list[Path], out: Path, *, pixel_size_a: float | None = None, stack: Path | None = None,
                tilts: Path | None = None, tilt_axis_deg: float | None = None, overwrite: bool = False,
                overwrite_hint: str = "pass overwrite=True", plots: str = "first",
                progress: Callable[[str, int, int], None] | None = None, **options) -> dict:
    """Fit every input; write ``ctf.json``, ``ctf.star`` and figures into ``out``. ``plots``: ``all`` (one
    Thon figure per fit), ``first`` (the first fit of each input, plus defocus per tilt) or ``none``."""
    if not inputs:
        raise ArgumentError("inputs", ": give at least one micrograph, stack or STAR file")
    if plots not in ("all", "first", "none"):
        raise ArgumentError("plots", f" {plots!r}: choose all, first or none")
    prepare_out(out, overwrite=overwrite, overwrite_hint=overwrite_hint)
    groups: list[tuple[Path, list[Item]]] = []
    notes: list[str] = []
    for path in inputs:
        path = Path(path)
        if path.suffix.lower() == ".star":
            groups.append((path, star_items(path, stack, pixel_size_a, notes)))
        else:
            groups.append((path, mrc_items(path, pixel_size_a, tilts, tilt_axis_deg)))
    total = sum(len(items) for _, items in groups)
    rows, figures, done = [], [], 0
    with staging_folder(out, overwrite=overwrite) as tmp:
        for path, items in groups:
            group_rows = []
            for j, item in enumerate(items):
                fit = fit_item(item, options)
                group_rows.append(_row(item, fit))
                if plots == "all" or (plots == "first" and j == 0):
                    figures.append(thon_figure(fit, tmp / f"{item.name}_ctf.png", title=item.name).name)
                done += 1
                if progress:
                    progress(item.name, done, total)
            if len(items) > 1 and plots != "none":
                stem = input_stem(path)
                figures.append(tilt_defocus_figure(group_rows, tmp / f"{stem}_defocus.png", title=path.name).name)
            rows.extend(group_rows)
        summary = _summary(rows)
        write_json(tmp / "ctf.json", {"fits": rows, "summary": summary, "inputs": [str(p) for p in inputs],
                                      "notes": notes})
        write_star(tmp / "ctf.star", ctf_star_blocks(rows))
    return {"fits": rows, "summary": summary, "notes": notes, "outputs": ["ctf.json", "ctf.star", *figures]}


def _summary(rows: list[dict]) -> dict:
    errs = [r["defocus_error_percent"] for r in rows if "defocus_error_percent" in r]
    out = {"n_fits": len(rows)}
    if errs:
        a = np.abs(np.asarray(errs))
        out.update(reference_count=len(errs), abs_error_percent_median=float(np.median(a)),
                   abs_error_percent_max=float(a.max()), within_5_percent=int((a <= 5).sum()))
    return out
