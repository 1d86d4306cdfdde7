"""Robot datasets: episodes, LeRobot-v3 and release-layout readers/writers, clips, statistics.

Names are imported lazily so that ``import xwam.data`` stays cheap (no torch, PyAV or pyarrow
until they are used).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Episode": "xwam.data.episode",
    "DatasetError": "xwam.data.errors",
    "DepthQuantizer": "xwam.data.video",
    "LeRobotV3Writer": "xwam.data.lerobot",
    "LeRobotV3Dataset": "xwam.data.lerobot",
    "write_episodes": "xwam.data.lerobot",
    "ReleaseDataset": "xwam.data.release",
    "ClipConfig": "xwam.data.clips",
    "ClipDataset": "xwam.data.clips",
    "NormStats": "xwam.data.stats",
    "compare_stats": "xwam.data.stats",
    "open_dataset": "xwam.data.open",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'xwam.data' has no attribute {name!r}")
