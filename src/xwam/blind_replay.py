"""The blind-replay baseline: one recorded demonstration's actions executed open loop on the
evaluation seeds, with no cameras rendered, through :func:`xwam.evaluate.evaluate` (the same loop,
success rule and results files as a policy). What a policy scores above it is what it gains from
looking at the scene.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xwam.evaluate import TaskResult, evaluate


@dataclass
class BlindReplay:
    """The actions of one recorded episode, to be executed open loop."""

    root: str
    episode: int
    actions: np.ndarray  # (T, A) float32, as recorded
    recorded_seed: int | None = None
    recorded_task: str | None = None  # the simulator task name it was collected in, when stored

    @property
    def label(self) -> str:
        return f"blind-replay of {self.root} episode {self.episode}"

    def describe(self) -> dict[str, Any]:
        """JSON-ready description stored in results.json under ``"baseline"``."""
        return {"kind": "blind-replay", "data": self.root, "episode": self.episode,
                "recorded_seed": self.recorded_seed, "recorded_task": self.recorded_task,
                "recorded_length": int(len(self.actions)), "hold_action": hold_action(self.actions).tolist()}


def parse_replay_ref(ref: str) -> tuple[str, int]:
    """``DATA[:EPISODE]`` -> (DATA, EPISODE); the episode defaults to 0."""
    if not ref:
        raise ValueError("--blind-replay needs DATA[:EPISODE], e.g. data/lift or data/lift:3")
    root, sep, index = ref.rpartition(":")
    if not sep:
        return ref, 0
    if index.lstrip("-").isdigit():
        if not root:
            raise ValueError(f"--blind-replay must look like DATA[:EPISODE] (e.g. data/lift:3), got {ref!r}")
        return root, int(index)
    if Path(ref).exists():  # a folder whose name has a colon in it
        return ref, 0
    raise ValueError(f"--blind-replay must look like DATA[:EPISODE] (e.g. data/lift:3), got {ref!r}: "
                     f"{index!r} is not an episode index")


def load_blind_replay(dataset_root: str | Path, episode: int = 0) -> BlindReplay:
    """Read the actions (no video) and, where stored, the seed and task of one recorded episode."""
    from xwam.data import open_dataset

    dataset = open_dataset(dataset_root)
    n = dataset.num_episodes
    if not 0 <= episode < n:
        raise ValueError(f"episode {episode} out of range: {dataset_root} has {n} episodes (0..{n - 1})")
    _state, actions = dataset.episode_numeric(episode)
    actions = np.asarray(actions, np.float32)
    if actions.ndim != 2 or len(actions) == 0 or actions.shape[1] == 0:
        raise ValueError(f"{dataset_root} episode {episode} has no actions to replay (shape {actions.shape})")
    if not np.all(np.isfinite(actions)):
        raise ValueError(f"{dataset_root} episode {episode} has non-finite actions")
    meta: dict[str, Any] = {}
    rows = getattr(dataset, "episodes", None)  # LeRobot v3: per-episode rows with the collector's meta
    if isinstance(rows, list) and isinstance(rows[episode], dict) and rows[episode].get("xwam/meta"):
        try:
            meta = json.loads(rows[episode]["xwam/meta"])
        except json.JSONDecodeError:
            meta = {}
    seed = meta.get("seed")
    return BlindReplay(root=str(dataset_root), episode=int(episode), actions=actions,
                       recorded_seed=None if seed is None else int(seed), recorded_task=meta.get("task_name"))


def hold_action(actions: np.ndarray) -> np.ndarray:
    """What to do after the recording ends: no arm motion, and the last gripper command (the last
    dimension) kept, so that a grasped object stays grasped. robosuite's Panda gripper integrates the
    sign of its command, so a zero would hold too; grippers that map the command to an opening would
    half-open on a zero and drop the object."""
    actions = np.asarray(actions, np.float32)
    hold = np.zeros(actions.shape[1], np.float32)
    hold[-1] = actions[-1, -1]
    return hold


def open_loop_plan(actions: np.ndarray, length: int) -> np.ndarray:
    """(length, A): the recorded actions, cut or padded with :func:`hold_action` to ``length`` steps."""
    actions = np.asarray(actions, np.float32)
    recorded = actions[:length]
    pad = np.repeat(hold_action(actions)[None], max(0, length - len(recorded)), axis=0)
    return np.concatenate([recorded, pad])


def evaluate_blind_replay(
    dataset_root: str | Path,
    episode: int = 0,
    task: str | None = None,
    seeds: Sequence[int] | None = None,
    max_steps: int | None = None,
    out_dir: str | Path | None = None,
    *,
    cameras: Sequence[str] = (),
    image_size: tuple[int, int] = (64, 64),
    videos: int = 0,
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
) -> TaskResult:
    """Success of replaying episode ``episode`` of ``dataset_root`` open loop on ``seeds``.

    The recorded actions run from the reset on every seed, then :func:`hold_action` until
    ``max_steps`` (default: the task's horizon). ``seeds`` default to `xwam eval`'s held-out
    10000..10049. Same loop, success rule and results files as
    :func:`evaluate`; the result's ``policy`` is ``"blind-replay of DATA episode N"``. ``task``
    defaults to the task the episode was collected in (a different one is an error). No camera is
    rendered unless ``cameras`` are given (only needed for ``videos``).
    """
    from xwam.sim.envs import ACTION_DIM, TASKS

    replay = load_blind_replay(dataset_root, episode)
    task = task or replay.recorded_task
    if task is None:
        raise ValueError(f"{dataset_root} does not record which simulator task episode {episode} comes from; "
                         f"name it (--task)")
    if replay.recorded_task is not None and task != replay.recorded_task:
        raise ValueError(f"{dataset_root} episode {episode} was recorded in task {replay.recorded_task!r}, "
                         f"not {task!r}: its actions mean nothing there")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    if replay.actions.shape[1] != ACTION_DIM:
        raise ValueError(f"{dataset_root} episode {episode} has {replay.actions.shape[1]}-d actions, but the "
                         f"simulator takes {ACTION_DIM}-d OSC_POSE commands [dx, dy, dz, dax, day, daz, gripper]")
    horizon = (env_kwargs or {}).get("horizon") or TASKS[task].default_horizon
    steps = int(horizon if max_steps is None else max_steps)
    if steps < 1:
        raise ValueError(f"max_steps must be positive, got {steps}")
    # One chunk covers the whole episode, so the plan is fetched once per episode and never re-planned:
    # that is what open loop means, and it needs no per-episode state in the source.
    plan = open_loop_plan(replay.actions, steps)
    seeds = list(range(10_000, 10_050)) if seeds is None else list(seeds)

    def infer(obs: dict[str, Any], prefix: np.ndarray | None) -> np.ndarray:
        return plan

    return evaluate(infer, task=task, seeds=seeds, camera_names=list(cameras), image_size=image_size,
                    action_horizon=steps, replan_every=steps, max_steps=steps, out_dir=out_dir,
                    videos=videos if cameras else 0, progress=progress, env_kwargs=env_kwargs,
                    policy_label=replay.label, results_extra={"baseline": replay.describe()})
