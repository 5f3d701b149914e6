"""`difftem fit-ctf` and `difftem calibrate`: fit real data, write the matching simulation config."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.errors import DifftemError
from ._console import fail, note, progress, say
from ._pixel_size import check_pixel_size


def _band(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        fail("--band: give 'low,high' in Å, e.g. 30,5")
    return lo, hi


def _warn_records(records: list[dict]) -> None:
    """calibrate's own warnings per micrograph (an implausible dose read from the noise)."""
    for rec in records:
        for text in rec["warnings"]:
            note("warning", f"{rec['name']}: {text} (--dose)")


def _warn_weak_fits(fits: list[tuple[str, dict]]) -> None:
    """One warning each for the CTF fits (name, :meth:`CTFFit.as_dict`) that saw fewer than two rings, and for those
    that saw rings but for which another defocus fits almost as well (:func:`~difftem.learn.ctf_fit.fit_is_weak`)."""
    from ..learn.ctf_fit import fit_is_weak

    unsure = [name for name, fit in fits if fit["rings_in_band"] < 2]
    if unsure:
        note("warning", f"{len(unsure)} fit(s) saw fewer than two CTF zeros in the band (e.g. {unsure[0]}): "
                        "their defocus is not determined by the data (pixel too coarse or band too narrow)")
    weak = [(name, fit) for name, fit in fits if fit["rings_in_band"] >= 2 and fit_is_weak(fit)]
    if weak:
        # 1 Å is what many programs write when they do not know the pixel size
        placeholder = any(fit["pixel_size_a"] == 1.0 for _, fit in weak)
        name, fit = weak[0]
        mean_a = 0.5 * (fit["defocus_u_a"] + fit["defocus_v_a"])
        note("warning", f"{len(weak)} CTF fit(s) found another defocus that fits almost as well (e.g. {name}: "
                        f"{mean_a:.0f} Å, but {fit['defocus_runner_up_a']:.0f} Å is within Δχ² "
                        f"{fit['defocus_margin_chi2']:.1f}): the Thon rings are near the noise and the defocus may be "
                        "wrong (more dose or a larger field would tell; see the figure)"
                        + ("; a pixel size of exactly 1 Å is often a header's placeholder: check it, or give "
                           "--pixel-size" if placeholder else ""))


def register(app: typer.Typer) -> None:
    @app.command("fit-ctf")
    def fit_ctf(
        inputs: list[Path] = typer.Argument(..., help="micrographs or tilt-series stacks (MRC, .gz ok), or a STAR "
                                                      "file of particle images (grouped by rlnMicrographName)"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder (ctf.json, ctf.star, figures)"),
        pixel_size: float | None = typer.Option(None, help="pixel size in Å (default: the MRC header)"),
        voltage: float = typer.Option(300.0, help="acceleration voltage (kV)"),
        cs: float = typer.Option(2.7, help="spherical aberration (mm)"),
        amplitude_contrast: float = typer.Option(0.07, help="amplitude contrast (fraction)"),
        phase_shift: bool = typer.Option(False, help="also fit a phase-plate phase shift"),
        tile: int | None = typer.Option(None, help="tile size for the averaged spectrum (px; default 512, or the "
                                                   "image's largest power of two when smaller)"),
        band: str | None = typer.Option(None, help="fit band 'low,high' in Å (default 30,5 within 0.06–0.42 /px)"),
        defocus_range: str = typer.Option("0.2,8", help="mean-defocus search range 'low,high' in µm"),
        max_astigmatism: float = typer.Option(0.5, help="largest astigmatism searched, U − V (µm)"),
        tilts: Path | None = typer.Option(None, help="tilt angles (.tlt) of a stack (default: .tlt or tilts.star "
                                                     "beside it)"),
        tilt_axis: float | None = typer.Option(None, help="tilt-axis angle (°; default: recorded beside the stack, "
                                                          "else 0)"),
        stack: Path | None = typer.Option(None, help="the image stack a STAR file's rlnImageName refers to"),
        plots: str = typer.Option("first", help="Thon-ring figures: all, first or none"),
        bootstrap: int = typer.Option(8, help="tile resamples for the uncertainties (0: none)"),
        overwrite: bool = typer.Option(False, help="replace an existing output folder"),
    ):
        """Fit defocus U/V, astigmatism angle (RELION conventions) and optionally a phase shift to each
        micrograph or tilt; write ctf.json, a RELION ctf.star and Thon-ring figures into OUT."""
        from ..calibrate.ctf_run import run_fit_ctf
        from ..learn.ctf_fit import PIXEL_SIZE_RANGE_A

        try:
            lo, hi = (float(v) for v in defocus_range.split(","))
        except ValueError:
            fail("--defocus-range: give 'low,high' in µm, e.g. 0.2,8")
        try:
            check_pixel_size(pixel_size, range_a=PIXEL_SIZE_RANGE_A)
            with progress("fit-ctf", "fits") as update:
                report = run_fit_ctf(list(inputs), out, pixel_size_a=pixel_size, stack=stack, tilts=tilts,
                                     tilt_axis_deg=tilt_axis, overwrite=overwrite,
                                     overwrite_hint="pass --overwrite", plots=plots,
                                     progress=lambda d, i, n: update(i, n, d), voltage_kv=voltage, cs_mm=cs,
                                     amplitude_contrast=amplitude_contrast, fit_phase_shift=phase_shift,
                                     tile_px=tile, band_a=_band(band), defocus_range_um=(lo, hi),
                                     max_astigmatism_um=max_astigmatism, bootstrap=bootstrap)
        except DifftemError as exc:
            fail(exc)
        for row in report["fits"][:20]:
            ref = (f", reference {row['reference_defocus_mean_a']:.0f} Å ({row['defocus_error_percent']:+.1f} %)"
                   if "reference_defocus_mean_a" in row else "")
            say(f"{row['name']}: U {row['defocus_u_a']:.0f} Å, V {row['defocus_v_a']:.0f} Å, angle "
                f"{row['defocus_angle_deg']:.1f}°, fit to {row['fit_resolution_a']:.1f} Å{ref}")
        if len(report["fits"]) > 20:
            say(f"... {len(report['fits']) - 20} more in ctf.json")
        _warn_weak_fits([(r["name"], r) for r in report["fits"]])
        for line in report.get("notes", []):
            note("note", line)
        say(f"wrote {', '.join(report['outputs'][:6])}{' ...' if len(report['outputs']) > 6 else ''} to {out}")

    @app.command("calibrate")
    def calibrate(
        inputs: list[Path] = typer.Argument(..., help="real micrographs (MRC, .gz ok) in detector units"),
        out: Path = typer.Option(..., "--out", "-o", help="output folder (calibrated.yaml, report PNG, JSON)"),
        pixel_size: float | None = typer.Option(None, help="pixel size in Å (default: the MRC header)"),
        voltage: float = typer.Option(300.0, help="acceleration voltage (kV)"),
        cs: float = typer.Option(2.7, help="spherical aberration (mm)"),
        dqe: float = typer.Option(0.8, help="detector DQE at zero frequency (the noise fixes gain/DQE only)"),
        dose: float | None = typer.Option(None, help="nominal dose (e/Å²): with it the ice thickness is measured "
                                                     "from the transmitted counts"),
        ice_thickness: float | None = typer.Option(None, help="ice thickness (nm) when no nominal dose is given "
                                                              "(default 50)"),
        energy_filter: bool = typer.Option(False, help="the data were taken through an energy filter (inelastic "
                                                       "electrons removed)"),
        particles: list[str] = typer.Option(None, help="particles in the calibrated config, STRUCTURE:COUNT "
                                                       "(PDB/mmCIF path, random copies); repeatable"),
        mtf: str | None = typer.Option(None, help="the camera's MTF (RELION STAR or 'a,b,c,alpha,beta'); default: "
                                                  "its shape fitted to the noise"),
        field: int = typer.Option(1024, help="side of the simulated field (px) compared with the data"),
        crop: int = typer.Option(128, help="crop side for the comparison (px)"),
        seed: int = typer.Option(0, help="random seed of the simulation"),
        overwrite: bool = typer.Option(False, help="replace an existing output folder"),
    ):
        """Fit CTF, detector, dose and ice to real micrographs; write calibrated.yaml (a config that reproduces
        them), a report (real vs simulated spectra, Thon rings, histograms, crops) and a likeness score."""
        from ..calibrate.run import run_calibrate
        from ..learn.ctf_fit import PIXEL_SIZE_RANGE_A
        from ..learn.mtf_run import parse_reference

        entries = []
        for text in particles or []:
            structure, _, count = text.rpartition(":")
            if not structure or not count.isdigit():
                fail(f"--particles {text!r}: give STRUCTURE:COUNT, e.g. 5a1a_betagal.cif.gz:20")
            entries.append({"structure": str(Path(structure).resolve()) if not structure.startswith("builtin:")
                            else structure, "random": {"count": int(count)}})
        try:
            check_pixel_size(pixel_size, range_a=PIXEL_SIZE_RANGE_A)
            report = run_calibrate(list(inputs), out, pixel_size_a=pixel_size, dqe=dqe, dose_e_per_a2=dose,
                                   mtf=parse_reference(mtf, "mtf"),
                                   ice_thickness_nm=ice_thickness, energy_filter=energy_filter,
                                   particles=entries, field_px=field, crop_px=crop, seed=seed,
                                   overwrite=overwrite, overwrite_hint="pass --overwrite",
                                   log=lambda s: note("step", s), voltage_kv=voltage,
                                   cs_mm=cs, bootstrap=4)
        except DifftemError as exc:
            fail(exc)
        _warn_weak_fits([(rec["name"], rec["ctf"]) for rec in report["micrographs"]])
        _warn_records(report["micrographs"])
        for rec in report["micrographs"]:
            b, c = rec["likeness"]["bands"], rec["likeness"]["classifier"]
            say(f"{rec['name']}: defocus {rec['ctf']['defocus_u_a']:.0f}/{rec['ctf']['defocus_v_a']:.0f} Å, gain "
                f"{rec['detector']['gain_units_per_e']:.4g} units/e (DQE {dqe}), dose {rec['dose_e_per_a2']:.1f} e/Å², "
                f"ice {rec['ice']['thickness_nm']:.0f} nm; spectra: worst band {b['worst_ratio']:.3f} at "
                f"{b['worst_band_per_px']:.3f}/px; classifier accuracy {c['accuracy']:.2f}")
        say(f"wrote calibrated config(s), report(s) and calibration.json to {out}")
