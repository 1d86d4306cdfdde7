"""msgpack-numpy codec: round trips, the openpi byte layout, and refusal of unsafe or broken input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from xwam.serve.msgpack_numpy import MsgpackNumpyError, Packer, packb, unpackb

DTYPES = [
    "|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8",
    "<c8", "<c16", ">f4", ">i8", "<U5", "|S3", "<M8[ms]", "<m8[s]",
]  # fmt: skip
SHAPES = [(), (0,), (5,), (2, 3), (2, 0, 3), (3, 4, 5)]


def _sample(dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    raw = np.asarray(rng.integers(0, 100, size=shape))
    if dtype.kind in "US":
        return np.asarray(raw.astype("U"), dtype=dtype)
    if dtype.kind == "c":
        return np.asarray(raw + 1j * (raw + 1), dtype=dtype)
    return np.asarray(raw, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_array_round_trip_keeps_dtype_shape_and_values(dtype: str, shape: tuple[int, ...]) -> None:
    array = _sample(np.dtype(dtype), shape, np.random.default_rng(0))
    back = unpackb(packb(array))
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.dtype.str == array.dtype.str
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_non_contiguous_arrays_travel_in_c_order() -> None:
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    for view in (base.transpose(2, 0, 1), base[:, ::2, 1:], np.asfortranarray(base)):
        np.testing.assert_array_equal(unpackb(packb(view)), view)


@pytest.mark.parametrize(
    "scalar",
    [np.float32(1.25), np.float64(-2.5), np.float16(3.0), np.int8(-7), np.uint8(200), np.int64(2**40),
     np.uint64(2**63 + 5), np.bool_(True), np.bool_(False), np.str_("hello"), np.bytes_(b"ab")],
)  # fmt: skip
def test_numpy_scalars_round_trip_with_their_type(scalar: np.generic) -> None:
    back = unpackb(packb(scalar))
    assert type(back) is type(scalar)
    assert back == scalar


def test_nested_structures_round_trip() -> None:
    message = {
        "observation": {"images": {"front": np.zeros((2, 3, 3), np.uint8)}, "state": np.ones(4, np.float32)},
        "prompt": "open the drawer",
        "list": [1, 2.5, None, True, "x", b"raw", np.int32(3), [np.arange(3)]],
        "tuple": (1, 2),
        "timing": {"infer_ms": 1.5},
    }
    back = unpackb(packb(message))
    np.testing.assert_array_equal(
        back["observation"]["images"]["front"], message["observation"]["images"]["front"]
    )
    np.testing.assert_array_equal(back["observation"]["state"], message["observation"]["state"])
    assert back["prompt"] == "open the drawer"
    assert back["list"][:6] == [1, 2.5, None, True, "x", b"raw"]
    assert type(back["list"][6]) is np.int32
    np.testing.assert_array_equal(back["list"][7][0], np.arange(3))
    assert back["tuple"] == [1, 2]  # msgpack has no tuple type
    assert back["timing"] == {"infer_ms": 1.5}
    assert unpackb(Packer().pack(message))["prompt"] == "open the drawer"


def test_encoding_matches_the_openpi_byte_layout() -> None:
    array = np.arange(6, dtype="<f4").reshape(2, 3)
    by_hand = msgpack.packb(
        {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": "<f4", b"shape": [2, 3]}, use_bin_type=True
    )
    assert packb(array) == by_hand
    scalar = msgpack.packb({b"__npgeneric__": True, b"data": 7, b"dtype": "<i8"}, use_bin_type=True)
    assert packb(np.int64(7)) == scalar


def test_hand_built_openpi_payload_decodes() -> None:
    # What an openpi client sends: byte-string keys, shape as a tuple, scalars by value.
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    state = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    payload = msgpack.packb(
        {
            "observation/images/front": {
                b"__ndarray__": True, b"data": image.tobytes(), b"dtype": image.dtype.str, b"shape": image.shape,
            },
            "state": {b"__ndarray__": True, b"data": state.tobytes(), b"dtype": "<f4", b"shape": (3,)},
            "step": {b"__npgeneric__": True, b"data": 12, b"dtype": "<i4"},
            "prompt": "pick up the can",
        },
        use_bin_type=True,
    )  # fmt: skip
    obs = unpackb(payload)
    np.testing.assert_array_equal(obs["observation/images/front"], image)
    assert obs["observation/images/front"].dtype == np.uint8
    np.testing.assert_array_equal(obs["state"], state)
    assert type(obs["step"]) is np.int32 and obs["step"] == 12
    assert obs["prompt"] == "pick up the can"


def test_str_keyed_arrays_and_raw_byte_scalars_decode() -> None:
    payload = msgpack.packb(
        {"a": {"__ndarray__": True, "data": b"\x01\x00", "dtype": "<u2", "shape": [1]},
         "s": {b"__npgeneric__": True, b"data": np.float32(2.5).tobytes(), b"dtype": "<f4"}},
        use_bin_type=True,
    )  # fmt: skip
    decoded = unpackb(payload)
    np.testing.assert_array_equal(decoded["a"], np.array([1], np.uint16))
    assert decoded["s"] == np.float32(2.5) and type(decoded["s"]) is np.float32


def test_decoded_arrays_are_read_only_views() -> None:
    back = unpackb(packb(np.zeros(4, np.float32)))
    assert not back.flags.writeable
    back.copy()[0] = 1.0  # a copy is writable


@pytest.mark.parametrize(
    "value",
    [
        np.array([object(), 1], dtype=object),
        np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")]),
        np.complex64(1 + 2j),
    ],
    ids=["object-array", "structured-array", "complex-scalar"],
)
def test_unsafe_or_unsendable_values_are_refused_on_encode(value: object) -> None:
    with pytest.raises(MsgpackNumpyError, match="cannot send"):
        packb({"x": value})


def test_unknown_python_types_are_refused_on_encode() -> None:
    with pytest.raises(MsgpackNumpyError, match="cannot send a value of type set"):
        packb({"x": {1, 2}})


def _array_map(dtype: str, shape: list[int], data: bytes) -> bytes:
    return msgpack.packb(
        {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}, use_bin_type=True
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_array_map("|O", [2], b"\x00" * 16), "refusing numpy dtype"),
        (_array_map("|V8", [1], b"\x00" * 8), "refusing numpy dtype"),
        (_array_map("<f4", [3], b"\x00" * 8), "needs 12 bytes, got 8"),
        (_array_map("<f4", [3], b"\x00" * 16), "needs 12 bytes, got 16"),
        (_array_map("<f4", [-1], b""), "non-negative integers"),
        (_array_map("not-a-dtype", [1], b"\x00"), "unknown numpy dtype"),
        (msgpack.packb({b"__ndarray__": True, b"dtype": "<f4", b"shape": [1]}), "no 'data' field"),
        (b"\xc1\x00\x01", "not a valid msgpack message"),
        (b"\x92\x01", "not a valid msgpack message"),
        (msgpack.packb(1) + msgpack.packb(2), "extra bytes"),
        (b"", "not a valid msgpack message"),
    ],
    ids=["object", "void", "short-data", "long-data", "negative-shape", "bad-dtype", "no-data", "reserved-byte",
         "truncated", "two-messages", "empty"],
)  # fmt: skip
def test_malformed_messages_raise_a_clear_value_error(payload: bytes, message: str) -> None:
    with pytest.raises(MsgpackNumpyError, match=message):
        unpackb(payload)
    assert issubclass(MsgpackNumpyError, ValueError)


def test_decoding_a_non_bytes_value_is_refused() -> None:
    with pytest.raises(MsgpackNumpyError, match="expected bytes, got str"):
        unpackb("text")  # type: ignore[arg-type]
