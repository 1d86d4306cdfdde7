"""How the weights move over a run: the learning-rate schedule and the exponential moving average."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def cosine_with_warmup(warmup: int, total: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay after ``step`` updates, warmed up as (1 + step) / (10 + step) up to ``decay``.

    A model trained from scratch starts from noise: a fixed decay of 0.999 would still carry 7 % of
    the initial weights after 2600 steps, so the average follows the weights closely at first.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """fp32 shadow copies of the trainable parameters (sharded like them under FSDP2)."""

    def __init__(self, params: Sequence[torch.Tensor], names: Sequence[str], decay: float) -> None:
        self.params, self.names, self.decay = list(params), list(names), decay
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step ``step`` (0-based count of earlier updates)."""
        decay = ema_decay_at(step, self.decay)
        for shadow, p in zip(self.shadow, self.params):
            shadow.lerp_(p.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def state_with_ema(self, full_state: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``full_state()`` taken with the averaged weights swapped in (then swapped back)."""
        backup = [p.detach().clone() for p in self.params]
        for p, shadow in zip(self.params, self.shadow):
            p.copy_(shadow)
        try:
            return full_state()
        finally:
            for p, saved in zip(self.params, backup):
                p.copy_(saved)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) shadow tensors by parameter name, on the CPU."""
        return {n: (s.full_tensor() if hasattr(s, "full_tensor") else s).detach().cpu()
                for n, s in zip(self.names, self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, name in enumerate(self.names):
            full = state[name].to(self.shadow[i].device)
            p = self.params[i]
            if hasattr(p, "device_mesh"):  # re-shard like the parameter
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full, p.device_mesh, p.placements)
            self.shadow[i] = full.float()
