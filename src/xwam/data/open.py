"""Open any supported dataset folder by its layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xwam.data.errors import DatasetError


def open_dataset(root: str | Path, **kwargs: Any) -> Any:
    """A ``LeRobotV3Dataset`` (``meta/info.json``) or a ``ReleaseDataset`` (``metadata.json`` or
    ``data/chunk-*/episode_*.json``)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset not found: {root}")
    if (root / "meta" / "info.json").is_file():
        from xwam.data.lerobot import LeRobotV3Dataset

        return LeRobotV3Dataset(root, **kwargs)
    # the release's loader finds episodes by this glob when metadata.json is missing
    if (root / "metadata.json").is_file() or next(root.glob("data/chunk-*/episode_*.json"), None):
        from xwam.data.release import ReleaseDataset

        return ReleaseDataset(root, **kwargs)
    raise DatasetError(
        f"{root}: neither a LeRobot v3 dataset (meta/info.json) nor a release dataset (metadata.json)"
    )
