"""`xwam dataset info|stats|check-stats`: inspect datasets and their normalisation statistics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dataset",
        help="inspect a dataset (LeRobot v3 or release layout) and its normalisation statistics",
        description="Inspect datasets: `info` summarises, `stats` computes statistics, `check-stats` compares "
        "a dataset's statistics with a checkpoint's norm_stats.json.",
    )
    verbs = p.add_subparsers(dest="dataset_verb", metavar="<command>")

    info = verbs.add_parser(
        "info",
        help="episodes, frames, fps, cameras, resolution, depth, features, stats summary",
        description="Summarise a LeRobot v3 or release-layout dataset.",
    )
    info.add_argument("path", help="dataset folder")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=run_info)

    stats = verbs.add_parser(
        "stats",
        help="compute and write normalisation statistics, print a table",
        description="Compute per-dimension statistics (q01, q99, mean, std, min, max) over every frame and write "
        "meta/xwam_norm.json (state/action normalisation). They are merged into meta/stats.json (LeRobot format): "
        "entries of features xwam does not compute (e.g. next.done) are kept, never dropped. For a release "
        "dataset (read-only layout) use --out to choose where norm_stats.json goes.",
    )
    stats.add_argument("path", help="dataset folder")
    stats.add_argument("--out", default=None, help="write NormStats JSON here instead of into the dataset")
    stats.add_argument(
        "--no-images", action="store_true", help="skip the sampled per-camera image statistics"
    )
    stats.set_defaults(func=run_stats)

    check = verbs.add_parser(
        "check-stats",
        help="compare the dataset's statistics with a checkpoint's norm_stats.json",
        description="Exit 0 when the dataset's normalisation statistics match CHECKPOINT/norm_stats.json within "
        "--rtol, else list every disagreement and exit 1 (a model trained with other statistics would see "
        "wrongly scaled states and emit wrongly scaled actions).",
    )
    check.add_argument("path", help="dataset folder")
    check.add_argument(
        "--checkpoint", required=True, help="checkpoint folder holding norm_stats.json (or the file)"
    )
    check.add_argument(
        "--rtol", type=float, default=1e-3, help="relative tolerance (of max(|a|, |b|, q99 - q01))"
    )
    check.set_defaults(func=run_check_stats)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _summary(ds: Any) -> dict[str, Any]:
    lengths = [ds.episode_length(i) for i in range(ds.num_episodes)]
    first_numeric = ds.episode_numeric(0) if ds.num_episodes else None
    sizes: dict[str, tuple[int, int]] = dict(getattr(ds, "image_sizes", {}) or {})
    if not sizes and ds.num_episodes:
        first = ds.episode(0, load_depth=False)
        sizes = {c: tuple(first.rgb[c].shape[1:3]) for c in first.camera_names}
    height, width = sizes[ds.camera_names[0]] if sizes else (None, None)
    out: dict[str, Any] = {
        "path": str(ds.root),
        "layout": type(ds).__name__,
        "episodes": ds.num_episodes,
        "frames": int(sum(lengths)),
        "episode_length": {
            "min": min(lengths, default=0),
            "max": max(lengths, default=0),
            "mean": float(sum(lengths) / max(len(lengths), 1)),
        },
        "fps": ds.fps,
        "cameras": list(ds.camera_names),
        "resolution": [int(height), int(width)] if height is not None else None,
        "camera_sizes": {c: [int(h), int(w)] for c, (h, w) in sizes.items()},
        "depth": bool(ds.has_depth),
        "camera_matrices": bool(
            getattr(ds, "has_intrinsics", False) and getattr(ds, "has_extrinsics", False)
        ),
        "state_dim": int(first_numeric[0].shape[1]) if first_numeric is not None else None,
        "action_dim": int(first_numeric[1].shape[1]) if first_numeric is not None else None,
    }
    if hasattr(ds, "features"):
        out["features"] = {
            k: {"dtype": f.get("dtype"), "shape": f.get("shape")} for k, f in ds.features.items()
        }
        out["tasks"] = len(ds.tasks)
        out["depth_encoding"] = ds.info.get("xwam", {}).get("depth")
        out["ignored_features"] = list(getattr(ds, "ignored_features", []))
        out["problems"] = ds.video_problems() if hasattr(ds, "video_problems") else []
        size = sum(p.stat().st_size for p in Path(ds.root).rglob("*") if p.is_file())
        out["size_mb"] = round(size / 2**20, 2)
    try:
        from xwam.data.stats import load_dataset_norm_stats

        norm = load_dataset_norm_stats(ds.root)
        out["stats"] = {
            "state_q01": [round(float(x), 4) for x in norm.state.q01],
            "state_q99": [round(float(x), 4) for x in norm.state.q99],
            "action_bound": [round(float(x), 4) for x in norm.action_bound],
            "invalid_state_dims": [n for n, v in zip(norm.state_names, norm.state_valid) if not v],
            "invalid_action_dims": [n for n, v in zip(norm.action_names, norm.action_valid) if not v],
        }
    except (FileNotFoundError, ValueError) as exc:  # the summary says why, and the rest still shows
        out["stats"] = None
        out["stats_problem"] = str(exc)
    return out


def run_info(args: argparse.Namespace) -> int:
    from xwam.data.open import open_dataset

    summary = _summary(open_dataset(args.path))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    res = summary["resolution"]
    print(f"{summary['path']}  ({summary['layout']})")
    print(
        f"  episodes   {summary['episodes']}  frames {summary['frames']}  fps {summary['fps']:g}  "
        f"length min/mean/max {summary['episode_length']['min']}/{summary['episode_length']['mean']:.1f}/"
        f"{summary['episode_length']['max']}"
    )
    resolution = f"{res[0]}x{res[1]}" if res else "?"
    sizes = summary["camera_sizes"]
    if len({tuple(v) for v in sizes.values()}) > 1:
        listed = ", ".join(f"{c} {h}x{w}" for c, (h, w) in sizes.items())
        print(f"  cameras    {listed}  (different sizes: each is resized to the model's image size)")
    else:
        print(f"  cameras    {', '.join(summary['cameras'])}  resolution {resolution}")
    print(
        f"  depth      {'yes' if summary['depth'] else 'no'}"
        + (f" ({summary['depth_encoding']})" if summary.get("depth_encoding") else "")
        + f"   camera matrices {'yes' if summary['camera_matrices'] else 'no'}"
    )
    print(f"  state dim  {summary['state_dim']}  action dim {summary['action_dim']}")
    if "size_mb" in summary:
        print(
            f"  size       {summary['size_mb']} MB ({summary['size_mb'] / max(summary['episodes'], 1):.2f} MB/episode)"
        )
    if summary.get("features"):
        print("  features:")
        ignored = set(summary.get("ignored_features") or [])
        for key, f in summary["features"].items():
            print(f"    {key:48s} {f['dtype']:8s} {f['shape']}" + ("  (ignored)" if key in ignored else ""))
    if summary.get("ignored_features"):
        print(f"  ignored    {', '.join(summary['ignored_features'])} (xwam reads only the cameras, depth, camera "
              "matrices, observation.state and action)")
    for problem in summary.get("problems") or []:
        print(f"  WARNING    {problem}")
    if summary["stats"]:
        s = summary["stats"]
        print("  stats:")
        print(f"    state q01    {s['state_q01']}")
        print(f"    state q99    {s['state_q99']}")
        print(f"    action bound {s['action_bound']}")
        if s["invalid_state_dims"] or s["invalid_action_dims"]:
            print(f"    invalid dims: state {s['invalid_state_dims']} action {s['invalid_action_dims']}")
    else:
        print(f"  stats:     none ({summary.get('stats_problem') or 'run `xwam dataset stats PATH`'})")
    return 0


def _print_table(norm: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    for part in ("state", "action"):
        stats = getattr(norm, part)
        names = getattr(norm, f"{part}_names")
        valid = getattr(norm, f"{part}_valid")
        table = Table(title=f"{part} ({stats.count} frames)")
        for col in ("dim", "name", "q01", "q99", "mean", "std", "min", "max", "norm"):
            table.add_column(col, justify="right" if col not in ("name", "norm") else "left")
        for i, name in enumerate(names):
            if not valid[i]:
                kind = "invalid"
            elif part == "state":
                kind = "raw" if norm.state_raw[i] else "[-1,1]"
            else:
                kind = f"/ {norm.action_bound[i]:.4g}"
            table.add_row(
                str(i),
                name,
                *(f"{getattr(stats, k)[i]:.4g}" for k in ("q01", "q99", "mean", "std", "min", "max")),
                kind,
            )
        Console().print(table)


def run_stats(args: argparse.Namespace) -> int:
    from xwam.data.open import open_dataset
    from xwam.data.stats import compute_norm_stats, write_dataset_stats

    ds = open_dataset(args.path)
    if args.out is None and hasattr(ds, "features"):
        norm = write_dataset_stats(args.path, images=not args.no_images)
        print(f"wrote {Path(args.path) / 'meta/xwam_norm.json'} and merged into {Path(args.path) / 'meta/stats.json'}")
    else:
        norm = compute_norm_stats(ds)
        out = Path(args.out or Path(args.path) / "norm_stats.json")
        if out.is_dir():
            out = out / "norm_stats.json"
        norm.to_json(out)
        print(f"wrote {out}")
    _print_table(norm)
    return 0


def run_check_stats(args: argparse.Namespace) -> int:
    from xwam.data.open import open_dataset
    from xwam.data.stats import NormStats, compare_stats, compute_norm_stats, load_dataset_norm_stats

    ckpt = Path(args.checkpoint)
    ckpt_file = ckpt / "norm_stats.json" if ckpt.is_dir() else ckpt
    if not ckpt_file.is_file():
        raise FileNotFoundError(f"checkpoint statistics not found: {ckpt_file}")
    checkpoint_stats = NormStats.from_json(ckpt_file)
    try:
        dataset_stats = load_dataset_norm_stats(args.path)
        source = "stored"
    except FileNotFoundError:
        dataset_stats = compute_norm_stats(open_dataset(args.path))
        source = "computed"
    problems = compare_stats(dataset_stats, checkpoint_stats, rtol=args.rtol)
    if problems:
        print(f"statistics of {args.path} ({source}) disagree with {ckpt_file} in {len(problems)} place(s):")
        for line in problems:
            print(f"  - {line}")
        return 1
    print(f"statistics of {args.path} ({source}) match {ckpt_file} (rtol {args.rtol:g})")
    return 0
