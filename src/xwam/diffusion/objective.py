"""One training step's objective: draw noise levels (ANS), noise every stream, predict, score."""

from __future__ import annotations

import torch

from xwam.config import DiffusionConfig
from xwam.diffusion.ans import NoiseLevels, ans_timesteps
from xwam.diffusion.flow import add_noise, velocity_target
from xwam.diffusion.losses import xwam_losses
from xwam.model.transformer import XWAMTransformer


def training_losses(
    model: XWAMTransformer,
    video: torch.Tensor,
    text: torch.Tensor,
    actions: torch.Tensor,
    states: torch.Tensor,
    *,
    cfg: DiffusionConfig | None = None,
    depth: torch.Tensor | None = None,
    action_mask: torch.Tensor | None = None,
    state_mask: torch.Tensor | None = None,
    text_uncond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    levels: NoiseLevels | None = None,
) -> dict[str, torch.Tensor]:
    """X-WAM losses for a batch of clean inputs.

    video/depth: clean normalised latents (B, V, C, T, h, w), latent frame 0 = current observation;
    actions (B, K, A) and states (B, S, Ds) normalised; text (B, L, text_dim). With ``text_uncond``
    (1 or B, L, text_dim) a ``cfg.text_dropout`` share of samples sees the empty instruction.
    """
    cfg = cfg or DiffusionConfig()
    batch, device = video.shape[0], video.device
    if levels is None:
        levels = ans_timesteps(
            batch, cfg.timestep_mode, shift=cfg.shift, clean_action_prob=cfg.clean_action_prob,
            beta_a=cfg.beta_a, beta_b=cfg.beta_b, generator=generator, device=device,
        )
    levels = NoiseLevels(levels.t_video.to(device), levels.t_action.to(device), levels.actions_clean.to(device))

    def noise_like(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.dtype)

    e_video, e_actions, e_states = noise_like(video), noise_like(actions), noise_like(states)
    noisy_video = add_noise(video, e_video, levels.t_video)
    noisy_video[:, :, :, :1] = video[:, :, :, :1]  # the observation stays clean
    noisy_actions = add_noise(actions, e_actions, levels.t_action)
    prefix_len = None
    if cfg.action_prefix_prob > 0 and actions.shape[1] > 1:
        horizon = actions.shape[1]
        use = (torch.rand(batch, generator=generator, device=device) < cfg.action_prefix_prob) & ~levels.actions_clean
        lengths = torch.randint(1, max(2, horizon // 2 + 1), (batch,), generator=generator, device=device)
        prefix_len = torch.where(use, lengths, torch.zeros_like(lengths))
        committed = torch.arange(horizon, device=device)[None, :] < prefix_len[:, None]  # (B, K)
        noisy_actions = torch.where(committed[..., None], actions, noisy_actions)
        keep = (~committed)[..., None].to(actions.dtype)  # committed actions are inputs, not targets
        action_mask = keep if action_mask is None else action_mask * keep
    noisy_states = add_noise(states, e_states, levels.t_action)
    noisy_states[:, :1] = states[:, :1]

    if text_uncond is not None and cfg.text_dropout > 0:
        drop = torch.rand(batch, generator=generator, device=device) < cfg.text_dropout
        text = torch.where(drop[:, None, None], text_uncond.to(text.dtype).expand_as(text), text)

    out = model(
        noisy_video, text, levels.t_video, levels.t_action, noisy_actions, noisy_states,
        depth=depth is not None, action_prefix_len=prefix_len,
    )
    return xwam_losses(
        out.video, velocity_target(video, e_video),
        out.actions, velocity_target(actions, e_actions),
        out.states, velocity_target(states, e_states),
        actions_clean=levels.actions_clean, action_mask=action_mask, state_mask=state_mask,
        pred_depth=out.depth, target_depth=depth, weights=cfg.loss_weights(),
    )
