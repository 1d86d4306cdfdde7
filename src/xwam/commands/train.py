"""`xwam train`: train X-WAM on one or several datasets (single process or under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

S = argparse.SUPPRESS  # options left out keep the value of --config / the resumed run / TrainConfig


def _bool_flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    p.add_argument(
        f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction, default=S, help=help
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train X-WAM (one CPU/GPU, or DDP/FSDP2 under torchrun)",
        description=(
            "Train X-WAM on LeRobot v3 / release-layout datasets. Multi-GPU: `torchrun --nproc_per_node N "
            "-m xwam.cli train ... --parallel fsdp`. The run folder holds checkpoints (xwam format; "
            "`checkpoints/latest`), metrics.jsonl, TensorBoard logs and validation samples. Options not "
            "given keep their defaults, or with --resume the values the run was started with."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--data", action="append", default=S, help="dataset folder (repeat for a mixture)")
    a("--weights", default=S, help="mixture weights, comma separated, one per --data (e.g. 0.7,0.3)")
    a("--out", default=S, help="run folder (default runs/xwam)")
    a("--config", default=None, help="a train_config.json to start from (flags override it)")
    a("--preset", default=S, help="model preset: tiny, small or wan22-ti2v-5b (default small)")
    a(
        "--set",
        dest="overrides",
        action="append",
        default=S,
        metavar="SECTION.FIELD=VALUE",
        help="override a model/sampler/diffusion config field (repeatable)",
    )
    a(
        "--init",
        default=S,
        help="wan:PATH (Wan2.2 weights), release:PATH (X-WAM release) or xwam:PATH; default: from scratch",
    )
    a("--vae-path", default=S, help="Wan2.2 diffusers root for the wan22-vae codec")
    a("--text-path", default=S, help="Wan2.2 root for the umT5 text encoder (or a MiniLM folder)")
    a(
        "--norm-stats",
        default=S,
        help="normalisation statistics JSON (default: the dataset's, computed if missing)",
    )
    a(
        "--clips",
        choices=["model", "release"],
        default=S,
        help="clip layout: the model config's, or the release's (9 frames, skip 4, 32 actions, augmentation)",
    )
    _bool_flag(p, "augment", "random crop + colour jitter (default: on with --clips release)")
    a("--shift-augment", type=int, default=S, metavar="PIXELS",
      help="random shift of every view by up to PIXELS (same offset for all frames of a clip; default 0: off)")
    a("--codec-fit-clips", type=int, default=S,
      help="clips the pca codec's basis is fitted on, evenly spaced over the data (default 512)")
    a(
        "--val-episodes",
        type=int,
        default=S,
        help="hold out the last N episodes of every dataset for validation",
    )
    a("--steps", type=int, default=S, help="optimizer steps (default 1000)")
    a("--batch-size", type=int, default=S, help="clips per process per micro-batch (default 4)")
    a("--grad-accum", type=int, default=S, help="micro-batches per optimizer step (default 1)")
    a("--lr", type=float, default=S, help="peak learning rate (default 1e-5 with --init, 3e-4 from scratch)")
    a("--warmup", type=int, default=S, help="linear warm-up steps (default min(200, steps/10))")
    a("--min-lr-ratio", type=float, default=S, help="cosine floor as a fraction of --lr (default 0)")
    a("--weight-decay", type=float, default=S, help="AdamW weight decay (default 0.01)")
    a("--clip-grad", type=float, default=S, help="gradient-norm clipping (default 1.0)")
    a("--ema-decay", type=float, default=S, help="EMA decay, e.g. 0.999 (default 0: off)")
    a("--lora-rank", type=int, default=S, help="LoRA rank on the backbone (default 0: full fine-tuning)")
    a("--lora-alpha", type=float, default=S, help="LoRA alpha (default: the rank)")
    _bool_flag(p, "gradient-checkpointing", "activation checkpointing per transformer block")
    a("--device", default=S, help="auto, cpu, cuda or cuda:N (default auto)")
    a(
        "--precision",
        choices=["fp32", "bf16"],
        default=S,
        help="fp32, or bf16 compute with fp32 master weights",
    )
    a(
        "--parallel",
        choices=["auto", "ddp", "fsdp", "none"],
        default=S,
        help="under torchrun: DDP (auto) or FSDP2 sharding",
    )
    a("--workers", type=int, default=S, help="DataLoader worker processes (default 0)")
    a("--threads", type=int, default=S, help="torch CPU threads per process")
    _bool_flag(p, "cache-latents", "keep codec latents of (un-augmented) clips in memory")
    a(
        "--episode-cache-mb",
        type=float,
        default=S,
        help="memory (MiB per loading process) for decoded episodes; all that fit stay decoded (default 2048)",
    )
    a("--seed", type=int, default=S, help="seed of data order, noise and initialisation (default 0)")
    a("--max-minutes", type=float, default=S, help="wall-clock budget; stops with a final checkpoint")
    a("--save-every", type=int, default=S, help="checkpoint every N steps (default 500)")
    a("--keep-last", type=int, default=S, help="checkpoints to keep (default 3)")
    a("--log-every", type=int, default=S, help="metrics.jsonl / TensorBoard every N steps (default 1)")
    a("--val-every", type=int, default=S, help="validate every N steps (default 0: at the end only)")
    a("--val-batches", type=int, default=S, help="validation batches (default 2)")
    _bool_flag(p, "val-images", "write validation samples (RGB and depth PNGs)")
    a(
        "--resume",
        nargs="?",
        const="latest",
        default=S,
        help="continue the run in --out from checkpoints/latest (or from the given checkpoint folder)",
    )
    a(
        "--extend",
        action="store_true",
        default=S,
        help="with --resume and a larger --steps: train on past the run's planned schedule. The cosine "
        "learning-rate schedule is stretched over the new total (the rate jumps up at the resumed step), "
        "so the result differs from a run planned that long from the start, unless the rate is constant "
        "after warm-up (--min-lr-ratio 1, the demo's): then nothing changes. Without it, --resume "
        "continues the stored schedule exactly and refuses a different --steps",
    )
    a(
        "--nondeterministic",
        dest="deterministic",
        action="store_false",
        default=S,
        help="allow non-deterministic kernels (faster on some GPUs); by default two runs with the same "
        "seed give bit-identical weights at any thread count",
    )
    _bool_flag(p, "progress", "progress bar")
    _bool_flag(p, "tensorboard", "TensorBoard logging")
    a("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=run)


def build_train_config(args: argparse.Namespace) -> Any:
    """TrainConfig from TrainConfig defaults < --config < the resumed run's config < explicit flags."""
    from xwam.train import TRAIN_CONFIG_FILE, TrainConfig

    explicit: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k not in ("func", "verb", "config", "debug")
    }
    if "weights" in explicit:
        try:
            explicit["weights"] = [float(w) for w in str(explicit["weights"]).split(",") if w.strip()]
        except ValueError as exc:
            raise ValueError(f"--weights must be comma-separated numbers, got {args.weights!r}") from exc
    base = TrainConfig()
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path} not found")
        base = TrainConfig.from_json(path)
    out = Path(explicit.get("out", base.out))
    if "resume" in explicit and (out / TRAIN_CONFIG_FILE).is_file():
        saved = json.loads((out / TRAIN_CONFIG_FILE).read_text())
        saved.pop("resume", None)
        base = TrainConfig.from_dict(saved)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(explicit) - names
    if unknown:  # a parser option without a TrainConfig field: a programming error
        raise RuntimeError(f"unmapped train options {sorted(unknown)}")
    return dataclasses.replace(base, **explicit)


def run(args: argparse.Namespace) -> int:
    from xwam.train import train

    tc = build_train_config(args)
    path = train(tc)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {path}")
    return 0
