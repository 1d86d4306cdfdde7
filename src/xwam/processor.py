"""Transforms between robot data and model inputs, kept outside the model.

The processor owns the frozen parts (latent codec, text encoder, depth encoding) and the
normalisation statistics. Training turns a batch of clips into latents and normalised vectors;
``conditioning`` is the one path from raw observations (with optional committed action prefixes)
to sampler conditioning, used by the policy, the server, imagine and the benchmarks; sampled chunks
go back into robot units here too; the 4D tools decode latents back into RGB and metric depth.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from xwam.codecs import (
    DepthEncoding,
    LatentCodec,
    build_codec,
    build_text_encoder,
    uint8_to_unit,
    unit_to_uint8,
)
from xwam.codecs.depth import (
    DEPTH_KIND_CODEC_UNIT,
    DEPTH_KIND_METRIC,
    check_depth_kind,
    depth_to_codec_frames,
)
from xwam.config import ModelConfig
from xwam.data.stats import NormStats
from xwam.diffusion.objective import TrainingInputs
from xwam.diffusion.sampler import Conditioning


class XWAMProcessor:
    """``codec`` encodes RGB; ``depth_codec`` encodes depth frames (the same codec, except for
    fitted codecs, which fit one basis per stream).

    Depth comes with its kind (:mod:`xwam.codecs.depth`): ``metric`` depth (metres) is encoded through
    :class:`DepthEncoding` (the model's ``depth_curve``), ``codec_unit`` depth (the release's v / 127.5 - 1, already in
    [-1, 1]) is used as it is; depth of a missing or unknown kind is refused."""

    def __init__(
        self,
        cfg: ModelConfig,
        codec: LatentCodec,
        text_encoder: Any,
        norm_stats: NormStats | None = None,
        device: torch.device | str = "cpu",
        depth_codec: LatentCodec | None = None,
        center_crop: float = 1.0,
    ) -> None:
        """``center_crop``: share of height and width of the centre window the policy's current frames
        are cropped to (then resized back) before encoding; ``PolicyConfig.center_crop``."""
        if not 0.0 < center_crop <= 1.0:
            raise ValueError(f"center_crop must lie in (0, 1], got {center_crop}")
        self.center_crop = float(center_crop)
        self.cfg = cfg
        self.codec = codec
        self.depth_codec = depth_codec if depth_codec is not None else codec
        self.text_encoder = text_encoder
        self.norm_stats = norm_stats
        self.depth_encoding = DepthEncoding.of_model(cfg)
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
        codec_state: dict[str, torch.Tensor] | None = None,
        text_cache_entries: int | None = None,
        center_crop: float = 1.0,
    ) -> XWAMProcessor:
        """``codec_state``: the fitted codec (``codec_state()`` of the processor that trained the model;
        checkpoints store it as codec.safetensors); needed by fitted codecs (``pca``) only."""
        rgb_state = depth_state = None
        if cfg.codec in FITTED_CODECS:
            if codec_state is None:
                raise ValueError(f"codec {cfg.codec!r} needs its fitted state (codec.safetensors of the checkpoint)")
            rgb_state, depth_state = (_substate(codec_state, name) for name in ("rgb", "depth"))
        codec = build_codec(cfg, vae_path=vae_path, device=device, fitted=rgb_state)
        depth_codec = build_codec(cfg, fitted=depth_state) if depth_state is not None else None
        text = build_text_encoder(cfg, path=text_path, device=device, cache_dir=text_cache_dir,
                                  cache_entries=text_cache_entries)
        return cls(cfg, codec, text, norm_stats, device, depth_codec=depth_codec, center_crop=center_crop)

    @staticmethod
    def fit_codec_state(cfg: ModelConfig, images: torch.Tensor, depth: torch.Tensor | None,
                        depth_kind: str | Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Fit a fitted codec (``pca``) on training clips: images (N, V, F, 3, H, W) uint8, depth
        (N, V, F, H, W) of ``depth_kind`` (one kind, or one per clip; required with depth) or None (then
        the depth basis is fitted on the RGB frames' grey levels). Returns the state
        ``build(codec_state=...)`` takes."""
        from xwam.codecs.pca import PatchPCACodec

        if cfg.codec not in FITTED_CODECS:
            raise ValueError(f"codec {cfg.codec!r} is not fitted on data")
        frames = _flat_frames(images)
        rgb = PatchPCACodec.fit(frames, cfg.spatial_compression, cfg.latent_channels, cfg.codec_whitening)
        if depth is not None:
            encoding = DepthEncoding.of_model(cfg)
            depth_frames = depth_frames_of_kinds(depth.float(), depth_kind, encoding).flatten(0, 1)
        else:
            depth_frames = frames.mean(dim=1, keepdim=True).expand_as(frames)
        depth_codec = PatchPCACodec.fit(depth_frames, cfg.spatial_compression, cfg.latent_channels,
                                        cfg.codec_whitening)
        state = {f"rgb.{k}": v for k, v in rgb.state_dict().items()}
        state.update({f"depth.{k}": v for k, v in depth_codec.state_dict().items()})
        state["rgb.reconstruction_psnr"] = torch.tensor([rgb.reconstruction_psnr(frames)], dtype=torch.float64)
        state["depth.reconstruction_psnr"] = torch.tensor(
            [depth_codec.reconstruction_psnr(depth_frames)], dtype=torch.float64)
        return state

    def codec_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must store to rebuild the codecs (empty for weight-free or pretrained codecs)."""
        if self.cfg.codec not in FITTED_CODECS:
            return {}
        state = {f"rgb.{k}": v for k, v in self.codec.state_dict().items()}
        state.update({f"depth.{k}": v for k, v in self.depth_codec.state_dict().items()})
        return state

    # ---- pieces ---------------------------------------------------------------------------------
    def _stats(self) -> NormStats:
        if self.norm_stats is None:
            raise RuntimeError("normalisation statistics are required (compute them with `xwam dataset stats`)")
        return self.norm_stats

    @torch.no_grad()
    def encode_video(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, F, 3, H, W) uint8 or float in [-1, 1] -> (B, V, C, T, h, w) video as the model
        generates it: latents, or with ``video_as_change`` frames 1.. as their change from frame 0."""
        batch, views = images.shape[:2]
        latents = self.codec.encode(_flat_frames(images.to(self.device))).unflatten(0, (batch, views))
        return latent_changes(latents) if self.cfg.video_as_change else latents

    @torch.no_grad()
    def encode_current_frame(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, H, W, 3) uint8 current frames -> (B, V, C, 1, h, w) latents (frame 0 alone), after
        the processor's centre crop."""
        batch, views = images.shape[:2]
        frames = uint8_to_unit(images.to(self.device)).permute(0, 1, 4, 2, 3).flatten(0, 1)  # (B*V, 3, H, W)
        frames = center_crop_resized(frames, self.center_crop)
        return self.codec.encode_current_frame(frames.unsqueeze(2)).unflatten(0, (batch, views))

    @torch.no_grad()
    def encode_depth(self, depth: torch.Tensor, kind: str | Sequence[str] | None) -> torch.Tensor:
        """(B, V, F, H, W) depth of ``kind`` (one kind, or one per clip as a collated batch holds them)
        -> (B, V, C, T, h, w) depth latents. ``metric``: metres through the model's depth encoding;
        ``codec_unit``: [-1, 1] values used as they are. A missing or unknown kind is refused."""
        batch, views = depth.shape[:2]
        frames = depth_frames_of_kinds(depth.to(self.device).float(), kind, self.depth_encoding)  # (B, V, 3, F, H, W)
        return self.depth_codec.encode(frames.flatten(0, 1)).unflatten(0, (batch, views))

    def encode_batch_depth(self, batch: dict[str, Any], select: torch.Tensor | None = None) -> torch.Tensor:
        """Depth latents of a collated clip batch (its ``depth`` and ``depth_kind``), optionally of the
        clips ``select`` only."""
        if "depth_kind" not in batch:
            raise ValueError("the batch has depth but no depth_kind: cannot tell metres from codec units "
                             "(ClipDataset adds it; a hand-made batch must say 'metric' or 'codec_unit')")
        depth, kinds = batch["depth"], batch["depth_kind"]
        if select is not None:
            depth = depth[select]
            kinds = kinds if isinstance(kinds, str) else [kinds[int(i)] for i in select]
        return self.encode_depth(depth, kinds)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, V, C, T, h, w) video as the model generates it (see :meth:`encode_video`) -> (B, V, F, H,
        W, 3) uint8 images."""
        if self.cfg.video_as_change:
            latents = latents_from_changes(latents)
        batch, views = latents.shape[:2]
        frames = self.codec.decode(latents.flatten(0, 1).float())  # (B*V, 3, F, H, W)
        images = unit_to_uint8(frames).permute(0, 2, 3, 4, 1)
        return images.unflatten(0, (batch, views))

    @torch.no_grad()
    def decode_depth(self, latents: torch.Tensor, kind: str = DEPTH_KIND_METRIC) -> torch.Tensor:
        """(B, V, C, T, h, w) depth latents -> (B, V, F, H, W) depth of ``kind``: metres (``metric``,
        for a model trained on metric depth) or the codec's [-1, 1] values (``codec_unit``, channel
        mean clamped, for a model trained on release depth, which has no metric scale)."""
        batch, views = latents.shape[:2]
        frames = self.depth_codec.decode(latents.flatten(0, 1).float())  # (B*V, 3, F, H, W)
        if check_depth_kind(kind) == DEPTH_KIND_CODEC_UNIT:
            return frames.mean(dim=1).clamp(-1.0, 1.0).unflatten(0, (batch, views))
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
            depth = self.encode_batch_depth(batch)
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
    def conditioning(
        self,
        images: np.ndarray | torch.Tensor,
        states: np.ndarray | torch.Tensor,
        instructions: list[str],
        action_prefixes: Sequence[np.ndarray | None] | None = None,
        *,
        unconditional_text: bool = True,
        timing: dict[str, float] | None = None,
    ) -> Conditioning:
        """Raw observations -> sampler conditioning, normalised with the processor's statistics.

        images: (B, V, H, W, 3) uint8 in the model's view order; states: (B, Ds) robot units;
        instructions: B strings. action_prefixes: None, or one entry per observation, each None or a
        (d_i, A) array of actions already committed (robot units, d_i <= action_horizon; lengths may
        differ). ``unconditional_text``: also encode the empty instruction (classifier-free guidance).
        ``timing``, when given, receives ``encode_ms`` (images) and ``text_ms``.
        """
        stats = self._stats()
        batch = len(instructions)
        if len(images) != batch or len(states) != batch:
            raise ValueError(f"{len(images)} images, {len(states)} states and {batch} instructions: one each")
        t0 = time.perf_counter()
        video0 = self.encode_current_frame(torch.as_tensor(images))
        t1 = time.perf_counter()
        text = self.encode_text(instructions)
        text_uncond = self.empty_text() if unconditional_text else None
        t2 = time.perf_counter()
        if timing is not None:
            timing.update(encode_ms=(t1 - t0) * 1000, text_ms=(t2 - t1) * 1000)
        state = torch.as_tensor(np.asarray(states, dtype=np.float32)).to(self.device)
        prefix, prefix_len = self._action_prefixes(action_prefixes, batch)
        return Conditioning(video0=video0, state0=stats.normalize_state(state).float(), text=text,
                            text_uncond=text_uncond, action_prefix=prefix, action_prefix_len=prefix_len)

    def _action_prefixes(
        self, prefixes: Sequence[np.ndarray | None] | None, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-observation prefixes -> normalised (B, d_max, A), zero-padded, and their lengths (B,)."""
        if prefixes is None:
            return None, None
        if len(prefixes) != batch:
            raise ValueError(f"{len(prefixes)} action prefixes for {batch} observations: give one (or None) each")
        arrays = [None if p is None else check_action_prefix(p, self.cfg) for p in prefixes]
        lengths = [0 if a is None else len(a) for a in arrays]
        if max(lengths, default=0) == 0:
            return None, None
        padded = np.zeros((batch, max(lengths), self.cfg.action_dim), np.float32)
        for i, a in enumerate(arrays):
            if a is not None:
                padded[i, : len(a)] = a
        prefix = self._stats().normalize_action(torch.as_tensor(padded, device=self.device)).float()
        return prefix, torch.tensor(lengths, dtype=torch.long, device=self.device)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self._stats().unnormalize_action(actions.float())

    def unnormalize_states(self, states: torch.Tensor) -> torch.Tensor:
        return self._stats().unnormalize_state(states.float())


# codecs whose parameters are fitted on the training data and stored with the checkpoint
FITTED_CODECS = ("pca",)


def check_action_prefix(prefix: Any, cfg: ModelConfig) -> np.ndarray:
    """A committed action prefix as a float32 (d, A) array; ValueError unless finite (as float32) with
    d <= horizon."""
    array = np.asarray(prefix)
    if array.ndim != 2 or array.shape[1] != cfg.action_dim or array.shape[0] > cfg.action_horizon \
            or array.dtype.kind not in "fiu" or not finite_as_float32(array):
        raise ValueError(f"action_prefix must be a finite (d <= {cfg.action_horizon}, {cfg.action_dim}) array, "
                         f"got shape {array.shape}, dtype {array.dtype}")
    return array.astype(np.float32)


def center_crop_resized(frames: torch.Tensor, ratio: float) -> torch.Tensor:
    """(N, C, H, W) float frames: the centre int(H r) x int(W r) window resized back to H x W (bilinear,
    no antialias), as the X-WAM release evaluates (r = 0.95: rows 6.., columns 8.. of 256 x 320)."""
    if ratio >= 1.0:
        return frames
    height, width = frames.shape[-2:]
    crop_h, crop_w = int(height * ratio), int(width * ratio)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    window = frames[..., top : top + crop_h, left : left + crop_w]
    return torch.nn.functional.interpolate(window, size=(height, width), mode="bilinear", align_corners=False,
                                           antialias=False)


def finite_as_float32(values: np.ndarray) -> bool:
    """True when every value is finite after the cast to the model's float32 (1e300 is not)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.asarray(values).astype(np.float32)).all())


def latent_changes(latents: torch.Tensor) -> torch.Tensor:
    """(..., C, T, h, w) latents -> frame 0 as it is, frames 1.. minus frame 0 (``video_as_change``)."""
    out = latents.clone()
    out[..., 1:, :, :] -= latents[..., :1, :, :]
    return out


def latents_from_changes(changes: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`latent_changes`."""
    out = changes.clone()
    out[..., 1:, :, :] += changes[..., :1, :, :]
    return out


def depth_frames_of_kinds(depth: torch.Tensor, kind: str | Sequence[str] | None,
                          encoding: DepthEncoding) -> torch.Tensor:
    """(B, V, F, H, W) depth -> (B, V, 3, F, H, W) codec frames; ``kind`` is one kind for the whole
    batch or one per clip (a batch may mix metric and release datasets)."""
    if kind is None or isinstance(kind, str):
        return depth_to_codec_frames(depth, check_depth_kind(kind), encoding)
    kinds = [check_depth_kind(k, f"depth of clip {i}") for i, k in enumerate(kind)]
    if len(kinds) != depth.shape[0]:
        raise ValueError(f"{len(kinds)} depth kinds for a batch of {depth.shape[0]} clips: give one per clip")
    if len(set(kinds)) == 1:
        return depth_to_codec_frames(depth, kinds[0], encoding)
    return torch.stack([depth_to_codec_frames(d, k, encoding) for d, k in zip(depth, kinds)])


def _flat_frames(images: torch.Tensor) -> torch.Tensor:
    """(B, V, F, 3, H, W) uint8 or float in [-1, 1] -> (B*V, 3, F, H, W) float frames."""
    frames = uint8_to_unit(images) if images.dtype == torch.uint8 else images.float()
    return frames.permute(0, 1, 3, 2, 4, 5).flatten(0, 1)


def _substate(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
