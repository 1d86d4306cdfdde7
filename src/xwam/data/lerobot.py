"""LeRobot dataset v3.0 writer (pyarrow + PyAV; no dependency on the `lerobot` package).

The layout and the reader are in :mod:`xwam.data.lerobot_reader`; ``LeRobotV3Dataset`` and the path
constants the writer uses are importable from here too.

Crash safety: the writer encodes a group of episodes (one data file and one video file per key)
into a staging folder inside the dataset, moves the finished files into place, then rewrites
``meta/info.json`` atomically. ``info.json``'s ``total_episodes`` is the commit point: the reader
ignores any episode at or beyond it, and the next writer overwrites the uncommitted files. An
interrupted process therefore loses at most the episodes of the group it was writing.

What this writes for lerobot 0.4.4's own tools (``lerobot.datasets.dataset_tools``), so that its
``delete_episodes``, ``split_dataset`` and ``merge_datasets`` keep every feature intact (measured with
``scripts/check_lerobot_tools.py``):

- depth (format 2) as a ``uint16`` vector of ``H * W`` millimetres per frame in the data parquet
  (see :mod:`xwam.data.lerobot_reader`): those tools re-encode every video of a file they cut to
  8-bit AV1, which a depth video does not survive, but copy parquet columns bit for bit. Format-1
  depth (12-bit FFV1 video) is still written when appending to a dataset that has it, or when asked
  (``depth_storage="video"``);
- per-episode statistics of every feature as ``stats/<feature>/<stat>`` columns of
  ``meta/episodes/*.parquet``, with lerobot's names, shapes and types (cameras (3, 1, 1) in [0, 1];
  vectors (D,); depth one value per statistic in millimetres): ``delete_episodes`` and
  ``split_dataset`` rebuild ``meta/stats.json`` from them and leave it empty without them;
- ``fps`` (and the file-size limits) as integers when they are whole, as lerobot writes them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xwam.atomic import atomic_path, atomic_write_json
from xwam.data.episode import Episode
from xwam.data.errors import DatasetError
from xwam.data.layout import default_action_names, default_state_names
from xwam.data.lerobot_reader import (
    ACTION_KEY,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    INFO_PATH,
    STATE_KEY,
    TASKS_PATH,
    VIDEO_PATH,
    LeRobotV3Dataset,
    depth_key,
    extrinsics_key,
    intrinsics_key,
    load_info,
    load_tasks,
    rgb_key,
)
from xwam.data.lerobot_stats import (
    LEROBOT_STAT_NAMES,
    depth_stats_arrays,
    image_stats_arrays,
    lerobot_stats_arrays,
    video_depth_stats_arrays,
)
from xwam.data.video import (
    DEPTH_CODEC,
    DEPTH_PIX_FMT,
    RGB_CODEC,
    RGB_PIX_FMT,
    DepthMillimetres,
    DepthQuantizer,
    VideoEncoder,
)

DEPTH_STORAGES = ("parquet", "video")


def whole_number(value: float) -> int | float:
    """``value`` as an int when it is whole (lerobot 0.4.4 writes ``"fps": 20``, not ``20.0``)."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _list_column(values: np.ndarray, dtype: pa.DataType | None = None) -> pa.FixedSizeListArray:
    """(rows, D) values as a fixed-size-list column (the element type follows the array's dtype)."""
    values = np.ascontiguousarray(values)
    dtype = dtype or pa.from_numpy_dtype(values.dtype)
    flat = pa.array(values.reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, int(values.shape[1]))


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
        "video.fps": whole_number(fps),
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
        depth_storage: str = "parquet",
    ) -> None:
        """``depth_storage``: "parquet" (format 2, uint16 millimetres in the data parquet: survives
        lerobot's tools) or "video" (format 1, 12-bit FFV1 video: lerobot's tools corrupt it). An
        existing dataset keeps the storage it has."""
        if depth_storage not in DEPTH_STORAGES:
            raise ValueError(f"depth_storage must be one of {DEPTH_STORAGES}, got {depth_storage!r}")
        self.root = Path(root)
        self.episodes_per_file = max(1, int(episodes_per_file))
        self.rgb_crf = int(rgb_crf)
        self.write_stats_on_close = write_stats_on_close
        self._closed = False
        self._group: _Group | None = None
        info_file = self.root / INFO_PATH
        if info_file.exists():
            self.info = load_info(self.root)
            if "xwam" not in self.info:
                raise DatasetError(
                    f"{info_file}: appending is only supported to datasets written by xwam (no 'xwam' section)"
                )
            if fps is not None and abs(float(fps) - float(self.info["fps"])) > 1e-6:
                raise ValueError(
                    f"{self.root}: dataset fps is {self.info['fps']}, cannot append episodes at {fps}"
                )
            self.tasks = load_tasks(self.root)
        else:
            self.info = {
                "codebase_version": CODEBASE_VERSION,
                "robot_type": robot_type,
                "total_episodes": 0,
                "total_frames": 0,
                "total_tasks": 0,
                "chunks_size": int(chunks_size),
                "data_files_size_in_mb": whole_number(data_files_size_in_mb),
                "video_files_size_in_mb": whole_number(video_files_size_in_mb),
                "fps": whole_number(fps) if fps is not None else None,
                "splits": {},
                "data_path": DATA_PATH,
                "video_path": VIDEO_PATH,
                "features": {},
                "xwam": {
                    "format_version": 2 if depth_storage == "parquet" else 1,
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
        self.depth_storage = self._existing_depth_storage() or depth_storage
        self._depth_codec = DepthMillimetres()
        self.episode_stats = self._existing_episode_stats()
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
    def _existing_depth_storage(self) -> str | None:
        """The depth storage of the dataset being appended to (None when it has no depth yet)."""
        for key, feature in self.info["features"].items():
            if key.startswith("observation.depth."):
                return "video" if feature.get("dtype") == "video" else "parquet"
        return None

    def _existing_episode_stats(self) -> bool:
        """Whether to write the ``stats/...`` columns: always in a new dataset; when appending, only
        if the existing metadata has them (lerobot loads every meta/episodes file as one table, so
        the files must agree on their columns)."""
        if int(self.info["total_episodes"]) == 0:
            return True
        first = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        try:
            return any(n.startswith("stats/") for n in pq.read_schema(first).names)
        except (OSError, pa.ArrowException):
            return False

    def _cleanup_staging(self) -> None:
        if self.root.is_dir():
            for stale in self.root.glob(".staging-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def _check_schema(self, ep: Episode) -> None:
        x = self.info["xwam"]
        if self.info["fps"] is None:
            self.info["fps"] = whole_number(ep.fps)
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
        if ep.depth is not None and self.depth_storage == "parquet":
            x["depth"] = {"storage": "parquet", "encoding": "uint16_mm", "scale_m": self._depth_codec.scale_m,
                          "no_return_code": self._depth_codec.no_return_code, "unit": "m"}
            for cam in ep.camera_names:
                h, w = (int(n) for n in ep.depth[cam].shape[1:3])
                feats[depth_key(cam)] = {
                    "dtype": "uint16",
                    "shape": [h * w],
                    "names": None,
                    "info": self._depth_codec.feature_info(h, w),
                }
        elif ep.depth is not None:
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
        cols = self.columns
        stats: dict[str, dict[str, np.ndarray]] = {}
        for cam in ep.camera_names:
            rgb = ep.rgb[cam]
            self._encoder(rgb_key(cam), "rgb", rgb.shape[1], rgb.shape[2]).write(rgb)
            stats[rgb_key(cam)] = image_stats_arrays(rgb)
            keys = [rgb_key(cam)]
            if ep.depth is not None and self.w.depth_storage == "parquet":
                codes = self.w._depth_codec.encode(ep.depth[cam])
                cols.setdefault(depth_key(cam), []).append(codes.reshape(T, -1))
                stats[depth_key(cam)] = depth_stats_arrays(codes, no_return_code=self.w._depth_codec.no_return_code)
            elif ep.depth is not None:
                d = ep.depth[cam]
                codes = self.w._depth_quantizer.encode(d)
                self._encoder(depth_key(cam), "depth", d.shape[1], d.shape[2]).write(codes)
                stats[depth_key(cam)] = video_depth_stats_arrays(codes, self.w._depth_quantizer.bits)
                keys.append(depth_key(cam))
            for key in keys:
                row[f"videos/{key}/chunk_index"] = self.chunk_index
                row[f"videos/{key}/file_index"] = self.file_index
                row[f"videos/{key}/from_timestamp"] = start / fps
                row[f"videos/{key}/to_timestamp"] = (start + T) / fps
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
        if self.w.episode_stats:
            for key, parts in cols.items():
                if key not in stats:  # vectors and index columns: every frame of this episode
                    stats[key] = lerobot_stats_arrays(parts[-1].reshape(T, -1))
            row["_stats"] = stats
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
                arrays.append(_list_column(values))
            else:
                arrays.append(pa.array(values))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)

    def _episodes_table(self) -> pa.Table:
        names = [n for n in self.rows[0] if n != "_stats" and not n.startswith("meta/episodes/")]
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
        if "_stats" in self.rows[0]:
            stats_names, stats_arrays = self._episode_stats_columns()
            names += stats_names
            arrays += stats_arrays
        # lerobot puts the episodes file's own location last
        for n in ("meta/episodes/chunk_index", "meta/episodes/file_index"):
            names.append(n)
            arrays.append(pa.array([r[n] for r in self.rows], type=pa.int64()))
        return pa.Table.from_arrays(arrays, names=names)

    def _episode_stats_columns(self) -> tuple[list[str], list[pa.Array]]:
        """``stats/<feature>/<stat>`` columns in the features' order, typed as lerobot 0.4.4 writes
        them: ``count`` list<int64>; min/max list<int64> for int64 features; everything else
        list<double>, nested (3, 1, 1) for cameras."""
        names, arrays = [], []
        features = self.w.info["features"]
        for key in features:
            if key not in self.rows[0]["_stats"]:
                continue
            integer = features[key].get("dtype") == "int64"
            for stat in LEROBOT_STAT_NAMES:
                values = [np.asarray(r["_stats"][key][stat]) for r in self.rows]
                if stat == "count" or (integer and stat in ("min", "max")):
                    element: pa.DataType = pa.int64()
                    values = [v.astype(np.int64) for v in values]
                else:
                    element = pa.float64()
                kind = element
                for _ in range(values[0].ndim):
                    kind = pa.list_(kind)
                names.append(f"stats/{key}/{stat}")
                arrays.append(pa.array([v.tolist() for v in values], type=kind))
        return names, arrays

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
    with atomic_path(root / TASKS_PATH) as tmp:
        pq.write_table(table, tmp)


def write_episodes(root: str | Path, episodes: list[Episode] | Any, **writer_kwargs: Any) -> LeRobotV3Dataset:
    """Write (or append) episodes and return a reader on the result."""
    with LeRobotV3Writer(root, **writer_kwargs) as writer:
        for ep in episodes:
            writer.add_episode(ep)
    return LeRobotV3Dataset(root)
