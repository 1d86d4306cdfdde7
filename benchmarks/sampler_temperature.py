"""Sampling temperature on a finished `xwam demo` run: 4D quality, the vision check and closed-loop
success of one checkpoint sampled at several temperatures, each beside its baseline.

    python benchmarks/sampler_temperature.py runs/demo [--out benchmarks/results/sampler_temperature/results.json]

For every (video, action) temperature pair the demo's checkpoint is copied with those sampler
defaults (`xwam convert xwam:... --set sampler.video_temperature=...`), then scored by the demo's
own stages on the demo's own data: eval-4d on the held-out clips (the frozen present is the same
for every row), the vision check, and, for the pairs in --closed-loop, closed-loop success on the
demo's held-out seeds. The model is the same in every row; only the starting noise is scaled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from xwam.atomic import atomic_write_json
from xwam.cli import main as xwam
from xwam.train import latest_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from learning_curve import evaluate_checkpoint  # noqa: E402  (the demo's stages on one checkpoint)

SWEEP = [(1.0, 1.0), (0.8, 1.0), (0.6, 1.0), (0.5, 1.0), (0.4, 1.0), (0.0, 1.0),
         (1.0, 0.5), (1.0, 0.0), (0.5, 0.5)]
CLOSED_LOOP = [(1.0, 1.0), (0.5, 0.5)]


def _means(summary: dict[str, Any]) -> dict[str, Any]:
    return {group: {k: block["mean"][k] for k in ("psnr", "ssim", "abs_rel", "chamfer")}
            for group, block in summary.items() if block}


def run(demo: Path, work: Path, sweep: list[tuple[float, float]], closed_loop: list[tuple[float, float]]) -> dict:
    config = json.loads((demo / "demo_config.json").read_text())
    source = latest_checkpoint(demo / "run")
    if source is None:
        raise SystemExit(f"{demo / 'run'} holds no finished checkpoint: run `xwam demo` first")
    if (source / "ema").is_dir():  # the averaged weights act and imagine, as in the demo
        source = source / "ema"
    rows = []
    for video_t, action_t in sweep:
        name = f"video{video_t:g}_action{action_t:g}"
        ckpt = work / name / "checkpoint"
        t0 = time.time()
        if not ckpt.is_dir():
            assert xwam(["convert", f"xwam:{source}", "--out", str(ckpt), "--set",
                         f"sampler.video_temperature={video_t}", "--set", f"sampler.action_temperature={action_t}"]) == 0
        episodes = config["eval_episodes"] if (video_t, action_t) in closed_loop else 0
        point = evaluate_checkpoint(ckpt, demo / "heldout", episodes, work / name, config.get("eval_max_steps") or None,
                                    workers=config.get("workers", 2), task=config["task"],
                                    eval_seed=config["eval_seed"], vision_seed=config.get("seed", 0))
        metrics = json.loads((work / name / "eval4d" / "metrics.json").read_text())
        vision = json.loads((work / name / "diagnose" / "diagnose.json").read_text())
        row = {"video_temperature": video_t, "action_temperature": action_t,
               "eval_4d": {"sample": _means(metrics["summary"]), "expected": _means(metrics["summary_expected"]),
                           "frozen_present": _means(metrics["summary_baseline_frozen"])},
               "vision_check": {"mae": {k: v["mae"] for k, v in vision["conditions"].items()},
                                "ratios": vision["ratios"]}}
        if episodes:
            row["success"] = {"rate": point["success_rate"], "episodes": point["episodes"]}
        row["seconds"] = time.time() - t0
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("video_temperature", "action_temperature")}
                         | {"psnr_all": row["eval_4d"]["sample"]["all"]["psnr"],
                            "vision_ratio": row["vision_check"]["ratios"]["other_images/true"],
                            "success": row.get("success")}))
    baseline = json.loads((demo / "baseline" / "results.json").read_text())["tasks"][0]
    return {"demo": str(demo), "checkpoint": str(source), "rows": rows,
            "blind_replay": {"rate": baseline["success_rate"], "episodes": baseline["episodes"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="the folder of a finished `xwam demo` run")
    parser.add_argument("--work", type=Path, default=None, help="where the copies and outputs go (default DEMO/temperature)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "sampler_temperature" / "results.json")
    parser.add_argument("--no-closed-loop", action="store_true", help="skip the closed-loop evaluations (~2 min each)")
    args = parser.parse_args()
    record = run(args.demo, args.work or args.demo / "temperature", SWEEP, [] if args.no_closed_loop else CLOSED_LOOP)
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
