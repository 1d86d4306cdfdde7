"""Asynchronous Noise Sampling: the joint training distribution of (video, action) noise levels.

At inference actions are denoised in a few steps while the video is still very noisy, so training
draws t_video >= t_action, concentrated near noisy video (X-WAM paper, arXiv 2604.26694):

1. with probability p (0.5): t_action = 0 (clean actions, action-conditioned video continuation),
   t_video ~ U(0, 1); action and state losses are dropped for such samples;
2. otherwise t_action ~ U(0, 1), b ~ Beta(1.5, 1), t_video = t_action + b (1 - t_action);
3. both shifted with t <- 5t / (1 + 4t) (monotone, so t_video >= t_action survives).

Ablation modes: ``synchronous`` (one shared t) and ``independent`` (two independent draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xwam.diffusion.flow import shift_sigmas


@dataclass
class NoiseLevels:
    t_video: torch.Tensor  # (B,) in [0, 1]
    t_action: torch.Tensor  # (B,) in [0, 1]
    actions_clean: torch.Tensor  # (B,) bool: action/state losses are dropped for these samples


def sample_beta(n: int, a: float, b: float, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """Beta(a, b) draws. Closed-form inverse CDF when a or b is 1 (the ANS case), so the draw is
    reproducible from ``generator``; otherwise torch's gamma-based sampler."""
    if b == 1.0:
        return torch.rand(n, generator=generator, device=device) ** (1.0 / a)
    if a == 1.0:
        return 1 - torch.rand(n, generator=generator, device=device) ** (1.0 / b)
    return torch.distributions.Beta(torch.tensor(float(a)), torch.tensor(float(b))).sample((n,)).to(device)


def ans_timesteps(
    batch: int,
    mode: str = "ans",
    *,
    shift: float = 5.0,
    clean_action_prob: float = 0.5,
    beta_a: float = 1.5,
    beta_b: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> NoiseLevels:
    """Draw per-sample (t_video, t_action) for one training batch."""
    u = lambda: torch.rand(batch, generator=generator, device=device)  # noqa: E731
    if mode == "ans":
        clean = u() < clean_action_prob
        t_action = u()
        b = sample_beta(batch, beta_a, beta_b, generator, device)
        t_video_joint = t_action + b * (1 - t_action)
        t_video_free = u()
        t_video = torch.where(clean, t_video_free, t_video_joint)
        t_action = torch.where(clean, torch.zeros_like(t_action), t_action)
    elif mode == "synchronous":
        t_video = u()
        t_action = t_video.clone()
        clean = torch.zeros(batch, dtype=torch.bool, device=device)
    elif mode == "independent":
        t_video, t_action = u(), u()
        clean = torch.zeros(batch, dtype=torch.bool, device=device)
    else:
        raise ValueError(f"unknown timestep mode {mode!r}; choose ans, synchronous or independent")
    return NoiseLevels(shift_sigmas(t_video, shift), shift_sigmas(t_action, shift), clean)
