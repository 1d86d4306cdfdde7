"""The Wan2.2 video VAE (diffusers ``AutoencoderKLWan``) as a frozen latent codec.

Facts this wrapper relies on (diffusers 0.42.1):

- ``encode`` returns a diagonal Gaussian over *raw* latents; we take its mean (the mode, not a
  sample) and normalise it ourselves with the config's per-channel vectors:
  z = (mu - latents_mean) / latents_std. ``decode`` undoes that before calling the VAE.
- The VAE is causal in time and consumes 1 + 4k frames (one chunk of 1, then chunks of 4); any
  other frame count has its tail silently dropped, so we reject it with a clear error.
- Latent frame 0 depends only on pixel frame 0: at policy time ``encode_current_frame`` encodes
  just the current observation (the same latent as frame 0 of the full clip, ~7x cheaper).
- The released ``vae/config.json`` carries a ``clip_output`` key that 0.42.1's ``__init__`` does
  not accept; ``from_pretrained`` drops it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from xwam.codecs.base import check_frames

# Config keys written by other diffusers versions or by the release that are not constructor args.
_IGNORED_CONFIG_KEYS = ("clip_output", "_class_name", "_diffusers_version", "_name_or_path")
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
_INDEX_FILES = ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json")


class WanVAECodec:
    """Frozen Wan2.2 VAE: (N, 3, 1+4k, H, W) in [-1, 1] <-> (N, 48, 1+k, H/16, W/16) normalised.

    ``micro_batch`` bounds how many clips (views) go through the VAE at once (memory); None
    encodes the whole batch in one call. Latents are returned as float32 whatever the VAE dtype.
    """

    def __init__(self, vae: Any, *, micro_batch: int | None = None) -> None:
        config = vae.config
        mean = config.latents_mean
        std = config.latents_std
        if mean is None or std is None or len(mean) != config.z_dim or len(std) != config.z_dim:
            raise ValueError(
                f"Wan VAE config needs latents_mean and latents_std of length z_dim={config.z_dim}, got "
                f"{None if mean is None else len(mean)} and {None if std is None else len(std)}"
            )
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1 or None, got {micro_batch}")
        self.vae = vae.eval().requires_grad_(False)
        self.micro_batch = micro_batch
        self.latent_channels = int(config.z_dim)
        self.spatial_compression = int(config.scale_factor_spatial)
        self.temporal_compression = int(config.scale_factor_temporal)
        # The encoder's chunking is hard-wired to 1 + 4k; make sure the config agrees with it.
        temporal_from_layers = 2 ** sum(bool(d) for d in config.temperal_downsample)
        if temporal_from_layers != self.temporal_compression or self.temporal_compression != 4:
            raise ValueError(
                f"Wan VAE config: scale_factor_temporal={self.temporal_compression} but temperal_downsample "
                f"{list(config.temperal_downsample)} compresses time by {temporal_from_layers}; expected 4"
            )
        patch = config.patch_size or 1
        spatial_from_layers = patch * 2 ** (len(config.dim_mult) - 1)
        if spatial_from_layers != self.spatial_compression:
            raise ValueError(
                f"Wan VAE config: scale_factor_spatial={self.spatial_compression} but patch_size={patch} and "
                f"dim_mult={list(config.dim_mult)} compress space by {spatial_from_layers}"
            )
        shape = (1, self.latent_channels, 1, 1, 1)
        self._mean = torch.tensor(mean, dtype=torch.float32).reshape(shape)
        self._std = torch.tensor(std, dtype=torch.float32).reshape(shape)

    def __repr__(self) -> str:
        return (
            f"WanVAECodec(latent_channels={self.latent_channels}, spatial={self.spatial_compression}, "
            f"temporal={self.temporal_compression}, dtype={self.dtype}, device={self.device})"
        )

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        micro_batch: int | None = None,
    ) -> WanVAECodec:
        """A randomly initialised VAE from a config dict (tests, tiny models)."""
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_config(_clean_config(config))
        return cls(_move(vae, device, dtype), micro_batch=micro_batch)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        micro_batch: int | None = None,
    ) -> WanVAECodec:
        """Load a local diffusers-format VAE: a model root holding ``vae/`` or the ``vae/`` folder."""
        from diffusers import AutoencoderKLWan
        from safetensors.torch import load_file

        folder = _resolve_vae_folder(Path(path))
        try:
            config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"Wan VAE config {folder / 'config.json'} is not valid JSON: {exc}") from exc
        # Build on the meta device and adopt the checkpoint tensors (no wasted random init).
        with torch.device("meta"):
            vae = AutoencoderKLWan.from_config(_clean_config(config))
        state: dict[str, torch.Tensor] = {}
        for file in _weight_files(folder):
            state.update(load_file(str(file)))
        missing, unexpected = _key_mismatch(vae, state)
        if missing or unexpected:
            raise RuntimeError(
                f"Wan VAE weights in {folder} do not match its config.json: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        try:
            vae.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:  # shape mismatches: name the folder, keep torch's detail
            raise RuntimeError(f"Wan VAE weights in {folder} do not match its config.json: {exc}") from exc
        return cls(_move(vae, device, dtype), micro_batch=micro_batch)

    # ---- properties ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> WanVAECodec:
        _move(self.vae, device, dtype)
        return self

    # ---- normalisation -------------------------------------------------------------------
    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> unit-scale latents (float32)."""
        raw = raw.to(torch.float32)
        return (raw - self._mean.to(raw.device)) / self._std.to(raw.device)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Unit-scale latents -> raw VAE latents (float32); the exact inverse of ``normalize``."""
        latents = latents.to(torch.float32)
        return latents * self._std.to(latents.device) + self._mean.to(latents.device)

    # ---- codec ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        check_frames(
            frames,
            spatial=self.spatial_compression,
            temporal=self.temporal_compression,
            who="WanVAECodec.encode",
        )
        outputs = []
        for chunk in self._chunks(frames):
            posterior = self.vae.encode(chunk.to(device=self.device, dtype=self.dtype)).latent_dist
            outputs.append(self.normalize(posterior.mode()))
        return torch.cat(outputs, dim=0)

    @torch.no_grad()
    def encode_current_frame(self, frames0: torch.Tensor) -> torch.Tensor:
        """Encode only the current frame: (N, 3, H, W) or (N, 3, F, H, W) -> (N, C, 1, h, w).

        Equal to latent frame 0 of ``encode`` on the full clip, since the VAE is causal.
        """
        if frames0.ndim == 4:
            frames0 = frames0.unsqueeze(2)
        if frames0.ndim != 5:
            raise ValueError(
                f"WanVAECodec.encode_current_frame: expected (N, 3, H, W) or (N, 3, F, H, W), "
                f"got shape {tuple(frames0.shape)}"
            )
        return self.encode(frames0[:, :, :1])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"WanVAECodec.decode: latents must be (N, {self.latent_channels}, T, h, w), "
                f"got shape {tuple(latents.shape)}"
            )
        outputs = []
        for chunk in self._chunks(latents):
            raw = self.denormalize(chunk).to(device=self.device, dtype=self.dtype)
            outputs.append(self.vae.decode(raw).sample.to(torch.float32))
        return torch.cat(outputs, dim=0)

    def _chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.micro_batch is None or x.shape[0] <= self.micro_batch:
            return [x]
        return list(x.split(self.micro_batch, dim=0))


def _move(vae: Any, device: torch.device | str | None, dtype: torch.dtype | None) -> Any:
    # torch's own Module.to: diffusers' override warns on every dtype cast about keep-in-fp32
    # modules, and the Wan VAE has none.
    torch.nn.Module.to(vae, device=device, dtype=dtype)
    return vae


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _IGNORED_CONFIG_KEYS}


def _resolve_vae_folder(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"Wan VAE path {path} does not exist")
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file() and any(
            (folder / name).is_file() for name in _WEIGHT_FILES + _INDEX_FILES
        ):
            return folder
    raise FileNotFoundError(
        f"no diffusers-format Wan VAE under {path}: expected config.json and "
        f"{_WEIGHT_FILES[0]} (or a sharded index) in {path} or {path / 'vae'}"
    )


def _weight_files(folder: Path) -> list[Path]:
    for name in _INDEX_FILES:
        index = folder / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [folder / shard for shard in shards]
            absent = [str(f) for f in files if not f.is_file()]
            if absent:
                raise FileNotFoundError(f"Wan VAE shard(s) listed in {index} are missing: {absent}")
            return files
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(f"no safetensors weights in {folder}")


def _key_mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(module.state_dict().keys())
    return sorted(expected - set(state)), sorted(set(state) - expected)
