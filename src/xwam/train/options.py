"""Options of a training run (everything except the model shape, which is the ``XWAMConfig``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Learning-rate defaults: 1e-5 when initialising from pretrained weights (``--init``; the release's
# fine-tuning value), 3e-4 from scratch (a small transformer from random init needs a larger step).
PRETRAINED_LR = 1e-5
SCRATCH_LR = 3e-4


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm stopped the run (the last good checkpoint is kept)."""


@dataclass(frozen=True)
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
    extend: bool = False  # with resume: stretch the stored schedule to a larger `steps` (not stored)
    deterministic: bool = True  # deterministic kernels: identical runs give identical weights
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        # frozen: normalise once, here (JSON and the CLI give lists, paths and ints)
        data = [str(d) for d in ([self.data] if isinstance(self.data, str | Path) else self.data)]
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.weights is not None:
            object.__setattr__(self, "weights", [float(w) for w in self.weights])

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
