"""Scripted experts and episode recording."""

import numpy as np
import pytest

pytest.importorskip("robosuite")

from xwam.sim.envs import make_env  # noqa: E402
from xwam.sim.experts import make_expert  # noqa: E402
from xwam.sim.rollout import PositionNoise, collect_expert_episodes, record_episode  # noqa: E402


@pytest.mark.parametrize(("task", "seeds"), [("Lift", (0, 1)), ("Stack", (0, 1)), ("PickPlaceCan", (0,))])
def test_expert_succeeds_on_a_few_seeds(task, seeds):
    episodes = list(collect_expert_episodes(task, seeds, cameras=()))
    assert [ep.meta["seed"] for ep in episodes] == list(seeds)
    for ep in episodes:
        assert ep.success, f"{task} expert failed on seed {ep.meta['seed']}"
        # ends a few steps after the first success, well before the horizon
        assert ep.length == ep.meta["first_success_step"] + 10


def test_noisy_expert_still_succeeds_and_differs():
    env = make_env("Lift", cameras=())
    try:
        plain = record_episode(env, make_expert(env), seed=5, max_steps=150)
        noisy = record_episode(env, make_expert(env, noise=0.1), seed=5, max_steps=150)
    finally:
        env.close()
    assert plain.success and noisy.success
    assert not np.allclose(plain.action[:20], noisy.action[:20])
    np.testing.assert_allclose(plain.state[0], noisy.state[0])  # same seed, same start


def test_position_noise_is_correlated_seeded_and_leaves_gripper_and_rotation_alone():
    noise = PositionNoise(0.3, correlation=0.8)
    action = np.array([0.1, -0.2, 0.3, 0.05, 0.0, -0.05, 1.0], np.float32)
    noise.reset(7)
    offsets = np.stack([noise(action)[:3] - action[:3] for _ in range(4000)])
    noise.reset(7)
    again = np.stack([noise(action)[:3] - action[:3] for _ in range(4000)])
    np.testing.assert_array_equal(offsets, again)  # the episode seed fixes the perturbation
    assert 0.25 < offsets.std() < 0.35  # stationary std is the asked one (clipping aside)
    lag1 = np.mean([np.corrcoef(offsets[:-1, i], offsets[1:, i])[0, 1] for i in range(3)])
    assert 0.7 < lag1 < 0.9  # it keeps a direction for several steps
    executed = noise(action)
    np.testing.assert_array_equal(executed[3:], action[3:])  # rotation and gripper untouched
    with pytest.raises(ValueError, match="std"):
        PositionNoise(-0.1)
    with pytest.raises(ValueError, match="correlation"):
        PositionNoise(0.1, correlation=1.0)


def test_perturbed_episode_records_the_experts_corrections_not_the_noise():
    env = make_env("Lift", cameras=())
    try:
        expert = make_expert(env)
        clean = record_episode(env, expert, seed=5, max_steps=200)
        perturbed = record_episode(env, expert, seed=5, max_steps=200, perturbation=PositionNoise(0.3))
        replay = record_episode(env, expert, seed=5, max_steps=200, perturbation=PositionNoise(0.3))
    finally:
        env.close()
    assert clean.success and perturbed.success
    np.testing.assert_array_equal(perturbed.action, replay.action)  # reproducible from the seed
    # the hand leaves the expert's path (the states differ) ...
    assert np.abs(perturbed.state[:20, :3] - clean.state[:20, :3]).max() > 0.005
    # ... and every recorded action is what the noise-free expert commands in the state it saw:
    # re-running the expert on the perturbed states' history gives the recorded actions exactly
    env = make_env("Lift", cameras=())
    try:
        expert = make_expert(env)
        noise = PositionNoise(0.3)
        obs = env.reset(seed=5)
        expert.reset(5)
        noise.reset(5)
        for t in range(perturbed.length):
            action = np.clip(expert(obs), -1, 1)
            np.testing.assert_allclose(action, perturbed.action[t], atol=1e-6)
            obs, _ = env.step(noise(action))
    finally:
        env.close()


def test_record_episode_with_cameras_follows_episode_conventions():
    (ep,) = collect_expert_episodes("Lift", [7], height=64, width=80, max_steps=120)
    T = ep.length
    assert ep.success and ep.task == "lift the red cube" and ep.fps == 20.0
    assert ep.meta["seed"] == 7 and ep.meta["task_name"] == "Lift"
    assert ep.camera_names == ["robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand"]
    for cam in ep.camera_names:
        assert ep.rgb[cam].shape == (T, 64, 80, 3) and ep.rgb[cam].dtype == np.uint8
        assert ep.depth[cam].shape == (T, 64, 80) and ep.depth[cam].dtype == np.float32
        assert ep.intrinsics[cam].shape == (T, 3, 3) and ep.extrinsics[cam].shape == (T, 4, 4)
    assert ep.state.shape == (T, 8) and ep.action.shape == (T, 7)
    assert np.all(np.abs(ep.action) <= 1.0)
    # gripper closes at some point (action +1) and the state's opening follows it later
    closing = int(np.argmax(ep.action[:, 6] > 0))
    assert closing > 0 and ep.state[closing, 7] > 0.5 and ep.state[-1, 7] < ep.state[closing, 7] - 0.2
    # action t moves state t to t+1: the hand's z rises after the lift commands start
    lift_steps = np.nonzero(ep.action[:, 2] > 0.5)[0]
    assert len(lift_steps) and ep.state[-1, 2] > ep.state[lift_steps[0], 2] + 0.1
    # static cameras repeat one pose, the wrist camera moves
    left = ep.extrinsics["robot0_agentview_left"]
    np.testing.assert_allclose(left, np.broadcast_to(left[0], left.shape))
    assert np.ptp(ep.extrinsics["robot0_eye_in_hand"][:, 2, 3]) > 0.1


def test_record_episode_stops_at_max_steps_and_rejects_bad_input():
    env = make_env("Lift", cameras=())
    try:
        ep = record_episode(env, lambda obs: np.zeros(7), seed=0, max_steps=5)
        assert ep.length == 5 and not ep.success
        with pytest.raises(ValueError, match="max_steps"):
            record_episode(env, lambda obs: np.zeros(7), seed=0, max_steps=0)
    finally:
        env.close()


@pytest.mark.benchmark
@pytest.mark.parametrize("task", ["Lift", "Stack", "PickPlaceCan"])
def test_expert_success_rate_over_50_seeds(task):
    episodes = list(collect_expert_episodes(task, range(50), cameras=()))
    rate = np.mean([ep.success for ep in episodes])
    assert rate >= 0.9, f"{task}: {rate:.0%} success over 50 seeds"
