"""A linear latent codec a small model can learn: per-patch PCA fitted on the training frames.

Each s x s patch (3*s*s values after the pixel codec's space-to-depth) is projected onto the C
leading principal components of the training patches, then divided by a scale so the latents have
unit mean square. Decoding is the exact linear inverse on that C-dimensional subspace
(``decode(encode(x))`` is the orthogonal projection of x's patches onto the basis, plus the mean).

Why: a token of the CPU demo model carries a 2x2 patch of latents, so its output width is 4*C. With
the exact pixel codec (C = 3*8*8 = 192) that is 768 values through a 256-wide transformer, and the
video velocity cannot pass that bottleneck. PCA keeps C small (32 by default: 128 values per token)
while retaining most of the image: natural image patches concentrate their energy in few components.

The scale is one global number by default (``whitening`` 0): the latent MSE is then proportional to
the pixel MSE, so the diffusion loss weighs components by how much of the image they carry. But the
leading component's spread is ~30x the 32nd's, so against unit noise the trailing components have
almost no signal until the last denoising steps, and what the model fails to cancel of the noise there
decodes as speckle. ``whitening`` w in (0, 1] divides component k by sigma_k**w instead (then one
global factor for unit mean square): w = 1 gives every component unit variance, as per-channel
normalised VAE latents have (Wan2.2's ``latents_mean`` / ``latents_std``). Depth (depth frames, one
channel replicated to three) gets its own basis, fitted the same way.

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

    def __init__(self, spatial_compression: int, mean: torch.Tensor, components: torch.Tensor,
                 scale: float | torch.Tensor) -> None:
        """``scale``: one number for every component, or one per component (C,)."""
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
        channels = int(components.shape[0])
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if scale.numel() == 1:
            scale = scale.expand(channels).clone()
        if scale.shape != (channels,) or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(
                f"PatchPCACodec: scale must be one positive finite number or {channels} of them (one per "
                f"component), got {scale.tolist()}"
            )
        self.mean = mean
        self.components = components
        self.scale = scale
        self.latent_channels = channels

    def __repr__(self) -> str:
        return (f"PatchPCACodec(spatial_compression={self.spatial_compression}, "
                f"latent_channels={self.latent_channels})")

    # ---- codec interface ---------------------------------------------------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        check_frames(frames, spatial=self.spatial_compression, temporal=1, who="PatchPCACodec.encode")
        patches = self.pixels.encode(frames)  # (N, P, F, h, w)
        mean, comps, scale = self._on(patches)
        centred = patches - mean.view(1, -1, 1, 1, 1)
        return torch.einsum("cp,npfhw->ncfhw", comps, centred) / scale.view(1, -1, 1, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"PatchPCACodec.decode: latents must be (N, {self.latent_channels}, T, h, w), "
                f"got shape {tuple(latents.shape)}"
            )
        mean, comps, scale = self._on(latents)
        patches = torch.einsum("cp,ncfhw->npfhw", comps, latents * scale.view(1, -1, 1, 1, 1))
        patches = patches + mean.view(1, -1, 1, 1, 1)
        return self.pixels.decode(patches)

    def encode_current_frame(self, frames0: torch.Tensor) -> torch.Tensor:
        if frames0.ndim == 4:
            frames0 = frames0.unsqueeze(2)
        return self.encode(frames0[:, :, :1])

    def _on(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(t.to(device=like.device, dtype=like.dtype) for t in (self.mean, self.components, self.scale))

    # ---- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "components": self.components.clone(),
                "scale": self.scale.double(),
                "spatial_compression": torch.tensor([self.spatial_compression], dtype=torch.int64)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> PatchPCACodec:
        missing = {"mean", "components", "scale", "spatial_compression"} - set(state)
        if missing:
            raise ValueError(f"PCA codec state lacks {sorted(missing)}")
        return cls(int(state["spatial_compression"].reshape(-1)[0]), state["mean"], state["components"],
                   state["scale"])

    # ---- fitting -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, frames: torch.Tensor, spatial_compression: int, latent_channels: int,
            whitening: float = 0.0) -> PatchPCACodec:
        """Fit on float frames (N, 3, F, H, W) in [-1, 1] (every patch of every frame is a sample).

        ``whitening`` w in [0, 1]: component k is divided by sigma_k**w times one global factor that
        gives the latents unit mean square (0: one global scale; 1: unit variance per component).

        Deterministic: float64 covariance, eigenvectors with a fixed sign (largest entry positive).
        """
        pixels = PixelCodec(spatial_compression)
        patch = pixels.latent_channels
        if not 1 <= latent_channels <= patch:
            raise ValueError(f"latent_channels must lie in [1, 3*s*s = {patch}], got {latent_channels}")
        if not 0.0 <= whitening <= 1.0:
            raise ValueError(f"PCA codec: whitening must lie in [0, 1], got {whitening}")
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
        spread = (comps @ centred).pow(2).mean(dim=1).sqrt().clamp_min(1e-6)  # sigma_k
        relative = spread.pow(whitening)
        scale = relative * (spread / relative).pow(2).mean().sqrt()  # unit mean square over components
        return cls(spatial_compression, mean.float(), comps.float(), scale.float())

    def reconstruction_psnr(self, frames: torch.Tensor) -> float:
        """PSNR (dB, peak-to-peak 2 for [-1, 1] frames) of decode(encode(frames)) against frames."""
        recon = self.decode(self.encode(frames.float())).clamp(-1, 1)
        mse = float((recon - frames.float()).pow(2).mean())
        return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)
