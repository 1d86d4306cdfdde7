"""Scripted experts and episode recording."""

import numpy as np
import pytest

pytest.importorskip("robosuite")

from xwam.sim.envs import make_env  # noqa: E402
from xwam.sim.experts import make_expert  # noqa: E402
from xwam.sim.rollout import collect_expert_episodes, record_episode  # noqa: E402


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
