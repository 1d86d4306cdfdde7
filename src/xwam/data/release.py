"""Reader for the official X-WAM release's dataset format, mapped to :class:`Episode`.

Layout (what the release's loader, ``RobotDataset``, reads; the fixtures in
``tests/data/fixtures/release-format`` were checked against that loader)::

    metadata.json                                   {"chunk-0000/episode_0000000": num_frames, ...}
    data/chunk-XXXX/episode_XXXXXXX.json            one JSON per episode (schema below)
    video/<view>/chunk-XXXX/episode_XXXXXXX.mp4     RGB
    depth/<view>/chunk-XXXX/episode_XXXXXXX.mp4     8-bit relative inverse depth (grey)

Episodes: the keys of ``metadata.json`` in file order (a key is the JSON's path under ``data/``
without ``.json``); without ``metadata.json`` the glob ``data/chunk-*/episode_*.json`` in sorted
order. The release's loader writes a missing ``metadata.json``; we never write into a dataset.
No chunk size is known, so no path is ever computed: JSONs come from the keys, videos from the JSONs.

Episode JSON fields read:

- ``num_frames`` (T); ``instructions`` (non-empty list of strings; all are kept in
  ``Episode.meta["instructions"]``, the first is ``Episode.task``; clips draw one per sample, as the
  release does);
- ``observations.<view>``: ``type`` (``static`` / ``dynamic``), ``rgb_path``, ``depth_path`` (relative
  to the root or absolute), ``start`` (default 0: MP4 frame of episode frame 0), ``end`` (exclusive
  bound on MP4 frames, default start + T), ``fps`` (required, equal across views). Views are used in
  sorted-name order;
- ``proprios.<arm>_ee_pos`` (T x 3), ``<arm>_ee_rotm`` (T x 9 row-major, also T x 3 x 3 or T x 3
  rotation vectors), ``<arm>_gripper_pos`` (T x 1 or T) for ``<arm>`` in (left, right);
- ``actions.raw_actions`` (T x 7 per arm; raw mode) or else ``actions.<arm>_ee_pos`` /
  ``<arm>_ee_rotm`` (delta mode). ``actions.<arm>_gripper_pos`` is never read (nor by the release).

State (16-d, the release's ``proprios``): per arm [xyz, quaternion w, x, y, z made canonical
(w >= 0), gripper], left then right; an absent arm is zero (its dims are invalid in the statistics).

Action (14-d) per arm [dxyz, rotation vector, gripper], left then right:

- raw mode (``actions.raw_actions`` present, RoboCasa): raw columns 0-5 as they are and the gripper
  is *minus* column 6 (RoboCasa commands -1 = open; negated, +1 = open like the state gripper);
  arms = width // 7. The release trains this gripper un-normalised, so our statistics give it the
  bound 1 (:func:`xwam.data.release_stats.norm_stats_from_release`);
- delta mode (RoboTwin): dxyz = actions.ee_pos[t] - proprios.ee_pos[t] (base frame), rotation
  vector of R_action[t] R_proprio[t]^T (a base-frame delta), gripper = proprio_gripper[t + 1] -
  proprio_gripper[t] (a future state difference; action_skip 1, as in both release configs). The
  last frame has no action: its row is zero and ``Episode.meta["action_steps"] = T - 1`` so clips
  never use it (with the release's 9 frames, skip 4 and 32 actions, starts 0 .. T - 33 never reach
  it anyway).

Episodes store these un-normalised; :class:`~xwam.data.stats.NormStats` normalises (state
``2 (x - q01) / (q99 - q01) - 1`` except quaternions, action ``x / max(|q01|, |q99|)``, the release's
formulas given its symmetric action bounds).

Depth: decoded as RGB24 (what the release's decord decode returns; a grey video gives R = G = B),
channel 0, mapped to ``v / 127.5 - 1`` in [-1, 1] (near bright = +1), never to metres:
``Episode.meta["depth_kind"] = "codec_unit"`` (see :mod:`xwam.codecs.depth`).

Statistics in the release's key schema (computed, read from its YAML files, turned into our
NormStats) live in :mod:`xwam.data.release_stats`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from xwam.codecs.depth import DEPTH_KIND_CODEC_UNIT, release_depth_code_to_unit
from xwam.data.episode import Episode, EpisodeCache
from xwam.data.errors import DatasetError
from xwam.data.layout import default_action_names, default_state_names
from xwam.data.release_arms import (
    ACTION_DIM,
    ARM_ACTION,
    ARM_STATE,
    ARMS,
    STATE_DIM,
    arm_motion,
    canonical_quat_wxyz,
    rotations_from_field,
)
from xwam.data.release_stats import norm_stats_from_release, release_statistics
from xwam.data.video import decode_frames

VIEW_TYPES = {"static": 0, "dynamic": 1}  # the release's camera_type_mask values
EPISODE_GLOB = "data/chunk-*/episode_*.json"
JSON_CACHE_SIZE = 64


# ---------------------------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------------------------
class ReleaseDataset:
    """A release-format dataset as Episodes, with the interface of ``LeRobotV3Dataset``.

    ``depth_kind`` is ``"codec_unit"``: depth comes back in the codec's [-1, 1] units, not metres.
    ``camera_types`` holds each view's type (``static`` / ``dynamic``) in view order.
    """

    depth_kind = DEPTH_KIND_CODEC_UNIT

    def __init__(self, root: str | Path, *, cache_size: int = 8, load_depth: bool = True) -> None:
        self.root = Path(root)
        if not (self.root / "data").is_dir():
            raise DatasetError(f"not a release dataset: {self.root / 'data'} is missing")
        self.episode_ids, self.lengths = _episode_index(self.root)
        self.load_depth = load_depth
        self.cache_size = cache_size
        self._cache = EpisodeCache(self.cache_size)
        self._json_cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        views = self._views(0)
        self.camera_names = list(views)
        self.camera_types = [v["type"] for v in views.values()]
        self.fps = _common_fps(views, self._where(0))
        self.has_depth = True  # depth_path is required for every view
        self.has_intrinsics = self.has_extrinsics = False
        self.action_mode = "raw" if "raw_actions" in self._block(0, "actions") else "delta"
        # delta-mode episodes have no action on their last frame (see the module doc)
        self.final_frames_without_action = 1 if self.action_mode == "delta" else 0
        self.state_names = default_state_names(STATE_DIM)
        self.action_names = default_action_names(ACTION_DIM)

    # ---- index --------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    def __len__(self) -> int:
        return self.num_episodes

    def episode_length(self, i: int) -> int:
        return self.lengths[self._check_index(i)]

    def episode_task(self, i: int) -> str:
        return self._instructions(i)[0]

    def _check_index(self, i: int) -> int:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range [0, {self.num_episodes}) in {self.root}")
        return i

    # ---- episode JSON -------------------------------------------------------------------------
    def json_path(self, i: int) -> Path:
        """``data/<key>.json``, as the release's loader opens it."""
        return self.root / "data" / f"{self.episode_ids[self._check_index(i)]}.json"

    def _where(self, i: int) -> str:
        return f"{self.json_path(i)} (episode {self.episode_ids[i]})"

    def _episode_json(self, i: int) -> dict[str, Any]:
        self._check_index(i)
        if i in self._json_cache:
            self._json_cache.move_to_end(i)
            return self._json_cache[i]
        path = self.json_path(i)
        if not path.is_file():
            raise DatasetError(f"episode {self.episode_ids[i]}: file missing: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self._where(i)} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{self._where(i)}: expected a JSON object, got {type(data).__name__}")
        self._json_cache[i] = data
        while len(self._json_cache) > JSON_CACHE_SIZE:
            self._json_cache.popitem(last=False)
        return data

    def _block(self, i: int, name: str) -> dict[str, Any]:
        block = self._episode_json(i).get(name)
        if not isinstance(block, dict):
            raise DatasetError(f"{self._where(i)}: field {name!r} missing or not an object")
        return block

    def _instructions(self, i: int) -> list[str]:
        value = self._episode_json(i).get("instructions")
        if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
            raise DatasetError(f"{self._where(i)}: field 'instructions' must be a non-empty list of strings")
        kept = [x for x in value if x.strip()]
        if not kept:
            raise DatasetError(f"{self._where(i)}: field 'instructions' holds only empty strings")
        return kept

    def _views(self, i: int) -> dict[str, dict[str, Any]]:
        """Views in sorted-name order, each with type, rgb_path, depth_path, start, end (or None), fps."""
        where = self._where(i)
        block = self._block(i, "observations")
        if not block:
            raise DatasetError(f"{where}: field 'observations' is empty")
        views = {}
        for name in sorted(block):
            entry, field = block[name], f"observations.{name}"
            if not isinstance(entry, dict):
                raise DatasetError(f"{where}: field {field!r} must be an object")
            for key in ("type", "rgb_path", "depth_path", "fps"):
                if key not in entry:
                    raise DatasetError(f"{where}: field '{field}.{key}' missing")
            if entry["type"] not in VIEW_TYPES:
                raise DatasetError(f"{where}: field '{field}.type' is {entry['type']!r}; expected "
                                   f"{' or '.join(map(repr, VIEW_TYPES))}")
            start, end = entry.get("start", 0), entry.get("end")
            if not _is_int(start) or start < 0 or (end is not None and not _is_int(end)):
                raise DatasetError(f"{where}: fields '{field}.start' / '.end' must be non-negative integers, "
                                   f"got {start!r} / {end!r}")
            fps = entry["fps"]
            if isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0:
                raise DatasetError(f"{where}: field '{field}.fps' must be a positive number, got {fps!r}")
            views[name] = {"type": entry["type"], "rgb_path": entry["rgb_path"], "depth_path": entry["depth_path"],
                           "start": int(start), "end": None if end is None else int(end), "fps": float(fps)}
        return views

    # ---- numbers ------------------------------------------------------------------------------
    def _num_frames(self, i: int) -> int:
        data, where = self._episode_json(i), self._where(i)
        T = data.get("num_frames", self.lengths[i])
        if not _is_int(T) or T < 1:
            raise DatasetError(f"{where}: field 'num_frames' must be a positive integer, got {T!r}")
        if T != self.lengths[i]:
            raise DatasetError(f"{where}: field 'num_frames' is {T} but metadata.json says {self.lengths[i]}")
        return int(T)

    def signals(self, i: int) -> dict[str, Any]:
        """Episode ``i``'s robot signals in float64, as stored: ``proprio[arm]`` = (pos (T, 3),
        rotations, gripper (T,)) for each arm present; ``raw`` = raw_actions (T, 7 k) or None;
        ``target[arm]`` = (pos, rotations) of delta-mode actions (empty in raw mode)."""
        where, T = self._where(i), self._num_frames(i)
        proprios, actions = self._block(i, "proprios"), self._block(i, "actions")
        proprio = {}
        for arm in ARMS:
            keys = [f"{arm}_ee_pos", f"{arm}_ee_rotm", f"{arm}_gripper_pos"]
            present = [k for k in keys if k in proprios]
            if not present:
                continue
            if len(present) < 3:
                missing = [k for k in keys if k not in proprios]
                raise DatasetError(f"{where}: field 'proprios.{missing[0]}' missing (arm {arm!r} has {present})")
            proprio[arm] = (
                _rows(proprios[keys[0]], 3, T, f"{where}: field 'proprios.{keys[0]}'"),
                _rotations(proprios[keys[1]], T, f"{where}: field 'proprios.{keys[1]}'"),
                _rows(proprios[keys[2]], 1, T, f"{where}: field 'proprios.{keys[2]}'")[:, 0],
            )
        if not proprio:
            raise DatasetError(f"{where}: 'proprios' has no arm (expected left_ee_pos/_ee_rotm/_gripper_pos, "
                               f"and right_* for two arms)")
        raw, target = None, {}
        if "raw_actions" in actions:
            raw = np.asarray(actions["raw_actions"], dtype=np.float64) if _numeric(actions["raw_actions"]) else None
            field = f"{where}: field 'actions.raw_actions'"
            if raw is None or raw.ndim != 2 or raw.shape[0] != T or raw.shape[1] not in (ARM_ACTION, 2 * ARM_ACTION):
                shape = None if raw is None else raw.shape
                raise DatasetError(f"{field}: expected {T} x 7 (one arm) or {T} x 14 (two arms), got {shape}")
        else:
            for arm in proprio:
                for key in (f"{arm}_ee_pos", f"{arm}_ee_rotm"):
                    if key not in actions:
                        raise DatasetError(f"{where}: field 'actions.{key}' missing (delta mode: no raw_actions)")
                target[arm] = (
                    _rows(actions[f"{arm}_ee_pos"], 3, T, f"{where}: field 'actions.{arm}_ee_pos'"),
                    _rotations(actions[f"{arm}_ee_rotm"], T, f"{where}: field 'actions.{arm}_ee_rotm'"),
                )
        return {"T": T, "proprio": proprio, "raw": raw, "target": target}

    def episode_numeric(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(T, 16) states and (T, 14) actions, un-normalised float32 (see the module doc)."""
        state, action, _ = _state_action(self.signals(i))
        return state, action

    def episode_action_steps(self, i: int) -> int:
        """How many leading frames of episode ``i`` carry an action (T, or T - 1 in delta mode)."""
        return _state_action(self.signals(i))[2]

    # ---- episodes -----------------------------------------------------------------------------
    def episode(self, i: int, *, load_depth: bool | None = None) -> Episode:
        want_depth = self.has_depth and (self.load_depth if load_depth is None else load_depth)
        key = (i, want_depth)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        where = self._where(i)
        signals = self.signals(i)
        state, action, action_steps = _state_action(signals)
        T = signals["T"]
        views = self._views(i)
        if list(views) != self.camera_names:
            raise DatasetError(f"{where}: views {list(views)} differ from the dataset's {self.camera_names}")
        fps = _common_fps(views, where)
        rgb, depth = {}, ({} if want_depth else None)
        for name, view in views.items():
            end = view["start"] + T if view["end"] is None else view["end"]
            if view["start"] + T > end:
                raise DatasetError(
                    f"{where}: view {name!r} needs MP4 frames {view['start']} .. {view['start'] + T - 1} for "
                    f"{T} episode frames, beyond its 'end' {end}"
                )
            rgb[name] = self._decode(i, view["rgb_path"], view, T, fps)
            if depth is not None:
                # RGB24, as the release's decord returns it; its grey channels are equal: take R
                depth[name] = release_depth_code_to_unit(self._decode(i, view["depth_path"], view, T, fps)[..., 0])
        instructions = self._instructions(i)
        ep = Episode(
            task=instructions[0],
            fps=fps,
            camera_names=list(self.camera_names),
            rgb=rgb,
            state=state,
            action=action,
            depth=depth,
            meta={
                "episode_index": i,
                "episode_id": self.episode_ids[i],
                "instructions": instructions,
                "source": str(self.root),
                "depth_kind": DEPTH_KIND_CODEC_UNIT,
                "camera_types": [v["type"] for v in views.values()],
                "action_mode": "raw" if signals["raw"] is not None else "delta",
                "action_steps": action_steps,
            },
        )
        try:
            ep.validate()
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}") from exc
        self._cache.put(key, ep)
        return ep

    def _decode(self, i: int, rel_path: str, view: dict[str, Any], T: int, fps: float) -> np.ndarray:
        path = Path(rel_path) if Path(rel_path).is_absolute() else self.root / rel_path
        return decode_frames(path, fps=fps, first_index=view["start"], count=T, kind="rgb", episode=i)

    def set_cache(self, max_episodes: int, max_bytes: int | None = None) -> None:
        """Bound the decoded-episode cache by a count and, optionally, by bytes."""
        self.cache_size = max(0, int(max_episodes))
        self._cache.resize(self.cache_size, max_bytes)

    def compute_norm_stats(self) -> Any:
        """Our NormStats from the statistics the release's script would compute on this dataset (raw
        mode keeps the gripper action un-normalised); :func:`xwam.data.stats.compute_norm_stats` uses it."""
        return norm_stats_from_release(release_statistics(self), raw_gripper=self.action_mode == "raw")

    def __repr__(self) -> str:
        return (
            f"ReleaseDataset({str(self.root)!r}, episodes={self.num_episodes}, fps={self.fps:g}, "
            f"cameras={self.camera_names}, actions={self.action_mode}, depth={self.depth_kind})"
        )


def _episode_index(root: Path) -> tuple[list[str], list[int]]:
    """Episode keys and lengths: ``metadata.json`` (file order), else the loader's glob (sorted)."""
    meta_path = root / "metadata.json"
    if meta_path.is_file():
        try:
            metadata = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{meta_path} is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict) or not metadata:
            raise DatasetError(f"{meta_path}: expected a non-empty {{episode key: num_frames}} object")
        bad = [k for k, v in metadata.items() if not _is_int(v) or v < 1]
        if bad:
            raise DatasetError(f"{meta_path}: episode {bad[0]!r} has {metadata[bad[0]]!r} frames, "
                               f"expected a positive integer")
        return list(metadata), [int(v) for v in metadata.values()]
    paths = sorted(root.glob(EPISODE_GLOB))
    if not paths:
        raise DatasetError(f"{root}: no metadata.json and no episode JSON matches {EPISODE_GLOB}")
    keys, lengths = [], []
    for path in paths:
        try:
            T = json.loads(path.read_text()).get("num_frames")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise DatasetError(f"{path} is not a valid episode JSON: {exc}") from exc
        if not _is_int(T) or T < 1:
            raise DatasetError(f"{path}: field 'num_frames' must be a positive integer, got {T!r}")
        keys.append(path.relative_to(root / "data").with_suffix("").as_posix())
        lengths.append(int(T))
    return keys, lengths


def _common_fps(views: dict[str, dict[str, Any]], where: str) -> float:
    rates = {name: v["fps"] for name, v in views.items()}
    if len(set(rates.values())) != 1:
        raise DatasetError(f"{where}: views disagree on 'fps': {rates}")
    return next(iter(rates.values()))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _numeric(values: Any) -> bool:
    try:
        np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _rows(values: Any, width: int, T: int, where: str) -> np.ndarray:
    """A (T, width) float64 array from T x width values (or a flat list of T * width, as the release
    reshapes; T values when width is 1)."""
    if not _numeric(values):
        raise DatasetError(f"{where}: not a numeric array")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1 and array.size == T * width:
        array = array.reshape(T, width)
    if array.shape != (T, width):
        raise DatasetError(f"{where}: expected {T} x {width} values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DatasetError(f"{where}: holds non-finite values")
    return array


def _rotations(values: Any, T: int, where: str) -> Rotation:
    if not _numeric(values):
        raise DatasetError(f"{where}: not a numeric array")
    array = np.asarray(values, dtype=np.float64)
    if len(array) != T:
        raise DatasetError(f"{where}: expected {T} rows, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DatasetError(f"{where}: holds non-finite values")
    try:
        return rotations_from_field(array, where)
    except ValueError as exc:  # scipy: not a rotation (e.g. a zero matrix)
        raise DatasetError(f"{where}: {exc}") from exc


def _state_action(signals: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """(T, 16) states, (T, 14) actions (float32, un-normalised) and the number of frames with an action."""
    T = signals["T"]
    state = np.zeros((T, STATE_DIM))
    for slot, arm in enumerate(ARMS):
        if arm in signals["proprio"]:
            pos, rot, grip = signals["proprio"][arm]
            s = slot * ARM_STATE
            state[:, s : s + 3], state[:, s + 3 : s + 7], state[:, s + 7] = pos, canonical_quat_wxyz(rot), grip
    action = np.zeros((T, ACTION_DIM))
    raw = signals["raw"]
    steps = T if raw is not None else T - 1  # delta mode: the last frame has no next gripper
    for slot, arm in enumerate(ARMS):
        motion = arm_motion(signals, slot, arm)
        if motion is None:
            continue
        a = slot * ARM_ACTION
        action[:steps, a : a + 3], action[:steps, a + 3 : a + 6] = motion[0][:steps], motion[1][:steps]
        if raw is not None:  # RoboCasa: -1 = open; negated, +1 = open like the state
            action[:, a + 6] = -raw[:, slot * ARM_ACTION + 6]
        else:  # gripper[t + 1] - gripper[t]
            action[:steps, a + 6] = np.diff(signals["proprio"][arm][2])
    return state.astype(np.float32), action.astype(np.float32), steps
