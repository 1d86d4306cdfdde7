"""The asynchronous sampler: few steps for actions, the full schedule for video (X-WAM paper, arXiv 2604.26694).

Two streams with their own sigma grids: video (N steps) and actions+states (k steps). Model call
i uses the video sigma i and, while i < k, the action sigma i; afterwards actions and states are
clean and frozen and only the video continues. The conditioning (latent frame 0, state 0) is
re-imposed after every call.

- policy mode: stop after k calls, depth branch off: the action chunk after k forward passes;
- 4D mode: all N calls; the depth branch predicts clean depth directly and the main branch never
  reads it, so it runs only at the last call (``depth_every_call`` reproduces the release, which
  runs it every call and keeps the last: the result is identical).
- ``expected`` (4D mode): also keep the first call's clean estimate x - sigma v (and its depth).
  The first call sees pure noise (sigma_max ~ 1), so a model trained with the squared error estimates
  there the mean of the future given the observation, E[x0 | observation]: the *expected* future, a
  blurry average, where the sample is one sharp possible future. A sample's squared error is that
  of the mean plus the sample's spread, so scores that reward the mean (PSNR, AbsRel) are read on
  both (``xwam eval-4d``). The estimate is read from unit-scale noise, one extra call when a
  temperature is below 1, so it is the same at every temperature.
- temperatures (``SamplerConfig.video_temperature`` / ``action_temperature``): each stream starts
  from its noise times the temperature; below 1 the sample lies nearer the model's likely futures,
  between the sharp but speckled sample at 1 and the deterministic flow from zero noise at 0.

Actions are handed out (generator event or callback) as soon as the k-th call finishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler

from xwam.config import SamplerConfig
from xwam.diffusion.flow import sigma_grid
from xwam.model.transformer import TIME_SCALE, XWAMTransformer


class EulerSolver:
    """First-order flow-matching steps on an explicit sigma grid."""

    def __init__(self, steps: int, shift: float, sigma_max: float) -> None:
        self.sigmas = sigma_grid(steps, shift, sigma_max).float()

    def step(self, i: int, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x + (self.sigmas[i + 1] - self.sigmas[i]).item() * velocity


class UniPCSolver:
    """diffusers' UniPC (order 2, bh2, flow prediction) on the release's grid; one per stream (stateful)."""

    def __init__(self, steps: int, shift: float, sigma_max: float) -> None:
        self.scheduler = UniPCMultistepScheduler(
            num_train_timesteps=1000, solver_order=2, solver_type="bh2", prediction_type="flow_prediction",
            use_flow_sigmas=True, flow_shift=shift, final_sigmas_type="zero",
        )
        base = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
        self.scheduler.set_timesteps(sigmas=base)
        self.scheduler.set_begin_index(0)
        self.sigmas = self.scheduler.sigmas.float()

    def step(self, i: int, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(velocity, self.scheduler.timesteps[i], x, return_dict=False)[0]


SOLVERS = {"euler": EulerSolver, "unipc": UniPCSolver}


@dataclass
class Conditioning:
    """What the sampler is conditioned on, all normalised and on the model's device.

    video0: (B, V, C, 1, h, w) latents of the current frame; state0: (B, Ds); text: (B, L, text_dim);
    text_uncond: (1 or B, L, text_dim), needed only for classifier-free guidance.
    action_prefix: (B, d, A) actions already committed to the robot (real-time chunking): the
    first d actions of the chunk are given clean (t = 0) and kept, so the rest continues from them
    (models learn this with ``DiffusionConfig.action_prefix_prob``).
    action_prefix_len: (B,) per-sample prefix lengths d_b <= d (rows of ``action_prefix`` past d_b
    are padding and ignored; 0 means no prefix); None means every sample uses all d rows.
    """

    video0: torch.Tensor
    state0: torch.Tensor
    text: torch.Tensor
    text_uncond: torch.Tensor | None = None
    action_prefix: torch.Tensor | None = None
    action_prefix_len: torch.Tensor | None = None


@dataclass
class SampleResult:
    actions: torch.Tensor  # (B, K, A) normalised
    states: torch.Tensor  # (B, S, Ds) normalised
    video: torch.Tensor | None = None  # (B, V, C, T, h, w) latents, after the video schedule
    depth: torch.Tensor | None = None  # (B, V, C, T, h, w) depth latents (4D mode with depth)
    calls: int = 0
    call_ms: list[float] = field(default_factory=list)
    time_to_action_ms: float | None = None
    # the first call's clean estimates (4D mode with ``expected``): the model's mean future
    expected_video: torch.Tensor | None = None
    expected_depth: torch.Tensor | None = None
    expected_states: torch.Tensor | None = None


@dataclass
class SamplerEvent:
    kind: str  # "actions" once the action stream is clean, "done" at the end
    call: int
    result: SampleResult


class AsyncSampler:
    def __init__(self, model: XWAMTransformer, cfg: SamplerConfig | None = None) -> None:
        self.model = model
        self.cfg = cfg or SamplerConfig()

    def _solver(self, steps: int):
        if self.cfg.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.cfg.solver!r}; choose one of {sorted(SOLVERS)}")
        return SOLVERS[self.cfg.solver](steps, self.cfg.shift, self.cfg.sigma_max)

    @torch.no_grad()
    def iterate(
        self,
        cond: Conditioning,
        *,
        mode: str | None = None,
        depth: bool | None = None,
        depth_every_call: bool = False,
        generator: torch.Generator | None = None,
        expected: bool = False,
    ) -> Iterator[SamplerEvent]:
        """Run the sampler, yielding an ``actions`` event after the k-th call and ``done`` at the end.
        ``expected`` (4D mode) also fills the result's ``expected_*`` (see the module doc)."""
        cfg, model = self.cfg, self.model
        mcfg = model.cfg
        mode = mode or cfg.mode
        if mode not in ("policy", "4d"):
            raise ValueError(f"unknown sampler mode {mode!r}; choose policy or 4d")
        want_depth = (cfg.depth if depth is None else depth) and mode == "4d" and model.depth_branch is not None
        want_expected = expected and mode == "4d"
        device = cond.video0.device
        dtype = next(model.parameters()).dtype
        batch = cond.video0.shape[0]
        video_steps = cfg.video_steps
        action_steps = video_steps if cfg.synchronous else cfg.action_steps
        calls = action_steps if mode == "policy" else video_steps
        video_solver, action_solver = self._solver(video_steps), self._solver(action_steps)
        guided = cfg.guidance_scale != 1.0
        if guided and cond.text_uncond is None:
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs Conditioning.text_uncond")

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

        frames, height, width = mcfg.latent_frames, cond.video0.shape[-2], cond.video0.shape[-1]
        # unit draws, then scaled by each stream's temperature (SamplerConfig); the expected future
        # is read from the unit draws, the scale the model was trained at
        unit_video = randn(batch, mcfg.num_views, mcfg.latent_channels, frames, height, width)
        unit_actions = randn(batch, mcfg.action_horizon, mcfg.action_dim)
        prefix, prefix_len, keep = _prefix(cond, batch, mcfg.action_horizon, mcfg.action_dim, device)
        unit_states = randn(batch, mcfg.num_states, mcfg.state_dim)
        x_video = cfg.video_temperature * unit_video
        x_actions = cfg.action_temperature * unit_actions
        x_states = cfg.action_temperature * unit_states
        for video, states in ((x_video, x_states), (unit_video, unit_states)):
            video[:, :, :, :1] = cond.video0
            states[:, 0] = cond.state0
        text = cond.text
        if guided:
            text = torch.cat([cond.text, cond.text_uncond.expand_as(cond.text)], 0)

        def velocities(x_video, x_actions, x_states, t_video, t_action, run_depth):
            """One model call (two with guidance): the velocities of the three streams and the depth."""
            inputs = [x_video, x_actions, x_states]
            call_prefix_len = prefix_len
            if guided:
                inputs = [torch.cat([x, x], 0) for x in inputs]
                t_video, t_action = t_video.repeat(2), t_action.repeat(2)
                call_prefix_len = None if prefix_len is None else prefix_len.repeat(2)
            extra = {} if call_prefix_len is None else {"action_prefix_len": call_prefix_len}
            if cfg.integer_timesteps:  # the model sees int(1000 sigma) / 1000; the solver keeps the float
                t_video, t_action = (torch.floor(t * TIME_SCALE) / TIME_SCALE for t in (t_video, t_action))
            out = model(
                inputs[0].to(dtype), text.to(dtype), t_video, t_action, inputs[1].to(dtype), inputs[2].to(dtype),
                depth=run_depth, **extra,
            )
            v_video, v_actions, v_states = out.video.float(), out.actions.float(), out.states.float()
            if guided:
                v_video, v_actions, v_states = (
                    u + cfg.guidance_scale * (c - u) for c, u in (v.chunk(2, 0) for v in (v_video, v_actions, v_states))
                )
            depth_out = None if out.depth is None else out.depth.float()[:batch]
            return v_video, v_actions, v_states, depth_out

        unit_temperature = cfg.video_temperature == 1.0 and cfg.action_temperature == 1.0
        result = SampleResult(actions=x_actions, states=x_states)
        start = time.perf_counter()
        for i in range(calls):
            t0 = time.perf_counter()
            t_video = video_solver.sigmas[i].to(device).expand(batch)
            actions_active = i < action_steps
            t_action = (action_solver.sigmas[i] if actions_active else torch.tensor(0.0)).to(device).expand(batch)
            run_depth = want_depth and (depth_every_call or i == calls - 1 or (want_expected and i == 0 and unit_temperature))
            if prefix is not None:
                # committed actions enter clean (t = 0), as in training with action prefixes
                x_actions = torch.where(keep, prefix, x_actions)
                unit_actions = torch.where(keep, prefix, unit_actions)
            v_video, v_actions, v_states, depth_out = velocities(x_video, x_actions, x_states, t_video, t_action, run_depth)
            if depth_out is not None:
                result.depth = depth_out
            if want_expected and i == 0:
                # the first call's clean estimate x - sigma v; at another temperature, one extra call
                # on the unit draws, so the expected future does not depend on the temperature
                e_video, e_states, e_depth = v_video, v_states, depth_out
                if not unit_temperature:
                    e_video, _, e_states, e_depth = velocities(unit_video, unit_actions, unit_states, t_video,
                                                               t_action, want_depth)
                result.expected_video = unit_video - video_solver.sigmas[0].item() * e_video
                result.expected_video[:, :, :, :1] = cond.video0
                result.expected_states = unit_states - action_solver.sigmas[0].item() * e_states
                result.expected_states[:, 0] = cond.state0
                result.expected_depth = e_depth
            x_video = video_solver.step(i, v_video, x_video)
            x_video[:, :, :, :1] = cond.video0
            if actions_active:
                # actions and states share one stream (and one stateful solver): pack them
                packed = torch.cat([x_actions.flatten(1), x_states.flatten(1)], 1)
                v_packed = torch.cat([v_actions.flatten(1), v_states.flatten(1)], 1)
                packed = action_solver.step(i, v_packed, packed)
                n = x_actions[0].numel()
                x_actions = packed[:, :n].reshape(x_actions.shape)
                x_states = packed[:, n:].reshape(x_states.shape).clone()
                x_states[:, 0] = cond.state0
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result.call_ms.append((time.perf_counter() - t0) * 1000)
            result.calls = i + 1
            if i == action_steps - 1:
                if prefix is not None:
                    x_actions = torch.where(keep, prefix, x_actions)
                result.actions, result.states = x_actions, x_states
                result.time_to_action_ms = (time.perf_counter() - start) * 1000
                yield SamplerEvent("actions", i + 1, result)
        if mode == "4d":
            result.video = x_video
        yield SamplerEvent("done", calls, result)

    def sample(
        self,
        cond: Conditioning,
        *,
        mode: str | None = None,
        depth: bool | None = None,
        depth_every_call: bool = False,
        generator: torch.Generator | None = None,
        on_actions: Callable[[SampleResult], None] | None = None,
        expected: bool = False,
    ) -> SampleResult:
        """Run to the end; ``on_actions`` is called as soon as the action chunk is ready."""
        result = None
        for event in self.iterate(cond, mode=mode, depth=depth, depth_every_call=depth_every_call,
                                  generator=generator, expected=expected):
            if event.kind == "actions" and on_actions is not None:
                on_actions(event.result)
            result = event.result
        return result


def _prefix(
    cond: Conditioning, batch: int, horizon: int, action_dim: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The committed prefix padded to the chunk (B, K, A), its lengths (B,) and where it applies (B, K, 1)."""
    prefix = cond.action_prefix
    if prefix is None:
        return None, None, None
    if prefix.ndim != 3 or prefix.shape[0] != batch or prefix.shape[1] > horizon or prefix.shape[2] != action_dim:
        raise ValueError(f"action_prefix {tuple(prefix.shape)} does not fit a batch of {batch} chunks "
                         f"({horizon} x {action_dim})")
    lengths = cond.action_prefix_len
    if lengths is None:
        lengths = torch.full((batch,), prefix.shape[1], device=device, dtype=torch.long)
    lengths = lengths.to(device=device, dtype=torch.long)
    if lengths.shape != (batch,) or bool((lengths < 0).any()) or bool((lengths > prefix.shape[1]).any()):
        raise ValueError(f"action_prefix_len must be (B,) = ({batch},) with values in [0, {prefix.shape[1]}], "
                         f"got {lengths.tolist()}")
    padded = torch.zeros(batch, horizon, action_dim, device=device, dtype=torch.float32)
    padded[:, : prefix.shape[1]] = prefix.to(device=device, dtype=torch.float32)
    keep = (torch.arange(horizon, device=device)[None] < lengths[:, None])[..., None]
    return padded, lengths, keep
