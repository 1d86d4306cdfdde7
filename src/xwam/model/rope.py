"""3D rotary position embeddings at arbitrary (fractional) positions.

Wan's RoPE splits each head's channels over (t, h, w) axes and rotates by integer latent-grid
positions. X-WAM also places action and state tokens on the temporal axis at fractional positions
(in latent-frame units), so we compute the same frequencies for any float positions. For integer
positions the result equals diffusers' ``WanRotaryPosEmbed`` bit for bit (same float64 maths).
"""

from __future__ import annotations

import torch


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per axis (t, h, w) of one head, as Wan splits them (44/42/42 for 128)."""
    h_dim = w_dim = 2 * (head_dim // 6)
    return head_dim - h_dim - w_dim, h_dim, w_dim


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for tokens at ``positions`` (L, 3) = (t, h, w).

    Returns two float32 tensors shaped (1, L, 1, head_dim), interleaved per channel pair as
    diffusers' Wan attention expects.
    """
    positions = positions.to(torch.float64)
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(rope_axis_dims(head_dim)):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
        angles = torch.outer(positions[:, axis], freqs)
        cos_parts.append(angles.cos().repeat_interleave(2, dim=1).float())
        sin_parts.append(angles.sin().repeat_interleave(2, dim=1).float())
    cos = torch.cat(cos_parts, dim=1)[None, :, None, :]
    sin = torch.cat(sin_parts, dim=1)[None, :, None, :]
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (B, L, heads, head_dim); same arithmetic as diffusers' Wan."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = cos[..., 0::2]
    sin = sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def video_positions(frames: int, views: int, height: int, width: int) -> torch.Tensor:
    """(t, h, w) positions of video tokens in (frame, view, row, col) order; views share positions."""
    t = torch.arange(frames).view(frames, 1, 1, 1).expand(frames, views, height, width)
    h = torch.arange(height).view(1, 1, height, 1).expand(frames, views, height, width)
    w = torch.arange(width).view(1, 1, 1, width).expand(frames, views, height, width)
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3).to(torch.float64)


def temporal_positions(count: int, steps_per_latent_frame: float) -> torch.Tensor:
    """Positions of one-per-step tokens (actions, states) on the temporal axis, h = w = 0."""
    pos = torch.zeros(count, 3, dtype=torch.float64)
    pos[:, 0] = torch.arange(count, dtype=torch.float64) / steps_per_latent_frame
    return pos
