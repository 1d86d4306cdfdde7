"""Measure the simulator: rendering speed, expert success rates and recording throughput.

``python -m xwam.sim.benchmark --what all`` prints one JSON line per measurement:

- ``render``: control steps per second with the default 3 cameras, RGB-D, at ``--size`` px, with
  fast rendering on and off (random small actions, after a reset);
- ``experts``: success rate, mean episode length and wall time of each task's scripted expert over
  ``--seeds`` seeds, without cameras (the expert reads true object poses, so images do not matter);
- ``record``: expert episodes per minute when recording all cameras at ``--size`` px.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np

from xwam.sim.envs import TASKS, make_env
from xwam.sim.rollout import collect_expert_episodes


def render_speed(task: str, *, size: int, fast_render: bool, steps: int = 60) -> dict:
    env = make_env(task, height=size, width=size, fast_render=fast_render)
    try:
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(steps):
            env.step(rng.uniform(-0.2, 0.2, size=7))
        elapsed = time.perf_counter() - start
    finally:
        env.close()
    return {
        "what": "render",
        "task": task,
        "size": size,
        "cameras": len(env.camera_names),
        "fast_render": fast_render,
        "steps_per_s": round(steps / elapsed, 2),
    }


def expert_success(task: str, seeds: Sequence[int], *, noise: float) -> dict:
    start = time.perf_counter()
    episodes = list(collect_expert_episodes(task, seeds, cameras=(), noise=noise))
    elapsed = time.perf_counter() - start
    failed = [ep.meta["seed"] for ep in episodes if not ep.success]
    return {
        "what": "experts",
        "task": task,
        "noise": noise,
        "episodes": len(episodes),
        "success_rate": round(float(np.mean([ep.success for ep in episodes])), 3),
        "mean_length": round(float(np.mean([ep.length for ep in episodes])), 1),
        "failed_seeds": failed,
        "seconds": round(elapsed, 1),
    }


def record_throughput(task: str, seeds: Sequence[int], *, size: int) -> dict:
    start = time.perf_counter()
    episodes = list(collect_expert_episodes(task, seeds, height=size, width=size))
    elapsed = time.perf_counter() - start
    return {
        "what": "record",
        "task": task,
        "size": size,
        "episodes": len(episodes),
        "mean_length": round(float(np.mean([ep.length for ep in episodes])), 1),
        "episodes_per_min": round(60.0 * len(episodes) / elapsed, 2),
        "steps_per_s": round(sum(ep.length for ep in episodes) / elapsed, 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--what", choices=["render", "experts", "record", "all"], default="all")
    parser.add_argument("--tasks", nargs="+", default=sorted(TASKS))
    parser.add_argument("--seeds", type=int, default=50, help="seeds per task for the expert measurement")
    parser.add_argument("--record-seeds", type=int, default=3, help="episodes per task for the throughput")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--noise", type=float, default=0.0)
    args = parser.parse_args(argv)
    for task in args.tasks:
        if task not in TASKS:
            raise SystemExit(f"unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    if args.what in ("render", "all"):
        for fast in (True, False):
            print(json.dumps(render_speed(args.tasks[0], size=args.size, fast_render=fast)), flush=True)
    if args.what in ("experts", "all"):
        for task in args.tasks:
            print(json.dumps(expert_success(task, range(args.seeds), noise=args.noise)), flush=True)
    if args.what in ("record", "all"):
        for task in args.tasks:
            print(json.dumps(record_throughput(task, range(args.record_seeds), size=args.size)), flush=True)


if __name__ == "__main__":
    main()
