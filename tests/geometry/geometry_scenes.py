"""Analytic RGB-D scenes for geometry tests: pinhole cameras and ray-cast depth of planes and boxes."""

from __future__ import annotations

import numpy as np

from xwam.geometry.camera import pixel_grid


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


WORLD_UP = np.array([0.0, 0.0, 1.0])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """Camera-to-world pose in OpenCV axes (x right, y down, z forward) looking from eye at target."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, forward], axis=1)
    T[:3, 3] = eye
    return T


def pixel_rays(
    K: np.ndarray, T_world_cam: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """World-space ray origin (3,) and directions (H, W, 3) scaled so camera z = 1 (t along them = z-depth)."""
    u, v = pixel_grid(height, width)
    directions_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    return T_world_cam[:3, 3], directions_cam @ T_world_cam[:3, :3].T


def plane_depth(K, T_world_cam, height, width, normal, offset) -> np.ndarray:
    """z-depth of the plane {p : normal . p = offset}; inf where the ray misses (parallel or behind)."""
    origin, directions = pixel_rays(K, T_world_cam, height, width)
    denominator = directions @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (offset - normal @ origin) / denominator
    return np.where(t > 0, t, np.inf)


def box_depth(K, T_world_cam, height, width, half_size: float) -> np.ndarray:
    """z-depth of the axis-aligned cube [-half_size, half_size]^3 (slab method); inf on a miss."""
    origin, directions = pixel_rays(K, T_world_cam, height, width)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half_size - origin) / directions
        t2 = (half_size - origin) / directions
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    hit = (t_near <= t_far) & (t_near > 0)
    return np.where(hit, t_near, np.inf)
