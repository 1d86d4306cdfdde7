"""The latent codec interface shared by the pixel codec and the Wan2.2 VAE, and image conversions.

Layout conventions (used by every codec and by the model side):

- frames: float tensors (N, 3, F, H, W) in [-1, 1], N = batch x views flattened by the caller;
- latents: float tensors (N, C, 1 + (F - 1) // tc, H // s, W // s), normalised to roughly unit
  scale, C = ``latent_channels``, s = ``spatial_compression``, tc = ``temporal_compression``.

Images as stored in episodes are uint8 (..., F, H, W, 3); ``images_to_frames`` and
``frames_to_images`` move between the two layouts.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class LatentCodec(Protocol):
    """Maps pixel clips to normalised latents and back (see module docstring for layouts)."""

    latent_channels: int
    spatial_compression: int
    temporal_compression: int

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, F, H, W) in [-1, 1] -> (N, C, 1 + (F-1)//tc, H/s, W/s) normalised latents."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of ``encode`` (exact for the pixel codec, lossy for a VAE); frames in [-1, 1]."""
        ...

    def encode_current_frame(self, frames0: torch.Tensor) -> torch.Tensor:
        """Latents of frame 0 only, (N, 3, H, W) -> (N, C, 1, h, w); equals ``encode(clip)[:, :, :1]``."""
        ...


def latent_shape(codec: LatentCodec, frames_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    """The latent shape ``codec.encode`` returns for frames of shape (N, 3, F, H, W)."""
    n, _, f, h, w = frames_shape
    s, tc = codec.spatial_compression, codec.temporal_compression
    return (n, codec.latent_channels, 1 + (f - 1) // tc, h // s, w // s)


def check_frames(frames: torch.Tensor, *, spatial: int, temporal: int, who: str) -> None:
    """Raise ValueError unless ``frames`` is a float (N, 3, F, H, W) clip the codec can encode exactly."""
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"{who}: frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.ndim != 5 or frames.shape[1] != 3:
        raise ValueError(f"{who}: frames must be (N, 3, F, H, W), got shape {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise ValueError(
            f"{who}: frames must be a float tensor in [-1, 1], got {frames.dtype} "
            "(convert uint8 images with xwam.codecs.images_to_frames)"
        )
    _, _, f, h, w = frames.shape
    if f < 1:
        raise ValueError(f"{who}: the clip has no frames (shape {tuple(frames.shape)})")
    if (f - 1) % temporal:
        below = 1 + temporal * ((f - 1) // temporal)
        raise ValueError(
            f"{who}: got F={f} frames but the codec needs 1 + {temporal}*k frames (e.g. {below} or "
            f"{below + temporal}); the VAE would silently drop the last {f - below}"
        )
    if h % spatial or w % spatial:
        raise ValueError(f"{who}: frame size {h}x{w} must be divisible by the spatial compression {spatial}")


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"expected a numpy array or torch tensor, got {type(x).__name__}")


def uint8_to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 values 0..255 -> float32 in [-1, 1] (same layout)."""
    x = _as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    return x.to(torch.float32) / 127.5 - 1.0


def unit_to_uint8(values: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 0..255 (clamped and rounded; exact inverse of ``uint8_to_unit``)."""
    x = _as_tensor(values).to(torch.float32)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def images_to_frames(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., F, H, W, 3) images -> float32 (..., 3, F, H, W) frames in [-1, 1].

    For a batch of multi-view clips (B, V, F, H, W, 3), reshape the result to (B*V, 3, F, H, W)
    before calling a codec.
    """
    x = _as_tensor(images)
    if x.ndim < 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (..., F, H, W, 3) uint8, got shape {tuple(x.shape)}")
    return uint8_to_unit(x).movedim(-1, -4)


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """float (..., 3, F, H, W) frames in [-1, 1] -> uint8 (..., F, H, W, 3) images."""
    x = _as_tensor(frames)
    if x.ndim < 4 or x.shape[-4] != 3:
        raise ValueError(f"frames must be (..., 3, F, H, W), got shape {tuple(x.shape)}")
    return unit_to_uint8(x.movedim(-4, -1)).contiguous()
