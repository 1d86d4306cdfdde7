import numpy as np
import pytest
import torch

from xwam.codecs import (
    DepthEncoding,
    PixelCodec,
    align_relative_inverse_depth,
    relative_inverse_depth_from_uint8,
    relative_inverse_depth_to_frames,
)


@pytest.mark.parametrize("curve", ["inverse", "log"])
def test_round_trip_is_exact_to_float_precision(curve: str) -> None:
    enc = DepthEncoding(curve=curve)
    depth64 = torch.exp(torch.linspace(np.log(enc.near), np.log(enc.far), 10_001, dtype=torch.float64))
    depth64 = depth64.reshape(1, 1, 10_001)  # (F, H, W)
    back64 = enc.frames_to_depth(enc.depth_to_frames(depth64))
    assert back64.dtype == torch.float64
    assert ((back64 - depth64).abs() / depth64).max().item() < 1e-13
    # float32 frames: error bounded by the float32 resolution of the unit value, amplified by the map
    depth32 = depth64.float()
    back32 = enc.frames_to_depth(enc.depth_to_frames(depth32))
    assert back32.dtype == torch.float32
    relative = ((back32.double() - depth32.double()).abs() / depth32.double()).max().item()
    assert relative < enc.max_relative_error(torch.finfo(torch.float32).eps) + 1e-7
    assert relative < 5e-6


@pytest.mark.parametrize("curve", ["inverse", "log"])
def test_endpoints_and_monotonicity(curve: str) -> None:
    enc = DepthEncoding(near=0.1, far=2.0, curve=curve)
    assert enc.to_unit(torch.tensor([0.1, 2.0], dtype=torch.float64)).tolist() == pytest.approx([1.0, -1.0], abs=1e-15)
    values = enc.to_unit(torch.linspace(0.1, 2.0, 500))
    assert (values[1:] < values[:-1]).all()  # strictly decreasing: nearer is brighter
    assert (enc.from_unit(torch.linspace(-1, 1, 500)).diff() < 0).all()


@pytest.mark.parametrize("curve", ["inverse", "log"])
def test_clamping_outside_range(curve: str) -> None:
    enc = DepthEncoding(near=0.05, far=5.0, curve=curve)
    depth = torch.tensor([0.0, 0.01, 10.0, float("inf")])
    back = enc.from_unit(enc.to_unit(depth))
    assert torch.allclose(back, torch.tensor([0.05, 0.05, 5.0, 5.0]))
    assert torch.allclose(enc.from_unit(torch.tensor([2.0, -2.0])), torch.tensor([0.05, 5.0]))
    with pytest.raises(ValueError, match="NaN"):
        enc.to_unit(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="near"):
        DepthEncoding(near=1.0, far=0.5)
    with pytest.raises(ValueError, match="curve"):
        DepthEncoding(curve="linear")


def test_frames_layout_replicates_channels_and_averages_on_decode() -> None:
    enc = DepthEncoding()
    depth = np.random.default_rng(0).uniform(0.3, 3.0, size=(2, 3, 8, 8)).astype(np.float32)  # (V, F, H, W)
    frames = enc.depth_to_frames(depth)
    assert frames.shape == (2, 3, 3, 8, 8)
    assert torch.equal(frames[:, 0], frames[:, 2])
    # goes through a codec like RGB does
    codec = PixelCodec(4)
    assert torch.allclose(
        enc.frames_to_depth(codec.decode(codec.encode(frames))), torch.from_numpy(depth), rtol=5e-6
    )
    # decoded channels may disagree: the mean is used
    noisy = frames.clone()
    noisy[:, 0] += 0.01
    noisy[:, 1] -= 0.01
    assert torch.allclose(enc.frames_to_depth(noisy), torch.from_numpy(depth), rtol=1e-5)


def test_curves_are_the_inverse_and_log_maps() -> None:
    depth = torch.tensor([0.05, 0.2, 1.0, 5.0], dtype=torch.float64)
    inverse = DepthEncoding(0.05, 5.0, "inverse").to_unit(depth)
    log = DepthEncoding(0.05, 5.0, "log").to_unit(depth)
    torch.testing.assert_close(inverse, 2 * (1 / depth - 0.2) / (20 - 0.2) - 1)
    torch.testing.assert_close(log, 2 * (np.log(5.0) - depth.log()) / np.log(100.0) - 1)


def test_log_curve_has_the_same_relative_precision_at_every_distance() -> None:
    # the reason the CPU demo uses it: a unit error costs the same relative depth error near and far,
    # where inverse depth's grows with distance (x100 from near to far for 0.05-5 m)
    du = 1e-6  # small enough for the first-order error of max_relative_error
    for curve in ("inverse", "log"):
        enc = DepthEncoding(0.05, 5.0, curve)
        depth = torch.tensor([0.1, 0.5, 1.5, 4.0], dtype=torch.float64)
        moved = enc.from_unit(enc.to_unit(depth) - du)  # one unit step farther
        relative = (moved - depth) / depth
        want = torch.tensor([enc.max_relative_error(du, float(d)) for d in depth], dtype=torch.float64)
        torch.testing.assert_close(relative, want, rtol=2e-3, atol=0)
        if curve == "log":
            assert float(relative.max() / relative.min()) < 1.01
        else:
            assert float(relative[-1] / relative[0]) > 30


def test_release_relative_inverse_depth() -> None:
    video = np.array([[[0, 255], [128, 64]]], dtype=np.uint8)  # (F, H, W)
    relative = relative_inverse_depth_from_uint8(video)
    assert relative.shape == (1, 2, 2) and relative[0, 0, 1] == 1.0 and relative[0, 0, 0] == 0.0
    rgb = np.repeat(video[..., None], 3, axis=-1)
    assert torch.equal(relative_inverse_depth_from_uint8(rgb), relative)
    frames = relative_inverse_depth_to_frames(relative)
    assert frames.shape == (3, 1, 2, 2) and frames.max() == 1.0 and frames.min() == -1.0


def test_align_relative_inverse_depth_recovers_metric_depth() -> None:
    depth = torch.from_numpy(np.random.default_rng(1).uniform(0.4, 3.0, size=(4, 16, 16)).astype(np.float32))
    relative = 0.7 * (1.0 / depth) - 0.2  # an unknown affine map of inverse depth
    recovered, scale, shift = align_relative_inverse_depth(relative, depth)
    assert scale == pytest.approx(1 / 0.7, rel=1e-5) and shift == pytest.approx(0.2 / 0.7, rel=1e-4)
    assert torch.allclose(recovered, depth, rtol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        align_relative_inverse_depth(relative[0], depth)
