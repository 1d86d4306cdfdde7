"""Throughput and latency of the xwam policy server under N concurrent clients (loopback only).

    python benchmarks/bench_server.py --checkpoint runs/tiny --clients 1,4,8 --requests 20
    python benchmarks/bench_server.py --test-double --double-delay-ms 5 --clients 1,8 --max-batch 8

The server runs in this process on 127.0.0.1 (a free port); each client is a thread with its own
``PolicyClient`` that first sends one warm-up request (not counted), then requests back to back
until it has sent ``--requests`` or ``--max-seconds`` have passed for that round. Client threads
share the GIL with the server, so numbers on a CPU-bound model are a lower bound. ``--test-double``
serves the deterministic test double from tests/serve (a fixed sleep instead of a model), which
measures the server's own overhead; its rows are labelled as such.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from xwam.atomic import atomic_write_json
from xwam.serve.client import PolicyClient
from xwam.serve.server import PolicyServer, ServerThread

HOST = "127.0.0.1"


def observation_for(metadata: dict[str, Any], seed: int) -> dict[str, Any]:
    """A random observation that satisfies the served policy's metadata."""
    rng = np.random.default_rng(seed)
    shape = tuple(metadata["image_shape"])
    obs: dict[str, Any] = {key: rng.integers(0, 256, shape, dtype=np.uint8) for key in metadata["image_keys"]}
    obs[metadata.get("state_key", "state")] = rng.normal(size=metadata["state_dim"]).astype(np.float32)
    obs["prompt"] = "pick up the cube and place it in the bin"
    return obs


def run_round(port: int, clients: int, requests: int, max_seconds: float, timeout: float) -> dict[str, Any]:
    """One measurement with ``clients`` concurrent clients; latencies in ms."""
    latencies: list[float] = []
    server_timings: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1, timeout=timeout + 30)
    deadline: list[float] = [0.0]

    def client_loop(index: int) -> None:
        try:
            with PolicyClient(HOST, port, timeout=timeout, retries=0) as client:
                obs = observation_for(client.metadata, index)
                client.infer(obs)  # warm-up: first call pays for lazy initialisation
                ready.wait()
                for _ in range(requests):
                    if time.perf_counter() > deadline[0]:
                        break
                    t0 = time.perf_counter()
                    answer = client.infer(obs)
                    elapsed = (time.perf_counter() - t0) * 1000.0
                    with lock:
                        latencies.append(elapsed)
                        server_timings.append(answer["server_timing"])
        except threading.BrokenBarrierError:
            pass
        except Exception as exc:  # reported in the results, the round goes on
            with lock:
                errors.append(f"client {index}: {type(exc).__name__}: {exc}")
            ready.abort()

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + max_seconds + timeout  # until everyone is warm
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    deadline[0] = start + max_seconds
    for thread in threads:
        thread.join(max_seconds + timeout + 5)
    wall = time.perf_counter() - start
    hung = sum(thread.is_alive() for thread in threads)
    if hung:
        errors.append(f"{hung} client(s) still waiting after the round")
    lat = np.asarray(latencies) if latencies else np.zeros(1)

    def mean_of(key: str) -> float:
        return float(np.mean([t[key] for t in server_timings])) if server_timings else 0.0

    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        "latency_ms": {q: round(float(np.percentile(lat, p)), 2) for q, p in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "server_infer_ms_mean": round(mean_of("infer_ms"), 2),
        "server_queue_ms_mean": round(mean_of("queue_ms"), 2),
        "server_decode_ms_mean": round(mean_of("decode_ms"), 3),
        "batch_size_mean": round(mean_of("batch_size"), 2),
        "errors": errors,
    }  # fmt: skip


def load_policy(args: argparse.Namespace) -> tuple[Any, str]:
    if args.test_double:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
        from serve_testutils import DeterministicTestPolicy

        policy = DeterministicTestPolicy(
            infer_delay_s=args.double_delay_ms / 1000.0, batching=args.max_batch > 1
        )
        return policy, f"test double (no model; fixed {args.double_delay_ms:g} ms sleep per call)"
    import torch

    from xwam.policy import XWAMPolicy

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    policy = XWAMPolicy.from_checkpoint(args.checkpoint, device=args.device, dtype=getattr(torch, args.dtype))
    where = f"{args.device}, {args.dtype}, {torch.get_num_threads()} torch threads"
    return policy, f"XWAMPolicy {args.checkpoint} (preset {policy.config.preset}, {where})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="xwam checkpoint folder to serve")
    source.add_argument(
        "--test-double", action="store_true", help="serve the deterministic test double instead"
    )
    parser.add_argument(
        "--double-delay-ms", type=float, default=5.0, help="test double: sleep per model call"
    )
    parser.add_argument("--clients", default="1,4,8", help="comma-separated client counts, one round each")
    parser.add_argument(
        "--requests", type=int, default=20, help="requests per client per round (after warm-up)"
    )
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time limit per round")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout, seconds")
    parser.add_argument("--max-batch", type=int, default=1, help="server micro-batch limit")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0, help="server wait for a batch to fill")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", type=Path, default=Path("bench_server.json"), help="where to write results")
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients must be comma-separated integers, got {args.clients!r}")
    if not counts or min(counts) < 1 or args.requests < 1 or args.max_seconds <= 0:
        parser.error("--clients, --requests and --max-seconds must be positive")
    if args.checkpoint is not None and not args.checkpoint.exists():
        parser.error(f"no checkpoint at {args.checkpoint}")

    policy, label = load_policy(args)
    rounds = []
    with ServerThread(
        PolicyServer(policy, host=HOST, port=0, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    ) as running:
        for clients in counts:
            rounds.append(run_round(running.port, clients, args.requests, args.max_seconds, args.timeout))
    result = {
        "policy": label,
        "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms,
        "requests_per_client": args.requests,
        "max_seconds_per_round": args.max_seconds,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "rounds": rounds,
    }  # fmt: skip
    print(f"policy: {label}   max_batch={args.max_batch} batch_wait_ms={args.batch_wait_ms:g}")
    header = (
        f"{'clients':>7} {'reqs':>5} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    header += f" {'infer ms':>9} {'queue ms':>9} {'batch':>6}"
    print(header)
    for r in rounds:
        lat = r["latency_ms"]
        print(
            f"{r['clients']:>7} {r['requests']:>5} {r['requests_per_s']:>8.1f} {lat['p50']:>8.1f} {lat['p90']:>8.1f} "
            f"{lat['p99']:>8.1f} {lat['max']:>8.1f} {r['server_infer_ms_mean']:>9.1f} "
            f"{r['server_queue_ms_mean']:>9.1f} {r['batch_size_mean']:>6.2f}"
        )
        for error in r["errors"]:
            print(f"  error: {error}")
    atomic_write_json(args.json, result)
    print(f"wrote {args.json}")
    return 1 if any(r["errors"] for r in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
