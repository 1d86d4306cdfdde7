"""Latent codecs (exact pixel codec, Wan2.2 VAE), depth encoding and text encoders.

Heavy libraries (diffusers, transformers) are imported only when a VAE or text model is built.
"""

from xwam.codecs.base import (
    LatentCodec,
    frames_to_images,
    images_to_frames,
    latent_shape,
    uint8_to_unit,
    unit_to_uint8,
)
from xwam.codecs.depth import (
    DEFAULT_FAR_M,
    DEFAULT_NEAR_M,
    DepthEncoding,
    align_relative_inverse_depth,
    relative_inverse_depth_from_uint8,
    relative_inverse_depth_to_frames,
)
from xwam.codecs.factory import build_codec
from xwam.codecs.pca import PatchPCACodec
from xwam.codecs.pixel import PixelCodec
from xwam.codecs.text import (
    CachedTextEncoder,
    MiniLMTextEncoder,
    NoTextEncoder,
    TextEncoder,
    UMT5TextEncoder,
    build_text_encoder,
)
from xwam.codecs.wan_vae import WanVAECodec

__all__ = [
    "DEFAULT_FAR_M",
    "DEFAULT_NEAR_M",
    "CachedTextEncoder",
    "DepthEncoding",
    "LatentCodec",
    "MiniLMTextEncoder",
    "NoTextEncoder",
    "PatchPCACodec",
    "PixelCodec",
    "TextEncoder",
    "UMT5TextEncoder",
    "WanVAECodec",
    "align_relative_inverse_depth",
    "build_codec",
    "build_text_encoder",
    "frames_to_images",
    "images_to_frames",
    "latent_shape",
    "relative_inverse_depth_from_uint8",
    "relative_inverse_depth_to_frames",
    "uint8_to_unit",
    "unit_to_uint8",
]
