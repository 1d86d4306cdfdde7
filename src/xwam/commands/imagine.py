"""`xwam imagine` and `xwam eval-4d`: the 4D future the model imagines, and how good it is."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xwam.policy import XWAMPolicy


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "imagine",
        help="generate the future multi-view RGB-D video and 4D point clouds from one observation",
        description=(
            "Runs the sampler in 4D mode (all video steps, depth branch at the last call) from the current "
            "frame of a recorded episode (--episode DATA:INDEX[:START]) or of a fresh simulator episode "
            "(--task TASK --seed N), decodes RGB and metric depth for every predicted frame and view, and fuses "
            "one world-frame point cloud per timestep (static cameras from their calibration, the wrist camera "
            "from the predicted end-effector pose). Writes imagination.mp4 (views x predicted RGB / depth / "
            "ground truth), clouds/tNN.ply, report.html (offline, interactive point clouds) and summary.json."
        ),
    )
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--episode", help="DATASET:EPISODE[:START], e.g. data/lift:3 or data/lift:3:20")
    src.add_argument("--task", help="a simulator task to start a live episode (e.g. Lift)")
    p.add_argument("--seed", type=int, default=0, help="simulator seed for --task, and the sampler seed")
    p.add_argument("--out", default="out/imagine", help="output folder (default out/imagine)")
    p.add_argument("--rerun", action="store_true", help="also write imagination.rrd (needs rerun-sdk)")
    p.set_defaults(func=run_imagine)

    q = sub.add_parser(
        "eval-4d",
        help="4D quality on held-out episodes: PSNR/SSIM, depth AbsRel/delta1, Chamfer (metres)",
        description=(
            "Imagines the future from frames of held-out episodes and compares with the recorded future: PSNR "
            "and SSIM on RGB (static views, as the paper reports, and all views), depth AbsRel and delta1, "
            "Chamfer distance of the fused clouds in metres, LPIPS when its weights are available locally. "
            "Every clip is also scored for the frozen-present baseline (the current RGB-D frame of every view "
            "repeated as the prediction of every future frame), with the same metrics, side by side. "
            "Writes metrics.json and metrics.md (per frame and averaged)."
        ),
    )
    _common(q)
    q.add_argument("--data", required=True, help="dataset folder (LeRobot v3 or X-WAM release layout)")
    q.add_argument("--episodes", default="-3:",
                   help="episode indices: a Python-style slice like -5: (the last five, default -3:) or a comma list")
    q.add_argument("--starts", type=int, default=2, help="start frames per episode, evenly spaced (default 2)")
    q.add_argument("--seed", type=int, default=0, help="sampler seed")
    q.add_argument("--out", default="out/eval-4d", help="output folder (default out/eval-4d)")
    q.add_argument("--save-clips", type=int, default=1, help="write imagine outputs for the first N clips")
    q.set_defaults(func=run_eval_4d)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="xwam checkpoint folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); use 1 per process when running several side by side")
    p.add_argument("--video-steps", type=int, default=None, help="override the sampler's video steps N (action steps k become min(k, N))")
    p.add_argument("--temperature", type=float, default=None,
                   help="override the video stream's sampling temperature (the checkpoint's sampler.video_temperature): "
                        "1 samples the model's whole distribution of futures (sharp, speckled), lower values its "
                        "likely ones (smoother), 0 the deterministic flow from zero noise")
    p.add_argument("--max-depth", type=float, default=None, help="ignore depth beyond this many metres")
    p.add_argument("--voxel", type=float, default=0.005, help="voxel size (m) of the saved clouds (0: none)")


def load_policy(checkpoint: str | Path, *, device: str = "cpu", video_steps: int | None = None,
                temperature: float | None = None) -> XWAMPolicy:
    """The checkpoint's policy, with ``video_steps`` video sampler steps and the video stream's
    ``temperature`` when given."""
    from xwam.policy import XWAMPolicy

    policy = XWAMPolicy.from_checkpoint(checkpoint, device=device)
    if policy.config.model.depth_kind != "metric":
        raise ValueError(f"{checkpoint} was trained on {policy.config.model.depth_kind!r} depth (the release's "
                         "relative 8-bit code, no metric scale): its depth cannot be lifted to metres and point "
                         "clouds; imagine and eval-4d need a checkpoint trained on metric depth")
    if video_steps:
        # the action grid runs alongside the first video calls, so it cannot be longer (see --video-steps)
        policy = policy.with_sampler(video_steps=video_steps,
                                     action_steps=min(policy.config.sampler.action_steps, video_steps))
    if temperature is not None:
        policy = policy.with_sampler(video_temperature=temperature)
    return policy


def parse_episode_ref(ref: str) -> tuple[str, int, int | None]:
    parts = ref.rsplit(":", 2)
    try:
        if len(parts) == 3 and parts[1].lstrip("-").isdigit() and parts[2].isdigit():
            return parts[0], int(parts[1]), int(parts[2])
        root, index = ref.rsplit(":", 1)
        return root, int(index), None
    except ValueError as exc:
        raise ValueError(f"--episode must look like DATASET:EPISODE[:START] (e.g. data/lift:3), got {ref!r}") from exc


def _imagine_from_episode(policy, episode, start: int, seed: int, *, max_depth: float | None, voxel: float,
                          expected: bool = False):
    from xwam.imagine import clip_from_episode, imagine

    m = policy.config.model
    cams = policy.camera_names
    truth = clip_from_episode(episode, start, m.num_frames, m.frame_skip, m.action_horizon, cams)
    if episode.intrinsics is None or episode.extrinsics is None:
        raise ValueError("the episode has no camera calibration: 4D lifting needs intrinsics and extrinsics")
    f0 = truth.frame_indices[0]
    imag = imagine(
        policy, {c: truth.rgb[c][0] for c in cams}, truth.states[0], episode.task,
        {c: episode.intrinsics[c][f0] for c in cams}, {c: episode.extrinsics[c][f0] for c in cams},
        seed=seed, max_depth=max_depth, voxel=voxel or None, expected=expected,
    )
    return imag, truth


def _check_resolution(policy, episode) -> None:
    h, w, _ = policy.image_shape
    cam = policy.camera_names[0]
    if cam in episode.rgb and episode.rgb[cam].shape[1:3] != (h, w):
        raise ValueError(f"the episode's images are {episode.rgb[cam].shape[1:3]} but the model expects {(h, w)}")


def run_imagine(args: argparse.Namespace) -> int:
    imagine_future(args.checkpoint, args.out, episode=args.episode, task=args.task, seed=args.seed,
                   rerun=args.rerun, device=args.device, video_steps=args.video_steps, max_depth=args.max_depth,
                   temperature=args.temperature,
                   voxel=args.voxel)
    return 0


def imagine_future(
    checkpoint: str | Path,
    out: str | Path = "out/imagine",
    *,
    episode: str | None = None,
    task: str | None = None,
    seed: int = 0,
    rerun: bool = False,
    device: str = "cpu",
    video_steps: int | None = None,
    temperature: float | None = None,
    max_depth: float | None = None,
    voxel: float = 0.005,
) -> dict[str, Path]:
    """Imagine the 4D future from frame START of a recorded episode (``episode="DATA:INDEX[:START]"``) or
    from a fresh simulator episode of ``task`` (seeded ``seed``); writes the outputs of
    ``xwam imagine`` to ``out`` and returns their paths (see ``xwam imagine --help``)."""
    from xwam.geometry.metrics import evaluate_4d
    from xwam.imagine import imagine, write_outputs

    if (episode is None) == (task is None):
        raise ValueError("give exactly one of episode and task")
    policy = load_policy(checkpoint, device=device, video_steps=video_steps, temperature=temperature)
    m = policy.config.model
    fps_video = None
    if episode:
        from xwam.data import open_dataset

        root, index, start = parse_episode_ref(episode)
        dataset = open_dataset(root)
        if not 0 <= index < dataset.num_episodes:
            raise ValueError(f"episode {index} out of range: {root} has {dataset.num_episodes} episodes")
        recorded = dataset.episode(index)
        _check_resolution(policy, recorded)
        imag, truth = _imagine_from_episode(policy, recorded, start or 0, seed, max_depth=max_depth, voxel=voxel)
        fps_video = recorded.fps / m.frame_skip
    else:
        from xwam.sim.envs import make_env

        with make_env(task, cameras=policy.camera_names, height=m.image_height, width=m.image_width) as env:
            obs = env.reset(seed)
            imag = imagine(policy, obs.rgb, obs.state, env.instruction, obs.intrinsics, obs.extrinsics,
                           seed=seed, max_depth=max_depth, voxel=voxel or None)
            fps_video = env.control_freq / m.frame_skip
        truth = None
    metrics = None
    if truth is not None and truth.depth is not None:
        metrics = evaluate_4d(imag.as_dict(), truth.as_dict(), max_depth=max_depth, lpips=True)
    paths = write_outputs(out, imag, truth, fps=max(1.0, fps_video),
                          near=m.depth_near, far=min(m.depth_far, 3.0), metrics=metrics)
    if rerun:
        from xwam.viz import export_rerun

        rrd = export_rerun(Path(out) / "imagination.rrd", imag.clouds)
        print("rerun:", rrd or "rerun-sdk is not installed; skipped")
    print(f"imagined {len(imag.clouds)} frames x {len(imag.camera_names)} views in {imag.timing_ms['total_ms']:.0f} ms")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    if metrics:
        from xwam.imagine import metrics_rows

        for row in metrics_rows(metrics):
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    return paths


def _select(spec: str | Sequence[int], n: int) -> list[int]:
    if isinstance(spec, str) and ":" in spec:
        parts = [int(p) if p else None for p in spec.split(":")]
        return list(range(n))[slice(*parts)]
    out = [int(x) for x in spec.split(",") if x.strip()] if isinstance(spec, str) else [int(x) for x in spec]
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"episode indices {bad} out of range (the dataset has {n} episodes)")
    return out


def run_eval_4d(args: argparse.Namespace) -> int:
    eval_4d(args.checkpoint, args.data, args.out, episodes=args.episodes, starts=args.starts, seed=args.seed,
            save_clips=args.save_clips, device=args.device, video_steps=args.video_steps,
            temperature=args.temperature,
            max_depth=args.max_depth, voxel=args.voxel)
    return 0


def eval_4d(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path = "out/eval-4d",
    *,
    episodes: str | Sequence[int] = "-3:",
    starts: int = 2,
    seed: int = 0,
    save_clips: int = 1,
    device: str = "cpu",
    video_steps: int | None = None,
    temperature: float | None = None,
    max_depth: float | None = None,
    voxel: float = 0.005,
) -> dict[str, Any]:
    """4D quality of the model's futures against the recorded ones, beside the frozen present, on
    ``starts`` clips of each selected episode (a slice like ``"-3:"``, a comma list, or indices);
    writes ``out``/metrics.json and metrics.md (see ``xwam eval-4d --help``) and returns metrics.json's
    content."""
    import numpy as np
    from tqdm import tqdm

    from xwam.atomic import atomic_write_json, atomic_write_text
    from xwam.data import open_dataset
    from xwam.geometry.metrics import evaluate_4d
    from xwam.imagine import frozen_present, write_outputs

    dataset = open_dataset(data)
    if getattr(dataset, "depth_kind", "metric") != "metric":  # release-format data: see xwam.codecs.depth
        raise ValueError(f"eval-4d scores metric depth lifted to 3D with camera matrices, but {data} holds "
                         f"{dataset.depth_kind!r} depth (the release's relative 8-bit code, no metric scale) "
                         f"and no camera matrices; use `xwam diagnose` for its action chunks")
    policy = load_policy(checkpoint, device=device, video_steps=video_steps, temperature=temperature)
    m = policy.config.model
    selected = _select(episodes, dataset.num_episodes)
    if not selected:
        raise ValueError("no episodes selected")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clips, saved = [], 0
    span = (m.num_frames - 1) * m.frame_skip
    jobs = []
    for e in selected:
        length = dataset.episode_length(e)
        if length <= span:
            continue
        first = np.linspace(0, length - 1 - span, num=max(1, starts)).round().astype(int)
        jobs += [(e, int(s)) for s in sorted(set(first.tolist()))]
    if not jobs:
        raise ValueError(f"no selected episode is longer than one clip ({span + 1} frames)")
    cache = {}
    for i, (e, start) in enumerate(tqdm(jobs, desc="eval-4d", unit="clip")):
        if e not in cache:
            cache.clear()
            cache[e] = dataset.episode(e)
            _check_resolution(policy, cache[e])
        episode = cache[e]
        imag, truth = _imagine_from_episode(policy, episode, start, seed + i, max_depth=max_depth, voxel=voxel,
                                            expected=True)
        metrics = evaluate_4d(imag.as_dict(), truth.as_dict(), max_depth=max_depth, lpips=True)
        mean = evaluate_4d(imag.expected.as_dict(), truth.as_dict(), max_depth=max_depth, lpips=True)
        frozen = evaluate_4d(frozen_present(truth), truth.as_dict(), max_depth=max_depth, lpips=True)
        clips.append({"episode": e, "start": start, "metrics": metrics, "expected": mean, "baseline_frozen": frozen})
        if saved < save_clips:
            write_outputs(out / f"episode{e}_start{start}", imag, truth, fps=max(1.0, episode.fps / m.frame_skip),
                          near=m.depth_near, far=min(m.depth_far, 3.0), metrics=metrics,
                          title=f"xwam eval-4d: episode {e}, start {start}")
            saved += 1
    summary = aggregate(clips)
    frozen_summary = aggregate(clips, key="baseline_frozen")
    expected_summary = aggregate(clips, key="expected")
    sampler = policy.config.sampler
    payload = {"checkpoint": str(checkpoint), "data": str(data),
               "sampler": {"video_steps": sampler.video_steps, "solver": sampler.solver, "shift": sampler.shift,
                           "video_temperature": sampler.video_temperature},
               "clips": clips, "summary": summary,
               "summary_expected": expected_summary, "summary_baseline_frozen": frozen_summary}
    atomic_write_json(out / "metrics.json", payload)
    table = markdown(summary, len(clips), baseline=frozen_summary, expected=expected_summary,
                     temperature=sampler.video_temperature)
    atomic_write_text(out / "metrics.md", table)
    print(table)
    print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    return payload


METRICS = ("psnr", "ssim", "lpips", "abs_rel", "delta1", "chamfer")


def aggregate(clips: list[dict], key: str = "metrics") -> dict:
    """Per-frame curves averaged over clips, and means over the predicted frames (1..F-1), of the
    ``evaluate_4d`` results stored under ``key`` in every clip (the model's, or a baseline's).

    Frame 0 is the observed frame (its RGB is given, so PSNR there is infinite); its depth is still a
    prediction and is shown in the per-frame table.
    """
    import warnings

    import numpy as np

    out = {}
    for group in ("static", "all"):
        blocks = [c[key][group] for c in clips if c.get(key) and c[key].get(group)]
        if not blocks:
            continue
        mean, per_frame = {}, {}
        for name in METRICS:
            curves = [b["per_frame"].get(name) for b in blocks if b["per_frame"].get(name) is not None]
            if not curves:
                mean[name], per_frame[name] = None, None
                continue
            arr = np.array([[np.nan if v is None else v for v in c] for c in curves], dtype=float)
            arr[~np.isfinite(arr)] = np.nan
            with warnings.catch_warnings():  # all-NaN columns (e.g. no valid depth) are expected
                warnings.simplefilter("ignore", RuntimeWarning)
                frame_means = np.nanmean(arr, axis=0) if not np.isnan(arr).all() else np.full(arr.shape[1], np.nan)
                future = arr[:, 1:]
                mean[name] = float(np.nanmean(future)) if future.size and not np.isnan(future).all() else None
            per_frame[name] = [None if np.isnan(x) else float(x) for x in frame_means]
        out[group] = {"mean": mean, "per_frame": per_frame}
    return out


BETTER = {"psnr": "higher", "ssim": "higher", "lpips": "lower", "abs_rel": "lower", "delta1": "higher",
          "chamfer": "lower"}


def _cell(block: dict | None, name: str) -> str:
    value = (block or {}).get("mean", {}).get(name)
    return "n/a" if value is None else f"{value:.4g}"


def markdown(summary: dict, n: int, baseline: dict | None = None, expected: dict | None = None,
             temperature: float | None = None) -> str:
    """``summary``: the sampled futures (drawn at video ``temperature``); ``expected``: the model's mean
    futures; ``baseline``: the frozen present (each as :func:`aggregate` returns it)."""
    drawn = "" if temperature is None else f"; futures sampled at video temperature {temperature:g}"
    lines = [f"4D quality over {n} clips: means over the predicted frames 1.. (PSNR in dB, Chamfer in metres{drawn})",
             "",
             "| views | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for group, block in summary.items():
        cells = [_cell(block, k) for k in METRICS]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    if baseline is not None:
        groups = [g for g in ("static", "all") if g in summary or g in baseline]
        columns = [("sample", summary)] + ([("expected", expected)] if expected else []) + [("frozen present", baseline)]
        header = " | ".join(f"{name} ({g})" for g in groups for name, _ in columns)
        lines += ["", "The model's sampled future and its expected (mean) future, against the frozen present "
                  "(frame 0's RGB-D repeated as every future frame); the same clips and metrics:", "",
                  f"| metric | better | {header} |", "|---" * (2 + len(columns) * len(groups)) + "|"]
        for k in METRICS:
            cells = " | ".join(_cell(table.get(g), k) for g in groups for _, table in columns)
            lines.append(f"| {k} | {BETTER[k]} | {cells} |")
    lines += ["", "Per frame (all views; frame 0 is the observed frame, its depth is predicted):", "",
              "| frame | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    curves = summary.get("all", {}).get("per_frame", {})
    frames = max((len(v) for v in curves.values() if v), default=0)
    for t in range(frames):
        cells = []
        for k in METRICS:
            v = (curves.get(k) or [None] * frames)[t]
            cells.append("n/a" if v is None else f"{v:.4g}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
