"""A linear latent codec a small model can learn: per-patch PCA fitted on the training frames.

Each s x s patch (3*s*s values after the pixel codec's space-to-depth) is projected onto the C
leading principal components of the training patches, then divided by one global scale so the
latents have unit mean square. Decoding is the exact linear inverse on that C-dimensional subspace
(``decode(encode(x))`` is the orthogonal projection of x's patches onto the basis, plus the mean).

Why: a token of the CPU demo model carries a 2x2 patch of latents, so its output width is 4*C. With
the exact pixel codec (C = 3*8*8 = 192) that is 768 values through a 256-wide transformer, and the
video velocity cannot pass that bottleneck. PCA keeps C small (32 by default: 128 values per token)
while retaining most of the image: natural image patches concentrate their energy in few components.

One global scale (not per-component whitening) keeps the latent MSE proportional to the pixel MSE,
so the diffusion loss weighs components by how much of the image they carry. Depth (inverse depth
frames, one channel replicated to three) gets its own basis, fitted the same way.

The fitted state is a few KiB and travels with every checkpoint (``codec.safetensors``).
"""

from __future__ import annotations

import math

import torch

from xwam.codecs.base import check_frames
from xwam.codecs.pixel import PixelCodec


class PatchPCACodec:
    """Linear codec (N, 3, F, H, W) <-> (N, C, F, H/s, W/s) from a fitted patch basis."""

    temporal_compression: int = 1

    def __init__(self, spatial_compression: int, mean: torch.Tensor, components: torch.Tensor, scale: float) -> None:
        self.pixels = PixelCodec(spatial_compression)
        self.spatial_compression = self.pixels.spatial_compression
        patch = self.pixels.latent_channels
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        components = torch.as_tensor(components, dtype=torch.float32)
        if mean.shape != (patch,):
            raise ValueError(f"PatchPCACodec: mean must have {patch} values (3*s*s), got {tuple(mean.shape)}")
        if components.ndim != 2 or components.shape[1] != patch or not 1 <= components.shape[0] <= patch:
            raise ValueError(
                f"PatchPCACodec: components must be (C, {patch}) with 1 <= C <= {patch}, got {tuple(components.shape)}"
            )
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"PatchPCACodec: scale must be a positive finite number, got {scale}")
        self.mean = mean
        self.components = components
        self.scale = float(scale)
        self.latent_channels = int(components.shape[0])

    def __repr__(self) -> str:
        return (f"PatchPCACodec(spatial_compression={self.spatial_compression}, "
                f"latent_channels={self.latent_channels})")

    # ---- codec interface ---------------------------------------------------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        check_frames(frames, spatial=self.spatial_compression, temporal=1, who="PatchPCACodec.encode")
        patches = self.pixels.encode(frames)  # (N, P, F, h, w)
        mean, comps = self._on(patches)
        centred = patches - mean.view(1, -1, 1, 1, 1)
        return torch.einsum("cp,npfhw->ncfhw", comps, centred) / self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"PatchPCACodec.decode: latents must be (N, {self.latent_channels}, T, h, w), "
                f"got shape {tuple(latents.shape)}"
            )
        mean, comps = self._on(latents)
        patches = torch.einsum("cp,ncfhw->npfhw", comps, latents * self.scale) + mean.view(1, -1, 1, 1, 1)
        return self.pixels.decode(patches)

    def encode_current_frame(self, frames0: torch.Tensor) -> torch.Tensor:
        if frames0.ndim == 4:
            frames0 = frames0.unsqueeze(2)
        return self.encode(frames0[:, :, :1])

    def _on(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.mean.to(device=like.device, dtype=like.dtype),
                self.components.to(device=like.device, dtype=like.dtype))

    # ---- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "components": self.components.clone(),
                "scale": torch.tensor([self.scale], dtype=torch.float64),
                "spatial_compression": torch.tensor([self.spatial_compression], dtype=torch.int64)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> PatchPCACodec:
        missing = {"mean", "components", "scale", "spatial_compression"} - set(state)
        if missing:
            raise ValueError(f"PCA codec state lacks {sorted(missing)}")
        return cls(int(state["spatial_compression"].reshape(-1)[0]), state["mean"], state["components"],
                   float(state["scale"].reshape(-1)[0]))

    # ---- fitting -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, frames: torch.Tensor, spatial_compression: int, latent_channels: int) -> PatchPCACodec:
        """Fit on float frames (N, 3, F, H, W) in [-1, 1] (every patch of every frame is a sample).

        Deterministic: float64 covariance, eigenvectors with a fixed sign (largest entry positive).
        """
        pixels = PixelCodec(spatial_compression)
        patch = pixels.latent_channels
        if not 1 <= latent_channels <= patch:
            raise ValueError(f"latent_channels must lie in [1, 3*s*s = {patch}], got {latent_channels}")
        x = pixels.encode(frames.float()).transpose(0, 1).reshape(patch, -1).double()  # (P, samples)
        if x.shape[1] < 2:
            raise ValueError("PCA codec: need at least two patches to fit")
        mean = x.mean(dim=1)
        centred = x - mean[:, None]
        cov = centred @ centred.T / (x.shape[1] - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(eigvals, descending=True)[:latent_channels]
        comps = eigvecs[:, order].T.contiguous()  # (C, P), orthonormal rows
        signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
        comps = comps * signs
        coeffs = comps @ centred
        scale = float(coeffs.pow(2).mean().sqrt().clamp_min(1e-6))
        return cls(spatial_compression, mean.float(), comps.float(), scale)

    def reconstruction_psnr(self, frames: torch.Tensor) -> float:
        """PSNR (dB, peak-to-peak 2 for [-1, 1] frames) of decode(encode(frames)) against frames."""
        recon = self.decode(self.encode(frames.float())).clamp(-1, 1)
        mse = float((recon - frames.float()).pow(2).mean())
        return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)
