"""Closed-loop evaluation of a policy in the simulator: success rate, episode length, chunk latency.

Seeds are fixed and printed; every episode's outcome is kept. Results are written as JSON and a
Markdown table, with MP4s of a few rollouts (camera views side by side).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    length: int
    first_success_step: int | None
    chunks: int
    mean_chunk_ms: float


@dataclass
class TaskResult:
    task: str
    episodes: list[EpisodeResult] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    def summary(self) -> dict[str, Any]:
        eps = self.episodes
        chunk_ms = [e.mean_chunk_ms for e in eps if e.chunks]
        return {
            "task": self.task,
            "episodes": len(eps),
            "successes": int(sum(e.success for e in eps)),
            "success_rate": self.success_rate,
            "mean_episode_length": float(np.mean([e.length for e in eps])) if eps else 0.0,
            "mean_chunk_ms": float(np.mean(chunk_ms)) if chunk_ms else 0.0,
            "seeds": [e.seed for e in eps],
        }


def observation_dict(sim_obs: Any, camera_names: Sequence[str], prompt: str) -> dict[str, Any]:
    """A simulator observation in the openpi layout the policy and the server accept."""
    obs: dict[str, Any] = {f"observation/images/{c}": sim_obs.rgb[c] for c in camera_names}
    obs["observation/state"] = np.asarray(sim_obs.state, np.float32)
    obs["prompt"] = prompt
    return obs


def side_by_side(frames: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(frames), axis=1)


def write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
    from xwam.data.video import VideoEncoder

    h, w = frames[0].shape[:2]
    pad_h, pad_w = h % 2, w % 2
    arr = np.stack(frames)
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    tmp = path.with_suffix(".tmp.mp4")
    enc = VideoEncoder(tmp, width=arr.shape[2], height=arr.shape[1], fps=fps, crf=23)
    try:
        enc.write(arr)
    finally:
        enc.close()
    tmp.replace(path)


def run_episode(
    env: Any,
    select_action: Callable[[dict[str, Any]], np.ndarray],
    reset_policy: Callable[[], None],
    seed: int,
    max_steps: int,
    camera_names: Sequence[str],
    chunk_timer: Callable[[], tuple[int, float]] | None = None,
    record: bool = False,
    post_success_steps: int = 5,
) -> tuple[EpisodeResult, list[np.ndarray]]:
    obs = env.reset(seed)
    reset_policy()
    frames: list[np.ndarray] = []
    first_success = None
    steps = 0
    for steps in range(1, max_steps + 1):
        if record:
            frames.append(side_by_side([obs.rgb[c] for c in camera_names]))
        action = select_action(observation_dict(obs, camera_names, env.instruction))
        obs, done = env.step(action)
        if obs.success and first_success is None:
            first_success = steps
        if done or (first_success is not None and steps - first_success >= post_success_steps):
            break
    if record:
        frames.append(side_by_side([obs.rgb[c] for c in camera_names]))
    chunks, total_ms = chunk_timer() if chunk_timer else (0, 0.0)
    return EpisodeResult(seed, first_success is not None, steps, first_success, chunks,
                         total_ms / chunks if chunks else 0.0), frames


class TimedPolicy:
    """Wraps ``infer(obs, prefix) -> chunk`` to time every chunk (in-process or remote)."""

    def __init__(self, infer: Callable[[dict[str, Any], np.ndarray | None], np.ndarray]) -> None:
        self.inner = infer
        self.count, self.total_ms = 0, 0.0

    def __call__(self, obs: dict[str, Any], prefix: np.ndarray | None) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.inner(obs, prefix)
        self.count += 1
        self.total_ms += (time.perf_counter() - t0) * 1000
        return out

    def pop(self) -> tuple[int, float]:
        out = (self.count, self.total_ms)
        self.count, self.total_ms = 0, 0.0
        return out


def evaluate(
    infer: Callable[[dict[str, Any], np.ndarray | None], np.ndarray],
    *,
    task: str,
    seeds: Sequence[int],
    camera_names: Sequence[str],
    image_size: tuple[int, int],
    action_horizon: int,
    replan_every: int | None = None,
    rtc_delay: int = 0,
    max_steps: int | None = None,
    out_dir: str | Path | None = None,
    videos: int = 3,
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
) -> TaskResult:
    """Run ``len(seeds)`` closed-loop episodes of ``task`` with a chunk source ``infer``."""
    from xwam.policy import ActionChunker
    from xwam.sim.envs import make_env

    timed = TimedPolicy(infer)
    chunker = ActionChunker(timed, action_horizon, replan_every, rtc_delay)
    env = make_env(task, cameras=list(camera_names), height=image_size[0], width=image_size[1], **(env_kwargs or {}))
    max_steps = max_steps or env.horizon
    out = Path(out_dir) if out_dir else None
    if out:
        (out / "videos").mkdir(parents=True, exist_ok=True)
    result = TaskResult(task)
    bar = tqdm(list(seeds), desc=f"eval {task}", unit="ep", disable=not progress)
    try:
        for i, seed in enumerate(bar):
            record = out is not None and i < videos
            ep, frames = run_episode(env, chunker.select_action, chunker.reset, int(seed), max_steps,
                                     camera_names, timed.pop, record=record)
            result.episodes.append(ep)
            bar.set_postfix(success=f"{result.success_rate:.0%}", chunk_ms=f"{ep.mean_chunk_ms:.0f}")
            if record and frames:
                tag = "success" if ep.success else "failure"
                write_mp4(out / "videos" / f"{task}_seed{seed}_{tag}.mp4", frames, env.control_freq)
    finally:
        env.close()
    if out:
        write_results(out, [result], extra={"max_steps": max_steps})
    return result


def markdown_table(results: Sequence[TaskResult]) -> str:
    lines = ["| task | episodes | success rate | mean episode length | mean chunk latency (ms) |",
             "|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        lines.append(f"| {s['task']} | {s['episodes']} | {s['success_rate']:.1%} ({s['successes']}/{s['episodes']}) "
                     f"| {s['mean_episode_length']:.1f} | {s['mean_chunk_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: Sequence[TaskResult], extra: dict[str, Any] | None = None) -> None:
    payload = {"tasks": [r.summary() for r in results],
               "episodes": {r.task: [asdict(e) for e in r.episodes] for r in results}, **(extra or {})}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(markdown_table(results))
