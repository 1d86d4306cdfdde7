"""The one-shot device check runs end to end (here on the CPU at the tiny preset) and records every row."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_script_runs_on_the_cpu_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--preset", "tiny", "--device", "cpu", "--video-steps", "4",
         "--action-steps", "2", "--repeats", "1", "--lora-rank", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PY": os.environ.get("PY", str(ROOT / ".venv" / "bin" / "python"))},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    latency, fourd, forward = report["inference"]
    calls = {name: row["calls"] for name, row in latency["results"].items()}
    assert calls == {"async (ANS policy mode)": 2, "synchronous (full schedule)": 4} and latency["speedup"] > 0
    assert set(fourd["results"]) == {"depth at the last call only", "depth at every call (release)", "video without depth"}
    assert forward["max_abs_difference"] < 1e-4  # our forward is diffusers' forward on the same weights
    full, lora = report["training"]
    assert full["gradient_checkpointing"] and full["lora_rank"] == 0 and lora["lora_rank"] == 4
    assert lora["trainable_params_m"] < full["trainable_params_m"] and full["peak_memory_mb"] > 0
