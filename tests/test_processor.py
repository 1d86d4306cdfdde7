import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xwam.config import get_preset
from xwam.data.stats import NormStats
from xwam.processor import XWAMProcessor


@pytest.fixture(scope="module")
def processor():
    cfg = get_preset("tiny").model
    rng = np.random.default_rng(0)
    stats = NormStats.from_arrays(rng.normal(size=(200, cfg.state_dim)), rng.normal(size=(200, cfg.action_dim)))
    return XWAMProcessor.build(cfg, stats)


def observations(cfg, batch, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, cfg.num_views, cfg.image_height, cfg.image_width, 3), dtype=np.uint8)
    states = rng.normal(size=(batch, cfg.state_dim)).astype(np.float32)
    prefixes = [rng.normal(size=(2, cfg.action_dim)), None, rng.normal(size=(3, cfg.action_dim))][:batch]
    return images, states, [f"task {i}" for i in range(batch)], prefixes


def test_a_batch_with_per_observation_prefixes_equals_one_observation_at_a_time(processor):
    cfg = processor.cfg
    images, states, prompts, prefixes = observations(cfg, 3)
    batch = processor.conditioning(images, states, prompts, prefixes)
    assert batch.action_prefix.shape == (3, 3, cfg.action_dim)
    assert batch.action_prefix_len.tolist() == [2, 0, 3]
    for i in range(3):
        one = processor.conditioning(images[i:i + 1], states[i:i + 1], prompts[i:i + 1], prefixes[i:i + 1])
        torch.testing.assert_close(batch.video0[i:i + 1], one.video0)
        torch.testing.assert_close(batch.state0[i:i + 1], one.state0)
        torch.testing.assert_close(batch.text[i:i + 1], one.text)
        torch.testing.assert_close(batch.text_uncond, one.text_uncond)
        if prefixes[i] is None:
            assert one.action_prefix is None and one.action_prefix_len is None
            continue
        d = len(prefixes[i])
        assert one.action_prefix_len.tolist() == [d]
        torch.testing.assert_close(batch.action_prefix[i, :d], one.action_prefix[0])
        # normalised with the processor's statistics: back in robot units it is the prefix again
        np.testing.assert_allclose(processor.unnormalize_actions(one.action_prefix[0]).numpy(), prefixes[i],
                                   rtol=1e-5, atol=1e-5)


def test_no_prefixes_and_no_guidance_leave_the_optional_fields_empty(processor):
    images, states, prompts, _ = observations(processor.cfg, 2)
    cond = processor.conditioning(images, states, prompts, [None, None], unconditional_text=False)
    assert cond.action_prefix is None and cond.action_prefix_len is None and cond.text_uncond is None


@pytest.mark.parametrize("bad", ["too-long", "wrong-dim", "nan", "count"])
def test_bad_prefixes_are_refused(processor, bad):
    cfg = processor.cfg
    images, states, prompts, _ = observations(processor.cfg, 2)
    prefix = {"too-long": np.zeros((cfg.action_horizon + 1, cfg.action_dim)),
              "wrong-dim": np.zeros((1, cfg.action_dim + 1)),
              "nan": np.full((1, cfg.action_dim), np.nan),
              "count": None}[bad]
    prefixes = [None] if bad == "count" else [prefix, None]
    with pytest.raises(ValueError, match="action_prefix|action prefixes"):
        processor.conditioning(images, states, prompts, prefixes)


def test_center_crop_takes_the_releases_evaluation_window():
    """0.95 per side of 256 x 320: rows 6..248 and columns 8..311, resized back (bilinear, no antialias)."""
    from xwam.processor import center_crop_resized

    rows = torch.arange(256.0)[:, None].expand(256, 320)
    cols = torch.arange(320.0)[None, :].expand(256, 320)
    frames = torch.stack([rows, cols, rows + cols])[None] / 1000
    out = center_crop_resized(frames, 0.95)
    expected = torch.nn.functional.interpolate(frames[..., 6:249, 8:312], size=(256, 320), mode="bilinear",
                                               align_corners=False)
    assert out.shape == frames.shape and torch.equal(out, expected)
    assert center_crop_resized(frames, 1.0) is frames


def test_the_policy_conditioning_encodes_the_cropped_frame(processor):
    from xwam.codecs import uint8_to_unit
    from xwam.processor import center_crop_resized

    cfg = processor.cfg
    images, states, prompts, _ = observations(cfg, 1)
    cropping = XWAMProcessor(cfg, processor.codec, processor.text_encoder, processor.norm_stats, center_crop=0.75)
    cond = cropping.conditioning(images, states, prompts)
    frames = uint8_to_unit(torch.as_tensor(images)).permute(0, 1, 4, 2, 3).flatten(0, 1)
    expected = processor.codec.encode_current_frame(center_crop_resized(frames, 0.75).unsqueeze(2))
    torch.testing.assert_close(cond.video0, expected.unflatten(0, (1, cfg.num_views)))
    assert not torch.allclose(cond.video0, processor.conditioning(images, states, prompts).video0)


# ---- depth kinds: metres through inverse depth, release depth (codec units) as it is ------------------
RELEASE_FIXTURE = Path(__file__).parent / "data" / "fixtures" / "release-format" / "robocasa"


@pytest.fixture(scope="module")
def release_clips():
    """Clips of the release-format fixture (depth in codec units) for a tiny 3-view model."""
    from xwam.data.clips import ClipConfig, ClipDataset
    from xwam.data.release import ReleaseDataset
    from xwam.data.release_stats import norm_stats_from_release

    expected = json.loads((RELEASE_FIXTURE / "expected.json").read_text())
    norm = norm_stats_from_release(expected["statistics"], raw_gripper=True)
    cfg = get_preset("tiny").override(["model.num_views=3", "model.state_dim=16", "model.action_dim=14",
                                       "model.num_frames=3", "model.frame_skip=4", "model.action_horizon=8"]).model
    clips = ClipDataset(ReleaseDataset(RELEASE_FIXTURE), ClipConfig.from_model(cfg), norm_stats=norm)
    return cfg, norm, clips


def test_release_depth_is_encoded_as_it_is(release_clips):
    cfg, norm, clips = release_clips
    proc = XWAMProcessor.build(cfg, norm)
    sample = clips[0]
    depth = sample["depth"][None]  # (1, V, F, H, W) in [-1, 1]
    assert sample["depth_kind"] == "codec_unit" and depth.min() == -1.0 and depth.max() <= 1.0
    latents = proc.encode_depth(depth, "codec_unit")
    frames = depth.unsqueeze(2).expand(-1, -1, 3, -1, -1, -1).flatten(0, 1)  # (V, 3, F, H, W) channel-replicated
    torch.testing.assert_close(latents, proc.depth_codec.encode(frames).unflatten(0, (1, 3)), rtol=0, atol=0)
    # a collated batch carries the kind per clip, and training_inputs uses it
    batch = torch.utils.data.default_collate([clips[0], clips[1]])
    assert batch["depth_kind"] == ["codec_unit", "codec_unit"]
    inputs = proc.training_inputs(batch)
    torch.testing.assert_close(inputs.depth[:1], latents, rtol=0, atol=0)
    # decoded back in its own kind (no metres exist for release depth)
    torch.testing.assert_close(proc.decode_depth(latents, "codec_unit"), depth, rtol=0, atol=1e-6)


def test_metric_depth_goes_through_the_models_depth_curve(processor):
    from xwam.codecs.depth import DepthEncoding

    cfg = processor.cfg
    depth = 0.3 + torch.rand(2, cfg.num_views, cfg.num_frames, cfg.image_height, cfg.image_width,
                             generator=torch.Generator().manual_seed(0))
    assert cfg.depth_curve == "inverse"  # the default, the release's representation
    frames = DepthEncoding(cfg.depth_near, cfg.depth_far, "inverse").depth_to_frames(depth)
    want = processor.depth_codec.encode(frames.flatten(0, 1)).unflatten(0, (2, cfg.num_views))
    torch.testing.assert_close(processor.encode_depth(depth, "metric"), want, rtol=0, atol=0)
    torch.testing.assert_close(processor.encode_depth(depth, ["metric", "metric"]), want, rtol=0, atol=0)
    # a batch mixing kinds encodes each clip by its own kind
    unit = frames[:, :, 0]  # the same depth, already in codec units
    mixed = processor.encode_depth(torch.stack([depth[0], unit[1]]), ["metric", "codec_unit"])
    torch.testing.assert_close(mixed, want, rtol=0, atol=1e-6)


def test_a_log_depth_model_encodes_fits_and_decodes_log_depth():
    from xwam.codecs.depth import DepthEncoding

    cfg = get_preset("tiny").override(["model.depth_curve=log", "model.codec=pca", "model.latent_channels=12"]).model
    rng = np.random.default_rng(0)
    stats = NormStats.from_arrays(rng.normal(size=(200, cfg.state_dim)), rng.normal(size=(200, cfg.action_dim)))
    shape = (4, cfg.num_views, cfg.num_frames, cfg.image_height, cfg.image_width)
    depth = torch.exp(torch.empty(shape).uniform_(np.log(0.05), np.log(5.0), generator=torch.Generator().manual_seed(1)))
    images = torch.randint(0, 256, (*shape[:3], 3, *shape[3:]), dtype=torch.uint8)
    state = XWAMProcessor.fit_codec_state(cfg, images, depth, "metric")
    processor = XWAMProcessor.build(cfg, stats, codec_state=state)
    log = DepthEncoding(cfg.depth_near, cfg.depth_far, "log")
    assert processor.depth_encoding == log
    frames = log.depth_to_frames(depth)
    want = processor.depth_codec.encode(frames.flatten(0, 1)).unflatten(0, shape[:2])
    torch.testing.assert_close(processor.encode_depth(depth, "metric"), want, rtol=0, atol=0)
    # the codec keeps every component of a 2x2 patch x 3 channels (12): decoding is exact
    torch.testing.assert_close(processor.decode_depth(want), depth, rtol=2e-4, atol=0)
    assert get_preset("small").model.depth_curve == "log"  # the CPU demo's model


def test_depth_of_a_missing_or_unknown_kind_is_refused(processor, release_clips):
    cfg = processor.cfg
    depth = torch.ones(1, cfg.num_views, cfg.num_frames, cfg.image_height, cfg.image_width)
    with pytest.raises(ValueError, match="depth kind is missing"):
        processor.encode_depth(depth, None)
    with pytest.raises(ValueError, match="unknown depth kind 'inverse_relative'"):
        processor.encode_depth(depth, "inverse_relative")
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*labelled 'metric'"):
        processor.encode_depth(depth * 1.5, "codec_unit")  # metres labelled as units
    _, _, clips = release_clips
    batch = torch.utils.data.default_collate([clips[0]])
    del batch["depth_kind"]
    rcfg, norm, _ = release_clips
    with pytest.raises(ValueError, match="no depth_kind"):
        XWAMProcessor.build(rcfg, norm).training_inputs(batch)


def test_fitting_a_codec_on_depth_needs_its_kind(release_clips):
    cfg, _, clips = release_clips
    cfg = get_preset("tiny").override(["model.codec=pca", "model.latent_channels=6", "model.num_views=3",
                                       "model.num_frames=3", "model.frame_skip=4"]).model
    samples = [clips[0], clips[3]]
    images = torch.stack([s["images"] for s in samples])
    depth = torch.stack([s["depth"] for s in samples])
    with pytest.raises(ValueError, match="depth kind is missing"):
        XWAMProcessor.fit_codec_state(cfg, images, depth)
    state = XWAMProcessor.fit_codec_state(cfg, images, depth, [s["depth_kind"] for s in samples])
    proc = XWAMProcessor.build(cfg, codec_state=state)
    back = proc.decode_depth(proc.encode_depth(depth, "codec_unit"), "codec_unit")
    assert back.shape == depth.shape and float((back - depth).abs().mean()) < 0.1


def test_video_as_change_generates_frames_as_their_change_from_the_present():
    from xwam.processor import latent_changes, latents_from_changes

    cfg = get_preset("tiny").model
    rng = np.random.default_rng(0)
    stats = NormStats.from_arrays(rng.normal(size=(200, cfg.state_dim)), rng.normal(size=(200, cfg.action_dim)))
    plain = XWAMProcessor.build(cfg, stats)
    change = XWAMProcessor.build(dataclasses.replace(cfg, video_as_change=True), stats)
    images = torch.randint(0, 256, (2, cfg.num_views, cfg.num_frames, 3, cfg.image_height, cfg.image_width),
                           dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    latents, changes = plain.encode_video(images), change.encode_video(images)
    torch.testing.assert_close(changes[:, :, :, 0], latents[:, :, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(changes[:, :, :, 1:], latents[:, :, :, 1:] - latents[:, :, :, :1], rtol=0, atol=0)
    torch.testing.assert_close(latents_from_changes(latent_changes(latents)), latents, rtol=0, atol=1e-6)
    # both decode to the same images (the pixel codec is exact)
    assert torch.equal(change.decode_video(changes), plain.decode_video(latents))
    assert torch.equal(plain.decode_video(latents).permute(0, 1, 2, 5, 3, 4), images)
    # nothing moving is exactly zero: a prediction of zero change is the frozen present
    still = images[:, :, :1].expand_as(images)
    assert change.encode_video(still)[:, :, :, 1:].abs().max() == 0
    zero = change.encode_video(images).clone()
    zero[:, :, :, 1:] = 0
    assert torch.equal(change.decode_video(zero), plain.decode_video(plain.encode_video(still)))
