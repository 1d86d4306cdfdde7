"""End to end on release-format data: `xwam train` on the RoboCasa fixture (episode 1 held out for
validation), then `xwam diagnose` on the checkpoint; `xwam eval-4d` refuses (it needs metric depth and camera matrices)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xwam.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "release-format" / "robocasa"

# A tiny model shaped like the release's clips: 3 views, 9 frames at skip 4, 32 actions, 16-d state,
# 14-d action, at the fixture's own 64 x 80 (diagnose feeds dataset frames as they are). The pixel
# codec with 8 x 8 patches keeps the token count small.
MODEL = {
    "num_views": 3, "num_frames": 9, "frame_skip": 4, "action_horizon": 32, "image_height": 64,
    "image_width": 80, "state_dim": 16, "action_dim": 14, "spatial_compression": 8, "latent_channels": 192,
}


def test_train_then_diagnose_on_release_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "robocasa"
    shutil.copytree(FIXTURE, data)
    for path in data.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    run = tmp_path / "run"
    overrides = [a for k, v in MODEL.items() for a in ("--set", f"model.{k}={v}")]
    code = main(["train", "--preset", "tiny", "--data", str(data), "--out", str(run), "--steps", "3",
                 "--batch-size", "2", "--threads", "1", "--no-progress", "--no-tensorboard", "--val-episodes", "1",
                 *overrides])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in steps)
    assert all(r["loss_depth"] > 0 for r in steps)  # release depth (codec units) was trained on
    assert (run / "val" / "step-00000003" / "sample-0.png").is_file()  # true and imagined depth drawn in its kind
    # the run normalised with the release's statistics rule: raw-mode gripper un-normalised, right arm invalid
    stats = json.loads((run / "norm_stats.json").read_text())
    assert stats["action"]["q99"][6] == 1.0 and not any(stats["state_valid"][8:]) and not any(stats["action_valid"][7:])
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]

    out = tmp_path / "diagnose"
    assert main(["diagnose", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--clips-per-episode", "1", "--threads", "1"]) == 0
    result = json.loads((out / "diagnose.json").read_text())
    assert result["episodes"] == [0, 1] and result["num_clips"] == 2
    assert all(np.isfinite(result["conditions"][c]["mae"]) for c in result["conditions"])

    capsys.readouterr()
    assert main(["eval-4d", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "e4d")]) != 0
    assert "metric depth" in capsys.readouterr().err
    # the checkpoint records what its depth branch predicts, so no tool reads its depth as metres
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model"]["depth_kind"] == "codec_unit"
    capsys.readouterr()
    assert main(["imagine", "--checkpoint", str(checkpoint), "--episode", f"{data}:0",
                 "--out", str(tmp_path / "imagine")]) != 0
    assert "'codec_unit' depth" in capsys.readouterr().err and not (tmp_path / "imagine" / "clouds").exists()

    # one-arm release data: the checkpoint acts in the simulator in the release's RoboCasa layout
    # (16-d state in, the first 7 of 14 action dims out, gripper sign flipped back)
    assert config["policy"]["robot_io"] == "release_single_arm"
    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--task", "Lift", "--episodes", "1", "--max-steps", "3",
                 "--videos", "0", "--out", str(out)]) == 0
    assert "robot signals in the release_single_arm layout" in capsys.readouterr().out
    (episode,) = json.loads((out / "results.json").read_text())["episodes"]["Lift"]
    assert episode["length"] == 3 and episode["chunks"] == 1
