"""The X-WAM release layout reader, on a small fixture written in that layout."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from xwam.data.clips import ClipConfig, ClipDataset
from xwam.data.errors import DatasetError
from xwam.data.open import open_dataset
from xwam.data.release import ReleaseDataset, axis_angle_from_matrix, quat_wxyz_from_matrix

CAMS = ["robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right"]  # unsorted on purpose


def _video(path: Path, values: np.ndarray, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=20)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "10", "bf": "0"}
        for t, value in enumerate(values):
            f = av.VideoFrame.from_ndarray(np.full((size, size, 3), value, np.uint8), format="rgb24")
            f.pts = t
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_release_fixture(root: Path, arms: tuple[str, ...] = ("left", "right"), raw: bool = False) -> dict:
    """Two episodes; episode 1 uses frames [3, 23) of 26 recorded ones."""
    rng = np.random.default_rng(0)
    truth = {}
    metadata = {}
    for n, (rows, start, end) in enumerate([(18, 0, 18), (26, 3, 23)]):
        proprio, actions = {}, {}
        for arm in arms:
            pos = rng.normal(size=(rows, 3))
            rot = Rotation.random(rows, random_state=n + len(arm)).as_matrix()
            grip = rng.uniform(0, 0.04, size=(rows, 2))  # two fingers
            delta = Rotation.from_rotvec(rng.normal(scale=0.1, size=(rows, 3))).as_matrix()
            proprio.update(
                {
                    f"{arm}_ee_pos": pos.tolist(),
                    f"{arm}_ee_rotm": rot.tolist(),
                    f"{arm}_gripper_pos": grip.tolist(),
                }
            )
            actions.update(
                {
                    f"{arm}_ee_pos": (pos + 0.01).tolist(),
                    f"{arm}_ee_rotm": (delta @ rot).tolist(),
                    f"{arm}_gripper_pos": (grip.mean(1) + 0.02).tolist(),
                }
            )
            truth[(n, arm)] = (pos[start:end], rot[start:end], grip.mean(1)[start:end], delta[start:end])
        chunk = "chunk-0000"
        entry = {
            "instructions": ["pick up the can", "grab the can"],
            "fps": 20,
            "start": start,
            "end": end,
            "videos": {
                c: {
                    "rgb": f"video/{c}/{chunk}/episode_{n}.mp4",
                    "depth": f"depth/{c}/{chunk}/episode_{n}.mp4",
                }
                for c in CAMS
            },
            "proprio": proprio,
            "actions": actions,
        }
        if raw:
            entry["raw_actions"] = rng.normal(size=(rows, 14)).tolist()
            truth[(n, "raw")] = np.asarray(entry["raw_actions"])[start:end]
        (root / "data" / chunk).mkdir(parents=True, exist_ok=True)
        (root / "data" / chunk / f"episode_{n}.json").write_text(json.dumps(entry))
        for k, cam in enumerate(CAMS):
            _video(root / "video" / cam / chunk / f"episode_{n}.mp4", 20 + 8 * np.arange(rows) + k)
            _video(root / "depth" / cam / chunk / f"episode_{n}.mp4", 200 - 5 * np.arange(rows))
        metadata[f"episode_{n}"] = end - start
    (root / "metadata.json").write_text(json.dumps(metadata))
    return truth


def test_rotation_helpers_match_scipy() -> None:
    R = Rotation.random(500, random_state=1)
    q = quat_wxyz_from_matrix(R.as_matrix())
    ref = R.as_quat()[:, [3, 0, 1, 2]]
    ref = np.where(ref[:, :1] < 0, -ref, ref)
    np.testing.assert_allclose(q, ref, atol=1e-9)
    assert np.all(q[:, 0] >= 0)
    small = Rotation.from_rotvec(np.random.default_rng(0).normal(scale=0.3, size=(100, 3)))
    np.testing.assert_allclose(axis_angle_from_matrix(small.as_matrix()), small.as_rotvec(), atol=1e-9)
    np.testing.assert_allclose(axis_angle_from_matrix(np.eye(3)), np.zeros(3), atol=1e-12)


def test_release_fixture_opens(tmp_path: Path) -> None:
    truth = write_release_fixture(tmp_path)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, ReleaseDataset)
    assert ds.camera_names == sorted(CAMS) and ds.num_episodes == 2 and ds.fps == 20 and ds.has_depth
    assert [ds.episode_length(i) for i in range(2)] == [18, 20]
    ep = ds.episode(1)
    assert ep.length == 20 and ep.state.shape == (20, 16) and ep.action.shape == (20, 14)
    for slot, arm in enumerate(("left", "right")):
        pos, rot, grip, delta = truth[(1, arm)]
        s = ep.state[:, 8 * slot : 8 * slot + 8]
        np.testing.assert_allclose(s[:, :3], pos, atol=1e-6)
        np.testing.assert_allclose(s[:, 3:7], quat_wxyz_from_matrix(rot), atol=1e-6)
        np.testing.assert_allclose(s[:, 7], grip, atol=1e-6)
        a = ep.action[:, 7 * slot : 7 * slot + 7]
        np.testing.assert_allclose(a[:, :3], 0.01, atol=1e-6)
        np.testing.assert_allclose(a[:, 3:6], Rotation.from_matrix(delta).as_rotvec(), atol=1e-5)
        np.testing.assert_allclose(a[:, 6], 0.02, atol=1e-6)
    # video frames [3, 23) of the sorted views: camera k has brightness 20 + 8 t + k
    for cam in ds.camera_names:
        k = CAMS.index(cam)
        np.testing.assert_allclose(ep.rgb[cam].reshape(20, -1).mean(1), 20 + 8 * np.arange(3, 23) + k, atol=2)
    np.testing.assert_allclose(
        ep.depth[ds.camera_names[0]][:, 5, 5], (200 - 5 * np.arange(3, 23)) / 255, atol=3 / 255
    )
    assert ep.meta["depth_kind"] == "inverse_relative" and ep.meta["instructions"][1] == "grab the can"
    clips = ClipDataset(ds, ClipConfig(num_frames=3, frame_skip=2, action_horizon=4))
    sample = clips[0]
    assert sample["images"].shape == (3, 3, 3, 16, 16) and "intrinsics" not in sample
    assert sample["instruction"] in ("pick up the can", "grab the can")


def test_single_arm_fills_left_slots(tmp_path: Path) -> None:
    truth = write_release_fixture(tmp_path, arms=("robot0",))
    ep = ReleaseDataset(tmp_path).episode(0)
    np.testing.assert_allclose(ep.state[:, :3], truth[(0, "robot0")][0], atol=1e-6)
    assert np.all(ep.state[:, 8:] == 0) and np.all(ep.action[:, 7:] == 0)


def test_raw_actions_are_used_as_given(tmp_path: Path) -> None:
    truth = write_release_fixture(tmp_path, raw=True)
    ep = ReleaseDataset(tmp_path).episode(1)
    np.testing.assert_allclose(ep.action, truth[(1, "raw")], atol=1e-6)


def test_release_bad_input(tmp_path: Path) -> None:
    write_release_fixture(tmp_path)
    (tmp_path / "video/robot0_agentview_right/chunk-0000/episode_1.mp4").unlink()
    ds = ReleaseDataset(tmp_path)
    ds.episode(0)
    with pytest.raises(DatasetError, match=r"episode_1\.mp4 \(episode 1\)"):
        ds.episode(1)
    entry = json.loads((tmp_path / "data/chunk-0000/episode_0.json").read_text())
    del entry["proprio"]["left_ee_rotm"]
    (tmp_path / "data/chunk-0000/episode_0.json").write_text(json.dumps(entry))
    with pytest.raises(
        DatasetError, match=r"episode_0\.json \(episode episode_0\): proprio key 'left_ee_rotm' missing"
    ):
        ReleaseDataset(tmp_path).episode(0)
    (tmp_path / "data/chunk-0000/episode_1.json").write_text("{")
    with pytest.raises(DatasetError, match=r"episode_1\.json \(episode episode_1\) is not valid JSON"):
        ReleaseDataset(tmp_path).episode(1)
