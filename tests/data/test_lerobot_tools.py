"""What xwam writes for lerobot 0.4.4's own tools, and what those tools gave back.

Format 2 (written now): depth as uint16 millimetres in the data parquet, per-episode ``stats/...``
columns in meta/episodes, integer fps. The fixtures in ``fixtures/lerobot-0.4.4-xwam-format2`` are
what the real lerobot 0.4.4 ``delete_episodes`` / ``split_dataset`` + ``merge_datasets`` made of a
format-2 dataset (see their README and ``scripts/check_lerobot_tools.py``); this suite never imports
lerobot. Format 1 (12-bit FFV1 depth video) must still read exactly as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from xwam_dataset_testutils import make_episode

from xwam.data.errors import DatasetError
from xwam.data.lerobot import LeRobotV3Writer, write_episodes
from xwam.data.lerobot_reader import LeRobotV3Dataset
from xwam.data.lerobot_stats import LEROBOT_STAT_NAMES, compute_lerobot_stats
from xwam.data.video import DepthMillimetres, DepthQuantizer

FIXTURES = Path(__file__).parent / "fixtures"
TOOLS = FIXTURES / "lerobot-0.4.4-xwam-format2"
LEROBOT_RGB = FIXTURES / "lerobot-0.4.4" / "lift_rgb_3cams"  # written by lerobot itself


def _source_episodes() -> list:
    """The episodes the fixtures were made from (their README)."""
    out = []
    for i in range(4):
        ep = make_episode(5 + i, seed=i, height=32, width=32, cameras=["front", "wrist"], task=f"task {i % 2}")
        ep.depth = {c: np.round(d, 2) for c, d in ep.depth.items()}
        out.append(ep)
    return out


def _episodes_table(root: Path) -> pa.Table:
    return pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("format2") / "ds"
    episodes = [make_episode(12 + 3 * i, seed=i, height=24, width=40) for i in range(3)]
    write_episodes(root, episodes, episodes_per_file=2)
    return root, episodes


# ---- format 2 as written ---------------------------------------------------------------------
def test_depth_is_uint16_millimetres_in_the_data_parquet(written: tuple[Path, list]) -> None:
    root, episodes = written
    info = json.loads((root / "meta/info.json").read_text())
    feature = info["features"]["observation.depth.eye_in_hand"]
    assert feature["dtype"] == "uint16" and feature["shape"] == [24 * 40]
    assert feature["info"]["depth.encoding"] == "uint16_mm"
    assert (feature["info"]["depth.height"], feature["info"]["depth.width"]) == (24, 40)
    assert not (root / "videos/observation.depth.eye_in_hand").exists()
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert table.schema.field("observation.depth.eye_in_hand").type == pa.list_(pa.uint16(), 24 * 40)
    # the stored codes are exactly the millimetres of the input, row-major per frame
    codes = np.asarray(table.column("observation.depth.eye_in_hand").combine_chunks().flatten())
    expected = DepthMillimetres().encode(episodes[0].depth["eye_in_hand"]).reshape(-1)
    np.testing.assert_array_equal(codes[: expected.size], expected)


def test_reader_decodes_depth_exactly(written: tuple[Path, list]) -> None:
    root, episodes = written
    ds = LeRobotV3Dataset(root)
    mm = DepthMillimetres()
    assert ds.has_depth and all(ds.depth_storage(cam) == "parquet" for cam in ds.camera_names)
    for i, ref in enumerate(episodes):
        ep = ds.episode(i)
        for cam in ref.camera_names:
            np.testing.assert_array_equal(ep.depth[cam], mm.decode(mm.encode(ref.depth[cam])))
            assert np.abs(ep.depth[cam] - ref.depth[cam]).max() <= 0.0005 + 1e-6
            np.testing.assert_array_equal(ds.episode_depth_codes(i, cam), mm.encode(ref.depth[cam]))
    assert "observation.depth.eye_in_hand" in ds.used_features() and not ds.ignored_features


def test_integer_fps_and_file_sizes(written: tuple[Path, list]) -> None:
    root, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    lerobot = json.loads((LEROBOT_RGB / "meta/info.json").read_text())
    for key in ("fps", "data_files_size_in_mb", "video_files_size_in_mb"):
        assert type(info[key]) is type(lerobot[key]) is int, key
    assert info["features"]["observation.images.eye_in_hand"]["info"]["video.fps"] == 20


def test_fractional_fps_stays_a_float(tmp_path: Path) -> None:
    ep = make_episode(6, depth=False, camera_matrices=False)
    ep.fps = 12.5
    write_episodes(tmp_path / "ds", [ep])
    assert json.loads((tmp_path / "ds/meta/info.json").read_text())["fps"] == 12.5


# ---- per-episode statistics ------------------------------------------------------------------
def test_per_episode_stats_columns_for_every_feature(written: tuple[Path, list]) -> None:
    root, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    names = set(_episodes_table(root).column_names)
    for key in info["features"]:
        for stat in LEROBOT_STAT_NAMES:
            assert f"stats/{key}/{stat}" in names, (key, stat)


def test_stats_columns_have_lerobots_types(written: tuple[Path, list]) -> None:
    """Same column types as the episodes file lerobot 0.4.4 itself wrote, feature kind by kind."""
    ours = _episodes_table(written[0]).schema
    theirs = _episodes_table(LEROBOT_RGB).schema
    pairs = {
        "observation.images.eye_in_hand": "observation.images.robot0_eye_in_hand",
        "observation.state": "observation.state",
        "action": "action",
        "timestamp": "timestamp",
        "frame_index": "frame_index",
        "episode_index": "episode_index",
        "index": "index",
        "task_index": "task_index",
    }
    for our_key, their_key in pairs.items():
        for stat in LEROBOT_STAT_NAMES:
            assert ours.field(f"stats/{our_key}/{stat}").type == theirs.field(f"stats/{their_key}/{stat}").type, (
                our_key, stat)
    # lerobot keeps the episodes file's own location last
    assert ours.names[-2:] == ["meta/episodes/chunk_index", "meta/episodes/file_index"]


def test_per_episode_stats_values(written: tuple[Path, list]) -> None:
    root, episodes = written
    rows = _episodes_table(root).to_pylist()
    ref = episodes[1]
    row = rows[1]
    np.testing.assert_allclose(row["stats/observation.state/mean"], ref.state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(row["stats/action/q99"], np.quantile(ref.action, 0.99, axis=0), rtol=1e-6)
    assert row["stats/observation.state/count"] == [ref.length]
    assert row["stats/frame_index/max"] == [ref.length - 1]
    image_mean = np.asarray(row["stats/observation.images.agentview_left/mean"])
    assert image_mean.shape == (3, 1, 1) and np.all((0 <= image_mean) & (image_mean <= 1))
    codes = DepthMillimetres().encode(ref.depth["eye_in_hand"])
    assert row["stats/observation.depth.eye_in_hand/min"] == [float(codes.min())]
    assert row["stats/observation.depth.eye_in_hand/max"] == [float(codes.max())]
    assert row["stats/observation.depth.eye_in_hand/count"] == [ref.length]


def test_stats_json_has_every_feature_including_depth(written: tuple[Path, list]) -> None:
    root, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == set(info["features"])
    depth = stats["observation.depth.eye_in_hand"]
    assert set(depth) == set(LEROBOT_STAT_NAMES) and all(len(v) == 1 for v in depth.values())
    assert 300 <= depth["min"][0] <= depth["max"][0] <= 4200  # millimetres of depth in [0.3, 4.2] m


def test_depth_stats_leave_out_pixels_without_depth(tmp_path: Path) -> None:
    ep = make_episode(6, height=16, width=16)
    for cam in ep.camera_names:
        ep.depth[cam][:, :4] = np.nan  # no return
    ds = write_episodes(tmp_path / "ds", [ep])
    row = _episodes_table(tmp_path / "ds").to_pylist()[0]
    assert row["stats/observation.depth.eye_in_hand/min"][0] >= 300
    assert np.all(np.isinf(ds.episode(0).depth["eye_in_hand"][:, :4]))


# ---- format 1 still reads and writes as before ----------------------------------------------
def test_format1_video_depth_reads_exactly_as_before(tmp_path: Path) -> None:
    episodes = [make_episode(10, seed=i, height=16, width=16) for i in range(2)]
    ds = write_episodes(tmp_path / "ds", episodes, depth_storage="video")
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["features"]["observation.depth.eye_in_hand"]["dtype"] == "video"
    assert info["xwam"]["format_version"] == 1
    q = DepthQuantizer()
    for i, ref in enumerate(episodes):
        for cam in ref.camera_names:
            np.testing.assert_array_equal(ds.episode(i).depth[cam], q.decode(q.encode(ref.depth[cam])))
            np.testing.assert_array_equal(ds.episode_depth_codes(i, cam), q.encode(ref.depth[cam]))
    # depth-video statistics in the (3, 1, 1) shape lerobot's tools require of any video feature
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())["observation.depth.eye_in_hand"]
    row = _episodes_table(tmp_path / "ds").to_pylist()[0]
    assert np.shape(stats["mean"]) == np.shape(row["stats/observation.depth.eye_in_hand/mean"]) == (3, 1, 1)


def test_appending_keeps_the_depth_storage_and_stats_columns_a_dataset_has(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_episodes(root, [make_episode(8, seed=0, height=16, width=16)], depth_storage="video")
    # a format-1 dataset written before per-episode statistics existed
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(meta)
    pq.write_table(table.drop_columns([n for n in table.column_names if n.startswith("stats/")]), meta)
    writer = LeRobotV3Writer(root)  # asks for nothing: takes what the dataset has
    assert writer.depth_storage == "video" and not writer.episode_stats
    writer.add_episode(make_episode(9, seed=1, height=16, width=16))
    writer.close()
    ds = LeRobotV3Dataset(root)
    assert ds.depth_storage("eye_in_hand") == "video" and ds.num_episodes == 2
    names = pq.read_schema(root / "meta/episodes/chunk-000/file-001.parquet").names
    assert not any(n.startswith("stats/") for n in names)


def test_unknown_depth_storage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="depth_storage"):
        LeRobotV3Writer(tmp_path / "ds", depth_storage="png")


# ---- what the real lerobot 0.4.4 tools gave back ---------------------------------------------
@pytest.mark.parametrize(("name", "sources"), [("deleted", [0, 2, 3]), ("merged", [0, 2, 1, 3])])
def test_lerobot_tools_output_reads_exactly(name: str, sources: list[int]) -> None:
    ds = LeRobotV3Dataset(TOOLS / name)
    reference = _source_episodes()
    assert ds.num_episodes == len(sources) and ds.has_depth and "xwam" not in ds.info
    assert ds.camera_names == ["front", "wrist"]
    mm = DepthMillimetres()
    for new, old in enumerate(sources):
        ep, ref = ds.episode(new), reference[old]
        np.testing.assert_array_equal(ep.state, ref.state)
        np.testing.assert_array_equal(ep.action, ref.action)
        assert ep.task == ref.task
        for cam in ref.camera_names:
            # depth went through lerobot bit for bit: exactly what our writer stored
            np.testing.assert_array_equal(ds.episode_depth_codes(new, cam), mm.encode(ref.depth[cam]))
            assert np.abs(ep.depth[cam] - ref.depth[cam]).max() <= 0.0005 + 1e-6
            np.testing.assert_array_equal(ep.intrinsics[cam], ref.intrinsics[cam])
            # RGB was re-encoded to AV1 by lerobot: same frames, lossy
            assert np.abs(ep.rgb[cam].astype(int) - ref.rgb[cam]).mean() < 8


@pytest.mark.parametrize("name", ["deleted", "merged"])
def test_lerobot_tools_rebuilt_stats_for_every_feature(name: str) -> None:
    root = TOOLS / name
    info = json.loads((root / "meta/info.json").read_text())
    stats = json.loads((root / "meta/stats.json").read_text())
    assert isinstance(info["fps"], int) and info["fps"] == 20
    assert set(stats) == set(info["features"])  # nothing empty, depth included
    frames = info["total_frames"]
    for key in ("observation.state", "observation.depth.front", "observation.images.wrist"):
        assert stats[key]["count"] == [frames]
    # depth min / max survive exactly (lerobot aggregates them with min / max over episodes)
    reference = _source_episodes()
    kept = [0, 2, 3] if name == "deleted" else [0, 1, 2, 3]
    codes = np.concatenate([DepthMillimetres().encode(reference[i].depth["front"]).reshape(-1) for i in kept])
    assert stats["observation.depth.front"]["min"] == [float(codes.min())]
    assert stats["observation.depth.front"]["max"] == [float(codes.max())]


def test_our_stats_on_lerobot_output_match_its_depth_entries(tmp_path: Path) -> None:
    root = tmp_path / "deleted"
    shutil.copytree(TOOLS / "deleted", root)
    ds = LeRobotV3Dataset(root)
    ours = compute_lerobot_stats(ds, image_episodes=3, image_frames_per_episode=8)
    theirs = json.loads((root / "meta/stats.json").read_text())
    assert set(ours) == set(theirs)
    for key in ("observation.depth.front", "observation.depth.wrist"):
        assert ours[key]["min"] == theirs[key]["min"] and ours[key]["max"] == theirs[key]["max"]


# ---- bad depth columns are one clear error ---------------------------------------------------
def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(TOOLS / "deleted", root)
    return root


def test_depth_column_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    i = table.column_names.index("observation.depth.front")
    short = pa.array([[1000] * 1000] * table.num_rows, pa.list_(pa.uint16()))
    pq.write_table(table.set_column(i, "observation.depth.front", short), path)
    with pytest.raises(DatasetError, match=r"file-000\.parquet \(episode 0\).*observation\.depth\.front.*32x32"):
        LeRobotV3Dataset(root).episode(0)


def test_depth_size_that_does_not_match_the_shape_is_refused(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.depth.front"]["info"]["depth.width"] = 31
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json.*observation\.depth\.front declares shape \[1024\] but 32x31"):
        LeRobotV3Dataset(root)


def test_unknown_depth_encoding_is_refused(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.depth.front"]["info"]["depth.encoding"] = "float16_m"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="depth encoding 'float16_m'"):
        LeRobotV3Dataset(root)


# ---- a dataset the format-1 writer wrote -----------------------------------------------------
FORMAT1 = FIXTURES / "xwam-format1"


def _format1_episodes() -> list:
    return [make_episode(6 + i, seed=i, height=16, width=16, cameras=["front", "wrist"]) for i in range(2)]


def test_format1_fixture_reads_exactly_as_before() -> None:
    ds = LeRobotV3Dataset(FORMAT1)
    assert ds.info["xwam"]["format_version"] == 1 and ds.has_depth and not ds.video_problems()
    q = DepthQuantizer()
    for i, ref in enumerate(_format1_episodes()):
        ep = ds.episode(i)
        np.testing.assert_array_equal(ep.state, ref.state)
        np.testing.assert_array_equal(ep.action, ref.action)
        for cam in ref.camera_names:
            assert ds.depth_storage(cam) == "video"
            # lossless FFV1: exactly the quantiser's codes, so exactly the quantiser's round trip
            np.testing.assert_array_equal(ep.depth[cam], q.decode(q.encode(ref.depth[cam])))


def test_appending_to_the_format1_fixture_keeps_its_format(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(FORMAT1, root)
    for p in root.rglob("*"):  # the fixtures may be checked out read-only
        p.chmod(0o755 if p.is_dir() else 0o644)
    extra = make_episode(7, seed=5, height=16, width=16, cameras=["front", "wrist"])
    ds = write_episodes(root, [extra])
    assert ds.num_episodes == 3 and ds.depth_storage("front") == "video"
    q = DepthQuantizer()
    np.testing.assert_array_equal(ds.episode(2).depth["wrist"], q.decode(q.encode(extra.depth["wrist"])))
    np.testing.assert_array_equal(ds.episode(0).state, _format1_episodes()[0].state)
    names = pq.read_schema(root / "meta/episodes/chunk-000/file-001.parquet").names
    assert not any(n.startswith("stats/") for n in names)  # the old metadata file has none
