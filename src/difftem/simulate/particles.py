"""Single-particle stacks from a simulated micrograph: boxes cut at the ground-truth centres, written as an ``.mrcs``
stack with a RELION 3.1+/5 particle STAR file and a cryoSPARC ``.cs`` file.

Conventions (what RELION and cryoSPARC read from these files):

- Box: centred on the micrograph pixel nearest the true centre (``rlnCoordinateX/Y``, integers); box pixel
  ``[B//2, B//2]`` is that micrograph pixel, as RELION's own extraction does.
- Origin: ``rlnOriginXAngst/YAngst`` = box centre − true centre (Å), so the true centre in the micrograph is
  rlnCoordinate − rlnOrigin / pixel (RELION's sign: the image is shifted by +origin to centre the particle).
- Angles: RELION's (rot, tilt, psi) of the copy's pose (RELION's matrix A = the pose, type frame → scene).
- Defocus at the particle's depth: the config's defocus is at the ice mid-plane (z = 0) and z points along the beam,
  so a particle at depth z sees defocus + z (Å; deeper = more underfocus). U − V is the astigmatism, the angle
  is the direction of U from the image x axis (RELION's and difftem's convention).
- Amplitude contrast: the atoms' absorption ratio κ (imaginary / real potential) as RELION's Q = κ / √(1 + κ²).
- Contrast: ``invert`` (default) makes protein white, as RELION and cryoSPARC expect of extracted particles;
  RELION's CTF then multiplies the projected density with its own sign (positive at low frequency).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import SimulationConfig
from ..core.errors import ArgumentError, ConfigError, FormatError, OutputError
from ..core.fft import fft2, fftshift, ifft2
from ..core.rotations import relion_matrix, rotation_vector
from ..forward.potential import ice_absorption_potential_v
from ..io.cryosparc import write_cs
from ..io.files import write_mrc
from ..io.relion import image_name, write_relion_particles
from ..io.star import read_star
from .setup import prepare_config

#: The particle file formats :func:`write_particles` writes (a comma list on the command line).
PARTICLE_FORMATS = ("relion", "cryosparc")


@dataclass
class ParticleStack:
    """Boxed particles (``images``: (N, B, B) float32) with what RELION/cryoSPARC need and the in-memory truth."""

    images: torch.Tensor
    pixel_size_a: float  # of the images (after downsampling)
    micrograph_pixel_size_a: float
    micrograph_name: str
    micrograph_shape_px: tuple[int, int]  # (H, W)
    optics: dict  # one RELION optics row
    coordinates_px: np.ndarray  # (N, 2) integer box centres in the micrograph (x, y)
    origins_a: np.ndarray  # (N, 2) RELION rlnOriginX/YAngst: box centre − true centre (Å)
    rotations: np.ndarray  # (N, 3, 3) poses, type frame → scene (RELION's A)
    depths_a: np.ndarray  # (N,) z of each centre (Å, from the ice mid-plane, along the beam)
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    defocus_angle_deg: np.ndarray
    random_subset: np.ndarray  # (N,) 1 or 2
    source_index: np.ndarray  # (N,) row of each particle in the run's ground truth
    types: list[str] = field(default_factory=list)
    invert: bool = True
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def relion_rows(self, stack_file: str) -> list[dict]:
        """One RELION ``data_particles`` row per image (``stack_file``: the .mrcs name as RELION should open it)."""
        angles = relion_angles_of(self.rotations)
        phase = self.optics.get("_phase_shift_deg", 0.0)
        return [{"rlnImageName": image_name(i, stack_file), "rlnMicrographName": self.micrograph_name,
                 "rlnCoordinateX": float(self.coordinates_px[i, 0]), "rlnCoordinateY": float(self.coordinates_px[i, 1]),
                 "rlnAngleRot": float(angles[i, 0]), "rlnAngleTilt": float(angles[i, 1]),
                 "rlnAnglePsi": float(angles[i, 2]),
                 "rlnOriginXAngst": float(self.origins_a[i, 0]), "rlnOriginYAngst": float(self.origins_a[i, 1]),
                 "rlnDefocusU": float(self.defocus_u_a[i]), "rlnDefocusV": float(self.defocus_v_a[i]),
                 "rlnDefocusAngle": float(self.defocus_angle_deg[i]), "rlnPhaseShift": float(phase),
                 "rlnCtfBFactor": 0.0, "rlnCtfScalefactor": 1.0, "rlnOpticsGroup": 1,
                 "rlnRandomSubset": int(self.random_subset[i])} for i in range(len(self))]

    def optics_row(self) -> dict:
        return {k: v for k, v in self.optics.items() if not k.startswith("_")}


def relion_angles_of(rotations: np.ndarray) -> np.ndarray:
    from ..core.rotations import relion_angles

    return relion_angles(rotations) if len(rotations) else np.zeros((0, 3))


def amplitude_contrast(config: SimulationConfig) -> float:
    """RELION's amplitude contrast Q of the simulated atoms: κ / √(1 + κ²), κ their imaginary / real potential
    (``sample.absorption_ratio``, or the ice's ratio at the beam's voltage, as the simulator uses)."""
    s = config.sample
    kappa = s.absorption_ratio
    if kappa is None:
        ice_im = s.ice_absorption_potential_v if s.ice_absorption_potential_v is not None else \
            ice_absorption_potential_v(config.beam.voltage_kv)
        kappa = ice_im / s.ice_mean_potential_v if s.ice_mean_potential_v else 0.0
    return float(kappa / math.sqrt(1 + kappa * kappa))


def particle_defocus_a(optics, depths_a) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RELION defocus U, V (Å) and angle (deg) of particles at ``depths_a`` (z from the ice mid-plane, Å, along the
    beam) for the config's ``optics`` section: the mid-plane defocus plus z, U − V the astigmatism."""
    z = np.asarray(depths_a, dtype=np.float64)
    mean = optics.defocus_um * 1e4 + z
    half = optics.astigmatism_um * 1e4 / 2
    return mean + half, mean - half, np.full_like(z, float(optics.astigmatism_angle_deg))


def box_positions(positions_a: np.ndarray, shape_px: tuple[int, int], pixel_size_a: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(integer box centres (N, 2) in micrograph pixels (x, y), origins (N, 2) Å = box centre − true centre) of
    particles at scene positions (x, y in Å; the scene origin is pixel [H//2, W//2])."""
    ny, nx = shape_px
    xy = np.asarray(positions_a, dtype=np.float64)[:, :2]
    exact = np.stack([xy[:, 0] / pixel_size_a + nx // 2, xy[:, 1] / pixel_size_a + ny // 2], -1)
    centre = np.floor(exact + 0.5)
    return centre.astype(np.int64), (centre - exact) * pixel_size_a


def cut_boxes(image: torch.Tensor, centres_px: np.ndarray, box_px: int) -> torch.Tensor:
    """(N, B, B) boxes of ``image`` (H, W) with box pixel [B//2, B//2] at each centre (x, y); all inside."""
    offs = torch.arange(box_px, device=image.device) - box_px // 2
    c = torch.as_tensor(centres_px, device=image.device)
    rows = (c[:, 1, None] + offs)[:, :, None]
    cols = (c[:, 0, None] + offs)[:, None, :]
    return image[rows, cols]


def fourier_crop(images: torch.Tensor, box_px: int) -> torch.Tensor:
    """Downsample (N, B, B) images to (N, b, b) by keeping the central b × b Fourier coefficients (the mean
    and the pixel values' scale are kept; b even, b ≤ B)."""
    big = images.shape[-1]
    if box_px == big:
        return images
    spec = fftshift(fft2(images.to(torch.complex64)), dim=(-2, -1))
    lo = big // 2 - box_px // 2
    crop = spec[..., lo:lo + box_px, lo:lo + box_px]
    crop = torch.roll(crop, shifts=(-(box_px // 2), -(box_px // 2)), dims=(-2, -1))  # back to the FFT layout
    return ifft2(crop).real.to(images.dtype) * (box_px / big) ** 2


def background_mask(box_px: int, radius_px: float, device=None) -> torch.Tensor:
    """(B, B) True outside the circle of ``radius_px`` about the box centre: RELION's background ring."""
    r = torch.arange(box_px, device=device, dtype=torch.float64) - box_px // 2
    return (r[:, None] ** 2 + r[None, :] ** 2) > radius_px**2


def normalise_background(images: torch.Tensor, radius_px: float) -> torch.Tensor:
    """RELION's normalisation: each image less its background mean, over its background standard deviation
    (the background: pixels outside ``radius_px`` from the box centre)."""
    mask = background_mask(images.shape[-1], radius_px, images.device)
    bg = images[..., mask]
    mean = bg.mean(-1)[..., None, None]
    std = bg.std(-1)[..., None, None]
    return (images - mean) / torch.where(std > 0, std, torch.ones_like(std))


def extract_particles(image, positions_a: np.ndarray, rotations: np.ndarray, config: SimulationConfig | dict | str,
                      *, box_px: int, pixel_size_a: float | None = None, downsample_px: int | None = None,
                      normalise: bool = True, invert: bool = True, background_radius_px: float | None = None,
                      micrograph_name: str = "micrograph.mrc", types: list[str] | None = None,
                      source_index: np.ndarray | None = None, seed: int = 0) -> ParticleStack:
    """Box the particles at ``positions_a`` ((N, 3) scene Å) with poses ``rotations`` ((N, 3, 3)) out of ``image``
    ((H, W), a micrograph of ``config``). Boxes that leave the image are skipped (a note counts them).

    ``box_px``: box side (even) in micrograph pixels; ``downsample_px``: Fourier-crop each box to this side
    (pixel size × box/downsample); ``normalise``: background mean 0, std 1 outside ``background_radius_px``
    (default 0.75 × half the final box, RELION's default ring); ``invert``: protein white (RELION/cryoSPARC).
    ``seed`` draws the random half-sets (rlnRandomSubset)."""
    config = prepare_config(config)
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
    if image.ndim != 2:
        raise ArgumentError("image", f": shape {tuple(image.shape)}; one micrograph (H, W) expected")
    px = float(pixel_size_a or config.detector.pixel_size_a)
    if not (isinstance(box_px, int) and box_px >= 8 and box_px % 2 == 0 and box_px <= min(image.shape)):
        raise ArgumentError("box_px", f" {box_px}: an even number of pixels, 8 … {min(image.shape)} (the image)")
    out_box = box_px if downsample_px is None else downsample_px
    if not (isinstance(out_box, int) and out_box % 2 == 0 and 8 <= out_box <= box_px):
        raise ArgumentError("downsample_px", f" {downsample_px}: an even number of pixels, 8 … {box_px} (the box)")
    if background_radius_px is not None and not (0 < background_radius_px <= box_px / 2):
        raise ArgumentError("background_radius_px", f" {background_radius_px}: the background lies outside this "
                                                    f"radius (px of the box); give 0 < radius ≤ {box_px // 2} (half "
                                                    "the box), or none for 3/8 of the box")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise ArgumentError("seed", f" {seed}: give a non-negative integer")
    positions_a = np.asarray(positions_a, dtype=np.float64).reshape(-1, 3)
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if not len(positions_a):
        raise ConfigError("no particles to extract: the micrograph's run placed none")
    shape = (int(image.shape[0]), int(image.shape[1]))
    centres, origins = box_positions(positions_a, shape, px)
    half = box_px // 2
    inside = ((centres[:, 0] - half >= 0) & (centres[:, 0] + half <= shape[1])
              & (centres[:, 1] - half >= 0) & (centres[:, 1] + half <= shape[0]))
    notes = []
    if not inside.all():
        notes.append(f"{int((~inside).sum())} of {len(inside)} particles skipped: their {box_px}-pixel box leaves "
                     "the micrograph")
    keep = np.flatnonzero(inside)
    if not len(keep):
        raise ArgumentError("box_px", f" {box_px}: no particle's box lies inside the {shape[1]} x {shape[0]} "
                                      f"micrograph ({len(inside)} particles); use a smaller box")
    boxes = cut_boxes(image, centres[keep], box_px)
    boxes = fourier_crop(boxes, out_box)
    if normalise:
        radius = background_radius_px if background_radius_px is not None else 0.75 * out_box / 2
        boxes = normalise_background(boxes, radius * (1.0 if background_radius_px is None else out_box / box_px))
    if invert:
        boxes = -boxes
    u, v, ang = particle_defocus_a(config.optics, positions_a[keep, 2])
    subset = np.ones(len(keep), np.int64)
    subset[np.random.default_rng(seed).permutation(len(keep))[len(keep) // 2:]] = 2
    out_px = px * box_px / out_box
    optics = {"rlnOpticsGroup": 1, "rlnOpticsGroupName": "opticsGroup1", "rlnVoltage": config.beam.voltage_kv,
              "rlnSphericalAberration": config.optics.cs_mm, "rlnAmplitudeContrast": amplitude_contrast(config),
              "rlnImagePixelSize": out_px, "rlnImageSize": out_box, "rlnImageDimensionality": 2,
              "rlnMicrographOriginalPixelSize": px, "_phase_shift_deg": config.optics.phase_shift_deg}
    if config.optics.beam_tilt_x_mrad or config.optics.beam_tilt_y_mrad:  # the optics group's axial coma
        optics.update(rlnBeamTiltX=config.optics.beam_tilt_x_mrad, rlnBeamTiltY=config.optics.beam_tilt_y_mrad)
    type_names = list(types) if types is not None else ["particle"] * len(positions_a)
    return ParticleStack(boxes.contiguous(), out_px, px, micrograph_name, shape, optics, centres[keep], origins[keep],
                         rotations[keep], positions_a[keep, 2], u, v, ang, subset,
                         np.asarray(source_index if source_index is not None else np.arange(len(positions_a)))[keep],
                         [type_names[i] for i in keep], invert, notes)


def truth_arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(positions (N, 3) Å, poses (N, 3, 3), type names) from ground-truth rows (a run's particles.star or a
    result's metadata): the difftem centre in Å and RELION's angles (A = the pose)."""
    if not rows:
        return np.zeros((0, 3)), np.zeros((0, 3, 3)), []
    pos = np.array([[r["difftemPositionXA"], r["difftemPositionYA"], r["difftemPositionZA"]] for r in rows], float)
    ang = np.array([[r["rlnAngleRot"], r["rlnAngleTilt"], r["rlnAnglePsi"]] for r in rows], float)
    return pos, relion_matrix(ang[:, 0], ang[:, 1], ang[:, 2]), [str(r.get("difftemParticleType", "")) for r in rows]


def particles_from_result(result, *, box_px: int, image: str = "micrograph", particle_type: str | None = None,
                          **kwargs) -> ParticleStack:
    """:func:`extract_particles` of a :class:`~difftem.simulate.pipeline.SimulationResult` (``image``: "micrograph"
    or "noiseless") at its ground truth; ``particle_type``: only copies of that type."""
    rows = result.metadata.get("particles", [])
    return _from_rows(getattr(result, image), rows, result.config, box_px, particle_type,
                      pixel_size_a=result.pixel_size_a, **kwargs)


def _from_rows(image, rows, config, box_px, particle_type, **kwargs) -> ParticleStack:
    pos, rot, names = truth_arrays(rows)
    index = np.arange(len(rows))
    if particle_type is not None:
        pick = np.array([n == particle_type for n in names], bool)
        if not pick.any():
            raise ArgumentError("particle_type", f" {particle_type!r}: no such type; types: "
                                                 f"{', '.join(sorted(set(names))) or 'none'}")
        pos, rot, index, names = pos[pick], rot[pick], index[pick], [n for n, k in zip(names, pick, strict=True) if k]
    return extract_particles(image, pos, rot, config, box_px=box_px, types=names, source_index=index, **kwargs)


def particles_from_run(run_dir: str | Path, *, box_px: int, image: str = "micrograph",
                       particle_type: str | None = None, **kwargs) -> ParticleStack:
    """:func:`extract_particles` of a run folder ``difftem simulate`` wrote (``micrograph.mrc`` or
    ``noiseless.mrc``, ``particles.star``, ``run.json``); the STAR's micrograph name is the image's path as given."""
    from ..io.tlt import read_mrc_checked

    run = Path(run_dir)
    record_path = run / "run.json"
    if not record_path.is_file():
        raise FormatError("no run.json: not a folder difftem simulate wrote", file=run)
    try:
        record = json.loads(record_path.read_text())
    except ValueError:
        raise FormatError("not a readable JSON run record", file=record_path) from None
    if record.get("config", {}).get("tilt_series"):
        raise FormatError("a tilt series; single-particle extraction takes a micrograph run", file=run)
    incomplete = f"{run} is not a complete run; simulate it again with difftem simulate"
    data, header_px = read_mrc_checked(run / f"{image}.mrc", "micrograph", missing=incomplete)
    if data.ndim != 2:
        raise FormatError(f"holds an array of shape {data.shape}; one micrograph expected", file=run / f"{image}.mrc")
    star = read_star(run / "particles.star", missing=incomplete)
    table = star.get("particles")
    rows = table.to_dict("records") if hasattr(table, "to_dict") else []
    rows = [r for r in rows if "difftemPositionXA" in r]
    kwargs.setdefault("micrograph_name", str(run / f"{image}.mrc"))
    config = prepare_config(record["config"])
    return _from_rows(data, rows, config, box_px, particle_type, pixel_size_a=header_px or None, **kwargs)


def cryosparc_columns(stack: ParticleStack, stack_file: str) -> dict[str, np.ndarray]:
    """The cryoSPARC particle fields of ``stack`` (pose: axis × angle of RELION's A; shift: RELION's origin in
    image pixels; split: half-set 0 or 1; blob/sign: −1 for dark particles, +1 for white, as inverted here)."""
    n = len(stack)
    o = stack.optics
    size = int(o["rlnImageSize"])
    h, w = stack.micrograph_shape_px
    exact = stack.coordinates_px - stack.origins_a / stack.micrograph_pixel_size_a  # true centre (px)
    full = lambda v, dt: np.full(n, v, dtype=dt)  # noqa: E731
    return {
        "blob/path": np.array([stack_file] * n, dtype=object), "blob/idx": np.arange(n, dtype=np.uint32),
        "blob/shape": np.tile(np.array([size, size], np.uint32), (n, 1)),
        "blob/psize_A": full(stack.pixel_size_a, np.float32), "blob/sign": full(1.0 if stack.invert else -1.0,
                                                                                   np.float32),
        "ctf/exp_group_id": full(1, np.uint32),
        "ctf/accel_kv": full(o["rlnVoltage"], np.float32), "ctf/cs_mm": full(o["rlnSphericalAberration"], np.float32),
        "ctf/amp_contrast": full(o["rlnAmplitudeContrast"], np.float32),
        "ctf/df1_A": stack.defocus_u_a.astype(np.float32), "ctf/df2_A": stack.defocus_v_a.astype(np.float32),
        "ctf/df_angle_rad": np.radians(stack.defocus_angle_deg).astype(np.float32),
        "ctf/phase_shift_rad": full(math.radians(o.get("_phase_shift_deg", 0.0)), np.float32),
        "ctf/scale": full(1.0, np.float32), "ctf/bfactor": full(0.0, np.float32),
        "alignments3D/split": (stack.random_subset - 1).astype(np.uint32),
        "alignments3D/shift": (stack.origins_a / stack.pixel_size_a).astype(np.float32),
        "alignments3D/pose": rotation_vector(stack.rotations).astype(np.float32),
        "alignments3D/psize_A": full(stack.pixel_size_a, np.float32),
        "location/micrograph_path": np.array([stack.micrograph_name] * n, dtype=object),
        "location/micrograph_shape": np.tile(np.array([h, w], np.uint32), (n, 1)),
        "location/center_x_frac": (exact[:, 0] / w).astype(np.float32),
        "location/center_y_frac": (exact[:, 1] / h).astype(np.float32),
        "location/micrograph_psize_A": full(stack.micrograph_pixel_size_a, np.float32),
    }


def write_particles(stack: ParticleStack, out: str | Path, formats=("relion",), *, name: str = "particles"
                    ) -> list[Path]:
    """Write ``stack`` into the folder ``out``: ``<name>.mrcs`` (an image stack, pixel size in the header) and, per
    format, ``<name>.star`` (RELION 3.1+) and ``<name>.cs`` (cryoSPARC). Image names are relative to ``out``
    (run RELION or import into cryoSPARC from there). Returns the files written."""
    unknown = [f for f in formats if f not in PARTICLE_FORMATS]
    if unknown:
        raise ArgumentError("formats", f" {', '.join(unknown)}: choose from {', '.join(PARTICLE_FORMATS)}")
    out = Path(out)
    stack_file = f"{name}.mrcs"
    written = [write_mrc(out / stack_file, stack.images.cpu().numpy(), stack.pixel_size_a)]
    if "relion" in formats:
        written.append(write_relion_particles(
            out / f"{name}.star", [stack.optics_row()], stack.relion_rows(stack_file),
            "written by difftem: particles boxed at the simulation's ground truth; "
            + ("protein white (contrast inverted)" if stack.invert else "protein dark (contrast as recorded)")
            + "\ndefocus at each particle's depth; origins: box centre - true centre (A)"))
    if "cryosparc" in formats:
        written.append(write_cs(out / f"{name}.cs", cryosparc_columns(stack, stack_file)))
    return written


def write_particle_folder(stack: ParticleStack, out: str | Path, formats=("relion",), *, overwrite: bool = False,
                          name: str = "particles", inputs=(),
                          overwrite_hint: str = "pass overwrite=True") -> list[Path]:
    """:func:`write_particles` into the folder ``out``, all or nothing (a staging folder renamed into place); ``out``
    is checked as a run's (:func:`~difftem.simulate.output.prepare_out`: a folder that holds files is refused
    unless ``overwrite``, then replaced whole, and always when it holds one of the ``inputs``, the run the
    particles come from)."""
    from ..io.files import staging_folder
    from .output import prepare_out

    prepare_out(out, overwrite=overwrite, overwrite_hint=overwrite_hint, inputs=inputs)
    try:
        with staging_folder(out, overwrite=overwrite) as tmp:
            written = write_particles(stack, tmp, formats, name=name)
    except OSError as exc:  # a full disk, a folder that became read-only: the staging folder is gone, out as it was
        raise OutputError(f"{out}: cannot write the particles there ({exc.strerror or exc}); nothing was written") \
            from None
    return [Path(out) / p.name for p in written]
