"""The release's two-arm layout, one owner for the reader and the statistics.

State (16-d) and action (14-d) hold one slot per arm, left then right: state [xyz, quaternion w, x, y,
z with w >= 0, gripper], action [dxyz, rotation vector, gripper]. Rotations follow the release's
scipy conventions. :func:`arm_motion` computes an arm's position and rotation action for every frame
(raw columns, or target minus proprio), which both the episodes (:mod:`xwam.data.release`) and the
statistics (:mod:`xwam.data.release_stats`) use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from xwam.data.errors import DatasetError

ARMS = ("left", "right")
STATE_DIM, ACTION_DIM = 16, 14
ARM_STATE, ARM_ACTION = 8, 7


def rotations_from_field(values: Any, where: str) -> Rotation:
    """A T x 9 (row-major), T x 3 x 3 or T x 3 (rotation vector) field -> T rotations."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 9:
        return Rotation.from_matrix(array.reshape(-1, 3, 3))
    if array.ndim == 3 and array.shape[1:] == (3, 3):
        return Rotation.from_matrix(array)
    if array.ndim == 2 and array.shape[1] == 3:
        return Rotation.from_rotvec(array)
    raise DatasetError(f"{where}: expected T x 9, T x 3 x 3 or T x 3 values, got shape {array.shape}")


def canonical_quat_wxyz(rotations: Rotation) -> np.ndarray:
    """(T, 4) quaternions w, x, y, z with w >= 0 (negated when w < 0; w = 0 left as it is)."""
    q = rotations.as_quat()[:, [3, 0, 1, 2]]
    return np.where(q[:, :1] < 0, -q, q)


def rotation_delta_vectors(target: Rotation, current: Rotation) -> np.ndarray:
    """(T, 3) rotation vectors of ``R_target R_current^T`` (angle in [0, pi]), the release's action rotation."""
    return (target * current.inv()).as_rotvec()


def arm_motion(signals: dict[str, Any], slot: int, arm: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One arm's (T, 3) position and (T, 3) rotation-vector action for every frame, un-normalised:
    raw mode: ``raw_actions`` columns 0-2 and 3-5 of its slot; delta mode: target minus proprio
    position and the rotation vector of ``R_target R_proprio^T``. None when the arm has no action.
    The one owner of these deltas: episodes and the release's statistics both use it."""
    raw = signals["raw"]
    if raw is not None:
        if raw.shape[1] < (slot + 1) * ARM_ACTION:
            return None
        cols = raw[:, slot * ARM_ACTION : (slot + 1) * ARM_ACTION]
        return cols[:, :3], cols[:, 3:6]
    if arm not in signals["target"]:
        return None
    (pos, rot, _grip), (tpos, trot) = signals["proprio"][arm], signals["target"][arm]
    return tpos - pos, rotation_delta_vectors(trot, rot)
