import numpy as np
import pytest
import torch
from geometry_scenes import box_depth, intrinsics, look_at, plane_depth

from xwam.geometry.camera import unproject_depth
from xwam.geometry.pointcloud import (
    chamfer_distance,
    downsample_to_count,
    fuse_clip,
    fuse_views,
    nearest_neighbours,
    voxel_downsample,
)

H, W = 48, 64
K = intrinsics(W, H, focal=60.0)


def test_plane_unprojects_onto_the_plane():
    normal = np.array([0.2, -0.1, 1.0])
    normal /= np.linalg.norm(normal)
    offset = 0.3
    T = look_at(np.array([0.8, -1.1, 2.0]), np.array([0.1, 0.2, 0.3]))
    depth = plane_depth(K, T, H, W, normal, offset)
    assert np.isfinite(depth).all()
    points = unproject_depth(depth, K, T)
    assert points.shape == (H * W, 3)
    np.testing.assert_allclose(points @ normal, offset, atol=1e-9)


def _cube_views(half: float = 0.25):
    poses = [
        look_at(np.array([1.5, -2.0, 1.2]), np.zeros(3)),
        look_at(np.array([-1.8, 1.6, 1.0]), np.zeros(3)),
    ]
    depths = [box_depth(K, T, H, W, half) for T in poses]
    return poses, depths


def test_two_views_of_a_cube_fuse_onto_its_faces():
    half = 0.25
    poses, depths = _cube_views(half)
    rgbs = [np.full((H, W, 3), 200, np.uint8), np.full((H, W, 3), 50, np.uint8)]
    points, colours = fuse_views(depths, [K, K], poses, rgbs=rgbs)
    hits = [int(np.isfinite(d).sum()) for d in depths]
    assert min(hits) > 200 and points.shape == (sum(hits), 3)
    assert colours.dtype == np.uint8 and colours.shape == points.shape
    assert (colours[: hits[0]] == 200).all() and (colours[hits[0] :] == 50).all()
    # every point lies on the cube's surface (L-infinity norm equals the half size)
    np.testing.assert_allclose(np.abs(points).max(axis=1), half, atol=1e-6)
    # the two views together see five faces: +x, -y, +z from the first, -x, +y, +z from the second
    axis = np.argmax(np.abs(points), axis=1)
    sign = np.sign(points[np.arange(len(points)), axis]).astype(int)
    faces = {(int(a), int(s)) for a, s in zip(axis, sign)}
    assert faces == {(0, 1), (1, -1), (2, 1), (0, -1), (1, 1)}


def test_fuse_views_dicts_masks_and_max_depth():
    poses, depths = _cube_views()
    mask = np.zeros((H, W), bool)
    mask[:, : W // 2] = True
    points_all, colours = fuse_views(
        {"a": depths[0], "b": depths[1]}, {"b": K, "a": K}, {"a": poses[0], "b": poses[1]}
    )
    assert colours is None
    masked, _ = fuse_views({"a": depths[0], "b": depths[1]}, {"a": K, "b": K}, {"a": poses[0], "b": poses[1]},
                           masks={"a": mask, "b": None})  # fmt: skip
    assert masked.shape[0] == np.isfinite(depths[0][mask]).sum() + np.isfinite(depths[1]).sum()
    near, _ = fuse_views(depths, [K, K], poses, max_depth=2.3)
    assert 0 < near.shape[0] < points_all.shape[0]
    with pytest.raises(ValueError, match="view 'b'"):
        fuse_views({"a": depths[0], "b": depths[1][:10]}, {"a": K, "b": K}, {"a": poses[0], "b": poses[1]},
                   rgbs={"a": np.zeros((H, W, 3), np.uint8), "b": np.zeros((H, W, 3), np.uint8)})  # fmt: skip
    with pytest.raises(ValueError, match="2 depth maps but 1 intrinsics"):
        fuse_views(depths, [K], poses)


def test_voxel_downsample_counts_and_means_on_a_grid():
    # 5 x 4 x 3 points at cell centres 0.05 + 0.1 i; voxels of 0.2 group them 2 x 2 x 2 (edges: 1 wide)
    axes = [0.05 + 0.1 * np.arange(n) for n in (5, 4, 3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    colours = (np.arange(len(grid)) % 256).astype(np.uint8)[:, None].repeat(3, 1)
    points, mean_colours = voxel_downsample(grid, colours, voxel=0.2)
    assert points.shape == (3 * 2 * 2, 3) and mean_colours.shape == (12, 3) and mean_colours.dtype == np.uint8
    np.testing.assert_allclose(np.unique(points[:, 0]), [0.1, 0.3, 0.45], atol=1e-6)
    np.testing.assert_allclose(np.unique(points[:, 2]), [0.1, 0.25], atol=1e-6)
    # the first voxel holds grid indices (i, j, k) in {0,1}^3 -> flat indices 0,1,3,4,12,13,15,16
    assert mean_colours[0, 0] == round(np.mean([0, 1, 3, 4, 12, 13, 15, 16]))
    # deterministic: independent of the input order
    order = np.random.default_rng(0).permutation(len(grid))
    shuffled, shuffled_colours = voxel_downsample(grid[order], colours[order], voxel=0.2)
    np.testing.assert_array_equal(shuffled, points)
    np.testing.assert_array_equal(shuffled_colours, mean_colours)
    one, _ = voxel_downsample(grid, None, voxel=10.0)
    np.testing.assert_allclose(one, grid.mean(0, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        voxel_downsample(grid, None, voxel=0.0)


def test_downsample_to_count_respects_the_cap():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (20000, 3))
    capped, colours, voxel = downsample_to_count(
        points, rng.integers(0, 255, (20000, 3), dtype=np.uint8), 1000
    )
    assert 500 < capped.shape[0] <= 1000 and colours.shape == capped.shape and voxel > 0
    same, _, no_voxel = downsample_to_count(points[:10], None, 1000)
    assert same.shape == (10, 3) and no_voxel is None
    duplicates, _, _ = downsample_to_count(np.zeros((50, 3)), None, 5)
    assert duplicates.shape == (1, 3)


def _plane_grid(n: int, spacing: float) -> np.ndarray:
    ij = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2) * spacing
    return np.concatenate([ij, np.full((n * n, 1), 0.7)], axis=1)  # the plane z = 0.7


@pytest.mark.parametrize("backend", ["torch", "kdtree"])
def test_chamfer_known_answers(backend):
    grid = _plane_grid(60, 0.01)
    assert chamfer_distance(grid, grid, backend=backend, block=1000).chamfer == 0.0
    # a translation along the normal: every nearest neighbour is the translated twin, at distance d
    result = chamfer_distance(grid, grid + [0, 0, 0.003], backend=backend, block=1000)
    assert result.a_to_b == pytest.approx(0.003, abs=1e-9) and result.chamfer == pytest.approx(
        0.003, abs=1e-9
    )
    # in-plane shift by less than half the spacing: again every point is d from its twin
    result = chamfer_distance(grid, grid + [0.004, 0, 0], backend=backend, block=1000)
    assert result.chamfer == pytest.approx(0.004, abs=1e-9)
    # in-plane shift by k whole spacings: only k of n columns lose their twin, at distances h..k h,
    # so the mean is h k (k + 1) / (2 n) in each direction
    n, h, k = 60, 0.01, 3
    result = chamfer_distance(grid, grid + [k * h, 0, 0], backend=backend, block=1000)
    expected = h * k * (k + 1) / (2 * n)
    assert result.a_to_b == pytest.approx(expected, rel=1e-6) and result.b_to_a == pytest.approx(
        expected, rel=1e-6
    )


def test_chamfer_backends_agree_with_uneven_blocks():
    rng = np.random.default_rng(3)
    a, b = (
        rng.normal(size=(1234, 3)) + 50.0,
        rng.normal(size=(777, 3)) + 50.0,
    )  # far from the origin on purpose
    dist_a, index_a, dist_b, index_b = nearest_neighbours(a, b, backend="torch", block=100)
    ref_a, ref_index_a, ref_b, ref_index_b = nearest_neighbours(a, b, backend="kdtree")
    np.testing.assert_allclose(dist_a, ref_a, atol=1e-9)
    np.testing.assert_allclose(dist_b, ref_b, atol=1e-9)
    assert (index_a == ref_index_a).mean() > 0.999 and (index_b == ref_index_b).mean() > 0.999
    # torch tensors are accepted too
    torch_result = chamfer_distance(torch.from_numpy(a), torch.from_numpy(b), device="cpu", backend="torch")
    assert torch_result.chamfer == pytest.approx(chamfer_distance(a, b).chamfer, abs=1e-12)


def test_chamfer_input_errors():
    with pytest.raises(ValueError, match="empty"):
        chamfer_distance(np.zeros((0, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        chamfer_distance(np.zeros((4, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="backend"):
        chamfer_distance(np.zeros((4, 3)), np.zeros((5, 3)), backend="faiss")


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU: the CUDA path of the brute-force search is untested here"
)
def test_chamfer_on_gpu_matches_cpu():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(size=(20000, 3)), rng.uniform(size=(15000, 3))
    gpu = chamfer_distance(a, b, device="cuda")
    cpu = chamfer_distance(a, b, device="cpu", backend="kdtree")
    assert gpu.chamfer == pytest.approx(cpu.chamfer, abs=1e-9)


def test_fuse_clip_per_timestep_with_a_moving_camera():
    half = 0.25
    static = look_at(np.array([1.5, -2.0, 1.2]), np.zeros(3))
    moving = np.stack([look_at(np.array([-1.8 + 0.1 * t, 1.6, 1.0]), np.zeros(3)) for t in range(3)])
    depth = {
        "static": np.stack([box_depth(K, static, H, W, half)] * 3),
        "wrist": np.stack([box_depth(K, moving[t], H, W, half) for t in range(3)]),
    }
    rgb = {cam: np.full((3, H, W, 3), 90, np.uint8) for cam in depth}
    clouds = fuse_clip(
        depth, {"static": K, "wrist": np.stack([K] * 3)}, {"static": static, "wrist": moving}, rgb
    )
    assert len(clouds) == 3
    for t, (points, colours) in enumerate(clouds):
        assert points.shape[0] == sum(int(np.isfinite(d[t]).sum()) for d in depth.values())
        assert (colours == 90).all()
        np.testing.assert_allclose(np.abs(points).max(axis=1), half, atol=1e-6)
    coarse = fuse_clip(depth, {"static": K, "wrist": K}, {"static": static, "wrist": moving}, voxel=0.1)
    assert all(c is None and 0 < p.shape[0] <= 5 * 5 * 6 for p, c in coarse)
    with pytest.raises(ValueError, match="extrinsics of camera 'wrist'"):
        fuse_clip(depth, {"static": K, "wrist": K}, {"static": static, "wrist": moving[:2]})
