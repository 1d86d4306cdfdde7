"""Camera geometry (projection, depth unprojection, rigid transforms)."""

from xwam.geometry.camera import (
    invert_pose,
    pixel_grid,
    pixels_to_indices,
    project_points,
    transform_points,
    unproject_depth,
)

__all__ = [
    "invert_pose",
    "pixel_grid",
    "pixels_to_indices",
    "project_points",
    "transform_points",
    "unproject_depth",
]
