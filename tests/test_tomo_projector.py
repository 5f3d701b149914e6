"""Tilt geometry and the sparse projector: convention, exact adjoint, gradients, mass, independent matrix."""

import math

import numpy as np
import pytest
import torch

from difftem.tomo.geometry import angular_weights_rad, project_points, rotate_inplane, tilt_rotation
from difftem.tomo.projector import TiltProjector, backproject, project, tilt_matrices


def blob(shape_zyx, centre_px, sigma_px=1.5, dtype=torch.float64):
    """Gaussian blob; centre (x, y, z) in voxels from the origin voxel [Z//2, Y//2, X//2]."""
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=dtype) - n // 2 for n in shape_zyx), indexing="ij")
    cx, cy, cz = centre_px
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma_px**2))


def centroids_2d(images):
    h, w = images.shape[-2:]
    iy = (torch.arange(h, dtype=images.dtype) - h // 2)[:, None]
    ix = (torch.arange(w, dtype=images.dtype) - w // 2)[None, :]
    m = images.sum((-1, -2))
    return torch.stack([(images * ix).sum((-1, -2)) / m, (images * iy).sum((-1, -2)) / m], -1)


def test_tilt_rotation_is_the_documented_convention():
    # α = 0: x' = x cos θ + z sin θ, y' = y, z' = −x sin θ + z cos θ (geometry conventions)
    for theta in (-60.0, -7.5, 0.0, 33.0, 90.0):
        t = math.radians(theta)
        expected = torch.tensor([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]],
                                dtype=torch.float64)
        assert torch.allclose(tilt_rotation(theta, 0.0), expected, atol=1e-12)
    # any α: a proper rotation that keeps u = (−sin α, cos α, 0) fixed and equals Rz(α) Ry(θ) Rz(−α)
    for alpha, theta in ((30.0, 40.0), (-100.0, -25.0), (85.0, 60.0)):
        r = tilt_rotation(theta, alpha)
        a = math.radians(alpha)
        u = torch.tensor([-math.sin(a), math.cos(a), 0.0], dtype=torch.float64)
        assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
        assert float(torch.linalg.det(r)) == pytest.approx(1.0)
        assert torch.allclose(r @ u, u, atol=1e-12)
        rz = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]],
                          dtype=torch.float64)
        assert torch.allclose(r, rz @ tilt_rotation(theta, 0.0) @ rz.T, atol=1e-12)
    # right-handed: +90° about +y takes +z to +x
    assert torch.allclose(tilt_rotation(90.0) @ torch.tensor([0, 0, 1.0], dtype=torch.float64),
                          torch.tensor([1.0, 0, 0], dtype=torch.float64), atol=1e-12)


def test_matrix_equals_independent_dense_interpolation():
    angles = np.array([-50.0, -10.0, 0.0, 20.0, 75.0])
    n_z, n_x, n_w = 5, 7, 11
    a, a_t = tilt_matrices(angles, (n_z, n_x), n_w, dtype=torch.float64)
    dense = np.zeros((len(angles), n_w, n_z, n_x))
    for t, th in enumerate(np.deg2rad(angles)):
        for iz in range(n_z):
            for ix in range(n_x):
                pos = (ix - n_x // 2) * np.cos(th) + (iz - n_z // 2) * np.sin(th) + n_w // 2
                for u in range(n_w):
                    dense[t, u, iz, ix] = max(0.0, 1.0 - abs(pos - u))
    dense = dense.reshape(len(angles) * n_w, n_z * n_x)
    np.testing.assert_allclose(a.to_dense().numpy(), dense, atol=1e-12)
    np.testing.assert_allclose(a_t.to_dense().numpy(), dense.T, atol=1e-12)


def test_dot_product_adjoint_batched():
    gen = torch.Generator().manual_seed(0)
    op = TiltProjector(torch.arange(-60, 61, 12.0), (9, 13), 17, dtype=torch.float64)
    x = torch.randn(2, 3, 9, 6, 13, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 3, op.n_tilts, 6, 17, generator=gen, dtype=torch.float64)
    lhs, rhs = float((op(x) * y).sum()), float((x * op.adjoint(y)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # the batch dims are independent problems
    assert torch.allclose(op(x)[1, 2], op(x[1, 2]), atol=1e-12)
    # row blocks (with a zero-padded last block) give the same products
    blocked = TiltProjector(torch.arange(-60, 61, 12.0), (9, 13), 17, dtype=torch.float64, chunk_rows=4)
    assert torch.allclose(blocked(x), op(x), atol=1e-12)
    assert torch.allclose(blocked.adjoint(y), op.adjoint(y), atol=1e-12)


def test_gradcheck_projector_and_adjoint():
    op = TiltProjector(torch.tensor([-40.0, 5.0, 50.0]), (4, 5), 6, dtype=torch.float64, chunk_rows=2)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.forward, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))
    assert torch.autograd.gradgradcheck(lambda v: op.forward(v) ** 2, (x,))


def test_projection_conserves_mass():
    vol = blob((24, 20, 40), (3.3, -2.0, 4.1), 2.0)
    proj = project(vol, torch.arange(-60, 61, 10.0))
    np.testing.assert_allclose(proj.sum((-1, -2)).numpy(), float(vol.sum()), rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 30.0, -100.0])
def test_point_lands_where_the_formula_says(alpha):
    # an off-axis, off-mid-plane blob: projection centroids = Rodrigues rotation about u, then drop z
    centre = (7.3, -5.0, 6.2)
    vol = blob((32, 48, 64), centre)
    angles = torch.arange(-60.0, 61.0, 15.0)
    got = centroids_2d(project(vol, angles, alpha))
    expected = project_points(torch.tensor(centre, dtype=torch.float64), angles, alpha)
    tol = 1e-6 if alpha == 0.0 else 0.02  # in-plane turns interpolate
    assert (got - expected).abs().max() < tol
    if alpha == 0.0:  # explicitly: x' = x cos θ + z sin θ, y' = y
        t = torch.deg2rad(angles.double())
        assert torch.allclose(got[:, 0], centre[0] * t.cos() + centre[2] * t.sin(), atol=1e-6)
        assert torch.allclose(got[:, 1], torch.full_like(t, centre[1]), atol=1e-6)


def test_backproject_is_adjoint_of_project_for_alpha_zero():
    gen = torch.Generator().manual_seed(1)
    angles = torch.arange(-30, 31, 10.0)
    x = torch.randn(6, 8, 10, generator=gen, dtype=torch.float64)
    y = torch.randn(len(angles), 8, 10, generator=gen, dtype=torch.float64)
    assert float((project(x, angles) * y).sum()) == pytest.approx(float((x * backproject(y, angles, 6)).sum()),
                                                                   rel=1e-12)


def test_rotate_inplane_direction_and_identity():
    img = torch.zeros(21, 31, dtype=torch.float64)
    img[10 + 4, 15 + 6] = 1.0  # pixel at (x, y) = (6, 4)
    assert rotate_inplane(img, 0.0, (21, 31)) is img
    turned = rotate_inplane(img, 90.0, (31, 31))  # out(q) = in(Rz(90°) q): q = (4, −6)
    iy, ix = divmod(int(turned.argmax()), 31)
    assert (ix - 15, iy - 15) == (4, -6) and float(turned.max()) == pytest.approx(1.0)


def test_angular_weights():
    w = angular_weights_rad(torch.tensor([4.0, -2.0, 0.0, 2.0]))  # unsorted input keeps its order
    np.testing.assert_allclose(np.rad2deg(w.numpy()), [2.0, 2.0, 2.0, 2.0])
    w = angular_weights_rad(torch.tensor([0.0, 1.0, 3.0]))
    np.testing.assert_allclose(np.rad2deg(w.numpy()), [1.0, 1.5, 2.0])
