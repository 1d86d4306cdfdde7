"""A thin synchronous client for an xwam (or any openpi-protocol) policy server.

For robot code: ``PolicyClient(host, port).infer(obs)["actions"]``. It reconnects by itself when
the connection drops (server restart, network blip) and raises ``RuntimeError`` with the server's
own words when a request is refused.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import websockets
from websockets.frames import CloseCode
from websockets.sync.client import ClientConnection, connect

from xwam.serve import msgpack_numpy

__all__ = ["PolicyClient"]

logger = logging.getLogger("xwam.serve.client")


class PolicyClient:
    """Connect to a policy server; ``.metadata`` is what it sent on connect.

    ``timeout``: seconds to wait for one answer (and for each connection attempt).
    ``retries``: reconnection attempts after a failed connect or a dropped connection, spaced by
    ``retry_interval`` seconds. A request whose connection drops is sent again once reconnected
    (observations are answered without server-side state, so a repeat is harmless).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        retry_interval: float = 0.5,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if ":" in host and not host.startswith("["):  # an IPv6 literal needs brackets in a URI
            host = f"[{host}]"
        self.uri = f"ws://{host}:{port}"
        self.api_key = api_key
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.retry_interval = float(retry_interval)
        self._connection: ClientConnection | None = None
        self.metadata: dict[str, Any] = {}
        self._connect()

    # ---- connection ----------------------------------------------------------------------------
    def _open(self) -> None:
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        connection = connect(
            self.uri,
            additional_headers=headers,
            open_timeout=self.timeout,
            max_size=None,  # answers may carry predicted video as well as actions
            compression=None,
        )
        try:
            first = connection.recv(timeout=self.timeout)
        except BaseException:
            connection.close()
            raise
        if isinstance(first, str):
            connection.close()
            raise RuntimeError(f"policy server at {self.uri} refused the connection: {first}")
        try:
            metadata = msgpack_numpy.unpackb(first)
        except ValueError as exc:
            connection.close()
            raise RuntimeError(f"{self.uri} does not speak the policy protocol: {exc}") from exc
        if not isinstance(metadata, dict):
            connection.close()
            raise RuntimeError(f"policy server at {self.uri} sent metadata of type {type(metadata).__name__}")
        self._connection, self.metadata = connection, metadata

    def _connect(self) -> None:
        for attempt in range(self.retries + 1):
            try:
                self._open()
                return
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
                if status == 401:
                    raise RuntimeError(f"policy server at {self.uri} rejected the API key: {body}") from exc
                error: Exception = RuntimeError(f"HTTP {status} {body}".strip())
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
                error = exc
            if attempt < self.retries:
                logger.info("cannot reach %s (%s); retrying in %.1f s", self.uri, error, self.retry_interval)
                time.sleep(self.retry_interval)
        raise RuntimeError(
            f"cannot connect to the policy server at {self.uri} after {self.retries + 1} attempts: {error}"
        )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests ------------------------------------------------------------------------------
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Send one observation; return the server's answer (``actions``, ``server_timing``...)."""
        frame = msgpack_numpy.packb(obs)
        for attempt in range(self.retries + 1):
            if self._connection is None:
                self._connect()
            assert self._connection is not None
            try:
                self._connection.send(frame)
                answer = self._connection.recv(timeout=self.timeout)
            except TimeoutError as exc:
                # The answer may still come later and would be mistaken for the next one's: drop it.
                self.close()
                raise RuntimeError(f"no answer from {self.uri} within {self.timeout:.1f} s") from exc
            except websockets.ConnectionClosed as exc:
                self._connection = None
                code = exc.rcvd.code if exc.rcvd is not None else None
                if code == CloseCode.MESSAGE_TOO_BIG:
                    raise RuntimeError(
                        f"policy server at {self.uri} refused a request of {len(frame)} bytes as too big: "
                        f"{exc.rcvd.reason}"
                    ) from exc
                if attempt == self.retries:
                    raise RuntimeError(f"lost the connection to {self.uri}: {exc}") from exc
                logger.info("connection to %s lost (%s); reconnecting", self.uri, exc)
                time.sleep(self.retry_interval)
                continue
            if isinstance(answer, str):  # the protocol's way of reporting an error
                raise RuntimeError(f"policy server error: {answer}")
            result = msgpack_numpy.unpackb(answer)
            if not isinstance(result, dict):
                raise RuntimeError(f"policy server sent a {type(result).__name__} instead of a map")
            return result
        raise AssertionError("unreachable")
