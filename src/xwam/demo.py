"""`xwam demo`: learn a task from scratch on a CPU, act in closed loop, imagine the future in 4D.

Stages (each resumable: a finished stage is skipped when the demo is run again on the same folder):

1. collect   scripted expert demonstrations in robosuite (3 RGB-D cameras) -> ``data/``, plus a few
             held-out episodes for 4D evaluation and the vision check -> ``heldout/``;
2. train     the ``small`` preset from scratch with the ANS objective for ``--steps`` -> ``run/``;
3. eval      the policy in closed loop on held-out seeds -> ``eval/``;
4. baseline  blind replay: a training demonstration's actions executed open loop on the same seeds
             -> ``baseline/`` (what a policy that ignores its cameras can score);
5. imagine   4D futures and their quality on held-out episodes (eval-4d), beside the frozen-present
             baseline (the current frame repeated) -> ``eval4d/``;
6. diagnose  the vision check: action error with true vs another episode's images / state -> ``diagnose/``;
7. report    one offline HTML report -> ``report.html``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xwam.atomic import atomic_write_json

STAGES = ("collect", "train", "eval", "baseline", "imagine", "diagnose", "report")
# training steps per second of the small preset at batch 8 on the reference 2-core CPU (for the estimate)
STEPS_PER_S_REFERENCE = 3.0


@dataclass(frozen=True)
class DemoConfig:
    task: str = "Lift"
    out: str = "runs/demo"
    preset: str = "small"
    overrides: list[str] = field(default_factory=list)
    episodes: int = 60  # training demonstrations
    # recovery demonstrations: correlated noise on the executed arm position, the expert's clean
    # command recorded (DART; see xwam.sim.rollout); 0 records the expert's straight path only.
    # Measured (README, issue-11 table): 100 % Lift success with 0.3 against 34-46 % without; less
    # noise leaves the world model less unpredictable motion: 0.15, 0.1 and 0.05 gave 96 %, 98 % and
    # 94 % with sample PSNR 18.79, 19.09 and 19.17 dB (a fresh-clone demo, runs K and L, one machine).
    perturb: float = 0.1
    workers: int = field(default_factory=lambda: default_workers())  # simulator/eval processes
    heldout_episodes: int = 6  # for eval-4d and the vision check
    baseline_episode: int = 0  # the training demonstration blind replay executes
    eval_episodes: int = 50
    eval_seed: int = 10_000  # collection uses seeds 0.., held-out episodes 100000..
    # Training is budgeted in steps, so the outcome does not depend on the machine's speed; ``minutes``
    # is an optional wall-clock cap that, when it cuts the schedule, is reported loudly (and in the report).
    steps: int = 2600
    minutes: float | None = None
    batch_size: int = 8
    shift_augment: int = 0  # random shift of every view by up to N pixels during training (0: off)
    lr: float | None = None
    # The learning rate's floor as a fraction of the peak: 1 keeps it constant after the warm-up and lets
    # the EMA average the weights; 0 decays it to zero along a cosine. Measured (README, run U): at step
    # 2,600 of a long, nearly constant schedule the EMA weights scored 100 %, sample PSNR 20.16 dB, AbsRel
    # 0.120 and vision ratio 1.55, against 100 %, 19.61 dB, 0.151 and 1.41 for 2,600 cosine-decayed steps.
    min_lr_ratio: float = 1.0
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
        base = dict(episodes=4, heldout_episodes=2, eval_episodes=2, steps=30, batch_size=2,
                    eval_max_steps=24, videos=1, quick=True,
                    overrides=["model.num_layers=2", "model.depth_layers=1", "model.num_heads=2",
                               "model.head_dim=32", "model.ffn_dim=128"])
        base.update(changes)
        return cls(**base)


def default_workers() -> int:
    """Processes for collection and evaluation: one per core, at most 4 (each also renders)."""
    import os

    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


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
        atomic_write_json(self.marker, summary, default=str)
        return summary

    def announce(self, text: str, estimate_s: float | None = None) -> None:
        elapsed = time.time() - self.started
        eta = f", about {estimate_s / 60:.1f} min" if estimate_s else ""
        print(f"\n[{self.index}/{len(STAGES)}] {self.name}: {text} (elapsed {elapsed / 60:.1f} min{eta})", flush=True)


def run_demo(cfg: DemoConfig) -> Path:
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "demo_config.json", asdict(cfg))
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
                   # measured: ~3.6 s per Lift episode at 64x64 (~6.4 s at 128x128) in one process; perturbed
                   # episodes are longer (the expert corrects), ~7 s at --perturb 0.3 with two processes sharing 2 cores
                   estimate_s=3.6 * (1 + 2 * cfg.perturb) * (cfg.episodes + cfg.heldout_episodes)
                   * (m.image_height * m.image_width / 4096) ** 0.5 / cfg.workers)
        from xwam.commands.collect import collect

        # held-out episodes are recorded like the evaluation: the expert's own path, no perturbation
        for what, episodes, folder, first_seed, perturb in (
                ("collect", cfg.episodes, "data", cfg.seed, cfg.perturb),
                ("collect held-out", cfg.heldout_episodes, "heldout", 100_000 + cfg.seed, 0.0)):
            stored = collect(cfg.task, episodes, root / folder, height=m.image_height, width=m.image_width,
                             first_seed=first_seed, cameras=list(cams) if cams else None,
                             max_steps=60 if cfg.quick else None, perturb=perturb, workers=cfg.workers)
            if stored < episodes:
                raise RuntimeError(f"the {what} stage stored {stored} of {episodes} episodes (the expert failed too "
                                   "often); re-run the demo to resume")
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
        cap = f", capped at {cfg.minutes:g} min" if cfg.minutes else ""
        schedule = ("constant learning rate" if cfg.min_lr_ratio == 1 else
                    f"cosine learning rate to {cfg.min_lr_ratio:g}x")
        s.announce(f"preset {cfg.preset} from scratch with ANS, {cfg.steps} steps of batch {cfg.batch_size}, "
                   f"{schedule}{cap}"
                   + (" (resuming)" if resume else ""),
                   # a first guess (the trainer prints one measured on this machine after its warm-up)
                   estimate_s=cfg.steps / STEPS_PER_S_REFERENCE * cfg.batch_size / 8)
        ckpt = train(data=[str(root / "data")], out=str(run_dir), preset=cfg.preset, overrides=list(cfg.overrides),
                     steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, min_lr_ratio=cfg.min_lr_ratio, max_minutes=cfg.minutes,
                     cache_latents=not cfg.shift_augment, shift_augment=cfg.shift_augment, seed=cfg.seed, save_every=200, threads=cfg.threads, resume=resume,
                     val_images=False, ema_decay=cfg.ema_decay)
        run_summary = _read_json(run_dir / "train_summary.json") or {}
        s.finish({"seconds": time.time() - t0, "checkpoint": str(ckpt), "steps": cfg.steps,
                  "steps_done": run_summary.get("steps_done"), "cut_by_time": bool(run_summary.get("cut_by_time"))})
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
                   estimate_s=8.0 * cfg.eval_episodes / cfg.workers)
        from xwam.commands.eval import eval_policy

        eval_policy(checkpoint, tasks=[cfg.task], episodes=cfg.eval_episodes, seed=cfg.eval_seed,
                    max_steps=cfg.eval_max_steps or None, replan_every=cfg.replan_every or None,
                    videos=cfg.videos, out=root / "eval", workers=cfg.workers)
        s.finish({"seconds": time.time() - t0})
    timings["eval"] = s.summary().get("seconds", 0.0)

    # 4. blind-replay baseline ------------------------------------------------------------------
    s = stage["baseline"]
    t0 = time.time()
    if s.done:
        s.announce("already done, skipped")
    else:
        from xwam.blind_replay import evaluate_blind_replay

        s.announce(f"blind replay of training demonstration {cfg.baseline_episode} on the same "
                   f"{cfg.eval_episodes} seeds", estimate_s=1.0 * cfg.eval_episodes)
        evaluate_blind_replay(root / "data", cfg.baseline_episode, task=cfg.task,
                              seeds=range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes),
                              max_steps=cfg.eval_max_steps, out_dir=root / "baseline")
        s.finish({"seconds": time.time() - t0})
    timings["baseline"] = s.summary().get("seconds", 0.0)

    # 5. imagine + eval-4d ----------------------------------------------------------------------
    s = stage["imagine"]
    t0 = time.time()
    if s.done:
        s.announce("already done, skipped")
    else:
        s.announce("4D futures of held-out episodes and their quality (eval-4d)", estimate_s=60)
        from xwam.commands.imagine import eval_4d

        eval_4d(checkpoint, root / "heldout", root / "eval4d", episodes=":", starts=2, save_clips=2)
        s.finish({"seconds": time.time() - t0})
    timings["imagine"] = s.summary().get("seconds", 0.0)

    # 6. vision check ---------------------------------------------------------------------------
    s = stage["diagnose"]
    t0 = time.time()
    if s.done:
        s.announce("already done, skipped")
    else:
        from xwam.diagnose import markdown, vision_check

        s.announce("vision check on held-out episodes (true vs another episode's images / state)", estimate_s=30)
        print(markdown(vision_check(checkpoint, root / "heldout", seed=cfg.seed, out=root / "diagnose")))
        s.finish({"seconds": time.time() - t0})
    timings["diagnose"] = s.summary().get("seconds", 0.0)

    # 7. report -------------------------------------------------------------------------------
    s = stage["report"]
    s.announce("writing the HTML report")
    path = write_report(root, cfg, checkpoint, timings, total_s=sum(timings.values()))
    s.finish({"report": str(path)})
    print(f"\nreport: {path}")
    return path


def write_report(root: Path, cfg: DemoConfig, checkpoint: Path, timings: dict[str, float], total_s: float) -> Path:
    from xwam.viz import HtmlReport

    report = HtmlReport(f"xwam demo: {cfg.task}")
    train = _read_json(root / "stages" / "train.json") or {}
    train_run = _read_json(root / "run" / "train_summary.json") or {}
    report.add_text(
        f"Learned from scratch on this machine: {cfg.episodes} scripted demonstrations"
        + (f" (recovery demonstrations: executed arm position perturbed with std {cfg.perturb:g}, the expert's "
           f"clean command recorded)" if cfg.perturb else "") + f", preset {cfg.preset}, "
        f"{cfg.steps} training steps of batch {cfg.batch_size} with Asynchronous Noise Sampling, then "
        f"{cfg.eval_episodes} closed-loop episodes on held-out seeds, 4D imagination of held-out episodes and a "
        f"vision check, each beside a baseline measured here in the same harness. Total {total_s / 60:.1f} min."
    )
    if train.get("cut_by_time") or train_run.get("cut_by_time"):
        report.add_heading("WARNING: training was cut by the time budget", level=2)
        report.add_text(
            f"--minutes {cfg.minutes:g} stopped training at step {train_run.get('steps_done')} of {cfg.steps}: the "
            "learning-rate schedule did not finish, so every number below is from an incomplete run and differs "
            "from a full run (and from runs on faster or slower machines). Re-run without --minutes."
        )
    results = _read_json(root / "eval" / "results.json")
    baseline = _read_json(root / "baseline" / "results.json")
    if results:
        report.add_heading("Closed-loop success", level=2)
        rows = [_success_row("policy (this model)", results["tasks"][0])]
        if baseline:
            rows.append(_success_row(f"baseline: blind replay of demonstration {cfg.baseline_episode}",
                                     baseline["tasks"][0]))
        report.add_table(rows, caption="Same task, same held-out seeds, same step limit. Blind replay executes a "
                                       "recorded training demonstration open loop, ignoring cameras and state.")
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
            report.add_text(f"{last[-1]['step']} of {cfg.steps} steps in {timings.get('train', 0) / 60:.1f} min; last "
                            f"throughput {last[-1]['samples_per_s']:.2f} samples/s.")
    codec = _read_json(root / "run" / "codec_fit.json")
    if codec:
        depth = codec.get("depth_reconstruction_psnr_db")
        report.add_text(
            f"Latent codec: {codec['codec']} with {codec['latent_channels']} components per patch (whitening "
            f"{codec.get('whitening', 0.0):g}), fitted on "
            f"{codec['clips']} training clips in {codec['seconds']:.1f} s; reconstruction PSNR RGB "
            f"{codec['rgb_reconstruction_psnr_db']:.1f} dB" + (f", {codec.get('depth_curve', 'inverse')} depth {depth:.1f} dB." if depth else ".")
            + " This bounds the PSNR any imagined frame can reach.")
    eval4d = _read_json(root / "eval4d" / "metrics.json")
    if eval4d:
        report.add_heading("4D quality on held-out episodes (predicted frames)", level=2)
        frozen = eval4d.get("summary_baseline_frozen") or {}
        mean = eval4d.get("summary_expected") or {}
        rows = []
        for group, block in eval4d["summary"].items():
            if not block:
                continue
            temperature = (eval4d.get("sampler") or {}).get("video_temperature")
            drawn = "" if temperature is None else f" (temperature {temperature:g})"
            rows.append({"prediction": f"model: sampled future{drawn}", "views": group, **_rounded(block["mean"])})
            if mean.get(group):
                rows.append({"prediction": "model: expected future", "views": group, **_rounded(mean[group]["mean"])})
            if frozen.get(group):
                rows.append({"prediction": "baseline: frozen present", "views": group,
                             **_rounded(frozen[group]["mean"])})
        report.add_table(rows, caption="The sampled future is one possible future (the imagined frames below); the "
                                       "expected future is the model's mean prediction (its first clean estimate, "
                                       "from pure noise), blurrier where the future is uncertain. A sample's squared "
                                       "error adds its spread to the mean's, so PSNR and AbsRel favour the mean. "
                                       "Frozen present repeats the current RGB and depth as the prediction of every "
                                       "future frame; all three are scored by the same metrics on the same clips.")
        for clip in sorted((root / "eval4d").glob("episode*"))[:2]:
            report.add_heading(f"Imagined future: {clip.name}", level=3)
            if (clip / "imagination.mp4").exists():
                report.add_video(clip / "imagination.mp4", width=720)
            clouds = sorted((clip / "clouds").glob("t*.ply"))
            if clouds:
                from xwam.geometry.ply import read_ply

                report.add_point_cloud([read_ply(p)[:2] for p in clouds])
    vision = _read_json(root / "diagnose" / "diagnose.json")
    if vision:
        report.add_heading("Vision check: does the policy use its cameras?", level=2)
        rows = [{"policy input": name.replace("_", " "), "action MAE (normalised)": round(v["mae"], 4),
                 "x true": round(v["mae"] / vision["conditions"]["true"]["mae"], 2)
                 if vision["conditions"]["true"]["mae"] else None}
                for name, v in vision["conditions"].items()]
        report.add_table(rows, caption=(
            f"{vision['num_clips']} clips of held-out episodes, same sampler noise in every row. 'other images': "
            "another episode's cameras at the same time with the true state; 'other state': the reverse; 'blind "
            f"chunk': another episode's recorded chunk, no model. Target: other images >= "
            f"{vision['vision_target']:g}x true."))
        ratios = vision.get("per_dimension_other_images/true")  # absent in diagnose.json of older runs
        if vision.get("per_dimension") and ratios:
            rows = [{"action dimension": name, **{cond.replace("_", " "): round(mae, 4) for cond, mae in row.items()},
                     "other images / true": None if ratios[name] is None else round(ratios[name], 2)}
                    for name, row in vision["per_dimension"].items()]
            report.add_table(rows, caption="The same errors per action dimension (normalised units): the overall "
                                           "MAE weighs every dimension alike, so one the cameras cannot inform "
                                           "dilutes its ratio.")
        by_start = vision.get("by_start")  # absent in diagnose.json of older runs
        if by_start:
            from xwam.diagnose import START_GROUPS

            rows = [{"clips": START_GROUPS[name], "count": row["clips"],
                     **{cond.replace("_", " "): round(mae, 4) for cond, mae in row["mae"].items()},
                     "other images / true": None if row["other_images/true"] is None else round(row["other_images/true"], 2)}
                    for name, row in by_start.items()]
            report.add_table(rows, caption="The same errors by where the clip starts: the first chunk plans the whole "
                                           "approach from the cube's place, later ones continue a motion under way.")
    if results:
        report.add_heading("Latency and time", level=2)
        rows = [{"what": "policy chunk (mean, closed loop)", "ms": round(results["tasks"][0]["mean_chunk_ms"], 1)}]
        rows += [{"what": f"stage: {k}", "ms": round(v * 1000)} for k, v in timings.items()]
        report.add_table(rows)
    report.add_text(f"Checkpoint: {checkpoint}")
    return report.write(root / "report.html")


def _success_row(name: str, task: dict[str, Any]) -> dict[str, Any]:
    return {"policy": name, "success": f"{task['success_rate']:.0%} ({task['successes']}/{task['episodes']})",
            "seeds": f"{task['seeds'][0]}..{task['seeds'][-1]}", "mean episode length": round(task["mean_episode_length"], 1)}


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if v is None else round(v, 4)) for k, v in values.items()}


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
