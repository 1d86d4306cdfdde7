"""`xwam dataset stats` and `xwam dataset import-stats` on release-format datasets.

The release's statistics live in YAML: a data config (``statistics:``), a run's ``config.yaml``
(``dataset: statistics:``) or the output of its compute_stats.py (``q01`` / ``q99`` at the top).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from xwam.cli import main
from xwam.data.release import ReleaseDataset
from xwam.data.release_stats import read_release_statistics
from xwam.data.stats import NormStats, load_dataset_norm_stats

FIXTURES = Path(__file__).parent / "fixtures" / "release-format"
VARIANTS = ("robocasa", "robotwin")

# The release's statistics as its data configs (configs/data/robocasa.yaml, robotwin.yaml) print them.
RELEASE_TABLE = {
    "robocasa": {
        "q01": {"proprio_left_ee_xyz": [-0.25288332, -0.61332822, 0.074884735],
                "action_left_ee_xyz": [-1.0, -1.0, -1.0],
                "action_left_ee_axisangle": [-0.4525565, -0.4379963, -0.39695188],
                "gripper_pos": [-0.0010162197], "gripper_action": [-1.0]},
        "q99": {"proprio_left_ee_xyz": [0.73430258, 0.59759188, 0.96864849],
                "action_left_ee_xyz": [1.0, 1.0, 1.0],
                "action_left_ee_axisangle": [0.45255655, 0.4379963, 0.39695188],
                "gripper_pos": [1.0155567], "gripper_action": [1.0]},
    },
    "robotwin": {
        "q01": {"proprio_left_ee_xyz": [-0.31380481, -0.052912265, 0.83490938],
                "proprio_right_ee_xyz": [-0.31280088, -0.34872675, 0.81883073],
                "action_left_ee_xyz": [-0.017787576, -0.015278069, -0.012789667],
                "action_left_ee_axisangle": [-0.042664152, -0.086674213, -0.057689808],
                "action_right_ee_xyz": [-0.017702997, -0.015232936, -0.012529075],
                "action_right_ee_axisangle": [-0.043550342, -0.086463645, -0.050407965],
                "gripper_pos": [0.0], "gripper_action": [-0.07537692785263062]},
        "q99": {"proprio_left_ee_xyz": [0.091466717, 0.35603338, 1.0867579],
                "proprio_right_ee_xyz": [0.084402636, 0.050203908, 1.1061862],
                "action_left_ee_xyz": [0.017787576, 0.015278069, 0.012789667],
                "action_left_ee_axisangle": [0.042664152, 0.086674213, 0.057689808],
                "action_right_ee_xyz": [0.017702997, 0.015232936, 0.012529075],
                "action_right_ee_axisangle": [0.043550342, 0.086463645, 0.050407965],
                "gripper_pos": [1.0], "gripper_action": [0.07537692785263062]},
    },
}


def expected(variant: str) -> dict:
    return json.loads((FIXTURES / variant / "expected.json").read_text())


def copy_fixture(variant: str, tmp_path: Path) -> Path:
    root = tmp_path / variant
    shutil.copytree(FIXTURES / variant, root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def write_yaml(path: Path, stats: dict, layout: str) -> Path:
    block = {q: stats[q] for q in ("q01", "q99") if q in stats}
    if layout == "data_config":
        doc = {"dataset_path": "/data/x", "sequence_length": 9, "statistics": block}
    elif layout == "run_config":
        doc = {"num_layers": 30, "dataset": {"frame_skip": 4, "statistics": block}}
    else:  # compute_stats.py's own file
        doc = block
    path.write_text(yaml.safe_dump(doc))
    return path


def assert_rows_match(norm: NormStats, variant: str) -> float:
    """Normalised rows of episode 0 against the release loader's; returns the worst difference."""
    e = expected(variant)
    state, action = ReleaseDataset(FIXTURES / variant).episode_numeric(0)
    steps = len(e["action"])
    ds = np.abs(norm.normalize_state(state.astype(np.float64)) - np.asarray(e["state"])).max()
    da = np.abs(norm.normalize_action(action.astype(np.float64))[:steps] - np.asarray(e["action"])).max()
    np.testing.assert_array_equal(norm.state_valid, np.asarray(e["state_mask"], bool))
    np.testing.assert_array_equal(norm.action_valid, np.asarray(e["action_mask"], bool))
    assert max(ds, da) <= 1e-4
    return float(max(ds, da))


@pytest.mark.parametrize("layout", ["data_config", "run_config", "compute_stats"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_import_stats_from_every_yaml_layout(tmp_path: Path, variant: str, layout: str,
                                             capsys: pytest.CaptureFixture) -> None:
    root = copy_fixture(variant, tmp_path)
    stats_file = write_yaml(tmp_path / "stats.yaml", expected(variant)["statistics"], layout)
    assert main(["dataset", "import-stats", str(root), str(stats_file)]) == 0
    assert "wrote" in capsys.readouterr().out
    norm = load_dataset_norm_stats(root)  # meta/xwam_norm.json, what training reads
    worst = assert_rows_match(norm, variant)
    print(f"{variant}/{layout}: max |normalised - expected| {worst:.2e}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_import_stats_with_the_release_table_values(tmp_path: Path, variant: str) -> None:
    stats_file = write_yaml(tmp_path / "config.yaml", RELEASE_TABLE[variant], "run_config")
    out = tmp_path / "norm.json"
    assert main(["dataset", "import-stats", str(FIXTURES / variant), str(stats_file), "--out", str(out)]) == 0
    assert not (FIXTURES / variant / "meta").exists()  # --out: nothing written into the dataset
    norm = NormStats.from_json(out)
    assert_rows_match(norm, variant)
    table = RELEASE_TABLE[variant]
    np.testing.assert_allclose(norm.state.q01[:3], table["q01"]["proprio_left_ee_xyz"])
    np.testing.assert_allclose(norm.action_bound[3:6], table["q99"]["action_left_ee_axisangle"])
    assert norm.state_raw.tolist() == [n.split("_")[-1] in ("qw", "qx", "qy", "qz") for n in norm.state_names]
    if variant == "robotwin":
        assert norm.action_bound[6] == norm.action_bound[13] == pytest.approx(0.07537692785263062)
        np.testing.assert_allclose(norm.state.q99[8:11], table["q99"]["proprio_right_ee_xyz"])
    else:  # right-arm keys are absent: the right arm is invalid; raw-mode gripper un-normalised
        assert not norm.state_valid[8:].any() and not norm.action_valid[7:].any()
        assert norm.action_bound[6] == 1.0


def test_raw_mode_keeps_the_gripper_unnormalised_whatever_the_file_says(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    stats = json.loads(json.dumps(RELEASE_TABLE["robocasa"]))
    stats["q01"]["gripper_action"], stats["q99"]["gripper_action"] = [-0.125], [0.125]  # what the script gives
    stats_file = write_yaml(tmp_path / "q.yaml", stats, "compute_stats")
    out = tmp_path / "auto.json"
    assert main(["dataset", "import-stats", str(FIXTURES / "robocasa"), str(stats_file), "--out", str(out)]) == 0
    assert "un-normalised" in capsys.readouterr().out
    assert NormStats.from_json(out).action_bound[6] == 1.0
    assert main(["dataset", "import-stats", str(FIXTURES / "robocasa"), str(stats_file), "--out", str(out),
                 "--gripper-action", "normalised"]) == 0
    assert NormStats.from_json(out).action_bound[6] == 0.125


def _bad(stats: dict, change) -> dict:
    stats = json.loads(json.dumps(stats))
    change(stats)
    return stats


BAD = {
    "no q99": (lambda s: s.pop("q99"), r"no q99 mapping"),
    "key in one only": (lambda s: s["q99"].pop("gripper_pos"), r"only in q01: \['gripper_pos'\]"),
    "wrong length": (lambda s: s["q01"].update(proprio_left_ee_xyz=[0.0, 1.0]),
                     r"q01\.proprio_left_ee_xyz must be a list of 3 numbers"),
    "non-finite": (lambda s: s["q99"].update(gripper_action=[float("nan")]), r"q99\.gripper_action holds non-finite"),
    "inverted": (lambda s: s["q01"].update(gripper_pos=[2.0]), r"q01\.gripper_pos \[2\.0\] exceeds q99"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_statistics_are_refused(tmp_path: Path, case: str) -> None:
    change, message = BAD[case]
    path = write_yaml(tmp_path / "bad.yaml", _bad(RELEASE_TABLE["robotwin"], change), "compute_stats")
    with pytest.raises(ValueError, match=message):
        read_release_statistics(path)
    # the command line says it in one line and writes nothing
    assert main(["dataset", "import-stats", str(FIXTURES / "robotwin"), str(path), "--out",
                 str(tmp_path / "n.json")]) != 0
    assert not (tmp_path / "n.json").exists()


def test_a_yaml_without_statistics_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"num_layers": 30, "dataset": {"frame_skip": 4}}))
    with pytest.raises(ValueError, match=r"no release statistics: expected 'statistics:'"):
        read_release_statistics(path)
    path.write_text("q01: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_release_statistics(path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dataset_stats_writes_the_release_statistics(tmp_path: Path, variant: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    root = copy_fixture(variant, tmp_path)
    release_yaml = tmp_path / "quantile_pretrain.yaml"
    assert main(["dataset", "stats", str(root), "--release-yaml", str(release_yaml)]) == 0
    printed = capsys.readouterr().out
    want = expected(variant)["dataset_statistics"]
    got = yaml.safe_load(release_yaml.read_text())
    assert set(got) == {"q01", "q99"}
    worst = max(np.abs(np.subtract(got[q][k], want[q][k])).max() for q in want for k in want[q])
    assert worst <= 1e-6 and {q: set(v) for q, v in got.items()} == {q: set(v) for q, v in want.items()}
    norm = load_dataset_norm_stats(root)  # written to meta/xwam_norm.json
    np.testing.assert_allclose(norm.state.q99[:3], want["q99"]["proprio_left_ee_xyz"])
    if variant == "robocasa":
        assert "un-normalised" in printed and norm.action_bound[6] == 1.0
    # and the statistics file round-trips through import-stats
    out = tmp_path / "again.json"
    assert main(["dataset", "import-stats", str(root), str(release_yaml), "--out", str(out)]) == 0
    again = NormStats.from_json(out)
    np.testing.assert_allclose(again.state.q01, norm.state.q01)
    np.testing.assert_allclose(again.action_bound, norm.action_bound)


def test_dataset_info_on_a_release_dataset(capsys: pytest.CaptureFixture) -> None:
    assert main(["dataset", "info", str(FIXTURES / "robotwin")]) == 0
    out = capsys.readouterr().out
    assert "ReleaseDataset" in out and "episodes   1  frames 37  fps 20" in out
    assert "codec_unit" in out and "delta mode" in out and "head_camera, left_camera, right_camera" in out
