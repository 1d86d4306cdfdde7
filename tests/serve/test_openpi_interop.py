"""Interoperability with openpi's own client library (the PyPI package `openpi-client` 0.1.2).

openpi-client pins numpy<2 and imports typing_extensions without declaring it, so it lives in its own
small environment, `.venv-openpi`, made by `scripts/setup.sh` (`make test` makes it). The real client
runs there, in a subprocess, against our server running here; values cross between the two codecs
through files, in both directions.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from serve_testutils import DeterministicTestPolicy, make_observation

from xwam.serve.msgpack_numpy import packb, unpackb
from xwam.serve.server import PolicyServer, ServerThread

OPENPI_PYTHON = Path(os.environ.get("XWAM_OPENPI_PYTHON", Path(__file__).resolve().parents[2] / ".venv-openpi"
                                    / "bin" / "python"))

CLIENT = textwrap.dedent(
    """
    import sys
    from openpi_client import msgpack_numpy, websocket_client_policy

    port, requests_path, messages_path, out_path = sys.argv[1:5]
    requests = msgpack_numpy.unpackb(open(requests_path, "rb").read())
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", int(port), api_key="k")
    result = {"metadata": client.get_server_metadata(), "answer": client.infer(requests["good"])}
    try:
        client.infer(requests["bad"])
        result["error"] = None
    except RuntimeError as exc:  # openpi clients raise on a text frame
        result["error"] = str(exc)
    result["again"] = client.infer(requests["good"])
    client._ws.close()  # the openpi client has no close method
    # our encoding -> openpi's decoder -> openpi's encoder, back to us
    messages = open(messages_path, "rb").read().split(b"\\n--xwam--\\n")
    result["reencoded"] = [msgpack_numpy.packb(msgpack_numpy.unpackb(m)) for m in messages]
    open(out_path, "wb").write(msgpack_numpy.packb(result))
    """
)

VALUES = [np.arange(12, dtype="<f4").reshape(3, 4), np.zeros((2, 3, 3), np.uint8), np.array([True, False]),
          np.array(["ab", "c"]), np.int64(5), np.float32(1.5), np.bool_(True)]


@pytest.fixture(scope="module")
def openpi_python() -> Path:
    if not OPENPI_PYTHON.exists():
        pytest.skip(f"no openpi-client environment at {OPENPI_PYTHON.parent.parent}: run scripts/setup.sh (make test)")
    return OPENPI_PYTHON


def test_openpi_client_talks_to_the_xwam_server(openpi_python: Path, tmp_path: Path) -> None:
    policy = DeterministicTestPolicy()
    good, bad = make_observation(3), make_observation(4)
    bad["state"] = bad["state"][:2]
    (tmp_path / "requests").write_bytes(packb({"good": good, "bad": bad}))
    messages = [packb({"x": v, "nested": {"y": v}, "prompt": "p"}) for v in VALUES]
    (tmp_path / "messages").write_bytes(b"\n--xwam--\n".join(messages))
    (tmp_path / "client.py").write_text(CLIENT)
    with ServerThread(PolicyServer(policy, host="127.0.0.1", port=0, api_key="k")) as running:
        proc = subprocess.run([str(openpi_python), str(tmp_path / "client.py"), str(running.port),
                               str(tmp_path / "requests"), str(tmp_path / "messages"), str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = unpackb((tmp_path / "out").read_bytes())
    assert result["metadata"] == policy.metadata
    expected = DeterministicTestPolicy.expected_actions(good["state"], good["prompt"])
    np.testing.assert_array_equal(result["answer"]["actions"], expected)
    assert result["answer"]["server_timing"]["infer_ms"] >= 0
    assert result["error"] is not None and "must have 7 values" in result["error"]
    np.testing.assert_array_equal(result["again"]["actions"], expected)
    # both codecs agree byte for byte, and values survive the round trip with their dtypes
    assert result["reencoded"] == messages
    for value, encoded in zip(VALUES, result["reencoded"]):
        decoded = unpackb(encoded)
        np.testing.assert_array_equal(decoded["x"], value)
        assert np.asarray(decoded["x"]).dtype == np.asarray(value).dtype
