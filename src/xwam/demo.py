"""`xwam demo`: learn a task from scratch on a CPU, act in closed loop, imagine the future in 4D.

Stages (each resumable: a finished stage is skipped when the demo is run again on the same folder):

1. collect  scripted expert demonstrations in robosuite (3 RGB-D cameras) -> ``data/``, plus a few
            held-out episodes for 4D evaluation -> ``heldout/``;
2. train    the ``small`` preset from scratch with the ANS objective for ``--minutes`` -> ``run/``;
3. eval     the policy in closed loop on held-out seeds -> ``eval/``;
4. imagine  4D futures and their quality on held-out episodes (eval-4d) -> ``eval4d/``;
5. report   one offline HTML report -> ``report.html``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("collect", "train", "eval", "imagine", "report")


@dataclass
class DemoConfig:
    task: str = "Lift"
    out: str = "runs/demo"
    preset: str = "small"
    overrides: list[str] = field(default_factory=list)
    episodes: int = 60  # training demonstrations
    heldout_episodes: int = 3  # for eval-4d
    eval_episodes: int = 50
    eval_seed: int = 10_000  # collection uses seeds 0.., held-out episodes 100000..
    minutes: float = 14.0  # training wall-clock budget (a final checkpoint is written when it runs out)
    steps: int = 2600  # the cosine schedule spans these; about what 14 min give on two cores (~3 steps/s)
    batch_size: int = 8
    lr: float | None = None
    ema_decay: float = 0.999  # > 0: keep an EMA of the weights (warmed up) and act / imagine with it
    replan_every: int | None = None
    eval_max_steps: int | None = 120  # the expert needs ~40 steps; failures stop here, not at the horizon
    videos: int = 3
    threads: int | None = None
    quick: bool = False
    seed: int = 0

    @classmethod
    def quick_config(cls, **changes: Any) -> DemoConfig:
        """A few-minute end-to-end run (CI): tiny data, short training, few episodes."""
        base = dict(episodes=4, heldout_episodes=1, eval_episodes=2, minutes=0.75, steps=30, batch_size=2,
                    eval_max_steps=24, videos=1, quick=True,
                    overrides=["model.num_layers=2", "model.depth_layers=1", "model.num_heads=2",
                               "model.head_dim=32", "model.ffn_dim=128"])
        base.update(changes)
        return cls(**base)


class Stage:
    """Marks a stage done (with its summary) so a re-run skips it."""

    def __init__(self, root: Path, name: str, index: int, started: float) -> None:
        self.root, self.name, self.index = root, name, index
        self.marker = root / "stages" / f"{name}.json"
        self.started = started

    @property
    def done(self) -> bool:
        return self.marker.exists()

    def summary(self) -> dict[str, Any]:
        return json.loads(self.marker.read_text()) if self.done else {}

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        tmp.replace(self.marker)
        return summary

    def announce(self, text: str, estimate_s: float | None = None) -> None:
        elapsed = time.time() - self.started
        eta = f", about {estimate_s / 60:.1f} min" if estimate_s else ""
        print(f"\n[{self.index}/{len(STAGES)}] {self.name}: {text} (elapsed {elapsed / 60:.1f} min{eta})", flush=True)


def run_demo(cfg: DemoConfig) -> Path:
    from xwam.cli import main as cli

    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    started = time.time()
    stage = {name: Stage(root, name, i + 1, started) for i, name in enumerate(STAGES)}
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    from xwam.config import get_preset

    preset = get_preset(cfg.preset).override(cfg.overrides)
    m = preset.model
    cams = m.camera_names or None
    timings: dict[str, float] = {}

    # 1. collect ------------------------------------------------------------------------------
    s = stage["collect"]
    t0 = time.time()
    if s.done:
        s.announce("already done, skipped")
    else:
        s.announce(f"{cfg.episodes} {cfg.task} demonstrations + {cfg.heldout_episodes} held-out, "
                   f"{m.image_height}x{m.image_width}, 3 RGB-D cameras",
                   # measured: ~3.6 s per Lift episode at 64x64, ~6.4 s at 128x128
                   estimate_s=3.6 * (cfg.episodes + cfg.heldout_episodes) * (m.image_height * m.image_width / 4096) ** 0.5)
        common = ["--task", cfg.task, "--height", str(m.image_height), "--width", str(m.image_width)]
        if cams:
            common += ["--cameras", *cams]
        if cfg.quick:
            common += ["--max-steps", "60"]
        _check(cli(["collect", *common, "--episodes", str(cfg.episodes), "--out", str(root / "data"),
                    "--seed", str(cfg.seed)]), "collect")
        _check(cli(["collect", *common, "--episodes", str(cfg.heldout_episodes), "--out", str(root / "heldout"),
                    "--seed", str(100_000 + cfg.seed)]), "collect held-out")
        s.finish({"seconds": time.time() - t0})
    timings["collect"] = s.summary().get("seconds", 0.0)

    # 2. train --------------------------------------------------------------------------------
    s = stage["train"]
    t0 = time.time()
    if s.done:
        s.announce("already done, skipped")
    else:
        from xwam.train import latest_checkpoint, train

        run_dir = root / "run"
        resume = "latest" if latest_checkpoint(run_dir) is not None else None
        s.announce(f"preset {cfg.preset} from scratch with ANS, up to {cfg.minutes:g} min"
                   + (" (resuming)" if resume else ""), estimate_s=cfg.minutes * 60)
        ckpt = train(data=[str(root / "data")], out=str(run_dir), preset=cfg.preset, overrides=list(cfg.overrides),
                     steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, max_minutes=cfg.minutes,
                     cache_latents=True, seed=cfg.seed, save_every=200, threads=cfg.threads, resume=resume,
                     val_images=False, ema_decay=cfg.ema_decay)
        s.finish({"seconds": time.time() - t0, "checkpoint": str(ckpt)})
    timings["train"] = s.summary().get("seconds", 0.0)
    checkpoint = Path(s.summary()["checkpoint"])
    if cfg.ema_decay > 0 and (checkpoint / "ema").is_dir():
        checkpoint = checkpoint / "ema"  # the averaged weights act and imagine

    # 3. eval ---------------------------------------------------------------------------------
    s = stage["eval"]
    t0 = time.time()
    if s.done:
        s.announce("already done, skipped")
    else:
        s.announce(f"{cfg.eval_episodes} closed-loop episodes on held-out seeds {cfg.eval_seed}..",
                   estimate_s=8.0 * cfg.eval_episodes)
        args = ["eval", "--checkpoint", str(checkpoint), "--task", cfg.task, "--episodes", str(cfg.eval_episodes),
                "--seed", str(cfg.eval_seed), "--videos", str(cfg.videos), "--out", str(root / "eval")]
        if cfg.replan_every:
            args += ["--replan-every", str(cfg.replan_every)]
        if cfg.eval_max_steps:
            args += ["--max-steps", str(cfg.eval_max_steps)]
        _check(cli(args), "eval")
        s.finish({"seconds": time.time() - t0})
    timings["eval"] = s.summary().get("seconds", 0.0)

    # 4. imagine + eval-4d ----------------------------------------------------------------------
    s = stage["imagine"]
    t0 = time.time()
    if s.done:
        s.announce("already done, skipped")
    else:
        s.announce("4D futures of held-out episodes and their quality (eval-4d)", estimate_s=60)
        args = ["eval-4d", "--checkpoint", str(checkpoint), "--data", str(root / "heldout"), "--episodes", ":",
                "--starts", "2", "--save-clips", "2", "--out", str(root / "eval4d")]
        _check(cli(args), "eval-4d")
        s.finish({"seconds": time.time() - t0})
    timings["imagine"] = s.summary().get("seconds", 0.0)

    # 5. report -------------------------------------------------------------------------------
    s = stage["report"]
    s.announce("writing the HTML report")
    path = write_report(root, cfg, checkpoint, timings, total_s=sum(timings.values()))
    s.finish({"report": str(path)})
    print(f"\nreport: {path}")
    return path


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"the {what} stage failed (exit code {code}); fix the cause and re-run the demo to resume")


def write_report(root: Path, cfg: DemoConfig, checkpoint: Path, timings: dict[str, float], total_s: float) -> Path:
    from xwam.viz import HtmlReport

    report = HtmlReport(f"xwam demo: {cfg.task}")
    report.add_text(
        f"Learned from scratch on this machine: {cfg.episodes} scripted demonstrations, preset {cfg.preset}, "
        f"up to {cfg.minutes:g} min of training with Asynchronous Noise Sampling, then {cfg.eval_episodes} closed-loop "
        f"episodes on held-out seeds and 4D imagination of held-out episodes. Total {total_s / 60:.1f} min."
    )
    results = _read_json(root / "eval" / "results.json")
    if results:
        report.add_heading("Closed-loop success", level=2)
        report.add_table(
            [{k: v for k, v in t.items() if k != "seeds"} | {"seeds": f"{t['seeds'][0]}..{t['seeds'][-1]}"}
             for t in results["tasks"]])
        for video in sorted((root / "eval").glob("*/videos/*.mp4"))[: cfg.videos]:
            report.add_text(video.stem.replace("_", " "))
            report.add_video(video, width=640)
    metrics = _read_metrics(root / "run" / "metrics.jsonl")
    if metrics:
        report.add_heading("Training losses", level=2)
        curves = {}
        for key in ("loss", "loss_video", "loss_action", "loss_state", "loss_depth"):
            # batches whose actions were all given clean have no action/state loss: skip those zeros
            pts = [(r["step"], r[key]) for r in metrics if r.get(key) and r.get("split") != "val"]
            if pts:
                steps, values = zip(*pts)
                curves[key] = (list(steps), running_mean(list(values), window=max(1, len(values) // 50)))
        if curves:
            report.add_line_plot(curves, log_y=True)
        last = [r for r in metrics if "samples_per_s" in r]
        if last:
            report.add_text(f"{last[-1]['step']} steps; last throughput {last[-1]['samples_per_s']:.2f} samples/s.")
    eval4d = _read_json(root / "eval4d" / "metrics.json")
    if eval4d:
        report.add_heading("4D quality on held-out episodes (predicted frames)", level=2)
        rows = []
        for group, block in eval4d["summary"].items():
            rows.append({"views": group, **{k: (None if v is None else round(v, 4)) for k, v in block["mean"].items()}})
        report.add_table(rows)
        for clip in sorted((root / "eval4d").glob("episode*"))[:2]:
            report.add_heading(f"Imagined future: {clip.name}", level=3)
            if (clip / "imagination.mp4").exists():
                report.add_video(clip / "imagination.mp4", width=720)
            clouds = sorted((clip / "clouds").glob("t*.ply"))
            if clouds:
                from xwam.geometry.ply import read_ply

                report.add_point_cloud([read_ply(p)[:2] for p in clouds])
    if results:
        report.add_heading("Latency and time", level=2)
        rows = [{"what": "policy chunk (mean, closed loop)", "ms": round(results["tasks"][0]["mean_chunk_ms"], 1)}]
        rows += [{"what": f"stage: {k}", "ms": round(v * 1000)} for k, v in timings.items()]
        report.add_table(rows)
    report.add_text(f"Checkpoint: {checkpoint}")
    return report.write(root / "report.html")


def running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
    return rows
