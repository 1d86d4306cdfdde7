"""The X-WAM training objective (X-WAM paper, arXiv 2604.26694); all weights 1 unless ``weights`` says otherwise.

- video: velocity MSE over latent frames 1.. (frame 0 is the clean observation);
- state: velocity MSE over tokens 1.. times per-dimension validity masks;
- action: velocity MSE times validity masks;
- action and state losses dropped for samples whose actions were given clean (ANS);
- depth: MSE of the predicted clean depth latent over all latent frames (frame 0 included, so
  the model also estimates the current depth).
"""

from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the elements where ``mask`` (broadcastable) is 1; 0 when none are."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype).expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def xwam_losses(
    pred_video: torch.Tensor,
    target_video: torch.Tensor,
    pred_actions: torch.Tensor | None = None,
    target_actions: torch.Tensor | None = None,
    pred_states: torch.Tensor | None = None,
    target_states: torch.Tensor | None = None,
    actions_clean: torch.Tensor | None = None,
    action_mask: torch.Tensor | None = None,
    state_mask: torch.Tensor | None = None,
    pred_depth: torch.Tensor | None = None,
    target_depth: torch.Tensor | None = None,
    condition_frames: int = 1,
    weights: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-modality losses (unweighted) and their ``weights``-weighted sum ``total``.

    Shapes: video (B, V, C, T, h, w); actions (B, K, A) with mask (B, K, A) or (A,);
    states (B, S, Ds) with mask (B, S, Ds) or (Ds,); actions_clean (B,) bool.
    """
    losses = {"video": masked_mse(pred_video[:, :, :, condition_frames:], target_video[:, :, :, condition_frames:], None)}
    batch = pred_video.shape[0]
    keep = torch.ones(batch, device=pred_video.device) if actions_clean is None else (~actions_clean).float()
    if pred_actions is not None:
        mask = keep.view(batch, 1, 1) * (1.0 if action_mask is None else action_mask.float())
        losses["action"] = masked_mse(pred_actions, target_actions, mask)
    if pred_states is not None:
        mask = keep.view(batch, 1, 1) * (1.0 if state_mask is None else state_mask.float())
        mask = mask.expand_as(pred_states).clone()
        mask[:, 0] = 0.0  # state 0 is the clean current state
        losses["state"] = masked_mse(pred_states, target_states, mask)
    if pred_depth is not None:
        losses["depth"] = masked_mse(pred_depth, target_depth, None)
    weights = weights or {}
    losses["total"] = sum(weights.get(name, 1.0) * value for name, value in losses.items())
    return losses
