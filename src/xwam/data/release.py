"""Reader for the X-WAM release dataset layout (the X-WAM release), mapped to :class:`Episode`.

Layout::

    metadata.json                                 {episode_id: num_frames}
    data/chunk-XXXX/episode_N.json                instructions, per-camera video paths, fps, start/end,
                                                  proprio (*_ee_pos, *_ee_rotm, *_gripper_pos),
                                                  actions (same keys, absolute targets), raw_actions?
    video/<camera>/chunk-XXXX/episode_N.mp4       RGB
    depth/<camera>/chunk-XXXX/episode_N.mp4       8-bit inverse depth, relative scale

No release data is available to check against, so the JSON field names below are the most plausible
reading of the layout. Every name lives in :data:`FIELDS` (alternatives tried in order) so a mismatch
with real files is a one-line fix. Assumptions where the layout leaves details open:

- episode ids in metadata.json are ``N``, ``episode_N`` or ``chunk-XXXX/episode_N``; the JSON file is
  ``data/chunk-{N // 1000:04d}/episode_N.json`` (found by search when not there);
- proprio/action arrays and videos cover the whole recording and ``[start, end)`` selects the
  episode (when the arrays already have ``end - start`` rows they are taken as they are);
- ``videos`` maps camera -> {"rgb": path, "depth": path} relative to the dataset root; when absent
  the paths are derived from the camera list (``cameras``) with the layout above;
- arms are found from the ``<arm>_ee_pos`` keys: ``left``/``right`` fill the left/right slots, a
  single arm of any name fills the left slot and the right slots stay zero;
- ``*_gripper_pos`` with several columns (one per finger) is averaged to one value.

Mapping: state per arm [xyz, quaternion wxyz (w >= 0) from the rotation matrix, gripper] for (left,
right) = 16-d. Action per arm (14-d): [target xyz - state xyz, axis-angle of R_target R_state^T,
target gripper - state gripper], unless ``raw_actions`` is given, which is used as it is. Depth is
returned as relative inverse depth in [0, 1] (``meta["depth_kind"] = "inverse_relative"``), not
metres; views are ordered by sorted camera name.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from xwam.data.episode import Episode, EpisodeCache
from xwam.data.errors import DatasetError
from xwam.data.layout import default_action_names, default_state_names
from xwam.data.video import decode_frames

# JSON field names (first match wins). Keep every layout assumption here.
FIELDS: dict[str, tuple[str, ...]] = {
    "instructions": ("instructions", "instruction", "tasks", "task", "language_instruction"),
    "fps": ("fps", "frame_rate"),
    "start": ("start", "start_frame", "start_idx"),
    "end": ("end", "end_frame", "end_idx"),
    "videos": ("videos", "cameras", "views"),
    "rgb": ("rgb", "video", "rgb_path", "video_path"),
    "depth": ("depth", "depth_path"),
    "proprio": ("proprio", "observation", "state", "states"),
    "actions": ("actions", "action"),
    "raw_actions": ("raw_actions",),
    "camera_list": ("camera_names", "cameras"),
}
POS_SUFFIX, ROTM_SUFFIX, GRIPPER_SUFFIX = "_ee_pos", "_ee_rotm", "_gripper_pos"
ARM_SLOTS = ("left", "right")
CHUNK_SIZE = 1000


def _field(data: dict[str, Any], name: str, where: str, required: bool = True) -> Any:
    for key in FIELDS[name]:
        if key in data:
            return data[key]
    if required:
        raise DatasetError(f"{where}: field {name!r} missing (looked for {list(FIELDS[name])})")
    return None


# ---------------------------------------------------------------------------------------------
# rotations (numpy, batched)
# ---------------------------------------------------------------------------------------------
def quat_wxyz_from_matrix(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions wxyz with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    # Squared magnitudes of each component; the largest is computed from the diagonal and the
    # rest from off-diagonal terms, which is accurate for every rotation (Shepperd's method).
    cands = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = np.argmax(cands, -1)
    q = np.zeros(R.shape[:-2] + (4,))
    s = np.sqrt(np.maximum(np.take_along_axis(cands, best[..., None], -1)[..., 0], 1e-12)) * 2  # 4 * |q_best|
    r10_01, r02_20, r21_12 = (
        R[..., 1, 0] - R[..., 0, 1],
        R[..., 0, 2] - R[..., 2, 0],
        R[..., 2, 1] - R[..., 1, 2],
    )
    p10_01, p02_20, p21_12 = (
        R[..., 1, 0] + R[..., 0, 1],
        R[..., 0, 2] + R[..., 2, 0],
        R[..., 2, 1] + R[..., 1, 2],
    )
    options = [
        np.stack([s / 4, r21_12 / s, r02_20 / s, r10_01 / s], -1),
        np.stack([r21_12 / s, s / 4, p10_01 / s, p02_20 / s], -1),
        np.stack([r02_20 / s, p10_01 / s, s / 4, p21_12 / s], -1),
        np.stack([r10_01 / s, p02_20 / s, p21_12 / s, s / 4], -1),
    ]
    for k in range(4):
        q = np.where((best == k)[..., None], options[k], q)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def axis_angle_from_matrix(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors (axis * angle, angle in [0, pi])."""
    q = quat_wxyz_from_matrix(R)
    w, v = q[..., 0], q[..., 1:]
    norm = np.linalg.norm(v, axis=-1)
    angle = 2 * np.arctan2(norm, w)
    # angle / sin(angle / 2) -> 2 as the angle -> 0
    scale = np.where(norm > 1e-12, angle / np.maximum(norm, 1e-12), 2.0)
    return v * scale[..., None]


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
class ReleaseDataset:
    """The release layout as Episodes, with the same interface as ``LeRobotV3Dataset``."""

    def __init__(self, root: str | Path, *, cache_size: int = 8, load_depth: bool = True) -> None:
        self.root = Path(root)
        meta_path = self.root / "metadata.json"
        if not meta_path.is_file():
            raise DatasetError(f"not a release dataset: {meta_path} is missing")
        try:
            metadata = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta_path} is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict) or not metadata:
            raise DatasetError(f"{meta_path}: expected a non-empty {{episode_id: num_frames}} object")
        self.episode_ids = sorted(metadata, key=lambda k: (_episode_number(k, meta_path), k))
        self.lengths = {k: int(v) for k, v in metadata.items()}
        self.load_depth = load_depth
        self.cache_size = cache_size
        self._cache = EpisodeCache(self.cache_size)
        self._json_cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        first = self._episode_json(0)
        self.camera_names = sorted(self._videos(first, self._json_path(0)).keys())
        self.fps = float(_field(first, "fps", str(self._json_path(0))))
        self.has_depth = all(v.get("depth") for v in self._videos(first, self._json_path(0)).values())
        self.has_intrinsics = self.has_extrinsics = False
        self.state_names = default_state_names(16)
        raw = _field(first, "raw_actions", "", required=False)
        self.action_names = default_action_names(np.asarray(raw).shape[-1] if raw is not None else 14)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    def __len__(self) -> int:
        return self.num_episodes

    def episode_length(self, i: int) -> int:
        data = self._episode_json(i)
        where = str(self._json_path(i))
        start = int(_field(data, "start", where, required=False) or 0)
        end = _field(data, "end", where, required=False)
        return (int(end) - start) if end is not None else self.lengths[self.episode_ids[i]]

    def episode_task(self, i: int) -> str:
        return self._instructions(i)[0]

    def _instructions(self, i: int) -> list[str]:
        value = _field(self._episode_json(i), "instructions", str(self._json_path(i)))
        items = [value] if isinstance(value, str) else list(value)
        if not items:
            raise DatasetError(f"{self._json_path(i)}: empty instruction list")
        return [str(x) for x in items]

    # ---- files --------------------------------------------------------------------------------
    def _json_path(self, i: int) -> Path:
        n = _episode_number(self.episode_ids[i], self.root / "metadata.json")
        path = self.root / "data" / f"chunk-{n // CHUNK_SIZE:04d}" / f"episode_{n}.json"
        if not path.is_file():
            found = sorted((self.root / "data").glob(f"chunk-*/episode_{n}.json"))
            if not found:
                raise DatasetError(f"episode {self.episode_ids[i]}: file missing: {path}")
            path = found[0]
        return path

    def _episode_json(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range [0, {self.num_episodes}) in {self.root}")
        if i in self._json_cache:
            return self._json_cache[i]
        path = self._json_path(i)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path} (episode {self.episode_ids[i]}) is not valid JSON: {exc}") from exc
        self._json_cache[i] = data
        while len(self._json_cache) > 64:
            self._json_cache.popitem(last=False)
        return data

    def _videos(self, data: dict[str, Any], where: Path) -> dict[str, dict[str, str]]:
        videos = _field(data, "videos", str(where), required=False)
        n = _episode_number(where.stem, where)
        chunk = where.parent.name
        if videos is None:
            cams = _field(data, "camera_list", str(where))
            return {
                c: {
                    "rgb": f"video/{c}/{chunk}/episode_{n}.mp4",
                    "depth": f"depth/{c}/{chunk}/episode_{n}.mp4",
                }
                for c in cams
            }
        out = {}
        for cam, entry in videos.items():
            if isinstance(entry, str):
                entry = {"rgb": entry}
            out[cam] = {
                "rgb": _field(entry, "rgb", f"{where} camera {cam!r}"),
                "depth": _field(entry, "depth", f"{where} camera {cam!r}", required=False),
            }
        return out

    # ---- episodes -------------------------------------------------------------------------------
    def _arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        data = self._episode_json(i)
        where = f"{self._json_path(i)} (episode {self.episode_ids[i]})"
        start = int(_field(data, "start", where, required=False) or 0)
        end = _field(data, "end", where, required=False)
        proprio = _field(data, "proprio", where)
        pos, rot, grip = _arms(proprio, where, "proprio")
        total = pos.shape[1]
        end = int(end) if end is not None else total
        T = end - start
        lo, hi = (start, end) if total >= end else (0, total)  # arrays may already be cut to the episode
        if hi - lo != T:
            raise DatasetError(f"{where}: proprio has {total} rows, cannot take frames [{start}, {end})")
        pos, rot, grip = pos[:, lo:hi], rot[:, lo:hi], grip[:, lo:hi]
        state = np.zeros((T, 16), np.float32)
        for arm in range(pos.shape[0]):
            state[:, 8 * arm : 8 * arm + 3] = pos[arm]
            state[:, 8 * arm + 3 : 8 * arm + 7] = quat_wxyz_from_matrix(rot[arm])
            state[:, 8 * arm + 7] = grip[arm]
        raw = _field(data, "raw_actions", where, required=False)
        if raw is not None:
            raw = np.asarray(raw, np.float32)
            raw = raw[lo:hi] if len(raw) >= hi else raw
            if len(raw) != T:
                raise DatasetError(f"{where}: raw_actions has {len(raw)} rows, expected {T}")
            action = raw.reshape(T, -1)
        else:
            tpos, trot, tgrip = _arms(_field(data, "actions", where), where, "actions")
            if tpos.shape[0] != pos.shape[0]:
                raise DatasetError(
                    f"{where}: actions have {tpos.shape[0]} arms but proprio has {pos.shape[0]}"
                )
            if tpos.shape[1] < hi:
                raise DatasetError(f"{where}: actions have {tpos.shape[1]} rows, expected at least {hi}")
            tpos, trot, tgrip = tpos[:, lo:hi], trot[:, lo:hi], tgrip[:, lo:hi]
            action = np.zeros((T, 14), np.float32)
            for arm in range(pos.shape[0]):
                action[:, 7 * arm : 7 * arm + 3] = tpos[arm] - pos[arm]
                delta = trot[arm] @ np.swapaxes(rot[arm], -1, -2)  # R_target R_state^T
                action[:, 7 * arm + 3 : 7 * arm + 6] = axis_angle_from_matrix(delta)
                action[:, 7 * arm + 6] = tgrip[arm] - grip[arm]
        return state, action, start, end

    def episode_numeric(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        state, action, _, _ = self._arrays(i)
        return state, action

    def episode(self, i: int, *, load_depth: bool | None = None) -> Episode:
        want_depth = self.has_depth and (self.load_depth if load_depth is None else load_depth)
        key = (i, want_depth)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        data = self._episode_json(i)
        json_path = self._json_path(i)
        eid = self.episode_ids[i]
        state, action, start, end = self._arrays(i)
        T = end - start
        fps = float(_field(data, "fps", str(json_path), required=False) or self.fps)
        videos = self._videos(data, json_path)
        missing = [c for c in self.camera_names if c not in videos]
        if missing:
            raise DatasetError(f"{json_path} (episode {eid}): camera(s) {missing} missing")
        rgb, depth = {}, ({} if want_depth else None)
        for cam in self.camera_names:
            rgb[cam] = decode_frames(
                self.root / videos[cam]["rgb"], fps=fps, first_index=start, count=T, kind="rgb", episode=i
            )
            if depth is not None:
                if not videos[cam].get("depth"):
                    raise DatasetError(f"{json_path} (episode {eid}): camera {cam!r} has no depth video")
                frames = decode_frames(
                    self.root / videos[cam]["depth"],
                    fps=fps,
                    first_index=start,
                    count=T,
                    kind="depth",
                    episode=i,
                )
                depth[cam] = (
                    (frames.astype(np.float32) / 255.0)
                    if frames.dtype == np.uint8
                    else (frames.astype(np.float32) / 65535.0)
                )
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
                "episode_id": eid,
                "instructions": instructions,
                "source": str(self.root),
                "depth_kind": "inverse_relative",
            },
        )
        try:
            ep.validate()
        except ValueError as exc:
            raise DatasetError(f"{json_path} (episode {eid}): {exc}") from exc
        self._cache.put(key, ep)
        return ep

    def set_cache(self, max_episodes: int, max_bytes: int | None = None) -> None:
        """Bound the decoded-episode cache by a count and, optionally, by bytes."""
        self.cache_size = max(0, int(max_episodes))
        self._cache.resize(self.cache_size, max_bytes)

    def __repr__(self) -> str:
        return (
            f"ReleaseDataset({str(self.root)!r}, episodes={self.num_episodes}, fps={self.fps:g}, "
            f"cameras={self.camera_names}, depth={self.has_depth})"
        )


def _episode_number(episode_id: str, where: Path) -> int:
    match = re.search(r"(\d+)$", str(episode_id))
    if not match:
        raise DatasetError(f"{where}: cannot read an episode number from id {episode_id!r}")
    return int(match.group(1))


def _arms(block: dict[str, Any], where: str, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arms, T, 3) positions, (arms, T, 3, 3) rotations, (arms, T) gripper in slot order."""
    if not isinstance(block, dict):
        raise DatasetError(f"{where}: {what} must be an object of *_ee_pos/*_ee_rotm/*_gripper_pos arrays")
    prefixes = sorted(k[: -len(POS_SUFFIX)] for k in block if k.endswith(POS_SUFFIX))
    if not prefixes:
        raise DatasetError(f"{where}: {what} has no '*{POS_SUFFIX}' key")
    if set(prefixes) >= set(ARM_SLOTS):
        prefixes = list(ARM_SLOTS)
    elif len(prefixes) > 2:
        raise DatasetError(f"{where}: {what} has more than two arms: {prefixes}")
    pos, rot, grip = [], [], []
    for p in prefixes:
        try:
            P = np.asarray(block[p + POS_SUFFIX], np.float64)
            R = np.asarray(block[p + ROTM_SUFFIX], np.float64)
            G = np.asarray(block[p + GRIPPER_SUFFIX], np.float64)
        except KeyError as exc:
            raise DatasetError(f"{where}: {what} key {exc.args[0]!r} missing") from exc
        T = len(P)
        if P.shape != (T, 3) or R.reshape(T, -1).shape[1] != 9 or len(G) != T:
            raise DatasetError(
                f"{where}: {what} arm {p!r}: shapes pos {P.shape}, rotm {R.shape}, gripper {G.shape} "
                f"disagree (expected ({T}, 3), ({T}, 3, 3), ({T},))"
            )
        pos.append(P)
        rot.append(R.reshape(T, 3, 3))
        grip.append(G.reshape(T, -1).mean(1))
    if len({len(p) for p in pos}) != 1:
        raise DatasetError(f"{where}: {what} arms have different lengths")
    return np.stack(pos), np.stack(rot), np.stack(grip)
