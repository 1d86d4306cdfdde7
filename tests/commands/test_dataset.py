"""`xwam dataset info|stats|check-stats`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from xwam_dataset_testutils import make_episode  # noqa: E402

from xwam.cli import main  # noqa: E402
from xwam.data.lerobot import write_episodes  # noqa: E402
from xwam.data.stats import NormStats  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "ds"
    write_episodes(root, [make_episode(20 + i, seed=i) for i in range(2)])
    return root


def test_help_lists_verbs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["dataset", "check-stats", "--help"])
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--rtol" in out


def test_info(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dataset", "info", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "episodes   2  frames 41  fps 20" in out and "resolution 32x48" in out and "depth      yes" in out
    assert "observation.images.eye_in_hand" in out and "state q01" in out
    assert main(["dataset", "info", str(dataset), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["cameras"] == ["agentview_left", "agentview_right", "eye_in_hand"]
        and summary["depth"] is True
    )


def test_stats_and_check_stats(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (dataset / "meta/xwam_norm.json").unlink()
    assert main(["dataset", "stats", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert (dataset / "meta/xwam_norm.json").is_file() and "gripper" in out and "q99" in out
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(dataset / "meta/xwam_norm.json", ckpt / "norm_stats.json")
    assert main(["dataset", "check-stats", str(dataset), "--checkpoint", str(ckpt)]) == 0
    assert "match" in capsys.readouterr().out
    other = NormStats.from_json(ckpt / "norm_stats.json")
    other.action.q99 = other.action.q99 * 2
    other.to_json(ckpt / "norm_stats.json")
    assert main(["dataset", "check-stats", str(dataset), "--checkpoint", str(ckpt)]) == 1
    out = capsys.readouterr().out
    assert "disagree" in out and "action[0] (dx) q99" in out
    # a checkpoint that aligned the state's quaternions (the small preset) is compared like with like
    from xwam.data.open import open_dataset
    from xwam.data.stats import compute_norm_stats, with_quaternion_norm

    ds = open_dataset(dataset)
    with_quaternion_norm(compute_norm_stats(ds), "aligned", [ds]).to_json(ckpt / "norm_stats.json")
    assert main(["dataset", "check-stats", str(dataset), "--checkpoint", str(ckpt)]) == 0
    assert "match" in capsys.readouterr().out


def test_clean_errors(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dataset", "info", str(tmp_path / "missing")]) == 2
    assert "dataset not found" in capsys.readouterr().err
    assert main(["dataset", "check-stats", str(dataset), "--checkpoint", str(tmp_path)]) == 2
    assert "norm_stats.json" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    assert main(["dataset", "stats", str(tmp_path / "junk")]) == 2
    assert "neither a LeRobot v3 dataset" in capsys.readouterr().err


def test_info_names_the_depth_storage_of_each_format(capsys: pytest.CaptureFixture) -> None:
    fixtures = Path(__file__).resolve().parents[1] / "data" / "fixtures"
    expected = {"lerobot-0.4.4-xwam-format2/deleted": "uint16 millimetres in the data parquet",
                "xwam-format1": "12-bit log-quantised FFV1 depth video",
                "release-format/robocasa": "8-bit release code"}
    for folder, text in expected.items():
        assert main(["dataset", "info", str(fixtures / folder)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("depth "))
        assert text in line, (folder, line)
