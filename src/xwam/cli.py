"""`xwam <verb>`: the command-line entry point.

Each verb lives in its own module exposing ``register(subparsers)``; a module adds one or more
sub-commands and sets ``func`` on them. Modules are imported when the parser is built so that
``xwam --help`` lists exactly the verbs that exist.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Modules that contribute verbs, in the order `xwam --help` lists them.
COMMAND_MODULES: list[str] = [
    "xwam.commands.collect",
    "xwam.commands.dataset",
    "xwam.commands.train",
    "xwam.commands.eval",
    "xwam.commands.imagine",
    "xwam.commands.diagnose",
    "xwam.commands.serve",
    "xwam.commands.bench",
    "xwam.commands.convert",
    "xwam.commands.demo",
    "xwam.commands.info",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xwam",
        description=(
            "X-WAM: one diffusion transformer that jointly generates multi-view RGB-D video, future "
            "states and an action chunk. Run `xwam <verb> --help` for each verb."
        ),
    )
    from xwam import __version__

    parser.add_argument("--version", action="version", version=f"xwam {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:  # a verb whose module is not written yet
            continue
        importlib.import_module(name).register(sub)
    return parser


# verbs whose --threads is applied here (train and demo pass theirs on to the trainer)
THREADED_VERBS = ("eval", "imagine", "eval-4d", "diagnose")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "threads", None) and args.verb in THREADED_VERBS:
        # Several torch processes on few cores oversubscribe them: measured ~20x slower policy calls
        # with two evaluations side by side at torch's default thread count, none at 1 thread each.
        import torch

        torch.set_num_threads(int(args.threads))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"xwam {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
