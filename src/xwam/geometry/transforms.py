"""Rotations and rigid poses (numpy, batched): quaternions, end-effector poses and hand-eye calibration.

Conventions (shared with :class:`xwam.data.episode.Episode`):

- quaternions are ``(w, x, y, z)`` with unit norm; ``q`` and ``-q`` are the same rotation and the
  canonical form has ``w >= 0``;
- poses are 4x4 homogeneous transforms; ``T_a_b`` maps points in frame ``b`` to frame ``a``;
- one arm's end-effector state is ``[x, y, z, qw, qx, qy, qz, gripper]`` (8 values, metres), and a
  two-arm state concatenates the arms (left first).
"""

from __future__ import annotations

import numpy as np

from xwam.geometry.camera import invert_pose

STATE_DIMS_PER_ARM = 8  # xyz (3) + quaternion wxyz (4) + gripper (1)


def quat_wxyz_to_matrix(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions wxyz -> (..., 3, 3) rotation matrices. Quaternions are normalised first,
    so slightly denormalised model outputs are accepted; a zero quaternion raises ValueError."""
    q = np.asarray(quat, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have shape (..., 4) in wxyz order, got {q.shape}")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(~np.isfinite(norm)) or np.any(norm < 1e-8):
        raise ValueError("quaternions must be finite and non-zero")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def mean_quat_wxyz(quats: np.ndarray) -> np.ndarray:
    """(4,) the mean of (N, 4) quaternions wxyz, blind to their signs: the principal eigenvector of
    ``sum q q^T`` (Markley et al., 2007, "Averaging quaternions"), signed so that its largest
    component is positive."""
    q = np.asarray(quats, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    _, vectors = np.linalg.eigh(q.T @ q)
    mean = vectors[:, -1]
    return mean * np.sign(mean[np.argmax(np.abs(mean))])


def matrix_to_quat_wxyz(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions wxyz with ``w >= 0``.

    Uses the largest of the four squared quaternion components (read off the diagonal) as the pivot,
    which keeps every rotation, including half-turns, numerically accurate.
    """
    R = np.asarray(rotation, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (..., 3, 3), got {R.shape}")
    r00, r11, r22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    # 4 * component**2 for w, x, y, z
    squares = np.stack(
        [1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], -1
    )
    pivot = np.argmax(squares, axis=-1)
    scale = 2 * np.sqrt(np.maximum(np.take_along_axis(squares, pivot[..., None], -1)[..., 0], 1e-12))
    d21, d02, d10 = R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]
    s10, s02, s21 = R[..., 1, 0] + R[..., 0, 1], R[..., 0, 2] + R[..., 2, 0], R[..., 2, 1] + R[..., 1, 2]
    candidates = [
        np.stack([scale / 4, d21 / scale, d02 / scale, d10 / scale], -1),
        np.stack([d21 / scale, scale / 4, s10 / scale, s02 / scale], -1),
        np.stack([d02 / scale, s10 / scale, scale / 4, s21 / scale], -1),
        np.stack([d10 / scale, s02 / scale, s21 / scale, scale / 4], -1),
    ]
    quat = np.zeros(R.shape[:-2] + (4,))
    for index, candidate in enumerate(candidates):
        quat = np.where((pivot == index)[..., None], candidate, quat)
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
    return np.where(quat[..., :1] < 0, -quat, quat)


def make_pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations and (..., 3) translations -> (..., 4, 4) homogeneous poses."""
    R = np.asarray(rotation, dtype=np.float64)
    t = np.asarray(translation, dtype=np.float64)
    if R.shape[-2:] != (3, 3) or t.shape[-1:] != (3,) or R.shape[:-2] != t.shape[:-1]:
        raise ValueError(
            f"rotation (..., 3, 3) and translation (..., 3) must agree, got {R.shape} and {t.shape}"
        )
    pose = np.zeros(R.shape[:-2] + (4, 4))
    pose[..., :3, :3] = R
    pose[..., :3, 3] = t
    pose[..., 3, 3] = 1.0
    return pose


def project_to_rotation(matrix: np.ndarray) -> np.ndarray:
    """Nearest rotation (Frobenius norm, det +1) to a (3, 3) matrix, e.g. a mean of rotations."""
    U, _, Vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    correction = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ correction @ Vt


def ee_pose_from_state(state: np.ndarray, *, arm: int = 0) -> np.ndarray:
    """End-effector pose(s) T_world_ee from unnormalised proprioceptive state.

    ``state`` is (..., S) with ``S >= 8 * (arm + 1)``; arm ``arm`` occupies
    ``state[..., 8 * arm : 8 * arm + 8]`` = ``[xyz, quat wxyz, gripper]`` (metres; see module docs).
    Returns (..., 4, 4). The state must be in metric units, i.e. already de-normalised.
    """
    state = np.asarray(state, dtype=np.float64)
    start = STATE_DIMS_PER_ARM * arm
    if arm < 0 or state.ndim < 1 or state.shape[-1] < start + STATE_DIMS_PER_ARM:
        raise ValueError(
            f"state of shape {state.shape} has no arm {arm}: need at least {start + STATE_DIMS_PER_ARM} "
            "values per step ([xyz, quat wxyz, gripper] per arm)"
        )
    arm_state = state[..., start : start + STATE_DIMS_PER_ARM]
    return make_pose(quat_wxyz_to_matrix(arm_state[..., 3:7]), arm_state[..., :3])


def estimate_hand_eye(ee_poses: np.ndarray, cam_poses: np.ndarray) -> np.ndarray:
    """Fixed camera-in-hand transform T_ee_cam from time-aligned poses of a wrist camera.

    ``ee_poses`` (T, 4, 4) are T_world_ee and ``cam_poses`` (T, 4, 4) the recorded T_world_cam of a camera
    rigidly mounted on the end effector. Each step gives ``inv(T_world_ee_t) @ T_world_cam_t``; the
    translations are averaged and the rotations combined by their chordal mean (the mean matrix
    projected back onto the rotations), which is exact for noise-free data and robust to small jitter.
    """
    ee = np.asarray(ee_poses, dtype=np.float64)
    cam = np.asarray(cam_poses, dtype=np.float64)
    if ee.ndim != 3 or ee.shape[1:] != (4, 4) or cam.shape != ee.shape or ee.shape[0] == 0:
        raise ValueError(
            f"ee_poses and cam_poses must both be (T, 4, 4) with T >= 1, got {ee.shape} and {cam.shape}"
        )
    relative = np.stack([invert_pose(e) @ c for e, c in zip(ee, cam)])
    rotation = project_to_rotation(relative[:, :3, :3].mean(axis=0))
    return make_pose(rotation, relative[:, :3, 3].mean(axis=0))


def wrist_camera_poses(states: np.ndarray, T_ee_cam: np.ndarray, *, arm: int = 0) -> np.ndarray:
    """Wrist-camera poses T_world_cam = T_world_ee(state) @ T_ee_cam for (..., S) states -> (..., 4, 4)."""
    T_ee_cam = np.asarray(T_ee_cam, dtype=np.float64)
    if T_ee_cam.shape != (4, 4):
        raise ValueError(f"T_ee_cam must have shape (4, 4), got {T_ee_cam.shape}")
    return ee_pose_from_state(states, arm=arm) @ T_ee_cam


def rotation_angle_between(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in radians between (..., 3, 3) rotations (for checks and pose-error metrics)."""
    relative = np.swapaxes(np.asarray(R_a, dtype=np.float64), -1, -2) @ np.asarray(R_b, dtype=np.float64)
    cos = (np.trace(relative, axis1=-2, axis2=-1) - 1) / 2
    return np.arccos(np.clip(cos, -1.0, 1.0))
