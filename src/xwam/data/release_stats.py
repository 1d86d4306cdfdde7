"""The official release's q01/q99 statistics, in its key schema: computed on a
:class:`~xwam.data.release.ReleaseDataset` as the release's statistics script does
(:func:`release_statistics`), read from the release's YAML files (:func:`read_release_statistics`), and
turned into our :class:`~xwam.data.stats.NormStats` (:func:`norm_stats_from_release`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xwam.data.errors import DatasetError
from xwam.data.layout import default_action_names, default_state_names
from xwam.data.release_arms import ACTION_DIM, ARM_ACTION, ARM_STATE, ARMS, STATE_DIM, arm_motion

if TYPE_CHECKING:
    from xwam.data.release import ReleaseDataset

STATIC_THRESHOLD = 0.01  # the release's compute_stats.py --static-threshold default


def release_key_lengths() -> dict[str, int]:
    """Every statistics key of the release schema and its length."""
    lengths = {}
    for arm in ARMS:
        lengths.update({f"proprio_{arm}_ee_xyz": 3, f"action_{arm}_ee_xyz": 3, f"action_{arm}_ee_axisangle": 3})
    lengths.update({"gripper_pos": 1, "gripper_action": 1})
    return lengths


def _quantiles(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # numpy's default linear interpolation in float64, per axis, as the release's script
    q01, q99 = np.quantile(np.asarray(values, np.float64), [0.01, 0.99], axis=0)
    return np.atleast_1d(q01), np.atleast_1d(q99)


def _symmetric(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q01, q99 = _quantiles(values)
    bound = np.maximum(np.abs(q01), np.abs(q99))
    return -bound, bound


def release_statistics(dataset: ReleaseDataset, static_threshold: float = STATIC_THRESHOLD) -> dict[str, Any]:
    """q01/q99 over every episode as the release's statistics script (compute_stats.py) computes them.

    Returns ``{"q01": {key: [floats]}, "q99": {...}}`` (the script's output file, without a
    ``statistics:`` wrapper). Per arm present: ``proprio_<arm>_ee_xyz`` (quantiles of the proprio
    positions), ``action_<arm>_ee_xyz`` / ``_axisangle`` (raw mode: raw columns 0-2 / 3-5; delta mode:
    the deltas of the module doc for every frame, the last frame included since it has its own
    target), made symmetric (q01 = -M, q99 = M, M = max(|q01|, |q99|)). ``gripper_pos``: both arms'
    proprio gripper pooled. ``gripper_action``: proprio gripper differences g[t + 1] - g[t] (both arms,
    raw mode too) of *moving* frames only, |2 d / (q99 - q01 of gripper_pos)| >= ``static_threshold``,
    made symmetric; 0 when no frame moves. Note: for raw-mode data the script's ``gripper_action`` is
    not what the release trained with (RoboCasa's config says +-1, the gripper un-normalised);
    :func:`norm_stats_from_release` handles that with ``raw_gripper``.
    """
    pos: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    dxyz: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    drot: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    grippers, grip_deltas = [], []
    for i in range(dataset.num_episodes):
        sig = dataset.signals(i)
        for slot, arm in enumerate(ARMS):
            if arm not in sig["proprio"]:
                continue
            p, rot, grip = sig["proprio"][arm]
            pos[arm].append(p)
            grippers.append(grip)
            grip_deltas.append(np.diff(grip))
            motion = arm_motion(sig, slot, arm)
            if motion is not None:
                dxyz[arm].append(motion[0])
                drot[arm].append(motion[1])
    if not grippers:
        raise DatasetError(f"{dataset.root}: no episodes to compute statistics from")
    q01: dict[str, list[float]] = {}
    q99: dict[str, list[float]] = {}

    def put(key: str, lo: np.ndarray, hi: np.ndarray) -> None:
        q01[key], q99[key] = [float(x) for x in lo], [float(x) for x in hi]

    grip_lo, grip_hi = _quantiles(np.concatenate(grippers))
    for arm in ARMS:
        if pos[arm]:
            put(f"proprio_{arm}_ee_xyz", *_quantiles(np.concatenate(pos[arm])))
        if arm == "left":
            put("gripper_pos", grip_lo, grip_hi)
        if dxyz[arm]:
            put(f"action_{arm}_ee_xyz", *_symmetric(np.concatenate(dxyz[arm])))
            put(f"action_{arm}_ee_axisangle", *_symmetric(np.concatenate(drot[arm])))
    deltas = np.concatenate(grip_deltas)
    span = float(grip_hi[0] - grip_lo[0])
    moving = deltas[np.abs(2.0 * deltas / span) >= static_threshold] if span > 0 else deltas[:0]
    put("gripper_action", *(_symmetric(moving) if moving.size else (np.zeros(1), np.zeros(1))))
    return {"q01": q01, "q99": q99}


def _parse_statistics_block(block: Any, where: str) -> dict[str, Any]:
    """Check a ``{q01: {...}, q99: {...}}`` block: the same keys in both, known lengths, finite numbers.
    Unknown keys are dropped (listed under ``"ignored"``)."""
    if not isinstance(block, dict):
        raise ValueError(f"{where}: statistics must be a mapping with q01 and q99, got {type(block).__name__}")
    missing = [q for q in ("q01", "q99") if not isinstance(block.get(q), dict)]
    if missing:
        raise ValueError(f"{where}: statistics have no {' and no '.join(missing)} mapping (found keys "
                         f"{sorted(map(str, block))})")
    lo_keys, hi_keys = set(block["q01"]), set(block["q99"])
    if lo_keys != hi_keys:
        only = sorted(lo_keys - hi_keys), sorted(hi_keys - lo_keys)
        raise ValueError(f"{where}: every key must be in both q01 and q99; only in q01: {only[0]}, "
                         f"only in q99: {only[1]}")
    lengths = release_key_lengths()
    out: dict[str, Any] = {"q01": {}, "q99": {}, "ignored": sorted(str(k) for k in lo_keys - set(lengths))}
    for key in sorted(lo_keys & set(lengths)):
        for q in ("q01", "q99"):
            value = block[q][key]
            value = [value] if isinstance(value, int | float) and not isinstance(value, bool) else value
            if (not isinstance(value, list) or len(value) != lengths[key]
                    or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)):
                raise ValueError(f"{where}: {q}.{key} must be a list of {lengths[key]} numbers, got {value!r}")
            if not all(math.isfinite(x) for x in value):
                raise ValueError(f"{where}: {q}.{key} holds non-finite values: {value}")
            out[q][key] = [float(x) for x in value]
        if any(a > b for a, b in zip(out["q01"][key], out["q99"][key])):
            raise ValueError(f"{where}: q01.{key} {out['q01'][key]} exceeds q99.{key} {out['q99'][key]}")
    return out


def read_release_statistics(path: str | Path) -> dict[str, Any]:
    """The release's q01/q99 statistics from a YAML file, in any of its three places.

    - a data-config YAML (``configs/data/*.yaml``): ``statistics: {q01: {...}, q99: {...}}``;
    - a run's ``config.yaml``: the same block under ``dataset:``;
    - compute_stats.py's output (``quantile_pretrain.yaml``): ``q01`` / ``q99`` at the top level.

    Returns ``{"q01": {...}, "q99": {...}, "ignored": [unknown keys]}``; ValueError naming the file
    and the key for anything malformed.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    if "statistics" in data:
        return _parse_statistics_block(data["statistics"], f"{path} (statistics)")
    if isinstance(data.get("dataset"), dict) and "statistics" in data["dataset"]:
        return _parse_statistics_block(data["dataset"]["statistics"], f"{path} (dataset.statistics)")
    if "q01" in data or "q99" in data:
        return _parse_statistics_block(data, str(path))
    raise ValueError(f"{path}: no release statistics: expected 'statistics:', 'dataset: statistics:' or "
                     f"top-level 'q01:' / 'q99:' (found keys {sorted(map(str, data))})")


def norm_stats_from_release(stats: dict[str, Any], *, raw_gripper: bool = False, where: str = "statistics") -> Any:
    """Release q01/q99 statistics -> our :class:`~xwam.data.stats.NormStats` (16-d state, 14-d action).

    State per arm: xyz from ``proprio_<arm>_ee_xyz``, quaternion -1 / +1 (left raw, as the release's
    server sets identity bounds), gripper from ``gripper_pos``. Action per arm: xyz and rotation vector
    from ``action_<arm>_ee_xyz`` / ``_axisangle``, gripper from ``gripper_action``, or the bound 1
    (un-normalised) with ``raw_gripper``, as the release trains raw-mode (RoboCasa) grippers. An arm
    whose proprio keys are missing has invalid state dims; whose action keys are missing, invalid
    action dims. Only q01/q99 are known: min/max are set to them, mean to their midpoint and std to
    half their span (nothing normalises with those). Our actions are normalised as x / max(|q01|,
    |q99|), the release's 2 (x - q01) / (q99 - q01) - 1 for its symmetric bounds.
    """
    from xwam.data.stats import FeatureStats, NormStats

    q01, q99 = stats["q01"], stats["q99"]
    s_lo, s_hi, s_valid = np.zeros(STATE_DIM), np.zeros(STATE_DIM), np.zeros(STATE_DIM, bool)
    a_lo, a_hi, a_valid = np.zeros(ACTION_DIM), np.zeros(ACTION_DIM), np.zeros(ACTION_DIM, bool)
    for slot, arm in enumerate(ARMS):
        s, a = slot * ARM_STATE, slot * ARM_ACTION
        if f"proprio_{arm}_ee_xyz" in q01:
            if "gripper_pos" not in q01:
                raise ValueError(f"{where}: 'gripper_pos' is missing (the state gripper of every arm needs it)")
            s_lo[s : s + 3], s_hi[s : s + 3] = q01[f"proprio_{arm}_ee_xyz"], q99[f"proprio_{arm}_ee_xyz"]
            s_lo[s + 3 : s + 7], s_hi[s + 3 : s + 7] = -1.0, 1.0
            s_lo[s + 7], s_hi[s + 7] = q01["gripper_pos"][0], q99["gripper_pos"][0]
            s_valid[s : s + ARM_STATE] = True
        if f"action_{arm}_ee_xyz" in q01 and f"action_{arm}_ee_axisangle" in q01:
            if raw_gripper:
                grip_lo, grip_hi = -1.0, 1.0
            elif "gripper_action" in q01:
                grip_lo, grip_hi = q01["gripper_action"][0], q99["gripper_action"][0]
            else:
                raise ValueError(f"{where}: 'gripper_action' is missing (needed unless the gripper is raw)")
            a_lo[a : a + 3], a_hi[a : a + 3] = q01[f"action_{arm}_ee_xyz"], q99[f"action_{arm}_ee_xyz"]
            a_lo[a + 3 : a + 6] = q01[f"action_{arm}_ee_axisangle"]
            a_hi[a + 3 : a + 6] = q99[f"action_{arm}_ee_axisangle"]
            a_lo[a + 6], a_hi[a + 6] = grip_lo, grip_hi
            a_valid[a : a + ARM_ACTION] = True
    if not s_valid.any() or not a_valid.any():
        raise ValueError(f"{where}: no arm has both proprio_<arm>_ee_xyz and action_<arm>_ee_xyz/_axisangle "
                         f"(keys: {sorted(q01)})")

    def feature(lo: np.ndarray, hi: np.ndarray) -> FeatureStats:
        return FeatureStats(q01=lo, q99=hi, mean=(lo + hi) / 2, std=(hi - lo) / 2, min=lo.copy(), max=hi.copy(),
                            count=0)

    return NormStats(state=feature(s_lo, s_hi), action=feature(a_lo, a_hi),
                     state_names=default_state_names(STATE_DIM), action_names=default_action_names(ACTION_DIM),
                     state_valid=s_valid, action_valid=a_valid)


def asymmetric_action_keys(stats: dict[str, Any], rtol: float = 1e-5) -> list[str]:
    """Action keys whose q01 is not -q99 (beyond ``rtol`` of the bound): our x / max(|q01|, |q99|)
    then differs from the release's normalisation for them."""
    keys = []
    for key in stats["q01"]:
        if key.startswith("action_") or key == "gripper_action":
            lo, hi = np.asarray(stats["q01"][key]), np.asarray(stats["q99"][key])
            if np.any(np.abs(lo + hi) > rtol * np.maximum(np.abs(lo), np.abs(hi))):
                keys.append(key)
    return keys
