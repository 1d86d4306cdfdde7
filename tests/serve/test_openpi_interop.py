"""Interoperability with openpi's own client library (the PyPI package `openpi-client`), when installed.

Skipped where the package is absent: the byte layout itself is also pinned by test_msgpack_numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
from serve_testutils import DeterministicTestPolicy, make_observation

from xwam.serve.msgpack_numpy import packb, unpackb
from xwam.serve.server import PolicyServer, ServerThread

websocket_client_policy = pytest.importorskip("openpi_client.websocket_client_policy")
openpi_msgpack = pytest.importorskip("openpi_client.msgpack_numpy")


def test_openpi_client_talks_to_the_xwam_server() -> None:
    policy = DeterministicTestPolicy()
    with ServerThread(PolicyServer(policy, host="127.0.0.1", port=0, api_key="k")) as running:
        client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", running.port, api_key="k")
        try:
            assert client.get_server_metadata() == policy.metadata
            obs = make_observation(3)
            answer = client.infer(obs)
            np.testing.assert_array_equal(
                answer["actions"], DeterministicTestPolicy.expected_actions(obs["state"], obs["prompt"])
            )
            assert answer["server_timing"]["infer_ms"] >= 0
            bad = make_observation(4)
            bad["state"] = bad["state"][:2]
            with pytest.raises(RuntimeError, match="must have 7 values"):
                client.infer(bad)  # openpi clients raise on a text frame
            np.testing.assert_array_equal(client.infer(obs)["actions"], answer["actions"])
        finally:
            client._ws.close()  # the openpi client has no close method


@pytest.mark.parametrize(
    "value",
    [np.arange(12, dtype="<f4").reshape(3, 4), np.zeros((2, 3, 3), np.uint8), np.array([True, False]),
     np.array(["ab", "c"]), np.int64(5), np.float32(1.5), np.bool_(True)],
)  # fmt: skip
def test_codecs_agree_in_both_directions(value: object) -> None:
    message = {"x": value, "nested": {"y": value}, "prompt": "p"}
    for encoded in (packb(message), openpi_msgpack.packb(message)):
        for decode in (unpackb, openpi_msgpack.unpackb):
            decoded = decode(encoded)
            np.testing.assert_array_equal(decoded["x"], value)
            np.testing.assert_array_equal(decoded["nested"]["y"], value)
            assert np.asarray(decoded["x"]).dtype == np.asarray(value).dtype
    assert packb(message) == openpi_msgpack.packb(message)  # byte for byte
