"""`xwam eval`: closed-loop success rate of a checkpoint (or a running policy server) in simulation, or
of the blind-replay baseline (one recorded demonstration's actions, open loop) on the same seeds."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xwam.evaluate import TaskResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="run a policy in closed loop in the simulator and report success rates",
        description=(
            "Runs the policy on fixed seeds of a simulated task (robosuite; RoboCasa tasks plug in where "
            "installed) and writes results.json, results.md (success rate, mean episode length, mean chunk "
            "latency) and MP4s of the first rollouts with the camera views side by side. "
            "--blind-replay measures the baseline a policy has to beat on the same seeds: the actions of one "
            "recorded demonstration executed open loop (no cameras are rendered, so no MP4s), then a hold "
            "(no arm motion, last gripper command) until the step limit."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="xwam checkpoint folder (runs the policy in this process)")
    src.add_argument("--server", help="HOST:PORT of a running `xwam serve` (the policy runs there)")
    src.add_argument("--blind-replay", metavar="DATA[:EPISODE]",
                     help="baseline: replay the actions of episode EPISODE (default 0) of dataset DATA open loop, "
                          "ignoring cameras and state; --task defaults to the task it was recorded in")
    p.add_argument("--api-key", default=None, help="API key for --server (or env XWAM_API_KEY)")
    p.add_argument("--task", action="append", default=None,
                   help="task name (repeatable; default Lift, or for --blind-replay the task it was recorded in)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task (default 50)")
    p.add_argument("--seed", type=int, default=10_000,
                   help="first seed; episode i uses seed+i (default 10000, disjoint from collection seeds)")
    p.add_argument("--max-steps", type=int, default=None, help="step limit per episode (default: the task's horizon)")
    p.add_argument("--replan-every", type=int, default=None,
                   help="actions executed per chunk (default K/2; not used by --blind-replay)")
    p.add_argument("--rtc-delay", type=int, default=0, help="real-time chunking: committed actions per re-plan")
    p.add_argument("--videos", type=int, default=3,
                   help="rollout MP4s to write per task (default 3; none for --blind-replay)")
    p.add_argument("--out", default="out/eval", help="output folder (default out/eval)")
    p.add_argument("--device", default="cpu", help="torch device for --checkpoint (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); use 1 per process when running several side by side")
    p.add_argument("--action-steps", type=int, default=None, help="override the sampler's action steps k")
    p.add_argument("--images-from", metavar="DATA", default=None,
                   help="closed-loop vision check (--checkpoint): the policy sees the camera images of DATA's "
                        "recorded episodes (episode seed mod N, frame = step) instead of its own cameras, with "
                        "the robot's true state; compare its success with a normal run on the same seeds")
    p.add_argument("--workers", type=int, default=1,
                   help="processes for --checkpoint, one torch thread each; every episode's policy noise is "
                        "seeded from its seed, so results are the same for any number, only faster")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.blind_replay:
        eval_blind_replay(args.blind_replay, tasks=args.task, episodes=args.episodes, seed=args.seed,
                          max_steps=args.max_steps, out=args.out)
    else:
        eval_policy(args.checkpoint, server=args.server, api_key=args.api_key, tasks=args.task or ["Lift"],
                    episodes=args.episodes, seed=args.seed, max_steps=args.max_steps,
                    replan_every=args.replan_every, rtc_delay=args.rtc_delay, videos=args.videos,
                    out=args.out, device=args.device, action_steps=args.action_steps,
                    workers=args.workers, images_from=args.images_from)
    return 0


def eval_policy(
    checkpoint: str | Path | None = None,
    *,
    server: str | None = None,
    api_key: str | None = None,
    tasks: Sequence[str] = ("Lift",),
    episodes: int = 50,
    seed: int = 10_000,
    max_steps: int | None = None,
    replan_every: int | None = None,
    rtc_delay: int = 0,
    videos: int = 3,
    out: str | Path = "out/eval",
    device: str = "cpu",
    action_steps: int | None = None,
    workers: int = 1,
    images_from: str | Path | None = None,
) -> list[TaskResult]:
    """Closed-loop success of a checkpoint (run here, in ``workers`` processes) or of a running server
    (``HOST:PORT``) on seeds ``seed..seed+episodes-1`` of every task; writes ``out``/results.json,
    results.md and per-task folders (see ``xwam eval --help`` for the arguments)."""
    import os

    from xwam.evaluate import CheckpointEval, evaluate, evaluate_checkpoint, markdown_table, write_results

    if (checkpoint is None) == (server is None):
        raise ValueError("give exactly one of checkpoint and server")
    if images_from is not None and checkpoint is None:
        raise ValueError("--images-from applies to --checkpoint (the images are swapped in this process)")
    seeds = list(range(seed, seed + episodes))
    out = Path(out)
    results = []
    if checkpoint is not None:
        for task in tasks:
            spec = CheckpointEval(str(checkpoint), task, max_steps=max_steps, replan_every=replan_every,
                                  rtc_delay=rtc_delay, device=device, action_steps=action_steps,
                                  images_from=str(images_from) if images_from is not None else None)
            results.append(evaluate_checkpoint(spec, seeds, workers=workers, out_dir=out / task, videos=videos))
    else:
        if workers != 1:
            raise ValueError("--workers applies to --checkpoint; a server evaluates one episode at a time")
        from xwam.serve.client import PolicyClient

        host, _, port = server.rpartition(":")
        client = PolicyClient(host or "127.0.0.1", int(port), api_key=api_key or os.environ.get("XWAM_API_KEY"))
        meta = client.metadata

        def infer(obs, prefix):
            if prefix is not None:
                obs = {**obs, "action_prefix": prefix}
            return client.infer(obs)["actions"]

        acting = [f"re-plan every {replan_every or meta.get('replan_every') or meta['action_horizon'] // 2} of "
                  f"{meta['action_horizon']} actions"]
        acting += ["integer timesteps"] if meta.get("integer_timesteps") else []
        acting += [f"centre crop {meta['center_crop']:g}"] if meta.get("center_crop", 1.0) < 1.0 else []
        print(f"evaluating {server} on {list(tasks)}, {episodes} episodes each, seeds {seeds[0]}..{seeds[-1]}; "
              + ", ".join(acting))
        for task in tasks:
            results.append(evaluate(
                infer, task=task, seeds=seeds, camera_names=meta["camera_names"],
                image_size=tuple(meta["image_shape"][:2]), action_horizon=meta["action_horizon"],
                replan_every=replan_every or meta.get("replan_every"), rtc_delay=rtc_delay, max_steps=max_steps,
                out_dir=out / task, videos=videos, robot_io=meta.get("robot_io", "xwam"),
            ))
    write_results(out, results)
    print(markdown_table(results))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return results


def eval_blind_replay(
    ref: str,
    *,
    tasks: Sequence[str] | None = None,
    episodes: int = 50,
    seed: int = 10_000,
    max_steps: int | None = None,
    out: str | Path = "out/eval",
) -> list[TaskResult]:
    """The blind-replay baseline: episode ``DATA[:EPISODE]``'s recorded actions executed open loop on
    the same seeds as :func:`eval_policy`; ``tasks`` default to the task it was recorded in."""
    from xwam.blind_replay import evaluate_blind_replay, load_blind_replay, parse_replay_ref
    from xwam.evaluate import markdown_table, write_results

    seeds = list(range(seed, seed + episodes))
    root, episode = parse_replay_ref(ref)
    replay = load_blind_replay(root, episode)  # checked before any simulator starts
    tasks = list(tasks or [replay.recorded_task or "Lift"])
    print(f"{replay.label} ({len(replay.actions)} recorded actions"
          + (f", recorded on seed {replay.recorded_seed}" if replay.recorded_seed is not None else "")
          + f") on {tasks}, {episodes} episodes each, seeds {seeds[0]}..{seeds[-1]}")
    out = Path(out)
    results = [evaluate_blind_replay(root, episode, task, seeds, max_steps, out / task) for task in tasks]
    write_results(out, results, extra={"baseline": replay.describe()})
    print(markdown_table(results))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return results
