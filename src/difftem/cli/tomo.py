"""`difftem reconstruct`, `difftem render` and `difftem score` (registered by difftem.cli)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.errors import DifftemError
from ._pixel_size import check_pixel_size


def _ui():
    from ._console import console, fail  # late: difftem.cli imports this module while it loads

    return fail, console


def say(msg: str) -> None:
    from ._console import say as _say

    _say(msg)


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.stem + suffix)


def register(app: typer.Typer) -> None:
    _register_reconstruct(app)
    _register_render(app)
    _register_score(app)


def _register_reconstruct(app: typer.Typer) -> None:
    @app.command("reconstruct")
    def reconstruct_cmd(
        tilts: Path = typer.Argument(..., help="tilt series: MRC stack (n_tilts, H, W), pixel size in the header"),
        tlt: Path | None = typer.Option(None, "--tlt", help="tilt angles (deg), one per line in stack order "
                                           "(IMOD .tlt); default: <stem>.tlt, else tilts.star, beside TILTS"),
        out: Path = typer.Option(..., "--out", "-o", help="output volume (MRC, voxel size in the header)"),
        method: str = typer.Option("wbp", help="wbp (weighted back-projection) or sirt"),
        iterations: int = typer.Option(20, help="SIRT iterations"),
        relaxation: float = typer.Option(1.0, help="SIRT relaxation λ in (0, 2)"),
        nonnegative: bool = typer.Option(False, "--nonnegative", help="SIRT: clip iterates at 0"),
        filter: str = typer.Option("ramp", "--filter", help="WBP filter: ramp or sirt-like"),
        sirt_like_iterations: int = typer.Option(10, help="sirt-like filter: SIRT iterations to imitate"),
        apodization: str = typer.Option("none", help="WBP window: none, cosine, hamming or shepp-logan"),
        cutoff: float | None = typer.Option(None, help="WBP radial cutoff (fraction of Nyquist), Gaussian roll-off"),
        falloff: float = typer.Option(0.05, help="σ of the roll-off past --cutoff (fraction of Nyquist)"),
        tilt_axis_deg: float | None = typer.Option(
            None, "--tilt-axis-deg", "--tilt-axis", help="tilt-axis angle α (deg): axis = +y turned by α about +z; "
            "default: from tilts.star or run.json beside TILTS, else 0"),
        thickness_vox: int | None = typer.Option(None, help="volume thickness in voxels (after binning)"),
        thickness_a: float | None = typer.Option(None, help="volume thickness in Å (or --thickness-vox)"),
        binning: int = typer.Option(1, help="average the stack over binning × binning pixels first"),
        pixel_size: float | None = typer.Option(None, help="pixel size (Å); overrides the MRC header"),
        invert: bool = typer.Option(False, "--invert", help="negate the stack first (protein dark → bright)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
        backend: str = typer.Option("torch", help="torch, or astra (optional package, for comparison)"),
        reference: Path | None = typer.Option(None, help="ground-truth volume (MRC, same grid): FSC/NCC + plot"),
        metadata: Path | None = typer.Option(
            None, "--metadata", help="file describing the series: RELION-5 tomograms.star or tilt-series STAR, a "
            "RELION STAR of particle tilt images (rlnGroupName), SerialEM .mdoc, IMOD .xf, run.json; default: the "
            "simulation's run.json/tilts.star, <stack>.mdoc or <stem>.xf + .tlt beside TILTS"),
        group: str | None = typer.Option(None, help="particle tilt-image STAR: the rlnGroupName (or its index) to "
                                                    "reconstruct (default: the first)"),
        ctf_correction: str = typer.Option(
            "auto", help="auto (phase-flip when per-tilt defocus is known), none, phase-flip or wiener"),
        wiener_snr: float = typer.Option(10.0, help="wiener: the SNR constant (C / (C² + 1/SNR))"),
        defocus_tolerance: float | None = typer.Option(
            None, help="CTF correction: largest defocus error (Å) allowed within a strip (default p²/λ)"),
        xf: Path | None = typer.Option(None, "--xf", help="IMOD .xf: align each image with its transform first"),
    ):
        """Reconstruct TILTS into a volume (WBP or SIRT): OUT, a .json record beside it, with --reference a FSC plot."""
        fail, console = _ui()
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from ..io.files import check_output_file, write_json, write_volume
        from ..tomo.reconstruct import reconstruct
        from ._console import note

        try:
            check_output_file(out)  # before the work, not after it
            stack, px, angles, tlt_source, axis, axis_source, meta = _series_inputs(
                tilts, tlt, tilt_axis_deg, pixel_size, metadata, group, note)
            thickness_a = _thickness_a(meta, thickness_vox, thickness_a, note)
            ref = None
            if reference is not None:
                ref, ref_px = _read_mrc(reference, "--reference", None, required=False, missing=REFERENCE_MISSING)
            if invert:  # every step runs image by image as reconstruct bins the stack (tomo.stack.TiltStack)
                stack = stack.map(lambda i, image: -image)
            if xf is not None:
                from ..io.xf import read_xf
                from ..tomo.xf import xf_step
                stack = stack.map(xf_step(*read_xf(xf), len(stack)))
            stack, ctf_record = _ctf_correct(stack, angles, meta, px, axis, ctf_correction, wiener_snr,
                                             defocus_tolerance, note)
            with Progress(TextColumn(f"[bold]{method}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), console=console, transient=True) as bar:
                task = bar.add_task(method, total=iterations if method == "sirt" else None)
                result = reconstruct(stack, angles, method=method, pixel_size_a=px, tilt_axis_deg=axis,
                                     thickness_px=thickness_vox, thickness_a=thickness_a, binning=binning,
                                     filter=filter, apodization=apodization, cutoff=cutoff, falloff=falloff,
                                     sirt_like_iterations=sirt_like_iterations, iterations=iterations,
                                     relaxation=relaxation, nonnegative=nonnegative, device=device, backend=backend,
                                     progress=lambda done, total: bar.update(task, completed=done, total=total))
            volume = result.volume.detach().cpu().numpy()
            if thickness_vox is None and thickness_a is None:  # neither given nor in the metadata
                z = volume.shape[-3]
                note("note", f"volume thickness {z} voxels ({z * result.voxel_size_a:.0f} Å), the default: a quarter "
                             "of the image width; give --thickness-a or --thickness-vox to hold the specimen")
            record = {"input": str(tilts), "tlt": str(tlt_source), "tilt_axis_source": axis_source, "invert": invert,
                      "ctf_correction": ctf_record, "xf": str(xf) if xf is not None else None,
                      "metadata_sources": meta.sources if meta is not None else {}, **result.info}
            outputs = [out, _sidecar(out, ".json")]
            plot = None
            if ref is not None:
                scores, plot = _score_against(volume, ref, result.voxel_size_a, ref_px, reference,
                                              _sidecar(out, "_fsc.png"), f"{method} vs {reference.name}")
                record["scores"] = scores
                outputs.append(plot[0])
        except DifftemError as exc:
            fail(exc)
        try:
            write_volume(out, volume, result.voxel_size_a)
            if plot is not None:
                plot[1]()
            write_json(outputs[1], record)
        except DifftemError as exc:
            fail(exc)
        msg = (f"{method}: volume {tuple(volume.shape)} at {result.voxel_size_a:g} Å/voxel in "
               f"{result.info['timings']['reconstruct_s']:.1f} s on {result.info['device']}")
        if result.residuals:
            msg += f", residual {result.residuals[0]:.3g} → {result.residuals[-1]:.3g}"
        if ref is not None:
            s = record["scores"]
            msg += f"; NCC {s['ncc']:.3f}, FSC 0.143: {_res(s['fsc']['resolution_0143_a'], result.voxel_size_a)}"
        say(msg)
        say(f"wrote {', '.join(str(p) for p in outputs)}")


def _register_render(app: typer.Typer) -> None:
    @app.command("render")
    def render_cmd(
        volume: Path = typer.Argument(..., help="volume (MRC, Z sections)"),
        out: Path = typer.Option(..., "--out", "-o", help="output PNG"),
        azimuth_deg: float = typer.Option(30.0, help="view: turn about the volume's y axis (deg, tilt sense)"),
        elevation_deg: float = typer.Option(20.0, help="view: then turn about x (deg)"),
        threshold: float | None = typer.Option(None, help="transfer function: transparent at or below this value"),
        threshold_percentile: float = typer.Option(90.0, help="threshold percentile if no --threshold"),
        top_percentile: float = typer.Option(99.9, help="values above this percentile get full opacity and colour"),
        opacity: float = typer.Option(0.1, help="alpha of one voxel length at full density, in (0, 1)"),
        colormap: str = typer.Option("inferno", help="matplotlib colour map"),
        invert: bool = typer.Option(False, "--invert", help="negate the volume first (protein dark in the data)"),
        mode: str = typer.Option("ea", help="ea (emission–absorption) or mip (maximum intensity)"),
        size: int = typer.Option(256, help="render size (px, square)"),
        layout: str = typer.Option("panel", help="panel (render + XY/XZ/YZ central sections, 1200×800 px) or "
                                                 "render (the render alone, size × size px)"),
        turntable: int = typer.Option(0, help="also write a GIF of this many views once round (0: none)"),
        gif: Path | None = typer.Option(None, help="turntable GIF path (default: OUT with .gif)"),
        pixel_size: float | None = typer.Option(None, help="voxel size (Å); replaces the MRC header's (a note says "
                                                          "so)"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
    ):
        """Render VOL (emission–absorption ray casting) into a PNG panel with central orthoslices; optional GIF."""
        fail, console = _ui()
        import numpy as np
        import torch
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from ..core.device import resolve_device
        from ..io.files import check_output_file
        from ..tomo.errors import TomoError
        from ..tomo.render import render_volume, turntable_frames, write_gif, write_panel_png, write_render_png

        try:
            check_output_file(out, ".png")
            if gif is not None:
                check_output_file(gif, ".gif")
            if layout not in ("panel", "render"):
                raise TomoError(f"--layout: unknown layout {layout!r}; choose panel or render")
            if turntable < 0 or turntable == 1:
                raise TomoError(f"--turntable: {turntable} frames; give 0 (none) or at least 2")
            data, vx = _read_mrc(volume, "volume", pixel_size, required=False)  # None: axes in voxels
            vol = torch.as_tensor(np.ascontiguousarray(data)).to(resolve_device(device, field="--device"))
            kw = dict(elevation_deg=elevation_deg, size_px=size, threshold=threshold,
                      threshold_percentile=threshold_percentile, top_percentile=top_percentile, opacity=opacity,
                      colormap=colormap, invert=invert, mode=mode)
            with torch.no_grad():
                image = render_volume(vol, azimuth_deg=azimuth_deg, **kw)
                frames = []
                if turntable:
                    with Progress(TextColumn("[bold]turntable"), BarColumn(), TimeElapsedColumn(), console=console,
                                  transient=True) as bar:
                        bar.add_task("turntable", total=None)
                        frames = turntable_frames(vol, turntable, azimuth_deg=azimuth_deg, **kw)
        except DifftemError as exc:
            fail(exc)
        written = []
        try:
            if layout == "panel":
                title = f"{volume.name}: azimuth {azimuth_deg:g}°, elevation {elevation_deg:g}°, {mode}"
                written.append(write_panel_png(out, vol, image, vx, title, invert=invert))
            else:
                written.append(write_render_png(out, image))
            if frames:
                written.append(write_gif(gif or out.with_suffix(".gif"), frames))
        except DifftemError as exc:
            fail(exc)
        say(f"wrote {', '.join(str(p) for p in written)}")


def _register_score(app: typer.Typer) -> None:
    @app.command("score")
    def score_cmd(
        volume: Path = typer.Argument(..., help="volume to score (MRC)"),
        reference: Path = typer.Argument(..., help="reference / ground-truth volume on the same grid (MRC)"),
        out: Path = typer.Option(..., "--out", "-o", help="FSC plot (PNG); the numbers go beside it as .json"),
        pixel_size: float | None = typer.Option(None, help="voxel size (Å); replaces the MRC headers' (a note says "
                                                          "so)"),
    ):
        """FSC (curve, 0.143 / 0.5 resolutions) and NCC of VOLUME against REFERENCE; writes a PNG and a JSON."""
        fail, console = _ui()
        from ..io.files import check_output_file, write_json

        try:
            check_output_file(out, ".png")  # the numbers go beside it as .json
            vol, vx = _read_mrc(volume, "volume", pixel_size)
            ref, rx = _read_mrc(reference, "reference", pixel_size, required=False, missing=REFERENCE_MISSING)
            scores, plot = _score_against(vol, ref, vx, rx, reference, out, f"{volume.name} vs {reference.name}",
                                          "reference")
            plot[1]()
            json_path = write_json(_sidecar(out, ".json"), {"volume": str(volume), "reference": str(reference),
                                                             **scores})
        except DifftemError as exc:
            fail(exc)
        say(f"NCC {scores['ncc']:.4f}; FSC 0.143: {_res(scores['fsc']['resolution_0143_a'], vx)}, "
            f"0.5: {_res(scores['fsc']['resolution_05_a'], vx)}")
        say(f"wrote {out}, {json_path}")


def _warn_if_image_stack(header: tuple[float, int, int] | None, path: Path, what: str) -> None:
    """A warning when a file read as a volume is marked an image stack (mz = 1 over nz > 1 sections, as difftem and
    RELION write particle and tilt stacks): it is drawn or scored as a volume of images piled up."""
    from ._console import note

    if header and header[1] == 1 and header[2] > 1:
        note("warning", f"{what.lstrip('-')}: {path.name}'s header marks an image stack (mz = 1), not a volume: its "
                        "images are taken as the sections of a volume (a tilt series: reconstruct it first)")


def _mrc_header(path: Path) -> tuple[float, int, int] | None:
    """(x voxel size, mz, nz) of an MRC header; None when unreadable (the read that follows reports why)."""
    import mrcfile

    try:
        with mrcfile.open(path, header_only=True, permissive=True) as m:
            return float(m.voxel_size.x), int(m.header.mz), int(m.header.nz)
    except (OSError, ValueError, EOFError):
        return None


#: the fixes for a missing volume and a missing reference volume
VOLUME_MISSING = "give the path of a volume (MRC, Z sections), e.g. one difftem reconstruct wrote"
REFERENCE_MISSING = "give the path of a reference volume (MRC) on the same grid as the volume"


def _read_mrc(path: Path, what: str, pixel_size: float | None, required: bool = True,
              missing: str = VOLUME_MISSING):
    """:func:`difftem.io.tlt.read_volume_mrc` with the --pixel-size option named in its errors (``missing``: the fix
    for a missing file)."""
    from ..core.errors import FormatError
    from ..io.tlt import MissingPixelSizeError, read_volume_mrc

    header = _mrc_header(path)
    check_pixel_size(pixel_size, header, path)
    _warn_if_image_stack(header, path, what)
    try:
        return read_volume_mrc(path, what, pixel_size, required=required, missing=missing)
    except MissingPixelSizeError as exc:
        raise FormatError(f"{exc} (--pixel-size)") from None


#: the fix for a TILTS that is not there
TILTS_MISSING = ("give the tilt series' MRC stack (n_tilts, H, W): difftem simulate writes tilt_series.mrc into its "
                 "--out folder for a config with tilt_series")


def _open_stack(path: Path, what: str, pixel_size: float | None, required: bool = True):
    """(:class:`~difftem.tomo.stack.TiltStack` of the MRC stack, its images read one at a time, pixel size): the
    checks and errors of :func:`_read_mrc`."""
    from ..core.errors import FormatError
    from ..io.mrc_stack import open_stack_mrc
    from ..io.tlt import MissingPixelSizeError
    from ..tomo.stack import TiltStack

    check_pixel_size(pixel_size, _mrc_header(path) if pixel_size is not None else None, path)
    try:
        images, px = open_stack_mrc(path, what, pixel_size, required=required, missing=TILTS_MISSING)
    except MissingPixelSizeError as exc:
        raise FormatError(f"{exc} (--pixel-size)") from None
    return TiltStack.of(images), px


def _thickness_a(meta, thickness_vox: int | None, thickness_a: float | None, note) -> float | None:
    """--thickness-a, or the metadata's thickness when neither thickness option is given (with a note)."""
    if thickness_vox is None and thickness_a is None and meta is not None and meta.thickness_a:
        note("note", f"volume thickness {meta.thickness_a:.0f} Å from {meta.sources.get('thickness', 'metadata')} "
                     "(no --thickness-a/--thickness-vox given)")
        return meta.thickness_a
    return thickness_a


#: files that may describe a series (``--metadata``): RELION STAR, SerialEM .mdoc, IMOD .xf, a simulation's run.json
METADATA_SUFFIXES = (".star", ".mdoc", ".xf", ".json")


def _metadata_hint(tilts: Path) -> str:
    """", or --metadata with one of the files beside it: …" naming (up to three of) the files beside ``tilts`` that
    may describe it; empty when there are none (or the folder cannot be listed)."""
    try:
        found = sorted(p.name for p in tilts.parent.iterdir() if p.suffix.lower() in METADATA_SUFFIXES and p.is_file())
    except OSError:
        return ""
    if not found:
        return ""
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return f", or --metadata with the file that describes it ({', '.join(found[:3])}{more} lie beside it)"


def _tilt_geometry(tilts: Path, tlt: Path | None, tilt_axis_deg: float | None, note):
    """(angles, where they came from, tilt axis in degrees, where it came from): the options when given, else the
    files a simulated series has beside its stack (``note`` says which were used)."""
    from ..core.errors import FormatError
    from ..io.tlt import angles_beside, read_tlt, tilt_axis_beside

    if tlt is not None:
        try:
            angles, tlt_source = read_tlt(tlt), tlt
        except FormatError as exc:
            raise FormatError(f"--tlt: {exc}") from None
    else:
        try:
            found = angles_beside(tilts)
        except FormatError as exc:
            raise FormatError(f"{exc}; or pass --tlt") from None
        if found is None:
            raise FormatError(f"--tlt: no tilt angles given, and neither {tilts.with_suffix('.tlt').name} nor "
                              f"tilts.star lies beside {tilts}; pass --tlt ANGLES.tlt{_metadata_hint(tilts)}")
        angles, tlt_source = found
        note("note", f"tilt angles from {tlt_source} (no --tlt given)")
    if tilt_axis_deg is not None:
        return angles, tlt_source, float(tilt_axis_deg), "--tilt-axis-deg"
    try:
        found = tilt_axis_beside(tilts)
    except FormatError as exc:
        raise FormatError(f"{exc}; or pass --tilt-axis-deg") from None
    if found is None:
        return angles, tlt_source, 0.0, "default"
    note("note", f"tilt axis {found[0]:g}° from {found[1]} (no --tilt-axis-deg given)")
    return angles, tlt_source, found[0], str(found[1])


def _series_inputs(tilts: Path, tlt: Path | None, tilt_axis_deg: float | None, pixel_size: float | None,
                   metadata: Path | None, group, note):
    """(stack, pixel size, angles, their source, tilt axis, its source, SeriesMetadata or None): the options first,
    then the files describing the series (``--metadata``, else those beside TILTS). The stack is a
    :class:`~difftem.tomo.stack.TiltStack`: its images are read (and shifted) one at a time."""
    from ..core.errors import FormatError
    from ..tomo.series import find_metadata, shift_images

    if metadata is None and tlt is not None:
        return (*_read_stack(tilts, pixel_size), *_tilt_geometry(tilts, tlt, tilt_axis_deg, note), None)
    try:
        meta = find_metadata(tilts, metadata, group)
    except FormatError as exc:
        raise FormatError(f"{'--metadata: ' if metadata else ''}{exc}") from None
    if meta is None:
        return (*_read_stack(tilts, pixel_size), *_tilt_geometry(tilts, tlt, tilt_axis_deg, note), None)
    stack, px = _stack_for(tilts, meta, metadata, pixel_size, note)
    angles, angles_source = meta.angles_deg, meta.sources.get("angles")
    if tlt is not None:  # --tlt wins over the metadata's angles
        angles, angles_source = _tilt_geometry(tilts, tlt, 0.0, note)[:2]
    if len(angles) != stack.shape[0]:
        raise FormatError(f"{angles_source}: {len(angles)} tilt angles for a stack of {stack.shape[0]} images; one "
                          "per image, in stack order")
    if tlt is None:
        note("note", f"tilt angles from {angles_source}")
    axis, axis_source = 0.0, "default"
    if tilt_axis_deg is not None:
        axis, axis_source = float(tilt_axis_deg), "--tilt-axis-deg"
    elif meta.tilt_axis_deg is not None:
        axis, axis_source = float(meta.tilt_axis_deg), meta.sources.get("tilt_axis", "metadata")
        note("note", f"tilt axis {axis:g}° from {axis_source} (no --tilt-axis-deg given)")
    if meta.shifts_px is not None:
        shifts = meta.shifts_px
        stack = stack.map(lambda i, image: shift_images(image[None], shifts[i:i + 1])[0])
        note("note", f"per-tilt shifts applied from {meta.sources.get('tilt_axis')}")
    return stack, px, angles, angles_source, axis, axis_source, meta


def _stack_for(tilts: Path, meta, metadata: Path | None, pixel_size: float | None, note):
    """(stack, pixel size) of a series the metadata describes: a particle's tilt images are picked out of a
    particle stack (read permissively) at the STAR's pixel size unless --pixel-size."""
    from ..core.errors import FormatError
    from ..tomo.series import read_particle_stack
    from ..tomo.stack import TiltStack

    if meta.image_indices is None:
        stack, px = _open_stack(tilts, "tilt series", pixel_size, required=meta.pixel_size_a is None)
        if px is None:
            px = meta.pixel_size_a
            note("note", f"pixel size {px:g} Å from {metadata or 'the metadata'} (the MRC header has none)")
        return stack, px
    stack, _ = read_particle_stack(tilts)
    px = pixel_size if pixel_size is not None else meta.pixel_size_a
    if not px:
        raise FormatError(f"--pixel-size: {metadata} gives no pixel size for {tilts}; pass --pixel-size")
    if meta.image_indices.max() >= stack.shape[0]:
        raise FormatError(f"--metadata: {metadata} names image {int(meta.image_indices.max()) + 1} but {tilts} "
                          f"holds {stack.shape[0]}")
    note("note", f"group {meta.sources.get('group')}: {len(meta.image_indices)} images of {tilts}; pixel size "
                 f"{px:g} Å (pass --pixel-size for binned images)")
    return TiltStack.of(stack, meta.image_indices), px


def _read_stack(tilts: Path, pixel_size: float | None):
    return _open_stack(tilts, "tilt series", pixel_size)


def _ctf_correct(stack, angles, meta, px: float, axis: float, mode: str, wiener_snr: float,
                 tolerance: float | None, note):
    """The stack CTF-corrected as ``mode`` asks (auto: phase flip when the metadata gives per-tilt defocus), one
    image at a time as the stack is read."""
    from ..tomo.ctf import ctf_corrector
    from ..tomo.errors import TomoError

    choices = {"auto": "auto", "none": "none", "phase-flip": "phase_flip", "phase_flip": "phase_flip",
               "wiener": "wiener"}
    if mode not in choices:
        raise TomoError(f"--ctf-correction: unknown mode {mode!r}; choose auto, none, phase-flip or wiener")
    mode = choices[mode]
    ctf = meta.ctf if meta is not None else None
    if mode == "auto":
        mode = "phase_flip" if ctf is not None else "none"
    if mode == "none":
        return stack, {"mode": "none"}
    if ctf is None:
        raise TomoError("--ctf-correction: no per-tilt defocus known for this series; give --metadata (RELION-5 "
                        "tilt-series STAR, .mdoc, run.json) or --ctf-correction none")
    correct, record = ctf_corrector(stack.shape, angles, ctf, px, tilt_axis_deg=axis, mode=mode,
                                    defocus_tolerance_a=tolerance, wiener_snr=wiener_snr)
    note("note", f"CTF correction ({mode.replace('_', ' ')}, {max(record['levels_per_tilt'])} defocus strips at most, "
                 f"tolerance {record['defocus_tolerance_a']:.0f} Å) from {meta.sources.get('ctf')}")
    return stack.map(correct), {**record, "source": meta.sources.get("ctf"), **ctf.as_dict()}


def _res(value: float | None, voxel_a: float) -> str:
    return f"{value:.2f} Å" if value else f"beyond Nyquist ({2 * voxel_a:.2f} Å)"


def _score_against(vol, ref, voxel_a: float, ref_voxel_a: float | None, ref_path: Path, plot_path: Path, title: str,
                   what: str = "--reference"):
    """Scores of ``vol`` against ``ref`` and a deferred plot writer (outputs are written after all checks)."""
    import torch

    from ..tomo.errors import TomoError
    from ..tomo.scores import fsc, ncc, plot_fsc

    if ref_voxel_a is not None and abs(ref_voxel_a - voxel_a) > 1e-3 * voxel_a:  # None: header without a size
        raise TomoError(f"{what}: {ref_path} has voxel size {ref_voxel_a:g} Å but the volume has {voxel_a:g} Å; "
                        f"resample one onto the other's grid")
    if tuple(ref.shape) != tuple(vol.shape):
        raise TomoError(f"{what}: {ref_path} has shape {tuple(ref.shape)} but the volume is {tuple(vol.shape)} "
                        f"(Z, Y, X); match the reconstruction's size (thickness, binning) to the reference")
    a, b = torch.as_tensor(vol, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    curve = fsc(a, b, voxel_a)
    scores = {"ncc": float(ncc(a, b)), "fsc": curve.as_dict()}
    return scores, (plot_path, lambda: plot_fsc(plot_path, {"volume": curve}, title))
