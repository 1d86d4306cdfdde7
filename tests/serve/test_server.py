"""Policy server and client over loopback websockets, with the deterministic test double."""

from __future__ import annotations

import http.client
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import websockets
from serve_testutils import (
    FAIL_PROMPT,
    HORIZON,
    IMAGE_KEYS,
    IMAGE_SHAPE,
    STATE_DIM,
    DeterministicTestPolicy,
    make_observation,
)
from websockets.sync.client import connect

from xwam.serve.client import PolicyClient
from xwam.serve.msgpack_numpy import packb, unpackb
from xwam.serve.server import PolicyServer, ServerThread

HOST = "127.0.0.1"
TIMING_KEYS = {"decode_ms", "validate_ms", "queue_ms", "infer_ms", "batch_size", "total_ms"}


@pytest.fixture
def policy() -> DeterministicTestPolicy:
    return DeterministicTestPolicy()


@pytest.fixture
def running(policy: DeterministicTestPolicy) -> Iterator[ServerThread]:
    with ServerThread(PolicyServer(policy, host=HOST, port=0, max_message_bytes=256 * 1024)) as thread:
        yield thread


def _raw(port: int, **kwargs: Any) -> websockets.sync.client.ClientConnection:
    """A bare connection, to send frames no well-behaved client would; metadata already read."""
    connection = connect(f"ws://{HOST}:{port}", open_timeout=10, max_size=None, **kwargs)
    assert isinstance(connection.recv(timeout=10), bytes)
    return connection


def _assert_answers(answer: Any, obs: dict[str, Any]) -> None:
    assert isinstance(answer, dict), answer
    expected = DeterministicTestPolicy.expected_actions(obs["state"], obs["prompt"])
    assert answer["actions"].dtype == np.float32 and answer["actions"].shape == (HORIZON, 3)
    np.testing.assert_array_equal(answer["actions"], expected)
    assert TIMING_KEYS <= set(answer["server_timing"])


def test_round_trip_metadata_and_timing(running: ServerThread, policy: DeterministicTestPolicy) -> None:
    with PolicyClient(HOST, running.port, timeout=10) as client:
        assert client.metadata == policy.metadata
        assert client.metadata["image_keys"] == list(IMAGE_KEYS)
        for seed in range(3):
            obs = make_observation(seed)
            answer = client.infer(obs)
            _assert_answers(answer, obs)
            timing = answer["server_timing"]
            assert all(timing[k] >= 0 for k in TIMING_KEYS)
            assert timing["total_ms"] >= timing["infer_ms"] and timing["batch_size"] == 1
            assert answer["timing"] == {"model_ms": 0.0}  # the policy's own output passes through
            np.testing.assert_array_equal(answer["states"][0], obs["state"])
    assert running.server.requests_served == 3


def test_nested_observation_keys_are_accepted(running: ServerThread) -> None:
    flat = make_observation(4)
    nested = {
        "observation": {"images": {key.rsplit("/", 1)[1]: flat[key] for key in IMAGE_KEYS}},
        "state": flat["state"],
        "prompt": flat["prompt"],
    }
    with PolicyClient(HOST, running.port, timeout=10) as client:
        _assert_answers(client.infer(nested), flat)


def _get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_healthz_answers_ok(running: ServerThread) -> None:
    assert _get(running.port, "/healthz") == (200, "OK\n")


def test_api_key_is_required_when_set(policy: DeterministicTestPolicy) -> None:
    server = PolicyServer(policy, host=HOST, port=0, api_key="s3cret")
    with ServerThread(server) as running:
        for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": "s3cret"}):
            with pytest.raises(websockets.InvalidStatus) as info:
                connect(f"ws://{HOST}:{running.port}", open_timeout=10, additional_headers=headers)
            assert info.value.response.status_code == 401
        for key in (None, "wrong"):
            with pytest.raises(RuntimeError, match="rejected the API key"):
                PolicyClient(HOST, running.port, api_key=key, timeout=10, retries=0)
        assert _get(running.port, "/healthz")[0] == 200  # probes need no key
        with PolicyClient(HOST, running.port, api_key="s3cret", timeout=10) as client:
            obs = make_observation(1)
            _assert_answers(client.infer(obs), obs)


def _bad(**changes: Any) -> dict[str, Any]:
    obs = make_observation(2)
    for key, value in changes.items():
        key = key.replace("__", "/")
        if value is None:
            del obs[key]
        else:
            obs[key] = value
    return obs


BAD_REQUESTS: dict[str, tuple[bytes | str, str]] = {
    "missing-camera": (
        packb(_bad(observation__images__wrist=None)),
        "missing camera image 'observation/images/wrist'",
    ),
    "wrong-image-shape": (packb(_bad(observation__images__front=np.zeros((24, 32, 4), np.uint8))), "HxWx3"),
    "wrong-image-size": (
        packb(_bad(observation__images__front=np.zeros((48, 64, 3), np.uint8))),
        "(24, 32, 3)",
    ),
    "wrong-image-dtype": (packb(_bad(observation__images__front=np.zeros(IMAGE_SHAPE, np.float32))), "uint8"),
    "nan-state": (packb(_bad(state=np.array([0, 1, np.nan, 3, 4, 5, 6], np.float32))), "NaN"),
    "short-state": (packb(_bad(state=np.zeros(STATE_DIM - 2, np.float32))), f"must have {STATE_DIM} values"),
    "missing-state": (packb(_bad(state=None)), "missing 'state'"),
    "prompt-not-string": (packb(_bad(prompt=42)), "'prompt' must be a string, got int"),
    "prompt-as-array": (packb(_bad(prompt=np.zeros(3))), "'prompt' must be a string"),
    "garbage-bytes": (b"\xc1\xc1 definitely not msgpack", "not a msgpack-numpy message"),
    "not-a-map": (msgpack.packb([1, 2, 3]), "must be a msgpack map"),
    "object-dtype": (
        msgpack.packb({"state": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}}),
        "refusing numpy dtype",
    ),
    "text-frame": ("please give me actions", "must be a binary frame"),
    "oversized": (
        packb({"blob": np.zeros(300 * 1024, np.uint8)}),
        "exceeds the server limit of 262144 bytes",
    ),
    "model-failure": (
        packb(_bad(prompt=FAIL_PROMPT)),
        "inference failed: RuntimeError: simulated model failure",
    ),
}


# Bad observations a PolicyClient user could send (the rest needs a raw connection).
CLIENT_EXPRESSIBLE = {
    "missing-camera", "wrong-image-shape", "wrong-image-size", "wrong-image-dtype", "nan-state", "short-state",
    "missing-state", "prompt-not-string", "prompt-as-array", "model-failure",
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_a_text_error_and_serving_continues(running: ServerThread, name: str) -> None:
    frame, expected = BAD_REQUESTS[name]
    good = make_observation(7)
    with _raw(running.port) as connection:
        connection.send(frame)
        reply = connection.recv(timeout=10)
        assert isinstance(reply, str), f"{name}: expected a text error frame, got {type(reply).__name__}"
        assert expected in reply, reply
        connection.send(packb(good))  # the same connection still works
        _assert_answers(unpackb(connection.recv(timeout=10)), good)
    with PolicyClient(HOST, running.port, timeout=10) as client:  # and so does a new one
        if name in CLIENT_EXPRESSIBLE:  # the client raises the server's text as a RuntimeError
            with pytest.raises(RuntimeError, match=re.escape(expected)):
                client.infer(unpackb(frame))
        _assert_answers(client.infer(good), good)
    assert running.server.requests_refused >= 1


def test_frame_over_the_transport_limit_closes_only_that_connection(running: ServerThread) -> None:
    good = make_observation(3)
    with PolicyClient(HOST, running.port, timeout=10, retries=0) as bystander:
        with _raw(running.port) as connection:
            connection.send(packb({"blob": np.zeros(600 * 1024, np.uint8)}))  # > 2 x 256 KiB
            with pytest.raises(websockets.ConnectionClosedError) as info:
                connection.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        _assert_answers(bystander.infer(good), good)
        with pytest.raises(RuntimeError, match="too big"):
            bystander.infer({"blob": np.zeros(600 * 1024, np.uint8)})
    with PolicyClient(HOST, running.port, timeout=10) as client:
        _assert_answers(client.infer(good), good)


def test_openpi_style_client_frames_are_understood(running: ServerThread) -> None:
    """A request built the way openpi's msgpack_numpy builds it (tuples, byte-string keys)."""
    obs = make_observation(5)

    def openpi_style(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return {
                b"__ndarray__": True,
                b"data": value.tobytes(),
                b"dtype": value.dtype.str,
                b"shape": value.shape,
            }
        return value

    with _raw(running.port) as connection:
        connection.send(msgpack.packb(obs, default=openpi_style))
        reply = connection.recv(timeout=10)
        assert isinstance(reply, bytes)
        answer = msgpack.unpackb(reply)  # decodes with plain msgpack: arrays are the documented maps
        actions = answer["actions"]
        assert actions[b"dtype"] == "<f4" and actions[b"shape"] == [HORIZON, 3]
        decoded = np.frombuffer(actions[b"data"], np.float32).reshape(HORIZON, 3)
        np.testing.assert_array_equal(
            decoded, DeterministicTestPolicy.expected_actions(obs["state"], obs["prompt"])
        )
        assert answer["server_timing"]["infer_ms"] >= 0


def _concurrent(port: int, clients: int, requests: int) -> tuple[list[str], list[dict[str, Any]]]:
    """``clients`` threads, each with its own client and own observations; (errors, timings)."""
    errors: list[str] = []
    timings: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients, timeout=30)

    def work(index: int) -> None:
        try:
            with PolicyClient(HOST, port, timeout=30) as client:
                start.wait()
                for step in range(requests):
                    obs = make_observation(100 * index + step, prompt="p" * index)
                    answer = client.infer(obs)
                    _assert_answers(answer, obs)
                    with lock:
                        timings.append(answer["server_timing"])
        except Exception as exc:  # collected and asserted on the main thread
            with lock:
                errors.append(f"client {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    return errors, timings


def test_concurrent_clients_each_get_their_own_answers() -> None:
    policy = DeterministicTestPolicy(infer_delay_s=0.005)
    with ServerThread(PolicyServer(policy, host=HOST, port=0)) as running:
        errors, timings = _concurrent(running.port, clients=8, requests=5)
    assert not errors, errors
    assert len(timings) == 40 and policy.calls == 40
    assert set(policy.batch_sizes) == {1}  # no infer_batch: one at a time
    assert any(t["queue_ms"] > 0 for t in timings)  # they really had to wait in line


def test_concurrent_requests_are_micro_batched() -> None:
    policy = DeterministicTestPolicy(infer_delay_s=0.03, batching=True)
    with ServerThread(PolicyServer(policy, host=HOST, port=0, max_batch=4)) as running:
        errors, timings = _concurrent(running.port, clients=8, requests=4)
    assert not errors, errors
    assert policy.calls == 32
    assert max(policy.batch_sizes) > 1 and max(policy.batch_sizes) <= 4
    assert max(t["batch_size"] for t in timings) > 1


def test_batch_wait_lets_a_batch_fill_up() -> None:
    policy = DeterministicTestPolicy(infer_delay_s=0.01, batching=True)
    server = PolicyServer(policy, host=HOST, port=0, max_batch=4, batch_wait_ms=200)
    with ServerThread(server) as running:
        errors, _ = _concurrent(running.port, clients=4, requests=3)
    assert not errors, errors
    assert policy.calls == 12
    assert sum(policy.batch_sizes) == 12 and max(policy.batch_sizes) == 4
    assert len(policy.batch_sizes) <= 6  # mostly full batches (without waiting: alternating 1 and 3)


def test_a_failing_request_in_a_batch_only_fails_itself() -> None:
    policy = DeterministicTestPolicy(infer_delay_s=0.1, batching=True)
    with ServerThread(PolicyServer(policy, host=HOST, port=0, max_batch=8)) as running:
        connections = [_raw(running.port) for _ in range(4)]
        try:
            observations = [make_observation(i, prompt=FAIL_PROMPT if i == 2 else "go") for i in range(4)]
            for connection, obs in zip(connections, observations):
                connection.send(packb(obs))
            replies = [connection.recv(timeout=10) for connection in connections]
        finally:
            for connection in connections:
                connection.close()
    assert max(policy.batch_sizes) > 1  # the three queued behind the first ran as one batch
    assert isinstance(replies[2], str) and "simulated model failure" in replies[2]
    for i in (0, 1, 3):
        _assert_answers(unpackb(replies[i]), observations[i])


def test_client_reconnects_after_a_server_restart(policy: DeterministicTestPolicy) -> None:
    first = ServerThread(PolicyServer(policy, host=HOST, port=0)).start()
    port = first.port
    client = PolicyClient(HOST, port, timeout=10, retries=20, retry_interval=0.1)
    try:
        obs = make_observation(6)
        _assert_answers(client.infer(obs), obs)
        first.stop()
        with ServerThread(PolicyServer(policy, host=HOST, port=port)):
            _assert_answers(client.infer(obs), obs)  # reconnects and sends again
    finally:
        client.close()


def test_shutdown_answers_the_request_in_progress_and_refuses_queued_ones() -> None:
    policy = DeterministicTestPolicy(infer_delay_s=0.5)
    running = ServerThread(PolicyServer(policy, host=HOST, port=0)).start()
    first, second = _raw(running.port), _raw(running.port)
    try:
        obs = make_observation(8)
        first.send(packb(obs))
        assert policy.started.wait(10)
        second.send(packb(make_observation(9)))  # queued behind the first
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        _assert_answers(unpackb(first.recv(timeout=10)), obs)
        assert second.recv(timeout=10) == "server is shutting down"
        stopper.join(30)
        assert not stopper.is_alive()
        with pytest.raises(websockets.ConnectionClosedOK) as info:
            first.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001  # going away
    finally:
        first.close()
        second.close()
        running.stop()
    assert policy.calls == 1


def test_client_gives_up_cleanly_when_nothing_listens() -> None:
    with ServerThread(PolicyServer(DeterministicTestPolicy(), host=HOST, port=0)) as running:
        port = running.port  # a port that was free a moment ago and is closed again below
    with pytest.raises(RuntimeError, match=r"cannot connect to the policy server .* after 2 attempts"):
        PolicyClient(HOST, port, timeout=5, retries=1, retry_interval=0.05)


def test_a_busy_port_is_reported_clearly(running: ServerThread, policy: DeterministicTestPolicy) -> None:
    with pytest.raises(RuntimeError, match=f"cannot listen on {HOST}:{running.port}"):
        ServerThread(PolicyServer(policy, host=HOST, port=running.port)).start()
    assert _get(running.port, "/healthz")[0] == 200  # the first server is unaffected


def test_server_rejects_bad_settings(policy: DeterministicTestPolicy) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        PolicyServer(policy, max_batch=0)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        PolicyServer(policy, max_batch=2, batch_wait_ms=-1)
    with pytest.raises(ValueError, match="API key is empty"):
        PolicyServer(policy, api_key=" ")

    class Unsendable(DeterministicTestPolicy):
        @property
        def metadata(self) -> dict[str, Any]:
            return {"bad": {1, 2}}

    with pytest.raises(ValueError, match="metadata cannot be sent"):
        PolicyServer(Unsendable())


SERVER_SCRIPT = """
import logging, sys
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level="INFO")
from serve_testutils import DeterministicTestPolicy
from xwam.serve.server import PolicyServer, serve_until_signal
serve_until_signal(PolicyServer(DeterministicTestPolicy(infer_delay_s=float(sys.argv[2])), port=0))
"""


def _start_server_process(infer_delay_s: float) -> tuple[subprocess.Popen, int, queue.Queue]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, str(Path(__file__).parent), str(infer_delay_s)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            match = re.search(r"on ws://127\.0\.0\.1:(\d+)", lines.get(timeout=1))
        except queue.Empty:
            continue
        if match:
            return process, int(match.group(1)), lines
    process.kill()
    raise AssertionError("the server process did not start")


def test_sigterm_stops_gracefully_and_a_second_signal_forces_exit() -> None:
    process, port, _ = _start_server_process(infer_delay_s=0.0)
    try:
        with PolicyClient(HOST, port, timeout=10) as client:
            _assert_answers(client.infer(make_observation(1)), make_observation(1))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    process, port, _ = _start_server_process(infer_delay_s=60.0)  # an inference that will not end soon
    try:
        with _raw(port) as connection:
            connection.send(packb(make_observation(2)))
            time.sleep(0.5)  # let it reach the model
            process.send_signal(signal.SIGINT)
            time.sleep(0.5)
            assert process.poll() is None  # still waiting for the inference in progress
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
