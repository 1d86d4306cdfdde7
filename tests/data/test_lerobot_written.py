"""Datasets written by the real lerobot 0.4.4 library (fixtures/lerobot-0.4.4, see its README).

Each test copies the fixture it needs into a temporary folder, so the checked-in fixtures are never
written to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from xwam.cli import main
from xwam.data import ClipConfig, ClipDataset
from xwam.data.errors import DatasetError
from xwam.data.lerobot_reader import LeRobotV3Dataset, load_tasks
from xwam.data.stats import FeatureStats, load_dataset_norm_stats

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot-0.4.4"


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    for p in dst.rglob("*"):  # the fixtures may be checked out read-only
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _expected() -> dict:
    return json.loads((FIXTURES / "mixed_resolution.expected.json").read_text())


# ---- 1. task strings of any string type ------------------------------------------------------
def test_tasks_stored_as_large_string() -> None:
    ds = LeRobotV3Dataset(FIXTURES / "mixed_resolution")
    assert ds.tasks == {0: "pick the cube", 1: "push the button"}
    assert ds.episode_task(1) == _expected()["episodes"]["1"]["task"]


@pytest.mark.parametrize("column", ["task", "__index_level_0__"])
@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_tasks_any_string_type_and_index_name(tmp_path: Path, column: str, kind: pa.DataType) -> None:
    (tmp_path / "meta").mkdir()
    table = pa.table({"task_index": pa.array([1, 0], pa.int64()), column: pa.array(["b", "a"], kind)})
    pq.write_table(table, tmp_path / "meta/tasks.parquet")
    assert load_tasks(tmp_path) == {"b": 1, "a": 0}


# ---- 2. list-valued counts in stats.json -----------------------------------------------------
def test_stats_json_with_list_counts(capsys: pytest.CaptureFixture) -> None:
    data = json.loads((FIXTURES / "mixed_resolution/meta/stats.json").read_text())
    assert data["action"]["count"] == [21]
    assert FeatureStats.from_dict(data["action"]).count == 21
    assert main(["dataset", "info", str(FIXTURES / "mixed_resolution")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("stats:"))
    assert "per-episode quantiles" in line and "xwam dataset stats" in line


def test_lerobot_quantiles_are_not_used_for_normalisation(tmp_path: Path) -> None:
    # lerobot 0.4.4 aggregates per-episode quantiles by a count-weighted mean: the ramps 0..11 and
    # 100..108 get q01 = 42.9 where the dataset's is 0.2
    root = _copy("mixed_resolution", tmp_path)
    lerobot_q01 = json.loads((root / "meta/stats.json").read_text())["observation.state"]["q01"][0]
    assert lerobot_q01 == pytest.approx(42.86, abs=0.1)
    with pytest.raises(FileNotFoundError, match="per-episode quantiles"):
        load_dataset_norm_stats(root)
    assert main(["dataset", "stats", str(root), "--no-images"]) == 0
    norm = load_dataset_norm_stats(root)
    assert norm.state.q01[0] == pytest.approx(0.2) and norm.state.q99[0] == pytest.approx(107.8)
    assert norm.state_names[-1] == "gripper" and norm.action_dim == 4


def test_xwam_stats_json_with_list_counts_loads(tmp_path: Path) -> None:
    from xwam_dataset_testutils import make_episode

    from xwam.data.lerobot import write_episodes

    root = tmp_path / "ds"
    write_episodes(root, [make_episode(12, seed=0)])
    (root / "meta/xwam_norm.json").unlink()  # falls back to stats.json, whose counts are lists
    assert json.loads((root / "meta/stats.json").read_text())["action"]["count"] == [12]
    norm = load_dataset_norm_stats(root)
    assert norm.state.count == 12 and norm.action.count == 12


# ---- 3. cameras of different resolutions -----------------------------------------------------
def test_mixed_resolution_reads_exact_numbers_and_every_camera_size() -> None:
    ds = LeRobotV3Dataset(FIXTURES / "mixed_resolution")
    assert ds.camera_names == ["front", "wrist"]
    assert ds.image_sizes == {"front": (48, 64), "wrist": (32, 32)}
    expected = _expected()["episodes"]
    for e in (0, 1):
        ep = ds.episode(e)
        np.testing.assert_array_equal(ep.state, np.asarray(expected[str(e)]["state"], np.float32))
        np.testing.assert_array_equal(ep.action, np.asarray(expected[str(e)]["action"], np.float32))
        assert ep.rgb["front"].shape[1:] == (48, 64, 3) and ep.rgb["wrist"].shape[1:] == (32, 32, 3)
        for cam in ("front", "wrist"):  # the frames lerobot itself decoded (mean over pixels, in [0, 1])
            means = ep.rgb[cam].reshape(ep.length, -1).mean(1) / 255.0
            np.testing.assert_allclose(means, expected[str(e)]["image_mean"][f"observation.images.{cam}"], atol=0.01)


def test_mixed_resolution_clips_resize_each_camera() -> None:
    ds = LeRobotV3Dataset(FIXTURES / "mixed_resolution")
    clips = ClipDataset(ds, ClipConfig(num_frames=3, frame_skip=2, action_horizon=4, image_size=(16, 16)))
    sample = clips[0]
    assert sample["images"].shape == (2, 3, 3, 16, 16)
    # without a target size every camera takes the first camera's size
    clips = ClipDataset(ds, ClipConfig(num_frames=3, frame_skip=2, action_horizon=4))
    assert clips[len(clips) - 1]["images"].shape == (2, 3, 3, 48, 64)


class _TwoSizes:
    """A source with a 48x64 and a 32x32 camera and camera matrices (the reader path is tested above)."""

    camera_names = ["front", "wrist"]
    has_depth = True
    has_intrinsics = has_extrinsics = True
    num_episodes = 1

    def episode_length(self, i: int) -> int:
        return 6

    def episode(self, i: int, load_depth: bool = True):
        from xwam.data.episode import Episode

        T = 6
        sizes = {"front": (48, 64), "wrist": (32, 32)}
        K = {c: np.tile(np.array([[50.0, 0, (w - 1) / 2], [0, 50.0, (h - 1) / 2], [0, 0, 1]]), (T, 1, 1))
             for c, (h, w) in sizes.items()}
        return Episode(
            task="t", fps=10.0, camera_names=self.camera_names,
            rgb={c: np.zeros((T, h, w, 3), np.uint8) for c, (h, w) in sizes.items()},
            depth={c: np.ones((T, h, w), np.float32) for c, (h, w) in sizes.items()},
            intrinsics=K, extrinsics={c: np.tile(np.eye(4), (T, 1, 1)) for c in sizes},
            state=np.zeros((T, 2), np.float32), action=np.zeros((T, 2), np.float32),
            meta={"depth_kind": "metric"},
        )


def test_mixed_resolution_intrinsics_scaled_per_camera() -> None:
    clips = ClipDataset(_TwoSizes(), ClipConfig(num_frames=2, frame_skip=1, action_horizon=2, image_size=(16, 16)))
    sample = clips[0]
    assert sample["images"].shape == (2, 2, 3, 16, 16) and sample["depth"].shape == (2, 2, 16, 16)
    K = sample["intrinsics"]
    # front 48x64 -> 16x16: fx * 16/64, fy * 16/48; wrist 32x32 -> 16x16: both * 1/2
    torch.testing.assert_close(K[0, 0, 0, 0], torch.tensor(50.0 / 4))
    torch.testing.assert_close(K[0, 0, 1, 1], torch.tensor(50.0 / 3))
    torch.testing.assert_close(K[1, 0, 0, 0], torch.tensor(25.0))
    torch.testing.assert_close(K[1, 0, 1, 1], torch.tensor(25.0))
    # the principal point stays at the image centre
    torch.testing.assert_close(K[:, 0, :2, 2], torch.full((2, 2), 7.5))


def test_info_reports_every_camera_size(capsys: pytest.CaptureFixture) -> None:
    assert main(["dataset", "info", str(FIXTURES / "mixed_resolution"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["camera_sizes"] == {"front": [48, 64], "wrist": [32, 32]}
    assert main(["dataset", "info", str(FIXTURES / "mixed_resolution")]) == 0
    out = capsys.readouterr().out
    assert "front 48x64" in out and "wrist 32x32" in out


# ---- 4. a camera stored as an image feature --------------------------------------------------
def test_image_feature_camera() -> None:
    ds = LeRobotV3Dataset(FIXTURES / "image_camera")
    assert ds.camera_names == ["front"] and ds.image_sizes == {"front": (32, 32)}
    ep = ds.episode(0)
    assert ep.rgb["front"].shape == (8, 32, 32, 3) and ep.rgb["front"].dtype == np.uint8
    for t in range(8):
        assert np.all(ep.rgb["front"][t] == t * 30)
    clips = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=2, action_horizon=2))
    assert clips[0]["images"].shape == (1, 2, 3, 32, 32)


def test_image_feature_corrupt_png_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy("image_camera", tmp_path)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    col = table.column("observation.images.front").to_pylist()
    col[3] = {"bytes": b"not a png", "path": "frame-000003.png"}
    i = table.column_names.index("observation.images.front")
    table = table.set_column(i, "observation.images.front", pa.array(col, table.schema.field(i).type))
    pq.write_table(table, path)
    with pytest.raises(DatasetError, match=r"file-000\.parquet.*episode 0.*frame 3"):
        LeRobotV3Dataset(root).episode(0)
    assert main(["dataset", "stats", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file-000.parquet" in err


# ---- 5. `xwam dataset stats` keeps what it did not compute; extra features are named ----------
def test_stats_merge_keeps_lerobot_features(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy("mixed_resolution", tmp_path)
    before = json.loads((root / "meta/stats.json").read_text())
    assert main(["dataset", "stats", str(root)]) == 0
    after = json.loads((root / "meta/stats.json").read_text())
    assert set(before) <= set(after)
    # a bool feature xwam computes nothing for keeps lerobot's entry as it was
    assert after["next.done"] == before["next.done"]
    # exact statistics (every frame) replace lerobot's for the same feature; counts stay lists
    assert after["next.reward"]["count"] == before["next.reward"]["count"] == [21]
    assert after["action"]["count"] == [21]
    np.testing.assert_allclose(after["observation.state"]["min"], [0, 1, 2, 3, 4, 5])
    assert (root / "meta/xwam_norm.json").is_file()


def test_info_lists_ignored_features(capsys: pytest.CaptureFixture) -> None:
    ds = LeRobotV3Dataset(FIXTURES / "mixed_resolution")
    assert ds.ignored_features == ["next.reward", "next.done"]
    assert main(["dataset", "info", str(FIXTURES / "mixed_resolution")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("ignored"))
    assert "next.reward" in line and "next.done" in line
    assert main(["dataset", "info", str(FIXTURES / "mixed_resolution"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ignored_features"] == ["next.reward", "next.done"]


# ---- 6. depth re-encoded to 8 bit behind the metadata's back; empty stats.json ---------------
DELETED = "xwam_dataset_after_lerobot_delete_episodes"


def test_8bit_depth_is_refused_naming_the_file() -> None:
    ds = LeRobotV3Dataset(FIXTURES / DELETED)
    assert ds.has_depth and ds.depth_quantizer.bits == 12
    with pytest.raises(DatasetError) as info:
        ds.episode(0)
    msg = str(info.value)
    assert "\n" not in msg
    assert "observation.depth.robot0_agentview_left/chunk-000/file-000.mp4" in msg
    assert "8-bit" in msg and "12-bit" in msg
    # RGB alone is still readable
    ep = ds.episode(0, load_depth=False)
    assert ep.depth is None and ep.rgb["robot0_eye_in_hand"].shape[1:] == (64, 64, 3)


def test_deleted_episodes_dataset_info_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy(DELETED, tmp_path)
    assert (root / "meta/stats.json").read_text().strip() == "{}"
    with pytest.raises(FileNotFoundError, match="stats.json"):
        load_dataset_norm_stats(root)
    assert main(["dataset", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "stats:     none" in out
    # the stored depth is not what info.json claims: info says so for each depth camera
    warn = [x for x in out.splitlines() if "observation.depth.robot0_agentview_left" in x and "8-bit" in x]
    assert warn, out
    assert main(["dataset", "stats", str(root), "--no-images"]) == 0
    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["observation.state"]["count"] == [95]
    assert load_dataset_norm_stats(root).state_dim == 8


# ---- 8. errors about a user's data are one line naming the file ------------------------------
def test_bad_stats_json_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy("mixed_resolution", tmp_path)
    data = json.loads((root / "meta/stats.json").read_text())
    data["action"]["q01"] = "oops"
    (root / "meta/stats.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="stats.json"):
        load_dataset_norm_stats(root)
    (root / "meta/stats.json").write_text("{not json")
    assert main(["dataset", "info", str(root)]) == 0  # the summary shows, and says what is wrong
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("stats:"))
    assert "meta/stats.json is not valid JSON" in line
    assert main(["dataset", "stats", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "meta/stats.json" in err


def test_bad_tasks_parquet_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy("image_camera", tmp_path)
    pq.write_table(pa.table({"task_index": [0], "n": [1.5]}), root / "meta/tasks.parquet")
    assert main(["dataset", "info", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tasks.parquet" in err


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture, *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err


def test_bad_columns_and_metadata_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy("mixed_resolution", tmp_path)
    data = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(data)
    i = table.column_names.index("action")
    pq.write_table(table.set_column(i, "action", pa.array(["x"] * table.num_rows)), data)
    _one_line_error(["dataset", "stats", str(root)], capsys, "file-000.parquet", "'action'")

    root = _copy("image_camera", tmp_path)
    meta = root / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(meta).drop_columns(["length"]), meta)
    _one_line_error(["dataset", "info", str(root)], capsys, "meta/episodes", "'length'")

    info = json.loads((root / "meta/info.json").read_text())
    info["features"] = ["observation.state"]
    (root / "meta/info.json").write_text(json.dumps(info))
    _one_line_error(["dataset", "info", str(root)], capsys, "meta/info.json", "features")


# ---- 7. a short `xwam train` on an RGB-only dataset lerobot wrote ----------------------------
def test_info_and_stats_on_lift_rgb(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy("lift_rgb_3cams", tmp_path)
    assert main(["dataset", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "episodes   3  frames 142  fps 20" in out and "depth      no" in out
    assert main(["dataset", "stats", str(root), "--no-images"]) == 0


def test_train_tiny_on_lift_rgb(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy("lift_rgb_3cams", tmp_path)
    out = tmp_path / "run"
    code = main([
        "train", "--preset", "tiny", "--data", str(root), "--out", str(out), "--steps", "2",
        "--batch-size", "1", "--threads", "1", "--no-progress", "--no-tensorboard", "--no-val-images",
        "--set", "model.num_views=3",
    ])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(np.isfinite(r["loss"]) for r in steps)
