"""Training checkpoints on disk: what a step folder holds, ``latest``, pruning, RNG states.

A step folder is an xwam checkpoint (``model/checkpoint``: weights with LoRA merged, config,
statistics, fitted codec) plus what resuming needs: ``trainer_state.pt`` (optimizer, schedule, RNG,
data position, EMA), ``train_config.json``, raw adapter weights with LoRA, and the EMA model in ``ema/``.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xwam.atomic import atomic_write_dir, atomic_write_json, restore_aside
from xwam.config import XWAMConfig
from xwam.model.checkpoint import (
    MODEL_FILE,
    CheckpointError,
    verify_checkpoint,
    write_checkpoint_files,
    write_manifest,
)

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


def _complete(ckpt: Path) -> bool:
    return (ckpt / MODEL_FILE).is_file() and (ckpt / TRAINER_STATE_FILE).is_file()


def step_folders(ckpt_root: Path) -> list[Path]:
    """The run's ``step-N`` folders, newest first."""
    return sorted((p for p in ckpt_root.glob("step-*") if p.is_dir() and step_of(p) >= 0), key=step_of, reverse=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: where ``checkpoints/latest`` points, or, when that pointer is
    missing or dangling (a crash between writes), the newest complete ``step-N`` folder."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    link = root / LATEST
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if _complete(target):
            return target
    return next((p for p in step_folders(root) if _complete(p)), None)


def intact(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (None when it can): verified against its manifest, its
    EMA model too, and its trainer state readable."""
    try:
        verify_checkpoint(ckpt)
        if (ckpt / "ema").is_dir():
            verify_checkpoint(ckpt / "ema")
    except CheckpointError as exc:
        return exc.reason
    if not _complete(ckpt):
        return f"{MODEL_FILE} or {TRAINER_STATE_FILE} is missing"
    return None


def resume_checkpoint(run_dir: str | Path, say: Callable[[str], None]) -> Path | None:
    """The newest intact checkpoint of a run, tidying what an interrupted save left behind first;
    every damaged checkpoint passed over is reported through ``say`` with its path and reason."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    tidy_checkpoints(root)
    link = root / LATEST
    pointed = link.resolve() if link.is_symlink() or link.exists() else None
    if pointed is not None and not pointed.is_dir():
        say(f"{link} points to {pointed}, which does not exist; using the newest intact checkpoint")
        pointed = None
    candidates = ([pointed] if pointed is not None else []) + [p for p in step_folders(root) if p != pointed]
    for ckpt in candidates:
        reason = intact(ckpt)
        if reason is None:
            if ckpt != pointed:
                point_latest(ckpt)
            return ckpt
        say(f"checkpoint {ckpt} is damaged ({reason}); trying the next older one")
    return None


def tidy_checkpoints(ckpt_root: Path) -> None:
    """Clean up after a save that was killed: put back a checkpoint set aside by a two-rename swap
    (where its replacement never landed), delete temporary and set-aside folders and pointer temp
    files."""
    names = {p.name.split(".")[1] for p in ckpt_root.glob(".step-*.*-*")}
    for name in sorted(names):
        restore_aside(ckpt_root / name, lambda aside: intact(aside) is None)
    for tmp in ckpt_root.glob(f".{LATEST}.tmp-*"):
        tmp.unlink(missing_ok=True)


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
    for stale in ckpt_root.glob(f".{LATEST}.tmp-*"):
        stale.unlink(missing_ok=True)


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
            write_manifest(tmp / "ema")
        torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
        write_manifest(tmp)  # last: its presence says the folder is complete

    atomic_write_dir(target, write)
    point_latest(target)
    prune_checkpoints(target.parent, keep_last)
    return target


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a truncated or foreign file
        raise CheckpointError(ckpt, f"cannot read {TRAINER_STATE_FILE} ({type(exc).__name__}: {exc})") from exc


def step_of(ckpt: Path) -> int:
    """The step of a ``step-N`` folder (-1 for anything else)."""
    try:
        return int(Path(ckpt).name.split("-")[-1])
    except ValueError:
        return -1
