"""LeRobot's ``meta/stats.json``: the per-feature statistics lerobot 0.4.4 keeps, computed and merged.

These statistics describe a dataset for lerobot's tools (min/max/mean/std/count/q01..q99 per feature,
per-channel image statistics of shape (3, 1, 1)). They are *not* what xwam normalises with: that is
:class:`xwam.data.stats.NormStats` (``meta/xwam_norm.json``), exact over every frame.
``xwam.data.stats.write_dataset_stats`` writes both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xwam.data.errors import DatasetError

# The quantiles lerobot 0.4.4 stores; NormStats keeps the same ones (q01/q99 normalise).
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# Above this many frames a feature's statistics come from a seeded uniform sample of frames.
DEFAULT_MAX_FRAMES = 2_000_000

# The statistics lerobot 0.4.4 keeps per feature, in its order (``compute_stats.get_feature_stats``);
# ``count`` is the number of frames, a one-element list.
LEROBOT_STAT_NAMES = ("min", "max", "mean", "std", "count", *QUANTILES)


def _lerobot_feature_stats(values: np.ndarray) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in lerobot_stats_arrays(values).items()}


def lerobot_stats_arrays(values: np.ndarray, *, count: int | None = None) -> dict[str, np.ndarray]:
    """min/max/mean/std/count/q01..q99 of (N, D) values over N (exact quantiles, linear interpolation).

    A 1-D input is one dimension. ``count`` overrides the sample count (lerobot counts frames, not
    the pixels image statistics are computed over).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.shape[0] == 0:
        raise ValueError("statistics need at least one value")
    out = {
        "min": values.min(0),
        "max": values.max(0),
        "mean": values.mean(0),
        "std": values.std(0),
        "count": np.array([len(values) if count is None else int(count)]),
    }
    qs = np.quantile(values, list(QUANTILES.values()), axis=0)
    out.update(zip(QUANTILES, qs))
    return out


# frames and pixels per episode that image and depth statistics are computed from (lerobot samples
# too: ``compute_stats.sample_images`` and ``auto_downsample_height_width``)
STATS_FRAMES_PER_EPISODE = 32
STATS_MAX_SIDE = 64


def _sample_frames(frames: np.ndarray) -> np.ndarray:
    """At most STATS_FRAMES_PER_EPISODE evenly spaced frames, strided to at most STATS_MAX_SIDE px a side."""
    n = len(frames)
    pick = np.unique(np.linspace(0, n - 1, min(n, STATS_FRAMES_PER_EPISODE)).round().astype(int))
    stride = max(1, -(-max(frames.shape[1:3]) // STATS_MAX_SIDE))
    return frames[pick][:, ::stride, ::stride]


def image_stats_arrays(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of (T, H, W, 3) uint8 frames, as lerobot stores a camera's: values in
    [0, 1], shape (3, 1, 1), ``count`` = T (from a sample of frames and pixels, see _sample_frames)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"image statistics need (T, H, W, 3) frames, got shape {frames.shape}")
    values = _sample_frames(frames).reshape(-1, 3) / 255.0
    stats = lerobot_stats_arrays(values, count=len(frames))
    return {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in stats.items()}


def depth_stats_arrays(codes: np.ndarray, *, no_return_code: int | None = 0) -> dict[str, np.ndarray]:
    """Statistics of (T, H, W) stored depth codes over all sampled pixels, in stored units (millimetres
    for :class:`~xwam.data.video.DepthMillimetres`), shape (1,), ``count`` = T.

    Pixels equal to ``no_return_code`` (no depth) are left out; an episode without any depth gets
    zeros. One number per statistic, not one per pixel as lerobot would compute for a vector feature:
    that would store H x W values per statistic and episode (see the writer in xwam.data.lerobot).
    """
    codes = np.asarray(codes)
    if codes.ndim != 3 or not len(codes):
        raise ValueError(f"depth statistics need (T, H, W) codes, got shape {codes.shape}")
    values = _sample_frames(codes).reshape(-1)
    if no_return_code is not None:
        values = values[values != no_return_code]
    if not values.size:
        values = np.zeros(1)
    return lerobot_stats_arrays(values, count=len(codes))


def video_depth_stats_arrays(codes: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """Statistics of a format-1 depth *video* (12-bit codes) in the shape lerobot requires of any
    video feature: (3, 1, 1) in [0, 1] (code / (2**bits - 1), the grey value on all three channels
    lerobot decodes), so that its tools, which reshape video statistics to (3, 1, 1), accept them."""
    codes = np.asarray(codes)
    grey = np.repeat((codes.astype(np.float64) / (2**bits - 1))[..., None], 3, axis=-1)
    values = _sample_frames(grey).reshape(-1, 3)
    stats = lerobot_stats_arrays(values, count=len(codes))
    return {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in stats.items()}


def compute_lerobot_stats(
    dataset: Any,
    *,
    image_episodes: int = 4,
    image_frames_per_episode: int = 8,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> dict[str, Any]:
    """``meta/stats.json`` content in LeRobot's format (min/max/mean/std/count/q01..q99 per feature).

    Vector features use every frame. Camera features get per-channel statistics in [0, 1] of shape
    (3, 1, 1) from a sample of frames (``image_frames_per_episode`` evenly spaced frames of up to
    ``image_episodes`` evenly spaced episodes): LeRobot uses them only for optional image
    normalisation, so a sample is enough.
    """
    from xwam.data.lerobot_reader import column_to_numpy

    stats: dict[str, Any] = {}
    numeric_keys = [
        k for k, f in dataset.features.items() if f.get("dtype") in ("float32", "float64", "int64")
    ]
    columns: dict[str, list[np.ndarray]] = {k: [] for k in numeric_keys}
    for i in range(dataset.num_episodes):
        table = dataset.episode_table(i)
        where = dataset.episode_where(i) if hasattr(dataset, "episode_where") else f"episode {i}"
        for key in numeric_keys:
            if key in table.column_names:
                values = column_to_numpy(table, key, where)
                try:
                    columns[key].append(values.astype(np.float64).reshape(table.num_rows, -1))
                except (TypeError, ValueError) as exc:  # text, nulls or ragged lists
                    raise DatasetError(f"{where}: column {key!r} is not numeric per frame: {exc}") from exc
    rng = np.random.default_rng(0)
    for key, parts in columns.items():
        if parts:
            values = np.concatenate(parts)
            if len(values) > max_frames:
                values = values[np.sort(rng.choice(len(values), max_frames, replace=False))]
            stats[key] = _lerobot_feature_stats(values)
    n = dataset.num_episodes
    if image_episodes and n:
        chosen = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(n, image_episodes))})
        pixels: dict[str, list[np.ndarray]] = {cam: [] for cam in dataset.camera_names}
        sampled_frames = 0
        for i in chosen:
            ep = dataset.episode(i, load_depth=False)
            pick = np.unique(np.linspace(0, ep.length - 1, image_frames_per_episode).round().astype(int))
            sampled_frames += len(pick)
            for cam in dataset.camera_names:
                pixels[cam].append(ep.rgb[cam][pick].reshape(-1, 3) / 255.0)
        for cam, parts in pixels.items():
            values = np.concatenate(parts)
            s = _lerobot_feature_stats(values)
            s["count"] = [sampled_frames]  # frames, as lerobot counts images (not pixels)
            stats[dataset.rgb_keys[cam]] = {
                k: (np.asarray(v).reshape(-1, 1, 1).tolist() if k != "count" else v) for k, v in s.items()
            }
        stats.update(_depth_stats(dataset, chosen, image_frames_per_episode))
    return stats


def _depth_stats(dataset: Any, episodes: list[int], frames_per_episode: int) -> dict[str, Any]:
    """stats.json entries of the depth features, from ``frames_per_episode`` evenly spaced frames of
    each of ``episodes``: stored millimetres, shape (1,), for parquet depth; (3, 1, 1) in [0, 1] for a
    format-1 depth video (see depth_stats_arrays / video_depth_stats_arrays)."""
    if not getattr(dataset, "has_depth", False) or not hasattr(dataset, "episode_depth_codes"):
        return {}
    out: dict[str, Any] = {}
    for cam in dataset.camera_names:
        parts, frames = [], 0
        for i in episodes:
            codes = dataset.episode_depth_codes(i, cam)
            pick = np.unique(np.linspace(0, len(codes) - 1, frames_per_episode).round().astype(int))
            parts.append(codes[pick])
            frames += len(pick)
        codes = np.concatenate(parts)
        if dataset.depth_storage(cam) == "parquet":
            arrays = depth_stats_arrays(codes, no_return_code=dataset.depth_codec(cam).no_return_code)
        else:
            arrays = video_depth_stats_arrays(codes, dataset.depth_quantizer.bits)
        arrays["count"] = np.array([frames])
        out[dataset.depth_keys[cam]] = {k: np.asarray(v).tolist() for k, v in arrays.items()}
    return out


def merge_lerobot_stats(
    existing: dict[str, Any], computed: dict[str, Any], *, sampled: set[str], ours: bool
) -> dict[str, Any]:
    """``meta/stats.json`` after ``xwam dataset stats``: nothing already there is dropped.

    Statistics computed over every frame replace the stored ones of the same feature (same data,
    exact quantiles). Camera statistics from a sample of frames (``sampled``) replace stored ones
    only in a dataset xwam wrote (``ours``), where they are ours to refresh; lerobot's, computed over
    every frame, are kept. Features we compute nothing for (e.g. lerobot's bool ``next.done``) keep
    their entries untouched.
    """
    merged = dict(existing)
    for key, value in computed.items():
        if key in sampled and key in existing and not ours:
            continue
        merged[key] = value
    return merged
