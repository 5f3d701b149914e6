"""Curved helical filaments: worm-like chains of copies of one subunit type, inside the ice and the field.

A filament is a centreline of nodes one ``rise`` apart along its arc length, each carrying a frame
F_k = [e1 e2 t] (t the tangent). Between nodes the frame turns about an axis perpendicular to t (never about t),
so (e1, e2) are parallel-transported along the curve (a rotation-minimising frame) and the only spin about the
axis is the helical twist. The turn angle θ per step follows the von Mises–Fisher law on the sphere (the sphere's
Gaussian: θ² ≈ 2·step/Lp for small steps) with its concentration chosen so that ⟨cos θ⟩ = exp(−step/Lp)
exactly, hence ⟨t(0)·t(s)⟩ = exp(−s/Lp) at any step size. The frames are one cumulative product of quaternions
(a log-depth scan), the nodes one cumulative sum: no loop over subunits.

Subunit k is the structure file's unit turned k·twist about the helix axis (``axis`` through ``axis_point_a``,
file frame) and carried by F_k to node k: pose R_k = F_k·Rz(k·twist)·Q with Q taking the axis to z. A straight
chain (``persistence_length_nm: straight``) is therefore exactly ``scene.helical_assembly`` moved rigidly.
Every subunit is a copy of ONE particle type (the unit), so the per-type map and projection paths serve them.

Confinement: the chain is first shifted uniformly at random into the box (field × ice, shrunk by the subunit's
reach); a chain longer than the box in some direction has its last nodes before where it first leaves regrown
(the chain conditioned on staying inside), and only when that keeps failing is folded back there by the
smallest rotation of the rest of the chain that mirrors the leaving step's tangent component (a kink of twice the
approach angle, no twist about the tangent). The first tangent is uniform among the directions whose straight
chord fits the slab, so long filaments in thin ice lie mostly in plane. Chains that collide with other copies'
capsules, earlier filaments or themselves are redrawn; regrowing and folding are tried only after 20 draws failed
to fit whole.

Obstacles for other placers: :func:`filament_obstacles` gives each filament's centreline points and radius,
:func:`obstacle_capsules` the same as capsule segments (a, b, r) that ``scene.segment_distances`` tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import ConfigError
from ..core.rotations import rotation_about_axis
from .scene import ParticleType, Placement, _segments, segment_distances

MAX_FOLDS = 4000  # fold-backs of one chain before it is redrawn
MARGIN_A = 2.0  # added to a filament's radius as an obstacle (the chord of a capsule against the arc)


# ---------------------------------------------------------------------------------------------- the chain
def langevin_kappa(mean_cos: float) -> float:
    """The von Mises–Fisher concentration κ on the sphere with ⟨cos θ⟩ = coth κ − 1/κ = ``mean_cos`` (0 < · < 1)."""
    if mean_cos <= 0:
        return 0.0
    one_minus = 1.0 - mean_cos
    if one_minus < 1.0 / 40:  # coth κ = 1 to double precision beyond κ ≈ 19: 1 − 1/κ = mean_cos
        return 1.0 / one_minus
    lo, hi = 1e-9, 60.0
    for _ in range(200):  # bisection on a monotone function
        mid = 0.5 * (lo + hi)
        if 1.0 / math.tanh(mid) - 1.0 / mid < mean_cos:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _qmul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton products p ⊗ q of (..., 4) quaternions (w, x, y, z): R(p ⊗ q) = R(p) R(q)."""
    pw, px, py, pz = np.moveaxis(p, -1, 0)
    qw, qx, qy, qz = np.moveaxis(q, -1, 0)
    return np.stack([pw * qw - px * qx - py * qy - pz * qz, pw * qx + px * qw + py * qz - pz * qy,
                     pw * qy - px * qz + py * qw + pz * qx, pw * qz + px * qy - py * qx + pz * qw], -1)


def _qmatrix(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _cumulative_product(q: np.ndarray) -> np.ndarray:
    """Inclusive ordered products q0 ⊗ … ⊗ qk along axis 0 (Hillis–Steele scan: log₂ n vectorised passes)."""
    out = q.copy()
    d = 1
    while d < len(out):
        out[d:] = _qmul(out[:-d], out[d:])
        d *= 2
    return out


def frame_from_tangent(t: np.ndarray, spin_rad: float = 0.0) -> np.ndarray:
    """A right-handed frame [e1 e2 t] (columns) with third column the unit ``t``, turned by ``spin_rad`` about it."""
    t = np.asarray(t, np.float64) / np.linalg.norm(t)
    helper = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(helper, t)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(t, e1)
    c, s = math.cos(spin_rad), math.sin(spin_rad)
    return np.stack([c * e1 + s * e2, -s * e1 + c * e2, t], 1)


def worm_like_chain(n_nodes: int, step_a: float, persistence_length_a: float, rng: np.random.Generator,
                    start_frame: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (n, 3) Å from the origin and rotation-minimising frames (n, 3, 3) (columns e1, e2, tangent) of a
    worm-like chain with steps ``step_a`` and persistence length ``persistence_length_a`` (inf: straight).

    Node k+1 = node k + step·t_k; frame k+1 = frame k · R(θ_k about a random axis ⊥ z), θ_k von Mises–Fisher
    with ⟨cos θ⟩ = exp(−step/Lp)."""
    f0 = np.eye(3) if start_frame is None else np.asarray(start_frame, np.float64)
    n_steps = max(n_nodes - 1, 0)
    if math.isinf(persistence_length_a) or n_steps == 0:
        frames = np.broadcast_to(f0, (n_nodes, 3, 3)).copy()
    else:
        kappa = langevin_kappa(math.exp(-step_a / persistence_length_a))
        u = 1.0 - rng.random(n_steps)  # (0, 1]
        e2k = math.exp(-2 * kappa)
        w = -np.log(e2k + u * (1 - e2k)) / kappa if kappa > 0 else 2 * u  # 1 − cos θ, exact vMF on S²
        w = np.clip(w, 0.0, 2.0)
        psi = rng.uniform(0, 2 * np.pi, n_steps)
        half_c, half_s = np.sqrt(1 - w / 2), np.sqrt(w / 2)  # cos θ/2, sin θ/2
        # rotation about (−sin ψ, cos ψ, 0): tips z toward (cos ψ, sin ψ, 0), no spin about z
        q = np.stack([half_c, -half_s * np.sin(psi), half_s * np.cos(psi), np.zeros(n_steps)], -1)
        frames = np.concatenate([f0[None], f0 @ _qmatrix(_cumulative_product(q))], 0)
    nodes = np.zeros((n_nodes, 3))
    if n_nodes > 1:
        nodes[1:] = np.cumsum(step_a * frames[:-1, :, 2], axis=0)
    return nodes, frames


def _smallest_turn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation by the least angle taking unit ``a`` onto unit ``b``."""
    axis = np.cross(a, b)
    s = np.linalg.norm(axis)
    c = float(np.clip(a @ b, -1, 1))
    if s < 1e-15:
        if c > 0:
            return np.eye(3)
        return frame_from_tangent(a) @ np.diag([-1.0, 1.0, -1.0]) @ frame_from_tangent(a).T  # half turn ⊥ a
    return rotation_about_axis(axis / s, math.atan2(s, c))


def _first_exit(nodes: np.ndarray, lo: np.ndarray, hi: np.ndarray, walled: np.ndarray, start: int = 0) -> int:
    """Index of the first node from ``start`` outside [lo, hi] along the walled axes; len(nodes) when none is."""
    out = (walled & ((nodes[start:] < lo) | (nodes[start:] > hi))).any(1)
    return start + int(np.argmax(out)) if out.any() else len(nodes)


def confine(nodes: np.ndarray, frames: np.ndarray, lo: np.ndarray, hi: np.ndarray, walled: np.ndarray,
            rng: np.random.Generator, *, fold: bool = True, regrow=None, regrow_tries: int = 14,
            regrow_nodes: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """The chain moved (and regrown or folded back where it must) so every node lies in [lo, hi] along the walled
    axes; None when it cannot (a straight chain too long for the box, or too many folds).

    A chain that fits is shifted uniformly over the offsets that keep it inside. Otherwise its start goes to a
    uniform point of the box and, where a node k first leaves it, the nodes from ``regrow_nodes`` × 1, 1, 2, 2, 4, …
    (at least 2) steps before k up to k are first regrown (``regrow(frame, n)``: a fresh chain of n nodes from that
    frame) until they stay inside, the chain beyond k carried along with its own body-frame steps: the chain
    conditioned on staying inside (place_filaments starts at Lp/256 of arc, up to Lp/4). When
    ``regrow_tries`` regrowths fail (a stiff chain cannot turn in time), the rest of the chain is turned about node
    k − 1 by the smallest rotation that flips the leaving step's tangent components along the walls it crosses (a
    fold: a kink of twice the approach angle, no spin about the tangent)."""
    nodes, frames = nodes.copy(), frames.copy()
    ext_lo, ext_hi = nodes.min(0), nodes.max(0)
    room = (hi - lo) - (ext_hi - ext_lo)
    fits = ~walled | (room >= 0)
    if fits.all():
        shift = np.where(walled, lo - ext_lo + rng.random(3) * np.maximum(room, 0), -0.5 * (ext_lo + ext_hi))
        return nodes + shift, frames
    if not fold:
        return None
    start = np.where(walled, lo + rng.random(3) * (hi - lo), 0.0)
    nodes += start - nodes[0]
    k = 0
    for _ in range(MAX_FOLDS):
        k = _first_exit(nodes, lo, hi, walled, k)
        if k == len(nodes):
            free = ~walled  # unwalled axes: centre the chain
            nodes[:, free] -= 0.5 * (nodes[:, free].min(0) + nodes[:, free].max(0))
            return nodes, frames
        if k == 0:
            return None
        grown = False
        for attempt in range(regrow_tries if regrow is not None else 0):
            j = max(0, k - max(2, int(round(regrow_nodes * 2 ** (attempt // 2)))))
            part_nodes, part_frames = regrow(frames[j], k - j + 1)  # nodes j … k afresh
            cand = nodes[j] + part_nodes
            if _first_exit(cand, lo, hi, walled) == len(cand):
                # the chain beyond k keeps its own body-frame steps, carried by the new frame at k
                u, _, vt = np.linalg.svd(part_frames[-1] @ frames[k].T)
                r = u @ vt  # exactly orthonormal: rounding must not compound over many regrowths
                nodes[k + 1:] = cand[-1] + (nodes[k + 1:] - nodes[k]) @ r.T
                frames[k + 1:] = r @ frames[k + 1:]
                nodes[j:k + 1], frames[j:k + 1] = cand, part_frames
                grown = True
                break
        if grown:
            continue
        t = frames[k - 1, :, 2]
        out = walled & ((nodes[k] < lo) | (nodes[k] > hi))
        flipped = np.where(out, -t, t)
        r = _smallest_turn(t, flipped / np.linalg.norm(flipped))
        frames[k - 1:] = r @ frames[k - 1:]
        nodes[k:] = nodes[k - 1] + (nodes[k:] - nodes[k - 1]) @ r.T
    return None


# ---------------------------------------------------------------------------------------------- subunits
@dataclass
class HelixUnit:
    """How the unit type sits on its filament: ``to_axis`` (Q, file frame → helix frame with the axis along z),
    ``offset_a`` (the type origin in the file frame minus the axis point), the twist, and the unit's reach: the
    largest distance of its atoms from the axis (``radius_a``) and from the axis point (``reach_a``)."""

    to_axis: np.ndarray
    offset_a: np.ndarray
    twist_deg: float
    radius_a: float
    reach_a: float
    axial_a: float  # largest |axial offset| of an atom from its node

    @classmethod
    def of(cls, ptype: ParticleType, filament) -> HelixUnit:
        u = np.asarray(filament.axis, np.float64)
        q = frame_from_tangent(u / np.linalg.norm(u)).T  # rows e1, e2, u: Q u = z
        offset = np.asarray(ptype.unit_offset_a, np.float64) - np.asarray(filament.axis_point_a, np.float64)
        rel = (ptype.atoms.positions_a + offset) @ q.T  # atoms in the helix frame about the axis point
        radius = float(np.hypot(rel[:, 0], rel[:, 1]).max()) if len(rel) else 0.0
        reach = float(np.linalg.norm(rel, axis=1).max()) if len(rel) else 0.0
        axial = float(np.abs(rel[:, 2]).max()) if len(rel) else 0.0
        return cls(q, offset, float(filament.twist_deg), radius, reach, axial)

    def poses(self, nodes: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3, 3) rotations and (n, 3) centres of the unit type's copies on a chain: R_k = F_k Rz(k·twist) Q."""
        k = np.arange(len(nodes))
        a = np.radians(self.twist_deg) * k
        rz = np.zeros((len(k), 3, 3))
        rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a), 1
        rots = frames @ rz @ self.to_axis
        return rots, rots @ self.offset_a + nodes


# ---------------------------------------------------------------------------------------------- filaments
@dataclass
class Filaments:
    """The run's filaments: per filament its type, centreline nodes (Å, untilted specimen frame; node k is the
    axis point of subunit k), radius (Å, atoms from the axis), persistence length (nm, inf: straight) and the rows
    of its subunits in the scene's placement (``first_copy`` … + n − 1)."""

    type_index: np.ndarray  # (F,)
    centrelines_a: list[np.ndarray]  # F × (n_f, 3)
    radius_a: np.ndarray  # (F,)
    axial_a: np.ndarray  # (F,) largest axial reach of a subunit's atoms from its node
    persistence_length_nm: np.ndarray  # (F,)
    first_copy: np.ndarray  # (F,)

    def __len__(self) -> int:
        return len(self.centrelines_a)

    @property
    def n_subunits(self) -> np.ndarray:
        return np.array([len(c) for c in self.centrelines_a], np.int64)

    def offset(self, copies: int) -> Filaments:
        """The same filaments with their placement rows moved by ``copies`` (copies placed before them)."""
        return Filaments(self.type_index, self.centrelines_a, self.radius_a, self.axial_a,
                         self.persistence_length_nm, self.first_copy + copies)

    def instance_ids(self, n_copies: int) -> np.ndarray:
        """(n_copies,) instance label per placement row: row + 1, except that a filament's subunits all take the
        label of its first subunit (one instance per filament)."""
        ids = np.arange(1, n_copies + 1, dtype=np.int64)
        for first, n in zip(self.first_copy, self.n_subunits, strict=True):
            ids[first:first + n] = first + 1
        return ids

    def metadata(self, type_names: list[str], stride_a: float = 10.0) -> dict:
        """Summary per filament and its centreline points (every node, thinned to at most one per ``stride_a``)."""
        rows, lines = [], []
        for f, c in enumerate(self.centrelines_a):
            step = float(np.linalg.norm(c[1] - c[0])) if len(c) > 1 else 0.0
            every = max(1, int(stride_a // step)) if step > 0 else 1
            idx = np.unique(np.r_[np.arange(0, len(c), every), len(c) - 1])
            lp = float(self.persistence_length_nm[f])
            rows.append({"index": f, "type": type_names[int(self.type_index[f])], "n_subunits": len(c),
                         "length_a": step * (len(c) - 1), "radius_a": float(self.radius_a[f]),
                         "persistence_length_nm": lp if math.isfinite(lp) else "straight",
                         "first_particle_row": int(self.first_copy[f]), "instance": int(self.first_copy[f]) + 1})
            lines.append({"filament": f, "nodes": idx.tolist(), "points_a": c[idx].tolist()})
        return {"count": len(self), "filaments": rows, "centrelines": lines}


def filament_obstacles(filaments: Filaments | None) -> list[tuple[np.ndarray, float]]:
    """Each filament as an obstacle: (its centreline points (n, 3) Å, its radius Å). A body clears a filament
    when it is farther than the radius (plus its own size) from the polyline through the points, and the points
    extend the chain by the subunits' axial reach at both ends."""
    if filaments is None:
        return []
    out = []
    for c, r, ax in zip(filaments.centrelines_a, filaments.radius_a, filaments.axial_a, strict=True):
        out.append((_extended(c, ax), float(r) + MARGIN_A))
    return out


def obstacle_capsules(filaments: Filaments | None, spacing_a: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filaments as capsules: segment ends a, b (N, 3) Å and radii (N,), each segment at most ``spacing_a``
    long (default: the filament's radius), as ``scene._segments`` gives placed copies."""
    a, b, r = [np.zeros((0, 3))], [np.zeros((0, 3))], [np.zeros(0)]
    for pts, rad in filament_obstacles(filaments):
        pa, pb = _capsules(pts, rad if spacing_a is None else spacing_a)
        a.append(pa)
        b.append(pb)
        r.append(np.full(len(pa), rad))
    return np.concatenate(a), np.concatenate(b), np.concatenate(r)


def _extended(c: np.ndarray, axial_a: float) -> np.ndarray:
    if len(c) < 2 or axial_a <= 0:
        return c
    t0 = (c[1] - c[0]) / np.linalg.norm(c[1] - c[0])
    t1 = (c[-1] - c[-2]) / np.linalg.norm(c[-1] - c[-2])
    return np.concatenate([(c[0] - axial_a * t0)[None], c, (c[-1] + axial_a * t1)[None]])


def _capsules(points: np.ndarray, spacing_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Segments through a polyline's points, each joining points at most ``spacing_a`` of arc apart."""
    if len(points) == 1:
        return points, points
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    keep = np.unique(np.r_[np.searchsorted(arc, np.arange(0.0, arc[-1], max(spacing_a, 1e-6))), len(points) - 1])
    return points[keep[:-1]], points[keep[1:]]


def _lengths_nm(cfg, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` lengths from the configured distribution, redrawn until within [min, max]."""
    out = np.zeros(0)
    lo, hi = cfg.length_min_nm, cfg.length_max_nm
    for _ in range(1000):
        if cfg.length_distribution == "uniform":
            draw = rng.uniform(lo, hi, n)
        elif cfg.length_sd_nm == 0:
            draw = np.full(n, cfg.length_nm)
        elif cfg.length_distribution == "lognormal":
            s2 = math.log1p((cfg.length_sd_nm / cfg.length_nm) ** 2)
            draw = rng.lognormal(math.log(cfg.length_nm) - s2 / 2, math.sqrt(s2), n)
        else:
            draw = rng.normal(cfg.length_nm, cfg.length_sd_nm, n)
        out = np.r_[out, draw[(draw >= lo) & (draw <= hi)]]
        if len(out) >= n:
            return out[:n]
    raise ConfigError("filament.length_sd_nm: the length distribution rarely falls within [length_min_nm, "
                      "length_max_nm]; widen the range")


def place_filaments(config, types: list[ParticleType], placement: Placement, *, max_failures: int = 500,
                    blocked=None) -> tuple[Placement, Filaments | None]:
    """Every ``sample.particles[].filament``: the subunits' poses (copies of the entry's type, appended after
    ``placement``'s rows) and the filaments, clear of ``placement``'s copies, of each other and, with
    ``blocked(a, b, r)`` ((Q,) whether capsules touch fixed obstacles: the membrane sheets), of those."""
    from .geometry import IceProfile

    wanted = [(t, p.filament) for t, p in enumerate(config.sample.particles) if p.filament is not None]
    if not wanted or all(f.count == 0 for _, f in wanted):
        return Placement.empty(), None
    det = config.detector
    wx, wy = det.shape_px[1] * det.pixel_size_a, det.shape_px[0] * det.pixel_size_a
    ice_a = _thinnest_ice_a(IceProfile.from_config(config.sample), wx, wy)
    walled = np.array([True, True, ice_a > 0])
    ea, eb, er = _segments([t.bounds for t in types], placement)
    obstacles = [(ea, eb, er)]
    parts, lines, radii, axial, lps, tix = [], [], [], [], [], []
    n_before = len(placement)
    for t, cfg in wanted:
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xF11A, t]))
        unit = HelixUnit.of(types[t], cfg)
        field = f"sample.particles.{t}.filament"
        half = np.array([wx / 2, wy / 2, ice_a / 2]) - unit.reach_a
        if (half[:2] < 0).any() or (walled[2] and half[2] < 0):
            raise ConfigError(f"{field}: the filament's subunits reach {unit.reach_a:.0f} Å from its axis, more than "
                              f"half the field or the ice ({ice_a / 10:g} nm); thicken sample.ice_thickness_nm")
        lo, hi = -half, half
        lp_a = math.inf if cfg.persistence_length_nm == "straight" else 10.0 * cfg.persistence_length_nm
        lengths = _lengths_nm(cfg, cfg.count, rng)
        for f in range(cfg.count):
            n = max(1, int(round(10.0 * lengths[f] / cfg.rise_a)))
            chord = (n - 1) * cfg.rise_a
            for fails in range(max_failures + 1):
                if fails == max_failures:
                    raise ConfigError(f"{field}.count: placed only {f} of {cfg.count} filaments ({lengths[f]:.0f} nm "
                                      f"long) inside the field and {ice_a / 10:g} nm of ice without overlap; lower "
                                      "the count or the length, or enlarge the field or the ice")
                m = min(1.0, (hi[2] - lo[2]) / chord) if (walled[2] and chord > 0) else 1.0
                tz = rng.uniform(-m, m)  # uniform on the sphere's band of directions that fit the slab
                az = rng.uniform(0, 2 * np.pi)
                rxy = math.sqrt(max(0.0, 1 - tz * tz))
                f0 = frame_from_tangent(np.array([rxy * math.cos(az), rxy * math.sin(az), tz]),
                                        rng.uniform(0, 2 * np.pi))
                nodes, frames = worm_like_chain(n, cfg.rise_a, lp_a, rng, f0)
                # fold only after a few redraws failed to fit whole: unfolded chains are the natural ones
                got = confine(nodes, frames, lo, hi, walled, rng, fold=math.isfinite(lp_a) and fails >= 20,
                              regrow=_regrower(cfg.rise_a, lp_a, rng), regrow_nodes=lp_a / cfg.rise_a / 256)
                if got is None:
                    continue
                nodes, frames = got
                pa, pb = _capsules(_extended(nodes, unit.axial_a), unit.radius_a + MARGIN_A)
                if (_collides(pa, pb, unit.radius_a + MARGIN_A, obstacles, cfg.min_gap_a)
                        or _crosses_itself(pa, pb, unit.radius_a + MARGIN_A, cfg.min_gap_a)
                        or (blocked is not None
                            and blocked(pa, pb, np.full(len(pa), unit.radius_a + MARGIN_A + cfg.min_gap_a)).any())):
                    continue
                break
            rots, centres = unit.poses(nodes, frames)
            parts.append(Placement(np.full(n, t, np.int64), centres, rots))
            obstacles.append((pa, pb, np.full(len(pa), unit.radius_a + MARGIN_A)))
            lines.append(nodes)
            radii.append(unit.radius_a)
            axial.append(unit.axial_a)
            lps.append(lp_a / 10.0)
            tix.append(t)
    counts = np.array([len(c) for c in lines], np.int64)
    first = n_before + np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    return Placement.concatenate(parts), Filaments(np.asarray(tix, np.int64), lines, np.asarray(radii),
                                                   np.asarray(axial), np.asarray(lps), first)


def _regrower(step_a: float, persistence_length_a: float, rng: np.random.Generator):
    """``regrow(frame, n)`` for :func:`confine`: a fresh chain of n nodes from ``frame``."""
    return lambda frame, n: worm_like_chain(n, step_a, persistence_length_a, rng, frame)


def _collides(pa: np.ndarray, pb: np.ndarray, radius_a: float, obstacles, gap_a: float) -> bool:
    """Whether capsules (pa, pb, radius) come within ``gap_a`` of any obstacle capsule (bounding-box prefilter)."""
    lo = np.minimum(pa, pb).min(0) - radius_a - gap_a
    hi = np.maximum(pa, pb).max(0) + radius_a + gap_a
    for oa, ob, orad in obstacles:
        if not len(oa):
            continue
        near = ((np.minimum(oa, ob) - orad[:, None] <= hi) & (np.maximum(oa, ob) + orad[:, None] >= lo)).all(1)
        if not near.any():
            continue
        oa_, ob_, or_ = oa[near], ob[near], orad[near]
        d = segment_distances(pa[:, None], pb[:, None], oa_[None], ob_[None])
        if (d < radius_a + or_[None] + gap_a).any():
            return True
    return False


def _crosses_itself(pa: np.ndarray, pb: np.ndarray, radius_a: float, gap_a: float) -> bool:
    """Whether a chain's capsules touch capsules of the same chain farther along than a U-turn could bring them
    (arc separation beyond π·(radius + gap/2) plus one capsule): a chain folded onto itself."""
    if len(pa) < 3:
        return False
    spacing = float(np.linalg.norm(pb - pa, axis=1).max())
    skip = int(math.ceil((math.pi * (radius_a + gap_a / 2) + spacing) / max(spacing, 1e-9)))
    i, j = np.triu_indices(len(pa), k=skip + 1)
    if not len(i):
        return False
    d = segment_distances(pa[i], pb[i], pa[j], pb[j])
    return bool((d < 2 * radius_a + gap_a).any())


def _thinnest_ice_a(profile, wx: float, wy: float) -> float:
    """The least ice thickness over the field (Å): filaments are confined to the slab that thin everywhere."""
    import torch

    if profile.is_flat:
        return float(profile.thickness_a)
    g = torch.linspace(-0.5, 0.5, 65, dtype=torch.float64)
    yy, xx = torch.meshgrid(g * wy, g * wx, indexing="ij")
    return float(profile.thickness_at(xx, yy).min())
