"""``build_codec``: the codec a model config names, checked against the config's latent shape.

It lives apart from ``base`` so the interface module imports none of the implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from xwam.codecs.base import LatentCodec
from xwam.codecs.pca import PatchPCACodec
from xwam.codecs.pixel import PixelCodec
from xwam.codecs.wan_vae import WanVAECodec

if TYPE_CHECKING:
    from xwam.config import ModelConfig


def build_codec(
    cfg: ModelConfig,
    *,
    vae_path: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    micro_batch: int | None = None,
    fitted: dict[str, torch.Tensor] | None = None,
) -> LatentCodec:
    """The codec ``cfg.codec`` names, checked against the config's channel and compression fields.

    ``vae_path`` (for ``wan22-vae``): a local diffusers-format model root holding ``vae/`` or the
    ``vae/`` folder itself. ``micro_batch`` bounds how many clips the VAE encodes at once.
    ``fitted`` (for ``pca``): the fitted basis (``PatchPCACodec.state_dict()``), stored with checkpoints.
    """
    if cfg.codec == "pixel":
        codec: LatentCodec = PixelCodec(cfg.spatial_compression)
    elif cfg.codec == "pca":
        if fitted is None:
            raise ValueError(
                "codec 'pca' needs its fitted basis: it is fitted on the training frames by `xwam train` and "
                "stored in every checkpoint as codec.safetensors (is that file missing?)"
            )
        codec = PatchPCACodec.from_state_dict(fitted)
    elif cfg.codec == "wan22-vae":
        if vae_path is None:
            raise ValueError(
                "codec 'wan22-vae' needs a local Wan2.2 VAE: pass vae_path (a diffusers model root "
                "holding vae/, e.g. Wan-AI/Wan2.2-TI2V-5B-Diffusers, or the vae/ folder itself)"
            )
        codec = WanVAECodec.from_pretrained(vae_path, device=device, dtype=dtype, micro_batch=micro_batch)
    else:
        raise ValueError(f"unknown codec {cfg.codec!r}; choose 'pixel', 'pca' or 'wan22-vae'")
    mismatches = [
        f"{name}: config {want}, codec {have}"
        for name, want, have in (
            ("latent_channels", cfg.latent_channels, codec.latent_channels),
            ("spatial_compression", cfg.spatial_compression, codec.spatial_compression),
            ("temporal_compression", cfg.temporal_compression, codec.temporal_compression),
        )
        if want != have
    ]
    if mismatches:
        raise ValueError(f"codec {cfg.codec!r} does not match the model config: " + "; ".join(mismatches))
    return codec
