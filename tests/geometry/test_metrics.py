import math

import numpy as np
import pytest
from geometry_scenes import intrinsics, look_at, plane_depth

from xwam.geometry.metrics import LpipsMetric, depth_abs_rel, depth_delta1, evaluate_4d, psnr, ssim

H, W, T = 48, 64, 3
K = intrinsics(W, H, focal=50.0)
FLOOR = np.array([0.0, 0.0, 1.0])  # the plane z = 0


def _scene() -> dict:
    """Two static cameras and a moving wrist camera over a textured floor (z = 0)."""
    rng = np.random.default_rng(0)
    static = {
        "left": look_at(np.array([-0.6, -0.8, 1.2]), np.array([0.0, 0.1, 0.0])),
        "right": look_at(np.array([0.7, -0.7, 1.1]), np.array([0.0, 0.1, 0.0])),
    }
    wrist = np.stack(
        [look_at(np.array([0.1 * t, 0.0, 0.5]), np.array([0.1 * t, 0.3, 0.0])) for t in range(T)]
    )
    extrinsics = {name: np.broadcast_to(pose, (T, 4, 4)).copy() for name, pose in static.items()}
    extrinsics["wrist"] = wrist
    depth = {
        name: np.stack([plane_depth(K, extrinsics[name][t], H, W, FLOOR, 0.0) for t in range(T)]).astype(
            np.float32
        )
        for name in extrinsics
    }
    rgb = {name: rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8) for name in extrinsics}
    return {
        "rgb": rgb,
        "depth": depth,
        "intrinsics": {name: K for name in extrinsics},
        "extrinsics": extrinsics,
    }


def _copy(scene: dict) -> dict:
    return {field: {name: np.array(value) for name, value in table.items()} for field, table in scene.items()}


def test_ground_truth_as_prediction_is_perfect():
    gt = _scene()
    assert all(np.isfinite(d).all() for d in gt["depth"].values())
    result = evaluate_4d(_copy(gt), gt)
    assert result["static_views"] == ["left", "right"]  # detected from the unchanging extrinsics
    assert result["views"] == ["left", "right", "wrist"] and result["num_frames"] == T
    for subset in ("static", "all"):
        mean = result[subset]["mean"]
        assert mean["psnr"] == math.inf and mean["ssim"] == pytest.approx(1.0, abs=1e-6)
        assert mean["abs_rel"] == 0.0 and mean["delta1"] == 1.0 and mean["chamfer"] == 0.0
        assert len(result[subset]["per_frame"]["chamfer"]) == T
    if LpipsMetric.load()[0] is None:
        assert result["all"]["mean"]["lpips"] is None
        assert any("LPIPS skipped" in note for note in result["notes"])


@pytest.mark.parametrize(("scale", "abs_rel", "delta1"), [(1.1, 0.1, 1.0), (1.3, 0.3, 0.0), (0.9, 0.1, 1.0)])
def test_scaled_depth(scale, abs_rel, delta1):
    gt = _scene()
    pred = _copy(gt)
    pred["depth"] = {name: d * scale for name, d in gt["depth"].items()}
    result = evaluate_4d(pred, gt, static_views=["left", "right"], lpips=False)
    assert result["all"]["mean"]["abs_rel"] == pytest.approx(abs_rel, rel=1e-5)
    assert result["all"]["mean"]["delta1"] == delta1
    assert result["all"]["per_view"]["wrist"]["abs_rel"] == pytest.approx(abs_rel, rel=1e-5)
    assert result["all"]["mean"]["chamfer"] > 0.01


def test_camera_offset_along_the_floor_normal_gives_that_chamfer():
    gt = _scene()
    pred = _copy(gt)
    # moving every camera up by 2 mm with the same depth lifts the fused floor by 2 mm
    for name in pred["extrinsics"]:
        pred["extrinsics"][name][:, 2, 3] += 0.002
    result = evaluate_4d(pred, gt, lpips=False)
    for subset in ("static", "all"):
        assert result[subset]["mean"]["chamfer"] == pytest.approx(0.002, abs=1e-6)
        assert result[subset]["mean"]["chamfer_pred_to_gt"] == pytest.approx(0.002, abs=1e-6)
        assert result[subset]["mean"]["abs_rel"] == 0.0


def test_static_and_all_views_differ_when_only_the_wrist_is_wrong():
    gt = _scene()
    pred = _copy(gt)
    pred["rgb"]["wrist"] = 255 - pred["rgb"]["wrist"]
    pred["extrinsics"]["wrist"][:, 2, 3] += 0.01
    result = evaluate_4d(pred, gt, lpips=False)
    assert result["static"]["mean"]["psnr"] == math.inf and result["static"]["mean"]["chamfer"] == 0.0
    assert result["all"]["mean"]["psnr"] == math.inf  # the mean of inf and a finite PSNR
    assert result["all"]["per_view"]["wrist"]["psnr"] < 10
    assert result["all"]["mean"]["chamfer"] > 0.0
    assert result["all"]["mean"]["ssim"] < 0.9


def test_prediction_without_cameras_uses_the_ground_truth_ones():
    gt = _scene()
    pred = {"rgb": gt["rgb"], "depth": gt["depth"]}
    result = evaluate_4d(pred, gt, lpips=False)
    assert result["all"]["mean"]["chamfer"] == 0.0


def test_known_psnr_and_ssim_values():
    gt = np.full((2, 16, 16, 3), 0.5, np.float32)
    assert psnr(gt + 0.1, gt) == pytest.approx([20.0, 20.0], abs=1e-3)  # mse 0.01 with data range 1
    assert psnr(np.full((16, 16, 3), 110, np.uint8), np.full((16, 16, 3), 100, np.uint8))[0] == pytest.approx(
        20 * math.log10(255 / 10), abs=1e-3
    )
    rng = np.random.default_rng(0)
    frames = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert ssim(frames, frames) == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (ssim(1 - frames, frames) < 0).all()
    with pytest.raises(ValueError, match="11x11"):
        ssim(frames[:, :8, :8], frames[:, :8, :8])


def test_depth_metrics_ignore_invalid_ground_truth_and_penalise_invalid_predictions():
    gt = np.full((1, 4, 4), 2.0)
    gt[0, 0, :] = 0.0  # no ground truth: ignored
    gt[0, 1, 0] = np.nan
    pred = gt * 1.1
    pred[0, 3, :] = np.nan  # 4 of the 11 valid pixels have no prediction
    assert depth_abs_rel(pred, gt)[0] == pytest.approx((7 * 0.1 + 4 * 1.0) / 11)
    assert depth_delta1(pred, gt)[0] == pytest.approx(7 / 11)
    assert (
        depth_delta1(pred, gt, max_depth=1.0)[0] != depth_delta1(pred, gt, max_depth=1.0)[0]
    )  # NaN: nothing valid


def test_input_errors_name_the_camera():
    gt = _scene()
    pred = _copy(gt)
    del pred["rgb"]["wrist"]
    with pytest.raises(ValueError, match="prediction has no RGB for camera 'wrist'"):
        evaluate_4d(pred, gt, lpips=False)
    pred = _copy(gt)
    pred["rgb"]["left"] = pred["rgb"]["left"][:2]
    with pytest.raises(ValueError, match="camera 'left'"):
        evaluate_4d(pred, gt, lpips=False)
    with pytest.raises(ValueError, match="static_views"):
        evaluate_4d(_copy(gt), gt, static_views=["top"], lpips=False)
