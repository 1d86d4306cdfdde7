"""`xwam convert`: turn Wan2.2 or X-WAM release weights into an xwam checkpoint (safetensors + config)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert Wan2.2 / X-WAM release weights into an xwam checkpoint folder",
        description=(
            "Reads foreign weights safely (safetensors, or torch files with weights_only=True) and writes an "
            "xwam checkpoint (model.safetensors + config.json [+ norm_stats.json]) atomically. Sources: "
            "release:PATH (checkpoint/mp_rank_00_model_states.pt of the X-WAM release; its frozen umT5 text "
            "encoder is written out with --text-encoder-out, its frozen VAE is skipped: it is Wan2.2's, load it "
            "with --vae-path), wan:PATH (Wan2.2 in diffusers layout or original layout; the depth "
            "branch is initialised as copies of the last blocks and the new modules randomly), xwam:PATH (a copy "
            "of an xwam checkpoint, its fitted codec kept, with --set applied to its own config: e.g. its "
            "sampler or policy defaults; the model section is fixed by the weights)."
        ),
    )
    p.add_argument("source", help="release:PATH | wan:PATH | xwam:PATH")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--preset", default="wan22-ti2v-5b",
                   help="model preset the weights belong to (release: and wan:; an xwam: checkpoint has its own)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override")
    p.add_argument("--norm-stats", default=None,
                   help="normalisation statistics to store with it (a dataset folder or a JSON file)")
    p.add_argument("--seed", type=int, default=0, help="seed for newly initialised modules (wan:)")
    p.add_argument("--text-encoder-out", default=None, metavar="DIR",
                   help="release: also write the checkpoint's umT5 as DIR/text_encoder (transformers layout); "
                        "with --tokenizer, DIR is then a --text-path for the umt5 text encoder")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="umT5 tokenizer folder to copy to DIR/tokenizer (e.g. a Wan2.2 diffusers root's tokenizer/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from xwam.config import RELEASE_PARITY, get_preset
    from xwam.model.checkpoint import load_checkpoint, load_codec_state, save_checkpoint
    from xwam.model.loading import (
        build_from_wan,
        read_release_state,
        release_model,
        write_release_text_encoder,
    )

    kind, sep, path = args.source.partition(":")
    if not sep or kind not in ("release", "wan", "xwam"):
        raise ValueError(f"source must be release:PATH, wan:PATH or xwam:PATH, got {args.source!r}")
    if (args.text_encoder_out or args.tokenizer) and kind != "release":
        raise ValueError("--text-encoder-out / --tokenizer apply to release: checkpoints only")
    if args.tokenizer and not args.text_encoder_out:
        raise ValueError("--tokenizer needs --text-encoder-out (where to put it)")
    # a release checkpoint acts as the release does unless told otherwise (later --set wins)
    if kind != "xwam":
        config = get_preset(args.preset).override((RELEASE_PARITY if kind == "release" else []) + args.set)
    elif any(item.startswith("model.") for item in args.set):
        raise ValueError("an xwam checkpoint's weights fix its model section: --set may change the sampler, "
                         "policy or diffusion sections only (fine-tune with `xwam train` to change the model)")
    stats, codec_state = None, None
    torch.manual_seed(args.seed)
    if kind == "release":
        raw, file = read_release_state(path)
        model = release_model(raw, config.model, file)
        if args.text_encoder_out:
            folder = write_release_text_encoder(raw, args.text_encoder_out, args.tokenizer, source=file)
            print(f"wrote the release's umT5 to {folder}" + ("" if args.tokenizer else
                  " (no tokenizer copied: add one under tokenizer/ before using it as --text-path)"))
        del raw
    elif kind == "wan":
        model = build_from_wan(path, config.model)
    else:
        model, config, stats = load_checkpoint(path)
        config = config.override(args.set)
        codec_state = load_codec_state(path)  # a fitted codec (pca) belongs with the weights
    if args.norm_stats:
        from xwam.data.stats import NormStats, load_dataset_norm_stats

        src = Path(args.norm_stats)
        stats = (load_dataset_norm_stats(src) if src.is_dir() else NormStats.from_json(src)).to_dict()
    out = save_checkpoint(args.out, model, config, norm_stats=stats,
                          metadata={"converted_from": args.source}, codec_state=codec_state)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n / 1e6:.1f} M parameters, preset {config.preset})")
    if kind == "release":
        print(f"release parity on: {', '.join(RELEASE_PARITY)} (override with --set)")
    if stats is None:
        print("note: no normalisation statistics stored; pass --norm-stats before serving this checkpoint")
    return 0
