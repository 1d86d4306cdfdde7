"""Validation samples: what the model imagines for one held-out clip, as a PNG next to the truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from xwam.atomic import atomic_path
from xwam.codecs import DepthEncoding, unit_to_uint8
from xwam.config import XWAMConfig
from xwam.diffusion.sampler import AsyncSampler


def depth_to_grey(depth: np.ndarray, cfg: XWAMConfig, kind: str = "metric") -> np.ndarray:
    """Depth (..., H, W) -> grey (..., H, W, 3) uint8 of the model's depth encoding (near
    bright, far dark): exactly what the depth branch is trained on. ``kind``: ``metric`` (metres) or
    ``codec_unit`` (already in [-1, 1], release depth)."""
    encoding = DepthEncoding.of_model(cfg.model)
    unit = torch.as_tensor(depth).float() if kind == "codec_unit" else encoding.to_unit(depth)
    grey = unit_to_uint8(unit).numpy()
    return np.repeat(grey[..., None], 3, axis=-1)


def tile(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of (V, F, H, W, 3) images -> one grid image: each row lists views x frames."""
    lines = []
    for row in rows:
        views = [np.concatenate(list(view), axis=1) for view in row]  # frames side by side
        lines.append(np.concatenate(views, axis=1))
    return np.concatenate(lines, axis=0)


def _uint8_frames(images: torch.Tensor) -> np.ndarray:
    """(V, F, 3, H, W) clip images, uint8 or float in [-1, 1] -> (V, F, H, W, 3) uint8."""
    frames = images if images.dtype == torch.uint8 else unit_to_uint8(images.float())
    return frames.permute(0, 1, 3, 4, 2).numpy()


@torch.no_grad()
def validation_sample(model: nn.Module, processor: Any, cfg: XWAMConfig, batch: dict[str, Any], *,
                      depth: bool, seed: int) -> np.ndarray:
    """Imagine the first clip of a collated batch in 4D mode from its first frame, state and
    instruction (the policy's own conditioning path); rows: true RGB, imagined RGB, and with depth
    true and imagined depth."""
    truth = _uint8_frames(batch["images"][0])  # (V, F, H, W, 3)
    cond = processor.conditioning(truth[None, :, 0], batch["state"][:1, 0].numpy(), list(batch["instruction"][:1]))
    device = cond.video0.device
    result = AsyncSampler(model, cfg.sampler).sample(
        cond, mode="4d", depth=depth, generator=torch.Generator(device).manual_seed(seed))
    rows = [truth, processor.decode_video(result.video.float()).cpu().numpy()[0]]
    if result.depth is not None:
        kind = batch["depth_kind"][0] if "depth_kind" in batch else "metric"  # the kind trained on
        if "depth" in batch:
            rows.append(depth_to_grey(batch["depth"][0].numpy(), cfg, kind))
        rows.append(depth_to_grey(processor.decode_depth(result.depth.float(), kind).cpu().numpy()[0], cfg, kind))
    frames = min(r.shape[1] for r in rows)
    return tile([r[:, :frames] for r in rows])


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
