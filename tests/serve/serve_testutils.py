"""A deterministic stand-in policy for exercising the policy server (a test double, not a model).

Its answer is a pure function of the observation, so every client can check that it got the
answer to its own request: ``actions[t, d] = state[d] + 100 * t + len(prompt)``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

IMAGE_KEYS = ("observation/images/front", "observation/images/wrist")
IMAGE_SHAPE = (24, 32, 3)
STATE_DIM = 7
HORIZON = 4
ACTION_DIM = 3
FAIL_PROMPT = "please raise"  # makes the double raise inside infer, like a model bug would
NAN_PROMPT = "please diverge"  # makes the double answer NaN actions, like a model fed extreme inputs


class DeterministicTestPolicy:
    """Test double implementing the server's policy protocol, with optional batching and delay."""

    def __init__(self, infer_delay_s: float = 0.0, batching: bool = False) -> None:
        self.infer_delay_s = infer_delay_s
        self.batch_sizes: list[int] = []
        self.calls = 0
        self.started = threading.Event()  # set when a model call begins
        self._lock = threading.Lock()
        if batching:
            self.infer_batch = self._infer_batch  # only batching doubles expose the optional method

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            "policy": "DeterministicTestPolicy (test double)",
            "image_keys": list(IMAGE_KEYS),
            "image_shape": list(IMAGE_SHAPE),
            "state_dim": STATE_DIM,
            "action_horizon": HORIZON,
            "action_dim": ACTION_DIM,
            "control_fps": 20,
        }

    def validate(self, obs: dict[str, Any]) -> None:
        """Raise ValueError naming every bad field (the server must pass the sentence on as text)."""
        problems = []
        for key in IMAGE_KEYS:
            image = lookup(obs, key)
            if image is None:
                problems.append(f"missing camera image '{key}'")
            elif not isinstance(image, np.ndarray) or image.dtype != np.uint8:
                problems.append(f"image '{key}' must be a uint8 array")
            elif image.ndim != 3 or image.shape[-1] != 3:
                problems.append(f"image '{key}' must be HxWx3, got shape {image.shape}")
            elif image.shape != IMAGE_SHAPE:
                problems.append(f"image '{key}' must have shape {IMAGE_SHAPE}, got {image.shape}")
        state = lookup(obs, "state")
        if state is None:
            problems.append("missing 'state' vector")
        elif not isinstance(state, np.ndarray) or state.shape != (STATE_DIM,):
            problems.append(f"'state' must have {STATE_DIM} values")
        elif not np.isfinite(state).all():
            problems.append("'state' has NaN or infinite values")
        if not isinstance(lookup(obs, "prompt"), str):
            problems.append(f"'prompt' must be a string, got {type(lookup(obs, 'prompt')).__name__}")
        if problems:
            raise ValueError("; ".join(problems))

    @staticmethod
    def expected_actions(state: np.ndarray, prompt: str) -> np.ndarray:
        steps = 100.0 * np.arange(HORIZON, dtype=np.float32)[:, None]
        return (state[:ACTION_DIM].astype(np.float32)[None, :] + steps + len(prompt)).astype(np.float32)

    def _answer(self, obs: dict[str, Any]) -> dict[str, Any]:
        prompt = lookup(obs, "prompt")
        if prompt == FAIL_PROMPT:
            raise RuntimeError("simulated model failure")
        with self._lock:
            self.calls += 1
        state = np.asarray(obs["state"])
        actions = self.expected_actions(state, prompt)
        if prompt == NAN_PROMPT:
            actions[1, 0] = np.nan
        return {
            "actions": actions,
            "states": np.repeat(state[None].astype(np.float32), 2, axis=0),
            "timing": {"model_ms": 1000.0 * self.infer_delay_s},
        }

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        self.started.set()
        time.sleep(self.infer_delay_s)
        with self._lock:
            self.batch_sizes.append(1)
        return self._answer(obs)

    def _infer_batch(self, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.started.set()
        time.sleep(self.infer_delay_s)  # one model call for the whole batch
        with self._lock:
            self.batch_sizes.append(len(observations))
        return [self._answer(obs) for obs in observations]


def lookup(obs: dict[str, Any], key: str) -> Any:
    """``obs[key]``, or the nested path ``obs['a']['b']`` for a key ``'a/b'`` (clients send either)."""
    if key in obs:
        return obs[key]
    node: Any = obs
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def make_observation(seed: int = 0, prompt: str = "stack the red cube") -> dict[str, Any]:
    """A valid observation for the test double, distinct per seed."""
    rng = np.random.default_rng(seed)
    obs: dict[str, Any] = {key: rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8) for key in IMAGE_KEYS}
    obs["state"] = (np.arange(STATE_DIM, dtype=np.float32) + 10.0 * seed).astype(np.float32)
    obs["prompt"] = prompt
    return obs
