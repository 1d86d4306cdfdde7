"""Point clouds from RGB-D views: multi-view fusion, voxel downsampling and Chamfer distance.

Units follow the inputs: with metric depth and poses in metres (the project convention), points,
voxel sizes and Chamfer distances are all in metres.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from xwam.geometry.camera import unproject_depth

_T = TypeVar("_T")


def per_frame_camera(
    table: Mapping[str, np.ndarray], cam: str, frames: int, shape: tuple[int, int], what: str
) -> np.ndarray:
    """(T, r, c) or a single (r, c) matrix (broadcast over the frames) for one camera."""
    array = np.asarray(table[cam], dtype=np.float64)
    if array.shape == shape:
        return np.broadcast_to(array, (frames, *shape))
    if array.shape != (frames, *shape):
        raise ValueError(
            f"{what} of camera {cam!r} must be {shape} or ({frames}, {shape[0]}, {shape[1]}), got {array.shape}"
        )
    return array


def _as_view_list(name: str, values: Sequence[_T] | Mapping[str, _T], keys: list[str] | None) -> list[_T]:
    """Views may come as a list (in view order) or a dict keyed by camera name (ordered like ``keys``)."""
    if isinstance(values, Mapping):
        if keys is None:
            return list(values.values())
        missing = [k for k in keys if k not in values]
        if missing:
            raise ValueError(f"{name} has no entry for camera(s) {missing}")
        return [values[k] for k in keys]
    return list(values)


def _check_colours(colours: np.ndarray | None, count: int, what: str) -> np.ndarray | None:
    if colours is None:
        return None
    colours = np.asarray(colours)
    if colours.ndim != 2 or colours.shape[0] != count:
        raise ValueError(f"{what}: colours must have shape ({count}, C), got {colours.shape}")
    return colours


def _check_cloud(points: np.ndarray, what: str) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3), got {points.shape}")
    return points


def fuse_views(
    depths: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    intrinsics: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    extrinsics: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    rgbs: Sequence[np.ndarray] | Mapping[str, np.ndarray] | None = None,
    masks: Sequence[np.ndarray | None] | Mapping[str, np.ndarray | None] | None = None,
    max_depth: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fuse V views of one timestep into one world-frame point cloud.

    Each argument holds one entry per view, either as a list (same order everywhere) or a dict keyed by
    camera name (the order of ``depths`` is used): ``depths`` (H, W) metric z-depth, ``intrinsics``
    (3, 3), ``extrinsics`` (4, 4) camera-to-world (OpenCV axes), optional ``rgbs`` (H, W, 3) uint8 and
    ``masks`` (H, W) bool (True = keep; a None entry keeps every pixel). Pixels with non-finite or
    non-positive depth, or depth beyond ``max_depth``, are dropped.

    Returns ``points`` (N, 3) float32 in world coordinates, views concatenated in order, and
    ``colours`` (N, 3) uint8 (None when ``rgbs`` is None).
    """
    keys = list(depths.keys()) if isinstance(depths, Mapping) else None
    depth_list = _as_view_list("depths", depths, keys)
    K_list = _as_view_list("intrinsics", intrinsics, keys)
    T_list = _as_view_list("extrinsics", extrinsics, keys)
    rgb_list = _as_view_list("rgbs", rgbs, keys) if rgbs is not None else None
    mask_list = _as_view_list("masks", masks, keys) if masks is not None else None
    count = len(depth_list)
    for name, values in (
        ("intrinsics", K_list),
        ("extrinsics", T_list),
        ("rgbs", rgb_list),
        ("masks", mask_list),
    ):
        if values is not None and len(values) != count:
            raise ValueError(f"{count} depth maps but {len(values)} {name}")
    if count == 0:
        raise ValueError("fuse_views needs at least one view")

    all_points, all_colours = [], []
    for index in range(count):
        label = f"view {keys[index]!r}" if keys else f"view {index}"
        try:
            result = unproject_depth(
                depth_list[index],
                K_list[index],
                T_list[index],
                mask=None if mask_list is None else mask_list[index],
                rgb=None if rgb_list is None else rgb_list[index],
                max_depth=max_depth,
            )
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from None
        if rgb_list is None:
            all_points.append(np.asarray(result, dtype=np.float32))
        else:
            points, colours = result
            colours = np.asarray(colours)
            if colours.ndim != 2 or colours.shape[1] != 3 or colours.dtype != np.uint8:
                raise ValueError(
                    f"{label}: rgb must be (H, W, 3) uint8, got colours {colours.shape} {colours.dtype}"
                )
            all_points.append(points.astype(np.float32))
            all_colours.append(colours)
    points = np.concatenate(all_points, axis=0)
    colours = np.concatenate(all_colours, axis=0) if rgb_list is not None else None
    return points, colours


def voxel_downsample(
    points: np.ndarray, colours: np.ndarray | None = None, voxel: float = 0.005
) -> tuple[np.ndarray, np.ndarray | None]:
    """Average the points (and colours) that fall into each cubic voxel of edge ``voxel``.

    Voxels are the cells ``floor(p / voxel)`` of a grid anchored at the origin, so the result does not
    depend on the order of the input points; outputs are sorted by voxel index (x, then y, then z),
    which makes the function deterministic. Returns float32 points and colours of the input dtype
    (integer colours are rounded). Non-finite points are dropped.
    """
    points = _check_cloud(points, "points")
    colours = _check_colours(colours, points.shape[0], "voxel_downsample")
    if not (voxel > 0 and math.isfinite(voxel)):
        raise ValueError(f"voxel size must be a positive number, got {voxel}")
    finite = np.all(np.isfinite(points), axis=1)
    if not finite.all():
        points = points[finite]
        colours = colours[finite] if colours is not None else None
    if points.shape[0] == 0:
        empty_colours = None if colours is None else colours[:0]
        return np.zeros((0, 3), np.float32), empty_colours

    cells = np.floor(points.astype(np.float64) / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    extent = cells.max(axis=0) + 1
    if np.prod(extent.astype(np.float64)) < 2**62:
        # one int64 key per voxel (x-major) makes np.unique 1-D, several times faster than axis=0
        keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    num_voxels = counts.shape[0]
    sums = np.zeros((num_voxels, 3))
    np.add.at(sums, inverse, points.astype(np.float64))
    out_points = (sums / counts[:, None]).astype(np.float32)
    if colours is None:
        return out_points, None
    colour_sums = np.zeros((num_voxels, colours.shape[1]))
    np.add.at(colour_sums, inverse, colours.astype(np.float64))
    mean_colours = colour_sums / counts[:, None]
    if np.issubdtype(colours.dtype, np.integer):
        info = np.iinfo(colours.dtype)
        mean_colours = np.clip(np.rint(mean_colours), info.min, info.max)
    return out_points, mean_colours.astype(colours.dtype)


def downsample_to_count(
    points: np.ndarray, colours: np.ndarray | None, max_points: int
) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Voxel-downsample with the smallest voxel (within 5 %) that leaves at most ``max_points`` points.

    Used to cap the size of interactive plots. Returns ``(points, colours, voxel)``; the cloud is returned
    unchanged (as float32) with ``voxel=None`` when it is already small enough.
    """
    points = _check_cloud(points, "points")
    colours = _check_colours(colours, points.shape[0], "downsample_to_count")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if points.shape[0] <= max_points:
        return points.astype(np.float32), colours, None
    finite = points[np.all(np.isfinite(points), axis=1)]
    extent = float(np.max(finite.max(axis=0) - finite.min(axis=0))) if finite.size else 0.0

    def fits(voxel: float) -> bool:
        return voxel_downsample(points, None, voxel)[0].shape[0] <= max_points

    if extent == 0.0:
        hi = 1.0  # all points coincide: any voxel merges them into one
    else:
        # bracket the answer as lo (too many points) < hi (fits) by doubling/halving, then bisect
        hi = extent / 64
        if fits(hi):
            lo = hi / 2
            # exact duplicates can keep tiny voxels under the cap: stop far below any useful size
            while fits(lo) and lo > extent * 1e-9:
                hi, lo = lo, lo / 2
        else:
            lo, hi = hi, hi * 2
            while not fits(hi):
                lo, hi = hi, hi * 2
        while hi / lo > 1.05:  # the count is (nearly) monotone in the voxel size
            mid = math.sqrt(lo * hi)
            if fits(mid):
                hi = mid
            else:
                lo = mid
    out_points, out_colours = voxel_downsample(points, colours, hi)
    return out_points, out_colours, hi


@dataclass(frozen=True)
class ChamferResult:
    """Chamfer distance between a cloud A (e.g. prediction) and B (e.g. ground truth), in input units.

    ``a_to_b`` is the mean over A of the Euclidean (not squared) distance to the nearest point of B,
    ``b_to_a`` the reverse, and ``chamfer`` their average (the symmetric Chamfer distance).
    """

    a_to_b: float
    b_to_a: float
    chamfer: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_device() -> torch.device:
    """The GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_cloud_array(points: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    array = _check_cloud(array, name).astype(np.float64)
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: nearest neighbours need at least one point in each cloud")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite coordinates")
    return array


def _kdtree_available() -> bool:
    try:
        import scipy.spatial  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def _brute_force_neighbours(
    a: np.ndarray, b: np.ndarray, device: torch.device, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ta = torch.as_tensor(a, device=device)
    tb = torch.as_tensor(b, device=device)
    # centring on the joint mean keeps |p|^2 small, which is what limits float32 accuracy of the expansion
    centre = (ta.sum(0) + tb.sum(0)) / (ta.shape[0] + tb.shape[0])
    fa, fb = (ta - centre).float(), (tb - centre).float()
    sq_a, sq_b = (fa * fa).sum(1), (fb * fb).sum(1)
    best_a = torch.full((fa.shape[0],), math.inf, device=device)
    best_b = torch.full((fb.shape[0],), math.inf, device=device)
    index_a = torch.zeros(fa.shape[0], dtype=torch.long, device=device)
    index_b = torch.zeros(fb.shape[0], dtype=torch.long, device=device)
    for i in range(0, fa.shape[0], block):
        rows = slice(i, i + block)
        for j in range(0, fb.shape[0], block):
            cols = slice(j, j + block)
            d2 = torch.addmm(sq_b[None, cols], fa[rows], fb[cols].T, alpha=-2.0).add_(sq_a[rows, None])
            row_min, row_arg = d2.min(dim=1)
            better = row_min < best_a[rows]
            best_a[rows] = torch.where(better, row_min, best_a[rows])
            index_a[rows] = torch.where(better, row_arg + j, index_a[rows])
            col_min, col_arg = d2.min(dim=0)
            better = col_min < best_b[cols]
            best_b[cols] = torch.where(better, col_min, best_b[cols])
            index_b[cols] = torch.where(better, col_arg + i, index_b[cols])
    # exact float64 distances of the chosen pairs: identical points give exactly 0
    dist_a = (ta - tb[index_a]).norm(dim=1)
    dist_b = (tb - ta[index_b]).norm(dim=1)
    return dist_a.cpu().numpy(), index_a.cpu().numpy(), dist_b.cpu().numpy(), index_b.cpu().numpy()


def nearest_neighbours(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    backend: str = "auto",
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact nearest neighbours between (N, 3) and (M, 3) clouds, both ways.

    Returns ``(dist_a, index_a, dist_b, index_b)``: for each point of A the Euclidean distance (float64)
    to and index of its nearest point in B, and the same for B in A.

    Backends: ``"torch"`` is blocked brute force (one matmul per ``block x block`` tile; memory
    O(block^2 + N + M), so 100k x 100k clouds fit anywhere), fast on a GPU. The search uses the
    ``|a|^2 + |b|^2 - 2ab`` expansion in float32 and the returned distances are recomputed exactly for
    the chosen pairs. ``"kdtree"`` uses scipy's cKDTree, which is far faster on a CPU (brute force costs
    N x M distances: about 2 minutes for 100k x 100k on two CPU cores). ``"auto"`` picks torch on a GPU,
    else the k-d tree when scipy is importable, else torch on the CPU.
    """
    array_a, array_b = _as_cloud_array(a, "cloud A"), _as_cloud_array(b, "cloud B")
    device = torch.device(device) if device is not None else default_device()
    if backend not in ("auto", "torch", "kdtree"):
        raise ValueError(f"unknown nearest-neighbour backend {backend!r}; use 'auto', 'torch' or 'kdtree'")
    if backend == "auto":
        backend = "kdtree" if device.type == "cpu" and _kdtree_available() else "torch"
    if backend == "torch":
        return _brute_force_neighbours(array_a, array_b, device, block)
    from scipy.spatial import cKDTree

    dist_a, index_a = cKDTree(array_b).query(array_a, k=1)
    dist_b, index_b = cKDTree(array_a).query(array_b, k=1)
    return dist_a, index_a.astype(np.int64), dist_b, index_b.astype(np.int64)


def chamfer_distance(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    backend: str = "auto",
    block: int = 4096,
) -> ChamferResult:
    """Symmetric Chamfer distance between point clouds ``a`` (N, 3) and ``b`` (M, 3).

    ``chamfer = (mean_a min_b |a - b| + mean_b min_a |b - a|) / 2`` with Euclidean (not squared)
    distances, in the units of the points (metres for this project's clouds). Runs on the GPU when present
    (``device`` overrides); see :func:`nearest_neighbours` for the backends and the memory bound. Raises
    ValueError for an empty cloud.
    """
    dist_a, _, dist_b, _ = nearest_neighbours(a, b, device=device, backend=backend, block=block)
    a_to_b, b_to_a = float(dist_a.mean()), float(dist_b.mean())
    return ChamferResult(a_to_b=a_to_b, b_to_a=b_to_a, chamfer=(a_to_b + b_to_a) / 2)


def fuse_clip(
    depth: Mapping[str, np.ndarray],
    intrinsics: Mapping[str, np.ndarray],
    extrinsics: Mapping[str, np.ndarray],
    rgb: Mapping[str, np.ndarray] | None = None,
    *,
    views: Sequence[str] | None = None,
    max_depth: float | None = None,
    voxel: float | None = None,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Fuse a multi-view RGB-D clip into one world-frame cloud per timestep (the "4D" output).

    Layout as in :class:`xwam.data.episode.Episode`: ``depth[cam]`` (T, H, W) metres, ``intrinsics[cam]``
    (T, 3, 3) or (3, 3), ``extrinsics[cam]`` (T, 4, 4) or (4, 4) camera-to-world (for a wrist camera use
    :func:`xwam.geometry.transforms.wrist_camera_poses` of the predicted states), optional ``rgb[cam]``
    (T, H, W, 3) uint8. ``views`` defaults to the keys of ``depth``; ``voxel`` (metres) optionally
    downsamples each timestep. Returns ``[(points (N_t, 3) float32, colours (N_t, 3) uint8 or None)]``.
    """
    views = list(views) if views is not None else list(depth.keys())
    if not views:
        raise ValueError("fuse_clip needs at least one view")
    for name, table in (
        ("depth", depth),
        ("intrinsics", intrinsics),
        ("extrinsics", extrinsics),
        ("rgb", rgb),
    ):
        if table is not None and any(cam not in table for cam in views):
            raise ValueError(f"{name} lacks camera(s) {[c for c in views if c not in table]}")
    frames = int(np.shape(depth[views[0]])[0])

    Ks = {cam: per_frame_camera(intrinsics, cam, frames, (3, 3), "intrinsics") for cam in views}
    Ts = {cam: per_frame_camera(extrinsics, cam, frames, (4, 4), "extrinsics") for cam in views}
    for cam in views:
        if np.shape(depth[cam])[0] != frames:
            raise ValueError(
                f"depth of camera {cam!r} has {np.shape(depth[cam])[0]} frames, expected {frames}"
            )
    clouds = []
    for t in range(frames):
        points, colours = fuse_views(
            {cam: np.asarray(depth[cam][t]) for cam in views},
            {cam: Ks[cam][t] for cam in views},
            {cam: Ts[cam][t] for cam in views},
            rgbs={cam: np.asarray(rgb[cam][t]) for cam in views} if rgb is not None else None,
            max_depth=max_depth,
        )
        if voxel is not None:
            points, colours = voxel_downsample(points, colours, voxel)
        clouds.append((points, colours))
    return clouds
