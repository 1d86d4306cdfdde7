"""Exact resume: a run interrupted after a checkpoint and resumed equals the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_testutils import losses, read_metrics, tiny_train_config

from xwam.train import Trainer, latest_checkpoint, train
from xwam.train.checkpoints import TRAINER_STATE_FILE


class Crash(Exception):
    pass


def _interrupted_run(cfg, crash_in_step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``cfg`` but raise inside optimizer step ``crash_in_step`` (1-based), like a killed job."""
    original = Trainer.train_step

    def flaky(self, micro):
        if self.step + 1 == crash_in_step:
            raise Crash
        return original(self, micro)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", flaky)
        with pytest.raises(Crash):
            train(cfg)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_uninterrupted(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch, workers: int
) -> None:
    changes = dict(workers=workers, ema_decay=0.9, val_episodes=1)
    full = train(tiny_train_config(synthetic_dataset, tmp_path / "full", **changes))
    crashed = tiny_train_config(synthetic_dataset, tmp_path / "resumed", **changes)
    _interrupted_run(crashed, crash_in_step=5, monkeypatch=monkeypatch)
    assert latest_checkpoint(tmp_path / "resumed").name == "step-00000003"
    assert len(read_metrics(tmp_path / "resumed")) == 4  # steps 1-4 were logged before the crash
    resumed = train(tiny_train_config(synthetic_dataset, tmp_path / "resumed", resume="latest", **changes))

    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")  # bit-identical on the CPU
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == list(range(1, 7))
    for name in ("model.safetensors", "ema/model.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    val = [
        r
        for r in map(
            __import__("json").loads, (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
        )
        if r.get("split") == "val"
    ]
    assert len(val) == 1 and val[0]["step"] == 6


def test_new_run_refuses_a_folder_with_checkpoints(synthetic_dataset: Path, tmp_path: Path) -> None:
    train(tiny_train_config(synthetic_dataset, tmp_path / "run", steps=2, save_every=1))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(tiny_train_config(synthetic_dataset, tmp_path / "run", steps=2))


def test_keeps_last_k_checkpoints_and_latest(synthetic_dataset: Path, tmp_path: Path) -> None:
    final = train(tiny_train_config(synthetic_dataset, tmp_path / "run", steps=5, save_every=1, keep_last=2))
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert kept == ["step-00000004", "step-00000005"]
    assert latest_checkpoint(tmp_path / "run") == final.resolve()
    state = torch.load(final / TRAINER_STATE_FILE, weights_only=True)
    assert state["step"] == 5 and state["sampler"]["next_step"] == 5
