import numpy as np
import pytest

from xwam.geometry.ply import read_ply, write_ply


def test_binary_round_trip_with_colours(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(1000, 3)).astype(np.float32)
    colours = rng.integers(0, 256, (1000, 3), dtype=np.uint8)
    path = write_ply(tmp_path / "sub" / "cloud.ply", points, colours)
    data = path.read_bytes()
    header = data[: data.index(b"end_header")].decode()
    assert "format binary_little_endian 1.0" in header and "element vertex 1000" in header
    assert "property uchar red" in header
    assert len(data) == data.index(b"end_header\n") + len(b"end_header\n") + 1000 * 15  # 3 floats + 3 bytes
    back, back_colours = read_ply(path)
    np.testing.assert_array_equal(back, points)
    np.testing.assert_array_equal(back_colours, colours)
    assert [p.name for p in path.parent.iterdir()] == ["cloud.ply"]  # no temporary file left behind


def test_round_trip_without_colours_and_empty(tmp_path):
    points = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    back, colours = read_ply(write_ply(tmp_path / "a.ply", points))
    np.testing.assert_array_equal(back, points.astype(np.float32))
    assert colours is None
    empty, _ = read_ply(write_ply(tmp_path / "empty.ply", np.zeros((0, 3))))
    assert empty.shape == (0, 3)


def test_reads_ascii_ply(tmp_path):
    path = tmp_path / "ascii.ply"
    path.write_text(
        "ply\nformat ascii 1.0\nelement vertex 2\nproperty double x\nproperty double y\nproperty double z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 0\n"
        "property list uchar int vertex_indices\nend_header\n1 2 3 255 0 0\n4 5 6 0 255 0\n"
    )
    points, colours = read_ply(path)
    np.testing.assert_array_equal(points, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(colours, [[255, 0, 0], [0, 255, 0]])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_ply(tmp_path / "bad.ply", np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        read_ply(tmp_path / "missing.ply")
    truncated = tmp_path / "truncated.ply"
    data = write_ply(truncated, np.zeros((10, 3))).read_bytes()
    truncated.write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated.ply: truncated"):
        read_ply(truncated)
