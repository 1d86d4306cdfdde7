"""Learning curve of one training run: closed-loop success, 4D quality and the vision check at several checkpoints.

    python benchmarks/learning_curve.py RUN_DIR --data-heldout DIR [--steps 800,1600,2600]
        [--episodes 50] [--workers 2] [--baseline BASELINE_RESULTS_JSON] [--out benchmarks/results/learning_curve]

For each step it evaluates the checkpoint's EMA weights (or the raw ones without EMA) with the demo's
own stages and settings: closed-loop success on held-out seeds 10000.. (``eval_policy``; skipped with
``--episodes 0``), eval-4d on the held-out episodes beside the frozen-present baseline (``eval_4d``) and
the open-loop vision check (``vision_check``: action error with another episode's images over the
error with the true ones, target 2). It writes curve.json and curve.svg (success, PSNR and the vision
ratio against training steps; dashed lines: blind replay, frozen present, the ratio's target).
Finished stages are kept under OUT/work and not rerun. Note: the checkpoints of one cosine schedule
are not the same as shorter runs with their own schedules; the curve shows what more steps of one
run buy.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from xwam.atomic import atomic_write_json


def evaluate_checkpoint(ckpt: Path, heldout: Path, episodes: int, out: Path, max_steps: int | None,
                        workers: int = 1, task: str = "Lift", eval_seed: int = 10_000,
                        vision_seed: int = 0) -> dict[str, Any]:
    """One checkpoint through the demo's eval, eval-4d and diagnose stages (the same functions and
    settings; the defaults are the demo's task and seeds). Writes OUT/eval, OUT/eval4d, OUT/diagnose."""
    from xwam.commands.eval import eval_policy
    from xwam.commands.imagine import eval_4d
    from xwam.diagnose import errors_by_start, vision_check

    weights = ckpt / "ema" if (ckpt / "ema").is_dir() else ckpt
    point: dict[str, Any] = {"success_rate": None, "episodes": 0}
    if episodes > 0:
        if not (out / "eval" / "results.json").exists():
            eval_policy(weights, tasks=[task], episodes=episodes, seed=eval_seed, max_steps=max_steps,
                        videos=0, out=out / "eval", workers=workers)
        success = json.loads((out / "eval" / "results.json").read_text())["tasks"][0]
        point.update(success_rate=success["success_rate"], episodes=success["episodes"])
    if not (out / "eval4d" / "metrics.json").exists():
        eval_4d(weights, heldout, out / "eval4d", episodes=":", starts=2, save_clips=0)
    metrics = json.loads((out / "eval4d" / "metrics.json").read_text())
    frozen = ((metrics.get("summary_baseline_frozen") or {}).get("all") or {}).get("mean") or {}
    point.update(psnr=metrics["summary"]["all"]["mean"]["psnr"], abs_rel=metrics["summary"]["all"]["mean"]["abs_rel"],
                 frozen_psnr=frozen.get("psnr"), frozen_abs_rel=frozen.get("abs_rel"))
    if not (out / "diagnose" / "diagnose.json").exists():
        vision_check(weights, heldout, seed=vision_seed, out=out / "diagnose", progress=False)
    vision = json.loads((out / "diagnose" / "diagnose.json").read_text())
    point.update(vision_ratio=vision["ratios"]["other_images/true"],
                 action_mae_true=vision["conditions"]["true"]["mae"],
                 action_mae_other_images=vision["conditions"]["other_images"]["mae"],
                 action_mae_blind_chunk=vision["conditions"]["blind_chunk"]["mae"])
    # the first chunk of each episode (planned from rest) apart from the later ones (recomputed from the
    # clips, so diagnose.json files written before the split count too)
    for group, row in errors_by_start(vision["clips"]).items():
        suffix = "first_chunk" if group == "first" else "later_chunks"
        point.update({f"vision_ratio_{suffix}": row["other_images/true"],
                      f"action_mae_true_{suffix}": row["mae"]["true"],
                      f"action_mae_other_images_{suffix}": row["mae"]["other_images"]})
    return point


def svg_plot(points: list[dict[str, Any]], blind: float | None, path: Path) -> None:
    """Up to three panels (success %, PSNR dB, vision ratio) against steps, as a dependency-free SVG.

    Dashed lines are each panel's reference: blind replay, the frozen present, the ratio's target of 2.
    The ratio panel adds the first chunks of the episodes (orange) and the later ones (green) where
    measured. A panel whose quantity no point measured is left out."""
    panel_w, height, pad = 380, 300, 50
    steps = [p["step"] for p in points]
    x0, x1 = 0, max(steps) * 1.05
    frozen = next((p["frozen_psnr"] for p in points if p.get("frozen_psnr") is not None), None)
    psnrs = [p["psnr"] for p in points if p.get("psnr") is not None] + ([frozen] if frozen is not None else [])
    ratio_keys = ("vision_ratio", "vision_ratio_first_chunk", "vision_ratio_later_chunks")
    ratios = [p[k] for p in points for k in ratio_keys if p.get(k) is not None]
    panels = [  # key, scale, lo, hi, label, reference, tick format
        ("success_rate", 100, 0, 100, "Lift success (%); dashed: blind replay",
         None if blind is None else blind * 100, "{:.0f}"),
        ("psnr", 1, math.floor(min(psnrs, default=0)) - 1, math.ceil(max(psnrs, default=30)) + 1,
         "PSNR all views (dB); dashed: frozen present", frozen, "{:.1f}"),
        ("vision_ratio", 1, 0, max(2.5, max(ratios, default=0) + 0.25),
         "vision ratio (other / true images); dashed: 2", 2.0, "{:.1f}"),
    ]
    panels = [q for q in panels if any(p.get(q[0]) is not None for p in points)]

    def panel(ox: int, key: str, scale: float, lo: float, hi: float, label: str, ref: float | None, fmt: str) -> str:
        w, h = panel_w - pad * 1.5, height - 2 * pad

        def xy(step: float, value: float) -> tuple[float, float]:
            return ox + pad + (step - x0) / (x1 - x0) * w, pad + h - (value - lo) / (hi - lo) * h

        parts = [f'<rect x="{ox + pad}" y="{pad}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
                 f'<text x="{ox + pad + w / 2}" y="{pad - 12}" text-anchor="middle" font-size="13">{label}</text>',
                 f'<text x="{ox + pad + w / 2}" y="{height - 12}" text-anchor="middle" font-size="12">training step</text>']
        for frac in (0, 0.5, 1):
            v = lo + frac * (hi - lo)
            _, y = xy(x0, v)
            parts.append(f'<text x="{ox + pad - 6}" y="{y + 4}" text-anchor="end" font-size="11">{fmt.format(v)}</text>')
        for s in steps:
            x, _ = xy(s, lo)
            parts.append(f'<text x="{x}" y="{pad + h + 14}" text-anchor="middle" font-size="11">{s}</text>')
        series = [(key, "#1f77b4", "all clips")]
        if key == "vision_ratio":
            series += [("vision_ratio_first_chunk", "#ff7f0e", "first chunks"),
                       ("vision_ratio_later_chunks", "#2ca02c", "later chunks")]
        legend_y = pad + 14
        for series_key, colour, name in series:
            measured = [(p["step"], p[series_key] * scale) for p in points if p.get(series_key) is not None]
            if not measured:
                continue
            line = " ".join(f"{xy(st, v)[0]:.1f},{xy(st, v)[1]:.1f}" for st, v in measured)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for st, v in measured:
                x, y = xy(st, v)
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>')
            if len(series) > 1:
                parts.append(f'<text x="{ox + pad + 6}" y="{legend_y}" font-size="11" fill="{colour}">{name}</text>')
                legend_y += 13
        if ref is not None:
            _, y = xy(x0, ref)
            parts.append(f'<line x1="{ox + pad}" y1="{y:.1f}" x2="{ox + pad + w}" y2="{y:.1f}" stroke="#d62728" '
                         'stroke-dasharray="6,4"/>')
        return "".join(parts)

    body = "".join(panel(i * panel_w, *q) for i, q in enumerate(panels))
    width = panel_w * len(panels)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                    f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}</svg>\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run folder (holds checkpoints/step-*)")
    parser.add_argument("--data-heldout", type=Path, required=True, help="held-out episodes for eval-4d")
    parser.add_argument("--steps", default="", help="comma list of checkpoint steps (default: all kept)")
    parser.add_argument("--episodes", type=int, default=50,
                        help="closed-loop episodes per checkpoint (0: no closed-loop evaluation)")
    parser.add_argument("--workers", type=int, default=2, help="evaluation processes (the demo's 2)")
    parser.add_argument("--max-steps", type=int, default=120, help="step limit per episode (the demo's)")
    parser.add_argument("--baseline", type=Path, default=None, help="results.json of the blind-replay baseline")
    parser.add_argument("--note", default="", help="what the run is (stored in curve.json)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "learning_curve")
    args = parser.parse_args()
    if not (args.run / "checkpoints").is_dir():
        raise SystemExit(f"{args.run}: not a training run folder (no checkpoints/)")
    from xwam.train.checkpoints import step_folders, step_of

    ckpts = {step_of(p): p for p in step_folders(args.run / "checkpoints")}
    wanted = [int(s) for s in args.steps.split(",") if s.strip()] or sorted(ckpts)
    missing = [s for s in wanted if s not in ckpts]
    if missing:
        raise SystemExit(f"no checkpoint for steps {missing}; kept: {sorted(ckpts)}")
    work = args.out / "work"
    points = []
    for step in wanted:
        print(f"== step {step}", flush=True)
        points.append({"step": step, **evaluate_checkpoint(ckpts[step], args.data_heldout, args.episodes,
                                                           work / f"step-{step}", args.max_steps, args.workers)})
    blind = None
    if args.baseline:
        blind = json.loads(args.baseline.read_text())["tasks"][0]["success_rate"]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.run / "train_summary.json"  # steps and training time, since results are budgeted in steps
    training = json.loads(summary.read_text()) if summary.exists() else None
    atomic_write_json(args.out / "curve.json", {"run": str(args.run), "note": args.note, "training": training,
                                                "points": points, "blind_replay": blind})
    svg_plot(points, blind, args.out / "curve.svg")
    for p in points:
        print(p)
    print(f"wrote {args.out / 'curve.json'} and {args.out / 'curve.svg'}")


if __name__ == "__main__":
    main()
