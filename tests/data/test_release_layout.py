"""The release-format reader against the fixtures the release's own loader was run on.

``tests/data/fixtures/release-format/{robocasa,robotwin}`` (README there) hold two tiny datasets in
the release's layout and, in ``expected.json``, what the release's loader returned for episode 0:
normalised states and actions, masks, clip starts, depth values and frame codes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from xwam.data.clips import ClipConfig, ClipDataset
from xwam.data.errors import DatasetError
from xwam.data.open import open_dataset
from xwam.data.release import VIEW_TYPES, ReleaseDataset
from xwam.data.release_stats import norm_stats_from_release, release_statistics
from xwam.data.stats import compute_norm_stats

FIXTURES = Path(__file__).parent / "fixtures" / "release-format"
VARIANTS = ("robocasa", "robotwin")
TOL = 1e-4  # the release's loader works in float32


def expected(variant: str) -> dict:
    return json.loads((FIXTURES / variant / "expected.json").read_text())


def imported_stats(variant: str):
    """NormStats from the release config statistics the expected rows were normalised with."""
    e = expected(variant)
    return norm_stats_from_release(e["statistics"], raw_gripper=e["action_mode"] == "raw")


def copy_fixture(variant: str, tmp_path: Path) -> Path:
    root = tmp_path / variant
    shutil.copytree(FIXTURES / variant, root)
    for path in root.rglob("*"):  # the fixture may be checked out read-only
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def frame_code(image: np.ndarray) -> int:
    """The fixture's frame index code: 6 blocks of 8 x 8 px in rows 0-7, block b white = bit 5 - b."""
    bits = [int(image[:8, 8 * b : 8 * b + 8].mean() > 127) for b in range(6)]
    return int("".join(map(str, bits)), 2)


# ---- layout -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_layout_views_and_instructions(variant: str) -> None:
    e = expected(variant)
    ds = open_dataset(FIXTURES / variant)
    assert isinstance(ds, ReleaseDataset)
    assert ds.camera_names == e["view_order"]
    assert [VIEW_TYPES[t] for t in ds.camera_types] == e["camera_type_mask"]
    assert ds.fps == e["fps_stored"] and ds.action_mode == e["action_mode"] and ds.depth_kind == "codec_unit"
    assert ds.episode_ids[0] == e["episode_key"] and ds.episode_length(0) == e["num_frames"]
    ep = ds.episode(0, load_depth=False)
    assert ep.meta["instructions"] == e["instructions"] and ep.task == e["instructions"][0]
    assert ep.meta["depth_kind"] == "codec_unit" and ep.depth is None


# ---- state and action semantics -----------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_normalised_rows_and_masks_equal_the_release_loader(variant: str) -> None:
    e = expected(variant)
    ds = ReleaseDataset(FIXTURES / variant)
    norm = imported_stats(variant)
    state, action = ds.episode_numeric(0)
    want_state, want_action = np.asarray(e["state"]), np.asarray(e["action"])
    got_state = norm.normalize_state(state.astype(np.float64))
    got_action = norm.normalize_action(action.astype(np.float64))
    steps = ds.episode_action_steps(0)
    assert steps == len(want_action)  # robocasa (raw): every frame; robotwin (delta): T - 1
    print(f"{variant}: max |state - expected| {np.abs(got_state - want_state).max():.2e}, "
          f"max |action - expected| {np.abs(got_action[:steps] - want_action).max():.2e}")
    np.testing.assert_allclose(got_state, want_state, atol=TOL)
    np.testing.assert_allclose(got_action[:steps], want_action, atol=TOL)
    assert np.all(action[steps:] == 0)  # delta mode: the last frame has no action, stored as zero
    np.testing.assert_array_equal(norm.state_valid, np.asarray(e["state_mask"], bool))
    np.testing.assert_array_equal(norm.action_valid, np.asarray(e["action_mask"], bool))
    quat = state[:, [3, 4, 5, 6]] if variant == "robocasa" else state[:, [3, 4, 5, 6, 11, 12, 13, 14]]
    assert np.all(quat.reshape(len(state), -1, 4)[..., 0] >= 0)  # canonical w >= 0


def test_raw_mode_gripper_is_minus_the_command() -> None:
    ds = ReleaseDataset(FIXTURES / "robocasa")
    data = json.loads(ds.json_path(0).read_text())
    raw = np.asarray(data["actions"]["raw_actions"])
    _, action = ds.episode_numeric(0)
    np.testing.assert_allclose(action[:, :6], raw[:, :6], atol=1e-6)
    np.testing.assert_array_equal(action[:, 6], -raw[:, 6].astype(np.float32))
    assert np.all(action[:, 7:] == 0)


# ---- clips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_clip_starts_and_the_first_clip_equal_the_release_loader(variant: str) -> None:
    e = expected(variant)
    ds = ReleaseDataset(FIXTURES / variant)
    clips = ClipDataset(ds, ClipConfig.release(augment=False), norm_stats=imported_stats(variant))
    index = [[ds.episode_ids[int(ep)], int(start)] for _, ep, start in clips.index]
    assert index == e["dataset_index"] and len(clips) == e["dataset_len"]
    assert [start for key, start in index if key == e["episode_key"]] == e["valid_clip_starts"]
    sample, first = clips[0], e["clip_start_0"]
    np.testing.assert_array_equal(sample["frame_indices"].numpy(), first["frame_ids"])
    np.testing.assert_allclose(sample["state_norm"].numpy(), first["proprios"], atol=TOL)
    np.testing.assert_allclose(sample["action_norm"].numpy(), first["actions"], atol=TOL)
    assert sample["action_mask"].shape == (32, 14)
    np.testing.assert_array_equal(sample["action_mask"].numpy(), np.tile(np.asarray(e["action_mask"], bool), (32, 1)))
    assert sample["instruction"] in e["instructions"] and sample["depth_kind"] == "codec_unit"
    # every view returned the frames start + 4 i (the fixture's frame code says which frame it is)
    images = sample["images"].permute(0, 1, 3, 4, 2).numpy()  # (V, F, H, W, 3)
    for view in images:
        assert [frame_code(f) for f in view] == first["frame_ids"]
    assert sample["depth"].shape == (3, 9, 64, 80) and float(sample["depth"].min()) == -1.0


def test_clips_never_use_the_missing_last_action_of_delta_mode() -> None:
    ds = ReleaseDataset(FIXTURES / "robotwin")
    assert ds.final_frames_without_action == 1
    T = ds.episode_length(0)
    long = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=1, action_horizon=8))
    last = long.get(len(long) - 1)
    start = int(last["start"])
    recorded = T - 1 - start  # frames start .. T - 2 carry actions
    assert last["action_mask"][:recorded].all() and not last["action_mask"][recorded:].any()
    full = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=1, action_horizon=8, require_full_actions=True))
    assert int(full.index[-1, 2]) == T - 1 - 8


# ---- depth --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_depth_is_the_release_loaders_unit_value(variant: str) -> None:
    e = expected(variant)
    ep = ReleaseDataset(FIXTURES / variant).episode(0)
    depth = e["depth"]
    for cam in e["view_order"]:
        d = ep.depth[cam]
        assert d.dtype == np.float32 and d.shape == (e["num_frames"], 64, 80)
        # every value is a code v as v / 127.5 - 1 (nothing rescaled, no metres)
        codes = (d + 1.0) * 127.5
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
        assert d.min() >= -1 and d.max() <= 1
        corners = e["video"][cam]["square_top_left_xy"]
        for t in (0, 17, e["num_frames"] - 1):
            x, y = corners[t]
            assert d[t, 60 if y < 40 else 2, 2 if x > 40 else 76] == depth["background_value"]  # the wall: -1 exactly
            centre = d[t, y + 8, x + 8]
            # the release's loader reads the same decode within one code level of the value written
            assert abs(centre - depth["square_value"][t]) <= 1 / 127.5 + 1e-6, (cam, t, centre)
    last = e["num_frames"] - 1
    x, y = e["video"][e["view_order"][0]]["square_top_left_xy"][last]
    assert ep.depth[e["view_order"][0]][last, y + 8, x + 8] == depth["square_value"][last] == 1.0  # nearest: +1


# ---- statistics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_statistics_equal_the_release_script(variant: str) -> None:
    e = expected(variant)
    ds = ReleaseDataset(FIXTURES / variant)
    got, want = release_statistics(ds), e["dataset_statistics"]
    assert {q: set(v) for q, v in got.items()} == {q: set(v) for q, v in want.items()}
    worst = max(np.abs(np.subtract(got[q][k], want[q][k])).max() for q in want for k in want[q])
    print(f"{variant}: max |statistics - expected| {worst:.2e}")
    assert worst <= 1e-6
    norm = compute_norm_stats(ds)  # the dataset's own rule
    bound = norm.action_bound
    if variant == "robocasa":  # raw mode: the gripper action stays un-normalised, not the script's 0.125
        assert bound[6] == 1.0 and want["q99"]["gripper_action"] == [0.125]
        assert not norm.action_valid[7:].any() and not norm.state_valid[8:].any()
    else:
        assert bound[6] == bound[13] == want["q99"]["gripper_action"][0]
    np.testing.assert_allclose(bound[:3], want["q99"]["action_left_ee_xyz"])
    np.testing.assert_allclose(norm.state.q01[:3], want["q01"]["proprio_left_ee_xyz"])


# ---- discovery and bad input --------------------------------------------------------------------
def test_without_metadata_the_episodes_are_globbed_and_nothing_is_written(tmp_path: Path) -> None:
    root = copy_fixture("robocasa", tmp_path)
    (root / "metadata.json").unlink()
    ds = open_dataset(root)
    assert isinstance(ds, ReleaseDataset)
    assert ds.episode_ids == ["chunk-0000/episode_0000000", "chunk-0000/episode_0000001"]
    assert [ds.episode_length(i) for i in range(2)] == [40, 33]
    assert not (root / "metadata.json").exists()
    assert len(ClipDataset(ds, ClipConfig.release(augment=False))) == 9


@pytest.mark.parametrize("layout", ["matrix", "rotvec", "flat_pos"])
def test_other_rotation_layouts_give_the_same_state(tmp_path: Path, layout: str) -> None:
    root = copy_fixture("robotwin", tmp_path)
    path = root / "data/chunk-0000/episode_0000000.json"
    data = json.loads(path.read_text())
    for block in ("proprios", "actions"):
        for arm in ("left", "right"):
            R = np.asarray(data[block][f"{arm}_ee_rotm"]).reshape(-1, 3, 3)
            if layout == "matrix":
                data[block][f"{arm}_ee_rotm"] = R.tolist()
            elif layout == "rotvec":
                data[block][f"{arm}_ee_rotm"] = Rotation.from_matrix(R).as_rotvec().tolist()
            else:
                data[block][f"{arm}_ee_pos"] = np.ravel(data[block][f"{arm}_ee_pos"]).tolist()
    path.write_text(json.dumps(data))
    state, action = ReleaseDataset(root).episode_numeric(0)
    ref_state, ref_action = ReleaseDataset(FIXTURES / "robotwin").episode_numeric(0)
    np.testing.assert_allclose(state, ref_state, atol=1e-6)
    np.testing.assert_allclose(action, ref_action, atol=1e-6)


def _edit(root: Path, change) -> None:
    path = root / "data/chunk-0000/episode_0000000.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


BAD = {
    "missing proprio": (lambda d: d["proprios"].pop("left_ee_rotm"), r"field 'proprios\.left_ee_rotm' missing"),
    "wrong shape": (lambda d: d["proprios"].update(left_ee_pos=[[0.0, 0.0]] * 40),
                    r"field 'proprios\.left_ee_pos': expected 40 x 3 values, got shape \(40, 2\)"),
    "raw width": (lambda d: d["actions"].update(raw_actions=[[0.0] * 6] * 40),
                  r"field 'actions\.raw_actions': expected 40 x 7"),
    "view type": (lambda d: d["observations"]["robot0_eye_in_hand"].update(type="wrist"),
                  r"field 'observations\.robot0_eye_in_hand\.type' is 'wrist'"),
    "missing depth path": (lambda d: d["observations"]["robot0_agentview_left"].pop("depth_path"),
                           r"field 'observations\.robot0_agentview_left\.depth_path' missing"),
    "beyond end": (lambda d: d["observations"]["robot0_agentview_right"].update(start=2),
                   r"view 'robot0_agentview_right' needs MP4 frames 2 \.\. 41 .* beyond its 'end' 40"),
    "fps": (lambda d: d["observations"]["robot0_eye_in_hand"].update(fps=10.0), r"views disagree on 'fps'"),
    "instructions": (lambda d: d.update(instructions=[]), r"field 'instructions' must be a non-empty list"),
    "num_frames": (lambda d: d.update(num_frames=39), r"'num_frames' is 39 but metadata\.json says 40"),
    "no arm": (lambda d: d.update(proprios={}), r"'proprios' has no arm"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_episodes_name_the_file_and_field(tmp_path: Path, case: str) -> None:
    root = copy_fixture("robocasa", tmp_path)
    change, message = BAD[case]
    _edit(root, change)
    with pytest.raises(DatasetError, match=r"episode_0000000\.json \(episode chunk-0000/episode_0000000\).*" + message):
        ReleaseDataset(root).episode(0)


def test_delta_mode_needs_the_action_targets(tmp_path: Path) -> None:
    root = copy_fixture("robotwin", tmp_path)
    _edit(root, lambda d: d["actions"].pop("right_ee_rotm"))
    with pytest.raises(DatasetError, match=r"field 'actions\.right_ee_rotm' missing \(delta mode"):
        ReleaseDataset(root).episode_numeric(0)


def test_missing_files_are_named(tmp_path: Path) -> None:
    root = copy_fixture("robocasa", tmp_path)
    (root / "video/robot0_agentview_right/chunk-0000/episode_0000001.mp4").unlink()
    ds = ReleaseDataset(root)
    ds.episode(0)
    with pytest.raises(DatasetError, match=r"robot0_agentview_right/chunk-0000/episode_0000001\.mp4"):
        ds.episode(1)
    (root / "data/chunk-0000/episode_0000001.json").write_text("{")
    with pytest.raises(DatasetError, match=r"episode_0000001\.json \(episode chunk-0000/episode_0000001\) is not valid"):
        ReleaseDataset(root).episode(1)
    (root / "data/chunk-0000/episode_0000001.json").unlink()
    with pytest.raises(DatasetError, match=r"file missing: .*episode_0000001\.json"):
        ReleaseDataset(root).episode(1)
    (root / "metadata.json").write_text('{"chunk-0000/episode_0000000": "forty"}')
    with pytest.raises(DatasetError, match=r"metadata\.json: episode 'chunk-0000/episode_0000000' has 'forty'"):
        ReleaseDataset(root)
