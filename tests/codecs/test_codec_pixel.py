from dataclasses import replace

import numpy as np
import pytest
import torch

from xwam.codecs import (
    LatentCodec,
    PixelCodec,
    build_codec,
    frames_to_images,
    images_to_frames,
    latent_shape,
    uint8_to_unit,
    unit_to_uint8,
)
from xwam.config import ModelConfig, get_preset


def test_pixel_codec_shapes_and_exact_round_trip() -> None:
    codec = PixelCodec(4)
    assert isinstance(codec, LatentCodec)
    frames = torch.rand(6, 3, 3, 32, 48) * 2 - 1
    latents = codec.encode(frames)
    assert latents.shape == (6, 48, 3, 8, 12) == latent_shape(codec, tuple(frames.shape))
    assert torch.equal(codec.decode(latents), frames)  # bit-exact


def test_pixel_codec_channel_layout_is_space_to_depth() -> None:
    codec = PixelCodec(2)
    frames = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(1, 3, 1, 4, 4)
    latents = codec.encode(frames)
    # latent pixel (0, 0) holds the top-left 2x2 patch of each colour channel in row-major order
    assert latents[0, :4, 0, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert latents[0, 4:8, 0, 0, 0].tolist() == [16.0, 17.0, 20.0, 21.0]
    # frames are independent in time
    clip = torch.rand(2, 3, 5, 8, 8)
    assert torch.equal(codec.encode(clip)[:, :, 3], codec.encode(clip[:, :, 3:4])[:, :, 0])


def test_pixel_codec_current_frame() -> None:
    codec = PixelCodec(4)
    clip = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    assert torch.equal(codec.encode_current_frame(clip[:, :, 0]), codec.encode(clip)[:, :, :1])


@pytest.mark.parametrize(
    "shape, message",
    [((2, 3, 3, 30, 32), "divisible"), ((2, 4, 3, 32, 32), r"\(N, 3, F, H, W\)"), ((3, 32, 32), "shape")],
)
def test_pixel_codec_rejects_bad_frames(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PixelCodec(4).encode(torch.zeros(shape))


def test_pixel_codec_rejects_uint8_and_bad_latents() -> None:
    with pytest.raises(ValueError, match="float"):
        PixelCodec(4).encode(torch.zeros(1, 3, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="48"):
        PixelCodec(4).decode(torch.zeros(1, 12, 1, 2, 2))


def test_image_conversions_round_trip() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 3, 5, 8, 6, 3), dtype=np.uint8)  # (B, V, F, H, W, 3)
    frames = images_to_frames(images)
    assert frames.shape == (2, 3, 3, 5, 8, 6) and frames.dtype == torch.float32
    assert frames.min() >= -1 and frames.max() <= 1
    assert float(uint8_to_unit(np.array([0, 255], dtype=np.uint8)).abs().max()) == 1.0
    assert np.array_equal(frames_to_images(frames).numpy(), images)
    assert unit_to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clamps
    with pytest.raises(ValueError, match="uint8"):
        images_to_frames(images.astype(np.float32))


def test_build_codec_pixel_matches_presets() -> None:
    for name, changes in (("tiny", []), ("small", ["model.codec=pixel", "model.latent_channels=192"])):
        cfg = get_preset(name).override(changes).model
        codec = build_codec(cfg)
        assert isinstance(codec, PixelCodec)
        frames = torch.zeros(cfg.num_views, 3, cfg.num_frames, cfg.image_height, cfg.image_width)
        assert codec.encode(frames).shape == (
            cfg.num_views,
            cfg.latent_channels,
            cfg.latent_frames,
            cfg.latent_height,
            cfg.latent_width,
        )


def test_build_codec_wan_needs_a_path() -> None:
    with pytest.raises(ValueError, match="vae_path"):
        build_codec(ModelConfig())
    cfg = replace(get_preset("tiny").model)
    object.__setattr__(cfg, "codec", "other")  # past ModelConfig's own validation, to reach the factory's
    with pytest.raises(ValueError, match="unknown codec"):
        build_codec(cfg)
