"""Shared by the benchmark tests: load a script of benchmarks/ as a module, and a tiny held-out
dataset with the tiny preset sized for it (to save checkpoints a benchmark then evaluates)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "data"))
from xwam_dataset_testutils import make_episode  # noqa: E402

CAMERAS = ["agentview", "eye_in_hand"]  # the tiny preset has 2 views


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_heldout(root: Path) -> tuple[Path, Any, dict[str, Any]]:
    """3 synthetic 16x16 RGB-D episodes (12, 14, 16 frames) in ``root / "heldout"`` with their
    statistics; returns (data folder, the tiny preset at their cameras and size, norm stats dict)."""
    from xwam.config import get_preset
    from xwam.data import write_episodes
    from xwam.data.stats import load_dataset_norm_stats, write_dataset_stats

    data = root / "heldout"
    write_episodes(data, [make_episode(n, seed=i, cameras=CAMERAS, height=16, width=16) for i, n in
                          enumerate((12, 14, 16))])
    write_dataset_stats(data, images=False)
    preset = get_preset("tiny")
    preset = dataclasses.replace(preset, model=dataclasses.replace(
        preset.model, camera_names=CAMERAS, image_height=16, image_width=16))
    return data, preset, load_dataset_norm_stats(data).to_dict()
