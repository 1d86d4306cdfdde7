"""LeRobot v3 writer/reader: round trip, multi-episode files, append/resume, crash safety, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from xwam_dataset_testutils import make_episode, psnr

from xwam.data.errors import DatasetError
from xwam.data.lerobot import LeRobotV3Dataset, LeRobotV3Writer, write_episodes
from xwam.data.video import DepthMillimetres


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("lerobot") / "ds"
    episodes = [make_episode(30 + 5 * i, seed=i, task=f"task {i % 2}") for i in range(5)]
    write_episodes(root, episodes, episodes_per_file=2)
    return root, episodes


def test_round_trip_exact_numeric_and_bounded_video(written: tuple[Path, list]) -> None:
    root, episodes = written
    ds = LeRobotV3Dataset(root)
    assert ds.num_episodes == 5 and ds.camera_names == episodes[0].camera_names and ds.fps == 20.0
    assert ds.has_depth and ds.has_intrinsics and ds.has_extrinsics
    mm = DepthMillimetres()
    for i, ref in enumerate(episodes):
        ep = ds.episode(i)
        assert ep.task == ref.task and ep.length == ref.length and ep.meta["seed"] == i
        np.testing.assert_array_equal(ep.state, ref.state)
        np.testing.assert_array_equal(ep.action, ref.action)
        for cam in ref.camera_names:
            np.testing.assert_array_equal(ep.intrinsics[cam], ref.intrinsics[cam])
            np.testing.assert_array_equal(ep.extrinsics[cam], ref.extrinsics[cam])
            assert ep.rgb[cam].shape == ref.rgb[cam].shape and ep.rgb[cam].dtype == np.uint8
            # H.264 CRF 18 yuv420p on this saturated synthetic content: measured 39.1 dB PSNR and a
            # mean abs error of 2.2 levels (mostly chroma subsampling and YUV rounding)
            assert psnr(ep.rgb[cam], ref.rgb[cam]) > 36
            assert np.abs(ep.rgb[cam].astype(int) - ref.rgb[cam]).mean() < 3.0
            # depth is stored as uint16 millimetres: at most half a millimetre off (+ float32 rounding)
            err = np.abs(ep.depth[cam] - ref.depth[cam])
            assert np.all(err <= mm.error_bound(ref.depth[cam]) + 1e-6)
            assert ep.depth[cam].dtype == np.float32 and ep.depth[cam].shape == ref.depth[cam].shape


def test_layout_many_episodes_per_file(written: tuple[Path, list]) -> None:
    root, episodes = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 5
    assert info["total_frames"] == sum(e.length for e in episodes)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["features"]["observation.images.eye_in_hand"]["dtype"] == "video"
    depth = info["features"]["observation.depth.eye_in_hand"]
    assert depth["dtype"] == "uint16" and depth["shape"] == [32 * 48] and depth["info"]["depth.height"] == 32
    assert info["fps"] == 20 and isinstance(info["fps"], int) and info["xwam"]["format_version"] == 2
    assert info["xwam"]["camera_names"] == episodes[0].camera_names
    assert sorted(p.name for p in (root / "data/chunk-000").iterdir()) == [
        "file-000.parquet",
        "file-001.parquet",
        "file-002.parquet",
    ]
    meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [m["episode_index"] for m in meta] == [0, 1]
    key = "videos/observation.images.agentview_left"
    assert meta[1][f"{key}/from_timestamp"] == pytest.approx(
        30 / 20.0
    )  # second episode starts after 30 frames
    assert meta[1]["dataset_from_index"] == 30 and meta[1]["dataset_to_index"] == 65
    data = pq.read_table(root / "data/chunk-000/file-001.parquet")
    assert set(data.column("episode_index").to_pylist()) == {2, 3}
    assert {"observation.state", "action", "timestamp", "frame_index", "index", "task_index"} <= set(
        data.column_names
    )
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0, 1], "task": ["task 0", "task 1"]}
    assert (root / "meta/stats.json").is_file() and (root / "meta/xwam_norm.json").is_file()


def test_append_resume_keeps_existing_episodes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    first = [make_episode(20, seed=i) for i in range(2)]
    write_episodes(root, first, episodes_per_file=5)
    before = {p: p.read_bytes() for p in (root / "videos").rglob("*.mp4")}
    more = [make_episode(25, seed=10 + i, task="stack") for i in range(3)]
    ds = write_episodes(root, more, episodes_per_file=5)
    assert ds.num_episodes == 5
    for p, content in before.items():  # finished files are never rewritten
        assert p.read_bytes() == content
    np.testing.assert_array_equal(ds.episode(1).state, first[1].state)
    np.testing.assert_array_equal(ds.episode(4).action, more[2].action)
    assert ds.episode(3).task == "stack" and ds.episode(3).meta["seed"] == 11
    assert json.loads((root / "meta/info.json").read_text())["total_tasks"] == 2


def test_append_with_other_schema_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_episodes(root, [make_episode(20)])
    with pytest.raises(ValueError, match="cameras"):
        write_episodes(root, [make_episode(20, cameras=["a", "b", "c"])])
    with pytest.raises(ValueError, match="depth missing"):
        write_episodes(root, [make_episode(20, depth=False)])


def test_interrupted_group_loses_only_uncommitted_episodes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    writer = LeRobotV3Writer(root, episodes_per_file=2)
    for i in range(3):  # episodes 0, 1 are committed; episode 2 sits in an open group
        writer.add_episode(make_episode(20, seed=i))
    del writer  # the process "dies": no flush, no close
    staging = list(root.glob(".staging-*"))
    assert staging, "the open group should be in a staging folder"
    ds = LeRobotV3Dataset(root)
    assert ds.num_episodes == 2
    # a new writer cleans the staging folder and continues after the committed episodes
    ds = write_episodes(root, [make_episode(22, seed=7)])
    assert not list(root.glob(".staging-*"))
    assert ds.num_episodes == 3 and ds.episode(2).meta["seed"] == 7 and ds.episode(2).length == 22


def test_uncommitted_metadata_is_ignored(tmp_path: Path) -> None:
    # a crash after files were moved into place but before info.json was rewritten
    root = tmp_path / "ds"
    write_episodes(root, [make_episode(20, seed=0)], episodes_per_file=1)
    info = json.loads((root / "meta/info.json").read_text())
    write_episodes(root, [make_episode(20, seed=1)], episodes_per_file=1)
    (root / "meta/info.json").write_text(json.dumps(info))  # roll back the commit point
    ds = LeRobotV3Dataset(root)
    assert ds.num_episodes == 1
    ds = write_episodes(root, [make_episode(21, seed=2)], episodes_per_file=1)
    assert ds.num_episodes == 2 and ds.episode(1).meta["seed"] == 2


def test_rgb_only_dataset_without_camera_matrices(tmp_path: Path) -> None:
    ds = write_episodes(tmp_path / "ds", [make_episode(15, depth=False, camera_matrices=False)])
    ep = ds.episode(0)
    assert ep.depth is None and ep.intrinsics is None and ep.extrinsics is None and not ds.has_depth


def test_lru_cache_is_bounded(written: tuple[Path, list]) -> None:
    root, _ = written
    ds = LeRobotV3Dataset(root, cache_size=2)
    a = ds.episode(0)
    assert ds.episode(0) is a
    ds.episode(1)
    ds.episode(2)
    assert len(ds._cache) == 2 and ds.episode(0) is not a


def test_cache_byte_budget_keeps_what_fits(written: tuple[Path, list]) -> None:
    root, _ = written
    ds = LeRobotV3Dataset(root)
    sizes = [ds.episode(i).nbytes for i in range(ds.num_episodes)]
    assert len(ds._cache) == min(8, ds.num_episodes)
    # room for every episode: all stay decoded (the trainer's setting), and are returned, not re-decoded
    ds.set_cache(max_episodes=ds.num_episodes, max_bytes=sum(sizes))
    kept = [ds.episode(i) for i in range(ds.num_episodes)]
    assert all(ds.episode(i) is kept[i] for i in range(ds.num_episodes))
    assert ds._cache.nbytes == sum(sizes)
    # a budget for the last two only: the least recently used are dropped first
    ds.set_cache(max_episodes=ds.num_episodes, max_bytes=sizes[-1] + sizes[-2])
    assert len(ds._cache) == 2 and ds._cache.nbytes <= sizes[-1] + sizes[-2]
    assert ds.episode(ds.num_episodes - 1) is kept[-1] and ds.episode(0) is not kept[0]
    # an episode larger than the whole budget is never cached (and evicts nothing)
    ds.set_cache(max_episodes=8, max_bytes=min(sizes) - 1)
    assert len(ds._cache) == 0
    ds.episode(1)
    assert len(ds._cache) == 0


# ---------------------------------------------------------------------------------------------
# a dataset laid out the way LeRobot itself writes it (RGB only, pandas-style tasks, list columns)
# ---------------------------------------------------------------------------------------------
def _write_lerobot_style_fixture(
    root: Path, lengths: list[int], fps: int = 10, size: int = 32
) -> list[np.ndarray]:
    cams = ["observation.images.top", "observation.images.wrist"]
    total = sum(lengths)
    for ci, key in enumerate(cams):
        path = root / "videos" / key / "chunk-000" / "file-000.mp4"
        path.parent.mkdir(parents=True)
        with av.open(str(path), "w") as c:
            s = c.add_stream("mpeg4", rate=fps)
            s.width = s.height = size
            s.pix_fmt = "yuv420p"
            s.options = {"qscale": "2"}
            for t in range(total):
                img = np.full((size, size, 3), 20 + 10 * t + 20 * ci, np.uint8)
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                f.pts = t
                for p in s.encode(f):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    states = []
    rows = {
        k: []
        for k in (
            "observation.state",
            "action",
            "timestamp",
            "frame_index",
            "episode_index",
            "index",
            "task_index",
        )
    }
    for e, T in enumerate(lengths):
        st = np.random.default_rng(e).normal(size=(T, 6)).astype(np.float32)
        states.append(st)
        rows["observation.state"] += st.tolist()
        rows["action"] += (st + 1).tolist()
        rows["timestamp"] += [t / fps for t in range(T)]
        rows["frame_index"] += list(range(T))
        rows["episode_index"] += [e] * T
        rows["index"] += list(range(len(rows["index"]), len(rows["index"]) + T))
        rows["task_index"] += [0] * T
    table = pa.table(
        {
            "observation.state": pa.array(rows["observation.state"], pa.list_(pa.float32())),
            "action": pa.array(rows["action"], pa.list_(pa.float32())),
            "timestamp": pa.array(rows["timestamp"], pa.float32()),
            **{
                k: pa.array(rows[k], pa.int64())
                for k in ("frame_index", "episode_index", "index", "task_index")
            },
        }
    )
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")
    (root / "meta").mkdir()
    # pandas writes the task strings as the unnamed index column
    pq.write_table(
        pa.table({"task_index": [0], "__index_level_0__": ["Pick the cube"]}), root / "meta/tasks.parquet"
    )
    ep_rows, start = [], 0
    for e, T in enumerate(lengths):
        row = {
            "episode_index": e,
            "tasks": ["Pick the cube"],
            "length": T,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": start,
            "dataset_to_index": start + T,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
        }
        for key in cams:
            row.update(
                {
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": start / fps,
                    f"videos/{key}/to_timestamp": (start + T) / fps,
                }
            )
        row["stats/action/mean"] = [0.0] * 6
        ep_rows.append(row)
        start += T
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), root / "meta/episodes/chunk-000/file-000.parquet")
    video_feature = {
        "dtype": "video",
        "shape": [size, size, 3],
        "names": ["height", "width", "channels"],
        "info": {"video.codec": "mpeg4", "video.pix_fmt": "yuv420p", "video.is_depth_map": False},
    }
    info = {
        "codebase_version": "v3.0",
        "robot_type": "so101",
        "total_episodes": len(lengths),
        "total_frames": total,
        "total_tasks": 1,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "action": {"dtype": "float32", "shape": [6], "names": ["j0", "j1", "j2", "j3", "j4", "gripper"]},
            "observation.state": {
                "dtype": "float32",
                "shape": [6],
                "names": {"motors": ["j0", "j1", "j2", "j3", "j4", "gripper"]},
            },
            cams[0]: video_feature,
            cams[1]: video_feature,
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info))
    return states


def test_opens_lerobot_written_rgb_only_dataset(tmp_path: Path) -> None:
    states = _write_lerobot_style_fixture(tmp_path, [12, 9])
    ds = LeRobotV3Dataset(tmp_path)
    assert ds.camera_names == ["top", "wrist"] and ds.fps == 10 and not ds.has_depth
    assert ds.state_names[-1] == "gripper" and ds.tasks == {0: "Pick the cube"}
    ep = ds.episode(1)
    assert ep.length == 9 and ep.depth is None and ep.intrinsics is None and ep.extrinsics is None
    assert ep.task == "Pick the cube"
    np.testing.assert_array_equal(ep.state, states[1])
    # frames come from the right place in the shared file: episode 1 starts at file frame 12
    expected = np.array([20 + 10 * (12 + t) for t in range(9)])
    got = ep.rgb["top"].reshape(9, -1).mean(1)
    np.testing.assert_allclose(got, expected, atol=3)


# ---------------------------------------------------------------------------------------------
# bad input: every case names the file and the episode
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def small(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    write_episodes(root, [make_episode(20, seed=i) for i in range(2)], episodes_per_file=2)
    return root


def test_missing_video(small: Path) -> None:
    video = small / "videos/observation.images.eye_in_hand/chunk-000/file-000.mp4"
    video.unlink()
    with pytest.raises(DatasetError, match=r"missing.*file-000\.mp4.*episode 1"):
        LeRobotV3Dataset(small).episode(1)


def test_truncated_video(small: Path) -> None:
    video = small / "videos/observation.images.agentview_left/chunk-000/file-000.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetError, match=r"file-000\.mp4 \(episode 1\)"):
        LeRobotV3Dataset(small).episode(1)


def test_corrupt_parquet(small: Path) -> None:
    path = small / "data/chunk-000/file-000.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DatasetError, match=r"file-000\.parquet is corrupt"):
        LeRobotV3Dataset(small).episode(0)


def test_corrupt_info_json(small: Path) -> None:
    (small / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="info.json is not valid JSON"):
        LeRobotV3Dataset(small)


def _rewrite_episode_meta(root: Path, change: dict) -> None:
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[1].update(change)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)


def test_mismatched_frame_counts(small: Path) -> None:
    _rewrite_episode_meta(small, {"length": 25})
    with pytest.raises(
        DatasetError, match=r"file-000\.parquet \(episode 1\): 20 frame rows but .* length 25"
    ):
        LeRobotV3Dataset(small).episode(1)


def test_video_shorter_than_episode(small: Path) -> None:
    # metadata points past the end of the video: frames are missing
    _rewrite_episode_meta(small, {"videos/observation.images.agentview_right/from_timestamp": 1.5})
    with pytest.raises(DatasetError, match=r"file-000\.mp4 \(episode 1\) is truncated"):
        LeRobotV3Dataset(small).episode(1)


def test_camera_missing_from_one_episode(small: Path) -> None:
    _rewrite_episode_meta(
        small,
        {
            "videos/observation.images.eye_in_hand/file_index": None,
            "videos/observation.images.eye_in_hand/from_timestamp": None,
        },
    )
    ds = LeRobotV3Dataset(small)
    ds.episode(0)
    with pytest.raises(DatasetError, match=r"episode 1 has no video for 'observation.images.eye_in_hand'"):
        ds.episode(1)


def test_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        LeRobotV3Dataset(tmp_path / "nothing")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DatasetError, match="info.json is missing"):
        LeRobotV3Dataset(tmp_path / "empty")
