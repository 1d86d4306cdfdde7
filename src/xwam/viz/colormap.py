"""Depth colour mapping in numpy (no matplotlib): the Turbo colour map via its polynomial approximation.

Turbo is a perceptually smooth rainbow (dark blue -> cyan -> green -> yellow -> red -> dark red) designed
for depth and disparity images (Anton Mikhailov, Google, 2019). The degree-5 polynomial per channel is
the published Apache-2.0 approximation of its lookup table (Ruofei Du, Google); it stays close to the
table except at the extreme dark ends.
"""

from __future__ import annotations

import numpy as np

# coefficients of 1, x, x^2, ..., x^5 for red, green and blue
_TURBO_COEFFICIENTS = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def turbo(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) of any shape to (..., 3) uint8 Turbo colours."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([x**k for k in range(6)], axis=-1)
    rgb = np.clip(powers @ _TURBO_COEFFICIENTS.T, 0.0, 1.0)
    return np.rint(rgb * 255).astype(np.uint8)


def colorize_depth(
    depth: np.ndarray,
    near: float | None = None,
    far: float | None = None,
    *,
    invalid_colour: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Colour-map metric depth of any shape (e.g. (H, W) or (T, H, W)) to (..., 3) uint8 RGB.

    Near depth is red, far depth dark blue (Turbo reversed, so close objects stand out); depth is clipped
    to ``[near, far]``. ``near``/``far`` default to the 2nd/98th percentile of the valid depth, so
    pass fixed values to keep colours comparable between frames, views or prediction and ground truth.
    Pixels with non-finite or non-positive depth get ``invalid_colour``.
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    if near is None or far is None:
        if valid.any():
            low, high = np.percentile(depth[valid], [2, 98])
        else:
            low, high = 0.0, 1.0
        near = float(low) if near is None else near
        far = float(high) if far is None else far
    if not far > near:
        far = near + 1e-6  # a flat scene: every valid pixel gets the "near" colour
    normalised = (far - np.where(valid, depth, far)) / (far - near)
    colours = turbo(normalised)
    colours[~valid] = np.asarray(invalid_colour, dtype=np.uint8)
    return colours
