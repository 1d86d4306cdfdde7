"""LeRobot dataset v3.0 writer and reader (pyarrow + PyAV; no dependency on the `lerobot` package).

Layout written (and read)::

    meta/info.json                               codebase_version "v3.0", fps, features, templates, totals
    meta/stats.json                              LeRobot statistics (see xwam.data.stats)
    meta/xwam_norm.json                          our normalisation statistics (NormStats)
    meta/tasks.parquet                           task strings (pandas index "task") -> task_index
    meta/episodes/chunk-XXX/file-XXX.parquet     one row per episode (lengths, tasks, file offsets)
    data/chunk-XXX/file-XXX.parquet              one row per frame
    videos/<video_key>/chunk-XXX/file-XXX.mp4    many episodes per file, located by timestamps

Feature keys: ``observation.images.<cam>`` (RGB video, H.264 yuv420p), ``observation.depth.<cam>``
(12-bit log-quantised depth video, FFV1 gray12le, ``video.is_depth_map: true``),
``observation.state``, ``action``, ``observation.cameras.<cam>.intrinsics`` (9 floats, row-major
3x3) and ``.extrinsics`` (16 floats, row-major 4x4 camera-to-world, OpenCV axes), plus LeRobot's
``timestamp``, ``frame_index``, ``episode_index``, ``index`` and ``task_index``. What LeRobot has no
slot for (camera order, depth quantiser, state/action names, robot type) sits in ``info["xwam"]``.

Crash safety: the writer encodes a group of episodes (one data file and one video file per key)
into a staging folder inside the dataset, moves the finished files into place, then rewrites
``meta/info.json`` atomically. ``info.json``'s ``total_episodes`` is the commit point: the reader
ignores any episode at or beyond it, and the next writer overwrites the uncommitted files. An
interrupted process therefore loses at most the episodes of the group it was writing.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xwam.data.episode import Episode, EpisodeCache
from xwam.data.errors import DatasetError
from xwam.data.layout import default_action_names, default_state_names
from xwam.data.video import (
    DEPTH_CODEC,
    DEPTH_PIX_FMT,
    RGB_CODEC,
    RGB_PIX_FMT,
    DepthQuantizer,
    VideoEncoder,
    decode_frames,
)

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
STATS_PATH = "meta/stats.json"
NORM_PATH = "meta/xwam_norm.json"

STATE_KEY = "observation.state"
ACTION_KEY = "action"


def rgb_key(cam: str) -> str:
    return f"observation.images.{cam}"


def depth_key(cam: str) -> str:
    return f"observation.depth.{cam}"


def intrinsics_key(cam: str) -> str:
    return f"observation.cameras.{cam}.intrinsics"


def extrinsics_key(cam: str) -> str:
    return f"observation.cameras.{cam}.extrinsics"


# ---------------------------------------------------------------------------------------------
# small atomic-write helpers
# ---------------------------------------------------------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, data: Any) -> None:
    _atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")


def _atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_parquet(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{what} file missing: {path}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{what} file {path} is corrupt or unreadable: {exc}") from exc


def _list_column(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values)
    flat = pa.array(values.reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, int(values.shape[1]))


def column_to_numpy(table: pa.Table, name: str, where: str) -> np.ndarray:
    """A list / fixed-size-list column as a (rows, dim) array, a scalar column as (rows,)."""
    if name not in table.column_names:
        raise DatasetError(f"{where}: column {name!r} is missing")
    col = table.column(name).combine_chunks()
    if (
        pa.types.is_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
        or pa.types.is_large_list(col.type)
    ):
        flat = col.flatten().to_numpy(zero_copy_only=False)
        rows = len(col)
        return flat.reshape(rows, -1) if rows else flat.reshape(0, 0)
    return col.to_numpy(zero_copy_only=False)


def _feature_video(
    shape: list[int],
    names: list[str],
    fps: float,
    codec: str,
    pix_fmt: str,
    depth: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    info = {
        "video.height": shape[0],
        "video.width": shape[1],
        "video.codec": "h264" if codec == "libx264" else codec,
        "video.pix_fmt": pix_fmt,
        "video.is_depth_map": depth,
        "video.fps": fps,
        "video.channels": shape[2],
        "has_audio": False,
    }
    info.update(extra or {})
    return {"dtype": "video", "shape": shape, "names": names, "info": info}


# ---------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------
class LeRobotV3Writer:
    """Writes Episodes as a LeRobot v3.0 dataset; opens an existing one to append.

    The schema (cameras, resolution, state/action sizes, whether depth and camera matrices are
    stored) is fixed by ``info.json`` when the dataset exists, else by the first episode. Episodes
    are buffered into the current file group (encoded as they arrive) and committed when the group
    holds ``episodes_per_file`` episodes or its videos exceed ``video_files_size_in_mb``, on
    :meth:`flush` and on :meth:`close`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: float | None = None,
        robot_type: str = "unknown",
        episodes_per_file: int = 50,
        video_files_size_in_mb: float = 200.0,
        data_files_size_in_mb: float = 100.0,
        chunks_size: int = 1000,
        depth_quantizer: DepthQuantizer | None = None,
        rgb_crf: int = 18,
        state_names: list[str] | None = None,
        action_names: list[str] | None = None,
        write_stats_on_close: bool = True,
    ) -> None:
        self.root = Path(root)
        self.episodes_per_file = max(1, int(episodes_per_file))
        self.rgb_crf = int(rgb_crf)
        self.write_stats_on_close = write_stats_on_close
        self._closed = False
        self._group: _Group | None = None
        info_file = self.root / INFO_PATH
        if info_file.exists():
            self.info = _load_info(self.root)
            if "xwam" not in self.info:
                raise DatasetError(
                    f"{info_file}: appending is only supported to datasets written by xwam (no 'xwam' section)"
                )
            if fps is not None and abs(float(fps) - float(self.info["fps"])) > 1e-6:
                raise ValueError(
                    f"{self.root}: dataset fps is {self.info['fps']}, cannot append episodes at {fps}"
                )
            self.tasks = _load_tasks(self.root)
        else:
            self.info = {
                "codebase_version": CODEBASE_VERSION,
                "robot_type": robot_type,
                "total_episodes": 0,
                "total_frames": 0,
                "total_tasks": 0,
                "chunks_size": int(chunks_size),
                "data_files_size_in_mb": float(data_files_size_in_mb),
                "video_files_size_in_mb": float(video_files_size_in_mb),
                "fps": float(fps) if fps is not None else None,
                "splits": {},
                "data_path": DATA_PATH,
                "video_path": VIDEO_PATH,
                "features": {},
                "xwam": {
                    "format_version": 1,
                    "camera_names": None,
                    "depth": None,
                    "state_names": state_names,
                    "action_names": action_names,
                    "file_groups": 0,
                    "rgb_codec": RGB_CODEC,
                    "rgb_crf": self.rgb_crf,
                },
            }
            self.tasks = {}
            self._depth_quantizer = depth_quantizer or DepthQuantizer()
        if "xwam" in self.info and self.info["xwam"].get("depth"):
            self._depth_quantizer = DepthQuantizer.from_dict(self.info["xwam"]["depth"])
        elif not hasattr(self, "_depth_quantizer"):
            self._depth_quantizer = depth_quantizer or DepthQuantizer()
        self._cleanup_staging()

    # ---- public -----------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        """Committed episodes plus those in the group being written."""
        pending = len(self._group.rows) if self._group else 0
        return int(self.info["total_episodes"]) + pending

    def add_episode(self, episode: Episode) -> int:
        """Append one episode; returns its episode_index."""
        if self._closed:
            raise RuntimeError("writer is closed")
        try:
            episode.validate()
        except ValueError as exc:
            raise ValueError(f"episode {self.num_episodes}: {exc}") from exc
        self._check_schema(episode)
        if self._group is None:
            self._group = _Group(self, int(self.info["xwam"]["file_groups"]))
        index = self.num_episodes
        self._group.add(episode, index)
        if (
            len(self._group.rows) >= self.episodes_per_file
            or self._group.video_mb() >= float(self.info["video_files_size_in_mb"])
            or self._group.data_mb() >= float(self.info["data_files_size_in_mb"])
        ):
            self.flush()
        return index

    def flush(self) -> None:
        """Commit the episodes written so far (closes the current file group)."""
        if self._group is None or not self._group.rows:
            return
        group, self._group = self._group, None
        group.commit()

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self.write_stats_on_close and int(self.info["total_episodes"]) > 0:
            from xwam.data.stats import write_dataset_stats

            write_dataset_stats(self.root)

    def abort(self) -> None:
        """Drop the uncommitted group (what a crash would do, but tidily)."""
        if self._group is not None:
            self._group.discard()
            self._group = None
        self._closed = True

    def __enter__(self) -> LeRobotV3Writer:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ---- internals --------------------------------------------------------------------------
    def _cleanup_staging(self) -> None:
        if self.root.is_dir():
            for stale in self.root.glob(".staging-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def _check_schema(self, ep: Episode) -> None:
        x = self.info["xwam"]
        if self.info["fps"] is None:
            self.info["fps"] = float(ep.fps)
        elif abs(float(ep.fps) - float(self.info["fps"])) > 1e-6:
            raise ValueError(
                f"episode {self.num_episodes}: fps {ep.fps} differs from the dataset's {self.info['fps']}"
            )
        if x["camera_names"] is None:
            self._init_features(ep)
            return
        problems = []
        if list(ep.camera_names) != list(x["camera_names"]):
            problems.append(f"cameras {ep.camera_names} != dataset cameras {x['camera_names']}")
        else:
            for cam in ep.camera_names:
                shape = list(self.info["features"][rgb_key(cam)]["shape"])
                if list(ep.rgb[cam].shape[1:]) != shape:
                    problems.append(f"camera {cam!r} frames {list(ep.rgb[cam].shape[1:])} != dataset {shape}")
        if ep.state.shape[1] != self.info["features"][STATE_KEY]["shape"][0]:
            problems.append(
                f"state dim {ep.state.shape[1]} != {self.info['features'][STATE_KEY]['shape'][0]}"
            )
        if ep.action.shape[1] != self.info["features"][ACTION_KEY]["shape"][0]:
            problems.append(
                f"action dim {ep.action.shape[1]} != {self.info['features'][ACTION_KEY]['shape'][0]}"
            )
        for name, table, flag in (
            ("depth", ep.depth, x["depth"] is not None),
            ("intrinsics", ep.intrinsics, x.get("has_intrinsics", False)),
            ("extrinsics", ep.extrinsics, x.get("has_extrinsics", False)),
        ):
            if (table is not None) != flag:
                problems.append(
                    f"{name} {'missing' if flag else 'present'} but the dataset {'has' if flag else 'has no'} {name}"
                )
        if problems:
            raise ValueError(
                f"episode {self.num_episodes} does not match dataset {self.root}: " + "; ".join(problems)
            )

    def _init_features(self, ep: Episode) -> None:
        fps = float(self.info["fps"])
        S, A = int(ep.state.shape[1]), int(ep.action.shape[1])
        x = self.info["xwam"]
        x["camera_names"] = list(ep.camera_names)
        x["state_names"] = x["state_names"] or default_state_names(S)
        x["action_names"] = x["action_names"] or default_action_names(A)
        if len(x["state_names"]) != S or len(x["action_names"]) != A:
            raise ValueError(
                f"state/action names ({len(x['state_names'])}/{len(x['action_names'])}) do not match "
                f"the episode's dims ({S}/{A})"
            )
        x["has_intrinsics"] = ep.intrinsics is not None
        x["has_extrinsics"] = ep.extrinsics is not None
        feats: dict[str, Any] = {}
        for cam in ep.camera_names:
            h, w = int(ep.rgb[cam].shape[1]), int(ep.rgb[cam].shape[2])
            feats[rgb_key(cam)] = _feature_video(
                [h, w, 3], ["height", "width", "channels"], fps, RGB_CODEC, RGB_PIX_FMT, False
            )
        if ep.depth is not None:
            q = self._depth_quantizer
            x["depth"] = {"encoding": "log", **q.to_dict(), "unit": "m"}
            for cam in ep.camera_names:
                h, w = ep.depth[cam].shape[1:3]
                feats[depth_key(cam)] = _feature_video(
                    [int(h), int(w), 1],
                    ["height", "width", "channels"],
                    fps,
                    DEPTH_CODEC,
                    DEPTH_PIX_FMT,
                    True,
                    {
                        "video.depth_min": q.depth_min,
                        "video.depth_max": q.depth_max,
                        "video.depth_shift": q.shift,
                        "video.depth_bits": q.bits,
                        "video.depth_encoding": "log",
                    },
                )
        feats[STATE_KEY] = {"dtype": "float32", "shape": [S], "names": x["state_names"]}
        feats[ACTION_KEY] = {"dtype": "float32", "shape": [A], "names": x["action_names"]}
        for cam in ep.camera_names:
            if ep.intrinsics is not None:
                feats[intrinsics_key(cam)] = {"dtype": "float64", "shape": [9], "names": None}
            if ep.extrinsics is not None:
                feats[extrinsics_key(cam)] = {"dtype": "float64", "shape": [16], "names": None}
        for name in ("timestamp",):
            feats[name] = {"dtype": "float32", "shape": [1], "names": None}
        for name in ("frame_index", "episode_index", "index", "task_index"):
            feats[name] = {"dtype": "int64", "shape": [1], "names": None}
        self.info["features"] = feats

    def _task_index(self, task: str) -> int:
        if task not in self.tasks:
            self.tasks[task] = len(self.tasks)
        return self.tasks[task]


class _Group:
    """One file group being written: one data parquet and one video per key, in a staging folder."""

    def __init__(self, writer: LeRobotV3Writer, counter: int) -> None:
        self.w = writer
        info = writer.info
        self.chunk_index, self.file_index = divmod(counter, int(info["chunks_size"]))
        self.counter = counter
        self.staging = writer.root / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir(parents=True)
        self.encoders: dict[str, VideoEncoder] = {}
        self.columns: dict[str, list[np.ndarray]] = {}
        self.rows: list[dict[str, Any]] = []
        self.frames = 0
        self.frame_offset = int(info["total_frames"])

    def _video_rel(self, key: str) -> str:
        return VIDEO_PATH.format(video_key=key, chunk_index=self.chunk_index, file_index=self.file_index)

    def _encoder(self, key: str, kind: str, h: int, w: int) -> VideoEncoder:
        if key not in self.encoders:
            self.encoders[key] = VideoEncoder(
                self.staging / self._video_rel(key),
                width=w,
                height=h,
                fps=float(self.w.info["fps"]),
                kind=kind,
                crf=self.w.rgb_crf,
            )
        return self.encoders[key]

    def add(self, ep: Episode, episode_index: int) -> None:
        T = ep.length
        fps = float(self.w.info["fps"])
        start = self.frames
        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": [ep.task],
            "length": T,
            "data/chunk_index": self.chunk_index,
            "data/file_index": self.file_index,
            "dataset_from_index": self.frame_offset + start,
            "dataset_to_index": self.frame_offset + start + T,
            "meta/episodes/chunk_index": self.chunk_index,
            "meta/episodes/file_index": self.file_index,
            "xwam/success": bool(ep.success),
            "xwam/seed": int(ep.meta.get("seed", -1)),
            "xwam/meta": json.dumps(ep.meta, default=str, sort_keys=True),
        }
        for cam in ep.camera_names:
            rgb = ep.rgb[cam]
            self._encoder(rgb_key(cam), "rgb", rgb.shape[1], rgb.shape[2]).write(rgb)
            keys = [rgb_key(cam)]
            if ep.depth is not None:
                d = ep.depth[cam]
                self._encoder(depth_key(cam), "depth", d.shape[1], d.shape[2]).write(
                    self.w._depth_quantizer.encode(d)
                )
                keys.append(depth_key(cam))
            for key in keys:
                row[f"videos/{key}/chunk_index"] = self.chunk_index
                row[f"videos/{key}/file_index"] = self.file_index
                row[f"videos/{key}/from_timestamp"] = start / fps
                row[f"videos/{key}/to_timestamp"] = (start + T) / fps
        cols = self.columns
        cols.setdefault(STATE_KEY, []).append(np.asarray(ep.state, dtype=np.float32))
        cols.setdefault(ACTION_KEY, []).append(np.asarray(ep.action, dtype=np.float32))
        for cam in ep.camera_names:
            if ep.intrinsics is not None:
                cols.setdefault(intrinsics_key(cam), []).append(
                    np.asarray(ep.intrinsics[cam], np.float64).reshape(T, 9)
                )
            if ep.extrinsics is not None:
                cols.setdefault(extrinsics_key(cam), []).append(
                    np.asarray(ep.extrinsics[cam], np.float64).reshape(T, 16)
                )
        frame_index = np.arange(T, dtype=np.int64)
        cols.setdefault("timestamp", []).append((frame_index / fps).astype(np.float32))
        cols.setdefault("frame_index", []).append(frame_index)
        cols.setdefault("episode_index", []).append(np.full(T, episode_index, np.int64))
        cols.setdefault("index", []).append(self.frame_offset + start + frame_index)
        cols.setdefault("task_index", []).append(np.full(T, self.w._task_index(ep.task), np.int64))
        self.frames += T
        self.rows.append(row)

    def video_mb(self) -> float:
        total = 0
        for enc in self.encoders.values():
            if enc.path.exists():
                total += enc.path.stat().st_size
        return total / 2**20

    def data_mb(self) -> float:
        return sum(a.nbytes for arrays in self.columns.values() for a in arrays) / 2**20

    def _data_table(self) -> pa.Table:
        arrays, names = [], []
        for name, parts in self.columns.items():
            values = np.concatenate(parts)
            if values.ndim == 2:
                dtype = pa.float32() if values.dtype == np.float32 else pa.float64()
                arrays.append(_list_column(values, dtype))
            else:
                arrays.append(pa.array(values))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)

    def _episodes_table(self) -> pa.Table:
        names = list(self.rows[0].keys())
        data = {n: [r.get(n) for r in self.rows] for n in names}
        types = {"tasks": pa.list_(pa.string()), "xwam/meta": pa.string(), "xwam/success": pa.bool_()}
        arrays = []
        for n in names:
            if n in types:
                arrays.append(pa.array(data[n], type=types[n]))
            elif n.endswith("_timestamp"):
                arrays.append(pa.array(data[n], type=pa.float64()))
            else:
                arrays.append(pa.array(data[n], type=pa.int64()))
        return pa.Table.from_arrays(arrays, names=names)

    def commit(self) -> None:
        w = self.w
        for enc in self.encoders.values():
            enc.close()
        data_rel = DATA_PATH.format(chunk_index=self.chunk_index, file_index=self.file_index)
        episodes_rel = EPISODES_PATH.format(chunk_index=self.chunk_index, file_index=self.file_index)
        for rel, table in ((data_rel, self._data_table()), (episodes_rel, self._episodes_table())):
            (self.staging / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, self.staging / rel)
        # Move the finished files into place (each os.replace is atomic), then commit via info.json.
        for rel in [data_rel, episodes_rel, *(self._video_rel(k) for k in self.encoders)]:
            dst = w.root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / rel, dst)
        _write_tasks(w.root, w.tasks)
        info = w.info
        info["total_episodes"] = int(info["total_episodes"]) + len(self.rows)
        info["total_frames"] = int(info["total_frames"]) + self.frames
        info["total_tasks"] = len(w.tasks)
        info["splits"] = {"train": f"0:{info['total_episodes']}"}
        info["xwam"]["file_groups"] = self.counter + 1
        atomic_write_json(w.root / INFO_PATH, info)
        shutil.rmtree(self.staging, ignore_errors=True)

    def discard(self) -> None:
        for enc in self.encoders.values():
            try:
                enc.close()
            except Exception:  # noqa: BLE001 - best effort while abandoning the group
                pass
        shutil.rmtree(self.staging, ignore_errors=True)


def _write_tasks(root: Path, tasks: dict[str, int]) -> None:
    # LeRobot writes a pandas DataFrame indexed by the task string with a task_index column; the
    # pandas metadata below makes pandas.read_parquet rebuild exactly that index.
    ordered = sorted(tasks.items(), key=lambda kv: kv[1])
    table = pa.table(
        {
            "task_index": pa.array([i for _, i in ordered], pa.int64()),
            "task": pa.array([t for t, _ in ordered], pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "xwam"},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    _atomic_write_parquet(root / TASKS_PATH, table)


def _load_tasks(root: Path) -> dict[str, int]:
    path = root / TASKS_PATH
    table = _read_parquet(path, "tasks")
    if "task_index" not in table.column_names:
        raise DatasetError(f"{path}: no 'task_index' column")
    indices = table.column("task_index").to_pylist()
    text_cols = [
        c for c in table.column_names if c != "task_index" and pa.types.is_string(table.schema.field(c).type)
    ]
    if not text_cols:
        raise DatasetError(
            f"{path}: no task string column (expected the index 'task' or '__index_level_0__')"
        )
    name = "task" if "task" in text_cols else text_cols[0]
    return {t: int(i) for t, i in zip(table.column(name).to_pylist(), indices)}


def _load_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"not a LeRobot dataset: {path} is missing")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(
            f"{path}: codebase_version {version!r} is not v3.x (convert v2.x datasets with LeRobot first)"
        )
    for key in ("fps", "features", "total_episodes"):
        if key not in info:
            raise DatasetError(f"{path}: field {key!r} is missing")
    return info


# ---------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------
class LeRobotV3Dataset:
    """Read-only view of a LeRobot v3.0 dataset as Episodes (ours, or RGB-only ones LeRobot wrote).

    ``episode(i)`` decodes only episode ``i``'s frames from each video (seeking to its start) and
    keeps the last ``cache_size`` decoded episodes in an LRU cache, so clip sampling that revisits
    an episode decodes it once. Depth, intrinsics and extrinsics are None when the dataset has none.
    """

    def __init__(self, root: str | Path, *, cache_size: int = 8, load_depth: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        self.info = _load_info(self.root)
        self.fps = float(self.info["fps"])
        self.features: dict[str, Any] = self.info["features"]
        self.load_depth = load_depth
        self.cache_size = max(0, int(cache_size))
        self._cache = EpisodeCache(self.cache_size)
        self._tables: OrderedDict[Path, pa.Table] = OrderedDict()
        x = self.info.get("xwam", {})
        video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.depth_keys: dict[str, str] = {}
        self.rgb_keys: dict[str, str] = {}
        for key in video_keys:
            vinfo = self.features[key].get("info") or {}
            cam = key.split(".", 2)[-1] if key.count(".") >= 2 else key
            if vinfo.get("video.is_depth_map") or key.startswith("observation.depth."):
                self.depth_keys[cam.removesuffix("_depth")] = key
            else:
                self.rgb_keys[cam] = key
        self.camera_names: list[str] = list(x.get("camera_names") or self.rgb_keys)
        for cam in self.camera_names:
            if cam not in self.rgb_keys:
                raise DatasetError(f"{self.root / INFO_PATH}: camera {cam!r} has no RGB video feature")
        self.depth_quantizer = DepthQuantizer.from_dict(x["depth"]) if x.get("depth") else DepthQuantizer()
        self.has_depth = bool(self.depth_keys) and all(c in self.depth_keys for c in self.camera_names)
        self.has_intrinsics = all(intrinsics_key(c) in self.features for c in self.camera_names)
        self.has_extrinsics = all(extrinsics_key(c) in self.features for c in self.camera_names)
        self.state_key = STATE_KEY if STATE_KEY in self.features else None
        self.state_names = _names(self.features.get(STATE_KEY))
        self.action_names = _names(self.features.get(ACTION_KEY))
        self.tasks = (
            {i: t for t, i in _load_tasks(self.root).items()} if (self.root / TASKS_PATH).exists() else {}
        )
        self.episodes = self._load_episodes()

    # ---- metadata ---------------------------------------------------------------------------
    def _load_episodes(self) -> list[dict[str, Any]]:
        total = int(self.info["total_episodes"])
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if total and not files:
            raise DatasetError(
                f"{self.root}: info.json lists {total} episodes but meta/episodes/ has no files"
            )
        rows: dict[int, dict[str, Any]] = {}
        for path in files:
            for row in _read_parquet(path, "episodes metadata").to_pylist():
                idx = row.get("episode_index")
                if idx is None:
                    raise DatasetError(f"{path}: rows without 'episode_index'")
                if int(idx) < total:  # rows at or past total_episodes are uncommitted leftovers
                    row["_meta_file"] = str(path)
                    rows[int(idx)] = row
        missing = [i for i in range(total) if i not in rows]
        if missing:
            raise DatasetError(
                f"{self.root}: metadata missing for episodes {missing[:10]} (meta/episodes is incomplete)"
            )
        return [rows[i] for i in range(total)]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(int(r["length"]) for r in self.episodes)

    @property
    def image_size(self) -> tuple[int, int]:
        shape = self.features[self.rgb_keys[self.camera_names[0]]]["shape"]
        return int(shape[0]), int(shape[1])

    def episode_length(self, i: int) -> int:
        return int(self._row(i)["length"])

    def episode_task(self, i: int) -> str:
        tasks = self._row(i).get("tasks") or []
        return str(tasks[0]) if tasks else ""

    def _row(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range [0, {self.num_episodes}) in {self.root}")
        return self.episodes[i]

    def stats(self) -> dict[str, Any] | None:
        path = self.root / STATS_PATH
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} is not valid JSON: {exc}") from exc

    # ---- frames -----------------------------------------------------------------------------
    def _data_path(self, row: dict[str, Any]) -> Path:
        template = self.info.get("data_path", DATA_PATH)
        return self.root / template.format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )

    def _data_table(self, path: Path) -> pa.Table:
        if path in self._tables:
            self._tables.move_to_end(path)
            return self._tables[path]
        table = _read_parquet(path, "data")
        self._tables[path] = table
        while len(self._tables) > 4:
            self._tables.popitem(last=False)
        return table

    def episode_table(self, i: int) -> pa.Table:
        """The frame rows of episode ``i`` (no video), checked against its metadata."""
        row = self._row(i)
        path = self._data_path(row)
        table = self._data_table(path)
        where = f"{path} (episode {i})"
        if "episode_index" not in table.column_names:
            raise DatasetError(f"{where}: column 'episode_index' is missing")
        ep_col = table.column("episode_index").to_numpy()
        positions = np.flatnonzero(ep_col == i)
        length = int(row["length"])
        if len(positions) != length:
            raise DatasetError(
                f"{where}: {len(positions)} frame rows but the episode metadata says length {length}"
            )
        if len(positions) and positions[-1] - positions[0] + 1 != len(positions):
            raise DatasetError(f"{where}: the episode's frame rows are not contiguous")
        sub = table.slice(int(positions[0]), length) if length else table.slice(0, 0)
        if "frame_index" in sub.column_names:
            order = np.argsort(sub.column("frame_index").to_numpy(), kind="stable")
            if not np.array_equal(order, np.arange(length)):
                sub = sub.take(pa.array(order))
        return sub

    def episode_numeric(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(state (T, S) float32, action (T, A) float32) of episode ``i`` without decoding video."""
        table = self.episode_table(i)
        where = f"{self._data_path(self._row(i))} (episode {i})"
        return self._state_action(table, where)

    def _state_action(self, table: pa.Table, where: str) -> tuple[np.ndarray, np.ndarray]:
        T = table.num_rows
        if self.state_key:
            state = column_to_numpy(table, self.state_key, where).astype(np.float32).reshape(T, -1)
        else:
            state = np.zeros((T, 0), np.float32)
        action = column_to_numpy(table, ACTION_KEY, where).astype(np.float32).reshape(T, -1)
        return state, action

    def _video(self, i: int, key: str, kind: str) -> np.ndarray:
        row = self._row(i)
        prefix = f"videos/{key}/"
        if row.get(prefix + "file_index") is None or row.get(prefix + "from_timestamp") is None:
            raise DatasetError(f"{row['_meta_file']}: episode {i} has no video for {key!r} (camera missing)")
        template = self.info.get("video_path", VIDEO_PATH)
        path = self.root / template.format(
            video_key=key,
            chunk_index=int(row[prefix + "chunk_index"]),
            file_index=int(row[prefix + "file_index"]),
        )
        first = int(round(float(row[prefix + "from_timestamp"]) * self.fps))
        length = int(row["length"])
        frames = decode_frames(path, fps=self.fps, first_index=first, count=length, kind=kind, episode=i)
        return frames

    def episode(self, i: int, *, load_depth: bool | None = None) -> Episode:
        """Episode ``i`` with its RGB (and depth when stored and asked for) decoded."""
        want_depth = self.has_depth and (self.load_depth if load_depth is None else load_depth)
        cache_key = (i, want_depth)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        row = self._row(i)
        table = self.episode_table(i)
        where = f"{self._data_path(row)} (episode {i})"
        state, action = self._state_action(table, where)
        T = table.num_rows
        rgb = {cam: self._video(i, self.rgb_keys[cam], "rgb") for cam in self.camera_names}
        depth = None
        if want_depth:
            depth = {}
            for cam in self.camera_names:
                codes = self._video(i, self.depth_keys[cam], "depth")
                depth[cam] = self.depth_quantizer.decode(codes)
        intr = extr = None
        if self.has_intrinsics:
            intr = {
                c: column_to_numpy(table, intrinsics_key(c), where).reshape(T, 3, 3)
                for c in self.camera_names
            }
        if self.has_extrinsics:
            extr = {
                c: column_to_numpy(table, extrinsics_key(c), where).reshape(T, 4, 4)
                for c in self.camera_names
            }
        meta: dict[str, Any] = {"episode_index": i, "source": str(self.root), "depth_kind": "metric"}
        if row.get("xwam/meta"):
            try:
                meta.update(json.loads(row["xwam/meta"]))
            except json.JSONDecodeError:
                pass
        ep = Episode(
            task=self.episode_task(i),
            fps=self.fps,
            camera_names=list(self.camera_names),
            rgb=rgb,
            state=state,
            action=action,
            depth=depth,
            intrinsics=intr,
            extrinsics=extr,
            success=bool(row.get("xwam/success", False)),
            meta=meta,
        )
        try:
            ep.validate()
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}") from exc
        self._cache.put(cache_key, ep)
        return ep

    def __len__(self) -> int:
        return self.num_episodes

    def set_cache(self, max_episodes: int, max_bytes: int | None = None) -> None:
        """Bound the decoded-episode cache by a count and, optionally, by bytes."""
        self.cache_size = max(0, int(max_episodes))
        self._cache.resize(self.cache_size, max_bytes)

    def __repr__(self) -> str:
        return (
            f"LeRobotV3Dataset({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
            f"fps={self.fps:g}, cameras={self.camera_names}, depth={self.has_depth})"
        )


def _names(feature: dict[str, Any] | None) -> list[str] | None:
    if not feature:
        return None
    names = feature.get("names")
    if isinstance(names, dict):  # LeRobot sometimes nests: {"motors": [...]}
        names = next(iter(names.values()), None)
    return list(names) if names else None


def write_episodes(root: str | Path, episodes: list[Episode] | Any, **writer_kwargs: Any) -> LeRobotV3Dataset:
    """Write (or append) episodes and return a reader on the result."""
    with LeRobotV3Writer(root, **writer_kwargs) as writer:
        for ep in episodes:
            writer.add_episode(ep)
    return LeRobotV3Dataset(root)
