"""The server benchmark runs end to end (tiny, with the test double) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_server.py"


def test_bench_server_with_the_test_double(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_server", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    argv = [
        "--test-double",
        "--double-delay-ms",
        "1",
        "--clients",
        "1,3",
        "--requests",
        "4",
        "--max-batch",
        "4",
    ]
    assert bench.main([*argv, "--max-seconds", "20", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["policy"].startswith("test double")
    assert [r["clients"] for r in result["rounds"]] == [1, 3]
    assert [r["requests"] for r in result["rounds"]] == [4, 12]
    for r in result["rounds"]:
        assert r["requests_per_s"] > 0 and not r["errors"]
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    assert "req/s" in capsys.readouterr().out
