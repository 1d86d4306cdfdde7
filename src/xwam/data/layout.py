"""Names of the state and action dimensions (one place, shared by writers, readers and statistics),
and the keys of a flat observation dict.

State per arm: [x, y, z, qw, qx, qy, qz, gripper] (8 dims; two arms = 16, left first).
Action per arm: [dx, dy, dz, rx, ry, rz, gripper] (7 dims; two arms = 14): delta position,
axis-angle delta rotation and the gripper command or delta. Other sizes get generic names.
"""

from __future__ import annotations

ARM_STATE_NAMES = ["x", "y", "z", "qw", "qx", "qy", "qz", "gripper"]
ARM_ACTION_NAMES = ["dx", "dy", "dz", "rx", "ry", "rz", "gripper"]
QUATERNION_NAME_ORDER = ("qw", "qx", "qy", "qz")
QUATERNION_NAMES = set(QUATERNION_NAME_ORDER)

# A flat observation (the openpi layout the policy, the server, eval and imagine share) holds one
# image per camera under OBS_IMAGE_PREFIX + camera, the state under OBS_STATE_KEY and "prompt".
OBS_IMAGE_PREFIX = "observation/images/"
OBS_STATE_KEY = "observation/state"


def default_state_names(dim: int) -> list[str]:
    return _per_arm(ARM_STATE_NAMES, dim, "state")


def default_action_names(dim: int) -> list[str]:
    return _per_arm(ARM_ACTION_NAMES, dim, "action")


def _per_arm(arm_names: list[str], dim: int, prefix: str) -> list[str]:
    n = len(arm_names)
    if dim == n:
        return list(arm_names)
    if dim == 2 * n:
        return [f"left_{k}" for k in arm_names] + [f"right_{k}" for k in arm_names]
    return [f"{prefix}_{i}" for i in range(dim)]


def quaternion_dims(state_names: list[str]) -> list[bool]:
    """True for the state dimensions that hold quaternion components (left raw by normalisation)."""
    return [name.rsplit("_", 1)[-1] in QUATERNION_NAMES for name in state_names]


def quaternion_groups(state_names: list[str]) -> list[list[int]]:
    """Index lists [w, x, y, z] of each quaternion in the state (four names ending qw, qx, qy, qz)."""
    suffix = [name.rsplit("_", 1)[-1] for name in state_names]
    return [list(range(i, i + 4)) for i in range(len(suffix) - 3)
            if tuple(suffix[i:i + 4]) == QUATERNION_NAME_ORDER]
