"""The server's limits: no non-finite answer ever sent, bounded connections, idle connections closed."""

from __future__ import annotations

import time

import pytest
import websockets
from serve_testutils import NAN_PROMPT, DeterministicTestPolicy, make_observation
from websockets.sync.client import connect

from xwam.serve.client import PolicyClient
from xwam.serve.server import PolicyServer, ServerThread

HOST = "127.0.0.1"


def test_non_finite_actions_are_never_sent_and_serving_continues() -> None:
    with ServerThread(PolicyServer(DeterministicTestPolicy(), host=HOST, port=0)) as running:
        with PolicyClient(HOST, running.port, timeout=30) as client:
            with pytest.raises(RuntimeError, match="non-finite values .* in 'actions'; nothing was sent"):
                client.infer(make_observation(1, prompt=NAN_PROMPT))
            good = make_observation(2)
            assert (client.infer(good)["actions"] == DeterministicTestPolicy.expected_actions(
                good["state"], good["prompt"])).all()


def test_connections_beyond_the_limit_get_503_and_a_freed_slot_is_reused() -> None:
    server = PolicyServer(DeterministicTestPolicy(), host=HOST, port=0, max_connections=2)
    with ServerThread(server) as running:
        url = f"ws://{HOST}:{running.port}"
        first, second = connect(url, open_timeout=10), connect(url, open_timeout=10)
        with pytest.raises(websockets.InvalidStatus) as refused:
            connect(url, open_timeout=10)
        assert refused.value.response.status_code == 503
        assert b"the limit is 2" in refused.value.response.body
        first.close()
        deadline = time.monotonic() + 10
        while server.connections > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with PolicyClient(HOST, running.port, timeout=30) as client:  # the freed slot serves again
            client.infer(make_observation(3))
        second.close()


def test_an_idle_connection_is_closed() -> None:
    server = PolicyServer(DeterministicTestPolicy(), host=HOST, port=0, idle_timeout_s=0.3)
    with ServerThread(server) as running:
        connection = connect(f"ws://{HOST}:{running.port}", open_timeout=10)
        connection.recv(timeout=10)  # metadata
        with pytest.raises(websockets.ConnectionClosed) as closed:
            connection.recv(timeout=10)
        assert closed.value.rcvd.code == 1001 and "idle" in closed.value.rcvd.reason
        deadline = time.monotonic() + 10
        while server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.connections == 0


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        PolicyServer(DeterministicTestPolicy(), max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        PolicyServer(DeterministicTestPolicy(), idle_timeout_s=0)
