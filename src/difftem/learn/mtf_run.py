"""`difftem fit-mtf`: fit the detector MTF to a measured curve and/or micrographs, write JSON/STAR/PNG."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ArgumentError, FormatError
from ..forward.detector import MTFParams, read_mtf_star
from ..io.files import atomic_path, staging_folder, write_json
from ..io.star import MTF_STAR_FILE, write_mtf_star
from ..io.tables import read_text_file
from ..io.tlt import read_mrc_checked
from ..simulate.output import prepare_out
from .mtf_fit import (
    MTFFit,
    curve_rms,
    extract_crops,
    fit_algorithm1,
    fit_curve,
    fit_nps,
    normalised_curve,
    select_background_crops,
)


def parse_reference(text: str | None, argument: str = "reference"):
    """A reference curve: a STAR path, or 'a,b,c,alpha,beta' (five finite numbers). ``argument`` names the
    option in errors: a STAR file that cannot be read is an :class:`ArgumentError` of it, naming the file."""
    if not text:
        return None
    parts = text.split(",")
    if len(parts) == 5 and not Path(text).exists():
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ArgumentError(argument, f" {text!r}: give 'a,b,c,alpha,beta' (five numbers) or a STAR file") from None
        if not all(math.isfinite(v) for v in values):
            raise ArgumentError(argument, f" {text!r}: the MTF parameters must be finite numbers")
        return MTFParams(*values)
    try:  # "1,2,3" is neither form: the fix names both
        return read_mtf_star(text, missing=f"give the curve as 'a,b,c,alpha,beta' (five numbers) or {MTF_STAR_FILE}")
    except FormatError as exc:
        raise ArgumentError(argument, f" {exc}") from None


def read_boxes(path: Path) -> list[tuple[int, int]]:
    """Box file: one 'y x' (top-left corner, pixels) per line; '#' comments allowed. Errors name the file and line,
    not the line's content."""
    out = []
    text = read_text_file(path, "box file", missing="give a text file of crop corners: one 'y x' (pixels) per line")
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.split("#")[0].strip()
        if s:
            try:
                y, x = (float(v) for v in s.split()[:2])
                if not (abs(y) < 2**31 and abs(x) < 2**31):  # NaN fails too
                    raise ValueError
            except ValueError:
                raise FormatError("expected 'y x' (two numbers, the crop's top-left corner in pixels)",
                                  file=path, line=lineno) from None
            out.append((int(y), int(x)))
    if not out:
        raise FormatError("no boxes found (one 'y x' per line expected)", file=path)
    return out


def run_fit_mtf(micrographs: list[Path], out: Path, *, curve: Path | None = None, method: str = "nps",
                crop_px: int = 128, n_crops: int = 20, boxes: Path | None = None,
                background_counts: float | None = None, ffl_alpha: float | None = 1.0, steps: int = 300,
                reference: str | None = None, seed: int = 0,
                progress: Callable[[str, int, int], None] | None = None, overwrite: bool = False,
                overwrite_hint: str = "pass overwrite=True") -> dict:
    """Fit the MTF; write mtf_fit.json/.star/.png (and crops.png) into ``out``, all or nothing: a folder with files
    only with ``overwrite`` (``overwrite_hint`` says how to ask), checked before the work."""
    if not micrographs and curve is None:
        raise ArgumentError("curve", ": give micrographs (MRC) and/or a measured curve (STAR) to fit")
    prepare_out(out, overwrite=overwrite, overwrite_hint=overwrite_hint)
    if method not in ("nps", "algorithm1", "both"):
        raise ArgumentError("method", f" {method!r}: choose nps, algorithm1 or both")
    ref = parse_reference(reference)
    fits: dict[str, MTFFit] = {}
    report: dict = {"inputs": {"micrographs": [str(m) for m in micrographs], "curve": str(curve) if curve else None}}
    if curve is not None:
        c = read_mtf_star(curve)
        fits["curve"] = fit_curve(c.frequency_per_px, c.value)
        if ref is None:
            ref = c
    crops_all, overlays = _read_crops(micrographs, crop_px, n_crops, boxes, report)
    if crops_all:
        crops = torch.cat(crops_all)
        if method in ("nps", "both"):
            fits["nps"] = fit_nps(crops, counts_per_px=background_counts)
        if method in ("algorithm1", "both"):
            level = background_counts if background_counts is not None else float(crops.mean())
            if background_counts is None:
                report["background_counts_note"] = ("background counts per pixel taken from the crops' mean "
                                                    "(assumes the micrograph is in counts); give "
                                                    "background_counts if known")
            cb = (lambda i, n: progress("algorithm 1", i, n)) if progress else None
            fits["algorithm1"] = fit_algorithm1(crops, level, ffl_alpha=ffl_alpha, steps=steps,
                                                generator=torch.Generator().manual_seed(seed), progress=cb)
    report["fits"] = {k: f.to_dict() for k, f in fits.items()}
    if ref is not None:
        for k, f in fits.items():
            if k != "curve":  # a curve fit is scored against its own curve (rms_fit_error)
                report["fits"][k]["rms_vs_reference_normalised"] = curve_rms(f.params, ref)
    primary = fits.get("nps") or fits.get("algorithm1") or fits["curve"]
    report["primary"] = primary.method
    report["warnings"] = _warnings(primary, report)
    with staging_folder(out, overwrite=overwrite) as tmp:
        _write_outputs(tmp, report, primary, fits, ref, overlays, crop_px)
    return report


def _warnings(primary: MTFFit, report: dict) -> list[str]:
    """What the fit cannot vouch for: a curve above 1 (no detector passes more than it receives; the crops' noise
    was not shot noise through an MTF, e.g. a CCD's read noise or a filtered image) and micrographs of several
    pixel sizes pooled into one curve."""
    out = []
    omega = np.linspace(0.0, 0.5, 101)
    values = normalised_curve(primary.params, torch.as_tensor(omega)).numpy()
    if values.max() > 1.01:
        k = int(values.argmax())
        out.append(f"the fitted MTF exceeds 1 (peak {values[k]:.3f} at {omega[k]:.2f} cycles/px): these crops' noise "
                   "is not white shot noise through an MTF (read noise, or an already filtered image); do not use "
                   "this curve as a detector MTF")
    sizes = sorted({round(c["pixel_size_a"], 4) for c in report.get("crops", {}).values()})
    if len(sizes) > 1:
        out.append(f"micrographs of {len(sizes)} pixel sizes ({', '.join(f'{v:g}' for v in sizes)} Å) were pooled into "
                   "one MTF; fit each detector on its own")
    return out


def _write_outputs(out: Path, report: dict, primary: MTFFit, fits: dict[str, MTFFit], ref, overlays,
                   crop_px: int) -> None:
    """mtf_fit.star (the primary fit, normalised), mtf_fit.png, crops.png (with micrographs) and mtf_fit.json."""
    omega = np.linspace(0, 0.5, 101)
    values = normalised_curve(primary.params, torch.as_tensor(omega)).numpy()
    write_mtf_star(out / "mtf_fit.star", omega, values, name="mtf_fit",
                   comment=f"difftem fit-mtf ({primary.method}): frequency in cycles/pixel, MTF / MTF(0)")
    _plot(out / "mtf_fit.png", fits, ref)
    if overlays:
        _plot_crops(out / "crops.png", overlays, crop_px)
    report["outputs"] = ["mtf_fit.json", "mtf_fit.star", "mtf_fit.png"] + (["crops.png"] if overlays else [])
    write_json(out / "mtf_fit.json", report)


def _read_crops(micrographs: list[Path], crop_px: int, n_crops: int, boxes: Path | None, report: dict):
    """Background crops of each micrograph (given boxes or chosen automatically) and (name, image, corners) for the
    crops plot; the corners go into ``report``."""
    crops_all, overlays = [], []
    for path in micrographs:
        img, px = read_mrc_checked(path, "micrograph", missing="give the path of a micrograph (MRC, .gz ok)")
        img = np.asarray(img, dtype=np.float64)
        if img.ndim == 3 and img.shape[0] == 1:
            img = img[0]
        if img.ndim != 2:
            raise FormatError(f"expected a single 2-D micrograph, got shape {img.shape}", file=path)
        corners = read_boxes(boxes) if boxes else select_background_crops(img, crop_px, n_crops)
        crops_all.append(extract_crops(img, corners, crop_px))
        overlays.append((Path(path).name, img, corners))
        report.setdefault("crops", {})[str(path)] = {"pixel_size_a": px, "corners_yx": corners}
    return crops_all, overlays


def _plot(path: Path, fits: dict[str, MTFFit], ref) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    omega = torch.linspace(0, 0.5, 201, dtype=torch.float64)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    if ref is not None:
        r = ref(omega) / ref(torch.zeros((), dtype=torch.float64))
        a1.plot(omega, r, "k--", lw=2, label="reference")
    for f in fits.values():
        a1.plot(omega, normalised_curve(f.params, omega), label=f"{f.method}")
        if f.loss_history:
            a2.semilogy(np.abs(f.loss_history) + 1e-30, label=f.method)
    a1.set_ylim(-0.25, 1.25)  # a fit with MTF(0) near 0 would otherwise flatten every other curve
    a1.set_xlabel("spatial frequency (cycles/pixel)")
    a1.set_ylabel("MTF / MTF(0)")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.set_xlabel("iteration")
    a2.set_ylabel("loss")
    a2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_crops(path: Path, overlays, crop_px: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    n = len(overlays)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 5), squeeze=False)
    for ax, (name, img, corners) in zip(axes[0], overlays, strict=True):
        lo, hi = np.percentile(img, [1, 99])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        for y, x in corners:
            ax.add_patch(patches.Rectangle((x, y), crop_px, crop_px, fill=False, color="yellow", lw=1))
        ax.set_title(f"{name}: {len(corners)} background crops", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
