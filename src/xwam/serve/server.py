"""A websocket policy server speaking the openpi protocol.

Protocol (what openpi-style robot and simulator clients expect):

- the client opens ``ws://host:port`` (optionally with ``Authorization: Api-Key <key>``);
- the server sends the policy metadata as one binary msgpack frame;
- per request the client sends one binary msgpack-numpy observation; the server answers one binary
  frame with the policy output (``actions``, horizon x dim, ...) plus ``server_timing`` (ms);
- a request that cannot be answered gets a *text* frame with the reason instead, and the
  connection stays open for the next request;
- plain HTTP ``GET /healthz`` answers ``200 OK``;
- at most ``max_connections`` connections are open (more get HTTP 503) and a connection that sends
  nothing for ``idle_timeout_s`` is closed (code 1001); answers are checked to be finite before they
  are sent (a robot must never receive NaN or inf actions).

Inference runs on one worker thread, off the event loop, so the server keeps reading, answering
health checks and keepalive pings while the model computes. Requests from all connections go
through one FIFO queue (a connection has at most one request in flight, so clients are served in
turn); when the policy has ``infer_batch`` and ``max_batch > 1``, requests that queued up during
the previous inference run together as one batch.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.protocol import State

from xwam.limits import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS
from xwam.serve import msgpack_numpy

__all__ = ["ServablePolicy", "PolicyServer", "ServerThread", "serve_until_signal", "DEFAULT_PORT"]

logger = logging.getLogger("xwam.serve")

DEFAULT_PORT = 8000
DEFAULT_MAX_MESSAGE_BYTES = 32 * 2**20
HEALTH_PATH = "/healthz"
SUMMARY_EVERY_S = 60.0  # the INFO log's one-line summary; every request is logged at DEBUG


@runtime_checkable
class ServablePolicy(Protocol):
    """What the server needs from a policy (``xwam.policy.XWAMPolicy`` is one).

    A policy may also define ``infer_batch(list[dict]) -> list[dict]`` (same order as its input);
    the server uses it to answer requests that arrive together in one model call.
    """

    @property
    def metadata(self) -> dict[str, Any]:
        """msgpack-serialisable description sent on connect (image keys, shapes, action horizon...)."""
        ...

    def validate(self, obs: dict[str, Any]) -> None:
        """Raise ``ValueError`` with a readable message if ``obs`` cannot be served.

        Called on a helper thread, possibly while ``infer`` runs: it must only read.
        """
        ...

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """One observation -> a dict with at least ``actions`` (float32, horizon x dim)."""
        ...


class RequestError(Exception):
    """A request that gets a text frame with this message instead of an answer."""


@dataclass
class _Job:
    """One validated observation waiting for (or going through) inference."""

    obs: dict[str, Any]
    connection: ServerConnection
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    infer_ms: float = 0.0
    batch_size: int = 1


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class PolicyServer:
    """Serve ``policy`` over websockets (see the module docstring for the protocol).

    ``max_message_bytes``: requests larger than this are answered with a text error (the connection
    stays usable); websockets itself drops frames over twice this size before reading them, closing
    that connection with code 1009, so a client cannot make the server buffer unbounded data.
    ``api_key``: when set, the websocket handshake needs ``Authorization: Api-Key <key>`` (HTTP 401
    otherwise); ``/healthz`` stays open so that load balancers can probe it.
    ``max_batch``/``batch_wait_ms``: with a policy that has ``infer_batch``, run up to ``max_batch``
    queued requests together, waiting up to ``batch_wait_ms`` after the first for others to arrive
    (clients answered together tend to send their next requests a few hundred microseconds apart).
    """

    def __init__(
        self,
        policy: ServablePolicy,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        api_key: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch: int = 1,
        batch_wait_ms: float = 0.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        for name in ("metadata", "validate", "infer"):
            if not hasattr(policy, name):
                raise TypeError(f"{type(policy).__name__} cannot be served: it has no '{name}'")
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive (or None: never), got {idle_timeout_s}")
        if api_key is not None and not api_key.strip():
            raise ValueError("the API key is empty")
        self.policy = policy
        self.host = host
        self.port = port  # replaced by the bound port once serving (port 0 picks a free one)
        self.api_key = api_key
        self.max_message_bytes = int(max_message_bytes)
        self.max_batch = int(max_batch)
        self.batch_wait_s = float(batch_wait_ms) / 1000.0 if max_batch > 1 else 0.0
        self.max_connections = int(max_connections)
        self.idle_timeout_s = idle_timeout_s
        self.connections = 0
        self._summary = {"since": time.monotonic(), "served": 0, "refused": 0, "infer_ms": 0.0}
        self._infer_batch = getattr(policy, "infer_batch", None) if max_batch > 1 else None
        try:
            self._metadata_frame = msgpack_numpy.packb(dict(policy.metadata))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the policy metadata cannot be sent as msgpack: {exc}") from exc
        self._queue: asyncio.Queue[_Job] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.requests_served = 0
        self.requests_refused = 0
        self.shutdown_timeout_s = 120.0  # longest wait for answers in progress when stopping
        self._active = 0
        self._stopping = False

    # ---- HTTP layer ----------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Health check and API key, before the websocket opens (so a bad key gets a plain 401)."""
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.connections >= self.max_connections:
            logger.warning("refused %s: %d connections open", connection.remote_address, self.connections)
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"server busy: {self.connections} connections open, the limit is {self.max_connections} "
                "(xwam serve --max-connections)\n",
            )
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Api-Key {self.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                logger.warning(
                    "rejected %s: %s API key", connection.remote_address, "wrong" if given else "missing"
                )
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n",
                )
        return None

    # ---- per connection ------------------------------------------------------------------------
    def _decode(self, message: bytes) -> tuple[dict[str, Any], float, float]:
        """Decode and validate one request (runs on a helper thread: big frames take milliseconds)."""
        t0 = time.perf_counter()
        try:
            obs = msgpack_numpy.unpackb(message)
        except ValueError as exc:
            raise RequestError(f"request is not a msgpack-numpy message: {exc}") from exc
        if not isinstance(obs, dict):
            raise RequestError(
                f"request must be a msgpack map of observation fields, got {type(obs).__name__}"
            )
        t1 = time.perf_counter()
        try:
            self.policy.validate(obs)
        except ValueError as exc:
            raise RequestError(f"invalid observation: {exc}") from exc
        return obs, _ms(t1 - t0), _ms(time.perf_counter() - t1)

    async def _refuse(self, connection: ServerConnection, client: str, message: str) -> None:
        self.requests_refused += 1
        self._summary["refused"] += 1
        logger.debug("%s refused: %s", client, message)
        await connection.send(message)  # a text frame: openpi clients raise it as an error

    async def _handle(self, connection: ServerConnection) -> None:
        host, port = connection.remote_address[:2]
        client = f"{host}:{port}"
        self.connections += 1
        logger.info("%s connected (%d open)", client, self.connections)
        try:
            await connection.send(self._metadata_frame)
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        message = await connection.recv()
                except TimeoutError:
                    logger.info("%s idle for %g s: closing", client, self.idle_timeout_s)
                    await connection.close(1001, f"idle for {self.idle_timeout_s:g} s")
                    return
                self._active += 1  # counted so that shutdown can wait for answers in progress
                try:
                    await self._answer(connection, client, message)
                finally:
                    self._active -= 1
        except websockets.ConnectionClosedOK:
            logger.info("%s disconnected", client)
        except websockets.ConnectionClosed as exc:
            # e.g. a frame over the transport limit: websockets closes with 1009 and a reason.
            logger.info("%s connection lost (%s)", client, exc)
        finally:
            self.connections -= 1

    async def _answer(self, connection: ServerConnection, client: str, message: str | bytes) -> None:
        """Answer one request: a binary frame with the policy output, or a text frame saying why not."""
        received = time.perf_counter()
        if self._stopping:
            await self._refuse(connection, client, "server is shutting down")
            return
        if isinstance(message, str):
            await self._refuse(
                connection,
                client,
                "request must be a binary frame holding a msgpack-numpy observation, got a text frame",
            )
            return
        if len(message) > self.max_message_bytes:
            await self._refuse(
                connection,
                client,
                f"request of {len(message)} bytes exceeds the server limit of "
                f"{self.max_message_bytes} bytes (xwam serve --max-message-mb)",
            )
            return
        try:
            obs, decode_ms, validate_ms = await asyncio.to_thread(self._decode, message)
            job = await self._submit(obs, connection)
            output = await job.future
            timing = {
                "decode_ms": decode_ms,
                "validate_ms": validate_ms,
                "queue_ms": _ms(job.started - job.enqueued),
                "infer_ms": job.infer_ms,
                "batch_size": job.batch_size,
                "total_ms": _ms(time.perf_counter() - received),
            }
            try:
                frame = msgpack_numpy.packb({**output, "server_timing": timing})
            except ValueError as exc:
                raise RequestError(f"inference failed: the policy output cannot be sent: {exc}") from exc
        except RequestError as exc:
            await self._refuse(connection, client, str(exc))
            return
        await connection.send(frame)
        self.requests_served += 1
        self._summary["served"] += 1
        self._summary["infer_ms"] += job.infer_ms
        logger.debug(
            "%s infer %.1f ms (queue %.1f, total %.1f, batch %d)",
            client,
            job.infer_ms,
            timing["queue_ms"],
            timing["total_ms"],
            job.batch_size,
        )
        self._log_summary()

    def _log_summary(self) -> None:
        """At most once a minute, one INFO line: requests answered and refused, mean inference time."""
        now, summary = time.monotonic(), self._summary
        if now - summary["since"] < SUMMARY_EVERY_S:
            return
        served = summary["served"]
        logger.info("last %.0f s: %d answered (mean inference %.1f ms), %d refused, %d connections open",
                    now - summary["since"], served, summary["infer_ms"] / max(served, 1), summary["refused"],
                    self.connections)
        self._summary = {"since": now, "served": 0, "refused": 0, "infer_ms": 0.0}

    # ---- inference queue -----------------------------------------------------------------------
    async def _submit(self, obs: dict[str, Any], connection: ServerConnection) -> _Job:
        if self._queue is None or self._stopping:  # _stopping may have been set while decoding
            raise RequestError("server is shutting down")
        job = _Job(obs=obs, connection=connection, future=asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return job

    def _run_batch(
        self, observations: list[dict[str, Any]]
    ) -> list[tuple[dict[str, Any] | Exception, float]]:
        """On the inference thread: (output or exception, infer ms) per observation, in order."""
        if len(observations) > 1 and self._infer_batch is not None:
            t0 = time.perf_counter()
            try:
                outputs = list(self._infer_batch(observations))
                if len(outputs) != len(observations):
                    raise RuntimeError(
                        f"infer_batch returned {len(outputs)} outputs for {len(observations)} inputs"
                    )
                elapsed = _ms(time.perf_counter() - t0)
                return [(self._check_output(out), elapsed) for out in outputs]
            except Exception:  # isolate the failing request: run them one at a time
                logger.exception(
                    "infer_batch failed on %d requests; retrying them one by one", len(observations)
                )
        results: list[tuple[dict[str, Any] | Exception, float]] = []
        for obs in observations:
            t0 = time.perf_counter()
            try:
                out: dict[str, Any] | Exception = self._check_output(self.policy.infer(obs))
            except ValueError as exc:  # the policy's verdict on a bad observation: no traceback
                out = exc
            except Exception as exc:  # a model error answers this request, the server keeps going
                logger.exception("inference failed")
                out = exc
            results.append((out, _ms(time.perf_counter() - t0)))
        return results

    @staticmethod
    def _check_output(out: Any) -> dict[str, Any] | Exception:
        """The policy output, or the error to answer instead: no actions, or any non-finite number."""
        if not isinstance(out, dict) or "actions" not in out:
            return RuntimeError(f"the policy returned {type(out).__name__} without 'actions'")
        for key, value in out.items():
            if isinstance(value, np.ndarray | float) and np.asarray(value).dtype.kind == "f" \
                    and not np.isfinite(value).all():
                return RuntimeError(f"the policy produced non-finite values (NaN or inf) in {key!r}; nothing "
                                    "was sent to the robot (are the observation values far outside the "
                                    "training data?)")
        return out

    async def _dispatch(self) -> None:
        """Take requests in arrival order; batch those waiting when the policy can batch."""
        assert self._queue is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            if self.batch_wait_s > 0:
                # Polling, not a cancelled Queue.get(), so that no request can be dropped on timeout.
                until = loop.time() + self.batch_wait_s
                while self._queue.qsize() + 1 < self.max_batch and loop.time() < until:
                    await asyncio.sleep(min(0.0005, max(0.0, until - loop.time())))
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Skip work for clients that hung up while waiting.
            live = []
            for job in batch:
                if job.connection.state is State.OPEN:
                    live.append(job)
                elif not job.future.done():
                    job.future.set_exception(RequestError("connection closed before inference"))
            if not live:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [j.obs for j in live])
            except Exception as exc:  # never let the dispatcher die: later requests would hang
                logger.exception("inference worker failed")
                results = [(exc, 0.0)] * len(live)
            for job, (out, infer_ms) in zip(live, results):
                job.started, job.infer_ms, job.batch_size = started, infer_ms, len(live)
                if job.future.done():
                    continue
                if isinstance(out, ValueError):
                    job.future.set_exception(RequestError(f"invalid observation: {out}"))
                elif isinstance(out, Exception):
                    job.future.set_exception(RequestError(f"inference failed: {type(out).__name__}: {out}"))
                else:
                    job.future.set_result(out)

    def _fail_pending(self, reason: str) -> None:
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RequestError(reason))

    # ---- lifecycle -----------------------------------------------------------------------------
    async def serve(
        self, stop: asyncio.Event | None = None, on_ready: Callable[[int], None] | None = None
    ) -> None:
        """Serve until ``stop`` is set (forever if None); ``on_ready(port)`` once listening."""
        stop = stop or asyncio.Event()
        self._stopping = False
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xwam-infer")
        dispatcher = asyncio.create_task(self._dispatch(), name="xwam-dispatch")
        try:
            ws_server = serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._process_request,
                max_size=2 * self.max_message_bytes,
                compression=None,  # images barely compress, and deflate would cost CPU per frame
            )
            try:
                await ws_server  # binds the socket
            except OSError as exc:
                raise RuntimeError(
                    f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
                ) from exc
            async with ws_server:
                self.port = int(next(iter(ws_server.sockets)).getsockname()[1])
                logger.info(
                    "serving %s on ws://%s:%d (healthz at %s, api key %s, max batch %d)",
                    type(self.policy).__name__,
                    self.host,
                    self.port,
                    HEALTH_PATH,
                    "required" if self.api_key else "off",
                    self.max_batch,
                )
                if on_ready is not None:
                    on_ready(self.port)
                await stop.wait()
                # Graceful: refuse what is queued, let the inference in progress finish and its
                # answers go out, then close the connections (code 1001, going away).
                logger.info("shutting down: answering requests in progress, refusing new ones")
                self._stopping = True
                self._fail_pending("server is shutting down")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.shutdown_timeout_s
                while self._active and loop.time() < deadline:
                    await asyncio.sleep(0.01)
        finally:
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)
            self._fail_pending("server is shutting down")
            executor, self._executor = self._executor, None
            # Let an inference in progress finish (its thread cannot be interrupted).
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
            self._queue = None
            logger.info(
                "server stopped (%d answered, %d refused)", self.requests_served, self.requests_refused
            )


def serve_until_signal(server: PolicyServer) -> None:
    """Run ``server`` in this (main) thread until SIGINT or SIGTERM, then shut down gracefully.

    A second signal exits at once, without waiting for the inference in progress.
    """
    import os
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def force_exit() -> None:  # an inference that never returns must not make the server unkillable
            logger.warning("second signal: exiting without waiting for the inference in progress")
            os._exit(130)

        def graceful() -> None:
            logger.info("signal received: finishing the inference in progress, then exiting")
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, force_exit)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, graceful)
        await server.serve(stop)

    asyncio.run(main())


class ServerThread:
    """Run a :class:`PolicyServer` on a background thread (tests, benchmarks, notebooks).

    >>> with ServerThread(PolicyServer(policy, port=0)) as running:
    ...     client = PolicyClient("127.0.0.1", running.port)
    """

    def __init__(self, server: PolicyServer, start_timeout: float = 30.0, stop_timeout: float = 60.0) -> None:
        self.server = server
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="xwam-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self._stop, on_ready=lambda _port: self._ready.set())

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self.start_timeout):
            raise RuntimeError(f"the policy server did not start within {self.start_timeout:.0f} s")
        if self._error is not None:
            raise RuntimeError(f"the policy server failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.stop_timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the policy server did not stop within {self.stop_timeout:.0f} s")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
