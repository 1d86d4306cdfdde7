"""Record simulator rollouts as :class:`xwam.data.episode.Episode`.

Recovery demonstrations (``perturb > 0``): the simulator executes the expert's command plus
temporally correlated noise on the arm's position command, while the dataset records the expert's
clean command. The expert is a feedback controller, so the recorded actions show how to come back
from small errors (DART, Laskey et al. 2017), the states a learned policy reaches when its camera
estimate is off by a centimetre. Noise-free demonstrations never leave the expert's straight path,
so a policy trained on them has no example of a correction.

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
from xwam.processes import portable_error
from xwam.sim.envs import DEFAULT_CAMERAS, SimEnv, SimObservation, make_env
from xwam.sim.experts import make_expert

PolicyFn = Callable[[SimObservation], np.ndarray]


class PositionNoise:
    """Correlated noise added to the executed arm-position command (command units: 1 = 5 cm).

    An AR(1) process per axis, ``e_t = rho * e_(t-1) + sqrt(1 - rho^2) * std * n_t``: its stationary
    standard deviation is ``std`` and it keeps a direction for about ``1 / (1 - rho)`` steps, long
    enough to push the hand off the expert's path before the expert pulls it back. Seeded per
    episode, so an episode is reproducible from its seed.
    """

    def __init__(self, std: float, correlation: float = 0.8) -> None:
        if std < 0:
            raise ValueError(f"perturbation std must be >= 0, got {std}")
        if not 0.0 <= correlation < 1.0:
            raise ValueError(f"perturbation correlation must be in [0, 1), got {correlation}")
        self.std, self.correlation = float(std), float(correlation)
        self.reset(None)

    def reset(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(None if seed is None else [int(seed), 0xDA27])
        self._state = self._rng.normal(0.0, self.std, size=3)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        rho = self.correlation
        self._state = rho * self._state + np.sqrt(1.0 - rho**2) * self._rng.normal(0.0, self.std, size=3)
        executed = np.array(action, dtype=np.float32, copy=True)
        executed[:3] = np.clip(executed[:3] + self._state, -1.0, 1.0)
        return executed


def record_episode(
    env: SimEnv,
    policy_fn: PolicyFn,
    seed: int,
    max_steps: int,
    *,
    post_success_steps: int = 10,
    meta: dict[str, Any] | None = None,
    perturbation: PositionNoise | None = None,
) -> Episode:
    """Reset ``env`` with ``seed`` and run ``policy_fn`` until success (+ ``post_success_steps``) or
    ``max_steps``. If ``policy_fn`` has a ``reset(seed)`` method (the scripted experts do) it is
    called after the env reset. With ``perturbation`` the simulator executes ``perturbation(action)``
    and the episode records ``action`` (see the module docstring)."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    start = time.perf_counter()
    obs = env.reset(seed=seed)
    reset_policy = getattr(policy_fn, "reset", None)
    if callable(reset_policy):
        reset_policy(seed)
    if perturbation is not None:
        perturbation.reset(seed)
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
        obs, done = env.step(action if perturbation is None else perturbation(action))
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
    perturb: float = 0.0,
    post_success_steps: int = 10,
    only_successful: bool = False,
    fast_render: bool = True,
    hard_reset: bool = True,
) -> Iterator[Episode]:
    """Yield one scripted-expert episode per seed, reusing one environment.

    ``max_steps`` defaults to the task's horizon. With ``only_successful`` failed episodes are
    skipped (the caller sees fewer episodes than seeds); otherwise they are yielded with
    ``success=False``. ``noise`` is the expert's own command noise (recorded as executed); ``perturb``
    the std of the recovery perturbation (executed, not recorded; see the module docstring). ``meta``
    records the seed, the task name, the expert noise and the perturbation."""
    recorder = _EpisodeRecorder(task, height=height, width=width, cameras=tuple(cameras), max_steps=max_steps,
                                noise=noise, perturb=perturb, post_success_steps=post_success_steps,
                                fast_render=fast_render, hard_reset=hard_reset)
    try:
        for seed in seeds:
            episode = recorder(int(seed))
            if only_successful and not episode.success:
                continue
            yield episode
    finally:
        recorder.close()


class _EpisodeRecorder:
    """One environment and expert that record an episode per seed (in this process or a worker's)."""

    def __init__(self, task: str, *, height: int = 128, width: int = 128, cameras: Sequence[str] = DEFAULT_CAMERAS,
                 max_steps: int | None = None, noise: float = 0.0, perturb: float = 0.0,
                 post_success_steps: int = 10, fast_render: bool = True, hard_reset: bool = True) -> None:
        self.env = make_env(task, cameras=tuple(cameras), height=height, width=width, fast_render=fast_render,
                            hard_reset=hard_reset)
        self.expert = make_expert(self.env, noise=noise)
        self.perturbation = PositionNoise(perturb) if perturb > 0 else None
        self.steps = max_steps if max_steps is not None else self.env.horizon
        self.post_success_steps = post_success_steps
        self.meta = {"expert": type(self.expert).__name__, "expert_noise": noise, "perturb": perturb}

    def __call__(self, seed: int) -> Episode:
        return record_episode(self.env, self.expert, seed, self.steps, post_success_steps=self.post_success_steps,
                              meta=self.meta, perturbation=self.perturbation)

    def close(self) -> None:
        self.env.close()


_WORKER_RECORDER: _EpisodeRecorder | None = None
_WORKER_ERROR: BaseException | None = None


def _start_worker(task: str, recording: dict[str, Any]) -> None:
    # An initializer that raises makes the pool start workers forever: keep the error for the first task.
    global _WORKER_RECORDER, _WORKER_ERROR
    try:
        _WORKER_RECORDER = _EpisodeRecorder(task, **recording)
    except Exception as exc:  # noqa: BLE001 - re-raised in the parent by the first task
        _WORKER_ERROR = exc


def _record_in_worker(seed: int) -> Episode:
    try:
        if _WORKER_ERROR is not None:
            raise _WORKER_ERROR
        assert _WORKER_RECORDER is not None, "worker not initialised"
        return _WORKER_RECORDER(seed)
    except Exception as exc:
        raise portable_error(exc) from None


def collect_in_parallel(
    task: str,
    seeds: Iterator[int],
    workers: int,
    wanted: Callable[[int], bool],
    **recording: Any,
) -> Iterator[Episode]:
    """Episodes of consecutive ``seeds`` recorded by ``workers`` processes, yielded in seed order;
    ``recording`` takes the recording keywords of :func:`collect_expert_episodes` (height, width,
    cameras, max_steps, noise, perturb, post_success_steps, ...).

    Every episode depends only on its seed, so the result is the same as one process's; only the
    time changes. ``wanted(in_flight)`` is asked before each new seed is started: it says whether
    the caller still needs more episodes, given that ``in_flight`` are already running (so at the
    end no more than ``workers - 1`` episodes are recorded and thrown away). Stop iterating to stop.
    """
    import multiprocessing as mp

    # spawn: each worker starts its own renderer instead of inheriting the parent's state
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_start_worker, initargs=(task, recording)) as pool:
        pending: dict[int, Any] = {}
        order: list[int] = []
        exhausted = False
        while True:
            while not exhausted and len(pending) < workers and wanted(len(pending)):
                try:
                    seed = int(next(seeds))
                except StopIteration:
                    exhausted = True
                    break
                pending[seed] = pool.apply_async(_record_in_worker, (seed,))
                order.append(seed)
            if not order:
                return
            seed = order.pop(0)
            yield pending.pop(seed).get()
