"""Training throughput benchmark: samples/s, s/step and peak memory per preset on this device.

Times full optimizer steps (forward, backward, gradient clipping, AdamW) of the trainer's
global-batch objective (``xwam.diffusion.objective.loss_sums``) on synthetic latents of each preset's exact shapes,
so it measures the model, not the data pipeline or codec. Presets: tiny and small everywhere;
wan22-ti2v-5b only when CUDA is present (use --lora-rank / --gradient-checkpointing / bf16 to fit
one GPU: full AdamW fine-tuning of the 6.7 B model needs FSDP across GPUs).

    python benchmarks/bench_train.py                      # tiny + small on the CPU, JSON to bench_train.json
    python benchmarks/bench_train.py --presets small --batch-size 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch


def synthetic_inputs(cfg: Any, batch: int, device: torch.device, with_depth: bool) -> Any:
    from xwam.diffusion.objective import TrainingInputs

    g = torch.Generator().manual_seed(0)
    shape = (
        batch,
        cfg.num_views,
        cfg.latent_channels,
        cfg.latent_frames,
        cfg.latent_height,
        cfg.latent_width,
    )
    return TrainingInputs(
        video=torch.randn(shape, generator=g).to(device),
        text=torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g).to(device),
        text_uncond=torch.zeros(1, cfg.text_len, cfg.text_dim, device=device),
        actions=torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=g).to(device),
        states=torch.randn(batch, cfg.num_states, cfg.state_dim, generator=g).to(device),
        action_mask=torch.ones(batch, cfg.action_horizon, cfg.action_dim, device=device),
        state_mask=torch.ones(cfg.state_dim, device=device),
        depth=torch.randn(shape, generator=g).to(device) if with_depth else None,
    )


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; process-wide peak


def bench_preset(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from xwam.config import get_preset
    from xwam.diffusion.objective import draw_noise, loss_sums, loss_weight_tensor, weighted_loss
    from xwam.model.transformer import XWAMTransformer
    from xwam.train.parallel import apply_lora

    cfg = get_preset(name)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.device(device):
        model = XWAMTransformer(cfg.model)
    if args.lora_rank:
        apply_lora(model, args.lora_rank, float(args.lora_rank))
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    inputs = synthetic_inputs(cfg.model, args.batch_size, device, with_depth=not args.no_depth)
    seeds = list(range(args.batch_size))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    weights = loss_weight_tensor(cfg.diffusion)

    def step() -> None:
        noise = draw_noise(seeds, inputs.video.shape[1:], inputs.actions.shape[1:], inputs.states.shape[1:],
                           cfg.diffusion)
        with autocast:
            sums, counts = loss_sums(model, inputs, noise)
            loss = weighted_loss(sums.float(), counts, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {
        "preset": name,
        "device": str(device),
        "batch_size": args.batch_size,
        "tokens_per_sample": cfg.model.num_tokens,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_params_m": sum(p.numel() for p in params) / 1e6,
        "s_per_step_median": median,
        "s_per_step_mean": sum(times) / len(times),
        "samples_per_s": args.batch_size / median,
        "peak_memory_mb": peak_memory_mb(device),
        "precision": args.precision,
        "depth": not args.no_depth,
        "lora_rank": args.lora_rank,
        "gradient_checkpointing": args.gradient_checkpointing,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=None, help="default: tiny small (+ wan22-ti2v-5b on CUDA)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--no-depth", action="store_true", help="train without the depth loss")
    p.add_argument("--json", default="bench_train.json", help="where to write the results")
    args = p.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    presets = args.presets or (["tiny", "small"] + (["wan22-ti2v-5b"] if device.type == "cuda" else []))
    results = []
    for name in presets:
        try:
            results.append(bench_preset(name, args, device))
        except torch.OutOfMemoryError as exc:
            results.append(
                {"preset": name, "device": str(device), "error": f"out of memory: {exc}".splitlines()[0]}
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    header = (
        f"{'preset':15s} {'device':8s} {'batch':>5s} {'tokens':>6s} {'params M':>9s} {'s/step':>8s} "
        f"{'samples/s':>9s} {'peak MB':>9s}"
    )
    print(header)
    for r in results:
        if "error" in r:
            print(f"{r['preset']:15s} {r['device']:8s} {r['error']}")
            continue
        print(
            f"{r['preset']:15s} {r['device']:8s} {r['batch_size']:5d} {r['tokens_per_sample']:6d} "
            f"{r['params_m']:9.1f} {r['s_per_step_median']:8.3f} {r['samples_per_s']:9.2f} {r['peak_memory_mb']:9.0f}"
        )
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
