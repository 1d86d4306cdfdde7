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


FSDP_PROBE = '''
import json, sys
from xwam.model.transformer import XWAMBlock, XWAMTransformer
from xwam.train import Trainer, TrainConfig

data, out, report = sys.argv[1:4]
trainer = Trainer(TrainConfig(data=[data], out=out, preset="tiny", steps=2, batch_size=2, save_every=100,
                              parallel="fsdp", gradient_checkpointing=True, threads=1, progress=False,
                              tensorboard=False, seed=3))
model = trainer.module
# no method of any module replaced on the instance: every call runs the classes' own code
replaced = sorted(f"{name or 'model'}.{attr}" for name, m in model.named_modules() for attr, value in vars(m).items()
                  if callable(value) and not attr.startswith("_forward") and hasattr(type(m), attr))
blocks = list(model.backbone.blocks) + list(model.depth_branch.blocks)
foreign = [type(b).__name__ for b in blocks if type(b).forward is not XWAMBlock.forward]
calls = [0] * len(blocks)
for i, block in enumerate(blocks):
    block.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))
trainer.fit()
json.dump({"replaced": replaced, "foreign": foreign, "calls": calls, "sharded": type(model).__name__,
           "run_is_class_method": type(model)._run is XWAMTransformer._run}, open(f"{report}.{trainer.ctx.rank}", "w"))
'''


@pytest.mark.slow
def test_fsdp_runs_the_models_own_code_with_no_method_replaced(synthetic_dataset: Path, tmp_path: Path) -> None:
    import json

    probe = tmp_path / "probe.py"
    probe.write_text(FSDP_PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(probe),
           str(synthetic_dataset), str(tmp_path / "run"), str(tmp_path / "report")]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"report.{rank}").read_text())
        assert report["sharded"].startswith("FSDP")  # fully_shard really wrapped the model
        assert report["replaced"] == [] and report["foreign"] == [] and report["run_is_class_method"]
        # every block (main and depth) ran under FSDP's hooks: forward and the checkpointed recompute
        assert all(c >= 2 for c in report["calls"]), report["calls"]
