"""Record simulator rollouts as :class:`xwam.data.episode.Episode`.

How an episode ends: it is recorded until the task has been successful for ``post_success_steps``
consecutive steps (default 10, half a second at 20 Hz: the clip shows the finished task settling, and
a policy sees a few "hold still" steps rather than an abrupt cut), or until ``max_steps`` actions have
been applied. Frame t holds the observation before action t, so an episode of T steps has T
observations and T actions; the observation after the last action is not stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from xwam.data.episode import Episode
from xwam.sim.envs import DEFAULT_CAMERAS, SimEnv, SimObservation, make_env
from xwam.sim.experts import make_expert

PolicyFn = Callable[[SimObservation], np.ndarray]


def record_episode(
    env: SimEnv,
    policy_fn: PolicyFn,
    seed: int,
    max_steps: int,
    *,
    post_success_steps: int = 10,
    meta: dict[str, Any] | None = None,
) -> Episode:
    """Reset ``env`` with ``seed`` and run ``policy_fn`` until success (+ ``post_success_steps``) or
    ``max_steps``. If ``policy_fn`` has a ``reset(seed)`` method (the scripted experts do) it is
    called after the env reset."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    start = time.perf_counter()
    obs = env.reset(seed=seed)
    reset_policy = getattr(policy_fn, "reset", None)
    if callable(reset_policy):
        reset_policy(seed)
    cams = list(env.camera_names)
    rgb: dict[str, list[np.ndarray]] = {c: [] for c in cams}
    depth: dict[str, list[np.ndarray]] = {c: [] for c in cams}
    intr: dict[str, list[np.ndarray]] = {c: [] for c in cams}
    extr: dict[str, list[np.ndarray]] = {c: [] for c in cams}
    states: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    success = False
    first_success: int | None = None
    steps_since_success = 0
    for t in range(max_steps):
        action = np.asarray(policy_fn(obs), dtype=np.float32).reshape(-1)
        for c in cams:
            rgb[c].append(obs.rgb[c])
            depth[c].append(obs.depth[c])
            intr[c].append(obs.intrinsics[c])
            extr[c].append(obs.extrinsics[c])
        states.append(obs.state)
        actions.append(np.clip(action, -1.0, 1.0))
        obs, done = env.step(action)
        if obs.success:
            success = True
            first_success = t + 1 if first_success is None else first_success
            steps_since_success += 1
        else:
            steps_since_success = 0  # must be stably successful to end early
        if steps_since_success > post_success_steps or done:
            break
    episode = Episode(
        task=env.instruction,
        fps=env.control_freq,
        camera_names=cams,
        rgb={c: np.stack(rgb[c]) for c in cams},
        depth={c: np.stack(depth[c]).astype(np.float32) for c in cams},
        intrinsics={c: np.stack(intr[c]).astype(np.float32) for c in cams},
        extrinsics={c: np.stack(extr[c]).astype(np.float32) for c in cams},
        state=np.stack(states).astype(np.float32),
        action=np.stack(actions).astype(np.float32),
        # success means the final state is a success (a success that was undone does not count)
        success=bool(obs.success),
        meta={
            "seed": int(seed),
            "task_name": env.task_name,
            "source": "robosuite",
            "robot": env.spec.robot,
            "controller": "OSC_POSE",
            "first_success_step": first_success,
            "ever_succeeded": success,
            "image_height": env.height,
            "image_width": env.width,
            "record_seconds": round(time.perf_counter() - start, 3),
            **(meta or {}),
        },
    )
    episode.validate()
    return episode


def collect_expert_episodes(
    task: str,
    seeds: Iterable[int],
    *,
    height: int = 128,
    width: int = 128,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    max_steps: int | None = None,
    noise: float = 0.0,
    post_success_steps: int = 10,
    only_successful: bool = False,
    fast_render: bool = True,
    hard_reset: bool = True,
) -> Iterator[Episode]:
    """Yield one scripted-expert episode per seed, reusing one environment.

    ``max_steps`` defaults to the task's horizon. With ``only_successful`` failed episodes are
    skipped (the caller sees fewer episodes than seeds); otherwise they are yielded with
    ``success=False``. ``meta`` records the seed, the task name and the expert noise."""
    env = make_env(
        task, cameras=cameras, height=height, width=width, fast_render=fast_render, hard_reset=hard_reset
    )
    try:
        expert = make_expert(env, noise=noise)
        steps = max_steps if max_steps is not None else env.horizon
        for seed in seeds:
            episode = record_episode(
                env,
                expert,
                int(seed),
                steps,
                post_success_steps=post_success_steps,
                meta={"expert": type(expert).__name__, "expert_noise": noise},
            )
            if only_successful and not episode.success:
                continue
            yield episode
    finally:
        env.close()
