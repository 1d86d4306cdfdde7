"""`xwam dataset info|stats|import-stats|check-stats`: inspect datasets and their normalisation statistics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dataset",
        help="inspect a dataset (LeRobot v3 or release layout) and its normalisation statistics",
        description="Inspect datasets: `info` summarises, `stats` computes statistics, `import-stats` takes the "
        "X-WAM release's statistics from its YAML, `check-stats` compares a dataset's statistics with a "
        "checkpoint's norm_stats.json.",
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
        "entries of features xwam does not compute (e.g. next.done) are kept, never dropped. For a release-format "
        "dataset the statistics are computed as the release's statistics script does (q01/q99 of positions, "
        "symmetric action bounds, gripper action from moving frames only; a raw-mode dataset keeps its gripper "
        "action un-normalised, as the release trains it) and only meta/xwam_norm.json is written; "
        "--release-yaml also writes them in the release's YAML schema.",
    )
    stats.add_argument("path", help="dataset folder")
    stats.add_argument("--out", default=None, help="write NormStats JSON here instead of into the dataset")
    stats.add_argument("--release-yaml", default=None, metavar="FILE",
                       help="release-format datasets: also write the q01/q99 statistics in the release's schema "
                       "(what its compute_stats.py writes) to FILE")
    stats.add_argument(
        "--no-images", action="store_true", help="skip the sampled per-camera image statistics"
    )
    stats.set_defaults(func=run_stats)

    imp = verbs.add_parser(
        "import-stats",
        help="use the X-WAM release's statistics (YAML) as the dataset's normalisation",
        description="Read the X-WAM release's q01/q99 statistics from STATS (a data-config YAML with a "
        "'statistics:' block, a run's config.yaml with it under 'dataset:', or the output of the release's "
        "compute_stats.py with q01/q99 at the top level) and write them as our normalisation statistics: "
        "PATH/meta/xwam_norm.json, which training and `xwam dataset info` read, or --out FILE. Use this to "
        "normalise exactly as a released checkpoint was trained. State: per arm xyz (proprio_<arm>_ee_xyz), "
        "quaternion left raw, gripper (gripper_pos); action: xyz, rotation vector (action_<arm>_ee_xyz, "
        "_axisangle) and gripper (gripper_action), normalised as x / max(|q01|, |q99|). An arm without keys "
        "is marked invalid (single-arm data). Raw-mode release datasets keep the gripper action un-normalised "
        "(bound 1), as the release trains them. Refused: missing q01/q99, a key in one but not the other, "
        "wrong lengths, non-finite values. Example: xwam dataset import-stats data/robocasa "
        "configs/data/robocasa.yaml (the release's data config).",
    )
    imp.add_argument("path", help="dataset folder the statistics belong to (release format or LeRobot v3)")
    imp.add_argument("stats", help="release statistics YAML")
    imp.add_argument("--out", default=None, help="write the NormStats JSON here instead of PATH/meta/xwam_norm.json")
    imp.add_argument("--gripper-action", choices=("auto", "raw", "normalised"), default="auto",
                     help="auto (default): un-normalised for raw-mode release datasets, else gripper_action; "
                     "raw: always bound 1; normalised: always gripper_action")
    imp.set_defaults(func=run_import_stats)

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
    if hasattr(ds, "action_mode"):  # release format
        out["action_mode"] = ds.action_mode
        out["camera_types"] = list(ds.camera_types)
        out["depth_encoding"] = f"{ds.depth_kind}: 8-bit release code v as v / 127.5 - 1, not metres"
    if hasattr(ds, "features"):
        out["features"] = {
            k: {"dtype": f.get("dtype"), "shape": f.get("shape")} for k, f in ds.features.items()
        }
        out["tasks"] = len(ds.tasks)
        if ds.has_depth:
            storages = {ds.depth_storage(c) for c in ds.depth_keys}
            bits = (ds.info.get("xwam", {}).get("depth") or {}).get("bits", 12)
            out["depth_encoding"] = ("uint16 millimetres in the data parquet (metric)" if storages == {"parquet"}
                                     else f"{bits}-bit log-quantised FFV1 depth video (metric; older xwam format)")
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
    print(f"  state dim  {summary['state_dim']}  action dim {summary['action_dim']}"
          + (f"  (release actions: {summary['action_mode']} mode)" if summary.get("action_mode") else ""))
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
    if args.release_yaml and not hasattr(ds, "action_mode"):
        raise ValueError(f"--release-yaml needs a release-format dataset; {args.path} is {type(ds).__name__}")
    if args.out is None and hasattr(ds, "features"):
        norm = write_dataset_stats(args.path, images=not args.no_images)
        print(f"wrote {Path(args.path) / 'meta/xwam_norm.json'} and merged into {Path(args.path) / 'meta/stats.json'}")
    else:
        if hasattr(ds, "action_mode"):
            from xwam.data.release_stats import norm_stats_from_release, release_statistics

            release = release_statistics(ds)
            norm = norm_stats_from_release(release, raw_gripper=ds.action_mode == "raw", where=str(args.path))
            if args.release_yaml:
                _write_release_yaml(Path(args.release_yaml), release)
                print(f"wrote {args.release_yaml} (the release's statistics schema)")
            if ds.action_mode == "raw":
                print("raw-mode actions: the gripper action stays un-normalised (bound 1), as the release trains "
                      f"it; the script's gripper_action {release['q99']['gripper_action']} is not used")
        else:
            norm = compute_norm_stats(ds)
        out = _norm_path(args.path, args.out)
        norm.to_json(out)
        print(f"wrote {out}")
    _print_table(norm)
    return 0


def _norm_path(dataset: str, out: str | None) -> Path:
    """``--out`` (a folder gets norm_stats.json), else the dataset's meta/xwam_norm.json."""
    from xwam.data.lerobot_reader import NORM_PATH

    if out is None:
        return Path(dataset) / NORM_PATH
    path = Path(out)
    return path / "norm_stats.json" if path.is_dir() else path


def _write_release_yaml(path: Path, stats: dict[str, Any]) -> None:
    import yaml

    from xwam.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump({"q01": stats["q01"], "q99": stats["q99"]}, sort_keys=False))


def run_import_stats(args: argparse.Namespace) -> int:
    from xwam.data.open import open_dataset
    from xwam.data.release_stats import (
        asymmetric_action_keys,
        norm_stats_from_release,
        read_release_statistics,
    )

    ds = open_dataset(args.path)
    stats = read_release_statistics(args.stats)
    raw_mode = getattr(ds, "action_mode", None) == "raw"
    raw_gripper = args.gripper_action == "raw" or (args.gripper_action == "auto" and raw_mode)
    norm = norm_stats_from_release(stats, raw_gripper=raw_gripper, where=str(args.stats))
    if norm.state_dim != len(ds.state_names) or norm.action_dim != len(ds.action_names):
        raise ValueError(f"{args.path} has state/action dims {len(ds.state_names)}/{len(ds.action_names)}; the "
                         f"release statistics describe {norm.state_dim}/{norm.action_dim}")
    for key in stats["ignored"]:
        print(f"note: ignored unknown key {key!r}")
    for key in asymmetric_action_keys(stats):
        print(f"warning: {key} has asymmetric bounds {stats['q01'][key]} / {stats['q99'][key]}; xwam normalises "
              f"actions as x / max(|q01|, |q99|), the release as 2 (x - q01) / (q99 - q01) - 1")
    if raw_gripper:
        print("the gripper action stays un-normalised (bound 1)"
              + (", as the release trains raw-mode data" if raw_mode and args.gripper_action == "auto" else ""))
    out = _norm_path(args.path, args.out)
    norm.to_json(out)  # atomic (xwam.atomic.atomic_write_json)
    invalid = [n for n, v in zip(norm.state_names, norm.state_valid) if not v]
    print(f"wrote {out} from {args.stats}" + (f" (invalid: {', '.join(invalid)})" if invalid else ""))
    _print_table(norm)
    return 0


def run_check_stats(args: argparse.Namespace) -> int:
    from xwam.data.open import open_dataset
    from xwam.data.stats import (
        NormStats,
        compare_stats,
        compute_norm_stats,
        load_dataset_norm_stats,
        with_quaternion_norm,
    )

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
    # a checkpoint that aligned the state's quaternions is compared with the dataset's aligned alike
    mode = "aligned" if checkpoint_stats.quaternions_aligned else "raw"
    dataset_stats = with_quaternion_norm(dataset_stats, mode, [open_dataset(args.path)])
    problems = compare_stats(dataset_stats, checkpoint_stats, rtol=args.rtol)
    if problems:
        print(f"statistics of {args.path} ({source}) disagree with {ckpt_file} in {len(problems)} place(s):")
        for line in problems:
            print(f"  - {line}")
        return 1
    print(f"statistics of {args.path} ({source}) match {ckpt_file} (rtol {args.rtol:g})")
    return 0
