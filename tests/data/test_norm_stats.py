"""Normalisation statistics against direct numpy computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from xwam_dataset_testutils import make_episode

from xwam.data.lerobot import LeRobotV3Dataset, write_episodes
from xwam.data.stats import NormStats, compare_stats, compute_norm_stats, load_dataset_norm_stats


def _arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = np.zeros((500, 16), np.float32)
    state[:, :3] = rng.normal(0.5, 0.2, (500, 3))
    q = rng.normal(size=(500, 4))
    state[:, 3:7] = q / np.linalg.norm(q, axis=1, keepdims=True)
    state[:, 7] = rng.uniform(0, 0.04, 500)  # right arm (8:16) stays zero: single-arm data
    action = np.zeros((500, 14), np.float32)
    action[:, :7] = rng.normal(0.1, 0.3, (500, 7))
    return state, action


def test_statistics_match_numpy() -> None:
    state, action = _arrays()
    norm = NormStats.from_arrays(state, action)
    np.testing.assert_allclose(norm.state.q01, np.quantile(state.astype(np.float64), 0.01, axis=0))
    np.testing.assert_allclose(norm.action.q99, np.quantile(action.astype(np.float64), 0.99, axis=0))
    np.testing.assert_allclose(norm.state.mean, state.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(norm.action.std, action.astype(np.float64).std(0), rtol=1e-6)
    np.testing.assert_array_equal(norm.state.min, state.min(0))
    assert norm.state_valid.tolist() == [True] * 8 + [False] * 8
    assert norm.action_valid.tolist() == [True] * 7 + [False] * 7
    assert norm.state_raw.tolist() == ([False] * 3 + [True] * 4 + [False]) * 2


def test_normalisation_rules_and_inverse() -> None:
    state, action = _arrays()
    norm = NormStats.from_arrays(state, action)
    ns = norm.normalize_state(state)
    q01, q99 = np.quantile(state, [0.01, 0.99], axis=0)
    np.testing.assert_allclose(
        ns[:, 0], 2 * (state[:, 0] - q01[0]) / (q99[0] - q01[0]) - 1, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(ns[:, 3:7], state[:, 3:7])  # quaternion raw
    assert np.all(ns[:, 8:] == 0)
    assert np.mean(np.abs(ns[:, [0, 1, 2, 7]]) <= 1) > 0.97
    np.testing.assert_allclose(norm.unnormalize_state(ns), state, atol=1e-5)
    na = norm.normalize_action(action)
    bound = np.maximum(np.abs(np.quantile(action, 0.01, 0)), np.abs(np.quantile(action, 0.99, 0)))
    np.testing.assert_allclose(na[:, :7], action[:, :7] / bound[:7], rtol=1e-5)
    assert norm.normalize_action(np.zeros((1, 14), np.float32)).tolist() == [[0.0] * 14]  # 0 stays no motion
    np.testing.assert_allclose(norm.unnormalize_action(na), action, atol=1e-5)
    # torch tensors work the same way
    t = torch.from_numpy(state)
    np.testing.assert_allclose(norm.normalize_state(t).numpy(), ns, atol=1e-6)
    with pytest.raises(ValueError, match="state has 3 dims"):
        norm.normalize_state(np.zeros((2, 3)))


def test_json_round_trip_and_compare(tmp_path: Path) -> None:
    state, action = _arrays()
    norm = NormStats.from_arrays(state, action)
    norm.to_json(tmp_path / "norm_stats.json")
    back = NormStats.from_json(tmp_path / "norm_stats.json")
    assert compare_stats(norm, back) == []
    np.testing.assert_array_equal(back.state_valid, norm.state_valid)
    other = NormStats.from_arrays(state * 1.1, action)
    problems = compare_stats(norm, other, rtol=1e-3)
    assert "state[0] (left_x) mean: dataset 0.47488 vs checkpoint 0.522368" in problems
    assert not any(p.startswith("action") for p in problems)
    shorter = NormStats.from_arrays(state[:, :8], action[:, :7])
    assert compare_stats(norm, shorter) == [
        "state dimension: dataset 16 vs checkpoint 8",
        "action dimension: dataset 14 vs checkpoint 7",
    ]
    with pytest.raises(FileNotFoundError):
        NormStats.from_json(tmp_path / "missing.json")


def test_dataset_stats_written_with_dataset(tmp_path: Path) -> None:
    episodes = [make_episode(20 + i, seed=i) for i in range(3)]
    write_episodes(tmp_path / "ds", episodes)
    stored = load_dataset_norm_stats(tmp_path / "ds")
    direct = NormStats.from_arrays(
        np.concatenate([e.state for e in episodes]), np.concatenate([e.action for e in episodes])
    )
    assert compare_stats(stored, direct, rtol=1e-9) == []
    assert compare_stats(compute_norm_stats(LeRobotV3Dataset(tmp_path / "ds")), stored, rtol=1e-9) == []
    import json

    lerobot_stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    state = np.concatenate([e.state for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(lerobot_stats["observation.state"]["q50"], np.quantile(state, 0.5, axis=0))
    assert lerobot_stats["observation.state"]["count"] == [len(state)]
    img = lerobot_stats["observation.images.eye_in_hand"]["mean"]
    assert np.asarray(img).shape == (3, 1, 1) and 0 < np.asarray(img).min() < 1


def _hand_tilting_through_vertical(n: int = 201) -> np.ndarray:
    """States of a hand pointing down (a half turn about a horizontal axis) that tilts from -3 to +3
    degrees about x: its quaternion in the data's w >= 0 form has w ~ 0 and flips sign midway."""
    from xwam.geometry.transforms import matrix_to_quat_wxyz

    def rot_x(a: float) -> np.ndarray:
        c, s = np.cos(a), np.sin(a)
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    yaw = np.pi / 4
    down = np.array([[np.cos(yaw), np.sin(yaw), 0], [np.sin(yaw), -np.cos(yaw), 0], [0, 0, -1]])
    tilts = np.linspace(-0.05, 0.05, n)
    state = np.zeros((n, 8))
    state[:, 0] = np.linspace(0.0, 0.1, n)
    state[:, 3:7] = matrix_to_quat_wxyz(np.stack([rot_x(t) @ down for t in tilts]))
    state[:, 7] = np.linspace(0.2, 0.8, n)
    return state


def test_aligned_quaternions_are_continuous_and_invertible(tmp_path: Path) -> None:
    state = _hand_tilting_through_vertical()
    action = np.random.default_rng(0).normal(size=(len(state), 7))
    assert np.all(state[:, 3] >= 0) and np.ptp(np.sign(state[:, 4])) == 2  # the data's form flips
    raw = NormStats.from_arrays(state, action)
    aligned = raw.with_aligned_quaternions(state)
    assert raw.quaternion_reference is None and aligned.quaternions_aligned
    assert aligned.state_raw.tolist() == [False] * 8 and aligned.action is raw.action
    # raw: one step of a smooth tilt jumps by ~1.4 in x and y; aligned: every step is alike small
    jumps_raw = np.abs(np.diff(raw.normalize_state(state)[:, 3:7], axis=0)).max(1)
    jumps_aligned = np.abs(np.diff(aligned.normalize_state(state)[:, 3:7], axis=0)).max(1)
    assert jumps_raw.max() > 1.0 and jumps_aligned.max() < min(0.1, 3 * np.median(jumps_aligned))
    # the normalised tilt spans the quantile range, as xyz does (raw: w spans 0.03)
    assert np.ptp(aligned.normalize_state(state)[:, 3]) > 1.9 and np.ptp(state[:, 3]) < 0.03
    # q and -q are the same rotation and normalise alike; unnormalising gives back the data's form
    flipped = state.copy()
    flipped[:, 3:7] *= -1
    np.testing.assert_allclose(aligned.normalize_state(flipped), aligned.normalize_state(state), atol=1e-12)
    np.testing.assert_allclose(aligned.unnormalize_state(aligned.normalize_state(state)), state, atol=1e-12)
    as_torch = aligned.normalize_state(torch.from_numpy(flipped).float())
    np.testing.assert_allclose(as_torch.numpy(), aligned.normalize_state(state), atol=1e-3)  # float32
    np.testing.assert_allclose(aligned.unnormalize_state(as_torch).numpy(), state, atol=1e-5)
    # the choice travels with the statistics
    aligned.to_json(tmp_path / "norm_stats.json")
    back = NormStats.from_json(tmp_path / "norm_stats.json")
    np.testing.assert_array_equal(back.quaternion_reference, aligned.quaternion_reference)
    assert compare_stats(back, aligned) == []
    assert "state quaternions: dataset raw vs checkpoint aligned" in compare_stats(raw, aligned)


def test_aligned_quaternions_edge_cases() -> None:
    state = _hand_tilting_through_vertical(50)
    action = np.zeros((50, 7))
    still = state.copy()
    still[:, 3:7] = [0.0, 0.6, 0.8, 0.0]  # a hand that never turns: its quaternion stays raw, not zeroed
    norm = NormStats.from_arrays(still, action).with_aligned_quaternions(still)
    assert norm.state_raw[3:7].tolist() == [True] * 4
    np.testing.assert_allclose(norm.unnormalize_state(norm.normalize_state(still)), still, atol=1e-12)
    with pytest.raises(ValueError, match="no quaternion"):
        NormStats.from_arrays(state, action, [f"s{i}" for i in range(8)]).with_aligned_quaternions(state)
    with pytest.raises(ValueError, match="quaternion_reference"):
        NormStats.from_dict({**NormStats.from_arrays(state, action).to_dict(), "quaternion_reference": [1.0, 0.0]})
