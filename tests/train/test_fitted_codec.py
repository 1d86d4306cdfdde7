"""The pca codec through the trainer: fitted once, stored in every checkpoint, used by the policy,
kept on resume; and the run summary that says whether a time cap cut the schedule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_resume import _interrupted_run
from train_testutils import losses, tiny_train_config

from xwam.model.checkpoint import CODEC_FILE
from xwam.train import train

PCA = ["model.codec=pca", "model.latent_channels=6"]


def test_pca_codec_is_fitted_stored_and_used_by_the_policy(synthetic_dataset: Path, tmp_path: Path) -> None:
    from xwam.policy import XWAMPolicy

    ckpt = train(tiny_train_config(synthetic_dataset, tmp_path / "run", steps=3, overrides=PCA, ema_decay=0.9))
    fit = json.loads((tmp_path / "run" / "codec_fit.json").read_text())
    assert fit["codec"] == "pca" and fit["latent_channels"] == 6 and fit["clips"] > 0
    assert fit["rgb_reconstruction_psnr_db"] > 5 and fit["depth_reconstruction_psnr_db"] > 5
    stored = load_file(str(ckpt / CODEC_FILE))
    assert stored["rgb.components"].shape == (6, 12) and stored["depth.components"].shape == (6, 12)
    ema_stored = load_file(str(ckpt / "ema" / CODEC_FILE))
    assert all(torch.equal(stored[k], ema_stored[k]) for k in stored)

    for folder in (ckpt, ckpt / "ema"):
        policy = XWAMPolicy.from_checkpoint(folder)
        assert torch.equal(policy.processor.codec.components, stored["rgb.components"])
        assert torch.equal(policy.processor.depth_codec.components, stored["depth.components"])
        obs = {f"observation/images/{c}": np.zeros((16, 16, 3), np.uint8) for c in policy.camera_names}
        obs["observation/state"] = np.zeros(8, np.float32)
        assert np.isfinite(policy.infer(obs)["actions"]).all()

    (ckpt / CODEC_FILE).unlink()
    with pytest.raises(ValueError, match="codec.safetensors"):
        XWAMPolicy.from_checkpoint(ckpt)


def test_resume_keeps_the_fitted_codec(synthetic_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    full = train(tiny_train_config(synthetic_dataset, tmp_path / "full", overrides=PCA))
    crashed = tiny_train_config(synthetic_dataset, tmp_path / "resumed", overrides=PCA)
    _interrupted_run(crashed, crash_in_step=5, monkeypatch=monkeypatch)
    resumed = train(tiny_train_config(synthetic_dataset, tmp_path / "resumed", overrides=PCA, resume="latest"))
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")
    a, b = load_file(str(full / CODEC_FILE)), load_file(str(resumed / CODEC_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_summary_says_when_a_time_cap_cut_the_schedule(synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    train(tiny_train_config(synthetic_dataset, tmp_path / "full", steps=2))
    summary = json.loads((tmp_path / "full" / "train_summary.json").read_text())
    assert summary["steps_done"] == summary["steps"] == 2 and summary["cut_by_time"] is False
    train(tiny_train_config(synthetic_dataset, tmp_path / "cut", steps=50, max_minutes=0.0))
    summary = json.loads((tmp_path / "cut" / "train_summary.json").read_text())
    assert summary["cut_by_time"] is True and summary["steps_done"] < 50
    assert "WARNING: the time budget" in capsys.readouterr().err
