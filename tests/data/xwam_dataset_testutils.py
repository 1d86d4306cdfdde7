"""Synthetic episodes with known content for dataset tests."""

from __future__ import annotations

import numpy as np

from xwam.data.episode import Episode

CAMERAS = ["agentview_left", "agentview_right", "eye_in_hand"]


def make_episode(
    length: int = 40,
    *,
    seed: int = 0,
    cameras: list[str] | None = None,
    height: int = 32,
    width: int = 48,
    depth: bool = True,
    camera_matrices: bool = True,
    task: str = "lift the red cube",
    state_dim: int = 8,
    action_dim: int = 7,
) -> Episode:
    """Smooth RGB (codec friendly) whose mean brightness encodes the frame index, metric depth in
    [0.3, 4] m, states whose first dim is the frame index and actions whose first dim is t + 0.5."""
    cams = list(cameras or CAMERAS)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb, dep, intr, extr = {}, {}, {}, {}
    for k, cam in enumerate(cams):
        frames = []
        for t in range(length):
            level = 40 + 3 * t % 150
            r = level + 30 * np.sin(xx / 7 + k)
            g = level + 30 * np.cos(yy / 5 + seed)
            b = level + 20 * np.sin((xx + yy) / 9 + t / 10)
            frames.append(np.stack([r, g, b], -1))
        rgb[cam] = np.clip(np.stack(frames), 0, 255).round().astype(np.uint8)
        t_axis = np.arange(length, dtype=np.float32)[:, None, None]
        dep[cam] = (
            0.3
            + 1.5 * (1 + np.sin(xx / 11 + yy / 13 + t_axis / 7 + k))
            + 0.2 * rng.random((length, height, width))
        ).astype(np.float32)
        K = np.array([[40.0 + k, 0, width / 2 - 0.5], [0, 41.0 + k, height / 2 - 0.5], [0, 0, 1]], np.float32)
        intr[cam] = np.repeat(K[None], length, 0)
        pose = np.repeat(np.eye(4, dtype=np.float32)[None], length, 0)
        pose[:, :3, 3] = (
            rng.normal(size=3).astype(np.float32) + np.linspace(0, 0.1, length, dtype=np.float32)[:, None]
        )
        extr[cam] = pose
    state = rng.normal(size=(length, state_dim)).astype(np.float32)
    state[:, 0] = np.arange(length)
    action = rng.normal(size=(length, action_dim)).astype(np.float32)
    action[:, 0] = np.arange(length) + 0.5
    return Episode(
        task=task,
        fps=20.0,
        camera_names=cams,
        rgb=rgb,
        state=state,
        action=action,
        depth=dep if depth else None,
        intrinsics=intr if camera_matrices else None,
        extrinsics=extr if camera_matrices else None,
        success=True,
        meta={"seed": seed},
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
