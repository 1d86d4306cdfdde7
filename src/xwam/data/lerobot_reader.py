"""LeRobot dataset v3.0: the layout (paths, feature keys) and the reader (pyarrow + PyAV; no `lerobot`).

Layout::

    meta/info.json                               codebase_version "v3.0", fps, features, templates, totals
    meta/stats.json                              LeRobot statistics (see xwam.data.stats)
    meta/xwam_norm.json                          our normalisation statistics (NormStats)
    meta/tasks.parquet                           task strings (pandas index "task") -> task_index
    meta/episodes/chunk-XXX/file-XXX.parquet     one row per episode (lengths, tasks, file offsets)
    data/chunk-XXX/file-XXX.parquet              one row per frame
    videos/<video_key>/chunk-XXX/file-XXX.mp4    many episodes per file, located by timestamps

Feature keys: ``observation.images.<cam>`` (RGB video, H.264 yuv420p), ``observation.depth.<cam>``
(metric depth), ``observation.state``, ``action``, ``observation.cameras.<cam>.intrinsics`` (9 floats, row-major
3x3) and ``.extrinsics`` (16 floats, row-major 4x4 camera-to-world, OpenCV axes), plus LeRobot's
``timestamp``, ``frame_index``, ``episode_index``, ``index`` and ``task_index``. What LeRobot has no
slot for (camera order, depth quantiser, state/action names, robot type) sits in ``info["xwam"]``.

Depth is stored one of two ways; the reader tells them apart by the feature's ``dtype``:

- ``uint16`` (format 2, written now): a vector of ``H * W`` millimetres per frame in the data
  parquet (row-major, ``shape: [H * W]``), ``H``, ``W`` and the encoding in the feature's ``info``
  (``depth.height``, ``depth.width``, ``depth.encoding: "uint16_mm"``, see
  :class:`~xwam.data.video.DepthMillimetres`). lerobot 0.4.4's ``delete_episodes``,
  ``split_dataset`` and ``merge_datasets`` copy it bit for bit (they re-encode videos, and their
  ``_write_parquet`` cannot convert a 3-D array feature, hence the flat vector).
- ``video`` (format 1): a 12-bit log-quantised FFV1 ``gray12le`` video (``video.is_depth_map``);
  a depth video that does not decode to the quantiser's bit depth (lerobot's tools re-encode to
  8-bit AV1) is refused with a DatasetError naming the file.

``info.json``'s ``total_episodes`` is the commit point: the reader ignores any episode at or beyond
it (see the writer in :mod:`xwam.data.lerobot`). Kept apart from the writer so that
:mod:`xwam.data.stats` can read datasets while the writer computes statistics on close.
"""

from __future__ import annotations

import io
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xwam.data.episode import Episode, EpisodeCache
from xwam.data.errors import DatasetError
from xwam.data.video import (
    DEPTH_PARQUET_ENCODING,
    DepthMillimetres,
    DepthQuantizer,
    decode_frames,
    probe_video,
)

log = logging.getLogger(__name__)

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
# LeRobot's bookkeeping columns: read where needed, never features a model sees
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def rgb_key(cam: str) -> str:
    return f"observation.images.{cam}"


def depth_key(cam: str) -> str:
    return f"observation.depth.{cam}"


def intrinsics_key(cam: str) -> str:
    return f"observation.cameras.{cam}.intrinsics"


def extrinsics_key(cam: str) -> str:
    return f"observation.cameras.{cam}.extrinsics"


def read_parquet(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{what} file missing: {path}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{what} file {path} is corrupt or unreadable: {exc}") from exc


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


def load_tasks(root: Path) -> dict[str, int]:
    path = root / TASKS_PATH
    table = read_parquet(path, "tasks")
    if "task_index" not in table.column_names:
        raise DatasetError(f"{path}: no 'task_index' column")
    indices = table.column("task_index").to_pylist()
    # pandas writes the task strings as its index: named "task", or "__index_level_0__" when unnamed
    # (datasets written by lerobot 0.4.4 with pandas 3 store them as large_string)
    text_cols = [c for c in table.column_names if c != "task_index" and _is_text(table.schema.field(c).type)]
    if not text_cols:
        found = ", ".join(f"{f.name} ({f.type})" for f in table.schema) or "none"
        raise DatasetError(
            f"{path}: no task string column (expected the index 'task' or '__index_level_0__'; found {found})"
        )
    name = next((c for c in ("task", "__index_level_0__") if c in text_cols), text_cols[0])
    tasks = table.column(name).to_pylist()
    if any(t is None for t in tasks) or any(i is None for i in indices):
        raise DatasetError(f"{path}: empty task strings or task indices")
    return {str(t): int(i) for t, i in zip(tasks, indices)}


def _is_text(kind: pa.DataType) -> bool:
    is_view = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or bool(is_view and is_view(kind))


def load_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"not a LeRobot dataset: {path} is missing")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(
            f"{path}: codebase_version {version!r} is not v3.x (convert v2.x datasets with LeRobot first)"
        )
    for key in ("fps", "features", "total_episodes"):
        if key not in info:
            raise DatasetError(f"{path}: field {key!r} is missing")
    features = info["features"]
    if not isinstance(features, dict) or not all(isinstance(f, dict) for f in features.values()):
        raise DatasetError(f"{path}: 'features' must map each feature name to an object")
    try:
        float(info["fps"]), int(info["total_episodes"])
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: 'fps' / 'total_episodes' are not numbers: {exc}") from exc
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
        self.info = load_info(self.root)
        self.fps = float(self.info["fps"])
        self.features: dict[str, Any] = self.info["features"]
        self.load_depth = load_depth
        self.cache_size = max(0, int(cache_size))
        self._cache = EpisodeCache(self.cache_size)
        self._tables: OrderedDict[Path, pa.Table] = OrderedDict()
        x = self.info.get("xwam", {})
        # a camera is a video feature or, when lerobot wrote it with use_videos=False, an image
        # feature (PNG bytes in the data parquet)
        camera_keys = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        self.image_keys = {k for k in camera_keys if self.features[k].get("dtype") == "image"}
        self.depth_keys: dict[str, str] = {}
        self.rgb_keys: dict[str, str] = {}
        for key, feature in self.features.items():
            if feature.get("dtype") not in ("video", "image") and _is_parquet_depth(key, feature):
                self.depth_keys[key.removeprefix("observation.depth.")] = key
        for key in camera_keys:
            vinfo = self.features[key].get("info") or {}
            cam = key.split(".", 2)[-1] if key.count(".") >= 2 else key
            if key not in self.image_keys and (vinfo.get("video.is_depth_map") or key.startswith("observation.depth.")):
                self.depth_keys[cam.removesuffix("_depth")] = key
            else:
                self.rgb_keys[cam] = key
        self.camera_names: list[str] = list(x.get("camera_names") or self.rgb_keys)
        for cam in self.camera_names:
            if cam not in self.rgb_keys:
                raise DatasetError(f"{self.root / INFO_PATH}: camera {cam!r} has no RGB video feature")
        self.depth_quantizer = self._depth_quantizer(x)
        self.has_depth = bool(self.depth_keys) and all(c in self.depth_keys for c in self.camera_names)
        self._depth_sizes = {
            cam: self._parquet_depth_size(key) for cam, key in self.depth_keys.items()
            if self.depth_storage(cam) == "parquet"
        }
        self.image_sizes = {cam: self._feature_size(self.rgb_keys[cam]) for cam in self.camera_names}
        self.has_intrinsics = all(intrinsics_key(c) in self.features for c in self.camera_names)
        self.has_extrinsics = all(extrinsics_key(c) in self.features for c in self.camera_names)
        self.state_key = STATE_KEY if STATE_KEY in self.features else None
        self.state_names = _names(self.features.get(STATE_KEY))
        self.action_names = _names(self.features.get(ACTION_KEY))
        self.tasks = (
            {i: t for t, i in load_tasks(self.root).items()} if (self.root / TASKS_PATH).exists() else {}
        )
        self.episodes = self._load_episodes()
        self.ignored_features = [k for k in self.features if k not in self.used_features()]
        if self.ignored_features:
            log.info("%s: ignoring features xwam does not read: %s", self.root, ", ".join(self.ignored_features))

    # ---- metadata ---------------------------------------------------------------------------
    def used_features(self) -> list[str]:
        """The features a model sees: cameras, depth (when every camera has it), camera matrices
        (when every camera has both), state and action, plus LeRobot's index columns."""
        used = [self.rgb_keys[c] for c in self.camera_names]
        if self.has_depth:
            used += [self.depth_keys[c] for c in self.camera_names]
        if self.has_intrinsics:
            used += [intrinsics_key(c) for c in self.camera_names]
        if self.has_extrinsics:
            used += [extrinsics_key(c) for c in self.camera_names]
        used += [k for k in (STATE_KEY, ACTION_KEY, *INDEX_KEYS) if k in self.features]
        return used

    def depth_storage(self, cam: str) -> str:
        """"parquet" (format 2: uint16 millimetres in the data parquet) or "video" (format 1)."""
        return "video" if self.features[self.depth_keys[cam]].get("dtype") == "video" else "parquet"

    def depth_codec(self, cam: str) -> DepthMillimetres:
        """The millimetre encoding of a parquet depth feature (from the feature's own info block)."""
        return DepthMillimetres.from_feature_info(self.features[self.depth_keys[cam]].get("info") or {})

    def _parquet_depth_size(self, key: str) -> tuple[int, int]:
        """(H, W) of a parquet depth feature: its info's depth.height / depth.width, which must
        multiply to the declared vector length."""
        feature, where = self.features[key], self.root / INFO_PATH
        vinfo = feature.get("info") or {}
        encoding = vinfo.get("depth.encoding", DEPTH_PARQUET_ENCODING)
        if encoding != DEPTH_PARQUET_ENCODING:
            raise DatasetError(
                f"{where}: {key} uses depth encoding {encoding!r}; only {DEPTH_PARQUET_ENCODING!r} is supported"
            )
        try:
            h, w = int(vinfo["depth.height"]), int(vinfo["depth.width"])
            (length,) = feature["shape"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{where}: {key} needs 'shape': [H * W] and info 'depth.height' / 'depth.width' ({exc!r})"
            ) from exc
        if h <= 0 or w <= 0 or h * w != int(length):
            raise DatasetError(f"{where}: {key} declares shape [{length}] but {h}x{w} pixels")
        return h, w

    def _depth_quantizer(self, x: dict[str, Any]) -> DepthQuantizer:
        """Format-1 depth videos' quantiser: from ``info["xwam"]``, else from the depth features'
        ``video.depth_*`` entries (lerobot's tools rewrite info.json without our ``xwam`` block but
        keep each feature's info)."""
        if x.get("depth") and "bits" in x["depth"]:
            return DepthQuantizer.from_dict(x["depth"])
        for key in self.depth_keys.values():
            vinfo = self.features[key].get("info") or {}
            if "video.depth_bits" not in vinfo:
                continue
            encoding = vinfo.get("video.depth_encoding", "log")
            if encoding != "log":
                raise DatasetError(
                    f"{self.root / INFO_PATH}: {key} uses depth encoding {encoding!r}; only 'log' is supported"
                )
            names = {"depth_min": "video.depth_min", "depth_max": "video.depth_max",
                     "shift": "video.depth_shift", "bits": "video.depth_bits"}
            return DepthQuantizer.from_dict({k: vinfo[v] for k, v in names.items() if v in vinfo})
        return DepthQuantizer()

    def _feature_size(self, key: str) -> tuple[int, int]:
        """(H, W) of a camera feature: shape [H, W, C], or [C, H, W] where its names say so."""
        feature = self.features[key]
        shape, names = feature.get("shape") or [], feature.get("names")
        if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(n, int) for n in shape):
            raise DatasetError(f"{self.root / INFO_PATH}: {key} has shape {shape!r}, expected [height, width, 3]")
        if isinstance(names, list) and len(names) == 3 and names[0] in ("channel", "channels"):
            return int(shape[1]), int(shape[2])
        return int(shape[0]), int(shape[1])
    def _load_episodes(self) -> list[dict[str, Any]]:
        total = int(self.info["total_episodes"])
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if total and not files:
            raise DatasetError(
                f"{self.root}: info.json lists {total} episodes but meta/episodes/ has no files"
            )
        rows: dict[int, dict[str, Any]] = {}
        for path in files:
            for row in read_parquet(path, "episodes metadata").to_pylist():
                idx = row.get("episode_index")
                if idx is None:
                    raise DatasetError(f"{path}: rows without 'episode_index'")
                if "length" not in row or "data/chunk_index" not in row or "data/file_index" not in row:
                    raise DatasetError(
                        f"{path}: episode {idx} lacks 'length' or 'data/chunk_index' / 'data/file_index'"
                    )
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
        """(H, W) of the first camera: what clips resize every camera to when no size is given.
        ``image_sizes`` holds every camera's own size (cameras may differ)."""
        return self.image_sizes[self.camera_names[0]]

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
        return read_stats_json(path) if path.exists() else None

    def video_problems(self) -> list[str]:
        """Depth videos whose stored pixel format is not the one the depth quantiser needs (a tool
        re-encoded them without updating info.json), one line each; checks episode 0's files."""
        if not self.num_episodes:
            return []
        problems = []
        for cam in self.camera_names:
            key = self.depth_keys.get(cam)
            if key is None or self.depth_storage(cam) != "video":
                continue
            path = self._video_path(0, key)
            if not path.is_file():
                continue  # reading reports a missing file naming the episode
            found = probe_video(path)
            bits = found["bits"]
            if bits != self.depth_quantizer.bits:
                declared = (self.features[key].get("info") or {}).get("video.pix_fmt", "?")
                problems.append(
                    f"{key}: {path} holds {found['codec']} {found['pix_fmt']} ({bits}-bit) but info.json "
                    f"declares {declared} and the depth quantiser needs {self.depth_quantizer.bits}-bit codes: "
                    f"the depth cannot be read (re-encoded by another tool)"
                )
        return problems

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
        table = read_parquet(path, "data")
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

    def episode_where(self, i: int) -> str:
        """Where episode ``i``'s frame rows live, for error messages: "PATH (episode i)"."""
        return f"{self._data_path(self._row(i))} (episode {i})"

    def episode_numeric(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(state (T, S) float32, action (T, A) float32) of episode ``i`` without decoding video."""
        table = self.episode_table(i)
        where = f"{self._data_path(self._row(i))} (episode {i})"
        return self._state_action(table, where)

    def _state_action(self, table: pa.Table, where: str) -> tuple[np.ndarray, np.ndarray]:
        T = table.num_rows
        state = _vectors(table, self.state_key, where) if self.state_key else np.zeros((T, 0), np.float32)
        return state, _vectors(table, ACTION_KEY, where)

    def _video_path(self, i: int, key: str) -> Path:
        row = self._row(i)
        prefix = f"videos/{key}/"
        if any(row.get(prefix + k) is None for k in ("chunk_index", "file_index", "from_timestamp")):
            raise DatasetError(f"{row['_meta_file']}: episode {i} has no video for {key!r} (camera missing)")
        template = self.info.get("video_path") or VIDEO_PATH
        return self.root / template.format(
            video_key=key,
            chunk_index=int(row[prefix + "chunk_index"]),
            file_index=int(row[prefix + "file_index"]),
        )

    def _video(self, i: int, key: str, kind: str) -> np.ndarray:
        row = self._row(i)
        path = self._video_path(i, key)
        first = int(round(float(row[f"videos/{key}/from_timestamp"]) * self.fps))
        length = int(row["length"])
        if kind != "depth":
            return decode_frames(path, fps=self.fps, first_index=first, count=length, kind=kind, episode=i)
        declared = (self.features[key].get("info") or {}).get("video.pix_fmt")
        return decode_frames(path, fps=self.fps, first_index=first, count=length, kind=kind, episode=i,
                             depth_bits=self.depth_quantizer.bits, declared=declared)

    def episode_depth_codes(self, i: int, cam: str) -> np.ndarray:
        """Episode ``i``'s depth of camera ``cam`` as stored: (T, H, W) uint16 millimetres (parquet)
        or 12-bit quantiser codes (video). ``_decode_depth`` turns them into metres."""
        return self._depth_codes(i, cam, self.episode_table(i), self.episode_where(i))

    def _depth_codes(self, i: int, cam: str, table: pa.Table, where: str) -> np.ndarray:
        key = self.depth_keys[cam]
        if self.depth_storage(cam) == "video":
            return self._video(i, key, "depth")
        h, w = self._depth_sizes[cam]
        values = _flat_values(table, key, where)
        if values.size != table.num_rows * h * w:
            raise DatasetError(
                f"{where}: {key!r} holds {values.size} values for {table.num_rows} frames of {h}x{w} depth"
            )
        if values.dtype != np.uint16:
            if values.size and (not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() > 65535):
                raise DatasetError(f"{where}: {key!r} is not uint16 millimetres (found {values.dtype})")
            values = values.astype(np.uint16)
        return values.reshape(table.num_rows, h, w)

    def _decode_depth(self, cam: str, codes: np.ndarray) -> np.ndarray:
        if self.depth_storage(cam) == "video":
            return self.depth_quantizer.decode(codes)
        return self.depth_codec(cam).decode(codes)

    def _images(self, table: pa.Table, key: str, where: str) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of a camera stored as an image feature: each row holds the
        encoded image (PNG for datasets written by lerobot 0.4.4) as ``{"bytes", "path"}``."""
        from PIL import Image

        if key not in table.column_names:
            raise DatasetError(f"{where}: column {key!r} is missing")
        frames = []
        for t, item in enumerate(table.column(key).to_pylist()):
            data = item.get("bytes") if isinstance(item, dict) else item
            if data is None:
                # not embedded: lerobot keeps the path of the image file it was written from
                rel = item.get("path") if isinstance(item, dict) else None
                file = self.root / rel if rel else None
                if file is None or not file.is_file():
                    raise DatasetError(f"{where}: frame {t} of {key!r} has no image bytes (path {rel!r} not found)")
                data = file.read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as image:
                    frame = np.asarray(image.convert("RGB"))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise DatasetError(f"{where}: frame {t} of {key!r} is not a readable image: {exc}") from exc
            if frames and frame.shape != frames[0].shape:
                raise DatasetError(
                    f"{where}: frame {t} of {key!r} is {frame.shape[1]}x{frame.shape[0]}, "
                    f"frame 0 is {frames[0].shape[1]}x{frames[0].shape[0]}"
                )
            frames.append(frame)
        if not frames:
            return np.zeros((0, *self._feature_size(key), 3), np.uint8)
        return np.stack(frames)

    def _camera(self, i: int, cam: str, table: pa.Table, where: str) -> np.ndarray:
        key = self.rgb_keys[cam]
        return self._images(table, key, where) if key in self.image_keys else self._video(i, key, "rgb")

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
        rgb = {cam: self._camera(i, cam, table, where) for cam in self.camera_names}
        depth = None
        if want_depth:
            depth = {cam: self._decode_depth(cam, self._depth_codes(i, cam, table, where)) for cam in self.camera_names}
        intr = extr = None
        try:
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
        except ValueError as exc:  # not 9 / 16 numbers per frame
            raise DatasetError(f"{where}: camera matrices are not 3x3 / 4x4 per frame: {exc}") from exc
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


def _is_parquet_depth(key: str, feature: dict[str, Any]) -> bool:
    """A non-video feature holding depth: ours declare ``depth.encoding`` (or, at least, live under
    ``observation.depth.`` with an integer dtype)."""
    vinfo = feature.get("info") or {}
    if isinstance(vinfo, dict) and "depth.encoding" in vinfo:
        return True
    return key.startswith("observation.depth.") and str(feature.get("dtype", "")).startswith("uint")


def _flat_values(table: pa.Table, key: str, where: str) -> np.ndarray:
    """Every value of a (possibly nested) list column, flattened in row-major order. Datasets differ
    in the list type: we write fixed-size lists, lerobot's merge rewrites them as variable lists."""
    if key not in table.column_names:
        raise DatasetError(f"{where}: column {key!r} is missing")
    col = table.column(key).combine_chunks()
    if col.null_count:
        raise DatasetError(f"{where}: column {key!r} has empty rows")
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()
    return col.to_numpy(zero_copy_only=False)


def _vectors(table: pa.Table, key: str, where: str) -> np.ndarray:
    """A numeric column as (rows, dim) float32; ragged lists, nulls or text are a DatasetError."""
    values = column_to_numpy(table, key, where)
    try:
        return values.astype(np.float32).reshape(table.num_rows, -1)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: column {key!r} is not a numeric vector per frame: {exc}") from exc


def read_stats_json(path: Path) -> dict[str, Any]:
    """LeRobot's ``meta/stats.json`` as a dict (``{}`` when lerobot's tools left it empty)."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DatasetError(f"{path}: expected an object of per-feature statistics objects")
    return data


def _names(feature: dict[str, Any] | None) -> list[str] | None:
    if not feature:
        return None
    names = feature.get("names")
    if isinstance(names, dict):  # LeRobot sometimes nests: {"motors": [...]}
        names = next(iter(names.values()), None)
    return list(names) if names else None
