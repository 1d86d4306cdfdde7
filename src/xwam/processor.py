"""Transforms between robot data and model inputs, kept outside the model.

The processor owns the frozen parts (latent codec, text encoder, depth encoding) and the
normalisation statistics. Training turns a batch of clips into latents and normalised vectors;
the policy turns one raw observation into sampler conditioning and the sampled chunk back into
robot units; the 4D tools decode latents back into RGB and metric depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xwam.codecs import InverseDepthEncoding, LatentCodec, build_codec, build_text_encoder
from xwam.config import ModelConfig
from xwam.data.stats import NormStats
from xwam.diffusion.sampler import Conditioning


@dataclass
class TrainingInputs:
    video: torch.Tensor  # (B, V, C, T, h, w) clean latents
    text: torch.Tensor  # (B, L, text_dim)
    text_uncond: torch.Tensor  # (1, L, text_dim): the empty instruction
    actions: torch.Tensor  # (B, K, A) normalised
    states: torch.Tensor  # (B, S, Ds) normalised
    action_mask: torch.Tensor  # (B, K, A)
    state_mask: torch.Tensor  # (Ds,)
    depth: torch.Tensor | None = None  # (B, V, C, T, h, w) clean depth latents


class XWAMProcessor:
    def __init__(
        self,
        cfg: ModelConfig,
        codec: LatentCodec,
        text_encoder: Any,
        norm_stats: NormStats | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.codec = codec
        self.text_encoder = text_encoder
        self.norm_stats = norm_stats
        self.depth_encoding = InverseDepthEncoding(near=cfg.depth_near, far=cfg.depth_far)
        self.device = torch.device(device)

    @classmethod
    def build(
        cls,
        cfg: ModelConfig,
        norm_stats: NormStats | None = None,
        *,
        vae_path: str | None = None,
        text_path: str | None = None,
        device: torch.device | str = "cpu",
        text_cache_dir: str | None = None,
    ) -> XWAMProcessor:
        codec = build_codec(cfg, vae_path=vae_path, device=device)
        text = build_text_encoder(cfg, path=text_path, device=device, cache_dir=text_cache_dir)
        return cls(cfg, codec, text, norm_stats, device)

    # ---- pieces ---------------------------------------------------------------------------------
    def _stats(self) -> NormStats:
        if self.norm_stats is None:
            raise RuntimeError("normalisation statistics are required (compute them with `xwam dataset stats`)")
        return self.norm_stats

    @torch.no_grad()
    def encode_video(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, F, 3, H, W) uint8 or float in [-1, 1] -> (B, V, C, T, h, w) latents."""
        batch, views = images.shape[:2]
        frames = images.to(self.device)
        frames = frames.float() / 127.5 - 1.0 if frames.dtype == torch.uint8 else frames.float()
        frames = frames.permute(0, 1, 3, 2, 4, 5).flatten(0, 1)  # (B*V, 3, F, H, W)
        return self.codec.encode(frames).unflatten(0, (batch, views))

    @torch.no_grad()
    def encode_current_frame(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, H, W, 3) uint8 current frames -> (B, V, C, 1, h, w) latents (frame 0 alone)."""
        batch, views = images.shape[:2]
        frames = images.to(self.device).float() / 127.5 - 1.0
        frames = frames.permute(0, 1, 4, 2, 3).flatten(0, 1).unsqueeze(2)  # (B*V, 3, 1, H, W)
        return self.codec.encode_current_frame(frames).unflatten(0, (batch, views))

    @torch.no_grad()
    def encode_depth(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, V, F, H, W) metres -> (B, V, C, T, h, w) depth latents."""
        batch, views = depth.shape[:2]
        frames = self.depth_encoding.depth_to_frames(depth.to(self.device).float())  # (B, V, 3, F, H, W)
        return self.codec.encode(frames.flatten(0, 1)).unflatten(0, (batch, views))

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, V, C, T, h, w) latents -> (B, V, F, H, W, 3) uint8 images."""
        batch, views = latents.shape[:2]
        frames = self.codec.decode(latents.flatten(0, 1).float()).clamp(-1, 1)  # (B*V, 3, F, H, W)
        images = ((frames + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
        return images.unflatten(0, (batch, views))

    @torch.no_grad()
    def decode_depth(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, V, C, T, h, w) depth latents -> (B, V, F, H, W) metres."""
        batch, views = latents.shape[:2]
        frames = self.codec.decode(latents.flatten(0, 1).float())  # (B*V, 3, F, H, W)
        return self.depth_encoding.frames_to_depth(frames).unflatten(0, (batch, views))

    @torch.no_grad()
    def encode_text(self, instructions: list[str]) -> torch.Tensor:
        return self.text_encoder.encode(list(instructions)).to(self.device)

    def empty_text(self) -> torch.Tensor:
        return self.text_encoder.empty().to(self.device)

    # ---- training -------------------------------------------------------------------------------
    def training_inputs(self, batch: dict[str, Any], with_depth: bool = True) -> TrainingInputs:
        """A collated batch of ``ClipDataset`` samples -> model inputs."""
        stats = self._stats()
        states = batch["state_norm"] if "state_norm" in batch else stats.normalize_state(batch["state"])
        actions = batch["action_norm"] if "action_norm" in batch else stats.normalize_action(batch["action"])
        depth = None
        if with_depth and "depth" in batch and self.cfg.depth_layers > 0:
            depth = self.encode_depth(batch["depth"])
        return TrainingInputs(
            video=self.encode_video(batch["images"]),
            text=self.encode_text(batch["instruction"]),
            text_uncond=self.empty_text(),
            actions=actions.to(self.device).float(),
            states=states.to(self.device).float(),
            action_mask=batch["action_mask"].to(self.device).float(),
            state_mask=torch.as_tensor(stats.state_valid, device=self.device).float(),
            depth=depth,
        )

    # ---- acting ---------------------------------------------------------------------------------
    def conditioning(self, images: torch.Tensor, state: np.ndarray | torch.Tensor, instructions: list[str]) -> Conditioning:
        """Raw observation batch -> sampler conditioning.

        images: (B, V, H, W, 3) uint8 in the model's view order; state: (B, Ds) robot units.
        """
        stats = self._stats()
        state = torch.as_tensor(np.asarray(state, dtype=np.float32)).to(self.device)
        return Conditioning(
            video0=self.encode_current_frame(torch.as_tensor(images)),
            state0=stats.normalize_state(state).float(),
            text=self.encode_text(instructions),
            text_uncond=self.empty_text(),
        )

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self._stats().unnormalize_action(actions.float())

    def unnormalize_states(self, states: torch.Tensor) -> torch.Tensor:
        return self._stats().unnormalize_state(states.float())
