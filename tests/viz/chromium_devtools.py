"""Load a page in headless Chromium through the DevTools protocol: JavaScript errors, DOM queries, screenshots.

Console messages of every severity look alike in Chromium's ``--enable-logging=stderr`` output, so the
DevTools protocol (over ``websockets``) is used instead: it reports uncaught exceptions
(``Runtime.exceptionThrown``), ``console.error`` calls (``Runtime.consoleAPICalled``) and browser-side
errors (``Log.entryAdded``) with their levels.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary ($CHROMIUM first), or None."""
    candidates = [os.environ.get("CHROMIUM", "")] + [shutil.which(name) or "" for name in CHROMIUM_NAMES]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    evaluations: dict[str, Any] = field(default_factory=dict)
    screenshot: np.ndarray | None = None  # (H, W, 3) uint8, the viewport


class _DevTools:
    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self._socket = connect(url, max_size=None, open_timeout=20)
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        self._socket.send(json.dumps({"id": request_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == request_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method} failed: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self._socket.recv(timeout=left)))
            except TimeoutError:
                break

    def wait_for(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.events.append(json.loads(self._socket.recv(timeout=left)))
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        self._socket.close()


def _describe(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """(error text or None, console text or None) of one DevTools event."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        text = details.get("exception", {}).get("description") or details.get("text", "exception")
        return f"uncaught exception: {text}", None
    if method == "Runtime.consoleAPICalled":
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        line = f"console.{params.get('type')}: {text}"
        return (line if params.get("type") in ("error", "assert") else None), line
    if method == "Log.entryAdded":
        entry = params.get("entry", {})
        line = f"log {entry.get('level')} ({entry.get('source')}): {entry.get('text')}"
        return (line if entry.get("level") == "error" else None), line
    return None, None


def load_page(
    binary: str,
    url: str,
    work_dir: Path,
    *,
    width: int = 1200,
    height: int = 900,
    settle_seconds: float = 2.0,
    expressions: dict[str, str] | None = None,
) -> PageResult:
    """Open ``url`` in a fresh headless Chromium, wait for load plus ``settle_seconds``, then evaluate
    ``expressions`` (name -> JavaScript, values returned by value) and take a viewport screenshot."""
    profile = work_dir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "chromium-stderr.log"
    args = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        # software WebGL (SwiftShader) for plotly's 3D scenes; Chromium no longer falls back to it silently
        "--enable-unsafe-swiftshader",
        "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        f"--window-size={width},{height}", "--remote-debugging-port=0", "about:blank",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    devtools = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start; its log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.load(response)
        page = next(t for t in targets if t.get("type") == "page")
        devtools = _DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            devtools.call(f"{domain}.enable")
        devtools.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        devtools.events.clear()
        devtools.call("Page.navigate", url=url)
        if not devtools.wait_for("Page.loadEventFired", timeout=60):
            raise RuntimeError(f"page {url} did not finish loading within 60 s")
        devtools.pump(settle_seconds)
        result = PageResult()
        for name, expression in (expressions or {}).items():
            value = devtools.call("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in value:
                result.errors.append(f"evaluating {name}: {value['exceptionDetails'].get('text')}")
            result.evaluations[name] = value.get("result", {}).get("value")
        shot = devtools.call("Page.captureScreenshot", format="png", timeout=60)
        result.screenshot = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"))
        devtools.pump(0.2)
        for event in devtools.events:
            error, line = _describe(event)
            if line:
                result.console.append(line)
            if error:
                result.errors.append(error)
        return result
    finally:
        if devtools is not None:
            devtools.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
