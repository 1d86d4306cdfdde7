"""Helpers shared by the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def tiny_train_config(data: Path, out: Path, **changes):
    """A few-step tiny-preset run: one thread, no progress bar, no TensorBoard."""
    from xwam.train import TrainConfig

    base = dict(
        data=[str(data)],
        out=str(out),
        preset="tiny",
        steps=6,
        batch_size=2,
        save_every=3,
        progress=False,
        tensorboard=False,
        threads=1,
        val_images=False,
        seed=3,
    )
    base.update(changes)
    return TrainConfig(**base)


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """Training records (not validation ones) of a run's metrics.jsonl."""
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") != "val"]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run)]
