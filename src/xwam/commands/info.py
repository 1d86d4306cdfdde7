"""`xwam presets`: list the named model presets and their sizes."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "presets",
        help="list the named presets (tiny, small, wan22-ti2v-5b) and their shapes",
        description=(
            "Lists the named model presets: tiny (unit tests, seconds on a CPU), small (the CPU demo model, "
            "trained from scratch) and wan22-ti2v-5b (the paper's model on the Wan2.2-TI2V-5B backbone), with "
            "views, image size, frames, codec, DiT size, depth-branch layers and token counts. Any field can "
            "be overridden in other verbs with --set section.field=value."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the full resolved configs as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xwam.config import PRESETS, get_preset

    for name in PRESETS:
        cfg = get_preset(name)
        m = cfg.model
        if args.json:
            print(cfg.to_json())
            continue
        print(
            f"{name:14s} views={m.num_views} {m.image_height}x{m.image_width} frames={m.num_frames} "
            f"codec={m.codec} dit={m.num_layers}x{m.hidden_dim} depth_layers={m.depth_layers} "
            f"tokens={m.num_tokens} (video {m.num_video_tokens} + states {m.num_states} + actions "
            f"{m.action_horizon}) text={m.text_encoder}"
        )
    return 0
