"""Training checkpoints on disk: what a step folder holds, ``latest``, pruning, RNG states.

A step folder is an xwam checkpoint (``model/checkpoint``: weights with LoRA merged, config,
statistics, fitted codec) plus what resuming needs: ``trainer_state.pt`` (optimizer, schedule, RNG,
data position, EMA), ``train_config.json``, raw adapter weights with LoRA, and the EMA model in ``ema/``.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xwam.atomic import atomic_write_json
from xwam.config import XWAMConfig
from xwam.model.checkpoint import MODEL_FILE, atomic_write_dir, write_checkpoint_files

TRAIN_CONFIG_FILE = "train_config.json"
TRAINER_STATE_FILE = "trainer_state.pt"
TRAINABLE_FILE = "trainable.safetensors"
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()  # noqa: NPY002 - saving the global legacy RNG on purpose
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` points to (None when the run has none)."""
    link = Path(run_dir) / CHECKPOINTS_DIR / LATEST
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if (target / MODEL_FILE).is_file() and (target / TRAINER_STATE_FILE).is_file():
            return target
    return None


def point_latest(ckpt_dir: Path) -> None:
    link = ckpt_dir.parent / LATEST
    tmp = ckpt_dir.parent / f".{LATEST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(ckpt_dir.name, tmp)
    os.replace(tmp, link)  # atomic: readers see the old or the new target, never none


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    current = (ckpt_root / LATEST).resolve()
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step-*.tmp-*"):  # left behind by a killed writer
        shutil.rmtree(stale, ignore_errors=True)


def write_step_checkpoint(
    target: Path,
    *,
    model_state: dict[str, torch.Tensor],
    config: XWAMConfig,
    stats: dict[str, Any],
    codec_state: dict[str, torch.Tensor] | None,
    train_config: dict[str, Any],
    trainer_state: dict[str, Any],
    trainable_state: dict[str, torch.Tensor] | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
    keep_last: int,
) -> Path:
    """Write one step folder atomically, point ``latest`` at it and prune older ones."""
    from safetensors.torch import save_file

    meta = {"step": str(trainer_state["step"]), "preset": config.preset}

    def write(tmp: Path) -> None:
        write_checkpoint_files(tmp, model_state, config, stats, meta, codec_state)
        atomic_write_json(tmp / TRAIN_CONFIG_FILE, train_config)
        if trainable_state is not None:
            save_file(trainable_state, str(tmp / TRAINABLE_FILE))
        if ema_state is not None:
            (tmp / "ema").mkdir()
            write_checkpoint_files(tmp / "ema", ema_state, config, stats, meta, codec_state)
        torch.save(trainer_state, tmp / TRAINER_STATE_FILE)

    atomic_write_dir(target, write)
    point_latest(target)
    prune_checkpoints(target.parent, keep_last)
    return target


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)


def step_of(ckpt: Path) -> int:
    """The step of a ``step-N`` folder (-1 for anything else)."""
    try:
        return int(Path(ckpt).name.split("-")[-1])
    except ValueError:
        return -1
