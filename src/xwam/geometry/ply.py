"""PLY point-cloud files: binary little-endian writer (float32 xyz, optional uint8 RGB) and a reader.

The writer produces the layout every viewer reads (MeshLab, CloudCompare, Open3D, Blender):

    ply / format binary_little_endian 1.0 / element vertex N /
    property float x|y|z / [property uchar red|green|blue] / end_header / N packed records

The reader accepts what the writer produces plus ASCII PLY and other scalar vertex properties (extra
elements after ``vertex`` are ignored); it exists mainly so tests and tools can check written files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xwam.atomic import atomic_write_bytes

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def write_ply(path: str | Path, points: np.ndarray, colours: np.ndarray | None = None) -> Path:
    """Write (N, 3) points (stored as float32) and optional (N, 3) uint8 colours to a binary PLY.

    The file is written to a temporary name in the same folder and renamed, so readers never see a
    partial file. Returns the path.
    """
    path = Path(path)
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{path}: points must have shape (N, 3), got {points.shape}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colours is not None:
        colours = np.asarray(colours)
        if colours.shape != points.shape or colours.dtype != np.uint8:
            raise ValueError(
                f"{path}: colours must be ({points.shape[0]}, 3) uint8, got {colours.shape} {colours.dtype}"
            )
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    records = np.empty(points.shape[0], dtype=np.dtype(fields))
    for axis, name in enumerate("xyz"):
        records[name] = points[:, axis]
    if colours is not None:
        for channel, name in enumerate(("red", "green", "blue")):
            records[name] = colours[:, channel]
    header_lines = [
        "ply",
        "format binary_little_endian 1.0",
        "comment written by xwam",
        f"element vertex {len(records)}",
    ]
    header_lines += [f"property float {n}" for n in "xyz"]
    if colours is not None:
        header_lines += [f"property uchar {n}" for n in ("red", "green", "blue")]
    header = ("\n".join(header_lines) + "\nend_header\n").encode("ascii")

    atomic_write_bytes(path, header + records.tobytes())
    return path


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the vertex positions (N, 3) float32 and, if present, colours (N, 3) uint8 of a PLY file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    body_start = data.index(b"\n", end) + 1
    header = data[:end].decode("ascii", errors="replace").splitlines()
    fmt, vertex_count, properties, in_vertex, seen_vertex = None, None, [], False, False
    for line in header[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            if seen_vertex and words[1] != "vertex":
                break  # later elements (faces...) are not needed and follow the vertices
            in_vertex = words[1] == "vertex"
            if in_vertex:
                seen_vertex, vertex_count = True, int(words[2])
            elif not seen_vertex:
                raise ValueError(f"{path}: element {words[1]!r} before 'vertex' is not supported")
        elif words[0] == "property" and in_vertex:
            if words[1] == "list":
                raise ValueError(f"{path}: list properties in the vertex element are not supported")
            if words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unknown PLY property type {words[1]!r}")
            properties.append((words[2], _PLY_TYPES[words[1]]))
    if vertex_count is None:
        raise ValueError(f"{path}: no vertex element in the header")
    names = [name for name, _ in properties]
    if not {"x", "y", "z"} <= set(names):
        raise ValueError(f"{path}: vertex element lacks x/y/z properties (has {names})")

    if fmt == "ascii":
        table = np.loadtxt(data[body_start:].decode("ascii").splitlines()[:vertex_count], ndmin=2)
        if table.shape != (vertex_count, len(properties)):
            raise ValueError(
                f"{path}: expected {vertex_count} vertices x {len(properties)} values, got {table.shape}"
            )
        columns = {name: table[:, i] for i, name in enumerate(names)}
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + code) for name, code in properties])
        if len(data) - body_start < dtype.itemsize * vertex_count:
            raise ValueError(
                f"{path}: truncated: {vertex_count} vertices need {dtype.itemsize * vertex_count} bytes"
            )
        records = np.frombuffer(data, dtype=dtype, count=vertex_count, offset=body_start)
        columns = {name: records[name] for name in names}
    else:
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")

    points = np.stack([columns[n] for n in "xyz"], axis=1).astype(np.float32)
    colour_names = ("red", "green", "blue")
    colours = None
    if all(n in columns for n in colour_names):
        colours = np.stack([columns[n] for n in colour_names], axis=1).astype(np.uint8)
    return points, colours
