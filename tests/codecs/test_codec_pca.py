import math

import pytest
import torch

from xwam.codecs import LatentCodec, PatchPCACodec, PixelCodec, build_codec, latent_shape
from xwam.config import get_preset
from xwam.processor import XWAMProcessor


def _low_rank_frames(n: int = 8, rank: int = 5, seed: int = 0) -> torch.Tensor:
    """Frames whose 4x4 patches lie in a ``rank``-dimensional affine subspace (plus the mean)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, 48, generator=g)
    coeffs = torch.randn(n * 2 * 4 * 4, rank, generator=g) * 0.1
    patches = (coeffs @ basis + 0.05).reshape(n, 2, 4, 4, 48).permute(0, 4, 1, 2, 3)  # (N, P, F, h, w)
    return PixelCodec(4).decode(patches.contiguous())


def test_pca_codec_is_exact_on_its_subspace_and_unit_scaled() -> None:
    frames = _low_rank_frames()
    codec = PatchPCACodec.fit(frames, spatial_compression=4, latent_channels=5)
    assert isinstance(codec, LatentCodec)
    latents = codec.encode(frames)
    assert latents.shape == latent_shape(codec, tuple(frames.shape)) == (8, 5, 2, 4, 4)
    assert latents.pow(2).mean().item() == pytest.approx(1.0, rel=1e-3)  # one global scale
    assert torch.allclose(codec.decode(latents), frames, atol=1e-5)  # rank-5 data: lossless
    # fewer components than the data's rank lose information; more PSNR with more components
    small = PatchPCACodec.fit(frames, 4, 2)
    assert small.reconstruction_psnr(frames) < codec.reconstruction_psnr(frames)


def test_pca_codec_decode_is_the_projection_onto_the_basis() -> None:
    frames = torch.rand(4, 3, 1, 16, 16) * 2 - 1
    codec = PatchPCACodec.fit(frames, 4, 12)
    recon = codec.decode(codec.encode(frames))
    # projecting twice changes nothing (orthonormal basis, exact linear inverse)
    assert torch.allclose(codec.decode(codec.encode(recon)), recon, atol=1e-5)
    # components are orthonormal
    eye = codec.components @ codec.components.T
    assert torch.allclose(eye, torch.eye(12), atol=1e-5)
    # the current-frame encoder equals frame 0 of the clip encoder
    clip = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    assert torch.allclose(codec.encode_current_frame(clip[:, :, 0]), codec.encode(clip)[:, :, :1])


def test_pca_codec_state_round_trip_and_deterministic_fit() -> None:
    frames = torch.rand(3, 3, 2, 8, 8) * 2 - 1
    a = PatchPCACodec.fit(frames, 4, 6)
    b = PatchPCACodec.fit(frames.clone(), 4, 6)
    assert torch.equal(a.components, b.components) and torch.equal(a.scale, b.scale)
    again = PatchPCACodec.from_state_dict(a.state_dict())
    assert torch.equal(again.encode(frames), a.encode(frames))
    with pytest.raises(ValueError, match="components"):
        PatchPCACodec(4, a.mean, torch.zeros(49, 48), 1.0)
    with pytest.raises(ValueError, match="latent_channels"):
        PatchPCACodec.fit(frames, 4, 0)


def test_pca_codec_needs_its_fitted_state() -> None:
    cfg = get_preset("small").model
    assert cfg.codec == "pca"
    with pytest.raises(ValueError, match="codec.safetensors"):
        build_codec(cfg)


def test_processor_fits_one_basis_per_stream_and_round_trips_depth() -> None:
    cfg = get_preset("tiny").override(["model.codec=pca", "model.latent_channels=6"]).model
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 2, 3, 3, 16, 16), dtype=torch.uint8, generator=g)
    depth = 0.5 + torch.rand(4, 2, 3, 16, 16, generator=g).cumsum(-1) * 0.05  # smooth ramps, 0.5-1.4 m
    state = XWAMProcessor.fit_codec_state(cfg, images, depth, "metric")
    assert math.isfinite(float(state["rgb.reconstruction_psnr"]))
    proc = XWAMProcessor.build(cfg, codec_state=state)
    assert proc.depth_codec is not proc.codec
    assert not torch.equal(proc.codec.components, proc.depth_codec.components)
    # the processor's state is what the checkpoint stores, and rebuilds the same codecs
    rebuilt = XWAMProcessor.build(cfg, codec_state=proc.codec_state())
    latents = proc.encode_depth(depth, "metric")
    assert latents.shape == (4, 2, 6, 3, 8, 8)
    assert torch.equal(rebuilt.encode_depth(depth, "metric"), latents)
    # smooth depth survives 6 of 12 components per 2x2 patch closely (metres)
    back = proc.decode_depth(latents)
    assert (back - depth).abs().median() < 0.02


def test_whitened_pca_codec_gives_each_component_unit_variance_and_decodes_exactly() -> None:
    frames = _low_rank_frames()
    plain = PatchPCACodec.fit(frames, 4, 5)
    white = PatchPCACodec.fit(frames, 4, 5, whitening=1.0)
    spread = white.encode(frames).transpose(0, 1).reshape(5, -1).pow(2).mean(dim=1)
    assert torch.allclose(spread, torch.ones(5), rtol=1e-3)  # every component at unit variance
    assert torch.allclose(white.decode(white.encode(frames)), frames, atol=1e-5)  # same subspace, exact
    assert plain.scale.unique().numel() == 1 and white.scale.unique().numel() == 5
    half = PatchPCACodec.fit(frames, 4, 5, whitening=0.5)
    assert half.encode(frames).pow(2).mean().item() == pytest.approx(1.0, rel=1e-3)  # unit mean square
    again = PatchPCACodec.from_state_dict(white.state_dict())  # per-component scale travels with it
    assert torch.equal(again.encode(frames), white.encode(frames))
    with pytest.raises(ValueError, match="whitening"):
        PatchPCACodec.fit(frames, 4, 5, whitening=1.5)


def test_processor_fits_the_codec_whitening_the_config_names() -> None:
    cfg = get_preset("tiny").override(["model.codec=pca", "model.latent_channels=6", "model.codec_whitening=1"]).model
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 2, 3, 3, 16, 16), dtype=torch.uint8, generator=g)
    state = XWAMProcessor.fit_codec_state(cfg, images, None)
    assert state["rgb.scale"].shape == (6,) and state["rgb.scale"].unique().numel() == 6
    with pytest.raises(ValueError, match="codec_whitening"):
        get_preset("small").override(["model.codec_whitening=2"])
