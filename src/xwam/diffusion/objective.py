"""The X-WAM training objective: the one place that noises a batch, runs the model and scores it.

Conventions (X-WAM paper, arXiv 2604.26694; flow matching as in ``flow.py``):

- Every sample draws its noise from its own generator seeded by its *sample seed*: ANS noise
  levels, Gaussian noise for video / actions / states, the text-dropout flag, the committed
  action prefix and the state-dropout flag, in that order. A sample's noise therefore does not depend on the batch, rank or
  micro-batch it lands in, which is what makes training resumable bit for bit.
- Latent frame 0 (the observation) and state token 0 (the current state) stay clean. For a
  ``state_dropout`` share of samples state token 0 is zeroed (the normalised mean state), so the
  model must read where the robot is from its cameras (a lever against leaning on proprioception).
- Samples drawn with clean actions (ANS, probability ``clean_action_prob``) drop their action and
  state losses. For an ``action_prefix_prob`` share of the others, the first 1..K/2 actions are given
  clean (t = 0) and excluded from the loss: real-time chunking continues actions already committed
  to the robot.
- Video, action and state heads predict velocities (noise - clean); the depth head predicts clean
  depth latents over every frame, frame 0 included (the model also estimates the current depth).
- Losses come back as masked *sums* with their *counts* (``LOSS_NAMES`` order). A global batch
  split over ranks and micro-batches divides the summed sums by the summed counts, so its gradient
  equals that of the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from xwam.config import DiffusionConfig
from xwam.diffusion.ans import NoiseLevels, ans_timesteps
from xwam.diffusion.flow import add_noise, velocity_target

LOSS_NAMES = ("video", "action", "state", "depth")


@dataclass
class TrainingInputs:
    """A batch of clean model inputs (what the processor makes of a batch of clips)."""

    video: torch.Tensor  # (B, V, C, T, h, w) clean latents, frame 0 = the observation
    text: torch.Tensor  # (B, L, text_dim)
    actions: torch.Tensor  # (B, K, A) normalised
    states: torch.Tensor  # (B, S, Ds) normalised
    action_mask: torch.Tensor | None = None  # (B, K, A) or (A,): 1 where the action is valid
    state_mask: torch.Tensor | None = None  # (B, S, Ds) or (Ds,): 1 where the state dimension is valid
    depth: torch.Tensor | None = None  # (B, V, C, T, h, w) clean depth latents
    text_uncond: torch.Tensor | None = None  # (1, L, text_dim): the empty instruction, for text dropout


@dataclass
class SampleNoise:
    """Everything random about one training batch, per sample."""

    t_video: torch.Tensor  # (B,) sigma of the future video
    t_action: torch.Tensor  # (B,) sigma of actions and states
    actions_clean: torch.Tensor  # (B,) bool: action/state losses dropped
    prefix_len: torch.Tensor  # (B,) long: leading actions given clean (0 = none)
    text_dropped: torch.Tensor  # (B,) bool: sees the empty instruction
    state_dropped: torch.Tensor  # (B,) bool: sees state token 0 zeroed
    e_video: torch.Tensor
    e_actions: torch.Tensor
    e_states: torch.Tensor

    def to(self, device: torch.device | str) -> SampleNoise:
        return SampleNoise(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def draw_noise(
    sample_seeds: Sequence[int],
    video_shape: Sequence[int],
    action_shape: Sequence[int],
    state_shape: Sequence[int],
    cfg: DiffusionConfig,
    levels: NoiseLevels | None = None,
) -> SampleNoise:
    """Per-sample noise from each sample's own seed; shapes exclude the batch dimension.

    ``levels`` replaces the drawn noise levels (tests and fixed-level evaluations); every other draw
    is unchanged by it.
    """
    horizon = int(action_shape[0])
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in SampleNoise.__dataclass_fields__}
    for seed in sample_seeds:
        g = torch.Generator().manual_seed(int(seed))
        drawn = ans_timesteps(1, cfg.timestep_mode, shift=cfg.shift, clean_action_prob=cfg.clean_action_prob,
                              beta_a=cfg.beta_a, beta_b=cfg.beta_b, generator=g)
        parts["t_video"].append(drawn.t_video)
        parts["t_action"].append(drawn.t_action)
        parts["actions_clean"].append(drawn.actions_clean)
        parts["e_video"].append(torch.randn(tuple(video_shape), generator=g))
        parts["e_actions"].append(torch.randn(tuple(action_shape), generator=g))
        parts["e_states"].append(torch.randn(tuple(state_shape), generator=g))
        parts["text_dropped"].append(torch.rand(1, generator=g) < cfg.text_dropout)
        use_prefix = torch.rand(1, generator=g) < cfg.action_prefix_prob
        length = torch.randint(1, max(2, horizon // 2 + 1), (1,), generator=g)
        parts["prefix_len"].append(torch.where(use_prefix & (horizon > 1), length, torch.zeros_like(length)))
        # drawn last, so the draws above are the same whatever the dropout rate
        parts["state_dropped"].append(torch.rand(1, generator=g) < cfg.state_dropout)
    noise = SampleNoise(**{k: torch.cat(v) if v[0].ndim == 1 else torch.stack(v) for k, v in parts.items()})
    if levels is not None:
        noise = replace(noise, t_video=levels.t_video.float().cpu(), t_action=levels.t_action.float().cpu(),
                        actions_clean=levels.actions_clean.cpu())
    # clean-action samples have every action clean already: no prefix
    noise.prefix_len = torch.where(noise.actions_clean, torch.zeros_like(noise.prefix_len), noise.prefix_len)
    return noise


def loss_masks(inputs: TrainingInputs, noise: SampleNoise) -> tuple[torch.Tensor, torch.Tensor]:
    """Which action (B, K, A) and state (B, S, Ds) elements count: valid, noisy actions (not a
    clean-action sample, not committed), state tokens 1.. only."""
    actions, states = inputs.actions, inputs.states
    device = actions.device
    horizon = actions.shape[1]
    committed = torch.arange(horizon, device=device)[None, :] < noise.prefix_len.to(device)[:, None]
    keep = (~noise.actions_clean.to(device)).float()[:, None, None]
    action_mask = keep * (~committed).float()[..., None]
    if inputs.action_mask is not None:
        action_mask = action_mask * inputs.action_mask.to(device).float()
    action_mask = action_mask.expand_as(actions)
    state_mask = keep if inputs.state_mask is None else keep * inputs.state_mask.to(device).float()
    state_mask = state_mask.expand_as(states).clone()
    state_mask[:, 0] = 0.0
    return action_mask, state_mask


def loss_counts(inputs: TrainingInputs, noise: SampleNoise) -> torch.Tensor:
    """The denominators of :func:`loss_sums` (float64, ``LOSS_NAMES`` order), without running the model."""
    return _counts(inputs, *loss_masks(inputs, noise))


def _counts(inputs: TrainingInputs, action_mask: torch.Tensor, state_mask: torch.Tensor) -> torch.Tensor:
    video = inputs.video[:, :, :, 1:].numel()
    depth = inputs.depth.numel() if inputs.depth is not None else 0
    return torch.tensor([float(video), float(action_mask.sum()), float(state_mask.sum()), float(depth)],
                        dtype=torch.float64)


def loss_sums(model: nn.Module, inputs: TrainingInputs, noise: SampleNoise) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise ``inputs`` with ``noise``, run ``model`` (called as a module), and score it.

    Returns ``(sums, counts)``, each (4,) in ``LOSS_NAMES`` order: masked sums of squared errors
    (float32, differentiable) and the number of elements each sum covers (float64, no gradient).
    """
    video, actions, states = inputs.video.float(), inputs.actions.float(), inputs.states.float()
    device = video.device
    noise = noise.to(device)
    horizon = actions.shape[1]

    noisy_video = add_noise(video, noise.e_video, noise.t_video)
    noisy_video[:, :, :, :1] = video[:, :, :, :1]
    committed = torch.arange(horizon, device=device)[None, :] < noise.prefix_len[:, None]  # (B, K)
    noisy_actions = add_noise(actions, noise.e_actions, noise.t_action)
    noisy_actions = torch.where(committed[..., None], actions, noisy_actions)
    noisy_states = add_noise(states, noise.e_states, noise.t_action)
    noisy_states[:, :1] = torch.where(noise.state_dropped[:, None, None], 0.0, states[:, :1])
    text = inputs.text.float()
    if inputs.text_uncond is not None:
        text = torch.where(noise.text_dropped[:, None, None], inputs.text_uncond.float().expand_as(text), text)

    out = model(noisy_video, text, noise.t_video, noise.t_action, noisy_actions, noisy_states,
                depth=inputs.depth is not None,
                action_prefix_len=noise.prefix_len if bool(noise.prefix_len.any()) else None)

    action_mask, state_mask = loss_masks(inputs, noise)
    video_err = (out.video[:, :, :, 1:].float() - velocity_target(video, noise.e_video)[:, :, :, 1:]) ** 2
    sums = [
        video_err.sum(),
        (((out.actions.float() - velocity_target(actions, noise.e_actions)) ** 2) * action_mask).sum(),
        (((out.states.float() - velocity_target(states, noise.e_states)) ** 2) * state_mask).sum(),
        ((out.depth.float() - inputs.depth.float()) ** 2).sum() if inputs.depth is not None else video.new_zeros(()),
    ]
    return torch.stack(sums), _counts(inputs, action_mask, state_mask)  # the masks above, not rebuilt


def weighted_loss(sums: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The scalar to minimise: per-modality means (sum / count; 0 where nothing counts), weighted."""
    return (sums / counts.to(sums.device).clamp_min(1.0).to(sums.dtype) * weights.to(sums.device)).sum()


def mean_losses(sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """Per-modality mean losses (unweighted; depth only when it ran) and their sum ``total``, for logs."""
    sums = sums.detach().double().cpu()
    out = {name: float(sums[i] / max(float(counts[i]), 1.0))
           for i, name in enumerate(LOSS_NAMES) if name != "depth" or counts[3] > 0}
    out["total"] = float(sum(out.values()))
    return out


def loss_weight_tensor(cfg: DiffusionConfig) -> torch.Tensor:
    weights = cfg.loss_weights()
    return torch.tensor([weights[name] for name in LOSS_NAMES])


def training_losses(
    model: nn.Module,
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
    sample_seeds: Sequence[int] | None = None,
    levels: NoiseLevels | None = None,
) -> dict[str, torch.Tensor]:
    """Mean losses of one batch (differentiable), each modality and the weighted ``total``.

    The same objective as the trainer's, on one batch held in memory: sample seeds are drawn from
    ``generator`` unless given.
    """
    cfg = cfg or DiffusionConfig()
    if sample_seeds is None:
        sample_seeds = torch.randint(0, 2**62, (video.shape[0],), generator=generator).tolist()
    inputs = TrainingInputs(video=video, text=text, actions=actions, states=states, action_mask=action_mask,
                            state_mask=state_mask, depth=depth, text_uncond=text_uncond)
    noise = draw_noise(sample_seeds, video.shape[1:], actions.shape[1:], states.shape[1:], cfg, levels=levels)
    sums, counts = loss_sums(model, inputs, noise)
    means = sums / counts.to(sums.device).clamp_min(1.0).to(sums.dtype)
    losses = {name: means[i] for i, name in enumerate(LOSS_NAMES) if name != "depth" or depth is not None}
    losses["total"] = weighted_loss(sums, counts, loss_weight_tensor(cfg))
    return losses
