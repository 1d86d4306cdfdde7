"""Normalisation statistics: our :class:`NormStats` (``meta/xwam_norm.json``), computed exactly.

LeRobot's own ``meta/stats.json`` is computed in :mod:`xwam.data.lerobot_stats`; :func:`write_dataset_stats`
writes both.

Statistics are exact: every frame of every episode is used (quantiles by ``numpy.quantile`` with
linear interpolation), unless a dataset has more than ``max_frames`` frames, in which case a
seeded uniform sample of ``max_frames`` frames is used (the q01/q99 of a uniform sample of n
frames is within about ``sqrt(q (1 - q) / n)`` in quantile rank: 0.0002 for 2 M frames).

Normalisation (the X-WAM release):
- state: xyz and gripper -> ``2 (x - q01) / (q99 - q01) - 1`` (q01 -> -1, q99 -> +1); quaternion
  dimensions are left raw.
- state quaternions, optionally *aligned* (``ModelConfig.quaternion_norm = "aligned"``, our choice
  for models trained from scratch): each quaternion is first moved to the hemisphere of a reference
  (``q -> sign(q . r) q``, the same rotation), then normalised with quantiles like xyz, and
  unnormalised back to the data's ``w >= 0`` form (the same flip, towards ``r = (1, 0, 0, 0)``).
  The reference ``r`` is the data's mean orientation
  (:func:`xwam.geometry.transforms.mean_quat_wxyz`). Why: a gripper pointing down is a half turn about a horizontal axis, so ``w`` is
  near 0 and ``w >= 0`` flips the sign of x, y, z whenever the hand tilts through vertical (every
  Lift episode does it 4 times), and the raw components that encode the small tilts the expert
  corrects span 0.07 against 2 for normalised xyz. Aligned, the encoding is continuous wherever
  the hand stays within a half turn of its mean orientation.
- action: ``x / b`` with ``b = max(|q01|, |q99|)``, so 0 stays 0 ("no motion").
- dimensions that are identically zero (padding, e.g. the right arm of single-arm data) are
  invalid: they normalise to 0, unnormalise to 0 and carry ``valid = False`` so losses mask them.
Values outside the quantile range are not clipped (normalisation is exactly invertible).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xwam.atomic import atomic_write_json
from xwam.data.errors import DatasetError
from xwam.data.layout import (
    QUATERNION_NAME_ORDER,
    default_action_names,
    default_state_names,
    quaternion_dims,
    quaternion_groups,
)
from xwam.data.lerobot_stats import DEFAULT_MAX_FRAMES, compute_lerobot_stats, merge_lerobot_stats
from xwam.geometry.transforms import mean_quat_wxyz

_EPS = 1e-8


@dataclass
class FeatureStats:
    """Per-dimension statistics of one vector feature."""

    q01: np.ndarray
    q99: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: int

    @classmethod
    def from_array(cls, values: np.ndarray) -> FeatureStats:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] == 0:
            raise ValueError(f"statistics need a non-empty (N, D) array, got shape {values.shape}")
        q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
        return cls(
            q01=q01,
            q99=q99,
            mean=values.mean(0),
            std=values.std(0),
            min=values.min(0),
            max=values.max(0),
            count=int(values.shape[0]),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: np.asarray(getattr(self, k)).tolist() for k in ("q01", "q99", "mean", "std", "min", "max")
        }
        out["count"] = self.count
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureStats:
        """From our JSON or LeRobot's (which stores ``count`` as a one-element list: ``[N]``)."""
        count = np.asarray(data.get("count", 0), dtype=np.float64).reshape(-1)
        return cls(
            **{k: np.asarray(data[k], dtype=np.float64) for k in ("q01", "q99", "mean", "std", "min", "max")},
            count=int(count.max()) if count.size else 0,
        )


@dataclass
class NormStats:
    """State and action normalisation statistics plus per-dimension validity masks."""

    state: FeatureStats
    action: FeatureStats
    state_names: list[str]
    action_names: list[str]
    state_valid: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    action_valid: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    state_raw: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # (S,) reference quaternions at the quaternion dimensions (zeros elsewhere) when the state's
    # quaternions are aligned before normalisation (see the module docstring); None: left raw
    quaternion_reference: np.ndarray | None = None

    def __post_init__(self) -> None:
        S, A = len(self.state.q01), len(self.action.q01)
        if len(self.state_valid) != S:
            self.state_valid = _nonzero_dims(self.state)
        if len(self.action_valid) != A:
            self.action_valid = _nonzero_dims(self.action)
        if len(self.state_raw) != S:
            self.state_raw = np.asarray(quaternion_dims(self.state_names), bool)
        self.state_valid = np.asarray(self.state_valid, bool)
        self.action_valid = np.asarray(self.action_valid, bool)
        self.state_raw = np.asarray(self.state_raw, bool)
        # the state's quaternions, once: normalisation runs per sample in the data loader
        self._quaternion_groups = quaternion_groups(self.state_names)
        if self.quaternion_reference is not None:
            ref = np.asarray(self.quaternion_reference, np.float64)
            if ref.shape != (S,) or not self._quaternion_groups:
                raise ValueError(f"quaternion_reference must have the state's {S} dims and the state quaternions "
                                 f"(names {QUATERNION_NAME_ORDER}), got shape {ref.shape}")
            self.quaternion_reference = ref

    @property
    def quaternions_aligned(self) -> bool:
        return self.quaternion_reference is not None

    def with_aligned_quaternions(self, states: np.ndarray) -> NormStats:
        """These statistics with the state's quaternions aligned (module docstring): the reference is
        the mean orientation of ``states`` (the raw (N, S) frames these statistics describe) and the
        state statistics are recomputed on the aligned frames; the action statistics are kept."""
        states = np.asarray(states, np.float64)
        _check_dim(states, self.state_dim, "state")
        groups = self._quaternion_groups
        if not groups:
            raise ValueError(f"no quaternion in the state (names {self.state_names}); nothing to align")
        reference = np.zeros(self.state_dim)
        for g in groups:
            reference[g] = mean_quat_wxyz(states[:, g])
        aligned = FeatureStats.from_array(align_quaternions(states, reference, groups))
        raw = self.state_raw.copy()
        for g in groups:
            # a component that does not vary stays raw (quantile normalisation would zero it)
            raw[g] = (aligned.q99 - aligned.q01)[g] < _EPS
        return NormStats(state=aligned, action=self.action,
                         state_names=list(self.state_names), action_names=list(self.action_names),
                         state_valid=self.state_valid, action_valid=self.action_valid, state_raw=raw,
                         quaternion_reference=reference)

    @classmethod
    def from_arrays(
        cls,
        state: np.ndarray,
        action: np.ndarray,
        state_names: list[str] | None = None,
        action_names: list[str] | None = None,
    ) -> NormStats:
        state, action = np.asarray(state), np.asarray(action)
        return cls(
            state=FeatureStats.from_array(state),
            action=FeatureStats.from_array(action),
            state_names=list(state_names or default_state_names(state.shape[1])),
            action_names=list(action_names or default_action_names(action.shape[1])),
        )

    @property
    def state_dim(self) -> int:
        return len(self.state.q01)

    @property
    def action_dim(self) -> int:
        return len(self.action.q01)

    @property
    def action_bound(self) -> np.ndarray:
        return np.maximum(np.abs(self.action.q01), np.abs(self.action.q99))

    # ---- (un)normalisation: numpy arrays or torch tensors of shape (..., D) -----------------
    def normalize_state(self, x: Any) -> Any:
        lo, span, use, raw = self._state_params(x)
        if self.quaternion_reference is not None:
            x = align_quaternions(x, self.quaternion_reference, self._quaternion_groups)
        y = 2.0 * (x - lo) / span - 1.0
        y = _where(raw, x, y)
        return _where(use, y, x * 0)

    def unnormalize_state(self, y: Any) -> Any:
        lo, span, use, raw = self._state_params(y)
        x = (y + 1.0) * 0.5 * span + lo
        x = _where(raw, y, x)
        x = _where(use, x, y * 0)
        if self.quaternion_reference is not None:  # back to the data's w >= 0 form
            w_axis = np.zeros(self.state_dim)
            w_axis[[g[0] for g in self._quaternion_groups]] = 1.0
            x = align_quaternions(x, w_axis, self._quaternion_groups)
        return x

    def normalize_action(self, x: Any) -> Any:
        bound, use = self._action_params(x)
        return _where(use, x / bound, x * 0)

    def unnormalize_action(self, y: Any) -> Any:
        bound, use = self._action_params(y)
        return _where(use, y * bound, y * 0)

    def _state_params(self, like: Any) -> tuple[Any, Any, Any, Any]:
        _check_dim(like, self.state_dim, "state")
        span = self.state.q99 - self.state.q01
        degenerate = span < _EPS
        use = self.state_valid & (~degenerate | self.state_raw)
        span = np.where(degenerate, 1.0, span)
        return (
            _like(self.state.q01, like),
            _like(span, like),
            _like(use, like, mask=True),
            _like(self.state_raw, like, mask=True),
        )

    def _action_params(self, like: Any) -> tuple[Any, Any]:
        _check_dim(like, self.action_dim, "action")
        bound = self.action_bound
        use = self.action_valid & (bound >= _EPS)
        bound = np.where(bound < _EPS, 1.0, bound)
        return _like(bound, like), _like(use, like, mask=True)

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "xwam-norm-stats/1",
            "state": self.state.to_dict(),
            "action": self.action.to_dict(),
            "state_names": list(self.state_names),
            "action_names": list(self.action_names),
            "state_valid": self.state_valid.tolist(),
            "action_valid": self.action_valid.tolist(),
            "state_raw": self.state_raw.tolist(),
            **({} if self.quaternion_reference is None
               else {"quaternion_reference": self.quaternion_reference.tolist()}),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_json(path, self.to_dict())
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        try:
            return cls(
                state=FeatureStats.from_dict(data["state"]),
                action=FeatureStats.from_dict(data["action"]),
                state_names=list(data["state_names"]),
                action_names=list(data["action_names"]),
                state_valid=np.asarray(data.get("state_valid", []), bool),
                action_valid=np.asarray(data.get("action_valid", []), bool),
                state_raw=np.asarray(data.get("state_raw", []), bool),
                quaternion_reference=(None if data.get("quaternion_reference") is None
                                      else np.asarray(data["quaternion_reference"], np.float64)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid normalisation statistics: {exc!r}") from exc

    @classmethod
    def from_json(cls, source: str | Path) -> NormStats:
        """Load from a JSON file path or a JSON string."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"normalisation statistics not found: {path}")
            try:
                return cls.from_dict(json.loads(path.read_text()))
            except (json.JSONDecodeError, ValueError) as exc:
                raise ValueError(f"{path}: {exc}") from exc
        return cls.from_dict(json.loads(text))


def align_quaternions(x: Any, reference: np.ndarray, groups: list[list[int]]) -> Any:
    """Each quaternion of ``x`` (..., S) negated where its dot product with the reference is < 0."""
    out = x.clone() if _is_torch(x) else np.array(x, copy=True)
    for g in groups:
        q = x[..., g]
        dot = (q * _like(reference[g], x)).sum(-1, keepdims=True)
        out[..., g] = _where(dot < 0, -q, q)
    return out


def _nonzero_dims(stats: FeatureStats) -> np.ndarray:
    return ~((np.abs(stats.min) == 0) & (np.abs(stats.max) == 0))


def _check_dim(x: Any, dim: int, what: str) -> None:
    if x.shape[-1] != dim:
        raise ValueError(f"{what} has {x.shape[-1]} dims but the statistics have {dim}")


def _like(values: np.ndarray, like: Any, mask: bool = False) -> Any:
    if _is_torch(like):
        import torch

        return torch.as_tensor(values, dtype=torch.bool if mask else like.dtype, device=like.device)
    return np.asarray(values, dtype=bool if mask else np.result_type(like, np.float32))


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _where(cond: Any, a: Any, b: Any) -> Any:
    if _is_torch(a) or _is_torch(b):
        import torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


# ---------------------------------------------------------------------------------------------
# dataset-level computation
# ---------------------------------------------------------------------------------------------
def gather_state_action(
    dataset: Any, max_frames: int = DEFAULT_MAX_FRAMES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """All (state, action) frames of a dataset (subsampled to ``max_frames`` with a fixed seed)."""
    states, actions = [], []
    for i in range(dataset.num_episodes):
        if hasattr(dataset, "episode_numeric"):
            s, a = dataset.episode_numeric(i)
        else:
            ep = dataset.episode(i)
            s, a = ep.state, ep.action
        states.append(np.asarray(s, np.float64))
        actions.append(np.asarray(a, np.float64))
    if not states:
        raise DatasetError(f"{getattr(dataset, 'root', dataset)}: no episodes to compute statistics from")
    state, action = np.concatenate(states), np.concatenate(actions)
    if len(state) > max_frames:
        keep = np.sort(np.random.default_rng(seed).choice(len(state), max_frames, replace=False))
        state, action = state[keep], action[keep]
    return state, action


def compute_norm_stats(dataset: Any, max_frames: int = DEFAULT_MAX_FRAMES) -> NormStats:
    """Statistics over every frame; a dataset with its own rule (``compute_norm_stats()``, the release
    format's statistics script) uses that instead."""
    own = getattr(dataset, "compute_norm_stats", None)
    if callable(own):
        return own()
    state, action = gather_state_action(dataset, max_frames)
    return NormStats.from_arrays(
        state, action, getattr(dataset, "state_names", None), getattr(dataset, "action_names", None)
    )


def with_quaternion_norm(stats: NormStats, mode: str, datasets: Sequence[Any]) -> NormStats:
    """``stats`` as ``ModelConfig.quaternion_norm = mode`` wants them: aligned (from the state frames
    of ``datasets``, the ones ``stats`` describe) when ``mode`` is "aligned" and they are not yet;
    otherwise unchanged (statistics that are already aligned keep their reference)."""
    if mode == "raw" or stats.quaternions_aligned:
        return stats
    return stats.with_aligned_quaternions(np.concatenate([gather_state_action(d)[0] for d in datasets]))


def write_dataset_stats(root: str | Path, *, images: bool = True) -> NormStats:
    """Compute ``meta/xwam_norm.json`` (NormStats) and merge ours into ``meta/stats.json`` (LeRobot).

    An unreadable ``meta/stats.json`` is refused (DatasetError) rather than overwritten.
    """
    from xwam.data.lerobot_reader import NORM_PATH, STATS_PATH, LeRobotV3Dataset, read_stats_json

    dataset = LeRobotV3Dataset(root, cache_size=0)
    path = Path(root) / STATS_PATH
    existing = read_stats_json(path) if path.is_file() else {}
    lerobot_stats = compute_lerobot_stats(dataset, image_episodes=4 if images else 0)
    merged = merge_lerobot_stats(
        existing,
        lerobot_stats,
        sampled={*dataset.rgb_keys.values(), *dataset.depth_keys.values()},
        ours="xwam" in dataset.info,
    )
    norm = compute_norm_stats(dataset)
    atomic_write_json(path, merged)
    norm.to_json(Path(root) / NORM_PATH)
    return norm


def load_dataset_norm_stats(root: str | Path) -> NormStats:
    """The dataset's NormStats: ``meta/xwam_norm.json``, else derived from a stats.json xwam wrote.

    Raises FileNotFoundError when neither holds usable state and action statistics, so callers
    compute them instead: lerobot's ``delete_episodes`` / ``split_dataset`` leave ``stats.json`` as
    ``{}``, older lerobot versions wrote no quantiles, and the q01/q99 that lerobot 0.4.4 writes
    are count-weighted means of per-episode quantiles, not the dataset's (state 0..11 in one
    episode and 100..108 in another gives q01 = 43), so a stats.json from lerobot is never used for
    normalisation. DatasetError when a file is malformed.
    """
    from xwam.data.lerobot_reader import NORM_PATH, STATS_PATH, LeRobotV3Dataset, read_stats_json

    root = Path(root)
    if (root / NORM_PATH).is_file():
        try:
            return NormStats.from_json(root / NORM_PATH)
        except ValueError as exc:
            raise DatasetError(str(exc)) from exc
    path = root / STATS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{root}: no statistics (meta/xwam_norm.json or meta/stats.json); run `xwam dataset stats`"
        )
    data = read_stats_json(path)
    needed = ("q01", "q99", "mean", "std", "min", "max")
    lacking = [k for k in ("observation.state", "action") if not all(q in data.get(k, {}) for q in needed)]
    if lacking:
        what = "is empty" if not data else f"has no {'/'.join(needed)} for {' and '.join(lacking)}"
        raise FileNotFoundError(f"{path} {what}: no normalisation statistics; run `xwam dataset stats {root}`")
    try:
        state = FeatureStats.from_dict(data["observation.state"])
        action = FeatureStats.from_dict(data["action"])
        for name, f in (("observation.state", state), ("action", action)):
            dims = {np.shape(getattr(f, q)) for q in needed}
            if len(dims) != 1 or len(next(iter(dims))) != 1:
                raise ValueError(f"{name} statistics are not vectors of one length (shapes {sorted(dims)})")
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: invalid statistics: {exc}") from exc
    ds = LeRobotV3Dataset(root, cache_size=0)
    if "xwam" not in ds.info:  # lerobot wrote it (or rewrote it: its tools drop our info block)
        raise FileNotFoundError(
            f"{path} is lerobot's: its q01/q99 average per-episode quantiles, not the dataset's; "
            f"run `xwam dataset stats {root}` (training computes exact statistics itself)"
        )
    return NormStats(
        state=state,
        action=action,
        state_names=ds.state_names or default_state_names(len(state.q01)),
        action_names=ds.action_names or default_action_names(len(action.q01)),
    )


def compare_stats(dataset_stats: NormStats, checkpoint_stats: NormStats, rtol: float = 1e-3) -> list[str]:
    """Human-readable disagreements between two NormStats (empty when they agree).

    Values agree when ``|a - b| <= rtol * max(|a|, |b|, q99 - q01)`` per dimension, so tiny
    absolute differences on near-zero statistics of a wide dimension are not reported.
    """
    problems: list[str] = []
    for part in ("state", "action"):
        a_names = getattr(dataset_stats, f"{part}_names")
        b_names = getattr(checkpoint_stats, f"{part}_names")
        if len(a_names) != len(b_names):
            problems.append(f"{part} dimension: dataset {len(a_names)} vs checkpoint {len(b_names)}")
            continue
        for i, (x, y) in enumerate(zip(a_names, b_names)):
            if x != y:
                problems.append(f"{part}[{i}] name: dataset {x!r} vs checkpoint {y!r}")
        a, b = getattr(dataset_stats, part), getattr(checkpoint_stats, part)
        scale = np.maximum(np.abs(a.q99 - a.q01), np.abs(b.q99 - b.q01))
        for stat in ("q01", "q99", "mean", "std", "min", "max"):
            va, vb = getattr(a, stat), getattr(b, stat)
            tol = rtol * np.maximum(np.maximum(np.abs(va), np.abs(vb)), scale)
            for i in np.flatnonzero(np.abs(va - vb) > tol):
                problems.append(
                    f"{part}[{i}] ({a_names[i]}) {stat}: dataset {va[i]:.6g} vs checkpoint {vb[i]:.6g}"
                )
        if part == "state":
            ra, rb = dataset_stats.quaternion_reference, checkpoint_stats.quaternion_reference
            if (ra is None) != (rb is None):
                problems.append(f"state quaternions: dataset {'raw' if ra is None else 'aligned'} vs checkpoint "
                                f"{'raw' if rb is None else 'aligned'}")
            elif ra is not None and not np.allclose(ra, rb, atol=rtol):
                problems.append(f"state quaternion reference: dataset {np.round(ra, 4).tolist()} vs checkpoint "
                                f"{np.round(rb, 4).tolist()}")
        for mask in ("valid", "raw") if part == "state" else ("valid",):
            ma = getattr(dataset_stats, f"{part}_{mask}")
            mb = getattr(checkpoint_stats, f"{part}_{mask}")
            for i in np.flatnonzero(ma != mb):
                problems.append(
                    f"{part}[{i}] ({a_names[i]}) {mask}: dataset {bool(ma[i])} vs checkpoint {bool(mb[i])}"
                )
    return problems
