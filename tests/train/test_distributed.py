"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 reproduce the single-process run.

Tolerance: relative 1e-5 on every step's loss. The ranks see exactly the clips and noise the single
process sees (the global batch and every sample's noise are fixed by seeds, not by the rank
layout), and the loss denominators are all-reduced before backward, so the only difference is the
float summation order of gradients (all-reduce / reduce-scatter over 2 ranks vs one batch sum) and
of the loss sums: ~1e-7 relative per step in fp32, which three AdamW steps keep far below 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_testutils import losses, tiny_train_config

from xwam.train import train

STEPS = 3


def _cli_args(data: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--batch-size",
        str(batch_size),
        "--save-every",
        "100",
        "--threads",
        "1",
        "--seed",
        "3",
        "--no-progress",
        "--no-tensorboard",
        *extra,
    ]


def _torchrun(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "xwam.cli",
        *args,
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def single_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    train(tiny_train_config(synthetic_dataset, out, steps=STEPS, batch_size=4, save_every=100))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_run_matches_single_process(
    synthetic_dataset: Path, single_run: Path, tmp_path: Path, parallel: str
) -> None:
    out = tmp_path / parallel
    # global batch 4 = 2 ranks x 2 clips, like the single process's 4 clips
    _torchrun(_cli_args(synthetic_dataset, out, 2, "--parallel", parallel), tmp_path)
    single, multi = losses(single_run), losses(out)
    assert len(multi) == STEPS
    assert multi == pytest.approx(single, rel=1e-5)
    a = load_file(str(single_run / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "latest" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4  # 3 AdamW steps of lr <= 3e-4 from identical weights


def test_grad_accumulation_matches_the_full_batch(
    synthetic_dataset: Path, single_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "accum"
    train(tiny_train_config(synthetic_dataset, out, steps=STEPS, batch_size=1, grad_accum=4, save_every=100))
    assert losses(out) == pytest.approx(losses(single_run), rel=1e-5)
    a = load_file(str(single_run / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "latest" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
