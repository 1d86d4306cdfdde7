"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.

Everything is written to a temporary sibling (same folder, so the final rename never crosses a file
system), flushed to disk, then renamed over the target with ``os.replace``. On failure the temporary
is removed and the target is left as it was. Standard library only: the torch-free client imports it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not every platform can open a folder, so best effort
    try:
        _fsync_path(folder)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on failure it is removed.

    For files written by a library that wants a file name (PyAV, pyarrow, safetensors, PLY, Rerun).
    The temporary keeps ``path``'s extension, for libraries that choose the format by it. It exists
    (empty) when yielded, created with the usual permissions (0o666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:12]}{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        stream.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, data: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=default) + "\n")


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the platform or file system cannot (the caller then falls back to two renames).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def atomic_write_dir(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_dir)`` then publish ``tmp_dir`` as ``target`` in one atomic step.

    A new ``target`` is one rename. An existing one is swapped with the new folder in one atomic
    exchange, so a reader or a crash sees the old folder or the new one, never neither; the old
    content is then deleted from the temporary name. Where the exchange is unavailable the old
    folder is renamed aside (``.NAME.old-PID``) first: a crash between the two renames leaves it
    there, for :func:`restore_aside` to put back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        for f in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
            if f.is_file():
                _fsync_path(f)
        if not target.exists():
            os.replace(tmp, target)
        elif exchange_paths(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # the old content, now under the temporary name
        else:
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    return target


def restore_aside(target: str | Path, usable: Callable[[Path], bool]) -> None:
    """After a crash inside :func:`atomic_write_dir`: put a set-aside old folder back where the
    target is missing (when ``usable`` says it is whole), and delete every other leftover (set-aside
    and temporary folders of ``target``)."""
    target = Path(target)
    for aside in sorted(target.parent.glob(f".{target.name}.old-*")):
        if not target.exists() and usable(aside):
            os.replace(aside, target)
        else:
            shutil.rmtree(aside, ignore_errors=True)
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
