"""Proof that the objective and sampler fit together: the tiny preset memorises one batch and the
sampler recovers its actions (policy mode) and its video/depth latents (4D mode)."""

import pytest
import torch

from xwam.config import get_preset
from xwam.diffusion.ans import ans_timesteps
from xwam.diffusion.objective import training_losses
from xwam.diffusion.sampler import AsyncSampler, Conditioning
from xwam.model.transformer import XWAMTransformer


def make_batch(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a structured scene: every latent frame/view is one random colour (constant over the image)
    shape = (batch, cfg.num_views, cfg.latent_channels, cfg.latent_frames, 1, 1)
    grid = (-1, -1, -1, -1, cfg.latent_height, cfg.latent_width)
    video = (torch.rand(shape, generator=g) * 2 - 1).expand(grid).contiguous()
    depth = (torch.rand(shape, generator=g) * 2 - 1).expand(grid).contiguous()
    actions = torch.rand(batch, cfg.action_horizon, cfg.action_dim, generator=g) * 2 - 1
    states = torch.rand(batch, cfg.num_states, cfg.state_dim, generator=g) * 2 - 1
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    return video, depth, actions, states, text


def fixed_eval_loss(model, video, depth, actions, states, text, repeats=8):
    """Loss on fixed noise and fixed uniform noise levels, comparable before and after training."""
    g = torch.Generator().manual_seed(123)
    rep = lambda x: x.repeat(repeats, *([1] * (x.ndim - 1)))  # noqa: E731
    levels = ans_timesteps(video.shape[0] * repeats, "synchronous", generator=g)
    with torch.no_grad():
        losses = training_losses(model, rep(video), rep(text), rep(actions), rep(states), depth=rep(depth),
                                 generator=g, levels=levels)
    return {k: v.item() for k, v in losses.items()}


@pytest.mark.slow
def test_tiny_model_learns_one_batch_and_the_sampler_recovers_it():
    preset = get_preset("tiny")
    cfg = preset.model
    torch.manual_seed(0)
    model = XWAMTransformer(cfg)
    video, depth, actions, states, text = make_batch(cfg)
    before = fixed_eval_loss(model, video, depth, actions, states, text)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1200)
    g = torch.Generator().manual_seed(0)
    for _ in range(1200):
        losses = training_losses(model, video, text, actions, states, cfg=preset.diffusion, depth=depth, generator=g)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        sched.step()
    after = fixed_eval_loss(model, video, depth, actions, states, text)
    ratio = before["total"] / after["total"]
    model.eval()
    sampler = AsyncSampler(model, preset.sampler)
    cond = Conditioning(video[:, :, :, :1], states[:, 0], text)
    policy = sampler.sample(cond, mode="policy", generator=torch.Generator().manual_seed(1))
    full = sampler.sample(cond, mode="4d", generator=torch.Generator().manual_seed(1))
    action_err = (policy.actions - actions).abs().mean().item()
    video_err = (full.video[:, :, :, 1:] - video[:, :, :, 1:]).abs().mean().item()
    depth_err = (full.depth - depth).abs().mean().item()
    print(f"loss {before['total']:.3f} -> {after['total']:.3f} ({ratio:.1f}x); action MAE {action_err:.3f}; "
          f"video MAE {video_err:.3f}; depth MAE {depth_err:.3f} (targets uniform in [-1, 1]: MAE 0.5 by chance)")
    assert ratio >= 10
    assert action_err < 0.2
    assert video_err < 0.2 and depth_err < 0.1
