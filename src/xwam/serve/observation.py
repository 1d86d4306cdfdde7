"""Checks on a received observation, shared by policies that are served over the wire.

Observations follow openpi conventions: one uint8 HWC image per camera under a key named by the
policy's metadata (flat keys such as ``observation/images/front`` or the same path as nested maps),
a ``state`` vector and a ``prompt`` string. A policy's ``validate`` can call
:func:`check_observation` so that every bad request is answered with one readable sentence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["lookup", "check_observation"]

_MISSING = object()


def lookup(obs: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """``obs[key]``, or the nested path ``obs['a']['b']`` for a key ``'a/b'`` (clients send either)."""
    if key in obs:
        return obs[key]
    node: Any = obs
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__


def check_observation(
    obs: Any,
    *,
    image_keys: Sequence[str],
    image_shape: tuple[int, int, int] | None = None,
    state_key: str = "state",
    state_dim: int | None = None,
    prompt_key: str = "prompt",
    require_prompt: bool = True,
) -> None:
    """Raise ``ValueError`` naming the field if ``obs`` is not a valid observation.

    ``image_shape`` is (height, width, 3); ``None`` accepts any HxWx3 image. ``state_dim`` None
    accepts any length. The prompt may be absent unless ``require_prompt``.
    """
    if not isinstance(obs, Mapping):
        raise ValueError(f"an observation must be a map of named fields, got {_describe(obs)}")
    problems: list[str] = []
    for key in image_keys:
        image = lookup(obs, key, None)
        if image is None:
            present = ", ".join(sorted(str(k) for k in obs)) or "none"
            problems.append(f"missing camera image '{key}' (fields present: {present})")
            continue
        if not isinstance(image, np.ndarray):
            problems.append(f"image '{key}' must be a uint8 HxWx3 array, got {_describe(image)}")
        elif image.dtype != np.uint8:
            problems.append(f"image '{key}' must have dtype uint8, got {image.dtype}")
        elif image.ndim != 3 or image.shape[-1] != 3:
            problems.append(f"image '{key}' must be HxWx3 (channels last), got shape {image.shape}")
        elif image_shape is not None and tuple(image.shape) != tuple(image_shape):
            problems.append(f"image '{key}' must have shape {tuple(image_shape)}, got {image.shape}")

    state = lookup(obs, state_key, None)
    if state is None:
        problems.append(f"missing '{state_key}' vector")
    elif not isinstance(state, np.ndarray) or state.dtype.kind not in "fiu":
        problems.append(f"'{state_key}' must be a numeric array, got {_describe(state)}")
    elif state.ndim != 1:
        problems.append(f"'{state_key}' must be a 1-D vector, got shape {state.shape}")
    else:
        if state_dim is not None and state.shape[0] != state_dim:
            problems.append(f"'{state_key}' must have {state_dim} values, got {state.shape[0]}")
        if state.dtype.kind == "f" and not np.isfinite(state).all():
            bad = np.flatnonzero(~np.isfinite(state)).tolist()
            problems.append(f"'{state_key}' has NaN or infinite values at indices {bad[:8]}")

    prompt = lookup(obs, prompt_key, None)
    if prompt is None:
        if require_prompt:
            problems.append(f"missing '{prompt_key}' string (the task instruction)")
    elif not isinstance(prompt, str):
        problems.append(f"'{prompt_key}' must be a string, got {_describe(prompt)}")

    if problems:
        raise ValueError("; ".join(problems))
