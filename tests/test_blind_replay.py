"""The blind-replay baseline (xwam.blind_replay) and `xwam eval --blind-replay`."""

import json

import numpy as np
import pytest

from xwam.cli import main

REPLAY_SEED = 3  # a collection seed (recorded), not an evaluation one


@pytest.fixture(scope="module")
def lift_demo(tmp_path_factory):
    """One real scripted Lift demonstration (seed REPLAY_SEED), one small camera, as `xwam collect` stores it."""
    from xwam.data import write_episodes
    from xwam.sim.rollout import collect_expert_episodes

    root = tmp_path_factory.mktemp("data") / "lift_demo"
    (episode,) = collect_expert_episodes("Lift", [REPLAY_SEED], height=32, width=32, cameras=["robot0_eye_in_hand"])
    assert episode.success and episode.meta["task_name"] == "Lift"
    write_episodes(root, [episode])
    return root, episode


def test_hold_action_keeps_the_last_gripper_command_and_stops_the_arm():
    from xwam.blind_replay import hold_action, open_loop_plan

    actions = np.random.default_rng(0).uniform(-1, 1, size=(5, 7)).astype(np.float32)
    actions[-1, -1] = 0.8  # closing on the cube
    hold = hold_action(actions)
    assert hold.tolist() == [0, 0, 0, 0, 0, 0, pytest.approx(0.8)]
    plan = open_loop_plan(actions, 9)
    assert plan.shape == (9, 7) and np.array_equal(plan[:5], actions)
    assert np.array_equal(plan[5:], np.repeat(hold[None], 4, 0))
    assert np.array_equal(open_loop_plan(actions, 3), actions[:3])  # a shorter limit cuts the recording


def test_blind_replay_of_an_expert_demo_on_its_own_seed_succeeds(lift_demo, tmp_path):
    """The simulator and the expert are deterministic given the seed (checked here, camera-free), so
    replaying a demonstration on the seed it was recorded with lifts the cube; the hold after the
    recording keeps it lifted."""
    from xwam.blind_replay import evaluate_blind_replay, hold_action, load_blind_replay
    from xwam.sim.envs import make_env
    from xwam.sim.experts import make_expert

    root, recorded = lift_demo
    replay = load_blind_replay(root, 0)
    assert replay.recorded_seed == REPLAY_SEED and replay.recorded_task == "Lift"
    np.testing.assert_array_equal(replay.actions, recorded.action)  # stored without loss
    with make_env("Lift", cameras=[]) as env:
        # the expert, run again on the seed without cameras, issues the same actions
        expert = make_expert(env)
        obs = env.reset(REPLAY_SEED)
        expert.reset(REPLAY_SEED)
        np.testing.assert_allclose(recorded.state[0], obs.state, atol=1e-6)
        for t in range(len(recorded.action)):
            np.testing.assert_allclose(np.clip(expert(obs), -1, 1), recorded.action[t], atol=1e-5, err_msg=f"step {t}")
            obs, _ = env.step(recorded.action[t])
        assert obs.success
        # after the recording: the hold (no arm motion, last gripper command: closing) keeps the cube up
        assert recorded.action[-1, -1] > 0
        lifted = obs.state.copy()
        for _ in range(20):
            obs, _ = env.step(hold_action(replay.actions))
            assert obs.success
        np.testing.assert_allclose(obs.state[:3], lifted[:3], atol=0.01)  # the hand stays where it was
        assert obs.state[7] <= lifted[7] + 1e-3  # and the fingers do not open

    out = tmp_path / "replay"
    res = evaluate_blind_replay(root, 0, "Lift", [REPLAY_SEED], max_steps=len(recorded.action) + 20,
                                out_dir=out, progress=False)
    (ep,) = res.episodes
    assert ep.success and ep.first_success_step == recorded.meta["first_success_step"]
    assert res.policy == f"blind-replay of {root} episode 0" and ep.chunks == 1  # one open-loop plan
    results = json.loads((out / "results.json").read_text())
    assert results["policy"] == res.policy and results["tasks"][0]["policy"] == res.policy
    assert results["baseline"]["recorded_seed"] == REPLAY_SEED and results["baseline"]["kind"] == "blind-replay"
    assert not (out / "videos").exists()  # nothing was rendered


def test_eval_cli_blind_replay_writes_labelled_results(lift_demo, tmp_path, capsys):
    root, recorded = lift_demo
    out = tmp_path / "eval"
    code = main(["eval", "--blind-replay", f"{root}:0", "--episodes", "2", "--seed", str(REPLAY_SEED),
                 "--max-steps", "10", "--out", str(out)])
    assert code == 0
    for path in (out / "results.json", out / "Lift" / "results.json"):
        results = json.loads(path.read_text())
        assert results["policy"] == f"blind-replay of {root} episode 0", path
        (task,) = results["tasks"]
        assert task["task"] == "Lift" and task["seeds"] == [REPLAY_SEED, REPLAY_SEED + 1]
        assert [e["length"] for e in results["episodes"]["Lift"]] == [10, 10]  # too short to lift: runs to the limit
    assert "blind-replay of" in (out / "results.md").read_text()
    assert "blind-replay" in capsys.readouterr().out


def test_eval_cli_blind_replay_rejects_bad_references(lift_demo, tmp_path, capsys):
    from xwam.data import write_episodes
    from xwam.data.episode import Episode

    root, _ = lift_demo
    out = str(tmp_path / "eval")
    for ref, message in ((f"{root}:5", "out of range"), (f"{root}:first", "DATA[:EPISODE]"),
                         (str(tmp_path / "nowhere"), "not found")):
        assert main(["eval", "--blind-replay", ref, "--out", out]) == 2, ref
        assert message in capsys.readouterr().err, ref
    assert main(["eval", "--blind-replay", str(root), "--task", "Stack", "--out", out]) == 2
    assert "recorded in task 'Lift'" in capsys.readouterr().err
    # a dataset of another robot's action space (6-d) cannot drive the 7-d OSC_POSE arm
    T, cam = 3, "robot0_eye_in_hand"
    six = Episode(task="lift", fps=20.0, camera_names=[cam], rgb={cam: np.zeros((T, 16, 16, 3), np.uint8)},
                  state=np.zeros((T, 8), np.float32), action=np.zeros((T, 6), np.float32),
                  meta={"task_name": "Lift"})
    write_episodes(tmp_path / "six", [six])
    assert main(["eval", "--blind-replay", str(tmp_path / "six"), "--out", out]) == 2
    assert "7-d OSC_POSE" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one policy source at a time
        main(["eval", "--blind-replay", str(root), "--checkpoint", str(tmp_path), "--out", out])
    assert "not allowed with" in capsys.readouterr().err
