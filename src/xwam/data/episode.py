"""The in-memory episode every producer (simulator, converters) and consumer (writers) shares."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Episode:
    """One recorded episode at the control rate, T steps.

    Conventions:
    - ``rgb[cam]``: (T, H, W, 3) uint8, upright.
    - ``depth[cam]``: (T, H, W) float32 metric depth in metres (z-depth along the optical axis),
      unless ``meta["depth_kind"]`` says otherwise (release-format data: ``"codec_unit"``, the codec's
      [-1, 1] values; see :mod:`xwam.codecs.depth`). Readers always set ``meta["depth_kind"]``.
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

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (what an in-memory episode cache has to budget for)."""
        total = self.state.nbytes + self.action.nbytes
        for table in (self.rgb, self.depth, self.intrinsics, self.extrinsics):
            total += sum(a.nbytes for a in (table or {}).values())
        return int(total)

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


class EpisodeCache:
    """Least-recently-used decoded episodes, bounded by a count and (optionally) by bytes.

    Decoding an episode's videos costs far more than a training step on a small model, so a trainer
    that samples clips uniformly over a dataset wants every episode that fits in memory kept
    decoded: it raises ``max_episodes`` and sets ``max_bytes`` to its memory budget.
    """

    def __init__(self, max_episodes: int = 8, max_bytes: int | None = None) -> None:
        self.max_episodes = max(0, int(max_episodes))
        self.max_bytes = None if max_bytes is None else max(0, int(max_bytes))
        self._items: OrderedDict[Hashable, Episode] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Episode | None:
        ep = self._items.get(key)
        if ep is not None:
            self._items.move_to_end(key)
        return ep

    def put(self, key: Hashable, ep: Episode) -> None:
        if self.max_episodes == 0 or (self.max_bytes is not None and ep.nbytes > self.max_bytes):
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._items[key] = ep
        self.nbytes += ep.nbytes
        while len(self._items) > self.max_episodes or (self.max_bytes is not None and self.nbytes > self.max_bytes):
            _, dropped = self._items.popitem(last=False)
            self.nbytes -= dropped.nbytes

    def resize(self, max_episodes: int, max_bytes: int | None = None) -> None:
        """Change the bounds (evicting the oldest episodes if they are now exceeded)."""
        self.max_episodes = max(0, int(max_episodes))
        self.max_bytes = None if max_bytes is None else max(0, int(max_bytes))
        while self._items and (
            len(self._items) > self.max_episodes or (self.max_bytes is not None and self.nbytes > self.max_bytes)
        ):
            _, dropped = self._items.popitem(last=False)
            self.nbytes -= dropped.nbytes
