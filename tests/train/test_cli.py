"""`xwam train` end to end on a real (simulator-collected) dataset with the small preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from train_testutils import read_metrics

from xwam.cli import main
from xwam.data import open_dataset
from xwam.data.stats import NormStats
from xwam.model.checkpoint import load_checkpoint
from xwam.train import TrainConfig


@pytest.mark.slow
def test_xwam_train_small_preset_on_lift(
    lift_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "runs" / "lift"
    code = main(
        [
            "train",
            "--preset",
            "small",
            "--data",
            str(lift_dataset),
            "--out",
            str(out),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--val-episodes",
            "1",
            "--val-batches",
            "1",
            "--threads",
            "1",
            "--set",
            "sampler.video_steps=4",
            "--set",
            "sampler.action_steps=2",
            "--set",
            "model.quaternion_norm=aligned",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "final checkpoint:" in capsys.readouterr().out
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["samples_per_s"] > 0 for r in records)
    assert {"loss_video", "loss_action", "loss_state", "loss_depth", "lr", "grad_norm"} <= set(records[0])
    val = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert len(val) == 1 and val[0]["val_total"] > 0
    assert (out / "val" / "step-00000003" / "sample-0.png").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    model, cfg, stats = load_checkpoint(out / "checkpoints" / "latest")
    assert cfg.preset == "small" and cfg.sampler.video_steps == 4 and stats["state_names"]
    assert cfg.model.quaternion_norm == "aligned"
    # aligned state quaternions: the checkpoint's statistics carry the reference
    # (the data's mean orientation), and q and -q (the same hand pose) reach the model alike
    norm = NormStats.from_dict(stats)
    state = np.asarray(open_dataset(lift_dataset).episode_numeric(0)[0], np.float64)
    dots = np.sum(state[:, 3:7] * norm.quaternion_reference[3:7], 1)
    assert norm.quaternions_aligned and np.all(np.abs(dots) > 0.9)  # every pose near the mean one ...
    assert dots.min() < 0 < dots.max()  # ... and w >= 0 flips the sign within this Lift episode
    flipped = state.copy()
    flipped[:, 3:7] *= -1
    np.testing.assert_allclose(norm.normalize_state(flipped), norm.normalize_state(state))
    np.testing.assert_allclose(norm.unnormalize_state(norm.normalize_state(flipped)), state, atol=1e-9)
    assert TrainConfig.from_json(out / "train_config.json").steps == 3

    # resume without repeating the options: the run's own train_config.json is reused; a longer --steps
    # needs --extend (the schedule is fixed by the first run)
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--no-progress"]) == 2
    assert "scheduled for 3 steps" in capsys.readouterr().err
    code = main(["train", "--out", str(out), "--resume", "--steps", "4", "--extend", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_cli_reports_bad_input_cleanly(
    synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(
        ["train", "--preset", "tiny", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]
    )
    assert code == 2 and "dataset not found" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--set",
            "model.num_views=3",
            "--data",
            str(synthetic_dataset),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and "model.num_views=3" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(synthetic_dataset),
            "--data",
            str(synthetic_dataset),
            "--weights",
            "1",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and "mixture weights" in capsys.readouterr().err
