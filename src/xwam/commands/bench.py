"""`xwam bench`: latency and cost benchmarks measured side by side in one run."""

from __future__ import annotations

import argparse

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: time-to-action (ANS vs synchronous), 4D cost, forward overhead",
        description=(
            "Random weights at a preset's shape. 'latency': time-to-action in policy mode (k action steps) "
            "vs the synchronous sampler over the full N-step schedule. '4d': depth branch at the last call "
            "only vs every call vs no depth. 'forward': our forward vs diffusers' stock Wan forward. "
            "'all': the three. Prints tables with ratios and writes JSON."
        ),
    )
    p.add_argument("what", choices=["latency", "4d", "forward", "all"])
    p.add_argument("--preset", action="append", default=None, help="preset(s) (default: tiny and small)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--video-steps", type=int, default=50)
    p.add_argument("--action-steps", type=int, default=10)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="config override for the benchmarked model (e.g. model.num_layers=4)")
    p.add_argument("--out", default="benchmarks/results/bench.json", help="JSON output")
    p.set_defaults(func=run)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - torch missing or broken CUDA: benchmark on the CPU
        return False


def run(args: argparse.Namespace) -> int:
    import torch

    from xwam import bench

    dtype = getattr(torch, DTYPES[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")])
    presets = args.preset or ["tiny", "small"]
    reports = []
    for preset in presets:
        if args.what in ("latency", "all"):
            reports.append(bench.bench_latency(preset, args.device, dtype, args.repeats, args.video_steps,
                                               args.action_steps, args.set))
            bench.print_table(reports[-1])
        if args.what in ("4d", "all"):
            reports.append(bench.bench_4d(preset, args.device, dtype, max(1, args.repeats - 1), args.video_steps,
                                          args.action_steps, args.set))
            bench.print_table(reports[-1])
        if args.what in ("forward", "all"):
            reports.append(bench.bench_forward(preset, args.device, dtype, max(5, args.repeats), args.set))
            bench.print_table(reports[-1])
    bench.write_json(args.out, reports)
    print(f"\nwrote {args.out}")
    return 0
