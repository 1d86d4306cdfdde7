"""`xwam serve`: serve a checkpoint as an openpi-protocol websocket policy server."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from xwam.limits import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PROMPT_CHARS,
    DEFAULT_TEXT_CACHE_ENTRIES,
)

API_KEY_ENV = "XWAM_API_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over websockets (openpi protocol: msgpack-numpy observations in, actions out)",
        description=(
            "Serve an xwam checkpoint as a websocket policy server speaking the openpi protocol: on "
            "connect the server sends the policy metadata; each binary msgpack-numpy observation is "
            "answered with `actions` and `server_timing`, a bad request with a text frame. "
            "GET /healthz answers 200. Stop with Ctrl-C or SIGTERM."
        ),
    )
    p.add_argument(
        "--checkpoint", required=True, help="xwam checkpoint folder (model.safetensors, config.json)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        default=None,
        help=(
            f"require 'Authorization: Api-Key <key>' on connect (default: ${API_KEY_ENV}; prefer the "
            "variable, command lines are visible to other users)"
        ),
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=32.0,
        help="largest request answered (larger ones get an error; over twice this the connection is closed)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=1,
        help="answer up to N queued requests in one model call (default 1)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="with --max-batch > 1: wait up to this long after a request for others to batch with it",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"open websocket connections at most; more are answered HTTP 503 (default {DEFAULT_MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--idle-timeout-s",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT_S,
        help=f"close a connection that sends nothing for this long (default {DEFAULT_IDLE_TIMEOUT_S:g}; 0: never)",
    )
    p.add_argument(
        "--max-prompt-chars",
        type=int,
        default=DEFAULT_MAX_PROMPT_CHARS,
        help=f"longest instruction accepted (default {DEFAULT_MAX_PROMPT_CHARS})",
    )
    p.add_argument(
        "--text-cache",
        type=int,
        default=DEFAULT_TEXT_CACHE_ENTRIES,
        help=f"instruction embeddings kept in memory, least recently used dropped (default {DEFAULT_TEXT_CACHE_ENTRIES})",
    )
    p.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, cuda:1...)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument(
        "--vae-path", default=None, help="Wan2.2 VAE weights, for checkpoints using the wan22-vae codec"
    )
    p.add_argument("--text-path", default=None, help="text encoder weights, for checkpoints that need them")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="INFO: connections and a one-line summary a minute; DEBUG: every request")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import torch

    from xwam.serve.server import PolicyServer, serve_until_signal

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must lie in [0, 65535], got {args.port}")
    if args.max_message_mb <= 0:
        raise ValueError(f"--max-message-mb must be positive, got {args.max_message_mb}")
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.batch_wait_ms < 0:
        raise ValueError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    for name in ("max_connections", "max_prompt_chars", "text_cache"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.idle_timeout_s < 0:
        raise ValueError(f"--idle-timeout-s must be >= 0, got {args.idle_timeout_s}")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # websockets' own open/close lines repeat ours
        logging.getLogger("websockets").setLevel(logging.WARNING)
    log = logging.getLogger("xwam.serve")
    if not _is_loopback(args.host) and api_key is None:
        log.warning(
            "listening on %s without an API key: anyone who can reach this port can query the model",
            args.host,
        )

    from xwam.policy import XWAMPolicy

    log.info("loading %s on %s (%s)", checkpoint, args.device, args.dtype)
    policy = XWAMPolicy.from_checkpoint(
        checkpoint,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        vae_path=args.vae_path,
        text_path=args.text_path,
        text_cache_entries=args.text_cache,
        max_prompt_chars=args.max_prompt_chars,
    )
    log.info("policy: %s", policy.describe())
    server = PolicyServer(
        policy,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout_s or None,
    )
    serve_until_signal(server)
    return 0
