"""4D generation quality: RGB (PSNR, SSIM, optional LPIPS), depth (AbsRel, delta1) and fused-cloud Chamfer.

Definitions (the ones the X-WAM paper reports on RoboCasa):

- **PSNR** in dB and **SSIM** (Gaussian window 11, sigma 1.5) on RGB scaled to [0, 1], i.e. data range 1.0
  (uint8 frames are divided by 255), via torchmetrics. Identical frames give PSNR = inf and SSIM = 1.
- **LPIPS** (AlexNet) via torchmetrics, only when torchvision and the backbone weights are already on
  disk (the torch hub cache); this project never downloads weights, so it is otherwise reported as None.
- **AbsRel** = mean over valid ground-truth pixels of ``|d_pred - d_gt| / d_gt``; **delta1** = fraction of
  those pixels with ``max(d_pred / d_gt, d_gt / d_pred) < 1.25``. Valid = ground truth finite, > 0 and
  (if given) <= ``max_depth``. A prediction that is non-finite or <= 0 on a valid pixel counts as 0 m:
  AbsRel 1 and a delta1 failure for that pixel.
- **Chamfer** (metres): symmetric mean nearest-neighbour distance between the point clouds fused from
  the predicted and the ground-truth depth of the same views and timestep (see
  :func:`xwam.geometry.pointcloud.chamfer_distance`).

Per-frame values average the views; means average the frames (NaN entries, e.g. frames without valid
depth, are skipped).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xwam.geometry.pointcloud import chamfer_distance, fuse_views, per_frame_camera, voxel_downsample

logger = logging.getLogger(__name__)

DELTA1_THRESHOLD = 1.25
RGB_DATA_RANGE = 1.0
IMAGE_METRICS = ("psnr", "ssim", "lpips")
DEPTH_METRICS = ("abs_rel", "delta1")
CLOUD_METRICS = ("chamfer", "chamfer_pred_to_gt", "chamfer_gt_to_pred")


# ---------------------------------------------------------------------------------------------
# RGB
# ---------------------------------------------------------------------------------------------
def _frames_to_tensor(frames: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """(N, H, W, 3) uint8 or float in [0, 1] -> (N, 3, H, W) float32 in [0, 1]."""
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{name}: RGB frames must be (N, H, W, 3) or (H, W, 3), got {array.shape}")
    if array.dtype == np.uint8:
        tensor = torch.from_numpy(array.astype(np.float32) / 255.0)
    elif np.issubdtype(array.dtype, np.floating):
        tensor = torch.from_numpy(array.astype(np.float32)).clamp_(0.0, 1.0)
    else:
        raise ValueError(f"{name}: RGB frames must be uint8 or float in [0, 1], got {array.dtype}")
    return tensor.permute(0, 3, 1, 2).contiguous()


def _pair(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _frames_to_tensor(pred, "prediction"), _frames_to_tensor(gt, "ground truth")
    if p.shape != g.shape:
        raise ValueError(
            f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} frames differ in shape"
        )
    return p, g


def psnr(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-frame PSNR in dB of (N, H, W, 3) RGB frames (data range 1.0); (N,) float64, inf when equal."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, g = _pair(pred, gt)
    values = peak_signal_noise_ratio(p, g, data_range=RGB_DATA_RANGE, reduction="none", dim=(1, 2, 3))
    return values.double().numpy()


def ssim(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-frame SSIM of (N, H, W, 3) RGB frames (data range 1.0, Gaussian window 11, sigma 1.5); (N,)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, g = _pair(pred, gt)
    if min(p.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {tuple(p.shape[-2:])}")
    values = structural_similarity_index_measure(p, g, data_range=RGB_DATA_RANGE, reduction="none")
    return values.double().reshape(-1).numpy()


_WARNED: set[str] = set()


class LpipsMetric:
    """LPIPS (AlexNet backbone, torchmetrics) when it can run offline; see :meth:`load`."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._module = module

    @classmethod
    def load(cls, net_type: str = "alex") -> tuple[LpipsMetric | None, str | None]:
        """Returns ``(metric, None)``, or ``(None, reason)`` when torchvision or the backbone weights are
        not available locally. Never downloads: the backbone's weight file must already be in the torch
        hub cache (``torch.hub.get_dir()/checkpoints``)."""
        try:
            import torchvision
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
        except ImportError as error:
            return None, f"LPIPS skipped: {error} (install torchvision and cache the backbone weights)"
        weights_enum = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}
        if net_type not in weights_enum:
            return None, f"LPIPS skipped: unknown backbone {net_type!r}"
        url = getattr(torchvision.models, weights_enum[net_type]).DEFAULT.url
        weights_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not weights_file.is_file():
            return (
                None,
                f"LPIPS skipped: backbone weights {weights_file} not found locally (no downloads here)",
            )
        try:
            module = LearnedPerceptualImagePatchSimilarity(
                net_type=net_type, reduction="none", normalize=True
            )
        except Exception as error:  # a broken or partial cache must not stop the evaluation
            return None, f"LPIPS skipped: could not load {net_type} LPIPS ({type(error).__name__}: {error})"
        return cls(module.eval()), None

    @torch.no_grad()
    def __call__(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> np.ndarray:
        """Per-frame LPIPS of (N, H, W, 3) RGB frames (lower is better); (N,) float64."""
        p, g = _pair(pred, gt)
        return self._module(p, g).double().reshape(-1).numpy()


# ---------------------------------------------------------------------------------------------
# depth
# ---------------------------------------------------------------------------------------------
def _depth_pair(
    pred: np.ndarray, gt: np.ndarray, max_depth: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if gt.ndim == 2:
        pred, gt = pred[None], gt[None]
    if pred.shape != gt.shape or gt.ndim != 3:
        raise ValueError(
            f"depth maps must both be (N, H, W), got prediction {pred.shape} and ground truth {gt.shape}"
        )
    valid = np.isfinite(gt) & (gt > 0)
    if max_depth is not None:
        valid &= gt <= max_depth
    pred = np.where(np.isfinite(pred) & (pred > 0), pred, 0.0)
    return pred, gt, valid


def depth_abs_rel(pred: np.ndarray, gt: np.ndarray, *, max_depth: float | None = None) -> np.ndarray:
    """Per-frame mean of ``|d_pred - d_gt| / d_gt`` over valid ground-truth pixels of (N, H, W) depth
    in metres; (N,) float64, NaN for a frame without valid pixels."""
    pred, gt, valid = _depth_pair(pred, gt, max_depth)
    error = np.where(valid, np.abs(pred - gt) / np.where(valid, gt, 1.0), 0.0)
    counts = valid.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, error.sum(axis=(1, 2)) / counts, np.nan)


def depth_delta1(pred: np.ndarray, gt: np.ndarray, *, max_depth: float | None = None) -> np.ndarray:
    """Per-frame fraction of valid ground-truth pixels with ``max(pred/gt, gt/pred) < 1.25``; (N,)."""
    pred, gt, valid = _depth_pair(pred, gt, max_depth)
    safe_gt = np.where(valid, gt, 1.0)
    with np.errstate(divide="ignore"):
        ratio = np.maximum(
            pred / safe_gt, np.where(pred > 0, safe_gt / np.where(pred > 0, pred, 1.0), np.inf)
        )
    hits = valid & (ratio < DELTA1_THRESHOLD)
    counts = valid.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits.sum(axis=(1, 2)) / counts, np.nan)


# ---------------------------------------------------------------------------------------------
# 4D evaluation
# ---------------------------------------------------------------------------------------------
_FIELDS = ("rgb", "depth", "intrinsics", "extrinsics")


def _field(source: Mapping[str, Any] | Any, name: str) -> Mapping[str, np.ndarray] | None:
    value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"field {name!r} must be a dict {{camera: array}}, got {type(value).__name__}")
    return value


def _is_static(extrinsics: np.ndarray, tolerance: float = 1e-6) -> bool:
    return bool(np.all(np.abs(extrinsics - extrinsics[:1]) <= tolerance))


def _nan_mean(values: Sequence[float] | np.ndarray) -> float:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan
    if np.isposinf(array).any() and not np.isneginf(array).any():
        return math.inf  # PSNR of an exact match; nanmean would return inf too but warns on mixed NaN
    finite_or_nan = array[~np.isnan(array)]
    return float(finite_or_nan.mean()) if finite_or_nan.size else math.nan


def evaluate_4d(
    pred: Mapping[str, Any] | Any,
    gt: Mapping[str, Any] | Any,
    *,
    static_views: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    max_depth: float | None = None,
    chamfer_voxel: float | None = None,
    lpips: bool = True,
) -> dict[str, Any]:
    """Per-frame and mean 4D quality of a predicted multi-view RGB-D clip against the ground truth.

    Input layout: ``pred`` and ``gt`` are dicts (or objects with these attributes, e.g. an
    :class:`~xwam.data.episode.Episode` trimmed to the predicted frames) with

    - ``"rgb"``: ``{camera: (T, H, W, 3) uint8}`` (required);
    - ``"depth"``: ``{camera: (T, H, W) float metres}`` (optional: depth metrics and Chamfer need it in both);
    - ``"intrinsics"``: ``{camera: (T, 3, 3) or (3, 3)}`` pixels, and ``"extrinsics"``:
      ``{camera: (T, 4, 4) or (4, 4)}`` camera-to-world, OpenCV axes (needed for Chamfer). When the
      prediction has no cameras, the ground truth's are used (right for static cameras; for a wrist
      camera pass the pose from the predicted state, :func:`xwam.geometry.transforms.wrist_camera_poses`).

    ``views`` (default: the ground truth's RGB cameras) are evaluated; ``static_views`` is the subset
    the paper reports (default: the views whose ground-truth extrinsics do not change over the clip, or all
    views when there are none). ``max_depth`` limits valid depth (metrics and fusion); ``chamfer_voxel``
    voxel-downsamples both fused clouds first (metres; None = full resolution).

    Returns a JSON-ready dict::

        {"views": [...], "static_views": [...], "num_frames": T, "notes": [str, ...],
         "units": {metric: description},
         "static": {"per_frame": {metric: [T values]}, "mean": {metric: value},
                    "per_view": {camera: {metric: mean value}}},
         "all": {same as "static"}}

    with metrics ``psnr``, ``ssim``, ``lpips`` (None when unavailable), ``abs_rel``, ``delta1``,
    ``chamfer``, ``chamfer_pred_to_gt`` and ``chamfer_gt_to_pred`` (None when depth or cameras are missing).
    ``"static"`` is None when there are no static views.
    """
    notes: list[str] = []
    gt_rgb, pred_rgb = _field(gt, "rgb"), _field(pred, "rgb")
    if gt_rgb is None or pred_rgb is None:
        raise ValueError("evaluate_4d needs 'rgb' in both the prediction and the ground truth")
    views = list(views) if views is not None else list(gt_rgb.keys())
    if not views:
        raise ValueError("evaluate_4d: no views to evaluate")
    for cam in views:
        for label, table in (("prediction", pred_rgb), ("ground truth", gt_rgb)):
            if cam not in table:
                raise ValueError(f"{label} has no RGB for camera {cam!r} (has {sorted(table)})")
        if np.shape(pred_rgb[cam]) != np.shape(gt_rgb[cam]):
            raise ValueError(
                f"camera {cam!r}: predicted RGB {np.shape(pred_rgb[cam])} and ground truth "
                f"{np.shape(gt_rgb[cam])} differ in shape"
            )
    frames = int(np.shape(gt_rgb[views[0]])[0])
    for cam in views:
        if np.shape(gt_rgb[cam])[0] != frames:
            raise ValueError(
                f"camera {cam!r} has {np.shape(gt_rgb[cam])[0]} frames, camera {views[0]!r} has {frames}"
            )

    gt_depth, pred_depth = _field(gt, "depth"), _field(pred, "depth")
    has_depth = (
        gt_depth is not None
        and pred_depth is not None
        and all(c in gt_depth and c in pred_depth for c in views)
    )
    if not has_depth:
        notes.append(
            "depth metrics and Chamfer skipped: depth missing for some view in prediction or ground truth"
        )
    gt_K, gt_T = _field(gt, "intrinsics"), _field(gt, "extrinsics")
    pred_K = _field(pred, "intrinsics") or gt_K
    pred_T = _field(pred, "extrinsics") or gt_T
    cameras = {}
    if all(t is not None and all(c in t for c in views) for t in (gt_K, gt_T, pred_K, pred_T)):
        for cam in views:
            cameras[cam] = (
                per_frame_camera(pred_K, cam, frames, (3, 3), "predicted intrinsics"),
                per_frame_camera(pred_T, cam, frames, (4, 4), "predicted extrinsics"),
                per_frame_camera(gt_K, cam, frames, (3, 3), "ground-truth intrinsics"),
                per_frame_camera(gt_T, cam, frames, (4, 4), "ground-truth extrinsics"),
            )
    elif has_depth:
        notes.append("Chamfer skipped: intrinsics/extrinsics missing for some view")

    if static_views is None:
        static_views = (
            [cam for cam in views if cam in cameras and _is_static(cameras[cam][3])] if cameras else []
        )
        if not static_views:
            static_views = list(views)
            notes.append("no static camera detected from the extrinsics: 'static' covers all views")
    else:
        static_views = list(static_views)
        unknown = [cam for cam in static_views if cam not in views]
        if unknown:
            raise ValueError(f"static_views {unknown} are not among the evaluated views {views}")

    lpips_metric = None
    if lpips:
        lpips_metric, reason = LpipsMetric.load()
        if reason:
            notes.append(reason)
            if reason not in _WARNED:  # once per process: eval-4d scores three predictions per clip
                _WARNED.add(reason)
                logger.warning(reason)

    # per (view, frame) image and depth metrics, computed once and averaged per view subset below
    per_view: dict[str, dict[str, np.ndarray | None]] = {}
    for cam in views:
        metrics: dict[str, np.ndarray | None] = {
            "psnr": psnr(pred_rgb[cam], gt_rgb[cam]),
            "ssim": ssim(pred_rgb[cam], gt_rgb[cam]),
            "lpips": lpips_metric(pred_rgb[cam], gt_rgb[cam]) if lpips_metric is not None else None,
            "abs_rel": None,
            "delta1": None,
        }
        if has_depth:
            metrics["abs_rel"] = depth_abs_rel(pred_depth[cam], gt_depth[cam], max_depth=max_depth)
            metrics["delta1"] = depth_delta1(pred_depth[cam], gt_depth[cam], max_depth=max_depth)
        per_view[cam] = metrics

    def summarise(subset: list[str]) -> dict[str, Any]:
        per_frame: dict[str, list[float] | None] = {}
        for metric in IMAGE_METRICS + DEPTH_METRICS:
            rows = [per_view[cam][metric] for cam in subset]
            if any(row is None for row in rows):
                per_frame[metric] = None
                continue
            stacked = np.stack(rows)  # (views, T)
            per_frame[metric] = [_nan_mean(stacked[:, t]) for t in range(frames)]
        chamfers = _chamfer_per_frame(subset) if has_depth and cameras else None
        for index, metric in enumerate(CLOUD_METRICS):
            per_frame[metric] = [c[index] for c in chamfers] if chamfers is not None else None
        means = {m: (_nan_mean(v) if v is not None else None) for m, v in per_frame.items()}
        view_means = {
            cam: {m: (_nan_mean(v) if v is not None else None) for m, v in per_view[cam].items()}
            for cam in subset
        }
        return {"per_frame": per_frame, "mean": means, "per_view": view_means}

    def _chamfer_per_frame(subset: list[str]) -> list[tuple[float, float, float]]:
        results = []
        for t in range(frames):
            clouds = []
            for source_depth, k_index, t_index in ((pred_depth, 0, 1), (gt_depth, 2, 3)):
                points, _ = fuse_views(
                    [np.asarray(source_depth[c][t]) for c in subset],
                    [cameras[c][k_index][t] for c in subset],
                    [cameras[c][t_index][t] for c in subset],
                    max_depth=max_depth,
                )
                if chamfer_voxel is not None and points.shape[0]:
                    points, _ = voxel_downsample(points, None, chamfer_voxel)
                clouds.append(points)
            if clouds[0].shape[0] == 0 or clouds[1].shape[0] == 0:
                notes.append(
                    f"frame {t}: empty fused cloud ({clouds[0].shape[0]} predicted, {clouds[1].shape[0]} gt points)"
                )
                results.append((math.nan, math.nan, math.nan))
                continue
            result = chamfer_distance(clouds[0], clouds[1])
            results.append((result.chamfer, result.a_to_b, result.b_to_a))
        return results

    units = {
        "psnr": "dB, RGB in [0, 1] (data range 1.0)",
        "ssim": "unitless, data range 1.0, Gaussian window 11 / sigma 1.5",
        "lpips": "AlexNet LPIPS, lower is better",
        "abs_rel": "unitless mean |pred - gt| / gt over valid gt depth",
        "delta1": "fraction of valid pixels with max(pred/gt, gt/pred) < 1.25",
        "chamfer": "metres, mean of the two directed mean nearest-neighbour distances",
    }
    all_summary = summarise(views)
    if set(static_views) == set(views):
        static_summary = all_summary  # the common single-arm case with no wrist camera: computed once
    else:
        static_summary = summarise(static_views) if static_views else None
    return {
        "views": views,
        "static_views": static_views,
        "num_frames": frames,
        "static": static_summary,
        "all": all_summary,
        "units": units,
        "notes": notes,
    }
