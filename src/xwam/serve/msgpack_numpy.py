"""msgpack with numpy arrays, in the wire format of openpi policy servers and clients.

An array travels as a msgpack map with the byte-string keys ``__ndarray__`` (true), ``data`` (the
C-order raw bytes), ``dtype`` (the numpy dtype string, e.g. ``<f4`` or ``|u1``) and ``shape``; a
numpy scalar as ``__npgeneric__`` (true), ``data`` (the Python value, ``scalar.item()``) and
``dtype``. Everything else is plain msgpack (``use_bin_type``; strings decode as ``str``). So an
openpi client can talk to an xwam server and vice versa.

Decoding never executes code and never builds object arrays: a peer could otherwise make numpy read
raw bytes as object pointers. Declared dtype, shape and byte length are checked against each other
before an array is built. Decoded arrays are zero-copy views of the received bytes, hence read-only;
call ``.copy()`` where a writable array is needed.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

__all__ = ["MsgpackNumpyError", "packb", "unpackb", "Packer"]

# Dtype kinds that can never travel: objects (pointers) and void/structured records. Kind
# letters: https://numpy.org/doc/stable/reference/generated/numpy.dtype.kind.html
_REFUSED_KINDS = {"O": "object", "V": "void/structured"}
# Scalars travel as their Python value (`item()`); these kinds have no msgpack equivalent.
_REFUSED_SCALAR_KINDS = {"c": "complex", "M": "datetime64", "m": "timedelta64"}


class MsgpackNumpyError(ValueError):
    """A value cannot be encoded, or a received message is not valid msgpack-numpy."""


def _encode_extra(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy values, and subclasses of built-ins (``strict_types``)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in _REFUSED_KINDS or obj.dtype.hasobject:
            raise MsgpackNumpyError(
                f"cannot send a numpy array of {_REFUSED_KINDS.get(obj.dtype.kind, 'object')} dtype "
                f"{obj.dtype} (shape {obj.shape}); convert it to a numeric, bool or string array"
            )
        return {
            b"__ndarray__": True,
            b"data": obj.tobytes(order="C"),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        kind = obj.dtype.kind
        if kind in _REFUSED_KINDS or kind in _REFUSED_SCALAR_KINDS:
            name = _REFUSED_KINDS.get(kind) or _REFUSED_SCALAR_KINDS[kind]
            raise MsgpackNumpyError(
                f"cannot send a numpy {name} scalar ({obj.dtype}); wrap it in an array (np.asarray(x))"
            )
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    # strict_types makes msgpack hand subclasses of built-ins to this hook (np.float64 is a float
    # subclass and would otherwise silently lose its dtype); give them back as the plain type.
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    for base in (bool, int, float, str, bytes):
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise MsgpackNumpyError(f"cannot send a value of type {type(obj).__name__}: {obj!r:.80}")


def _field(obj: dict, name: str) -> Any:
    """A field of an array/scalar map, whether the peer used byte-string or str keys."""
    if name.encode() in obj:
        return obj[name.encode()]
    if name in obj:
        return obj[name]
    raise MsgpackNumpyError(f"numpy value in message has no '{name}' field")


def _decode_dtype(value: Any) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        raise MsgpackNumpyError(f"numpy dtype must be a string such as '<f4', got {type(value).__name__}")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError) as exc:
        raise MsgpackNumpyError(f"unknown numpy dtype {value!r}") from exc
    if dtype.kind in _REFUSED_KINDS or dtype.hasobject:
        raise MsgpackNumpyError(f"refusing numpy dtype {value!r}: object and void arrays are not accepted")
    return dtype


def _decode_array(obj: dict) -> np.ndarray:
    dtype = _decode_dtype(_field(obj, "dtype"))
    shape = _field(obj, "shape")
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise MsgpackNumpyError(f"numpy shape must be a list of non-negative integers, got {shape!r:.80}")
    data = _field(obj, "data")
    if not isinstance(data, bytes):
        raise MsgpackNumpyError(f"numpy array data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise MsgpackNumpyError(
            f"numpy array of shape {tuple(shape)} and dtype {dtype.str} needs {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_scalar(obj: dict) -> np.generic:
    dtype = _decode_dtype(_field(obj, "dtype"))
    data = _field(obj, "data")
    try:
        if isinstance(data, bytes) and dtype.kind not in "SU":
            # Some encoders send a scalar's raw bytes rather than its Python value.
            if len(data) != dtype.itemsize:
                raise MsgpackNumpyError(f"numpy scalar of dtype {dtype.str} needs {dtype.itemsize} bytes")
            return np.frombuffer(data, dtype=dtype)[0]
        return dtype.type(data)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MsgpackNumpyError(f"invalid numpy scalar {data!r:.40} for dtype {dtype.str}: {exc}") from exc


def _decode_hook(obj: dict) -> Any:
    """msgpack ``object_hook``: turn array and scalar maps back into numpy values."""
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        return _decode_array(obj)
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        return _decode_scalar(obj)
    return obj


def Packer() -> msgpack.Packer:  # noqa: N802 - mirrors msgpack.Packer, which it configures
    """A reusable packer (saves re-allocating its buffer for every message)."""
    return msgpack.Packer(default=_encode_extra, use_bin_type=True, strict_types=True)


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (dicts, lists, scalars, strings, bytes, numpy arrays and scalars)."""
    try:
        return msgpack.packb(obj, default=_encode_extra, use_bin_type=True, strict_types=True)
    except MsgpackNumpyError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise MsgpackNumpyError(f"cannot encode message: {exc}") from exc


def unpackb(data: bytes) -> Any:
    """Decode a message made by :func:`packb` or by an openpi client/server.

    Raises :class:`MsgpackNumpyError` (a ``ValueError``) for anything that is not valid msgpack, or
    whose numpy values are malformed.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MsgpackNumpyError(f"expected bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, raw=False)
    except MsgpackNumpyError:
        raise
    except msgpack.ExtraData as exc:
        raise MsgpackNumpyError("not a single msgpack message: extra bytes after the first value") from exc
    except (msgpack.UnpackException, ValueError, TypeError, UnicodeDecodeError) as exc:
        # msgpack raises FormatError/StackError (ValueError subclasses), ValueError for truncated
        # input and TypeError for unhashable map keys.
        detail = str(exc) or "malformed or truncated data"
        raise MsgpackNumpyError(f"not a valid msgpack message ({type(exc).__name__}: {detail})") from exc
