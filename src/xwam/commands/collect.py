"""`xwam collect`: record scripted-expert episodes in simulation into a LeRobot v3 dataset.

Resumable: episodes are committed in groups (``--episodes-per-file``); an interrupted run keeps every
committed group and, run again with the same arguments, continues with the next seeds until the
dataset holds ``--episodes`` episodes. Progress (next seed, attempts, successes) is kept in
``meta/xwam_collect.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

PROGRESS_PATH = "meta/xwam_collect.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="record expert demonstrations in simulation into a LeRobot v3 dataset (resumable)",
        description=(
            "Run the scripted expert of a robosuite task for consecutive seeds and write the episodes "
            "(3 RGB-D cameras, camera matrices, 8-d state, 7-d OSC action, 20 Hz) as a LeRobot v3 dataset. "
            "Only successful episodes are kept unless --keep-failures. Re-running on the same --out "
            "resumes: finished episodes are kept and collection continues with the next seeds. "
            "Statistics (meta/stats.json, meta/xwam_norm.json) are written at the end."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name (e.g. Lift, Stack, PickPlaceCan)")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes the dataset should hold")
    p.add_argument("--out", required=True, help="dataset folder (created, or resumed if it exists)")
    p.add_argument("--height", type=int, default=128, help="image height in pixels")
    p.add_argument("--width", type=int, default=128, help="image width in pixels")
    p.add_argument("--seed", type=int, default=0, help="first seed of a new collection")
    p.add_argument("--cameras", nargs="+", default=None, help="camera names (default: the simulator's three)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="step limit per episode (default: task horizon)"
    )
    p.add_argument("--noise", type=float, default=0.0,
                   help="std of the expert's own command noise, executed and recorded (diversity)")
    p.add_argument("--perturb", type=float, default=0.0,
                   help="std (command units, 1 = 5 cm) of correlated noise added to the executed arm position "
                        "but not recorded: the expert's corrections become recovery demonstrations (DART)")
    p.add_argument("--workers", type=int, default=1,
                   help="simulator processes; the dataset is the same for any number, only faster")
    p.add_argument("--keep-failures", action="store_true", help="also store episodes the expert failed")
    p.add_argument(
        "--episodes-per-file",
        type=int,
        default=10,
        help="episodes per video/data file; also how many an interruption can lose at most",
    )
    p.add_argument(
        "--crf", type=int, default=18, help="H.264 quality of new datasets (lower = better, larger)"
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="give up after this many seeds in this run (default: 4 x --episodes)",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=run)


def _load_progress(root: Path) -> dict[str, Any]:
    path = root / PROGRESS_PATH
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to restart seed bookkeeping") from exc


def run(args: argparse.Namespace) -> int:
    stored = collect(
        args.task,
        args.episodes,
        args.out,
        height=args.height,
        width=args.width,
        first_seed=args.seed,
        cameras=args.cameras,
        max_steps=args.max_steps,
        noise=args.noise,
        perturb=args.perturb,
        workers=args.workers,
        keep_failures=args.keep_failures,
        episodes_per_file=args.episodes_per_file,
        crf=args.crf,
        max_attempts=args.max_attempts,
    )
    return 0 if stored >= args.episodes else 1


def collect(
    task: str,
    episodes: int,
    out: str | Path,
    *,
    height: int = 128,
    width: int = 128,
    first_seed: int = 0,
    cameras: list[str] | None = None,
    max_steps: int | None = None,
    noise: float = 0.0,
    perturb: float = 0.0,
    workers: int = 1,
    keep_failures: bool = False,
    episodes_per_file: int = 10,
    crf: int = 18,
    max_attempts: int | None = None,
) -> int:
    """Collect (or resume collecting) until ``out`` holds ``episodes`` episodes; returns how many it holds.

    The arguments are the command's options (see ``xwam collect --help``); fewer episodes than asked
    means ``max_attempts`` seeds ran out first.
    """
    from tqdm import tqdm

    from xwam.atomic import atomic_write_json
    from xwam.data.lerobot import INFO_PATH, LeRobotV3Writer

    try:
        from xwam.sim.envs import DEFAULT_CAMERAS
        from xwam.sim.rollout import collect_expert_episodes, collect_in_parallel
    except ImportError as exc:
        raise RuntimeError(f"the simulator is not available ({exc}); install the 'sim' extra") from exc

    if episodes < 1:
        raise ValueError("--episodes must be >= 1")
    if workers < 1:
        raise ValueError("--workers must be >= 1")
    root = Path(out)
    cameras = list(cameras or DEFAULT_CAMERAS)
    progress = _load_progress(root)
    resuming = (root / INFO_PATH).is_file()
    if resuming and progress:
        for key, value in (
            ("task", task),
            ("height", height),
            ("width", width),
            ("cameras", cameras),
            ("noise", noise),
            ("perturb", perturb),
        ):
            if progress.get(key) is not None and progress[key] != value:
                raise ValueError(
                    f"{root} was collected with {key}={progress[key]!r}, not {value!r}; "
                    f"use another --out or the same arguments to resume"
                )
    writer = LeRobotV3Writer(
        root,
        fps=None,
        robot_type="panda",
        episodes_per_file=10**9,
        rgb_crf=crf,
        write_stats_on_close=True,
    )
    have = writer.num_episodes
    next_seed = int(progress.get("next_seed", first_seed))
    if resuming:
        seeds_seen = [json.loads(r).get("seed", -1) for r in _stored_meta(root)]
        next_seed = max([next_seed, *(s + 1 for s in seeds_seen if s is not None and s >= 0)])
    progress.update({"task": task, "height": height, "width": width, "cameras": cameras, "noise": noise,
                     "perturb": perturb})
    progress.setdefault("attempted", 0)
    progress.setdefault("succeeded", 0)
    if have >= episodes:
        print(f"{root}: already holds {have} episodes (>= {episodes}); nothing to do")
        writer.close()
        return have
    if resuming:
        print(f"resuming {root}: {have} episodes stored, continuing at seed {next_seed}")
    max_attempts = max_attempts or 4 * episodes
    attempted = succeeded = 0
    since_flush_attempts = since_flush_successes = 0
    start = time.perf_counter()
    bar = tqdm(total=episodes, initial=have, unit="ep", desc=f"collect {task}", dynamic_ncols=True)

    def commit(seed_after: int) -> None:
        nonlocal since_flush_attempts, since_flush_successes
        writer.flush()
        progress["next_seed"] = seed_after
        progress["attempted"] += since_flush_attempts
        progress["succeeded"] += since_flush_successes
        since_flush_attempts = since_flush_successes = 0
        atomic_write_json(root / PROGRESS_PATH, progress)

    seed = next_seed
    pending = 0
    rollouts = None
    try:
        options = dict(height=height, width=width, cameras=cameras, max_steps=max_steps, noise=noise,
                       perturb=perturb)
        if workers > 1:
            rollouts = collect_in_parallel(
                task, itertools.count(next_seed), workers,
                lambda in_flight: (writer.num_episodes + in_flight < episodes
                                   and attempted + in_flight < max_attempts),
                **options)
        else:
            rollouts = collect_expert_episodes(task, itertools.count(next_seed), **options)
        for episode in rollouts:
            seed = int(episode.meta.get("seed", seed))
            attempted += 1
            since_flush_attempts += 1
            if episode.success:
                succeeded += 1
                since_flush_successes += 1
            if episode.success or keep_failures:
                writer.add_episode(episode)
                pending += 1
                bar.update(1)
            minutes = (time.perf_counter() - start) / 60
            bar.set_postfix(
                ep_per_min=f"{attempted / max(minutes, 1e-9):.1f}", success=f"{succeeded}/{attempted}"
            )
            if pending >= episodes_per_file:
                commit(seed + 1)
                pending = 0
            if writer.num_episodes >= episodes or attempted >= max_attempts:
                break
        commit(seed + 1)
    except KeyboardInterrupt:
        # every episode in the open group is complete, so committing it is safe
        commit(seed + 1)
        bar.close()
        print(f"interrupted: {writer.num_episodes} episodes stored in {root}; run the same command to resume")
        raise
    finally:
        if rollouts is not None:
            rollouts.close()  # stops the workers of a parallel collection
        bar.close()
    writer.close()
    rate = succeeded / max(attempted, 1)
    total_rate = progress["succeeded"] / max(progress["attempted"], 1)
    print(
        f"expert success rate: {succeeded}/{attempted} = {100 * rate:.1f} % this run "
        f"({progress['succeeded']}/{progress['attempted']} = {100 * total_rate:.1f} % overall)"
    )
    print(f"{root}: {writer.num_episodes} episodes, stats written to meta/stats.json and meta/xwam_norm.json")
    if writer.num_episodes < episodes:
        print(
            f"warning: stopped after {attempted} attempts with {writer.num_episodes}/{episodes} episodes"
        )
    return writer.num_episodes


def _stored_meta(root: Path) -> list[str]:
    from xwam.data.lerobot import LeRobotV3Dataset

    ds = LeRobotV3Dataset(root, cache_size=0)
    return [r.get("xwam/meta") or "{}" for r in ds.episodes]
