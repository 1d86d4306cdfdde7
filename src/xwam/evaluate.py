"""Closed-loop evaluation of a policy in the simulator: success rate, episode length, chunk latency.

Seeds are fixed and printed; every episode's outcome is kept. Results are written as JSON and a
Markdown table, with MP4s of a few rollouts (camera views side by side).

The same loop measures the blind-replay baseline (:func:`xwam.blind_replay.evaluate_blind_replay`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from xwam.atomic import atomic_path, atomic_write_json, atomic_write_text
from xwam.data.layout import OBS_IMAGE_PREFIX, OBS_STATE_KEY
from xwam.processes import portable_error


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
    #: what was evaluated, when it is not the model (e.g. "blind-replay of data/lift episode 0")
    policy: str | None = None

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
            **({"policy": self.policy} if self.policy else {}),
        }


ROBOT_IO = ("xwam", "release_single_arm")


def observation_dict(sim_obs: Any, camera_names: Sequence[str], prompt: str, robot_io: str = "xwam") -> dict[str, Any]:
    """A simulator observation in the openpi layout the policy and the server accept; with
    ``robot_io="release_single_arm"`` the state is the release's 16-d RoboCasa state
    (:meth:`xwam.sim.envs.SimEnv.release_state`)."""
    obs: dict[str, Any] = {OBS_IMAGE_PREFIX + c: sim_obs.rgb[c] for c in camera_names}
    state = sim_obs.release_state if robot_io == "release_single_arm" else sim_obs.state
    obs[OBS_STATE_KEY] = np.asarray(state, np.float32)
    obs["prompt"] = prompt
    return obs


def sim_action(action: np.ndarray, robot_io: str = "xwam") -> np.ndarray:
    """The simulator's 7-d OSC command from one model action. ``release_single_arm``: the first 7 of
    the release's 14 dims, with the gripper negated back (the release trains on minus RoboCasa's
    command, so that +1 = open like the state), as its RoboCasa client does."""
    if robot_io not in ROBOT_IO:
        raise ValueError(f"unknown robot_io {robot_io!r}; expected one of {ROBOT_IO}")
    action = np.asarray(action, np.float32)
    if robot_io == "xwam":
        return action
    out = action[:7].copy()
    out[6] = -out[6]
    return out


def side_by_side(frames: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(frames), axis=1)


def write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
    from xwam.data.video import VideoEncoder

    h, w = frames[0].shape[:2]
    pad_h, pad_w = h % 2, w % 2
    arr = np.stack(frames)
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    with atomic_path(path) as tmp:
        enc = VideoEncoder(tmp, width=arr.shape[2], height=arr.shape[1], fps=fps, crf=23)
        try:
            enc.write(arr)
        finally:
            enc.close()


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
    robot_io: str = "xwam",
) -> tuple[EpisodeResult, list[np.ndarray]]:
    obs = env.reset(seed)
    reset_policy()
    frames: list[np.ndarray] = []
    first_success = None
    steps = 0
    for steps in range(1, max_steps + 1):
        if record:
            frames.append(side_by_side([obs.rgb[c] for c in camera_names]))
        action = sim_action(select_action(observation_dict(obs, camera_names, env.instruction, robot_io)), robot_io)
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


@dataclass(frozen=True)
class RecordedCameras:
    """Camera images of recorded episodes, shown to a policy in place of its own cameras: the closed-
    loop vision check. Episode seed ``s`` sees recorded episode ``s mod N`` (a fixed pairing, the same
    in every process), step ``i`` its frame ``i`` (its last frame once it has ended); the state stays
    the robot's own. A policy that steers by its cameras then acts on a scene that is not there, and
    its success falls towards what the state alone allows; one that ignores them does not change."""

    frames: tuple[dict[str, np.ndarray], ...]  # per recorded episode: camera -> (T, H, W, 3) uint8
    label: str

    @classmethod
    def load(cls, root: str | Path, camera_names: Sequence[str], image_size: tuple[int, int]) -> RecordedCameras:
        from xwam.data import open_dataset

        dataset = open_dataset(root)
        if dataset.num_episodes < 1:
            raise ValueError(f"{root}: no episodes to take camera images from")
        frames = []
        for e in range(dataset.num_episodes):
            ep = dataset.episode(e, load_depth=False)
            missing = [c for c in camera_names if c not in ep.rgb]
            if missing:
                raise ValueError(f"{root} episode {e} has no camera(s) {missing}; the policy's cameras are "
                                 f"{list(camera_names)}, the dataset's {ep.camera_names}")
            size = tuple(ep.rgb[camera_names[0]].shape[1:3])
            if size != tuple(image_size):
                raise ValueError(f"{root}: images are {size[0]}x{size[1]}, the policy expects "
                                 f"{image_size[0]}x{image_size[1]}")
            frames.append({c: np.asarray(ep.rgb[c]) for c in camera_names})
        return cls(tuple(frames), f"camera images of {root}'s {len(frames)} recorded episodes (episode = seed mod "
                                  f"{len(frames)}), true state")

    def for_episode(self, seed: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """The observation rewrite for one episode: call it once per control step, in order."""
        recorded = self.frames[int(seed) % len(self.frames)]
        step = iter(range(1 << 62))

        def swap(obs: dict[str, Any]) -> dict[str, Any]:
            i = next(step)
            return {**obs, **{OBS_IMAGE_PREFIX + c: v[min(i, len(v) - 1)] for c, v in recorded.items()}}

        return swap


class EpisodeRunner:
    """One simulator and one chunk source that run evaluation episodes (here or in a worker process).

    ``reseed(seed)``, when given, is called at the start of every episode: a stochastic source (the
    diffusion policy's noise) then depends on the episode's seed only, so an episode's outcome does
    not depend on which episodes ran before it, or in which process. ``cameras_from``: show the
    source recorded images instead of the simulator's (:class:`RecordedCameras`).
    """

    def __init__(self, infer: Callable[[dict[str, Any], np.ndarray | None], np.ndarray], *, task: str,
                 camera_names: Sequence[str], image_size: tuple[int, int], action_horizon: int,
                 replan_every: int | None = None, rtc_delay: int = 0, max_steps: int | None = None,
                 env_kwargs: dict[str, Any] | None = None, reseed: Callable[[int], None] | None = None,
                 robot_io: str = "xwam", cameras_from: RecordedCameras | None = None) -> None:
        from xwam.policy import ActionChunker
        from xwam.sim.envs import make_env

        self.timed = TimedPolicy(infer)
        self.chunker = ActionChunker(self.timed, action_horizon, replan_every, rtc_delay)
        self.camera_names = list(camera_names)
        self.env = make_env(task, cameras=self.camera_names, height=image_size[0], width=image_size[1],
                            **(env_kwargs or {}))
        self.max_steps = max_steps or self.env.horizon
        self.reseed = reseed
        self.task = task
        self.robot_io = robot_io
        self.cameras_from = cameras_from
        self.description = ""  # how the source acts, when it can say (see XWAMPolicy.describe)

    def run(self, seed: int, video_path: Path | None = None) -> EpisodeResult:
        """One episode; with ``video_path`` (a folder) its rollout MP4 is written there."""
        if self.reseed is not None:
            self.reseed(int(seed))
        record = video_path is not None and bool(self.camera_names)
        select = self.chunker.select_action
        if self.cameras_from is not None:
            swap = self.cameras_from.for_episode(seed)
            select = lambda obs: self.chunker.select_action(swap(obs))  # noqa: E731
        ep, frames = run_episode(self.env, select, self.chunker.reset, int(seed),
                                 self.max_steps, self.camera_names, self.timed.pop, record=record,
                                 robot_io=self.robot_io)
        if record and frames:
            tag = "success" if ep.success else "failure"
            write_mp4(video_path / f"{self.task}_seed{seed}_{tag}.mp4", frames, self.env.control_freq)
        return ep

    def close(self) -> None:
        self.env.close()


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
    policy_label: str | None = None,
    results_extra: dict[str, Any] | None = None,
    reseed: Callable[[int], None] | None = None,
    robot_io: str = "xwam",
) -> TaskResult:
    """Run ``len(seeds)`` closed-loop episodes of ``task`` with a chunk source ``infer``.

    ``camera_names`` may be empty for a source that needs no images: nothing is rendered then (and no
    videos are written). ``policy_label`` names what was evaluated in the results; ``results_extra``
    is added to results.json; ``reseed`` see :class:`EpisodeRunner`."""
    runner = EpisodeRunner(infer, task=task, camera_names=camera_names, image_size=image_size,
                           action_horizon=action_horizon, replan_every=replan_every, rtc_delay=rtc_delay,
                           max_steps=max_steps, env_kwargs=env_kwargs, reseed=reseed, robot_io=robot_io)
    out = _prepare_out(out_dir, videos and camera_names)
    result = TaskResult(task, policy=policy_label)
    bar = tqdm(list(seeds), desc=f"eval {task}", unit="ep", disable=not progress)
    start = time.perf_counter()
    try:
        for i, seed in enumerate(bar):
            video = out / "videos" if out is not None and i < videos and camera_names else None
            result.episodes.append(runner.run(int(seed), video))
            bar.set_postfix(success=f"{result.success_rate:.0%}", chunk_ms=f"{result.episodes[-1].mean_chunk_ms:.0f}")
    finally:
        runner.close()
    if out:
        write_results(out, [result], extra={"max_steps": runner.max_steps,
                                            "wall_seconds": round(time.perf_counter() - start, 2),
                                            **(results_extra or {})})
    return result


def _prepare_out(out_dir: str | Path | None, with_videos: Any) -> Path | None:
    if not out_dir:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if with_videos:
        (out / "videos").mkdir(exist_ok=True)
    return out


# ---------------------------------------------------------------------------------------------
# a checkpoint, evaluated in one or several processes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointEval:
    """How to act with a checkpoint in closed loop; picklable, so worker processes can rebuild it."""

    checkpoint: str
    task: str
    max_steps: int | None = None
    replan_every: int | None = None
    rtc_delay: int = 0
    device: str = "cpu"
    action_steps: int | None = None
    images_from: str | None = None  # a dataset: the closed-loop vision check (RecordedCameras)

    def runner(self) -> EpisodeRunner:
        from xwam.policy import XWAMPolicy

        policy = XWAMPolicy.from_checkpoint(self.checkpoint, device=self.device)
        if self.action_steps:
            policy = policy.with_sampler(action_steps=self.action_steps)
        if self.replan_every:
            policy = policy.with_replanning(self.replan_every)
        meta = policy.metadata
        image_size = tuple(meta["image_shape"][:2])
        cameras_from = (RecordedCameras.load(self.images_from, meta["camera_names"], image_size)
                        if self.images_from else None)
        runner = EpisodeRunner(lambda obs, prefix: policy.infer(obs, action_prefix=prefix)["actions"],
                               task=self.task, camera_names=meta["camera_names"],
                               image_size=image_size, action_horizon=meta["action_horizon"],
                               replan_every=meta["replan_every"], rtc_delay=self.rtc_delay,
                               max_steps=self.max_steps, reseed=policy.generator.manual_seed,
                               robot_io=policy.config.policy.robot_io, cameras_from=cameras_from)
        runner.description = (policy.describe() + (f", real-time chunking delay {self.rtc_delay}" if self.rtc_delay else "")
                              + (f"; sees {cameras_from.label}" if cameras_from else ""))
        return runner


_WORKER_RUNNER: EpisodeRunner | None = None
_WORKER_ERROR: BaseException | None = None


def _start_eval_worker(spec: CheckpointEval, threads: int) -> None:
    # An initializer that raises makes the pool start workers forever; keep the error and hand it to
    # the first task instead, so the parent sees it (e.g. a damaged checkpoint) and stops.
    import torch

    global _WORKER_RUNNER, _WORKER_ERROR
    torch.set_num_threads(threads)
    try:
        _WORKER_RUNNER = spec.runner()
    except Exception as exc:  # noqa: BLE001 - re-raised in the parent by the first task
        _WORKER_ERROR = exc


def _worker_runner() -> EpisodeRunner:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    assert _WORKER_RUNNER is not None, "worker not initialised"
    return _WORKER_RUNNER


def _worker_description(_: Any = None) -> str:
    try:
        return _worker_runner().description
    except Exception as exc:
        raise portable_error(exc) from None


def _run_in_worker(job: tuple[int, str | None]) -> EpisodeResult:
    seed, video = job
    try:
        return _worker_runner().run(seed, Path(video) if video else None)
    except Exception as exc:
        raise portable_error(exc) from None


def evaluate_checkpoint(
    spec: CheckpointEval,
    seeds: Sequence[int],
    *,
    workers: int = 1,
    out_dir: str | Path | None = None,
    videos: int = 3,
    progress: bool = True,
) -> TaskResult:
    """Closed-loop episodes of a checkpoint on ``seeds``, in ``workers`` processes.

    The policy's noise is re-seeded from each episode's seed, so every episode's outcome is the same
    for any number of workers (each worker runs one torch thread); only the time changes. Results,
    videos and files as :func:`evaluate`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    seeds = [int(s) for s in seeds]
    out = _prepare_out(out_dir, videos)
    jobs = [(seed, str(out / "videos") if out is not None and i < videos else None) for i, seed in enumerate(seeds)]
    result = TaskResult(spec.task)
    start = time.perf_counter()
    if workers == 1:
        runner = spec.runner()
        description = runner.description
        episodes = (runner.run(seed, Path(video) if video else None) for seed, video in jobs)
        max_steps = runner.max_steps
    else:
        import multiprocessing as mp

        # spawn: every worker loads the checkpoint and starts its own renderer
        pool = mp.get_context("spawn").Pool(workers, initializer=_start_eval_worker, initargs=(spec, 1))
        try:
            description = pool.apply(_worker_description)
        except BaseException:
            pool.terminate()
            raise
        episodes = pool.imap(_run_in_worker, jobs)
        runner, max_steps = None, spec.max_steps
    print(f"evaluating {spec.checkpoint} on {spec.task}, {len(seeds)} episodes, seeds {seeds[0]}..{seeds[-1]}"
          + (f", {workers} worker processes" if workers > 1 else "") + f"; {description}", flush=True)
    # the bar starts once the checkpoint has loaded: a refused checkpoint prints its one error line only
    bar = tqdm(total=len(seeds), desc=f"eval {spec.task}", unit="ep", disable=not progress)
    try:
        for ep in episodes:
            result.episodes.append(ep)
            bar.update(1)
            bar.set_postfix(success=f"{result.success_rate:.0%}", chunk_ms=f"{ep.mean_chunk_ms:.0f}")
    finally:
        bar.close()
        if runner is not None:
            runner.close()
        else:
            pool.terminate()
    if max_steps is None:
        from xwam.sim.envs import TASKS

        max_steps = TASKS[spec.task].default_horizon
    if out:
        write_results(out, [result], extra={"max_steps": max_steps, "workers": workers, "acting": description,
                                            "wall_seconds": round(time.perf_counter() - start, 2),
                                            **({"images_from": spec.images_from} if spec.images_from else {})})
    return result


def markdown_table(results: Sequence[TaskResult]) -> str:
    labels = sorted({r.policy for r in results if r.policy})
    lines = [f"Policy: {label}\n" for label in labels]
    lines += ["| task | episodes | success rate | mean episode length | mean chunk latency (ms) |",
              "|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        lines.append(f"| {s['task']} | {s['episodes']} | {s['success_rate']:.1%} ({s['successes']}/{s['episodes']}) "
                     f"| {s['mean_episode_length']:.1f} | {s['mean_chunk_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: Sequence[TaskResult], extra: dict[str, Any] | None = None) -> None:
    labels = sorted({r.policy for r in results if r.policy})
    payload: dict[str, Any] = {"policy": labels[0]} if len(labels) == 1 else {}
    payload.update({"tasks": [r.summary() for r in results],
                    "episodes": {r.task: [asdict(e) for e in r.episodes] for r in results}, **(extra or {})})
    atomic_write_json(out / "results.json", payload)
    atomic_write_text(out / "results.md", markdown_table(results))
