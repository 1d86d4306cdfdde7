"""An exact, weight-free latent codec for CPU presets: space-to-depth of factor s.

Each s x s patch of a frame becomes 3*s*s channels of one latent pixel; time is not compressed.
Decoding is the exact inverse (a pure permutation, bit-exact). The latents are the pixel values
themselves, already in [-1, 1], so no normalisation is applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xwam.codecs.base import check_frames


class PixelCodec:
    """Space-to-depth codec: (N, 3, F, H, W) <-> (N, 3*s*s, F, H/s, W/s)."""

    temporal_compression: int = 1

    def __init__(self, spatial_compression: int) -> None:
        if spatial_compression < 1:
            raise ValueError(f"spatial_compression must be >= 1, got {spatial_compression}")
        self.spatial_compression = int(spatial_compression)
        self.latent_channels = 3 * self.spatial_compression**2

    def __repr__(self) -> str:
        return f"PixelCodec(spatial_compression={self.spatial_compression})"

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        check_frames(frames, spatial=self.spatial_compression, temporal=1, who="PixelCodec.encode")
        n, c, f, h, w = frames.shape
        # Fold time into the batch so pixel_unshuffle sees (N*F, 3, H, W) images.
        flat = frames.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)
        packed = F.pixel_unshuffle(flat, self.spatial_compression)
        s = self.spatial_compression
        return packed.reshape(n, f, self.latent_channels, h // s, w // s).permute(0, 2, 1, 3, 4).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"PixelCodec.decode: latents must be (N, {self.latent_channels}, T, h, w), "
                f"got shape {tuple(latents.shape)}"
            )
        n, c, t, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        pixels = F.pixel_shuffle(flat, self.spatial_compression)
        s = self.spatial_compression
        return pixels.reshape(n, t, 3, h * s, w * s).permute(0, 2, 1, 3, 4).contiguous()

    def encode_current_frame(self, frames0: torch.Tensor) -> torch.Tensor:
        """Encode only the current frame: (N, 3, H, W) or (N, 3, 1, H, W) -> (N, C, 1, h, w)."""
        if frames0.ndim == 4:
            frames0 = frames0.unsqueeze(2)
        return self.encode(frames0[:, :, :1])
