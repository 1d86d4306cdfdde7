import numpy as np
import pytest

from xwam.viz.colormap import colorize_depth, turbo
from xwam.viz.video import read_video, tile_grid, write_video_grid


def test_turbo_endpoints_and_depth_colouring():
    ends = turbo(np.array([0.0, 0.5, 1.0]))
    assert ends.dtype == np.uint8 and ends.shape == (3, 3)
    assert ends[1, 1] > 200  # the middle of Turbo is bright green
    depth = np.array([[0.5, 1.8, 2.0], [np.nan, 0.0, 5.0]])
    colours = colorize_depth(depth, near=0.5, far=2.0)
    assert colours.shape == (2, 3, 3)
    assert colours[0, 0, 0] > 3 * colours[0, 0, 2]  # near is red
    assert colours[0, 1, 2] > 3 * colours[0, 1, 0]  # far is blue
    np.testing.assert_array_equal(colours[1, 0], 0)  # invalid -> black
    np.testing.assert_array_equal(colours[1, 1], 0)
    np.testing.assert_array_equal(colours[1, 2], colours[0, 2])  # clipped to far
    clip = colorize_depth(np.linspace(0.5, 2, 2 * 4 * 6).reshape(2, 4, 6))
    assert clip.shape == (2, 4, 6, 3)


def _flat(colour, frames=4, height=30, width=40):
    return np.broadcast_to(np.array(colour, np.uint8), (frames, height, width, 3)).copy()


def test_tile_grid_layout_and_labels():
    red, green, blue = _flat((255, 0, 0)), _flat((0, 255, 0), height=20), _flat((0, 0, 255), width=21)
    canvas = tile_grid([[red, green], [blue, None]], gap=2)
    # columns 40 and 40 wide, rows 30 and 30 high, 2 px gaps; 82 x 62 is already even
    assert canvas.shape == (4, 62, 82, 3)
    assert (canvas[:, 0, 0] == [255, 0, 0]).all()
    assert (canvas[:, 15, 62] == [0, 255, 0]).all()  # green is centred vertically in its 30 px tile
    assert (canvas[:, 4, 62] == 0).all()
    assert (canvas[:, 45, 20] == [0, 0, 255]).all()
    assert (canvas[:, 45, 70] == 0).all()  # the empty cell
    labelled = tile_grid([[red, green], [blue, None]], [["pred", "depth"], ["gt", None]], gap=2)
    changed = np.any(labelled != canvas, axis=(0, 3))
    assert changed[:15, :30].any() and not changed[22:30, :].any()  # labels only in the top-left corners
    odd = tile_grid([[_flat((1, 2, 3), height=31, width=41)]])
    assert odd.shape[1] % 2 == 0 and odd.shape[2] % 2 == 0


def test_tile_grid_errors():
    with pytest.raises(ValueError, match=r"row 0, column 1\) has 3 frames"):
        tile_grid([[_flat((1, 1, 1)), _flat((1, 1, 1), frames=3)]])
    with pytest.raises(ValueError, match="colorize_depth"):
        tile_grid([[np.zeros((4, 8, 8), np.float32)]])
    with pytest.raises(ValueError, match="same shape"):
        tile_grid([[_flat((1, 1, 1))]], [["a", "b"]])


def test_write_video_grid_round_trip(tmp_path):
    red, depth = (
        _flat((220, 30, 30), frames=6, height=32, width=48),
        colorize_depth(np.full((6, 32, 48), 1.0), 0.5, 2.0),
    )
    path = write_video_grid(
        tmp_path / "out" / "grid.mp4", [[red, depth]], fps=5, labels=[["pred rgb", "pred depth"]]
    )
    assert [p.name for p in path.parent.iterdir()] == ["grid.mp4"]
    frames = read_video(path)
    assert frames.shape == (6, 32, 98, 3)
    # H.264 at CRF 20 keeps flat colours within a few levels (away from the labels and tile edges)
    np.testing.assert_allclose(frames[:, 20:30, 10:40].mean(axis=(0, 1, 2)), [220, 30, 30], atol=6)
    np.testing.assert_allclose(frames[:, 20:30, 60:90].mean(axis=(0, 1, 2)), depth[0, 0, 0], atol=6)
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
