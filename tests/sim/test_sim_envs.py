"""robosuite wrapper: shapes, upright images, metric depth and camera poses that agree with the scene."""

import numpy as np
import pytest

pytest.importorskip("robosuite")

from xwam.geometry.camera import project_points, transform_points, unproject_depth  # noqa: E402
from xwam.sim.envs import DEFAULT_CAMERAS, make_env  # noqa: E402

H, W = 96, 128


@pytest.fixture(scope="module")
def lift_env():
    env = make_env("Lift", height=H, width=W, seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def moved_obs(lift_env):
    """An observation after the hand has moved and turned (the wrist pose is no longer the start one)."""
    lift_env.reset(seed=3)
    obs = None
    for _ in range(8):
        obs, _ = lift_env.step(np.array([0.3, 0.2, -0.3, 0.0, 0.0, 0.3, -1.0]))
    return obs


def test_reset_and_step_shapes(lift_env):
    obs = lift_env.reset(seed=1)
    assert lift_env.camera_names == list(DEFAULT_CAMERAS)
    assert lift_env.control_freq == 20.0
    assert lift_env.instruction == "lift the red cube"
    for cam in DEFAULT_CAMERAS:
        assert obs.rgb[cam].shape == (H, W, 3) and obs.rgb[cam].dtype == np.uint8
        assert obs.depth[cam].shape == (H, W) and obs.depth[cam].dtype == np.float32
        assert obs.intrinsics[cam].shape == (3, 3) and obs.extrinsics[cam].shape == (4, 4)
        assert np.all(obs.depth[cam] > 0.01) and np.all(obs.depth[cam] < 10.0)
        np.testing.assert_allclose(
            obs.extrinsics[cam][:3, :3] @ obs.extrinsics[cam][:3, :3].T, np.eye(3), atol=1e-6
        )
    assert obs.state.shape == (8,) and obs.state.dtype == np.float32
    assert obs.state[3] >= 0 and abs(np.linalg.norm(obs.state[3:7]) - 1) < 1e-5
    assert 0.0 <= obs.state[7] <= 1.0
    assert obs.success is False and obs.step == 0
    obs2, done = lift_env.step(np.zeros(7))
    assert obs2.step == 1 and done is False


def test_same_seed_same_layout(lift_env):
    rs = lift_env.robosuite_env
    lift_env.reset(seed=11)
    first = np.array(lift_env.sim.data.body_xpos[rs.cube_body_id])
    lift_env.reset(seed=12)
    other = np.array(lift_env.sim.data.body_xpos[rs.cube_body_id])
    lift_env.reset(seed=11)
    again = np.array(lift_env.sim.data.body_xpos[rs.cube_body_id])
    np.testing.assert_allclose(first, again)
    assert not np.allclose(first, other)


def test_images_are_upright(lift_env, moved_obs):
    cam = "robot0_agentview_left"
    # robosuite's own render of the same state comes bottom row first
    raw = lift_env.sim.render(camera_name=cam, width=W, height=H)
    np.testing.assert_array_equal(moved_obs.rgb[cam], raw[::-1])
    # the table (world z = table top) fills the lower half of the static view, not the upper one
    points = unproject_depth(moved_obs.depth[cam], moved_obs.intrinsics[cam], moved_obs.extrinsics[cam])
    on_table = (np.abs(points[:, 2] - lift_env.table_top_z) < 0.003).reshape(H, W)
    assert on_table[H // 2 :].mean() > 0.6
    assert on_table[: H // 2].mean() < on_table[H // 2 :].mean() / 2


def _red_mask(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 60) & (r > 2 * g) & (r > 2 * b)


@pytest.mark.parametrize("cam", list(DEFAULT_CAMERAS))
def test_depth_lands_on_table_and_cube(lift_env, moved_obs, cam):
    K, T, depth = moved_obs.intrinsics[cam], moved_obs.extrinsics[cam], moved_obs.depth[cam]
    table_z = lift_env.table_top_z
    assert table_z == pytest.approx(0.8)
    points = unproject_depth(depth, K, T)
    # points on the table top (inside its 0.8 m square, near its height) sit at its true height
    near = (
        (np.abs(points[:, 0]) < 0.38)
        & (np.abs(points[:, 1]) < 0.38)
        & (np.abs(points[:, 2] - table_z) < 0.02)
    )
    assert near.sum() > 500
    assert np.median(points[near, 2]) == pytest.approx(table_z, abs=0.002)
    assert np.mean(np.abs(points[near, 2] - table_z) < 0.003) > 0.95
    # red pixels lift to points inside the red cube (checks every camera's pose, the wrist's included)
    rs = lift_env.robosuite_env
    cube_pos = np.array(lift_env.sim.data.body_xpos[rs.cube_body_id])
    cube_rot = np.array(lift_env.sim.data.body_xmat[rs.cube_body_id]).reshape(3, 3)
    red = _red_mask(moved_obs.rgb[cam])
    assert red.sum() >= 10, f"cube not visible from {cam}"
    cube_points = unproject_depth(depth, K, T, mask=red)
    world_to_cube = np.eye(4)
    world_to_cube[:3, :3] = cube_rot.T
    world_to_cube[:3, 3] = -cube_rot.T @ cube_pos
    local = transform_points(world_to_cube, cube_points)
    inside = np.all(np.abs(local) <= np.asarray(rs.cube.size) + 0.004, axis=1)
    assert inside.mean() > 0.95
    # and the cube centre projects onto red pixels
    pixel, z = project_points(K, T, cube_pos[None])
    assert z[0] > 0
    row, col = int(pixel[0, 1]), int(pixel[0, 0])
    assert red[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2].any()


def test_wrist_and_static_views_agree(lift_env, moved_obs):
    # The same cube seen by the wrist camera and by a static camera: centroids of the visible
    # top/side faces agree to within the cube's size.
    centroids = []
    for cam in ("robot0_eye_in_hand", "robot0_agentview_right"):
        pts = unproject_depth(
            moved_obs.depth[cam],
            moved_obs.intrinsics[cam],
            moved_obs.extrinsics[cam],
            mask=_red_mask(moved_obs.rgb[cam]),
        )
        centroids.append(pts.mean(axis=0))
    assert np.linalg.norm(centroids[0] - centroids[1]) < 0.025


def test_wrist_extrinsics_move_static_ones_do_not(lift_env):
    obs0 = lift_env.reset(seed=2)
    obs1 = obs0
    for _ in range(10):
        obs1, _ = lift_env.step(np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0]))
    assert not np.allclose(
        obs0.extrinsics["robot0_eye_in_hand"], obs1.extrinsics["robot0_eye_in_hand"], atol=1e-3
    )
    np.testing.assert_allclose(
        obs0.extrinsics["robot0_agentview_left"], obs1.extrinsics["robot0_agentview_left"]
    )
    moved = obs1.state[:3] - obs0.state[:3]
    assert moved[1] > 0.05 and abs(moved[1]) > 3 * max(abs(moved[0]), abs(moved[2]))  # +y command: world +y


def test_gripper_state_opens_and_closes(lift_env):
    lift_env.reset(seed=4)
    for _ in range(10):
        obs, _ = lift_env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    opened = obs.state[7]
    for _ in range(20):
        obs, _ = lift_env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert opened > 0.9 and obs.state[7] < 0.1


def test_bad_inputs_raise_value_errors(lift_env):
    with pytest.raises(ValueError, match="unknown task 'Liftt'.*Lift, PickPlaceCan, Stack"):
        make_env("Liftt")
    with pytest.raises(ValueError, match="unknown camera.*robot0_eye_in_hand"):
        make_env("Lift", cameras=["nope"])
    with pytest.raises(ValueError, match="action must have 7 values"):
        lift_env.step(np.zeros(6))


def test_state_only_env_and_other_cameras():
    env = make_env("Stack", cameras=("agentview",), height=32, width=48, hard_reset=False, fast_render=False)
    try:
        obs = env.reset(seed=0)
        assert obs.rgb["agentview"].shape == (32, 48, 3)
        assert env.sim.model.vis.quality.offsamples > 0  # fast render off keeps robosuite's MSAA
    finally:
        env.close()
    env = make_env("PickPlaceCan", cameras=(), seed=0)
    try:
        obs = env.reset(seed=0)
        assert obs.rgb == {} and obs.state.shape == (8,)
        assert env.sim.model.vis.quality.offsamples == 0 and env.sim.model.mat_reflectance.max() == 0
    finally:
        env.close()


def test_registered_task_with_its_own_camera():
    from xwam.sim.envs import TASKS, StaticCamera, TaskSpec, register_task

    camera = StaticCamera(position=(0.6, 0.3, 1.4), target=(0.0, 0.0, 0.8), fovy_deg=50.0)
    register_task(
        TaskSpec(
            name="LiftFromFront",
            env_name="Lift",
            instruction="lift the red cube",
            added_cameras={"front_high": camera},
            table_top_z=TASKS["Lift"].table_top_z,
        )
    )
    try:
        env = make_env("LiftFromFront", cameras=("front_high",), height=48, width=64, hard_reset=False)
        try:
            obs = env.reset(seed=0)
        finally:
            env.close()
    finally:
        del TASKS["LiftFromFront"]
    T = obs.extrinsics["front_high"]
    np.testing.assert_allclose(T[:3, 3], camera.position, atol=1e-6)
    forward = np.subtract(camera.target, camera.position)
    np.testing.assert_allclose(
        T[:3, 2], forward / np.linalg.norm(forward), atol=1e-6
    )  # OpenCV z = optical axis
    assert T[2, 1] < 0  # image "down" (OpenCV y) points down in the world
    assert obs.intrinsics["front_high"][1, 1] == pytest.approx(24 / np.tan(np.radians(25.0)))
    # the look-at target (table centre) is at the image centre
    pixel, _ = project_points(obs.intrinsics["front_high"], T, np.array([camera.target]))
    np.testing.assert_allclose(pixel[0], [32.0, 24.0], atol=1e-3)


def test_release_state_is_the_release_clients_hand_and_actions_map_back():
    from xwam.evaluate import observation_dict, sim_action

    env = make_env("Lift", cameras=())
    try:
        obs = env.reset(seed=0)
        s0 = obs.release_state
        assert s0.shape == (16,) and not s0[8:].any()
        assert abs(np.linalg.norm(s0[3:7]) - 1) < 1e-5 and s0[3] >= 0 and 0 < s0[7] <= 1
        # base-frame position: same displacement as the world-frame one (the base does not turn here)
        for _ in range(5):
            obs, _ = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1.0]))
        np.testing.assert_allclose(obs.release_state[:3] - s0[:3], obs.state[:3] - env.reset(seed=0).state[:3],
                                   atol=1e-6)
        assert observation_dict(obs, [], "lift", "release_single_arm")["observation/state"].shape == (16,)
    finally:
        env.close()
    release_action = np.arange(14, dtype=np.float32) / 10
    release_action[6] = 1.0  # +1 = open in the release's training convention
    np.testing.assert_allclose(sim_action(release_action, "release_single_arm"),
                               [0, 0.1, 0.2, 0.3, 0.4, 0.5, -1.0], rtol=1e-6)  # robosuite: -1 = open
    np.testing.assert_array_equal(sim_action(release_action[:7], "xwam"), release_action[:7])
