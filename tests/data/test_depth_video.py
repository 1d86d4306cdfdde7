"""Depth encodings (12-bit log quantiser, uint16 millimetres) and lossless 12-bit depth video."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from xwam.data.errors import DatasetError
from xwam.data.video import DepthMillimetres, DepthQuantizer, VideoEncoder, decode_frames


def test_quantiser_error_within_stated_bound() -> None:
    q = DepthQuantizer()
    depth = np.geomspace(q.depth_min, q.depth_max, 200_001)
    err = np.abs(q.decode(q.encode(depth)).astype(np.float64) - depth)
    bound = q.error_bound(depth)
    assert np.all(err <= bound + 1e-6)  # + float32 output rounding
    # the bound is tight (reached within 10 % somewhere) and matches the documented numbers
    assert err.max() > 0.9 * bound.max()
    np.testing.assert_allclose(q.error_bound([0.01, 1.0, 10.0]), [0.000577, 0.000740, 0.002221], rtol=2e-3)
    half_step = math.log(13.5 / 3.51) / (2 * 4095)
    assert q.error_bound(10.0) == pytest.approx(13.5 * math.expm1(half_step))


def test_quantiser_clips_and_handles_invalid_depth() -> None:
    q = DepthQuantizer()
    codes = q.encode(np.array([0.0, -1.0, np.nan, np.inf, 0.001, 50.0]))
    assert codes.dtype == np.uint16 and codes.max() <= 4095
    np.testing.assert_allclose(q.decode(codes), [10, 10, 10, 10, 0.01, 10], atol=1e-4)


def test_gray12_video_is_lossless(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4096, size=(12, 24, 40)).astype(np.uint16)
    with VideoEncoder(tmp_path / "d.mp4", width=40, height=24, fps=20, kind="depth") as enc:
        enc.write(codes[:5])
        enc.write(codes[5:])
    np.testing.assert_array_equal(
        decode_frames(tmp_path / "d.mp4", fps=20, first_index=0, count=12, kind="depth"), codes
    )
    np.testing.assert_array_equal(
        decode_frames(tmp_path / "d.mp4", fps=20, first_index=7, count=3, kind="depth"), codes[7:10]
    )


def test_rgb_seek_into_the_middle(tmp_path: Path) -> None:
    frames = np.stack([np.full((16, 16, 3), 10 * t, np.uint8) for t in range(25)])
    with VideoEncoder(tmp_path / "v.mp4", width=16, height=16, fps=20) as enc:
        enc.write(frames)
    got = decode_frames(tmp_path / "v.mp4", fps=20, first_index=21, count=4)
    np.testing.assert_allclose(got.reshape(4, -1).mean(1), [210, 220, 230, 240], atol=2)
    with pytest.raises(DatasetError, match=r"v\.mp4 \(episode 3\) is truncated"):
        decode_frames(tmp_path / "v.mp4", fps=20, first_index=22, count=5, episode=3)


def test_odd_rgb_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even width and height"):
        VideoEncoder(tmp_path / "v.mp4", width=15, height=16, fps=20)


def test_millimetre_depth_round_trip_within_half_a_millimetre() -> None:
    mm = DepthMillimetres()
    depth = np.geomspace(0.001, 65.5, 100_001)
    codes = mm.encode(depth)
    assert codes.dtype == np.uint16 and codes.min() >= 1
    err = np.abs(mm.decode(codes).astype(np.float64) - depth)
    assert err.max() <= mm.error_bound(1.0) + 4e-6  # half a millimetre + float32 rounding at 65 m
    # better than the 12-bit log quantiser everywhere in its range
    inside = depth[(depth >= 0.01) & (depth <= 10)]
    assert np.all(mm.error_bound(inside) <= DepthQuantizer().error_bound(inside))


def test_millimetre_depth_no_return_and_clipping() -> None:
    mm = DepthMillimetres()
    codes = mm.encode(np.array([0.0, -1.0, np.nan, np.inf, 1e-5, 70.0]))
    np.testing.assert_array_equal(codes, [0, 0, 0, 0, 1, 65535])
    decoded = mm.decode(codes)
    assert np.all(np.isinf(decoded[:4])) and decoded[4] == pytest.approx(0.001) and decoded[5] == pytest.approx(65.535)


def test_millimetre_feature_info_round_trip() -> None:
    info = DepthMillimetres().feature_info(24, 40)
    assert info["depth.encoding"] == "uint16_mm" and (info["depth.height"], info["depth.width"]) == (24, 40)
    assert DepthMillimetres.from_feature_info(info) == DepthMillimetres()
