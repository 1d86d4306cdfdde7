"""The in-memory episode every producer (simulator, converters) and consumer (writers) shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Episode:
    """One recorded episode at the control rate, T steps.

    Conventions:
    - ``rgb[cam]``: (T, H, W, 3) uint8, upright.
    - ``depth[cam]``: (T, H, W) float32 metric depth in metres (z-depth along the optical axis).
    - ``intrinsics[cam]``: (T, 3, 3) float pinhole matrices in pixels for the stored resolution.
    - ``extrinsics[cam]``: (T, 4, 4) camera-to-world poses, OpenCV camera axes
      (x right, y down, z forward). Static cameras repeat one pose; wrist cameras move.
    - ``state``: (T, S) float32, per arm [xyz, quaternion wxyz with w >= 0, gripper].
    - ``action``: (T, A) float32, the command applied at step t (moves state t to state t+1).
    - ``task``: the language instruction.
    """

    task: str
    fps: float
    camera_names: list[str]
    rgb: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    depth: dict[str, np.ndarray] | None = None
    intrinsics: dict[str, np.ndarray] | None = None
    extrinsics: dict[str, np.ndarray] | None = None
    success: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.state.shape[0])

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        T = self.length
        if self.action.shape[0] != T:
            raise ValueError(f"episode has {T} states but {self.action.shape[0]} actions")
        for cam in self.camera_names:
            if cam not in self.rgb:
                raise ValueError(f"camera {cam!r} has no RGB frames")
            if self.rgb[cam].shape[0] != T or self.rgb[cam].dtype != np.uint8 or self.rgb[cam].ndim != 4:
                raise ValueError(f"camera {cam!r}: rgb must be ({T}, H, W, 3) uint8, got "
                                 f"{self.rgb[cam].shape} {self.rgb[cam].dtype}")
            for name, table in (("depth", self.depth), ("intrinsics", self.intrinsics),
                                ("extrinsics", self.extrinsics)):
                if table is None:
                    continue
                if cam not in table:
                    raise ValueError(f"camera {cam!r} has no {name}")
                if table[cam].shape[0] != T:
                    raise ValueError(f"camera {cam!r}: {name} has {table[cam].shape[0]} frames, expected {T}")
