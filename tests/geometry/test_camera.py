import numpy as np
import pytest

from xwam.geometry.camera import (
    invert_pose,
    pixel_grid,
    pixels_to_indices,
    project_points,
    transform_points,
    unproject_depth,
)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def _pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = translation
    return T


K = np.array([[100.0, 0.0, 32.0], [0.0, 110.0, 24.0], [0.0, 0.0, 1.0]])
T_WORLD_CAM = _pose(_rotation(np.array([0.3, -1.0, 0.4]), 0.7), np.array([0.2, -0.5, 1.3]))


def test_invert_and_transform_compose_to_identity():
    points = np.random.default_rng(0).normal(size=(50, 3))
    back = transform_points(invert_pose(T_WORLD_CAM), transform_points(T_WORLD_CAM, points))
    np.testing.assert_allclose(back, points, atol=1e-12)
    np.testing.assert_allclose(invert_pose(T_WORLD_CAM) @ T_WORLD_CAM, np.eye(4), atol=1e-12)


def test_unproject_then_project_returns_pixel_centres_and_depth():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 3.0, size=(48, 64)).astype(np.float32)
    points = unproject_depth(depth, K, T_WORLD_CAM)
    assert points.shape == (48 * 64, 3)
    pixels, z = project_points(K, T_WORLD_CAM, points)
    u, v = pixel_grid(48, 64)
    np.testing.assert_allclose(pixels[:, 0], u.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(pixels[:, 1], v.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(z, depth.reshape(-1), rtol=1e-6)
    rows, cols, inside = pixels_to_indices(pixels, 48, 64)
    assert inside.all()
    np.testing.assert_array_equal(rows * 64 + cols, np.arange(48 * 64))


def test_unproject_analytic_plane():
    # A camera 2 m above the ground looking straight down (OpenCV axes: z forward = world -z).
    down = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    T = _pose(down, np.array([0.5, 0.0, 2.0]))
    depth = np.full((48, 64), 2.0, dtype=np.float32)
    points = unproject_depth(depth, K, T)
    np.testing.assert_allclose(points[:, 2], 0.0, atol=1e-9)
    # The image centre ray hits the point below the camera; +u is world +x, +v (down) is world -y.
    centre = unproject_depth(depth, K, T, mask=_single_pixel(48, 64, 23, 31))
    np.testing.assert_allclose(
        centre[0], [0.5 + (31.5 - 32) / 100 * 2, -(23.5 - 24) / 110 * 2, 0.0], atol=1e-9
    )


def _single_pixel(h: int, w: int, row: int, col: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[row, col] = True
    return mask


def test_unproject_drops_invalid_depth_and_returns_colours():
    depth = np.ones((4, 5), dtype=np.float32)
    depth[0, 0] = 0.0
    depth[1, 1] = np.nan
    depth[2, 2] = 20.0
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    points, colours = unproject_depth(depth, K, np.eye(4), rgb=rgb, max_depth=10.0)
    assert points.shape == (17, 3) and colours.shape == (17, 3)
    keep = np.ones((4, 5), dtype=bool)
    keep[0, 0] = keep[1, 1] = keep[2, 2] = False
    np.testing.assert_array_equal(colours, rgb[keep])


def test_points_behind_camera_have_no_pixel():
    pixels, z = project_points(K, np.eye(4), np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]))
    assert np.isnan(pixels[0]).all() and z[0] < 0
    np.testing.assert_allclose(pixels[1], [32.0, 24.0])
    _, _, inside = pixels_to_indices(pixels, 48, 64)
    assert inside.tolist() == [False, True]


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="depth must have shape"):
        unproject_depth(np.ones((2, 3, 1)), K, np.eye(4))
    with pytest.raises(ValueError, match="K must have shape"):
        unproject_depth(np.ones((2, 3)), np.eye(4), np.eye(4))
    with pytest.raises(ValueError, match="points must have shape"):
        transform_points(np.eye(4), np.ones((3,)))
    with pytest.raises(ValueError, match="mask shape"):
        unproject_depth(np.ones((2, 3)), K, np.eye(4), mask=np.ones((3, 2), dtype=bool))
