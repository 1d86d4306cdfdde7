"""Training X-WAM: one CPU, one GPU, or many GPUs/nodes under ``torchrun`` (DDP or FSDP2).

Entry points: :func:`train` (Python; returns the final checkpoint folder) and ``xwam train`` (CLI).

Determinism and exact resume
    Every optimizer step ``s`` draws its *global* batch (``batch_size x world_size x grad_accum``
    clips) from a generator seeded by ``(seed, s)``, and every clip position ``j`` in it gets its
    own seed ``(seed, s, j)`` that drives the clip's augmentation/instruction draw and its noise
    (noise levels, Gaussian noise, text dropout). Nothing depends on how the global batch is split
    over ranks, micro-batches or DataLoader workers, so the data position is simply the step, and a
    resumed run (model, AdamW, schedule, EMA, RNG states restored) reproduces the uninterrupted one.

Global-batch objective
    The per-modality losses of ``xwam.diffusion.losses.xwam_losses`` are masked means; their
    denominators (valid action/state elements, which depend on the ANS clean-action draws and
    episode-end padding) differ between micro-batches. The trainer therefore sums squared errors
    locally and divides by denominators all-reduced over ranks and micro-batches before the
    backward pass: the gradient is exactly that of ``xwam_losses`` on the whole global batch
    (up to float summation order), whatever the number of ranks or accumulation steps.

Run folder layout (``TrainConfig.out``)::

    train_config.json  config.json  norm_stats.json   resolved configs and statistics
    metrics.jsonl                                     one JSON line per logged step (and validation)
    tensorboard/                                      TensorBoard scalars and validation images
    val/step-00000100/sample-0.png                    validation samples (RGB and depth)
    checkpoints/step-00000100/                        an xwam checkpoint (load_checkpoint works)
        model.safetensors config.json norm_stats.json     model (LoRA merged), config, statistics
        trainer_state.pt train_config.json                optimizer, schedule, RNG, sampler, EMA
        trainable.safetensors (LoRA) ema/ (EMA)           raw adapter weights; EMA model
    checkpoints/latest -> step-00000100               symlink, replaced atomically

Learning-rate defaults: 1e-5 when initialising from pretrained weights (``--init``; the release's
fine-tuning value, the X-WAM release), 3e-4 when training from scratch (the CPU presets: a small
transformer from random init tolerates and needs a much larger step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from xwam.config import XWAMConfig, get_preset
from xwam.model.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    STATS_FILE,
    atomic_write_dir,
    load_codec_state,
    write_checkpoint_files,
)
from xwam.model.transformer import XWAMTransformer

TRAIN_CONFIG_FILE = "train_config.json"
TRAINER_STATE_FILE = "trainer_state.pt"
TRAINABLE_FILE = "trainable.safetensors"
METRICS_FILE = "metrics.jsonl"
CODEC_FIT_FILE = "codec_fit.json"
SUMMARY_FILE = "train_summary.json"  # planned vs done steps, time, whether a time budget cut the run
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"

# PEFT targets in the Wan blocks (Wan2.2-TI2V-5B layout): attention projections and the FFN.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
PRETRAINED_LR = 1e-5
SCRATCH_LR = 3e-4


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm stopped the run (the last good checkpoint is kept)."""


@dataclass
class TrainConfig:
    """Everything about a training run except the model shape (that is the ``XWAMConfig``)."""

    data: list[str] = field(default_factory=list)  # dataset folders (LeRobot v3 or release layout)
    out: str = "runs/xwam"
    weights: list[float] | None = None  # mixture weights, one per dataset
    preset: str = "small"
    overrides: list[str] = field(default_factory=list)  # "section.field=value" on top of the preset
    init: str | None = None  # wan:PATH | release:PATH | xwam:PATH | None (from scratch)
    vae_path: str | None = None  # Wan2.2 diffusers root for the wan22-vae codec
    text_path: str | None = None  # Wan2.2 root for umT5 (or a MiniLM folder)
    norm_stats: str | None = None  # JSON file; default: the dataset's, computed if missing
    clips: str = (
        "model"  # "model" (clip layout of the model config) or "release" (9 x skip 4, 32 actions, augment)
    )
    augment: bool | None = None  # None: on for --clips release, off otherwise
    shift_augment: int = 0  # random shift of every view by up to N pixels (0: off)
    val_episodes: int = 0  # last N episodes of every dataset are held out for validation
    # optimisation
    steps: int = 1000
    batch_size: int = 4  # clips per rank per micro-batch
    grad_accum: int = 1
    lr: float | None = None  # None: PRETRAINED_LR with --init, SCRATCH_LR from scratch
    warmup: int | None = None  # None: min(200, steps // 10)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: float | None = None  # None: equal to the rank (scaling 1)
    gradient_checkpointing: bool = False
    # execution
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast, or FSDP2 bf16 params with fp32 reduce)
    parallel: str = "auto"  # auto (ddp when world > 1) | ddp | fsdp | none
    workers: int = 0
    threads: int | None = None  # torch.set_num_threads per process (None: leave torch's choice)
    cache_latents: bool = False  # keep VAE latents of un-augmented clips in memory
    codec_fit_clips: int = 512  # fitted codecs (pca): clips (evenly spaced over the data) the basis is fitted on
    # memory (MiB, per data-loading process) for decoded episodes: every episode that fits stays
    # decoded, so clips are sliced from memory instead of re-decoding an episode's videos per clip
    episode_cache_mb: float = 2048.0
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget; a final checkpoint is written when it runs out
    # bookkeeping
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 1
    val_every: int = 0  # 0: validate only at the end (if there are validation episodes)
    val_batches: int = 2
    val_images: bool = True
    resume: str | None = None  # "latest" or a checkpoint folder
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.data = [str(d) for d in ([self.data] if isinstance(self.data, str | Path) else self.data)]
        self.betas = tuple(float(b) for b in self.betas)
        if self.weights is not None:
            self.weights = [float(w) for w in self.weights]

    def validate(self) -> None:
        problems = []
        if not self.data:
            problems.append("no dataset given (data / --data)")
        if self.weights is not None and len(self.weights) != len(self.data):
            problems.append(f"{len(self.weights)} mixture weights for {len(self.data)} datasets")
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "save_every",
            "keep_last",
            "log_every",
            "val_batches",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.clips not in ("model", "release"):
            problems.append(f"clips must be 'model' or 'release', got {self.clips!r}")
        if self.precision not in ("fp32", "bf16"):
            problems.append(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.parallel not in ("auto", "ddp", "fsdp", "none"):
            problems.append(f"parallel must be auto, ddp, fsdp or none, got {self.parallel!r}")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.lora_rank < 0 or self.val_episodes < 0 or self.workers < 0 or self.val_every < 0:
            problems.append("lora_rank, val_episodes, workers and val_every must be >= 0")
        if self.init is not None and self.init.split(":", 1)[0] not in ("wan", "release", "xwam"):
            problems.append(f"init must look like wan:PATH, release:PATH or xwam:PATH, got {self.init!r}")
        if self.cache_latents and (self.resolved_augment() or self.shift_augment):
            problems.append("cache_latents needs augmentation off (augmented clips differ every draw)")
        if self.shift_augment < 0:
            problems.append(f"shift_augment must be >= 0, got {self.shift_augment}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def resolved_augment(self) -> bool:
        return self.clips == "release" if self.augment is None else bool(self.augment)

    def resolved(self) -> TrainConfig:
        """A copy with the data-dependent defaults (lr, warm-up, augmentation) filled in."""
        lr = self.lr if self.lr is not None else (PRETRAINED_LR if self.init else SCRATCH_LR)
        warmup = self.warmup if self.warmup is not None else min(200, self.steps // 10)
        alpha = self.lora_alpha if self.lora_alpha is not None else float(self.lora_rank)
        return dataclasses.replace(
            self,
            lr=lr,
            warmup=warmup,
            augment=self.resolved_augment(),
            lora_alpha=alpha if self.lora_rank else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{path} is not a valid training config: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# seeds, distributed context
# ---------------------------------------------------------------------------------------------
def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
class EpisodeSubset:
    """A dataset restricted to some of its episodes (train/validation split by episode index)."""

    def __init__(self, source: Any, episodes: Sequence[int]) -> None:
        self.source = source
        self.episode_ids = [int(e) for e in episodes]

    def __getattr__(self, name: str) -> Any:  # camera_names, has_depth, root, ... of the source
        if name == "source" or name.startswith("__"):  # unpickling in DataLoader workers
            raise AttributeError(name)
        return getattr(self.source, name)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    def episode_length(self, i: int) -> int:
        return self.source.episode_length(self.episode_ids[i])

    def episode(self, i: int, **kwargs: Any) -> Any:
        return self.source.episode(self.episode_ids[i], **kwargs)


def split_episodes(source: Any, val_episodes: int) -> tuple[Any, Any | None]:
    """(train, validation) views: the last ``val_episodes`` episodes are held out."""
    n = source.num_episodes
    if val_episodes == 0:
        return source, None
    if val_episodes >= n:
        raise ValueError(
            f"{getattr(source, 'root', source)}: cannot hold out {val_episodes} validation episodes "
            f"from {n} (at least one must remain for training)"
        )
    return EpisodeSubset(source, range(n - val_episodes)), EpisodeSubset(source, range(n - val_episodes, n))


def resolve_norm_stats(sources: Sequence[Any], roots: Sequence[str], path: str | None) -> Any:
    """Statistics from ``path``, else the dataset's own (one dataset), else computed over all datasets."""
    from xwam.data.stats import NormStats, compute_norm_stats, gather_state_action, load_dataset_norm_stats

    if path is not None:
        return NormStats.from_json(path)
    if len(sources) == 1:
        try:
            return load_dataset_norm_stats(roots[0])
        except FileNotFoundError:
            return compute_norm_stats(sources[0])
    states, actions = zip(*(gather_state_action(s) for s in sources))
    first = sources[0]
    return NormStats.from_arrays(
        np.concatenate(states),
        np.concatenate(actions),
        getattr(first, "state_names", None),
        getattr(first, "action_names", None),
    )


def check_data_matches_model(
    sources: Sequence[Any], roots: Sequence[str], stats: Any, cfg: XWAMConfig
) -> None:
    m = cfg.model
    for src, root in zip(sources, roots):
        if len(src.camera_names) != m.num_views:
            raise ValueError(
                f"{root} has {len(src.camera_names)} cameras {list(src.camera_names)} but the model expects "
                f"model.num_views={m.num_views}; pass --set model.num_views={len(src.camera_names)}"
            )
        if m.camera_names and list(src.camera_names) != list(m.camera_names):
            raise ValueError(
                f"{root} has cameras {list(src.camera_names)} but the model config names {m.camera_names} "
                f"(the view order the checkpoint will expect); pass "
                f"--set 'model.camera_names={json.dumps(list(src.camera_names))}'"
            )
    if not m.camera_names:
        # the checkpoint records the view order, so a policy knows which image is which view
        m.camera_names = list(sources[0].camera_names)
    if stats.state_dim != m.state_dim or stats.action_dim != m.action_dim:
        raise ValueError(
            f"the data has state dim {stats.state_dim} and action dim {stats.action_dim} but the model has "
            f"model.state_dim={m.state_dim}, model.action_dim={m.action_dim}; pass "
            f"--set model.state_dim={stats.state_dim} --set model.action_dim={stats.action_dim}"
        )


class KeyedClips(Dataset):
    """``ClipDataset`` indexed by (clip index, sample seed, global position) keys from :class:`StepSampler`."""

    def __init__(self, clips: Any) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        idx, sample_seed, position = key
        sample = self.clips.get(int(idx), generator=torch.Generator().manual_seed(int(sample_seed)))
        sample["clip_index"] = torch.tensor(int(idx), dtype=torch.int64)
        sample["sample_seed"] = torch.tensor(int(sample_seed), dtype=torch.int64)
        sample["sample_position"] = torch.tensor(int(position), dtype=torch.int64)
        return sample


class StepSampler(Sampler):
    """Micro-batches of (clip, seed, position) keys for steps ``start_step .. total_steps - 1``.

    Step ``s`` draws its global batch of ``G = batch_size * world * grad_accum`` clips with
    replacement from the mixture weights, using a generator seeded by ``(seed, s)``; micro-batch
    ``m`` of rank ``r`` takes positions ``[(m * world + r) * batch_size, ... + batch_size)``.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        *,
        batch_size: int,
        grad_accum: int,
        world: int,
        rank: int,
        seed: int,
        start_step: int,
        total_steps: int,
    ) -> None:
        self.weights = weights.double()
        self.batch_size, self.grad_accum, self.world, self.rank = batch_size, grad_accum, world, rank
        self.seed, self.start_step, self.total_steps = seed, start_step, total_steps

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world * self.grad_accum

    def step_keys(self, step: int) -> list[tuple[int, int, int]]:
        """All keys of the global batch of ``step``, in position order."""
        gen = torch.Generator().manual_seed(derive_seed("batch", self.seed, step))
        idx = torch.multinomial(self.weights, self.global_batch, replacement=True, generator=gen).tolist()
        return [(i, derive_seed("sample", self.seed, step, pos), pos) for pos, i in enumerate(idx)]

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int, int]]:
        start = (micro * self.world + self.rank) * self.batch_size
        return self.step_keys(step)[start : start + self.batch_size]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start_step, self.total_steps):
            keys = self.step_keys(step)
            for micro in range(self.grad_accum):
                start = (micro * self.world + self.rank) * self.batch_size
                yield keys[start : start + self.batch_size]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.grad_accum


# ---------------------------------------------------------------------------------------------
# noise and the global-batch objective
# ---------------------------------------------------------------------------------------------
@dataclass
class PreparedBatch:
    """One micro-batch on the device: clean inputs, its noise, and its loss masks."""

    video: torch.Tensor
    depth: torch.Tensor | None
    text: torch.Tensor
    actions: torch.Tensor
    states: torch.Tensor
    action_mask: torch.Tensor  # (B, K, A): validity x (not clean-action sample)
    state_mask: torch.Tensor  # (B, S, Ds): validity x keep, token 0 excluded
    t_video: torch.Tensor
    t_action: torch.Tensor
    e_video: torch.Tensor
    e_actions: torch.Tensor
    e_states: torch.Tensor

    def counts(self) -> torch.Tensor:
        """Loss denominators (video, action, state, depth) of this micro-batch."""
        video = float(self.video[:, :, :, 1:].numel())
        depth = float(self.depth.numel()) if self.depth is not None else 0.0
        return torch.tensor(
            [video, float(self.action_mask.sum()), float(self.state_mask.sum()), depth], dtype=torch.float64
        )


LOSS_NAMES = ("video", "action", "state", "depth")


def draw_sample_noise(
    sample_seeds: Sequence[int],
    video_shape: Sequence[int],
    action_shape: Sequence[int],
    state_shape: Sequence[int],
    diffusion: Any,
) -> dict[str, torch.Tensor]:
    """Per-sample noise levels, Gaussian noise and text-dropout flags, each from the sample's own seed.

    Draw order per sample follows ``training_losses``: levels, video noise, action noise, state noise,
    text dropout.
    """
    from xwam.diffusion.ans import ans_timesteps

    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("t_video", "t_action", "clean", "e_video", "e_actions", "e_states", "drop")
    }
    for seed in sample_seeds:
        g = torch.Generator().manual_seed(derive_seed("noise", int(seed)))
        levels = ans_timesteps(
            1,
            diffusion.timestep_mode,
            shift=diffusion.shift,
            clean_action_prob=diffusion.clean_action_prob,
            beta_a=diffusion.beta_a,
            beta_b=diffusion.beta_b,
            generator=g,
        )
        parts["t_video"].append(levels.t_video)
        parts["t_action"].append(levels.t_action)
        parts["clean"].append(levels.actions_clean)
        parts["e_video"].append(torch.randn(tuple(video_shape), generator=g))
        parts["e_actions"].append(torch.randn(tuple(action_shape), generator=g))
        parts["e_states"].append(torch.randn(tuple(state_shape), generator=g))
        parts["drop"].append(torch.rand(1, generator=g) < diffusion.text_dropout)
    out = {
        k: (torch.cat(v) if k in ("t_video", "t_action", "clean", "drop") else torch.stack(v))
        for k, v in parts.items()
    }
    return out


def prepare_batch(
    inputs: Any, sample_seeds: Sequence[int], diffusion: Any, device: torch.device
) -> PreparedBatch:
    """Clean model inputs (``TrainingInputs``) + per-sample noise -> a :class:`PreparedBatch`."""
    video = inputs.video.to(device).float()
    actions, states = inputs.actions.to(device).float(), inputs.states.to(device).float()
    noise = draw_sample_noise(sample_seeds, video.shape[1:], actions.shape[1:], states.shape[1:], diffusion)
    text = inputs.text.to(device).float()
    if diffusion.text_dropout > 0:
        uncond = inputs.text_uncond.to(device).float().expand_as(text)
        text = torch.where(noise["drop"].to(device)[:, None, None], uncond, text)
    keep = (~noise["clean"]).float().to(device)
    action_mask = keep[:, None, None] * inputs.action_mask.to(device).float()
    state_mask = (keep[:, None, None] * inputs.state_mask.to(device).float()).expand_as(states).clone()
    state_mask[:, 0] = 0.0  # state 0 is the clean current state
    return PreparedBatch(
        video=video,
        depth=inputs.depth.to(device).float() if inputs.depth is not None else None,
        text=text,
        actions=actions,
        states=states,
        action_mask=action_mask,
        state_mask=state_mask,
        t_video=noise["t_video"].to(device),
        t_action=noise["t_action"].to(device),
        e_video=noise["e_video"].to(device),
        e_actions=noise["e_actions"].to(device),
        e_states=noise["e_states"].to(device),
    )


def loss_sums(model: nn.Module, batch: PreparedBatch) -> dict[str, torch.Tensor]:
    """Summed squared errors per modality (the numerators of ``xwam_losses``) for one micro-batch."""
    from xwam.diffusion.flow import add_noise, velocity_target

    video, actions, states = batch.video, batch.actions, batch.states
    noisy_video = add_noise(video, batch.e_video, batch.t_video)
    noisy_video[:, :, :, :1] = video[:, :, :, :1]  # the observation stays clean
    noisy_actions = add_noise(actions, batch.e_actions, batch.t_action)
    noisy_states = add_noise(states, batch.e_states, batch.t_action)
    noisy_states[:, :1] = states[:, :1]
    out = model(
        noisy_video,
        batch.text,
        batch.t_video,
        batch.t_action,
        noisy_actions,
        noisy_states,
        depth=batch.depth is not None,
    )
    sums = {
        "video": (
            (out.video[:, :, :, 1:].float() - velocity_target(video, batch.e_video)[:, :, :, 1:]) ** 2
        ).sum(),
        "action": (
            ((out.actions.float() - velocity_target(actions, batch.e_actions)) ** 2) * batch.action_mask
        ).sum(),
        "state": (
            ((out.states.float() - velocity_target(states, batch.e_states)) ** 2) * batch.state_mask
        ).sum(),
    }
    sums["depth"] = (
        ((out.depth.float() - batch.depth) ** 2).sum() if batch.depth is not None else video.new_zeros(())
    )
    return sums


def losses_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """Per-modality mean losses and their sum ``total`` from summed errors and denominators."""
    sums = sums.detach()
    out = {
        name: float(sums[i] / max(float(counts[i]), 1.0))
        for i, name in enumerate(LOSS_NAMES)
        if name != "depth" or counts[3] > 0
    }
    out["total"] = float(sum(out.values()))
    return out


# ---------------------------------------------------------------------------------------------
# model construction, LoRA, sharding
# ---------------------------------------------------------------------------------------------
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


def route_blocks_through_call(model: XWAMTransformer) -> None:
    """Make ``XWAMTransformer`` run its blocks through ``Module.__call__``.

    ``XWAMTransformer._run`` calls the functional ``block_forward(block, ...)``, which bypasses the
    block's forward hooks; FSDP2 unshards a block's parameters in exactly those hooks. Each block's
    ``forward`` becomes ``block_forward`` bound to it and ``_run`` calls the block, so FSDP2 (and
    activation checkpointing, which recomputes through the same call) sees every block execution.
    """
    from xwam.model.transformer import block_forward

    for block in all_blocks(model):
        block.forward = functools.partial(block_forward, block)

    def run(block: nn.Module, x, context, mod, rope, extra_kv=None):  # noqa: ANN001 - mirrors _run
        if model.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                block, x, context, mod, rope, extra_kv, use_reentrant=False
            )
        return block(x, context, mod, rope, extra_kv)

    model._run = run


def shard_fsdp(model: XWAMTransformer, ctx: DistContext, precision: str) -> None:
    """FSDP2: ``fully_shard`` every transformer block (backbone and depth branch), then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if precision == "bf16":
        # bf16 compute copies of the fp32 master weights; gradients reduced in fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    route_blocks_through_call(model)
    for block in all_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


# ---------------------------------------------------------------------------------------------
# schedule, RNG states, misc
# ---------------------------------------------------------------------------------------------
def cosine_with_warmup(warmup: int, total: int, min_ratio: float = 0.0):
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay after ``step`` updates, warmed up as (1 + step) / (10 + step) up to ``decay``.

    A model trained from scratch starts from noise: a fixed decay of 0.999 would still carry 7 % of
    the initial weights after 2600 steps, so the average follows the weights closely at first.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()  # noqa: NPY002 - saving the global legacy RNG on purpose
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` points to (None when the run has none)."""
    link = Path(run_dir) / CHECKPOINTS_DIR / LATEST
    if link.is_symlink() or link.exists():
        target = link.resolve()
        if (target / MODEL_FILE).is_file() and (target / TRAINER_STATE_FILE).is_file():
            return target
    return None


def _point_latest(ckpt_dir: Path) -> None:
    link = ckpt_dir.parent / LATEST
    tmp = ckpt_dir.parent / f".{LATEST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(ckpt_dir.name, tmp)
    os.replace(tmp, link)  # atomic: readers see the old or the new target, never none


def _prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    current = (ckpt_root / LATEST).resolve()
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step-*.tmp-*"):  # left behind by a killed writer
        shutil.rmtree(stale, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def _depth_to_uint8(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric depth -> grey image of inverse depth (near bright, far dark), (..., H, W, 3)."""
    inv = (1.0 / np.clip(depth, near, far) - 1.0 / far) / (1.0 / near - 1.0 / far)
    grey = (np.clip(inv, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _tile(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of (V, F, H, W, 3) images -> one grid image: each row lists views x frames."""
    lines = []
    for row in rows:
        views = [np.concatenate(list(view), axis=1) for view in row]  # frames side by side
        lines.append(np.concatenate(views, axis=1))
    return np.concatenate(lines, axis=0)


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Holds the model, optimizer, data and logging of one run; :meth:`fit` trains it."""

    def __init__(
        self, tc: TrainConfig, cfg: XWAMConfig | None = None, ctx: DistContext | None = None
    ) -> None:
        tc.validate()
        self.start_time = time.monotonic()
        self.ctx = ctx or setup_distributed(tc.device)
        if tc.threads:
            torch.set_num_threads(int(tc.threads))
        self.run_dir = Path(tc.out)
        resume_from = self._find_resume(tc)
        if resume_from is not None and cfg is None:  # the run keeps the model config it started with
            cfg = XWAMConfig.from_json(resume_from / CONFIG_FILE)
        self.tc = tc.resolved()
        self.cfg = cfg or resolve_model_config(self.tc)
        self.resume_from = resume_from
        self.codec_fit: dict[str, Any] | None = None  # set when a fitted codec is fitted by this run
        if resume_from is None and any((self.run_dir / CHECKPOINTS_DIR).glob("step-*")):
            raise ValueError(
                f"{self.run_dir} already holds checkpoints: pass --resume to continue it or choose another --out"
            )
        self._build_data()
        self._build_model()
        self._build_optimizer()
        self.step = 0
        if resume_from is not None:
            self._load_trainer_state(resume_from)
        self._build_loader()
        self.writer = None
        self._metrics_path = self.run_dir / METRICS_FILE
        if self.ctx.is_main:
            self._init_run_dir()
        self.ctx.barrier()

    # ---- setup --------------------------------------------------------------------------------
    def _find_resume(self, tc: TrainConfig) -> Path | None:
        if not tc.resume:
            return None
        if tc.resume == "latest":
            found = latest_checkpoint(tc.out)
            if found is None and self.ctx.is_main:
                print(f"xwam train: no checkpoint in {tc.out} yet; starting a new run", file=sys.stderr)
            return found
        path = Path(tc.resume)
        if not (path / TRAINER_STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume {path}: not a training checkpoint (no {TRAINER_STATE_FILE})")
        return path

    def _build_data(self) -> None:
        from xwam.data import ClipConfig, ClipDataset, open_dataset

        tc, m = self.tc, self.cfg.model
        self.sources = [open_dataset(root) for root in tc.data]
        budget = int(tc.episode_cache_mb * 2**20 / max(1, len(self.sources)))
        for src in self.sources:
            src.set_cache(max_episodes=len(src), max_bytes=budget)
        stats_path = tc.norm_stats
        if self.resume_from is not None and (self.resume_from / STATS_FILE).is_file():
            stats_path = str(self.resume_from / STATS_FILE)  # the run keeps the statistics it started with
        self.norm_stats = resolve_norm_stats(self.sources, tc.data, stats_path)
        check_data_matches_model(self.sources, tc.data, self.norm_stats, self.cfg)
        if tc.clips == "release":
            clip_cfg = ClipConfig.release(
                image_size=(m.image_height, m.image_width), augment=tc.augment, seed=tc.seed,
                shift_pixels=tc.shift_augment,
            )
            layout = (clip_cfg.num_frames, clip_cfg.frame_skip, clip_cfg.action_horizon)
            if layout != (m.num_frames, m.frame_skip, m.action_horizon):
                raise ValueError(
                    f"--clips release uses 9 frames, skip 4, 32 actions but the model has num_frames="
                    f"{m.num_frames}, frame_skip={m.frame_skip}, action_horizon={m.action_horizon}"
                )
        else:
            clip_cfg = ClipConfig.from_model(m, augment=tc.augment, seed=tc.seed, shift_pixels=tc.shift_augment)
        splits = [split_episodes(s, tc.val_episodes) for s in self.sources]
        self.train_clips = ClipDataset(
            [s for s, _ in splits], clip_cfg, weights=tc.weights, norm_stats=self.norm_stats
        )
        self.val_clips = None
        if tc.val_episodes:
            val_cfg = dataclasses.replace(clip_cfg, augment=False, shift_pixels=0)
            self.val_clips = ClipDataset([v for _, v in splits], val_cfg, norm_stats=self.norm_stats)
        self.with_depth = self.train_clips.with_depth and m.depth_layers > 0
        from xwam.processor import XWAMProcessor

        self.processor = XWAMProcessor.build(
            m,
            self.norm_stats,
            vae_path=tc.vae_path,
            text_path=tc.text_path,
            device=self.ctx.device,
            codec_state=self._codec_state(clip_cfg, [s for s, _ in splits]),
        )
        self._latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _codec_state(self, clip_cfg: Any, sources: list[Any]) -> dict[str, torch.Tensor] | None:
        """A fitted codec's state: the run's own when resuming, the initial checkpoint's with
        ``--init xwam:``, else fitted now on evenly spaced un-augmented training clips (deterministic)."""
        from xwam.processor import FITTED_CODECS, XWAMProcessor

        m, tc = self.cfg.model, self.tc
        if m.codec not in FITTED_CODECS:
            return None
        for origin in (self.resume_from, Path(tc.init.split(":", 1)[1]) if tc.init and tc.init.startswith("xwam:")
                       else None):
            if origin is not None:
                state = load_codec_state(origin)
                if state is None:
                    raise ValueError(f"{origin} has no codec.safetensors, which its {m.codec!r} codec needs")
                return state
        from xwam.data import ClipDataset

        started = time.perf_counter()
        clips = ClipDataset(sources, dataclasses.replace(clip_cfg, augment=False, shift_pixels=0),
                            norm_stats=self.norm_stats)
        picks = np.unique(np.linspace(0, len(clips) - 1, min(len(clips), tc.codec_fit_clips)).round().astype(int))
        samples = [clips[int(i)] for i in picks]
        images = torch.stack([x["images"] for x in samples])
        depth = torch.stack([x["depth"] for x in samples]) if all("depth" in x for x in samples) else None
        state = XWAMProcessor.fit_codec_state(m, images, depth)
        self.codec_fit = {
            "codec": m.codec, "latent_channels": m.latent_channels, "clips": len(samples),
            "frames": int(images.shape[0] * images.shape[1] * images.shape[2]),
            "rgb_reconstruction_psnr_db": float(state["rgb.reconstruction_psnr"]),
            "depth_reconstruction_psnr_db": float(state["depth.reconstruction_psnr"]) if depth is not None else None,
            "seconds": round(time.perf_counter() - started, 2),
        }
        if self.ctx.is_main:
            depth_note = (f", inverse depth {self.codec_fit['depth_reconstruction_psnr_db']:.1f} dB"
                          if depth is not None else "")
            print(f"xwam train: fitted the {m.codec} codec ({m.latent_channels} components per "
                  f"{m.spatial_compression}x{m.spatial_compression} patch) on {len(samples)} clips in "
                  f"{self.codec_fit['seconds']:.1f} s: RGB reconstruction {self.codec_fit['rgb_reconstruction_psnr_db']:.1f} dB"
                  f"{depth_note}", file=sys.stderr)
        return state

    def _build_model(self) -> None:
        tc, ctx = self.tc, self.ctx
        if self.resume_from is not None and not tc.lora_rank:
            model = XWAMTransformer(self.cfg.model)  # every weight comes from the checkpoint below
        else:
            model = build_model(tc, self.cfg).float()
        if tc.lora_rank:
            apply_lora(model, tc.lora_rank, float(tc.lora_alpha))
        if tc.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        self.module = model
        if self.resume_from is not None and not tc.lora_rank:
            # full fine-tuning: the checkpoint's model.safetensors is the exact raw state
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(self.resume_from / MODEL_FILE)))
        elif self.resume_from is not None:
            from safetensors.torch import load_file

            missing = model.load_state_dict(load_file(str(self.resume_from / TRAINABLE_FILE)), strict=False)
            if missing.unexpected_keys:
                raise ValueError(
                    f"{self.resume_from / TRAINABLE_FILE}: unexpected keys {missing.unexpected_keys[:5]}"
                )
        model.to(ctx.device)
        mode = tc.parallel if tc.parallel != "auto" else ("ddp" if ctx.distributed else "none")
        if not ctx.distributed:
            mode = "none"
        self.mode = mode
        if mode == "fsdp":
            shard_fsdp(model, ctx, tc.precision)
            self.model: nn.Module = model
        elif mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=(model.depth_branch is not None and not self.with_depth),
            )
        else:
            self.model = model
        self.autocast = tc.precision == "bf16" and mode != "fsdp"

    def _build_optimizer(self) -> None:
        tc = self.tc
        params = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: every parameter is frozen")
        # no weight decay on biases, norms and other vectors
        decay = [p for n, p in params if p.ndim >= 2]
        no_decay = [p for n, p in params if p.ndim < 2]
        self.trainable = [p for _, p in params]
        self.trainable_names = [n for n, _ in params]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.lr,
            betas=tc.betas,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(tc.warmup, tc.steps, tc.min_lr_ratio)
        )
        # per-modality loss weights in LOSS_NAMES order, applied to the per-rank loss sums every step
        lw = self.cfg.diffusion.loss_weights()
        self.loss_weights = torch.tensor([lw[k] for k in LOSS_NAMES], device=self.ctx.device)
        self.ema: list[torch.Tensor] | None = None
        if tc.ema_decay > 0:
            self.ema = [p.detach().clone().float() for p in self.trainable]

    def _build_loader(self) -> None:
        tc, ctx = self.tc, self.ctx
        self.sampler = StepSampler(
            self.train_clips.sample_weights(),
            batch_size=tc.batch_size,
            grad_accum=tc.grad_accum,
            world=ctx.world,
            rank=ctx.rank,
            seed=tc.seed,
            start_step=self.step,
            total_steps=tc.steps,
        )
        gen = torch.Generator().manual_seed(derive_seed("workers", tc.seed, self.step, ctx.rank))
        self.loader = DataLoader(
            KeyedClips(self.train_clips),
            batch_sampler=self.sampler,
            num_workers=tc.workers,
            generator=gen,
            persistent_workers=False,
            prefetch_factor=2 if tc.workers else None,
        )

    def _init_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.run_dir / TRAIN_CONFIG_FILE, json.dumps(self.tc.to_dict(), indent=2) + "\n")
        _atomic_write_text(self.run_dir / CONFIG_FILE, self.cfg.to_json() + "\n")
        _atomic_write_text(self.run_dir / STATS_FILE, json.dumps(self.norm_stats.to_dict(), indent=2) + "\n")
        if self.codec_fit is not None:
            _atomic_write_text(self.run_dir / CODEC_FIT_FILE, json.dumps(self.codec_fit, indent=2) + "\n")
        # metrics logged after the checkpoint we resume from would be duplicated: drop them
        if self._metrics_path.exists():
            keep = []
            for line in self._metrics_path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
            if self.step == 0:
                keep = []
            _atomic_write_text(self._metrics_path, "".join(f"{x}\n" for x in keep))
        if self.tc.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)
            except ImportError:
                print(
                    "xwam train: tensorboard is not installed; logging to metrics.jsonl only", file=sys.stderr
                )

    # ---- inputs -------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> Any:
        """Collated clips -> ``TrainingInputs`` (latents from the cache when enabled)."""
        if not self.tc.cache_latents:
            return self.processor.training_inputs(batch, with_depth=self.with_depth)
        from xwam.processor import TrainingInputs

        ids = batch["clip_index"].tolist()
        missing = [i for i, c in enumerate(ids) if c not in self._latent_cache]
        if missing:
            sel = torch.tensor(missing)
            video = self.processor.encode_video(batch["images"][sel]).cpu()
            depth = self.processor.encode_depth(batch["depth"][sel]).cpu() if self.with_depth else None
            for j, i in enumerate(missing):
                self._latent_cache[ids[i]] = (video[j], depth[j] if depth is not None else None)
        video = torch.stack([self._latent_cache[c][0] for c in ids])
        depth = torch.stack([self._latent_cache[c][1] for c in ids]) if self.with_depth else None
        stats = self.norm_stats
        return TrainingInputs(
            video=video,
            text=self.processor.encode_text(batch["instruction"]),
            text_uncond=self.processor.empty_text(),
            actions=batch["action_norm"].float(),
            states=batch["state_norm"].float(),
            action_mask=batch["action_mask"].float(),
            state_mask=torch.as_tensor(stats.state_valid).float(),
            depth=depth,
        )

    def _prepare(self, batch: dict[str, Any]) -> PreparedBatch:
        seeds = batch["sample_seed"].tolist()
        return prepare_batch(self._inputs(batch), seeds, self.cfg.diffusion, self.ctx.device)

    def _autocast(self):
        if self.autocast:
            return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _no_sync(self, last: bool):
        if last:
            return contextlib.nullcontext()
        if self.mode == "ddp":
            return self.model.no_sync()
        return contextlib.nullcontext()  # FSDP2: set_requires_gradient_sync in train_step

    # ---- one optimizer step -------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """Forward/backward over the micro-batches of one step, then clip, step and update EMA."""
        ctx = self.ctx
        prepared = [self._prepare(b) for b in micro_batches]
        counts = ctx.all_reduce_sum(torch.stack([p.counts() for p in prepared]).sum(0).to(ctx.device))
        # DDP/FSDP average gradients over ranks: scale by world so the result is the global-batch mean
        denom = counts.clamp_min(1.0).float() / ctx.world
        total_sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)
        for i, batch in enumerate(prepared):
            last = i == len(prepared) - 1
            if self.mode == "fsdp":
                self.model.set_requires_gradient_sync(last)
            with self._no_sync(last), self._autocast():
                sums = loss_sums(self.model, batch)
                stacked = torch.stack([sums[k].float() for k in LOSS_NAMES])
                loss = (stacked / denom * self.loss_weights).sum()
            loss.backward()
            total_sums += stacked.detach().double()
        ctx.all_reduce_sum(total_sums)
        losses = losses_from_sums(total_sums.cpu(), counts.cpu())
        if not math.isfinite(losses["total"]):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(self._divergence_message("loss", losses))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.tc.clip_grad)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                self._divergence_message("gradient norm", {"grad_norm": grad_norm, **losses})
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            decay = ema_decay_at(self.step, self.tc.ema_decay)
            with torch.no_grad():
                for shadow, p in zip(self.ema, self.trainable):
                    shadow.lerp_(p.detach().float(), 1.0 - decay)
        losses["grad_norm"] = grad_norm
        return losses

    def _divergence_message(self, what: str, values: dict[str, float]) -> str:
        last = latest_checkpoint(self.run_dir)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        keep = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        return (
            f"non-finite {what} at step {self.step + 1} ({shown}); training stopped and {keep}. "
            "Lower --lr, use fp32, or check the data for NaN/inf values"
        )

    # ---- checkpoints --------------------------------------------------------------------------
    def _full_model_state(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) state dict of the unwrapped model, on the CPU (collective under FSDP)."""
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def _full_optimizer_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=self.mode == "fsdp")
        return get_optimizer_state_dict(self.module, self.optimizer, options=options)

    def _export(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain xwam model weights (LoRA merged)."""
        if self.tc.lora_rank:
            state = merge_lora_state(state, float(self.tc.lora_alpha) / self.tc.lora_rank)
        return {k: v.detach().float().contiguous().cpu() for k, v in state.items()}

    def _ema_state(self) -> dict[str, torch.Tensor]:
        """Model weights with the EMA values swapped in (collective under FSDP)."""
        assert self.ema is not None
        backup = [p.detach().clone() for p in self.trainable]
        with torch.no_grad():
            for p, shadow in zip(self.trainable, self.ema):
                p.copy_(shadow)
            state = self._full_model_state()
            for p, saved in zip(self.trainable, backup):
                p.copy_(saved)
        return state

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` atomically, point ``latest`` at it and prune old ones."""
        from safetensors.torch import save_file

        ctx = self.ctx
        raw = self._full_model_state()
        optim = self._full_optimizer_state()
        ema = self._ema_state() if self.ema is not None else None
        ema_raw = None
        if self.ema is not None:
            ema_raw = {
                n: (s.full_tensor() if hasattr(s, "full_tensor") else s).detach().cpu()
                for n, s in zip(self.trainable_names, self.ema)
            }
        ckpt_root = self.run_dir / CHECKPOINTS_DIR
        target = ckpt_root / f"step-{self.step:08d}"
        if ctx.is_main:
            model_state = self._export(raw)
            stats = self.norm_stats.to_dict()
            trainer_state = {
                "step": self.step,
                "optimizer": optim,
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "sampler": {
                    "seed": self.tc.seed,
                    "next_step": self.step,
                    "global_batch": self.sampler.global_batch,
                },
                "ema": ema_raw,
                "world_size": ctx.world,
            }
            meta = {"step": str(self.step), "preset": self.cfg.preset}

            codec_state = self.processor.codec_state()

            def write(tmp: Path) -> None:
                write_checkpoint_files(tmp, model_state, self.cfg, stats, meta, codec_state)
                (tmp / TRAIN_CONFIG_FILE).write_text(json.dumps(self.tc.to_dict(), indent=2) + "\n")
                if self.tc.lora_rank:
                    trainable = {n: raw[n].detach().float().contiguous() for n in self.trainable_names}
                    save_file(trainable, str(tmp / TRAINABLE_FILE))
                if ema is not None:
                    (tmp / "ema").mkdir()
                    write_checkpoint_files(tmp / "ema", self._export(ema), self.cfg, stats, meta, codec_state)
                torch.save(trainer_state, tmp / TRAINER_STATE_FILE)

            atomic_write_dir(target, write)
            _point_latest(target)
            _prune_checkpoints(ckpt_root, self.tc.keep_last)
        ctx.barrier()
        return target

    def _load_trainer_state(self, ckpt: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = torch.load(ckpt / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(
            self.module, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{ckpt}: the run now uses EMA but the checkpoint holds none")
            with torch.no_grad():
                for i, name in enumerate(self.trainable_names):
                    full = state["ema"][name].to(self.ctx.device)
                    p = self.trainable[i]
                    if hasattr(p, "device_mesh"):
                        from torch.distributed.tensor import distribute_tensor

                        full = distribute_tensor(full, p.device_mesh, p.placements)
                    self.ema[i] = full.float()
        if self.step >= self.tc.steps and self.ctx.is_main:
            print(
                f"xwam train: {ckpt} is at step {self.step} >= steps={self.tc.steps}; nothing to do",
                file=sys.stderr,
            )

    # ---- logging and validation -------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        with open(self._metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = "val" if record.get("split") == "val" else "train"
            for key, value in record.items():
                if key in ("step", "split", "time") or not isinstance(value, int | float):
                    continue
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Held-out losses on fixed clips with fixed noise (comparable across steps) + PNG samples."""
        if self.val_clips is None:
            return None
        self.module.eval()
        tc, n = self.tc, len(self.val_clips)
        total = min(n, tc.val_batches * tc.batch_size)
        picks = np.linspace(0, n - 1, total).round().astype(int).tolist()
        sums = torch.zeros(4, dtype=torch.float64)
        counts = torch.zeros(4, dtype=torch.float64)
        first = None
        for start in range(0, total, tc.batch_size):
            keys = [(i, derive_seed("val", tc.seed, pos), pos) for pos, i in enumerate(picks)][
                start : start + tc.batch_size
            ]
            batch = torch.utils.data.default_collate([KeyedClips(self.val_clips)[k] for k in keys])
            prepared = prepare_batch(
                self.processor.training_inputs(batch, with_depth=self.with_depth),
                batch["sample_seed"].tolist(),
                self.cfg.diffusion,
                self.ctx.device,
            )
            with self._autocast():
                s = loss_sums(self.module, prepared)
            sums += torch.stack([s[k].double().cpu() for k in LOSS_NAMES])
            counts += prepared.counts()
            if first is None:
                first = (batch, prepared)
        losses = losses_from_sums(sums, counts)
        if tc.val_images and first is not None:
            self._write_samples(*first)
        self.module.train()
        return losses

    def _write_samples(self, batch: dict[str, Any], prepared: PreparedBatch) -> None:
        """Sample the first validation clip in 4D mode and write GT / predicted RGB and depth as PNG."""
        from xwam.diffusion.sampler import AsyncSampler, Conditioning

        cond = Conditioning(
            video0=prepared.video[:1, :, :, :1],
            state0=prepared.states[:1, 0],
            text=self.processor.encode_text(batch["instruction"][:1]).to(self.ctx.device),
        )
        result = AsyncSampler(self.module, self.cfg.sampler).sample(
            cond,
            mode="4d",
            depth=self.with_depth,
            generator=torch.Generator(self.ctx.device).manual_seed(self.tc.seed),
        )
        if not self.ctx.is_main:
            return
        m = self.cfg.model
        gt = batch["images"][:1].permute(0, 1, 2, 4, 5, 3).numpy()[0]  # (V, F, H, W, 3)
        if gt.dtype != np.uint8:
            gt = ((gt + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        rows = [gt, self.processor.decode_video(result.video.float()).cpu().numpy()[0]]
        if result.depth is not None:
            if "depth" in batch:
                rows.append(_depth_to_uint8(batch["depth"][:1].numpy()[0], m.depth_near, m.depth_far))
            pred = self.processor.decode_depth(result.depth.float()).cpu().numpy()[0]
            rows.append(_depth_to_uint8(pred, m.depth_near, m.depth_far))
        frames = min(r.shape[1] for r in rows)
        grid = _tile([r[:, :frames] for r in rows])
        _write_png(self.run_dir / "val" / f"step-{self.step:08d}" / "sample-0.png", grid)
        if self.writer is not None:
            self.writer.add_image("val/sample", grid, self.step, dataformats="HWC")

    # ---- the loop -----------------------------------------------------------------------------
    def out_of_time(self) -> bool:
        if self.tc.max_minutes is None:
            return False
        return self.ctx.any(time.monotonic() - self.start_time >= 60.0 * self.tc.max_minutes)

    def fit(self) -> Path:
        """Train to ``steps`` (or until ``max_minutes``); returns the final checkpoint folder."""
        tc, ctx = self.tc, self.ctx
        from tqdm.auto import tqdm

        bar = tqdm(
            total=tc.steps,
            initial=self.step,
            disable=not (ctx.is_main and tc.progress),
            desc="train",
            dynamic_ncols=True,
        )
        last_saved: Path | None = self.resume_from
        iterator = iter(self.loader)
        window_start, window_samples = time.perf_counter(), 0
        fit_start, first_step = time.perf_counter(), self.step
        # time estimate from a measured warm-up: steps first+5 .. first+5+n (the first few steps fill caches)
        warm = (first_step + 5, first_step + 5 + max(5, min(50, (tc.steps - first_step) // 20)))
        warm_t0 = None
        cut_by_time = False
        try:
            while self.step < tc.steps:
                if self.out_of_time():
                    cut_by_time = True
                    if ctx.is_main:
                        bar.clear()
                        print(
                            f"\nxwam train: WARNING: the time budget of {tc.max_minutes:g} min cut the run at step "
                            f"{self.step} of {tc.steps}: the schedule is incomplete (learning rate "
                            f"{self.scheduler.get_last_lr()[0]:.2e} instead of its final value), so results differ "
                            "from a full run and from runs on faster or slower machines\n",
                            file=sys.stderr,
                        )
                    break
                if self.step == warm[0]:
                    warm_t0 = time.perf_counter()
                micro = [next(iterator) for _ in range(tc.grad_accum)]
                losses = self.train_step(micro)
                self.step += 1
                if self.step == warm[1] and warm_t0 is not None and ctx.is_main:
                    per_step = (time.perf_counter() - warm_t0) / (warm[1] - warm[0])
                    bar.write(
                        f"xwam train: {per_step:.3f} s/step measured over steps {warm[0] + 1}-{warm[1]}; about "
                        f"{per_step * (tc.steps - self.step) / 60:.1f} min for the remaining {tc.steps - self.step} steps"
                    )
                window_samples += self.sampler.global_batch
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": self.step,
                        "time": round(time.monotonic() - self.start_time, 3),
                        "loss": losses["total"],
                        **{f"loss_{k}": v for k, v in losses.items() if k not in ("total", "grad_norm")},
                        "grad_norm": losses["grad_norm"],
                        "lr": self.scheduler.get_last_lr()[0],
                        "samples_per_s": window_samples / max(elapsed, 1e-9),
                        "s_per_step": elapsed / max(window_samples / self.sampler.global_batch, 1),
                    }
                    self._log(record)
                    bar.set_postfix(loss=f"{losses['total']:.4f}", sps=f"{record['samples_per_s']:.2f}")
                    window_start, window_samples = time.perf_counter(), 0
                bar.update(1)
                if tc.val_every and self.step % tc.val_every == 0 and self.step < tc.steps:
                    self._validate_and_log()
                if self.step % tc.save_every == 0 and self.step < tc.steps:
                    last_saved = self.save_checkpoint()
        finally:
            bar.close()
        if last_saved is None or self.step != self._step_of(last_saved):
            last_saved = self.save_checkpoint()
        seconds = time.perf_counter() - fit_start
        summary = {"steps": tc.steps, "steps_done": self.step, "steps_this_session": self.step - first_step,
                   "seconds_this_session": round(seconds, 1), "cut_by_time": cut_by_time,
                   "max_minutes": tc.max_minutes, "checkpoint": str(last_saved)}
        if ctx.is_main:
            _atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
            print(f"xwam train: {self.step - first_step} steps in {seconds / 60:.1f} min "
                  f"({(self.step - first_step) / max(seconds, 1e-9):.2f} steps/s); now at step {self.step} of {tc.steps}"
                  + (" (CUT by the time budget)" if cut_by_time else ""), file=sys.stderr)
        if self.val_clips is not None:
            self._validate_and_log()
        if self.writer is not None:
            self.writer.close()
        return last_saved

    @staticmethod
    def _step_of(ckpt: Path) -> int:
        try:
            return int(Path(ckpt).name.split("-")[-1])
        except ValueError:
            return -1

    def _validate_and_log(self) -> None:
        losses = self.validate()
        if losses is not None:
            self._log({"step": self.step, "split": "val", **{f"val_{k}": v for k, v in losses.items()}})


def train(
    config: TrainConfig | None = None, model_config: XWAMConfig | None = None, **overrides: Any
) -> Path:
    """Train X-WAM and return the final checkpoint folder (an xwam checkpoint).

    ``train(TrainConfig(data=["data/lift"], out="runs/lift", max_minutes=5))`` or, equivalently,
    ``train(data=["data/lift"], out="runs/lift", max_minutes=5)``. Under ``torchrun`` every rank calls
    it; the process group is joined (and left) here unless the caller set one up.
    """
    tc = dataclasses.replace(config, **overrides) if config is not None else TrainConfig(**overrides)
    ctx = setup_distributed(tc.device)
    try:
        trainer = Trainer(tc, model_config, ctx)
        path = trainer.fit()
        return path
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()
