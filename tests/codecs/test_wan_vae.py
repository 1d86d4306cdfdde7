import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from xwam.codecs import LatentCodec, WanVAECodec, build_codec
from xwam.config import ModelConfig

# The tiny Wan2.2-shaped VAE used by the tests: same layout as the real one (48 channels,
# 16x16 spatial, 4x temporal compression, patch 2, residual), ~1 M parameters.
TINY_VAE_CONFIG = {
    "base_dim": 16,
    "decoder_base_dim": 16,
    "z_dim": 48,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "is_residual": True,
    "patch_size": 2,
    "in_channels": 12,
    "out_channels": 12,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.05 * (i - 24) for i in range(48)],
    "latents_std": [0.5 + 0.05 * i for i in range(48)],
}


@pytest.fixture(scope="module")
def codec() -> WanVAECodec:
    torch.manual_seed(0)
    return WanVAECodec.from_config(TINY_VAE_CONFIG)


def _clip(n: int = 2, frames: int = 5, size: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, frames, size, size, generator=generator) * 2 - 1


def test_shapes_and_attributes(codec: WanVAECodec) -> None:
    assert isinstance(codec, LatentCodec)
    assert (codec.latent_channels, codec.spatial_compression, codec.temporal_compression) == (48, 16, 4)
    latents = codec.encode(_clip())
    assert latents.shape == (2, 48, 2, 2, 2) and latents.dtype == torch.float32
    frames = codec.decode(latents)
    assert frames.shape == (2, 3, 5, 32, 32)
    assert frames.min() >= -1 and frames.max() <= 1


def test_latents_are_normalised_posterior_means(codec: WanVAECodec) -> None:
    clip = _clip()
    with torch.no_grad():
        posterior = codec.vae.encode(clip).latent_dist
    mean = torch.tensor(TINY_VAE_CONFIG["latents_mean"]).reshape(1, 48, 1, 1, 1)
    std = torch.tensor(TINY_VAE_CONFIG["latents_std"]).reshape(1, 48, 1, 1, 1)
    latents = codec.encode(clip)
    assert torch.allclose(latents, (posterior.mean - mean) / std, atol=1e-6)
    assert torch.equal(codec.encode(clip), latents)  # deterministic: the mode, not a sample


def test_denormalisation_inverts_normalisation(codec: WanVAECodec) -> None:
    raw = torch.randn(3, 48, 2, 2, 2) * 3
    assert torch.allclose(codec.denormalize(codec.normalize(raw)), raw, atol=1e-6)
    # decode feeds the VAE the de-normalised latents
    latents = codec.encode(_clip())
    with torch.no_grad():
        expected = codec.vae.decode(codec.denormalize(latents)).sample
    assert torch.allclose(codec.decode(latents), expected, atol=1e-6)


def test_current_frame_equals_latent_frame_zero(codec: WanVAECodec) -> None:
    clip = _clip(frames=9)
    full = codec.encode(clip)
    assert full.shape[2] == 3
    current = codec.encode_current_frame(clip[:, :, 0])
    assert current.shape == (2, 48, 1, 2, 2)
    assert codec.decode(current).shape == (2, 3, 1, 32, 32)  # one latent frame -> one frame
    assert torch.allclose(current, full[:, :, :1], atol=1e-5)
    # causality: changing future frames leaves latent frame 0 unchanged
    altered = clip.clone()
    altered[:, :, 1:] = -altered[:, :, 1:]
    changed = codec.encode(altered)
    assert torch.allclose(changed[:, :, 0], full[:, :, 0], atol=1e-5)
    assert not torch.allclose(changed[:, :, 1:], full[:, :, 1:], atol=1e-3)


def test_micro_batching_matches_one_batch(codec: WanVAECodec) -> None:
    clip = _clip(n=3)
    chunked = WanVAECodec(codec.vae, micro_batch=2)
    assert torch.allclose(chunked.encode(clip), codec.encode(clip), atol=1e-5)
    latents = codec.encode(clip)
    assert torch.allclose(chunked.decode(latents), codec.decode(latents), atol=1e-5)


def test_bfloat16_vae_returns_float32(codec: WanVAECodec) -> None:
    half = WanVAECodec.from_config(TINY_VAE_CONFIG, dtype=torch.bfloat16)
    half.vae.load_state_dict(codec.vae.state_dict())
    assert half.dtype == torch.bfloat16
    clip = _clip()
    latents = half.encode(clip)
    assert latents.dtype == torch.float32
    assert torch.allclose(latents, codec.encode(clip), atol=0.05)
    assert half.decode(latents).dtype == torch.float32


@pytest.mark.parametrize("frames", [2, 4, 6, 8])
def test_rejects_frame_counts_the_vae_would_truncate(codec: WanVAECodec, frames: int) -> None:
    with pytest.raises(ValueError, match=r"1 \+ 4\*k"):
        codec.encode(_clip(frames=frames))


def test_rejects_bad_sizes(codec: WanVAECodec) -> None:
    with pytest.raises(ValueError, match="divisible by the spatial compression 16"):
        codec.encode(_clip(size=24))
    with pytest.raises(ValueError, match="latents must be"):
        codec.decode(torch.zeros(1, 16, 1, 2, 2))


def _save_diffusers_layout(codec: WanVAECodec, root: Path) -> Path:
    folder = root / "vae"
    folder.mkdir(parents=True)
    config = dict(codec.vae.config)
    config.update({"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.35.0", "clip_output": True})
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in codec.vae.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def test_from_pretrained_round_trip(codec: WanVAECodec, tmp_path: Path) -> None:
    folder = _save_diffusers_layout(codec, tmp_path)
    clip = _clip()
    expected = codec.encode(clip)
    for path in (tmp_path, folder):  # model root or the vae/ folder itself
        loaded = WanVAECodec.from_pretrained(path)
        assert torch.equal(loaded.encode(clip), expected)
        assert torch.equal(loaded.decode(expected), codec.decode(expected))
        assert all(p.device.type == "cpu" for p in loaded.vae.parameters())


def test_build_codec_checks_the_config(codec: WanVAECodec, tmp_path: Path) -> None:
    _save_diffusers_layout(codec, tmp_path)
    cfg = ModelConfig(image_height=32, image_width=32, num_frames=5)
    built = build_codec(cfg, vae_path=str(tmp_path))
    assert isinstance(built, WanVAECodec)
    wrong = replace(cfg, latent_channels=16)
    with pytest.raises(ValueError, match="latent_channels: config 16, codec 48"):
        build_codec(wrong, vae_path=str(tmp_path))


def test_from_pretrained_errors(codec: WanVAECodec, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WanVAECodec.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no diffusers-format Wan VAE"):
        WanVAECodec.from_pretrained(tmp_path)
    folder = _save_diffusers_layout(codec, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for key, value in (("num_res_blocks", 2), ("base_dim", 32)):  # missing keys; wrong shapes
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(RuntimeError, match="do not match its config.json"):
            WanVAECodec.from_pretrained(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        WanVAECodec.from_pretrained(tmp_path)
