"""xwam.atomic: a write replaces the file whole or leaves the old one, with no temporary left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xwam.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_json,
    atomic_write_text,
)


class Boom(Exception):
    pass


def test_writes_text_bytes_and_json(tmp_path: Path) -> None:
    assert atomic_write_text(tmp_path / "a" / "note.txt", "héllo\n") == tmp_path / "a" / "note.txt"
    assert (tmp_path / "a" / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "x.json", {"a": [1, 2]})
    assert (tmp_path / "x.json").read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"
    atomic_write_json(tmp_path / "x.json", {"p": Path("/p")}, default=str)  # replaces the old content
    assert json.loads((tmp_path / "x.json").read_text()) == {"p": "/p"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "blob.bin", "note.txt", "x.json"]


def test_atomic_path_keeps_the_extension_and_publishes_on_success(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp.name.startswith(".")
        assert tmp.exists() and not target.exists()
        tmp.write_bytes(b"new")  # as a library would, by name
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_a_failure_leaves_the_old_file_and_no_litter(tmp_path: Path) -> None:
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]
    with pytest.raises(TypeError):  # not JSON: nothing is written
        atomic_write_json(target, {"x": object()})
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_new_files_get_the_usual_permissions(tmp_path: Path) -> None:
    # a temporary file from tempfile.mkstemp is private (0o600); a published report must not be
    atomic_write_text(tmp_path / "report.html", "<html>")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_dir_swaps_whole_folders(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"

    def write(version: str):
        def _write(folder: Path) -> None:
            (folder / "model.bin").write_text(version)
            (folder / "config.json").write_text("{}")

        return _write

    atomic_write_dir(target, write("v1"))
    atomic_write_dir(target, write("v2"))
    assert (target / "model.bin").read_text() == "v2"

    def fail(folder: Path) -> None:
        (folder / "model.bin").write_text("half")
        raise Boom

    with pytest.raises(Boom):
        atomic_write_dir(target, fail)
    assert (target / "model.bin").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_the_module_imports_nothing_heavy() -> None:
    code = "import sys, xwam.atomic; print(sorted(m for m in ('torch', 'numpy', 'pyarrow', 'av') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
