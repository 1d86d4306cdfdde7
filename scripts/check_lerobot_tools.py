"""Pass an xwam-written LeRobot v3.0 dataset through the real lerobot 0.4.4 tools and compare.

Run it with the python of a virtual environment that has ``lerobot==0.4.4`` (never a dependency of
xwam; see README "LeRobot"), on a dataset ``xwam collect`` wrote::

    python3 -m venv /tmp/lerobot-venv && /tmp/lerobot-venv/bin/pip install lerobot==0.4.4
    .venv/bin/xwam collect --task Lift --episodes 4 --out /tmp/lr_check/ds --height 32 --width 32
    /tmp/lerobot-venv/bin/python scripts/check_lerobot_tools.py /tmp/lr_check/ds \\
        --work /tmp/lr_check/out --json benchmarks/results/lerobot_tools_check.json

What it does, in the lerobot environment:

1. ``LeRobotDataset`` loads the dataset (PyAV video backend) and one frame is indexed;
2. ``delete_episodes`` (episode 1), ``split_dataset`` (episodes 0, 2 / 1, 3) and ``merge_datasets``
   (the two splits back together; and the dataset with an unmodified copy of itself) write new
   datasets, each loaded again by ``LeRobotDataset``;
3. for each result: which features ``meta/stats.json`` has statistics for, and the type of ``fps``;
4. depth storages that were considered: the depth of episode 0 is written as each candidate video
   and cut with lerobot's own ``_keep_episodes_from_video_with_av`` (what ``delete_episodes`` and
   ``split_dataset`` do to every video file that holds a removed episode), then decoded; the max abs
   depth error in metres is reported; and the depth as a 3-D ``[H, W, 1]`` array feature instead
   of a flat vector goes through ``delete_episodes``.

Then, with the project's python (``--xwam-python``, default ``.venv/bin/python``), xwam's own reader
reads every result and compares depth, state and action to the original episodes (``--compare``
mode of this script: it imports xwam, never lerobot). Everything lands in one JSON report.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
import traceback
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# old episode index -> the episode it becomes in each result (lerobot renumbers from 0)
OPERATIONS = {
    "delete_episodes": {"path": "deleted", "episodes": [0, 2, 3]},
    "split_dataset/a": {"path": "split/a", "episodes": [0, 2]},
    "split_dataset/b": {"path": "split/b", "episodes": [1, 3]},
    "merge_datasets": {"path": "merged", "episodes": [0, 2, 1, 3]},
    # two unmodified copies: merge concatenates the files xwam wrote, nothing lerobot re-encoded
    "merge_datasets/originals": {"path": "merged_originals", "episodes": [0, 1, 2, 3, 0, 1, 2, 3]},
}


# ---------------------------------------------------------------------------------------------
# lerobot side
# ---------------------------------------------------------------------------------------------
def _load(root: Path, repo_id: str) -> Any:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    # torchcodec needs a system FFmpeg that this machine may lack; PyAV ships its own
    return LeRobotDataset(repo_id, root=root, video_backend="pyav")


def _describe_item(dataset: Any) -> dict[str, Any]:
    item = dataset[min(5, len(dataset) - 1)]
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in item.items() if hasattr(v, "shape")}


def _describe_result(root: Path) -> dict[str, Any]:
    info = json.loads((root / "meta/info.json").read_text())
    stats = json.loads((root / "meta/stats.json").read_text()) if (root / "meta/stats.json").exists() else {}
    features = [k for k in info["features"]]
    return {
        "fps": info["fps"],
        "fps_type": type(info["fps"]).__name__,
        "stats_features": sorted(stats),
        "features_without_stats": sorted(k for k in features if k not in stats),
        "depth_features": {k: {"dtype": f["dtype"], "shape": f["shape"]} for k, f in info["features"].items()
                           if k.startswith("observation.depth.")},
        "xwam_block_kept": "xwam" in info,
    }


def _copy(source: Path, dst: Path) -> Path:
    shutil.copytree(source, dst)
    return dst


def run_lerobot_tools(source: Path, work: Path) -> dict[str, Any]:
    from lerobot.datasets.dataset_tools import delete_episodes, merge_datasets, split_dataset

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    report: dict[str, Any] = {}
    original = _load(source, "xwam/original")
    report["load"] = {"frames": len(original), "episodes": original.meta.total_episodes,
                      "item": _describe_item(original)}
    steps = {
        "delete_episodes": lambda: delete_episodes(original, [1], output_dir=work / "deleted", repo_id="xwam/deleted"),
        "split_dataset": lambda: split_dataset(original, {"a": [0, 2], "b": [1, 3]}, output_dir=work / "split"),
        "merge_datasets": lambda: merge_datasets(
            [_load(work / "split/a", "xwam/a"), _load(work / "split/b", "xwam/b")], "xwam/merged",
            output_dir=work / "merged"),
        "merge_datasets/originals": lambda: merge_datasets(
            [original, _load(_copy(source, work / "copy"), "xwam/copy")], "xwam/merged_originals",
            output_dir=work / "merged_originals"),
    }
    for name, step in steps.items():
        start = time.time()
        try:
            step()
            report[name] = {"ok": True, "seconds": round(time.time() - start, 1)}
        except Exception as exc:  # noqa: BLE001 - what lerobot raised is the measurement
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400],
                            "where": traceback.format_exc(limit=-2).splitlines()[-3:]}
    for name, op in OPERATIONS.items():
        root = work / op["path"]
        if not (root / "meta/info.json").exists():
            continue
        entry = report.setdefault(name, {})
        entry.update(_describe_result(root))
        try:
            entry["lerobot_load"] = {"frames": len(_load(root, f"xwam/{op['path']}")), "ok": True}
        except Exception as exc:  # noqa: BLE001
            entry["lerobot_load"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return report


# ---- candidate depth videos through lerobot's re-encode ------------------------------------
def _log_codes(depth: np.ndarray, bits: int = 12, lo: float = 0.01, hi: float = 10.0, shift: float = 3.5) -> np.ndarray:
    """xwam's format-1 quantiser (xwam.data.video.DepthQuantizer), restated without importing xwam."""
    a, b = math.log(lo + shift), math.log(hi + shift)
    u = (np.log(np.clip(depth, lo, hi) + shift) - a) / (b - a)
    return np.rint(u * (2**bits - 1)).astype(np.uint16)


def _log_depth(codes: np.ndarray, bits: int = 12, lo: float = 0.01, hi: float = 10.0, shift: float = 3.5) -> np.ndarray:
    a, b = math.log(lo + shift), math.log(hi + shift)
    return np.exp(a + codes / (2**bits - 1) * (b - a)) - shift


def _write_video(path: Path, frames: np.ndarray, fmt: str, codec: str, pix_fmt: str, options: dict | None = None) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(20))
        stream.pix_fmt, stream.width, stream.height = pix_fmt, frames.shape[2], frames.shape[1]
        stream.options = options or {}
        for t, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=fmt).reformat(format=pix_fmt)
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _read_video(path: Path, fmt: str) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.reformat(format=fmt).to_ndarray() for f in container.decode(video=0)])


def measure_video_candidates(depth: np.ndarray, work: Path) -> dict[str, Any]:
    """Each candidate: encode ``depth`` (T, H, W metres), cut it with lerobot's re-encoder keeping all
    frames, decode, and report the max abs depth error (metres) and the stored bit depth."""
    from lerobot.datasets.dataset_tools import _keep_episodes_from_video_with_av

    work.mkdir(parents=True, exist_ok=True)
    T = len(depth)
    near, far = 0.05, 5.0
    mm = np.clip(np.rint(depth * 1000), 1, 65535).astype(np.uint16)

    def inv8(d: np.ndarray) -> np.ndarray:
        return np.rint((1 / np.clip(d, near, far) - 1 / far) / (1 / near - 1 / far) * 255).astype(np.uint8)

    def inv8_back(v: np.ndarray) -> np.ndarray:
        return 1 / (v.astype(np.float64) / 255 * (1 / near - 1 / far) + 1 / far)

    planes = np.stack([mm >> 8, mm & 255, np.zeros_like(mm)], -1).astype(np.uint8)
    candidates = {
        "ffv1_gray12le_log12 (format 1)": dict(
            frames=_log_codes(depth), fmt="gray12le", codec="ffv1", pix_fmt="gray12le",
            # lerobot's re-encode leaves 8-bit grey; the best a reader can do is rescale it
            back=lambda v: _log_depth(v[..., 0].astype(np.float64) * 4095 / 255), read="rgb24",
            note="read as lerobot decodes it (8-bit) and rescaled to 12-bit codes, before and after the cut"),
        "h264_8bit_inverse_depth (near 0.05 m, far 5 m)": dict(
            frames=np.repeat(inv8(depth)[..., None], 3, -1), fmt="rgb24", codec="libx264", pix_fmt="yuv420p",
            options={"crf": "0"}, back=lambda v: inv8_back(v[..., 0]), read="rgb24",
            note="8-bit quantisation of 1/d alone costs decimetres at the far end"),
        "h264_two_8bit_planes (mm high/low byte)": dict(
            frames=planes, fmt="rgb24", codec="libx264rgb", pix_fmt="rgb24", options={"qp": "0"},
            back=lambda v: (v[..., 0].astype(np.float64) * 256 + v[..., 1]) / 1000, read="rgb24",
            note="lossless as written; lossy 4:2:0 AV1 scrambles the low byte"),
    }
    out: dict[str, Any] = {}
    for name, c in candidates.items():
        src, dst = work / "src.mkv", work / "dst.mp4"
        try:
            _write_video(src, c["frames"], c["fmt"], c["codec"], c["pix_fmt"], c.get("options"))
            stored = _read_video(src, c["read"])
            before = float(np.abs(c["back"](stored) - depth).max())
            _keep_episodes_from_video_with_av(src, dst, [(0, T)], 20)
            cut = _read_video(dst, c["read"])
            after = np.abs(c["back"](cut) - depth)
            out[name] = {"note": c["note"], "max_abs_error_m_as_written": round(before, 6),
                         "max_abs_error_m_after_lerobot_reencode": round(float(after.max()), 6),
                         "median_abs_error_m_after_lerobot_reencode": round(float(np.median(after)), 6)}
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    out["parquet_uint16_mm (format 2)"] = {
        "max_abs_error_m_as_written": round(float(np.abs(mm / 1000 - depth).max()), 6),
        "note": "a parquet column: delete/split/merge copy it (measured per operation below); the reference "
                "here is the dataset's own millimetres, so 0; against float depth it is at most 0.5 mm"}
    return out


def measure_array3d_depth(source: Path, work: Path) -> dict[str, Any]:
    """The same depth declared as a 3-D ``uint16`` array feature ``[H, W, 1]`` (nested lists, as HF
    ``datasets.Array3D`` stores it) instead of a flat ``[H * W]`` vector: what ``delete_episodes`` does."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from lerobot.datasets.dataset_tools import delete_episodes

    root = _copy(source, work / "array3d_source")
    info = json.loads((root / "meta/info.json").read_text())
    for path in (root / "data").rglob("*.parquet"):
        table = pq.read_table(path)
        for key, feature in info["features"].items():
            if key.startswith("observation.depth.") and feature["dtype"] == "uint16" and key in table.column_names:
                h, w = feature["info"]["depth.height"], feature["info"]["depth.width"]
                rows = [np.asarray(v, np.uint16).reshape(h, w, 1).tolist() for v in table.column(key).to_pylist()]
                nested = pa.array(rows, pa.list_(pa.list_(pa.list_(pa.uint16()))))
                table = table.set_column(table.column_names.index(key), key, nested)
                feature.update(shape=[h, w, 1], names=["height", "width", "channels"])
        pq.write_table(table, path)
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    result: dict[str, Any] = {"lerobot_load": _describe_item(_load(root, "xwam/array3d")).get(
        next(k for k in info["features"] if k.startswith("observation.depth.")))}
    try:
        delete_episodes(_load(root, "xwam/array3d"), [1], output_dir=work / "array3d_deleted", repo_id="xwam/a3d")
        result["delete_episodes"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        result["delete_episodes"] = {"ok": False, "error": text if len(text) < 300 else f"{text[:150]} ... {text[-120:]}"}
    return result


def _original_depth(source: Path) -> np.ndarray | None:
    """Episode 0's depth of the first depth camera in metres, from a format-2 dataset's parquet."""
    import pyarrow.parquet as pq

    info = json.loads((source / "meta/info.json").read_text())
    key = next((k for k, f in info["features"].items() if k.startswith("observation.depth.") and f["dtype"] == "uint16"), None)
    if key is None:
        return None
    table = pq.read_table(next((source / "data").rglob("*.parquet")), columns=[key, "episode_index"])
    rows = np.asarray(table.column("episode_index")) == 0
    vinfo = info["features"][key]["info"]
    codes = np.stack([np.asarray(v, np.float64) for v in table.column(key).to_pylist()])[rows]
    return (codes * vinfo["depth.scale_m"]).reshape(-1, vinfo["depth.height"], vinfo["depth.width"])


# ---------------------------------------------------------------------------------------------
# xwam side (--compare): imports xwam, never lerobot
# ---------------------------------------------------------------------------------------------
def compare_with_xwam(source: Path, work: Path) -> dict[str, Any]:
    from xwam.data.errors import DatasetError
    from xwam.data.lerobot_reader import LeRobotV3Dataset

    original = LeRobotV3Dataset(source, cache_size=0)
    out: dict[str, Any] = {}
    for name, op in OPERATIONS.items():
        root = work / op["path"]
        if not (root / "meta/info.json").exists():
            out[name] = {"read": False, "error": "lerobot wrote no dataset"}
            continue
        entry: dict[str, Any] = {}
        try:
            result = LeRobotV3Dataset(root, cache_size=0)
            if result.num_episodes != len(op["episodes"]):  # a step that failed half way
                raise DatasetError(f"{root}: {result.num_episodes} episodes, expected {len(op['episodes'])}")
            depth_err, exact = 0.0, True
            for new, old in enumerate(op["episodes"]):
                a, b = result.episode(new), original.episode(old)
                exact &= np.array_equal(a.state, b.state) and np.array_equal(a.action, b.action)
                if b.depth is not None:
                    for cam in b.camera_names:
                        finite = np.isfinite(b.depth[cam])
                        depth_err = max(depth_err, float(np.abs(a.depth[cam] - b.depth[cam])[finite].max()))
            entry.update(read=True, episodes=result.num_episodes, state_action_exact=bool(exact),
                         has_depth=result.has_depth, max_abs_depth_error_m=depth_err,
                         stats=_stats_summary(root))
        except DatasetError as exc:
            entry.update(read=False, error=str(exc)[:400])
        out[name] = entry
    return out


def _stats_summary(root: Path) -> dict[str, Any]:
    stats = json.loads((root / "meta/stats.json").read_text())
    depth = {k: {s: v for s, v in stats[k].items() if s in ("min", "max", "mean", "count")}
             for k in stats if k.startswith("observation.depth.")}
    return {"features": len(stats), "depth": depth}


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", type=Path, help="a LeRobot dataset xwam wrote (4+ episodes)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lr_check/out"), help="where lerobot writes")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--xwam-python", default=str(REPO / ".venv/bin/python"))
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare:  # the project's python, called below
        sys.path.insert(0, str(REPO / "src"))
        print(json.dumps(compare_with_xwam(args.dataset, args.work)))
        return 0
    try:
        import lerobot
    except ImportError:
        print("run this with the python of a virtual environment that has lerobot==0.4.4", file=sys.stderr)
        return 2
    if not (args.dataset / "meta/info.json").is_file():
        print(f"{args.dataset}: not a LeRobot dataset (meta/info.json missing)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"lerobot_version": getattr(lerobot, "__version__", "?"), "dataset": str(args.dataset)}
    report["lerobot"] = run_lerobot_tools(args.dataset, args.work)
    depth = _original_depth(args.dataset)
    if depth is not None:
        report["depth_candidates"] = measure_video_candidates(depth, args.work / "candidates")
        report["depth_candidates"]["parquet_uint16_array3d [H, W, 1]"] = measure_array3d_depth(args.dataset, args.work)
    done = subprocess.run([args.xwam_python, __file__, str(args.dataset), "--work", str(args.work), "--compare"],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        report["xwam_reader"] = {"error": done.stderr.strip().splitlines()[-1:] or ["?"]}
    else:
        report["xwam_reader"] = json.loads(done.stdout.strip().splitlines()[-1])
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
