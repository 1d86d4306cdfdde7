"""`xwam demo`: the whole of X-WAM on a laptop CPU, from demonstrations to a 4D report."""

from __future__ import annotations

import argparse
import dataclasses


def register(sub: argparse._SubParsersAction) -> None:
    from xwam.demo import DemoConfig

    p = sub.add_parser(
        "demo",
        help="collect demos, train from scratch, evaluate in closed loop, imagine in 4D, write a report",
        description=(
            "Runs the main job on the built-in default (robosuite Lift, 3 RGB-D cameras, the small preset): "
            "collects scripted demonstrations, trains from scratch with Asynchronous Noise Sampling for "
            "--steps, evaluates the policy on held-out seeds, imagines held-out futures in 4D (eval-4d) and "
            "writes OUT/report.html. Every stage is resumable: re-running on the same --out skips finished "
            "stages and resumes training from its last checkpoint."
        ),
    )
    d, q = DemoConfig(), DemoConfig.quick_config()

    def default(name: str, fmt: str = "{}") -> str:
        a, b = getattr(d, name), getattr(q, name)
        return f"(default {fmt.format(a)}" + (f"; --quick: {fmt.format(b)})" if a != b else ")")

    p.add_argument("--task", default=d.task, help=f"simulator task: Lift, Stack or PickPlaceCan {default('task')}")
    p.add_argument("--out", default=d.out, help=f"output folder; re-running on it resumes {default('out')}")
    p.add_argument("--minutes", type=float, default=None,
                   help="optional wall-clock cap on training (default none: training runs its --steps, so the result "
                        "does not depend on the machine's speed); a cap that cuts the schedule is reported loudly "
                        "and marked in the report")
    p.add_argument("--episodes", type=int, default=None, help=f"training demonstrations {default('episodes')}")
    p.add_argument("--perturb", type=float, default=None, metavar="STD",
                   help="recovery demonstrations: std of correlated noise on the executed arm position (1 = 5 cm), "
                        f"the expert's clean command recorded {default('perturb')}")
    p.add_argument("--workers", type=int, default=None,
                   help="simulator processes for collection and evaluation; results do not depend on it "
                        f"(default: one per core, at most 4: {d.workers} here)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help=f"closed-loop episodes on held-out seeds {default('eval_episodes')}")
    p.add_argument("--preset", default=d.preset, help=f"model preset (see `xwam presets`) {default('preset')}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="config override on top of the preset, repeatable (e.g. model.num_layers=6)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps, after which the EMA weights act and imagine {default('steps')}")
    p.add_argument("--batch-size", type=int, default=None, help=f"clips per step {default('batch_size')}")
    p.add_argument("--shift-augment", type=int, default=None, metavar="PIXELS",
                   help=f"random shift of every view by up to PIXELS while training {default('shift_augment')}")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the trainer's from-scratch rate)")
    p.add_argument("--min-lr-ratio", type=float, default=None, metavar="R",
                   help="learning-rate floor as a fraction of --lr: 1 keeps the rate constant after the warm-up "
                        "(the EMA averages the weights), 0 decays it to zero along a cosine over --steps "
                        f"{default('min_lr_ratio', '{:g}')}")
    p.add_argument("--ema-decay", type=float, default=None,
                   help=f"EMA of the weights used to act and imagine, 0 disables it {default('ema_decay', '{:g}')}")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a few-minute end-to-end run with a tiny budget (CI)")
    p.add_argument("--seed", type=int, default=0, help="seed of collection and training (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xwam.demo import DemoConfig, run_demo

    changes = {k: v for k, v in dict(task=args.task, out=args.out, minutes=args.minutes, steps=args.steps, episodes=args.episodes,
                                     eval_episodes=args.eval_episodes, preset=args.preset,
                                     batch_size=args.batch_size, shift_augment=args.shift_augment, lr=args.lr, min_lr_ratio=args.min_lr_ratio, ema_decay=args.ema_decay, threads=args.threads,
                                     seed=args.seed, perturb=args.perturb, workers=args.workers).items() if v is not None}
    cfg = DemoConfig.quick_config(**changes) if args.quick else DemoConfig(**changes)
    if args.set:
        cfg = dataclasses.replace(cfg, overrides=[*cfg.overrides, *args.set])
    run_demo(cfg)
    return 0
