"""Which average of a run's weights acts best? Post-hoc averages of its snapshots through the vision check.

    python benchmarks/weight_averages.py RUN_DIR --data-heldout DIR [--at 2600]
        [--average raw ema pow:8 pow:2 exp:1000 ...] [--out runs/weight_averages]

The run must keep dense raw snapshots (``xwam train --save-every 100 --keep-last 30``). Each average
is a weighted mean of the raw weights of every kept snapshot up to step ``--at``:

- ``raw``: the snapshot at ``--at`` alone; ``ema``: the run's own EMA at ``--at`` (no averaging here);
- ``pow:G``: weights ``step ** G`` (a power-function average; our EMA's warm-up
  ``(1 + s) / (10 + s)`` behaves like G = 8 until its decay cap);
- ``exp:N``: weights ``(1 - 1 / N) ** (at - step)``, an exponential window of about N steps,
  normalised (no share of the initial weights).

Snapshots stand for the ``--save-every`` steps around them, so windows much shorter than that
spacing are not resolved. Each average is written as a checkpoint (the snapshot's config, statistics
and codec) and scored by the vision check (``xwam.diagnose.vision_check``, 4 clips per episode,
seed 0, like the demo): the error with the true images, with another episode's images, and their
ratio. Writes weight_averages.json beside the checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from xwam.atomic import atomic_write_dir, atomic_write_json
from xwam.config import XWAMConfig
from xwam.model.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    STATS_FILE,
    load_codec_state,
    write_checkpoint_files,
    write_manifest,
)


def snapshots(run: Path, at: int) -> dict[int, Path]:
    """Kept checkpoint folders of ``run`` by step, up to ``at``."""
    from xwam.train.checkpoints import step_folders, step_of

    return dict(sorted((step_of(p), p) for p in step_folders(run / "checkpoints") if step_of(p) <= at))


def average_weights(spec: str, steps: list[int], at: int) -> dict[int, float]:
    """Normalised weight of each snapshot step for one ``--average`` spec (raw, pow:G, exp:N)."""
    kind, _, arg = spec.partition(":")
    if kind == "raw":
        raw = {s: float(s == at) for s in steps}
    elif kind == "pow":
        raw = {s: float(s) ** float(arg) for s in steps}
    elif kind == "exp":
        window = float(arg)
        if window <= 1:
            raise ValueError(f"exp:N needs a window N > 1 steps, got {spec!r}")
        raw = {s: (1 - 1 / window) ** (at - s) for s in steps}
    else:
        raise ValueError(f"unknown average {spec!r}: use raw, ema, pow:G or exp:N")
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"average {spec!r} gives no weight to any snapshot")
    return {s: w / total for s, w in raw.items() if w > 0}


def write_average(snaps: dict[int, Path], weights: dict[int, float], at: int, target: Path) -> Path:
    """A loadable checkpoint whose weights are the ``weights``-mean of the snapshots' raw weights."""
    states = {s: load_file(str(snaps[s] / MODEL_FILE)) for s in weights}
    mean = {}
    for key, value in states[at].items():  # every average weighs the snapshot at ``at``
        if value.is_floating_point():
            acc = sum(states[s][key].double() * w for s, w in weights.items())
            mean[key] = acc.to(value.dtype).contiguous()
        else:
            mean[key] = value
    source = snaps[at]
    config = XWAMConfig.from_json(source / CONFIG_FILE)
    stats = json.loads((source / STATS_FILE).read_text()) if (source / STATS_FILE).exists() else None

    def write(tmp: Path) -> None:
        write_checkpoint_files(tmp, mean, config, stats, codec_state=load_codec_state(source))
        write_manifest(tmp)

    return atomic_write_dir(target, write)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="training run folder (its checkpoints/step-* are the snapshots)")
    p.add_argument("--data-heldout", type=Path, required=True, help="held-out episodes for the vision check")
    p.add_argument("--at", type=int, default=None, help="the step averaged up to (default: the last snapshot)")
    p.add_argument("--average", nargs="+", default=["raw", "ema", "pow:8", "pow:4", "pow:2", "exp:500", "exp:1000"])
    p.add_argument("--out", type=Path, default=Path("runs/weight_averages"),
                   help="where the averaged checkpoints (one per average, full size) and the JSON go")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from xwam.diagnose import vision_check

    snaps = snapshots(args.run, args.at if args.at is not None else 10**12)
    if not snaps:
        raise SystemExit(f"{args.run} has no checkpoints/step-* folders")
    at = max(snaps) if args.at is None else args.at
    if at not in snaps:
        raise SystemExit(f"{args.run} keeps no snapshot at step {at} (kept: {list(snaps)})")
    rows: dict[str, Any] = {}
    for spec in args.average:
        folder = args.out / "checkpoints" / spec.replace(":", "_")
        if spec == "ema":
            if not (snaps[at] / "ema").is_dir():
                raise SystemExit(f"{snaps[at]} has no ema/ weights")
            weights: dict[int, float] = {}
            checkpoint = snaps[at] / "ema"
        else:
            weights = average_weights(spec, list(snaps), at)
            checkpoint = write_average(snaps, weights, at, folder)
        result = vision_check(checkpoint, args.data_heldout, out=args.out / "diagnose" / spec.replace(":", "_"),
                              progress=False)
        true, other = (result["conditions"][c]["mae"] for c in ("true", "other_images"))
        rows[spec] = {"snapshots": len(weights) or None, "true_mae": true, "other_images_mae": other,
                      "ratio": result["ratios"]["other_images/true"], "by_start": result["by_start"]}
        print(f"{spec:>10}: action MAE true {true:.4f}, other images {other:.4f}, "
              f"ratio {rows[spec]['ratio']:.3f}", flush=True)
    atomic_write_json(args.out / "weight_averages.json", {
        "run": str(args.run), "data_heldout": str(args.data_heldout), "at": at,
        "snapshot_steps": list(snaps), "averages": rows})
    print(f"wrote {args.out / 'weight_averages.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
