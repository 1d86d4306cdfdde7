"""Rectified-flow conventions of Wan: x_t = (1 - t) x0 + t e, velocity v = e - x0, t in [0, 1]."""

from __future__ import annotations

import torch


def shift_sigmas(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift t' = s t / (1 + (s - 1) t); monotone, maps [0, 1] onto itself."""
    return shift * t / (1 + (shift - 1) * t)


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Noisy sample at per-sample time ``t`` (B,)."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def predict_x0(xt: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Clean sample implied by a velocity prediction at time ``t`` (B,)."""
    return xt - _expand(t, xt) * velocity


def sigma_grid(steps: int, shift: float, sigma_max: float = 0.999) -> torch.Tensor:
    """The release's inference grid: linspace(sigma_max, 0, n + 1)[:-1], shifted, with a final 0.

    Returns steps + 1 float64 values, decreasing from shift(sigma_max) to 0.
    """
    base = torch.linspace(sigma_max, 0.0, steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigmas(base, shift), torch.zeros(1, dtype=torch.float64)])
