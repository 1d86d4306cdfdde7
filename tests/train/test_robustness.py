"""Crash safety: SIGKILL during a checkpoint write, and NaN losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from train_testutils import losses, tiny_train_config

import xwam.train.trainer as trainer_mod
from xwam.cli import main
from xwam.model.checkpoint import load_checkpoint
from xwam.train import latest_checkpoint, train
from xwam.train.checkpoints import TRAINER_STATE_FILE

KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    import xwam.train as T

    out, data, marker = sys.argv[1:4]
    real_save = torch.save

    def stalled_save(obj, f, *args, **kwargs):
        # the second checkpoint: leave a half-written trainer state and hang until killed
        if isinstance(obj, dict) and obj.get("step") == 4:
            with open(f, "wb") as fh:
                fh.write(b"half a file")
            open(marker, "w").write("writing")
            time.sleep(600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = stalled_save
    T.train(T.TrainConfig(data=[data], out=out, preset="tiny", steps=6, batch_size=2, save_every=2,
                          progress=False, tensorboard=False, threads=1, seed=3))
    """
)


def test_sigkill_during_checkpoint_write_keeps_previous(synthetic_dataset: Path, tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "marker"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(synthetic_dataset), str(marker)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the training process died before reaching the checkpoint write"
            assert time.monotonic() < deadline, "timed out waiting for the checkpoint write"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpts = out / "checkpoints"
    assert not (ckpts / "step-00000004").exists()
    assert list(ckpts.glob(".step-00000004.tmp-*")), (
        "the interrupted write should have left only a temp folder"
    )
    assert latest_checkpoint(out).name == "step-00000002"
    model, cfg, stats = load_checkpoint(ckpts / "latest")
    assert cfg.preset == "tiny" and stats is not None
    # the run resumes from the intact checkpoint and cleans the stale temp folder up
    final = train(tiny_train_config(synthetic_dataset, out, steps=6, save_every=2, resume="latest"))
    assert final.name == "step-00000006"
    assert not list(ckpts.glob(".step-*.tmp-*"))
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == list(
        range(1, 7)
    )


def test_nan_loss_stops_with_a_clear_message(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real = trainer_mod.loss_sums
    calls = {"n": 0}

    def poisoned(model, inputs, noise):
        calls["n"] += 1
        sums, counts = real(model, inputs, noise)
        if calls["n"] == 4:  # the 4th step's forward produces NaN
            sums = sums * float("nan")
        return sums, counts

    monkeypatch.setattr(trainer_mod, "loss_sums", poisoned)
    out = tmp_path / "run"
    before = None
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            str(synthetic_dataset),
            "--out",
            str(out),
            "--steps",
            "6",
            "--batch-size",
            "2",
            "--save-every",
            "2",
            "--threads",
            "1",
            "--no-progress",
            "--no-tensorboard",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite loss at step 4" in err and "step-00000002" in err and "training stopped" in err
    assert latest_checkpoint(out).name == "step-00000002"
    before = torch.load(out / "checkpoints" / "latest" / TRAINER_STATE_FILE, weights_only=True)
    assert before["step"] == 2
    model, _, _ = load_checkpoint(out / "checkpoints" / "latest")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(losses(out)) == 3  # steps 1-3 logged, nothing after the NaN
