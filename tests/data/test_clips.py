"""Clip sampling: shapes, alignment of frames/states/actions, episode ends, augmentation, mixtures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from xwam_dataset_testutils import make_episode

from xwam.config import get_preset
from xwam.data.clips import (
    ClipConfig,
    ClipDataset,
    _hsv_to_rgb,
    _rgb_to_hsv,
    color_jitter_views,
    random_crop_views,
    random_shift_views,
)
from xwam.data.lerobot import LeRobotV3Dataset, write_episodes
from xwam.data.stats import NormStats


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[LeRobotV3Dataset, LeRobotV3Dataset, list]:
    root = tmp_path_factory.mktemp("clips")
    eps_a = [make_episode(20, seed=0), make_episode(26, seed=1)]
    eps_b = [make_episode(15, seed=2, task="stack")]
    return write_episodes(root / "a", eps_a), write_episodes(root / "b", eps_b), eps_a


def test_shapes_and_alignment(datasets: tuple) -> None:
    ds, _, episodes = datasets
    cfg = ClipConfig(num_frames=3, frame_skip=4, action_horizon=6)
    clips = ClipDataset(ds, cfg)
    span = 2 * 4 + 1
    assert len(clips) == (20 - span + 1) + (26 - span + 1)
    for idx in (0, 5, len(clips) - 1):
        s = clips[idx]
        e, t0 = int(s["episode_index"]), int(s["start"])
        ref = episodes[e]
        frames = t0 + 4 * np.arange(3)
        assert s["images"].shape == (3, 3, 3, 32, 48) and s["images"].dtype == torch.uint8
        assert s["depth"].shape == (3, 3, 32, 48) and s["depth"].dtype == torch.float32
        assert s["intrinsics"].shape == (3, 3, 3, 3) and s["extrinsics"].shape == (3, 3, 4, 4)
        assert s["state"].shape == (3, 8) and s["action"].shape == (6, 7) and s["action_mask"].shape == (6, 7)
        np.testing.assert_array_equal(s["frame_indices"].numpy(), frames)
        # states at the video frames; action i belongs to control step t0 + i
        np.testing.assert_array_equal(s["state"][:, 0].numpy(), frames)
        n = min(6, ref.length - t0)
        np.testing.assert_array_equal(s["action"][:n].numpy(), ref.action[t0 : t0 + n])
        np.testing.assert_array_equal(s["action"][:n, 0].numpy(), t0 + np.arange(n) + 0.5)
        # the right frames were decoded (brightness encodes the frame index)
        got = s["images"][1].float().mean(dim=(1, 2, 3)).numpy()
        want = ref.rgb[ref.camera_names[1]][frames].reshape(3, -1).mean(1)
        np.testing.assert_allclose(got, want, atol=2.5)
        np.testing.assert_array_equal(s["extrinsics"][2].numpy(), ref.extrinsics[ref.camera_names[2]][frames])
        assert s["instruction"] == ref.task


def test_episode_end_padding_and_mask(datasets: tuple) -> None:
    ds, _, episodes = datasets
    clips = ClipDataset(ds, ClipConfig(num_frames=3, frame_skip=4, action_horizon=6))
    last = clips[len(clips) - 1]  # episode 1 (26 steps): last start 17 needs frames 17, 21, 25
    assert int(last["start"]) == 17 and int(last["frame_indices"][-1]) == 25
    assert bool(last["action_mask"].all())  # K = 6 actions from 17: steps 17..22 all exist
    # a longer horizon runs past the end: steps 26..28 are padding
    clips_long = ClipDataset(ds, ClipConfig(num_frames=3, frame_skip=4, action_horizon=12))
    s = clips_long[len(clips_long) - 1]
    mask = s["action_mask"].numpy()
    assert mask[:, 0].tolist() == [True] * 9 + [False] * 3
    assert np.all(s["action"][9:].numpy() == 0)
    full = ClipDataset(
        ds, ClipConfig(num_frames=3, frame_skip=4, action_horizon=12, require_full_actions=True)
    )
    assert int(full[len(full) - 1]["start"]) == 26 - 12 and bool(full[len(full) - 1]["action_mask"].all())


def test_norm_stats_in_clips_and_invalid_dims(datasets: tuple) -> None:
    ds, _, episodes = datasets
    state = np.concatenate([e.state for e in episodes])
    action = np.concatenate([e.action for e in episodes])
    action[:, 6] = 0  # a padding dimension
    norm = NormStats.from_arrays(state, action)
    clips = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=1, action_horizon=4), norm_stats=norm)
    s = clips[0]
    assert not s["action_mask"][:, 6].any() and s["action_mask"][:, :6].all()
    np.testing.assert_allclose(s["state_norm"].numpy(), norm.normalize_state(s["state"].numpy()), atol=1e-6)
    assert torch.all(s["action_norm"][:, 6] == 0)


def test_release_config_and_model_config(datasets: tuple) -> None:
    cfg = ClipConfig.release()
    assert (cfg.num_frames, cfg.frame_skip, cfg.action_horizon, cfg.augment) == (9, 4, 32, True)
    ds, _, _ = datasets
    tiny = get_preset("tiny").model
    cfg = ClipConfig.from_model(tiny)
    clips = ClipDataset(ds, ClipConfig.from_model(tiny, load_depth=True))
    s = clips[0]
    assert s["images"].shape == (3, tiny.num_frames, 3, tiny.image_height, tiny.image_width)
    assert s["depth"].shape[-2:] == (tiny.image_height, tiny.image_width)
    assert cfg.action_horizon == tiny.action_horizon


def test_release_clip_counts(tmp_path: Path) -> None:
    ds = write_episodes(tmp_path / "ds", [make_episode(50, height=16, width=16)])
    clips = ClipDataset(ds, ClipConfig.release(augment=False))
    assert len(clips) == 50 - 33 + 1  # last start needs frames up to start + 32
    s = clips[len(clips) - 1]
    assert s["images"].shape == (3, 9, 3, 16, 16) and s["action"].shape == (32, 7)
    assert bool(s["action_mask"].all())  # start 17 + 32 actions = step 48 < 50


def test_too_short_episodes_are_an_error(tmp_path: Path) -> None:
    ds = write_episodes(tmp_path / "ds", [make_episode(10, height=16, width=16)])
    with pytest.raises(ValueError, match="no episode is long enough"):
        ClipDataset(ds, ClipConfig.release())


@pytest.mark.parametrize("augment", [lambda i, d, k, g: random_crop_views(i, d, k, 0.8, g),
                                     lambda i, d, k, g: random_shift_views(i, d, k, 4, g)], ids=["crop", "shift"])
def test_crop_and_shift_keep_rgb_depth_and_intrinsics_consistent(augment) -> None:
    H, W = 60, 80
    K = torch.tensor([[70.0, 0, 39.5], [0, 72.0, 29.5], [0, 0, 1]])
    point = torch.tensor([0.21, -0.13, 2.0])
    uvw = K @ point
    u, v = float(uvw[0] / uvw[2]), float(uvw[1] / uvw[2])
    ui, vi = round(u), round(v)
    images = torch.zeros(2, 2, 3, H, W, dtype=torch.uint8)
    images[:, :, :, vi - 1 : vi + 2, ui - 1 : ui + 2] = 255  # a 3x3 marker centred on the projection
    depth = torch.full((2, 2, H, W), 5.0)
    depth[:, :, vi - 1 : vi + 2, ui - 1 : ui + 2] = 2.0
    intr = K.expand(2, 2, 3, 3).clone()
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        out_img, out_depth, out_K = augment(images, depth, intr, gen)
        for view in range(2):
            Kc = out_K[view, 0]
            p = Kc @ point
            up, vp = float(p[0] / p[2]), float(p[1] / p[2])
            weight = out_img[view, 0, 0].float()
            ys, xs = torch.meshgrid(
                torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
            )
            cu, cv = float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())
            assert abs(cu - up) < 0.35 and abs(cv - vp) < 0.35  # the marker moved where the new K projects
            assert float(out_depth[view, 0, round(vp), round(up)]) == 2.0  # depth crops with RGB
            assert torch.equal(out_img[view, 0], out_img[view, 1])  # same crop for all frames
            # unprojecting the marker pixel with the new intrinsics gives back the 3D point
            ray = torch.linalg.solve(Kc, torch.tensor([up, vp, 1.0]))
            np.testing.assert_allclose((ray * 2.0).numpy(), point.numpy(), atol=1e-5)


def test_shift_is_a_translation_with_border_fill_and_a_clip_option(datasets: tuple) -> None:
    img = torch.arange(2 * 3 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 3, 6, 7).to(torch.uint8)
    out, _, _ = random_shift_views(img, None, None, 2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == img.shape
    for v in range(2):
        # find the offset: the output equals the input moved by (dy, dx) with clamped (border) indices
        def moved(dy: int, dx: int, v: int = v) -> torch.Tensor:
            rows, cols = (torch.arange(6) + dy).clamp(0, 5), (torch.arange(7) + dx).clamp(0, 6)
            return img[v].index_select(-2, rows).index_select(-1, cols)

        assert sum(torch.equal(out[v], moved(dy, dx)) for dy in range(-2, 3) for dx in range(-2, 3)) == 1
    ds, _, _ = datasets
    plain = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=2, action_horizon=3))[3]
    shifted = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=2, action_horizon=3, shift_pixels=3))
    assert torch.equal(shifted[3]["images"], shifted[3]["images"])  # deterministic per index
    assert not torch.equal(shifted[3]["images"], plain["images"])
    with pytest.raises(ValueError, match="shift_pixels"):
        ClipConfig(shift_pixels=-1)


def test_color_jitter_ranges_and_determinism() -> None:
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(30, 200, (3, 2, 3, 8, 8)).astype(np.uint8))
    same = color_jitter_views(img, torch.Generator().manual_seed(1), 0, 0, 0, 0)
    assert (same.int() - img.int()).abs().max() <= 1
    a = color_jitter_views(img, torch.Generator().manual_seed(5))
    b = color_jitter_views(img, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, img)
    bright = color_jitter_views(img, torch.Generator().manual_seed(2), 0.2, 0, 0, 0).float()
    ratio = (bright / img.float()).flatten(1)
    assert ratio.min() > 0.79 and ratio.max() < 1.21
    assert torch.allclose(ratio.min(1).values, ratio.max(1).values, atol=0.04)  # one factor per view
    x = torch.rand(4, 3, 5, 5)
    torch.testing.assert_close(_hsv_to_rgb(_rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_augmented_dataset_is_deterministic(datasets: tuple) -> None:
    ds, _, _ = datasets
    clips = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=2, action_horizon=3, augment=True, seed=7))
    a, b = clips[3], clips[3]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["intrinsics"], b["intrinsics"])
    plain = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=2, action_horizon=3))[3]
    assert not torch.equal(a["images"], plain["images"])
    assert not torch.equal(a["intrinsics"], plain["intrinsics"])
    np.testing.assert_array_equal(a["extrinsics"].numpy(), plain["extrinsics"].numpy())


def test_mixture_weights_and_collate(datasets: tuple) -> None:
    a, b, _ = datasets
    clips = ClipDataset([a, b], ClipConfig(num_frames=2, frame_skip=1, action_horizon=3), weights=[3, 1])
    w = clips.sample_weights()
    src = torch.from_numpy(clips.index[:, 0])
    assert float(w[src == 0].sum()) == pytest.approx(0.75) and float(w[src == 1].sum()) == pytest.approx(0.25)
    batch = next(iter(DataLoader(clips, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))))
    assert batch["images"].shape[0] == 4 and len(batch["instruction"]) == 4
    with pytest.raises(ValueError, match="one non-negative weight per dataset"):
        ClipDataset([a, b], weights=[1])


def test_depth_kind_travels_with_the_depth(datasets: tuple) -> None:
    ds, _, _ = datasets
    clips = ClipDataset(ds, ClipConfig(num_frames=2, frame_skip=1, action_horizon=3))
    assert clips[0]["depth_kind"] == "metric"  # LeRobot depth is metres
    batch = next(iter(DataLoader(clips, batch_size=2)))
    assert batch["depth_kind"] == ["metric", "metric"]

    class Unlabelled:  # a source whose episodes do not say what their depth is
        def __init__(self, source):
            self.source = source

        def __getattr__(self, name):
            return getattr(self.source, name)

        def episode(self, i, **kwargs):
            ep = self.source.episode(i, **kwargs)  # a copy: the source's cached episode stays labelled
            return dataclasses.replace(ep, meta={k: v for k, v in ep.meta.items() if k != "depth_kind"})

    with pytest.raises(ValueError, match="depth kind is missing"):
        ClipDataset(Unlabelled(ds), ClipConfig(num_frames=2, frame_skip=1, action_horizon=3))[0]
