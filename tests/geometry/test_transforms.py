import numpy as np
import pytest

from xwam.geometry.camera import invert_pose
from xwam.geometry.transforms import (
    ee_pose_from_state,
    estimate_hand_eye,
    make_pose,
    matrix_to_quat_wxyz,
    quat_wxyz_to_matrix,
    rotation_angle_between,
    wrist_camera_poses,
)


def _random_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q)


def test_quaternion_known_rotation():
    half = np.sqrt(0.5)
    R = quat_wxyz_to_matrix(np.array([half, 0.0, 0.0, half]))  # +90 degrees about z
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(R @ [1.0, 0, 0], [0, 1, 0], atol=1e-12)


def test_quaternion_round_trip_including_half_turns():
    rng = np.random.default_rng(0)
    quats = np.concatenate(
        [_random_quats(rng, 500), [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]]
    )
    R = quat_wxyz_to_matrix(quats)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    back = matrix_to_quat_wxyz(R)
    assert np.all(back[:, 0] >= 0)
    # q and -q are the same rotation; with w >= 0 they agree (w = 0 cases compare up to sign)
    agree = np.minimum(np.abs(back - quats).max(1), np.abs(back + quats).max(1))
    assert agree.max() < 1e-9


def test_quaternion_input_errors():
    with pytest.raises(ValueError, match="wxyz"):
        quat_wxyz_to_matrix(np.zeros(3))
    with pytest.raises(ValueError, match="non-zero"):
        quat_wxyz_to_matrix(np.zeros(4))


def test_ee_pose_from_state_two_arms():
    half = np.sqrt(0.5)
    state = np.array([0.1, 0.2, 0.3, 1, 0, 0, 0, 0.04, -0.1, 0.5, 1.0, half, half, 0, 0, 0.0])
    left = ee_pose_from_state(state)
    right = ee_pose_from_state(state, arm=1)
    np.testing.assert_allclose(left, make_pose(np.eye(3), np.array([0.1, 0.2, 0.3])))
    np.testing.assert_allclose(right[:3, 3], [-0.1, 0.5, 1.0])
    np.testing.assert_allclose(right[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    batch = ee_pose_from_state(np.stack([state, state]), arm=1)
    assert batch.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="no arm 2"):
        ee_pose_from_state(state, arm=2)


def test_hand_eye_recovers_fixed_transform():
    rng = np.random.default_rng(1)
    T_ee_cam = make_pose(quat_wxyz_to_matrix(_random_quats(rng, 1)[0]), np.array([0.05, -0.02, 0.1]))
    states = np.concatenate(
        [rng.uniform(-0.5, 0.5, (20, 3)), _random_quats(rng, 20), rng.uniform(0, 0.04, (20, 1))], 1
    )
    ee_poses = ee_pose_from_state(states)
    cam_poses = ee_poses @ T_ee_cam
    np.testing.assert_allclose(estimate_hand_eye(ee_poses, cam_poses), T_ee_cam, atol=1e-12)
    np.testing.assert_allclose(wrist_camera_poses(states, T_ee_cam), cam_poses, atol=1e-12)

    # small jitter on the recorded camera poses: the estimate stays within the noise level
    noisy = cam_poses.copy()
    for t in range(len(noisy)):
        jitter = make_pose(quat_wxyz_to_matrix(np.r_[1.0, rng.normal(0, 0.002, 3)]), rng.normal(0, 0.001, 3))
        noisy[t] = noisy[t] @ jitter
    estimate = estimate_hand_eye(ee_poses, noisy)
    assert rotation_angle_between(estimate[:3, :3], T_ee_cam[:3, :3]) < 0.003
    assert np.linalg.norm(estimate[:3, 3] - T_ee_cam[:3, 3]) < 0.002
    np.testing.assert_allclose(invert_pose(estimate) @ estimate, np.eye(4), atol=1e-12)


def test_hand_eye_shape_errors():
    with pytest.raises(ValueError, match=r"\(T, 4, 4\)"):
        estimate_hand_eye(np.zeros((3, 4, 4)), np.zeros((2, 4, 4)))
