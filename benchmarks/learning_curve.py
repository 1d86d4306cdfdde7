"""Learning curve of one training run: closed-loop success and 4D quality at several checkpoints.

    python benchmarks/learning_curve.py RUN_DIR --data-heldout DIR [--steps 800,1600,2600]
        [--episodes 50] [--baseline BASELINE_RESULTS_JSON] [--out benchmarks/results/learning_curve]

For each step it evaluates the checkpoint's EMA weights (or the raw ones without EMA) with `xwam eval`
(success on held-out seeds 10000..) and `xwam eval-4d` (PSNR, depth AbsRel on held-out episodes,
beside the frozen-present baseline), then writes curve.json and curve.svg (success and PSNR against
training steps; dashed lines: the baselines). Note: the checkpoints of one cosine schedule are not
the same as shorter runs with their own schedules; the curve shows what more steps of one run buy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def evaluate_checkpoint(ckpt: Path, heldout: Path, episodes: int, out: Path, max_steps: int) -> dict[str, Any]:
    from xwam.cli import main

    weights = ckpt / "ema" if (ckpt / "ema").is_dir() else ckpt
    if not (out / "eval" / "results.json").exists():
        assert main(["eval", "--checkpoint", str(weights), "--task", "Lift", "--episodes", str(episodes),
                     "--seed", "10000", "--max-steps", str(max_steps), "--videos", "0", "--out", str(out / "eval")]) == 0
    if not (out / "eval4d" / "metrics.json").exists():
        assert main(["eval-4d", "--checkpoint", str(weights), "--data", str(heldout), "--episodes", ":",
                     "--starts", "2", "--save-clips", "0", "--out", str(out / "eval4d")]) == 0
    success = json.loads((out / "eval" / "results.json").read_text())["tasks"][0]
    metrics = json.loads((out / "eval4d" / "metrics.json").read_text())
    frozen = (metrics.get("summary_baseline_frozen") or {}).get("all") or {}
    return {"success_rate": success["success_rate"], "episodes": success["episodes"],
            "psnr": metrics["summary"]["all"]["mean"]["psnr"], "abs_rel": metrics["summary"]["all"]["mean"]["abs_rel"],
            "frozen_psnr": (frozen.get("mean") or {}).get("psnr"), "frozen_abs_rel": (frozen.get("mean") or {}).get("abs_rel")}


def svg_plot(points: list[dict[str, Any]], blind: float | None, path: Path) -> None:
    """Two panels (success %, PSNR dB) against steps, as a dependency-free SVG."""
    width, height, pad = 760, 300, 50
    steps = [p["step"] for p in points]
    x0, x1 = 0, max(steps) * 1.05

    def panel(ox: int, key: str, scale: float, lo: float, hi: float, label: str, base: float | None) -> str:
        w, h = width / 2 - pad * 1.5, height - 2 * pad

        def xy(step: float, value: float) -> tuple[float, float]:
            return ox + pad + (step - x0) / (x1 - x0) * w, pad + h - (value - lo) / (hi - lo) * h

        parts = [f'<rect x="{ox + pad}" y="{pad}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
                 f'<text x="{ox + pad + w / 2}" y="{pad - 12}" text-anchor="middle" font-size="14">{label}</text>',
                 f'<text x="{ox + pad + w / 2}" y="{height - 12}" text-anchor="middle" font-size="12">training step</text>']
        for frac in (0, 0.5, 1):
            v = lo + frac * (hi - lo)
            _, y = xy(x0, v)
            parts.append(f'<text x="{ox + pad - 6}" y="{y + 4}" text-anchor="end" font-size="11">{v:.0f}</text>')
        for s in steps:
            x, _ = xy(s, lo)
            parts.append(f'<text x="{x}" y="{pad + h + 14}" text-anchor="middle" font-size="11">{s}</text>')
        line = " ".join(f"{xy(p['step'], p[key] * scale)[0]:.1f},{xy(p['step'], p[key] * scale)[1]:.1f}"
                        for p in points if p.get(key) is not None)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
        for p in points:
            if p.get(key) is not None:
                x, y = xy(p["step"], p[key] * scale)
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#1f77b4"/>')
        if base is not None:
            _, y = xy(x0, base * scale)
            parts.append(f'<line x1="{ox + pad}" y1="{y:.1f}" x2="{ox + pad + w}" y2="{y:.1f}" stroke="#d62728" '
                         'stroke-dasharray="6,4"/>')
        return "".join(parts)

    frozen = [p["frozen_psnr"] for p in points if p.get("frozen_psnr") is not None]
    psnrs = [p["psnr"] for p in points if p.get("psnr") is not None] + frozen
    body = panel(0, "success_rate", 100, 0, 100, "Lift success (%); dashed: blind replay", blind)
    body += panel(width // 2, "psnr", 1, 0, max(30, max(psnrs, default=30)), "PSNR (dB); dashed: frozen present",
                  frozen[0] if frozen else None)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                    f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}</svg>\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run folder (holds checkpoints/step-*)")
    parser.add_argument("--data-heldout", type=Path, required=True, help="held-out episodes for eval-4d")
    parser.add_argument("--steps", default="", help="comma list of checkpoint steps (default: all kept)")
    parser.add_argument("--episodes", type=int, default=50, help="closed-loop episodes per checkpoint")
    parser.add_argument("--max-steps", type=int, default=120, help="step limit per episode (the demo's)")
    parser.add_argument("--baseline", type=Path, default=None, help="results.json of the blind-replay baseline")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "learning_curve")
    args = parser.parse_args()
    ckpts = {int(p.name.split("-")[1]): p for p in (args.run / "checkpoints").glob("step-*") if p.is_dir()}
    wanted = [int(s) for s in args.steps.split(",") if s.strip()] or sorted(ckpts)
    missing = [s for s in wanted if s not in ckpts]
    if missing:
        raise SystemExit(f"no checkpoint for steps {missing}; kept: {sorted(ckpts)}")
    work = args.out / "work"
    points = []
    for step in wanted:
        print(f"== step {step}", flush=True)
        points.append({"step": step, **evaluate_checkpoint(ckpts[step], args.data_heldout, args.episodes,
                                                           work / f"step-{step}", args.max_steps)})
    blind = None
    if args.baseline:
        blind = json.loads(args.baseline.read_text())["tasks"][0]["success_rate"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(json.dumps({"run": str(args.run), "points": points,
                                                     "blind_replay": blind}, indent=2) + "\n")
    svg_plot(points, blind, args.out / "curve.svg")
    for p in points:
        print(p)
    print(f"wrote {args.out / 'curve.json'} and {args.out / 'curve.svg'}")


if __name__ == "__main__":
    main()
