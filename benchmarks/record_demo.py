"""Record the numbers of one `xwam demo` run, each beside its baseline, as JSON in benchmarks/results/.

    python benchmarks/record_demo.py runs/demo [--out benchmarks/results/demo_lift_cpu.json]

Reads what the demo's stages wrote (closed-loop success and the blind-replay baseline on the same
seeds, eval-4d of the model and of the frozen-present baseline on the same clips, the vision check,
training steps and time, the codec's reconstruction PSNR) and writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from xwam.atomic import atomic_write_json


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def collect(demo: Path) -> dict[str, Any]:
    config = _read(demo / "demo_config.json")
    if config is None:
        raise SystemExit(f"{demo} is not an `xwam demo` folder (no demo_config.json)")
    record: dict[str, Any] = {"demo": str(demo), "config": config, "machine": platform.machine(),
                              "processor": platform.processor() or None}
    stages = {p.stem: _read(p) for p in sorted((demo / "stages").glob("*.json"))}
    record["stage_seconds"] = {k: round(v["seconds"], 1) for k, v in stages.items() if v and "seconds" in v}
    record["train"] = _read(demo / "run" / "train_summary.json")
    record["codec"] = _read(demo / "run" / "codec_fit.json")
    policy, blind = _read(demo / "eval" / "results.json"), _read(demo / "baseline" / "results.json")
    if policy:
        task = policy["tasks"][0]
        record["success"] = {"policy": task["success_rate"], "policy_successes": task["successes"],
                             "episodes": task["episodes"], "seeds": [task["seeds"][0], task["seeds"][-1]],
                             "mean_chunk_ms": task["mean_chunk_ms"]}
        if blind:
            record["success"]["blind_replay"] = blind["tasks"][0]["success_rate"]
            record["success"]["margin_points"] = round(100 * (task["success_rate"] - blind["tasks"][0]["success_rate"]), 1)
    eval4d = _read(demo / "eval4d" / "metrics.json")
    if eval4d:
        record["eval_4d"] = {"clips": len(eval4d["clips"]),
                             "model": {g: b["mean"] for g, b in eval4d["summary"].items() if b},
                             "model_expected": {g: b["mean"] for g, b in (eval4d.get("summary_expected") or {}).items() if b},
                             "frozen_present": {g: b["mean"] for g, b in (eval4d.get("summary_baseline_frozen") or {}).items() if b}}
    vision = _read(demo / "diagnose" / "diagnose.json")
    if vision:
        record["vision_check"] = {"clips": vision["num_clips"], "mae": {k: v["mae"] for k, v in vision["conditions"].items()},
                                  "ratios": vision["ratios"], "mae_per_dimension": vision.get("per_dimension"),
                                  "per_dimension_ratios": vision.get("per_dimension_other_images/true")}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="the folder of a finished `xwam demo` run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_lift_cpu.json")
    args = parser.parse_args()
    record = collect(args.demo)
    atomic_write_json(args.out, record)
    print(json.dumps({k: record.get(k) for k in ("success", "eval_4d", "vision_check")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
