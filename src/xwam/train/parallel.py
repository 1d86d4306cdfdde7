"""Processes and model placement: torchrun context, model construction, LoRA, FSDP2."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from xwam.config import XWAMConfig, get_preset
from xwam.model.checkpoint import CONFIG_FILE
from xwam.model.transformer import XWAMTransformer
from xwam.train.data import derive_seed
from xwam.train.options import TrainConfig

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # we initialised the process group (and destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def setup_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device} requested but CUDA is not available")
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistContext(rank, world, local_rank, dev, owns)


def build_model(tc: TrainConfig, cfg: XWAMConfig) -> XWAMTransformer:
    """The model before any adapter or wrapper, from ``tc.init`` (seeded random init by default)."""
    if tc.init is None:
        torch.manual_seed(derive_seed("init", tc.seed))
        return XWAMTransformer(cfg.model)
    kind, path = tc.init.split(":", 1)
    if not Path(path).exists():
        raise FileNotFoundError(f"--init {kind}: {path} does not exist")
    torch.manual_seed(derive_seed("init", tc.seed))  # new modules (depth head, action MLPs) of wan init
    if kind == "wan":
        from xwam.model.loading import build_from_wan

        return build_from_wan(path, cfg.model)
    if kind == "release":
        from xwam.model.loading import load_release_checkpoint

        return load_release_checkpoint(path, cfg.model)
    from xwam.model.checkpoint import load_checkpoint

    model, ckpt_cfg, _ = load_checkpoint(path)
    if ckpt_cfg.model != cfg.model:
        diffs = [
            f"{f.name}: checkpoint {getattr(ckpt_cfg.model, f.name)} vs config {getattr(cfg.model, f.name)}"
            for f in fields(cfg.model)
            if getattr(ckpt_cfg.model, f.name) != getattr(cfg.model, f.name)
        ]
        raise ValueError(f"--init xwam:{path} has a different model config: " + "; ".join(diffs))
    return model.train()


def resolve_model_config(tc: TrainConfig) -> XWAMConfig:
    """Preset + overrides; with ``--init xwam:PATH`` and no overrides, the checkpoint's own config."""
    if tc.init and tc.init.startswith("xwam:"):
        path = Path(tc.init.split(":", 1)[1]) / CONFIG_FILE
        if path.is_file():
            return XWAMConfig.from_json(path).override(tc.overrides)
    return get_preset(tc.preset).override(tc.overrides)


def apply_lora(model: XWAMTransformer, rank: int, alpha: float) -> None:
    """LoRA on the backbone's attention and FFN projections; the backbone's other weights frozen;
    new modules (view embedding, action/state MLPs, depth branch) stay fully trainable."""
    try:
        from peft import LoraConfig
    except ImportError as exc:  # pragma: no cover - peft is a declared train extra
        raise RuntimeError("LoRA needs the `peft` package: pip install 'xwam[train]'") from exc
    model.backbone.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, lora_dropout=0.0, init_lora_weights=True
        )
    )
    for name, param in model.backbone.named_parameters():
        param.requires_grad_("lora_" in name)


def merge_lora_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A PEFT-wrapped state dict -> plain xwam keys with ``W + scaling * B A`` merged in."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:  # adapter weights, merged into their base layer below
            continue
        if ".base_layer." in key:
            prefix, leaf = key.split(".base_layer.")
            new_key = f"{prefix}.{leaf}"
            if leaf == "weight":
                a = state[f"{prefix}.lora_A.default.weight"].float()
                b = state[f"{prefix}.lora_B.default.weight"].float()
                value = (value.float() + scaling * (b @ a)).to(value.dtype)
            out[new_key] = value
        else:
            out[key] = value
    return out


def all_blocks(model: XWAMTransformer) -> list[nn.Module]:
    blocks = list(model.backbone.blocks)
    if model.depth_branch is not None:
        blocks += list(model.depth_branch.blocks)
    return blocks


def shard_fsdp(model: XWAMTransformer, ctx: DistContext, precision: str) -> None:
    """FSDP2: ``fully_shard`` every transformer block (backbone and depth branch), then the root.

    The model calls its blocks as modules, so FSDP2's hooks unshard each block's parameters around
    its forward (and its recomputation under activation checkpointing) without patching anything.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if precision == "bf16":
        # bf16 compute copies of the fp32 master weights; gradients reduced in fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in all_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def place_model(model: XWAMTransformer, ctx: DistContext, parallel: str, precision: str,
                with_depth: bool) -> tuple[nn.Module, str]:
    """Move the model to the device and wrap it for the run's parallelism: (model to call, mode)."""
    model.to(ctx.device)
    mode = parallel if parallel != "auto" else "ddp"
    if not ctx.distributed:
        return model, "none"
    if mode == "fsdp":
        shard_fsdp(model, ctx, precision)
        return model, mode
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            # the depth branch gets no gradient when the data has no depth
            find_unused_parameters=(model.depth_branch is not None and not with_depth),
        ), mode
    return model, "none"


def full_model_state(module: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """Full (unsharded) state dict of the unwrapped model, on the CPU (collective under FSDP)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=sharded)
    return get_optimizer_state_dict(module, optimizer, options=options)
