"""Loading weights: Wan2.2 (diffusers or original layout), X-WAM release checkpoints, xwam checkpoints.

- Wan2.2-TI2V-5B in diffusers layout: ``<root>/transformer/`` (config.json + safetensors shards).
- Wan2.2 original layout: a state dict with Wan's own names (``blocks.N.self_attn.q``, ...), as
  safetensors (optionally sharded with an index) or a torch file; renamed to diffusers' names.
- X-WAM release: ``checkpoint/mp_rank_00_model_states.pt`` (DeepSpeed), dict key ``module``:
  ``model.*`` (1115 keys: Wan's original names plus the view embedding, depth blocks/head and the
  action/state MLPs), the frozen ``text_encoder.*`` (umT5, 242 keys) and ``vae.*`` (198 keys). Every
  ``model.*`` key must find its place with its shape; the frozen parts are skipped with one log line
  counting them (the codec and text encoder load from their own folders); any other key is an error.
  The frozen umT5 can be written out as a transformers ``UMT5EncoderModel`` folder on request
  (:func:`write_release_text_encoder`), so a release checkpoint alone gives the text encoder too.

Foreign torch files are always read with ``weights_only=True`` (no unpickling of code).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file

from xwam.config import ModelConfig
from xwam.model.transformer import XWAMTransformer, wan_backbone_kwargs

logger = logging.getLogger("xwam.loading")
# frozen modules the release saves beside its DiT (see the module docstring)
RELEASE_FROZEN_PREFIXES = ("text_encoder.", "vae.")

# Wan original -> diffusers names inside one transformer block (Wan2.2-TI2V-5B layout). The cross-attention
# LayerNorm is `norm3` in Wan and `norm2` in diffusers; the (weightless) FFN norm is the other way.
_BLOCK_RENAMES = [
    (r"^self_attn\.q\.", "attn1.to_q."),
    (r"^self_attn\.k\.", "attn1.to_k."),
    (r"^self_attn\.v\.", "attn1.to_v."),
    (r"^self_attn\.o\.", "attn1.to_out.0."),
    (r"^self_attn\.norm_q\.", "attn1.norm_q."),
    (r"^self_attn\.norm_k\.", "attn1.norm_k."),
    (r"^cross_attn\.q\.", "attn2.to_q."),
    (r"^cross_attn\.k\.", "attn2.to_k."),
    (r"^cross_attn\.v\.", "attn2.to_v."),
    (r"^cross_attn\.o\.", "attn2.to_out.0."),
    (r"^cross_attn\.norm_q\.", "attn2.norm_q."),
    (r"^cross_attn\.norm_k\.", "attn2.norm_k."),
    (r"^ffn\.0\.", "ffn.net.0.proj."),
    (r"^ffn\.2\.", "ffn.net.2."),
    (r"^modulation$", "scale_shift_table"),
    (r"^norm3\.", "norm2."),
    (r"^norm2\.", "norm3."),
]
_TOP_RENAMES = [
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.head\.", "proj_out."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^patch_embedding\.", "patch_embedding."),
]


def _rename_block_key(rest: str) -> str:
    for pattern, repl in _BLOCK_RENAMES:
        new, n = re.subn(pattern, repl, rest)
        if n:
            return new
    return rest


def wan_key_to_diffusers(key: str) -> str | None:
    """Diffusers name of a Wan-original transformer key, or None if it is not a transformer key."""
    m = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if m:
        return f"blocks.{m.group(1)}.{_rename_block_key(m.group(2))}"
    for pattern, repl in _TOP_RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def convert_wan_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan-original transformer state dict to diffusers names (unknown keys dropped)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("model.diffusion_model.")
        new = wan_key_to_diffusers(key)
        if new is not None:
            out[new] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, a sharded safetensors folder/index, or a torch file (weights only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        files = sorted({path / f for f in json.loads(index[0].read_text())["weight_map"].values()}) if index \
            else sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors files in {path}")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return state
    if path.name.endswith(".index.json"):
        return read_state_dict(path.parent)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for foreign or corrupt files
        raise ValueError(f"cannot read {path} as a weights-only torch checkpoint: {exc}") from exc
    if isinstance(obj, dict) and "module" in obj and isinstance(obj["module"], dict):
        obj = obj["module"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return obj


def check_backbone_config(backbone_config: dict, cfg: ModelConfig, source: str) -> None:
    want = wan_backbone_kwargs(cfg)
    keys = ["num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "ffn_dim", "num_layers", "freq_dim"]
    diffs = [f"{k}: checkpoint {backbone_config.get(k)} vs config {want[k]}" for k in keys
             if k in backbone_config and backbone_config[k] != want[k]]
    if diffs:
        raise ValueError(f"the backbone in {source} does not match the model config: " + "; ".join(diffs))


def load_wan_backbone(path: str | Path, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> WanTransformer3DModel:
    """A Wan2.2 DiT from a diffusers folder (root or ``transformer/``) or an original-layout checkpoint."""
    path = Path(path)
    folder = path / "transformer" if (path / "transformer" / "config.json").exists() else path
    if folder.is_dir() and (folder / "config.json").exists():
        config = json.loads((folder / "config.json").read_text())
        check_backbone_config(config, cfg, str(folder))
        return WanTransformer3DModel.from_pretrained(str(folder), torch_dtype=dtype)
    state = convert_wan_state_dict(read_state_dict(path))
    if not state:
        raise ValueError(f"{path} holds no Wan transformer weights (expected keys such as blocks.0.self_attn.q.weight)")
    backbone = WanTransformer3DModel(**wan_backbone_kwargs(cfg))
    _load_strict(backbone, state, str(path))
    return backbone.to(dtype)


def build_from_wan(path: str | Path, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> XWAMTransformer:
    """X-WAM initialised from Wan2.2 weights; the depth branch starts as copies of the last M blocks."""
    model = XWAMTransformer(cfg, backbone=load_wan_backbone(path, cfg, dtype=torch.float32))
    model.reset_depth_branch_from_backbone()
    return model.to(dtype)


def release_key_to_xwam(key: str) -> str | None:
    """Our parameter name for an X-WAM release key (None for keys we do not use)."""
    key = key.removeprefix("module.").removeprefix("model.")
    if key.startswith("view_embedding."):
        return key
    m = re.match(r"^(action|proprio)_(encoder|decoder)\.([02])\.(weight|bias)$", key)
    if m:
        kind = "state" if m.group(1) == "proprio" else "action"
        return f"{kind}_{m.group(2)}.{m.group(3)}.{m.group(4)}"
    m = re.match(r"^extra_blocks\.0\.(\d+)\.(.+)$", key)
    if m:
        return f"depth_branch.blocks.{m.group(1)}.{_rename_block_key(m.group(2))}"
    m = re.match(r"^extra_heads\.0\.(head\.(?:weight|bias)|modulation)$", key)
    if m:
        return f"depth_branch.{m.group(1)}"
    new = wan_key_to_diffusers(key)
    return f"backbone.{new}" if new is not None else None


def read_release_state(path: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The ``module`` dict of a release checkpoint (its file, or the ``<tag>.ckpt`` folder), read with
    ``weights_only=True``, and the file it came from."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "checkpoint" / "mp_rank_00_model_states.pt", path / "mp_rank_00_model_states.pt"]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise FileNotFoundError(f"no checkpoint/mp_rank_00_model_states.pt under {path}")
        path = found[0]
    return read_state_dict(path), path


def release_model(raw: dict[str, torch.Tensor], cfg: ModelConfig, source: str | Path) -> XWAMTransformer:
    """The DiT of a release ``module`` dict; see the module docstring for what is placed or refused."""
    state, frozen, unplaced = {}, {p: 0 for p in RELEASE_FROZEN_PREFIXES}, []
    for key, value in raw.items():
        bare = key.removeprefix("module.")
        prefix = next((p for p in RELEASE_FROZEN_PREFIXES if bare.startswith(p)), None)
        if prefix is not None:
            frozen[prefix] += 1
            continue
        new = release_key_to_xwam(bare) if bare.startswith("model.") else None
        if new is None:
            unplaced.append(key)
        else:
            state[new] = value
    if unplaced:
        raise ValueError(f"{source}: {len(unplaced)} keys have no place in the X-WAM model (first: {unplaced[:5]}); "
                         "is this an X-WAM release checkpoint?")
    if any(frozen.values()):
        logger.info("%s: skipped the frozen %d text_encoder.* (umT5) and %d vae.* keys; the text encoder and "
                    "codec load from --text-path / --vae-path (xwam convert --text-encoder-out writes the umT5 "
                    "from this file)", source, frozen["text_encoder."], frozen["vae."])
    model = XWAMTransformer(cfg)
    _load_strict(model, state, str(source))
    return model


def load_release_checkpoint(path: str | Path, cfg: ModelConfig) -> XWAMTransformer:
    """An X-WAM release checkpoint (file or its folder) as an ``XWAMTransformer``."""
    raw, file = read_release_state(path)
    return release_model(raw, cfg, file)


# ---- the release's frozen umT5 as a transformers UMT5EncoderModel ------------------------------------
# The release keeps Wan's own T5 module names (``text_encoder.model.blocks.N.attn.q``, ...). Wan's T5
# block is transformers' UMT5 block under other names: no attention scaling, a per-layer relative
# position bias (32 buckets x heads), RMS norms, and a gated-GELU FFN whose ``gate.0`` is the GELU
# branch (``wi_0``) and ``fc1`` the linear one (``wi_1``).
_UMT5_BLOCK_RENAMES = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
RELEASE_TEXT_PREFIX = "text_encoder.model."


def release_umt5_key_to_hf(key: str) -> str | None:
    """transformers' ``UMT5EncoderModel`` name of a release ``text_encoder.model.*`` key (None if unknown)."""
    bare = key.removeprefix("module.")
    if not bare.startswith(RELEASE_TEXT_PREFIX):
        return None
    rest = bare[len(RELEASE_TEXT_PREFIX):]
    if rest == "token_embedding.weight":
        return "shared.weight"
    if rest == "norm.weight":
        return "encoder.final_layer_norm.weight"
    m = re.match(r"^blocks\.(\d+)\.(.+)$", rest)
    if m and m.group(2) in _UMT5_BLOCK_RENAMES:
        return f"encoder.block.{m.group(1)}.{_UMT5_BLOCK_RENAMES[m.group(2)]}"
    return None


def release_text_encoder(raw: dict[str, torch.Tensor], source: str | Path = "checkpoint") -> torch.nn.Module:
    """The release's frozen umT5 as a transformers ``UMT5EncoderModel`` (sizes read off the tensors;
    every key placed with its shape, or an error listing the ones that are not)."""
    from transformers import UMT5Config, UMT5EncoderModel

    state: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    for key, value in raw.items():
        if not key.removeprefix("module.").startswith(RELEASE_TEXT_PREFIX):
            continue
        name = release_umt5_key_to_hf(key)
        if name is None:
            unplaced.append(key)
        else:
            state[name] = value
    if not state:
        raise ValueError(f"{source} holds no {RELEASE_TEXT_PREFIX}* tensors (was the text encoder stripped?)")
    if unplaced:
        raise ValueError(f"{source}: {len(unplaced)} text-encoder keys have no place in umT5 (first: {unplaced[:5]})")
    vocab, d_model = state["shared.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.block."))
    buckets, heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    inner = state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    d_ff = state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    # umT5-XXL's settings for what the tensors do not show (Wan's T5: gelu-tanh gate, eps 1e-6, max distance 128)
    config = UMT5Config(vocab_size=int(vocab), d_model=int(d_model), d_kv=int(inner) // int(heads), d_ff=int(d_ff),
                        num_layers=int(layers), num_heads=int(heads), relative_attention_num_buckets=int(buckets),
                        relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
                        dropout_rate=0.0, tie_word_embeddings=False, is_encoder_decoder=False)
    model = UMT5EncoderModel(config)
    state["encoder.embed_tokens.weight"] = state["shared.weight"]  # one embedding, two names in transformers
    dtype = state["shared.weight"].dtype
    _load_strict(model.to(dtype), state, f"{source} (text_encoder.*)")
    return model.eval().requires_grad_(False)


def write_release_text_encoder(raw: dict[str, torch.Tensor], out: str | Path, tokenizer: str | Path | None = None,
                               source: str | Path = "checkpoint") -> Path:
    """Write the release's umT5 as ``out/text_encoder/`` (transformers layout, safetensors), plus
    ``out/tokenizer/`` copied from ``tokenizer`` (a folder, e.g. a Wan2.2 diffusers root's
    ``tokenizer/``; the release file holds no tokenizer). ``out`` is then a ``--text-path`` for the
    ``umt5`` text encoder. Written atomically."""
    import shutil

    from xwam.atomic import atomic_write_dir

    out = Path(out)
    model = release_text_encoder(raw, source)
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise FileNotFoundError(f"tokenizer folder {tokenizer} does not exist")
    atomic_write_dir(out / "text_encoder", lambda tmp: model.save_pretrained(str(tmp), safe_serialization=True))
    if tokenizer is not None:
        atomic_write_dir(out / "tokenizer", lambda tmp: shutil.copytree(tokenizer, tmp, dirs_exist_ok=True))
    return out / "text_encoder"


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape_errors = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or shape_errors:
        parts = []
        if missing:
            parts.append(f"{len(missing)} parameters missing (first: {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint tensors with no parameter (first: {unexpected[:5]})")
        if shape_errors:
            parts.append(f"{len(shape_errors)} shape mismatches (first: {shape_errors[:3]})")
        raise ValueError(f"cannot load {source} into the model: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
