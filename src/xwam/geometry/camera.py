"""Pinhole camera geometry: depth unprojection, projection and rigid transforms (numpy).

Conventions (shared with :class:`xwam.data.episode.Episode` and :mod:`xwam.sim.envs`):

- ``K`` is a 3x3 pinhole matrix in pixels; pixel ``(row i, col j)`` of an upright image covers
  ``u in [j, j+1)``, ``v in [i, i+1)`` and is sampled at its centre ``(j + 0.5, i + 0.5)``.
  (MuJoCo/robosuite intrinsics put the principal point at ``(W/2, H/2)``, the image centre, which
  matches this convention.)
- ``T_world_cam`` is a 4x4 camera-to-world pose in OpenCV camera axes: x right, y down, z forward.
- depth is z-depth in metres along the optical axis; pixels with depth <= 0 or non-finite depth
  are invalid.
"""

from __future__ import annotations

import numpy as np


def _check_matrix(name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return array


def _check_points(points: np.ndarray) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {array.shape}")
    return array


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform (rotation transposed, translation rotated back)."""
    T = _check_matrix("T", T, (4, 4))
    inverse = np.eye(4)
    inverse[:3, :3] = T[:3, :3].T
    inverse[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inverse


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points; returns (N, 3) float64."""
    T = _check_matrix("T", T, (4, 4))
    points = _check_points(points)
    return points @ T[:3, :3].T + T[:3, 3]


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) arrays ``u`` (column) and ``v`` (row) of pixel-centre coordinates."""
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return u, v


def unproject_depth(
    depth: np.ndarray,
    K: np.ndarray,
    T_world_cam: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    rgb: np.ndarray | None = None,
    max_depth: float | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Lift a depth map to world points.

    ``depth`` (H, W) metres, ``K`` (3, 3), ``T_world_cam`` (4, 4). Pixels are kept where the depth is
    finite and > 0 (and <= ``max_depth`` if given) and ``mask`` (H, W) bool is True. Returns (N, 3)
    world points in row-major pixel order; with ``rgb`` (H, W, C) also returns the (N, C) colours of
    the kept pixels, as ``(points, colours)``.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {depth.shape}")
    K = _check_matrix("K", K, (3, 3))
    T_world_cam = _check_matrix("T_world_cam", T_world_cam, (4, 4))
    height, width = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        valid &= depth <= max_depth
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != depth.shape:
            raise ValueError(f"mask shape {mask.shape} differs from depth shape {depth.shape}")
        valid &= mask
    u, v = pixel_grid(height, width)
    z = depth[valid].astype(np.float64)
    x = (u[valid] - K[0, 2] - K[0, 1] * (v[valid] - K[1, 2]) / K[1, 1]) / K[0, 0] * z
    y = (v[valid] - K[1, 2]) / K[1, 1] * z
    points = transform_points(T_world_cam, np.stack([x, y, z], axis=1))
    if rgb is None:
        return points
    rgb = np.asarray(rgb)
    if rgb.shape[:2] != depth.shape:
        raise ValueError(f"rgb shape {rgb.shape} does not match depth shape {depth.shape}")
    return points, rgb[valid]


def project_points(
    K: np.ndarray, T_world_cam: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) world points into a camera.

    Returns ``pixels`` (N, 2) as continuous ``(u, v)`` (pixel centres at +0.5, see module docs) and
    ``depth`` (N,) z in the camera frame; points with depth <= 0 are behind the camera and get NaN
    pixels.
    """
    K = _check_matrix("K", K, (3, 3))
    cam_points = transform_points(invert_pose(T_world_cam), points)
    z = cam_points[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        homog = cam_points @ K.T
        pixels = homog[:, :2] / homog[:, 2:3]
    pixels[z <= 0] = np.nan
    return pixels, z


def pixels_to_indices(
    pixels: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer ``(rows, cols)`` of the pixels containing continuous ``(u, v)`` points, and a bool
    mask of those inside the image (rows/cols are only meaningful where the mask is True)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    finite = np.all(np.isfinite(pixels), axis=1)
    cols = np.floor(np.where(finite, pixels[:, 0], -1)).astype(np.int64)
    rows = np.floor(np.where(finite, pixels[:, 1], -1)).astype(np.int64)
    inside = finite & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    return rows, cols, inside
