"""The one-shot device check: the wan22-ti2v-5b shape with random weights, in one run.

Records, side by side in one process: policy-mode time-to-action (ANS, 10 action steps) against the
synchronous 50-step schedule (the ANS ratio); 4D-mode time per chunk (depth at the last call, at
every call, none); our forward against diffusers' stock WanTransformer3DModel forward on the same
weights (time and largest difference); one training step's time and peak memory with gradient
checkpointing, full fine-tuning and LoRA. JSON goes to benchmarks/results/.

    bash benchmarks/gpu_check.sh                           # on a GPU: wan22-ti2v-5b, bf16
    python benchmarks/gpu_check.py --preset tiny --device cpu --out /tmp/check.json   # the CPU test
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _train_step(preset: str, device: torch.device, precision: str, lora_rank: int, batch_size: int) -> dict[str, Any]:
    from bench_train import bench_preset

    args = SimpleNamespace(batch_size=batch_size, steps=2, warmup=1, lora_rank=lora_rank, gradient_checkpointing=True,
                           precision=precision, no_depth=False)
    try:
        return bench_preset(preset, args, device)
    except torch.OutOfMemoryError as exc:
        return {"preset": preset, "lora_rank": lora_rank, "error": f"out of memory: {exc}".splitlines()[0]}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    from xwam.bench import bench_4d, bench_forward, bench_latency, print_table

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="wan22-ti2v-5b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--video-steps", type=int, default=50)
    p.add_argument("--action-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-batch", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check_<preset>_<device>.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    started = time.perf_counter()
    common = dict(preset=args.preset, device=args.device, dtype=dtype)
    steps = dict(video_steps=args.video_steps, action_steps=args.action_steps)
    reports = [bench_latency(repeats=args.repeats, **steps, **common), bench_4d(repeats=args.repeats, **steps, **common),
               bench_forward(repeats=max(3, args.repeats), **common)]
    for report in reports:
        print_table(report)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    training = [_train_step(args.preset, device, dtype_name, rank, args.train_batch) for rank in (0, args.lora_rank)]
    for row in training:
        what = f"LoRA r{row.get('lora_rank')}" if row.get("lora_rank") else "full"
        if "error" in row:
            print(f"\n== training step ({what}, gradient checkpointing): {row['error']}")
        else:
            print(f"\n== training step ({what}, gradient checkpointing): {row['s_per_step_median']:.3f} s/step, "
                  f"peak {row['peak_memory_mb']:.0f} MB, {row['trainable_params_m']:.1f} M trainable")
    out = Path(args.out or Path(__file__).parent / "results" / f"gpu_check_{args.preset}_{device.type}.json")
    meta = {"torch": torch.__version__, "python": platform.python_version(), "dtype": dtype_name,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "seconds": round(time.perf_counter() - started, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "inference": reports, "training": training}, indent=2) + "\n")
    print(f"\nwrote {out} in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
