"""`xwam diagnose`: does the policy use its cameras? Action-chunk error under swapped inputs."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Measures a checkpoint's action-chunk error on clips of a dataset (usually held-out episodes) under
four conditions, on the same clips and with the same sampler noise (clip i seeds the policy with
seed + i for every condition), so the rows differ only in what the policy is shown:

  true          the clip's own current images (every view), state and instruction
  other_images  the images of another episode at the same time index, with the true state
  other_state   the true images with another episode's state at that time index
  blind_chunk   no model: the other episode's recorded chunk at that time index is the prediction
                (what a policy that ignores the observation would score)

"Another episode" pairs the selected episodes cyclically (each with the next, the last with the
first), so at least 2 are needed; its time index is the clip's start clamped to its last full chunk.
Starts are --clips-per-episode evenly spaced frames where a full chunk of recorded actions exists.
Errors are mean absolute (MAE) and squared (MSE) differences to the recorded chunk in normalised
action units (the checkpoint's statistics), over the valid action dimensions and the chunk,
averaged over clips; diagnose.md adds them per action dimension and split by where the clip
starts (the first chunk of each episode, planned from rest, vs the later ones).

Reading the ratios: other_images / true near 1 means the chunk hardly depends on the cameras (the
target is >= 2); other_state / true shows how much the state drives it; if true is not clearly
below blind_chunk the policy does no better than replaying another demonstration.
Writes diagnose.json and diagnose.md to --out and prints the table.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose",
        help="does the policy use its cameras? chunk error with true vs another episode's images/state",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="xwam checkpoint folder")
    p.add_argument("--data", required=True, help="dataset folder (LeRobot v3 or X-WAM release layout)")
    p.add_argument("--episodes", default=None,
                   help="episode indices: a Python-style slice like -5: or a comma list like 0,3 (default: all)")
    p.add_argument("--clips-per-episode", type=int, default=4,
                   help="clip starts per episode, evenly spaced (default 4)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed: clip i uses seed + i (default 0)")
    p.add_argument("--out", default="out/diagnose", help="output folder (default out/diagnose)")
    p.add_argument("--sampler", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the checkpoint's sampler config, e.g. --sampler action_steps=10 "
                        "--sampler action_temperature=0 (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); use 1 per process when running several side by side")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xwam.diagnose import markdown, vision_check

    result = vision_check(args.checkpoint, args.data, episodes=args.episodes,
                          clips_per_episode=args.clips_per_episode, seed=args.seed, out=args.out,
                          device=args.device, sampler=args.sampler)
    print(markdown(result))
    out = Path(args.out)
    print(f"wrote {out / 'diagnose.json'} and {out / 'diagnose.md'}")
    return 0
