"""Rotations, the one home of every angle convention difftem uses (all active: r' = R r, right-handed).

- ``rotation_zyz_deg``: difftem's particle Euler angles, R = Rz(φ)·Ry(θ)·Rz(ψ); ``euler_zyz_from_matrix`` inverts it.
- ``relion_matrix`` / ``relion_angles``: RELION's (rot, tilt, psi); a particle's pose R is RELION's A.
- ``rotation_zxz_deg``: TEM-simulator's particle rotation.
- ``tilt_rotation``: the specimen turned by the tilt θ about u = (−sin α, cos α, 0), the +y axis turned by
  the tilt-axis angle α about +z; for α = 0, (x, y, z) → (x cos θ + z sin θ, y, −x sin θ + z cos θ).
"""

from __future__ import annotations

import math

import numpy as np


def rotation_about_axis(axis: np.ndarray, angle_rad: float | np.ndarray) -> np.ndarray:
    """Active right-handed rotation(s) by ``angle_rad`` about unit ``axis`` (Rodrigues); (..., 3, 3)."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    a = np.asarray(angle_rad, dtype=np.float64)[..., None, None]
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def euler_zyz_from_matrix(r: np.ndarray) -> np.ndarray:
    """(…, 3) angles (φ, θ, ψ) in degrees with R = Rz(φ)·Ry(θ)·Rz(ψ), θ ∈ [0, 180]."""
    r = np.asarray(r, dtype=np.float64)
    theta = np.arccos(np.clip(r[..., 2, 2], -1, 1))
    phi = np.arctan2(r[..., 1, 2], r[..., 0, 2])
    psi = np.arctan2(r[..., 2, 1], -r[..., 2, 0])
    gimbal = np.abs(np.sin(theta)) < 1e-9  # θ = 0 or 180: only φ ± ψ is defined; put it all in φ
    phi_g = np.where(r[..., 2, 2] > 0, np.arctan2(r[..., 1, 0], r[..., 0, 0]), np.arctan2(-r[..., 1, 0], -r[..., 0, 0]))
    phi = np.where(gimbal, phi_g, phi)
    psi = np.where(gimbal, 0.0, psi)
    return np.degrees(np.stack([phi, theta, psi], -1))


def relion_matrix(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """RELION's Euler matrix A(rot, tilt, psi): a particle with these angles is the reference map
    rotated by A (image point = A · map point), projected along z."""
    a, b, g = (np.radians(np.asarray(v, dtype=np.float64)) for v in (rot_deg, tilt_deg, psi_deg))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([
        np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        np.stack([sc, ss, cb], -1),
    ], -2)


def relion_angles(r: np.ndarray) -> np.ndarray:
    """(…, 3) RELION (rot, tilt, psi) in degrees of the pose R (type frame → scene): A = R."""
    r = np.asarray(r, dtype=np.float64)
    tilt = np.arccos(np.clip(r[..., 2, 2], -1, 1))
    rot = np.arctan2(r[..., 2, 1], r[..., 2, 0])
    psi = np.arctan2(r[..., 1, 2], -r[..., 0, 2])
    gimbal = np.abs(np.sin(tilt)) < 1e-9
    psi_g = np.where(r[..., 2, 2] > 0, np.arctan2(-r[..., 1, 0], r[..., 0, 0]), np.arctan2(r[..., 1, 0], -r[..., 0, 0]))
    rot = np.where(gimbal, 0.0, rot)
    psi = np.where(gimbal, psi_g, psi)
    return np.degrees(np.stack([rot, tilt, psi], -1))


def rotation_zyz_deg(phi_deg: float, theta_deg: float, psi_deg: float) -> np.ndarray:
    """Active rotation R = Rz(φ) · Ry(θ) · Rz(ψ) (applied to coordinates as r' = R r)."""

    def rz(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def ry(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])

    return rz(math.radians(phi_deg)) @ ry(math.radians(theta_deg)) @ rz(math.radians(psi_deg))


def rotation_zxz_deg(phi_deg, theta_deg, psi_deg) -> np.ndarray:
    """TEM-simulator's particle rotation: R = Rz(ψ)·Rx(θ)·Rz(φ), active (φ about z first, then θ about x,
    then ψ about z), applied to the particle's coordinates; (..., 3, 3)."""
    a, b, c = (np.radians(np.asarray(v, dtype=np.float64)) for v in (phi_deg, theta_deg, psi_deg))
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    zero, one = np.zeros_like(ca), np.ones_like(ca)

    def mat(rows):
        return np.stack([np.stack(r, -1) for r in rows], -2)

    rz_phi = mat([(ca, -sa, zero), (sa, ca, zero), (zero, zero, one)])
    rx = mat([(one, zero, zero), (zero, cb, -sb), (zero, sb, cb)])
    rz_psi = mat([(cc, -sc, zero), (sc, cc, zero), (zero, zero, one)])
    return rz_psi @ rx @ rz_phi


def tilt_rotation(theta_deg: float, axis_deg: float = 0.0) -> np.ndarray:
    """The specimen rotation at tilt θ about the axis at α from +y (see the module docstring)."""
    a = math.radians(axis_deg)
    return rotation_about_axis(np.array([-math.sin(a), math.cos(a), 0.0]), math.radians(theta_deg))


def rotation_vector(r: np.ndarray) -> np.ndarray:
    """(…, 3) axis × angle (radians, 0…π) of rotation matrices (…, 3, 3): the exponential-map form cryoSPARC
    stores. Through the unit quaternion (the largest of its four squares first: accurate at any angle)."""
    r = np.asarray(r, dtype=np.float64)
    tr = np.trace(r, axis1=-2, axis2=-1)
    d = np.stack([tr, r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]], -1)
    pick = np.argmax(d, -1)
    w2 = (1 + tr) / 4
    x2 = (1 + 2 * r[..., 0, 0] - tr) / 4
    y2 = (1 + 2 * r[..., 1, 1] - tr) / 4
    z2 = (1 + 2 * r[..., 2, 2] - tr) / 4
    big = np.sqrt(np.clip(np.choose(pick, [w2, x2, y2, z2]), 1e-300, None))
    a, b, c = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    e, f, g = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    q = np.choose(pick[..., None], [  # (w, x, y, z) from the largest component
        np.stack([4 * big**2, a, b, c], -1), np.stack([a, 4 * big**2, e, f], -1),
        np.stack([b, e, 4 * big**2, g], -1), np.stack([c, f, g, 4 * big**2], -1)]) / (4 * big[..., None])
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)  # w ≥ 0: angle in 0…π
    vec_norm = np.linalg.norm(q[..., 1:], axis=-1)
    angle = 2 * np.arctan2(vec_norm, q[..., 0])
    return q[..., 1:] * (angle / np.where(vec_norm > 0, vec_norm, 1.0))[..., None]


def matrix_from_rotation_vector(v: np.ndarray) -> np.ndarray:
    """(…, 3, 3) rotation matrices of axis × angle vectors (…, 3) (the inverse of :func:`rotation_vector`)."""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1)
    axis = v / np.where(angle > 0, angle, 1.0)[..., None]
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    a = angle[..., None, None]
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)
