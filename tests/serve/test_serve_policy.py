"""End to end with the real XWAMPolicy on a tiny random checkpoint: in-process and via `xwam serve`."""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xwam.serve.client import PolicyClient
from xwam.serve.server import PolicyServer, ServablePolicy, ServerThread

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from xwam.config import get_preset
    from xwam.data.stats import NormStats
    from xwam.model.checkpoint import save_checkpoint
    from xwam.model.transformer import XWAMTransformer

    config = get_preset("tiny")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, text_encoder="none"))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    stats = NormStats.from_arrays(
        rng.normal(size=(64, config.model.state_dim)), rng.normal(size=(64, config.model.action_dim))
    )
    path = tmp_path_factory.mktemp("serve") / "tiny"
    save_checkpoint(path, XWAMTransformer(config.model), config, stats.to_dict())
    return path


def _observation(metadata: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    shape = tuple(metadata["image_shape"])
    obs: dict[str, Any] = {key: rng.integers(0, 256, shape, dtype=np.uint8) for key in metadata["image_keys"]}
    obs["observation/state"] = rng.normal(size=metadata["state_dim"]).astype(np.float32)
    obs["prompt"] = "lift the cube"
    return obs


def _check_actions(answer: dict[str, Any], metadata: dict[str, Any]) -> None:
    actions = answer["actions"]
    assert actions.dtype == np.float32
    assert actions.shape == (metadata["action_horizon"], metadata["action_dim"])
    assert np.isfinite(actions).all()
    assert answer["server_timing"]["infer_ms"] > 0


def test_real_policy_served_in_process(tiny_checkpoint: Path) -> None:
    from xwam.policy import XWAMPolicy

    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint)
    assert isinstance(policy, ServablePolicy)
    with ServerThread(PolicyServer(policy, host=HOST, port=0, max_batch=4)) as running:
        with PolicyClient(HOST, running.port, timeout=60) as client:
            metadata = client.metadata
            assert metadata["model"] == "xwam" and metadata["preset"] == "tiny"
            _check_actions(client.infer(_observation(metadata, 0)), metadata)
            bad = _observation(metadata, 1)
            del bad[metadata["image_keys"][0]]
            with pytest.raises(RuntimeError, match="invalid observation: missing image"):
                client.infer(bad)
            bad = _observation(metadata, 2)
            bad["observation/state"] = bad["observation/state"][:-1]
            with pytest.raises(RuntimeError, match="state must have shape"):
                client.infer(bad)
            _check_actions(client.infer(_observation(metadata, 3)), metadata)


def test_batched_requests_each_keep_their_own_action_prefix(tiny_checkpoint: Path) -> None:
    """`xwam serve --max-batch 2`: two concurrent requests with committed prefixes of different values
    and lengths run as one batch, and each chunk starts with its own prefix (robot units)."""
    from xwam.policy import XWAMPolicy

    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint)
    batch_sizes: list[int] = []
    batched = policy.infer_batch

    def recording(observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        batch_sizes.append(len(observations))
        return batched(observations)

    policy.infer_batch = recording  # type: ignore[method-assign]
    m = policy.config.model
    rng = np.random.default_rng(7)
    prefixes = [rng.normal(size=(1, m.action_dim)).astype(np.float32),
                rng.normal(loc=3.0, size=(m.action_horizon - 1, m.action_dim)).astype(np.float32)]
    answers: dict[int, Any] = {}
    with ServerThread(PolicyServer(policy, host=HOST, port=0, max_batch=2, batch_wait_ms=10_000)) as running:

        def ask(index: int) -> None:
            with PolicyClient(HOST, running.port, timeout=60) as client:
                obs = _observation(client.metadata, index)
                answers[index] = client.infer({**obs, "action_prefix": prefixes[index]})

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert batch_sizes == [2], batch_sizes  # one model call for both requests
    for index, prefix in enumerate(prefixes):
        actions = answers[index]["actions"]
        assert actions.shape == (m.action_horizon, m.action_dim)
        np.testing.assert_allclose(actions[: len(prefix)], prefix, rtol=1e-5, atol=1e-5)


def test_fuzz_bad_extreme_and_oversized_requests_never_stop_good_answers(tiny_checkpoint: Path) -> None:
    """Malformed, extreme and oversized requests each get a text error (or, for a valid but extreme
    one, finite actions); good requests in between keep getting finite actions; memory stays bounded."""
    import resource

    import msgpack
    from websockets.sync.client import connect

    from xwam.policy import XWAMPolicy
    from xwam.serve.msgpack_numpy import packb

    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint, text_cache_entries=8, max_prompt_chars=100)
    m = policy.config.model
    with ServerThread(PolicyServer(policy, host=HOST, port=0, max_message_bytes=2**20)) as running:
        raw = connect(f"ws://{HOST}:{running.port}", open_timeout=30, max_size=None)
        raw.recv(timeout=30)  # metadata
        with raw, PolicyClient(HOST, running.port, timeout=60) as client:
            meta = client.metadata
            image_key = meta["image_keys"][0]

            def variant(seed: int, **changes: Any) -> dict[str, Any]:
                return {**_observation(meta, seed), **changes}

            bad: list[tuple[Any, str]] = [
                (variant(1, **{"observation/state": np.full(m.state_dim, 1e300)}), "state contains NaN or infinite"),
                (variant(2, **{"observation/state": np.full(m.state_dim, np.nan, np.float32)}), "NaN or infinite"),
                (variant(3, action_prefix=np.full((2, m.action_dim), 1e300)), "action_prefix must be a finite"),
                (variant(4, action_prefix=np.full((1, m.action_dim), np.inf, np.float32)), "action_prefix"),
                (variant(5, action_prefix=np.zeros((m.action_horizon + 1, m.action_dim))), "action_prefix"),
                (variant(6, prompt="x" * 101), "at most 100"),
                (variant(7, prompt=7), "prompt must be a string"),
                (variant(8, **{image_key: np.zeros(meta["image_shape"], np.float32)}), "must be uint8"),
                (variant(9, **{image_key: np.zeros((2, 2, 3), np.uint8)}), "must have shape"),
                (b"\x00 not msgpack at all", "not a msgpack-numpy message"),
                (msgpack.packb([1, 2, 3]), "msgpack map"),
                (variant(10, padding=np.zeros(2**20, np.uint8)), "exceeds the server limit"),
            ]
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            for round_ in range(3):
                for request, reason in bad:
                    frame = request if isinstance(request, bytes) else packb(request)
                    raw.send(frame)
                    answer = raw.recv(timeout=60)
                    assert isinstance(answer, str) and reason in answer, (reason, answer)
                # valid but extreme: finite actions or a refusal, never NaN or inf
                extreme = variant(20 + round_, **{"observation/state": np.full(m.state_dim, 3e38, np.float32)})
                try:
                    assert np.isfinite(client.infer(extreme)["actions"]).all()
                except RuntimeError as exc:
                    assert "non-finite values" in str(exc)
                for seed in range(10):  # new instructions every time: the text cache must stay bounded
                    _check_actions(client.infer(variant(100 * round_ + seed, prompt=f"task {round_} {seed}")), meta)
            assert len(policy.processor.text_encoder) <= 8
            growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
            assert growth_mb < 200, f"peak memory grew by {growth_mb:.0f} MB"


def _read_lines(stream: Any, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


@pytest.mark.slow  # a subprocess importing torch and loading the model: 7-20 s on a busy 2-core machine
def test_xwam_serve_command_answers_and_stops_on_sigterm(tiny_checkpoint: Path) -> None:
    env = {**os.environ, "XWAM_API_KEY": "k3y"}
    process = subprocess.Popen(
        [sys.executable, "-m", "xwam.cli", "serve", "--checkpoint", str(tiny_checkpoint), "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stderr, lines), daemon=True).start()
    log: list[str] = []
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline and process.poll() is None:
            try:
                log.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            match = re.search(r"on ws://127\.0\.0\.1:(\d+)", log[-1])
            port = int(match.group(1)) if match else None
        assert port is not None, "server did not start:\n" + "".join(log)
        with pytest.raises(RuntimeError, match="API key"):
            PolicyClient(HOST, port, timeout=30, retries=0)
        with PolicyClient(HOST, port, api_key="k3y", timeout=60) as client:
            for seed in range(2):
                _check_actions(client.infer(_observation(client.metadata, seed)), client.metadata)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    time.sleep(0.2)  # let the reader thread drain the last lines
    while not lines.empty():
        log.append(lines.get_nowait())
    text = "".join(log)
    assert not re.findall(r"127\.0\.0\.1:\d+ infer [\d.]+ ms", text), text  # per-request lines only at DEBUG
    assert "server stopped (2 answered" in text, text


def test_xwam_serve_reports_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xwam.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err


def test_client_side_imports_do_not_need_torch() -> None:
    code = "import sys, xwam.serve; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
