"""Proof that the objective and sampler fit together.

The tiny preset is trained on one small batch: samples 0 and 1 have their own observations (the
sampler must recover their actions in policy mode and their video/depth latents in 4D mode);
samples 2 and 3 share one observation but carry different action chunks, so the model learns a
two-mode action distribution there, on which real-time chunking must follow the committed prefix.
"""

import dataclasses

import pytest
import torch

from xwam.config import get_preset
from xwam.diffusion.ans import ans_timesteps
from xwam.diffusion.objective import training_losses
from xwam.diffusion.sampler import AsyncSampler, Conditioning
from xwam.model.transformer import XWAMTransformer

STEPS = int(__import__("os").environ.get("XWAM_TEST_STEPS", "1600"))


def make_batch(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = 4
    # a structured scene: every latent frame/view is one random colour (constant over the image)
    shape = (batch, cfg.num_views, cfg.latent_channels, cfg.latent_frames, 1, 1)
    grid = (-1, -1, -1, -1, cfg.latent_height, cfg.latent_width)
    video = (torch.rand(shape, generator=g) * 2 - 1).expand(grid).contiguous()
    depth = (torch.rand(shape, generator=g) * 2 - 1).expand(grid).contiguous()
    actions = torch.rand(batch, cfg.action_horizon, cfg.action_dim, generator=g) * 2 - 1
    states = torch.rand(batch, cfg.num_states, cfg.state_dim, generator=g) * 2 - 1
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    for x in (video, depth, states, text):
        x[3] = x[2]  # samples 2 and 3: same observation (and future), different actions
    # two clearly separated modes: a smooth ramp up and its mirror image
    ramp = torch.linspace(0.3, 0.9, cfg.action_horizon)[:, None].expand(-1, cfg.action_dim)
    actions[2], actions[3] = ramp, -ramp
    return video, depth, actions, states, text


def fixed_eval_loss(model, video, depth, actions, states, text, repeats=4):
    """Loss on fixed noise and fixed uniform noise levels, comparable before and after training."""
    g = torch.Generator().manual_seed(123)
    rep = lambda x: x[:2].repeat(repeats, *([1] * (x.ndim - 1)))  # noqa: E731
    levels = ans_timesteps(2 * repeats, "synchronous", generator=g)
    with torch.no_grad():
        losses = training_losses(model, rep(video), rep(text), rep(actions), rep(states), depth=rep(depth),
                                 generator=g, levels=levels)
    return {k: v.item() for k, v in losses.items()}


@pytest.fixture(scope="module")
def trained():
    preset = get_preset("tiny")
    cfg = preset.model
    torch.manual_seed(0)
    model = XWAMTransformer(cfg)
    data = make_batch(cfg)
    video, depth, actions, states, text = data
    before = fixed_eval_loss(model, *data)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    g = torch.Generator().manual_seed(0)
    # teach continuation from committed actions quickly
    preset = dataclasses.replace(preset, diffusion=dataclasses.replace(preset.diffusion, action_prefix_prob=0.3))
    for _ in range(STEPS):
        losses = training_losses(model, video, text, actions, states, cfg=preset.diffusion, depth=depth, generator=g)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        sched.step()
    after = fixed_eval_loss(model, *data)
    return preset, model.eval(), data, before, after


@pytest.mark.slow
def test_tiny_model_learns_one_batch_and_the_sampler_recovers_it(trained):
    preset, model, (video, depth, actions, states, text), before, after = trained
    ratio = before["total"] / after["total"]
    sampler = AsyncSampler(model, preset.sampler)
    cond = Conditioning(video[:2, :, :, :1], states[:2, 0], text[:2])
    policy = sampler.sample(cond, mode="policy", generator=torch.Generator().manual_seed(1))
    full = sampler.sample(cond, mode="4d", generator=torch.Generator().manual_seed(1))
    action_err = (policy.actions - actions[:2]).abs().mean().item()
    video_err = (full.video[:, :, :, 1:] - video[:2, :, :, 1:]).abs().mean().item()
    depth_err = (full.depth - depth[:2]).abs().mean().item()
    print(f"loss {before['total']:.3f} -> {after['total']:.3f} ({ratio:.1f}x); action MAE {action_err:.3f}; "
          f"video MAE {video_err:.3f}; depth MAE {depth_err:.3f} (targets uniform in [-1, 1]: MAE 0.5 by chance)")
    assert ratio >= 10
    assert action_err < 0.2
    assert video_err < 0.2 and depth_err < 0.1


@pytest.mark.slow
def test_real_time_chunking_follows_the_committed_prefix_on_a_two_mode_distribution(trained):
    preset, model, (video, depth, actions, states, text), _, _ = trained
    n, d = 16, 2
    mode_a, mode_b = actions[2], actions[3]
    sampler = AsyncSampler(model, preset.sampler)

    def sample(prefix):
        cond = Conditioning(video[2:3, :, :, :1].expand(n, -1, -1, -1, -1, -1), states[2:3, 0].expand(n, -1),
                            text[2:3].expand(n, -1, -1), action_prefix=prefix)
        return sampler.sample(cond, mode="policy", generator=torch.Generator().manual_seed(7)).actions

    free = sample(None)
    # both modes are generated without a prefix ...
    dist_a = (free - mode_a).abs().mean(dim=(1, 2))
    dist_b = (free - mode_b).abs().mean(dim=(1, 2))
    picks_a = (dist_a < dist_b).float().mean().item()
    assert 0.0 < picks_a < 1.0, f"expected both modes, picked mode A in {picks_a:.0%} of samples"
    # ... but with mode A's first d actions committed, every chunk keeps the prefix and continues in mode A
    constrained = sample(mode_a[:d].expand(n, -1, -1))
    assert torch.equal(constrained[:, :d], mode_a[:d].expand(n, -1, -1))
    rest_a = (constrained[:, d:] - mode_a[d:]).abs().mean(dim=(1, 2))
    rest_b = (constrained[:, d:] - mode_b[d:]).abs().mean(dim=(1, 2))
    assert (rest_a < rest_b).all()
    # the boundary is smooth: the step from the last committed action to the first new one is the
    # data's own step, not a jump to the other mode
    true_step = (mode_a[d] - mode_a[d - 1]).abs().mean()
    jump_rtc = (constrained[:, d] - mode_a[d - 1]).abs().mean(dim=1)
    jump_free = (free[:, d] - mode_a[d - 1]).abs().mean(dim=1)
    print(f"mode A picked without prefix: {picks_a:.0%}; boundary step: data {true_step:.3f}, "
          f"RTC mean {jump_rtc.mean():.3f} / max {jump_rtc.max():.3f}, free mean {jump_free.mean():.3f}")
    assert jump_rtc.mean() < 0.75 * jump_free.mean()
    assert jump_rtc.mean() < true_step + 0.2  # the tiny model's own action error is ~0.1
