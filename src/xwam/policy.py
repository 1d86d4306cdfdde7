"""The runtime policy: raw observations in, an action chunk (robot units) out.

``XWAMPolicy`` applies the checkpoint's camera order and normalisation, runs the asynchronous
sampler in policy mode (ANS: k action steps, depth off, nothing decoded) and unnormalises the
chunk. ``select_action`` keeps an action queue and re-plans every ``replan_every`` actions; with
real-time chunking (``rtc_delay = d``) the next chunk is computed with its first d actions fixed
to those already committed, so consecutive chunks join without a jump.

Observations follow the openpi conventions: per-camera uint8 HWC images either nested
(``obs["images"][camera]``) or flat (``obs["observation/images/<camera>"]``), the state vector as
``obs["state"]`` or ``obs["observation/state"]``, and the instruction as ``obs["prompt"]``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xwam.config import SamplerConfig, XWAMConfig
from xwam.data.layout import OBS_IMAGE_PREFIX, OBS_STATE_KEY
from xwam.data.stats import NormStats
from xwam.diffusion.sampler import AsyncSampler
from xwam.limits import DEFAULT_MAX_PROMPT_CHARS
from xwam.model.checkpoint import load_checkpoint, load_codec_state
from xwam.model.transformer import XWAMTransformer
from xwam.processor import XWAMProcessor, check_action_prefix, finite_as_float32

# the nested state key first, then the flat one
STATE_KEYS = ("state", OBS_STATE_KEY)


@dataclass
class PolicyTiming:
    encode_ms: float = 0.0
    text_ms: float = 0.0
    dit_ms: list[float] | None = None
    total_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        dit = self.dit_ms or []
        return {"encode_ms": self.encode_ms, "text_ms": self.text_ms, "dit_ms": sum(dit),
                "dit_calls": len(dit), "dit_ms_per_call": (sum(dit) / len(dit)) if dit else 0.0,
                "dit_call_ms": [round(x, 3) for x in dit], "infer_ms": self.total_ms}


class ActionChunker:
    """Action queue over any chunk source: ``infer(obs, action_prefix) -> (K, A) actions``.

    Re-plans when the queue is empty or ``replan_every`` actions were executed since the last plan;
    with ``rtc_delay = d`` the next d queued actions are passed as the committed prefix of the new
    chunk (real-time chunking). Used by the in-process policy and by remote clients alike.
    """

    def __init__(self, infer: Any, horizon: int, replan_every: int | None = None, rtc_delay: int = 0) -> None:
        self.infer = infer
        self.replan_every = replan_every or max(1, horizon // 2)
        if not 1 <= self.replan_every <= horizon:
            raise ValueError(f"replan_every must lie in [1, {horizon}]")
        if not 0 <= rtc_delay <= horizon - self.replan_every:
            raise ValueError(f"rtc_delay must lie in [0, action_horizon - replan_every = {horizon - self.replan_every}]")
        self.rtc_delay = rtc_delay
        self.queue: deque[np.ndarray] = deque()
        self.executed_since_plan = 0
        self.plans = 0

    def reset(self) -> None:
        self.queue.clear()
        self.executed_since_plan = 0

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        if not self.queue or self.executed_since_plan >= self.replan_every:
            committed = [self.queue[i] for i in range(min(self.rtc_delay, len(self.queue)))]
            prefix = np.stack(committed) if committed else None
            self.queue = deque(np.asarray(self.infer(obs, prefix), np.float32))
            self.executed_since_plan = 0
            self.plans += 1
        self.executed_since_plan += 1
        return self.queue.popleft()


class XWAMPolicy:
    def __init__(
        self,
        model: XWAMTransformer,
        config: XWAMConfig,
        processor: XWAMProcessor,
        *,
        replan_every: int | None = None,
        rtc_delay: int = 0,
        default_prompt: str = "",
        seed: int = 0,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    ) -> None:
        if max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars must be >= 1, got {max_prompt_chars}")
        self.max_prompt_chars = int(max_prompt_chars)
        self.model = model.eval()
        self.config = config
        self.processor = processor
        self.sampler = AsyncSampler(model, config.sampler)
        mcfg = config.model
        self.camera_names = mcfg.view_names
        self.image_shape = (mcfg.image_height, mcfg.image_width, 3)
        self.chunker = ActionChunker(lambda obs, prefix: self.infer(obs, action_prefix=prefix)["actions"],
                                     mcfg.action_horizon, replan_every or config.policy.replan_every, rtc_delay)
        self.default_prompt = default_prompt
        self.seed = seed
        self.generator = torch.Generator(device=processor.device).manual_seed(seed)
        self.last_timing: PolicyTiming | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        sampler: SamplerConfig | None = None,
        vae_path: str | None = None,
        text_path: str | None = None,
        text_cache_entries: int | None = None,
        **kwargs: Any,
    ) -> XWAMPolicy:
        """``text_cache_entries``: instruction embeddings kept in memory (least recently used dropped)."""
        model, config, stats = load_checkpoint(path, device=device, dtype=dtype)
        if stats is None:
            raise ValueError(f"{path} has no norm_stats.json: a policy needs the training normalisation")
        if sampler is not None:
            config = dataclasses.replace(config, sampler=sampler)
        processor = XWAMProcessor.build(config.model, NormStats.from_dict(stats), vae_path=vae_path,
                                        text_path=text_path, device=device, codec_state=load_codec_state(path),
                                        text_cache_entries=text_cache_entries,
                                        center_crop=config.policy.center_crop)
        return cls(model, config, processor, **kwargs)

    def with_sampler(self, **changes: Any) -> XWAMPolicy:
        """A fresh policy (same model and processor, empty action queue, generator re-seeded) whose
        sampler config has ``changes`` applied; ``SamplerConfig`` validates the result."""
        sampler = dataclasses.replace(self.config.sampler, **changes)
        return type(self)(self.model, dataclasses.replace(self.config, sampler=sampler), self.processor,
                          replan_every=self.chunker.replan_every, rtc_delay=self.chunker.rtc_delay,
                          default_prompt=self.default_prompt, seed=self.seed, max_prompt_chars=self.max_prompt_chars)

    def with_replanning(self, replan_every: int | None = None, rtc_delay: int | None = None) -> XWAMPolicy:
        """A fresh policy like :meth:`with_sampler` that re-plans every ``replan_every`` actions and
        commits ``rtc_delay`` of them (``None`` keeps the current setting)."""
        return type(self)(self.model, self.config, self.processor,
                          replan_every=replan_every or self.chunker.replan_every,
                          rtc_delay=self.chunker.rtc_delay if rtc_delay is None else rtc_delay,
                          default_prompt=self.default_prompt, seed=self.seed, max_prompt_chars=self.max_prompt_chars)

    # ---- protocol used by the server --------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        m = self.config.model
        stats = self.processor.norm_stats
        return {
            "model": "xwam",
            "preset": self.config.preset,
            "camera_names": self.camera_names,
            "image_keys": [OBS_IMAGE_PREFIX + c for c in self.camera_names],
            "image_shape": list(self.image_shape),
            "state_key": OBS_STATE_KEY,
            "state_dim": m.state_dim,
            "state_names": list(stats.state_names) if stats else [],
            "action_horizon": m.action_horizon,
            "action_dim": m.action_dim,
            "action_names": list(stats.action_names) if stats else [],
            "action_steps": self.config.sampler.action_steps,
            # what a client executing chunks should know: how many actions before asking again
            "replan_every": self.chunker.replan_every,
            "integer_timesteps": self.config.sampler.integer_timesteps,
            "center_crop": self.config.policy.center_crop,
            "robot_io": self.config.policy.robot_io,
        }

    def describe(self) -> str:
        """One line on how this policy acts (stated by `xwam serve` and `xwam eval`)."""
        parts = [f"{self.config.sampler.action_steps} action steps", f"re-plan every {self.chunker.replan_every} "
                 f"of {self.config.model.action_horizon} actions"]
        if self.config.sampler.integer_timesteps:
            parts.append("integer timesteps")
        if self.config.policy.center_crop < 1.0:
            parts.append(f"centre crop {self.config.policy.center_crop:g}")
        if self.config.policy.robot_io != "xwam":
            parts.append(f"robot signals in the {self.config.policy.robot_io} layout")
        return ", ".join(parts)

    def _images(self, obs: dict[str, Any]) -> list[Any]:
        nested = obs.get("images") if isinstance(obs.get("images"), dict) else {}
        out = []
        for cam in self.camera_names:
            img = nested.get(cam, obs.get(OBS_IMAGE_PREFIX + cam))
            if img is None:
                raise ValueError(f"missing image for camera {cam!r} (expected key {OBS_IMAGE_PREFIX + cam!r} "
                                 f"or images[{cam!r}]); cameras: {self.camera_names}")
            out.append(img)
        return out

    def _state(self, obs: dict[str, Any]) -> Any:
        for key in STATE_KEYS:
            if key in obs:
                return obs[key]
        raise ValueError(f"missing state (expected one of {list(STATE_KEYS)})")

    def validate(self, obs: dict[str, Any]) -> None:
        """Raise ValueError saying what is wrong with an observation."""
        if not isinstance(obs, dict):
            raise ValueError(f"observation must be a dict, got {type(obs).__name__}")
        for cam, img in zip(self.camera_names, self._images(obs)):
            if not isinstance(img, np.ndarray):
                raise ValueError(f"image {cam!r} must be a numpy array, got {type(img).__name__}")
            if img.dtype != np.uint8:
                raise ValueError(f"image {cam!r} must be uint8, got {img.dtype}")
            if img.shape != self.image_shape:
                raise ValueError(f"image {cam!r} must have shape {self.image_shape} (H, W, 3), got {img.shape}")
        state = np.asarray(self._state(obs))
        if state.dtype.kind not in "fiu":
            raise ValueError(f"state must be numeric, got dtype {state.dtype}")
        if state.shape != (self.config.model.state_dim,):
            raise ValueError(f"state must have shape ({self.config.model.state_dim},), got {state.shape}")
        if not finite_as_float32(state):
            raise ValueError("state contains NaN or infinite values (or values beyond float32's range, "
                             "which the model computes in)")
        prompt = obs.get("prompt", self.default_prompt)
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if len(prompt) > self.max_prompt_chars:
            raise ValueError(f"prompt has {len(prompt)} characters; this policy accepts at most "
                             f"{self.max_prompt_chars} (xwam serve --max-prompt-chars)")
        if obs.get("action_prefix") is not None:
            check_action_prefix(obs["action_prefix"], self.config.model)

    # ---- inference ----------------------------------------------------------------------------
    def infer_batch(self, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Action chunks (robot units) for a batch of observations, each with its own optional
        ``obs["action_prefix"]`` (d_i, A): the committed actions its chunk starts with (real-time
        chunking); d_i may differ between observations."""
        for obs in observations:
            self.validate(obs)
        start = time.perf_counter()
        encode_timing: dict[str, float] = {}
        cond = self.processor.conditioning(
            np.stack([np.stack(self._images(o)) for o in observations]),  # (B, V, H, W, 3)
            np.stack([np.asarray(self._state(o), np.float32) for o in observations]),
            [o.get("prompt", self.default_prompt) for o in observations],
            [o.get("action_prefix") for o in observations],
            unconditional_text=self.config.sampler.guidance_scale != 1.0,
            timing=encode_timing,
        )
        result = self.sampler.sample(cond, mode="policy", generator=self.generator)
        actions = self.processor.unnormalize_actions(result.actions).cpu().numpy().astype(np.float32)
        future_states = self.processor.unnormalize_states(result.states).cpu().numpy().astype(np.float32)
        timing = PolicyTiming(**encode_timing, dit_ms=result.call_ms, total_ms=(time.perf_counter() - start) * 1000)
        self.last_timing = timing
        return [{"actions": actions[i], "states": future_states[i], "timing": timing.to_dict()}
                for i in range(len(observations))]

    def infer(self, obs: dict[str, Any], action_prefix: np.ndarray | None = None) -> dict[str, Any]:
        """One chunk. ``action_prefix`` (d, A), or else ``obs["action_prefix"]`` from a remote client,
        fixes the chunk's first d actions (real-time chunking)."""
        if action_prefix is not None:
            obs = {**obs, "action_prefix": action_prefix}
        return self.infer_batch([obs])[0]

    # ---- closed loop ----------------------------------------------------------------------------
    def reset(self) -> None:
        self.chunker.reset()

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """Next action to execute (see ``ActionChunker``)."""
        return self.chunker.select_action(obs)
