"""`xwam demo`: the whole of X-WAM on a laptop CPU, from demonstrations to a 4D report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="collect demos, train from scratch, evaluate in closed loop, imagine in 4D, write a report",
        description=(
            "Runs the main job on the built-in default (robosuite Lift, 3 RGB-D cameras, the small preset): "
            "collects scripted demonstrations, trains from scratch with Asynchronous Noise Sampling for "
            "--minutes, evaluates the policy on held-out seeds, imagines held-out futures in 4D (eval-4d) and "
            "writes OUT/report.html. Every stage is resumable: re-running on the same --out skips finished "
            "stages and resumes training from its last checkpoint."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", default="Lift", help="simulator task (Lift, Stack, PickPlaceCan)")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--minutes", type=float, default=None, help="training time budget (default 14; quick: 0.75)")
    p.add_argument("--episodes", type=int, default=None, help="training demonstrations (default 60)")
    p.add_argument("--eval-episodes", type=int, default=None, help="closed-loop episodes (default 50)")
    p.add_argument("--preset", default="small", help="model preset")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override")
    p.add_argument("--steps", type=int, default=None, help="training steps the LR schedule spans (default 1250)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema-decay", type=float, default=None,
                   help="EMA of the weights used to act and imagine (0 disables it)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a few-minute end-to-end run with a tiny budget (CI)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xwam.demo import DemoConfig, run_demo

    changes = {k: v for k, v in dict(task=args.task, out=args.out, minutes=args.minutes, steps=args.steps, episodes=args.episodes,
                                     eval_episodes=args.eval_episodes, preset=args.preset,
                                     batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay, threads=args.threads,
                                     seed=args.seed).items() if v is not None}
    cfg = DemoConfig.quick_config(**changes) if args.quick else DemoConfig(**changes)
    if args.set:
        cfg.overrides = [*cfg.overrides, *args.set]
    run_demo(cfg)
    return 0
