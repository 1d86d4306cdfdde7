"""The training loop: one CPU, one GPU, or many GPUs/nodes under ``torchrun`` (DDP or FSDP2).

(About 580 lines: the ``Trainer``'s setup, step, checkpoint gathering, resume checks and loop share
its state; everything separable lives in the sibling modules.)

Determinism and exact resume
    Every optimizer step ``s`` draws its *global* batch (``batch_size x world_size x grad_accum``
    clips) from a generator seeded by ``(seed, s)``, and every clip position ``j`` in it gets its
    own seed ``(seed, s, j)`` that drives the clip's augmentation/instruction draw and its noise
    (``xwam.diffusion.objective.draw_noise``). Nothing depends on how the global batch is split
    over ranks, micro-batches or DataLoader workers, so the data position is simply the step, and a
    resumed run (model, AdamW, schedule, EMA, RNG states restored) reproduces the uninterrupted one.

Global-batch objective
    The objective (``xwam.diffusion.objective``) returns masked sums and their counts; counts differ
    between micro-batches (clean-action draws, prefixes, episode-end padding), so the trainer divides
    every micro-batch's sums by the counts all-reduced over ranks and micro-batches before the
    backward pass: the gradient is that of the whole global batch (up to float summation order),
    whatever the number of ranks or accumulation steps.

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
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from xwam.atomic import atomic_write_json, atomic_write_text
from xwam.config import XWAMConfig
from xwam.diffusion.objective import (
    TrainingInputs,
    draw_noise,
    loss_counts,
    loss_sums,
    loss_weight_tensor,
    mean_losses,
    weighted_loss,
)
from xwam.model.checkpoint import CONFIG_FILE, MODEL_FILE, STATS_FILE, CheckpointError
from xwam.model.transformer import XWAMTransformer
from xwam.train.checkpoints import (
    CHECKPOINTS_DIR,
    TRAIN_CONFIG_FILE,
    TRAINABLE_FILE,
    TRAINER_STATE_FILE,
    intact,
    latest_checkpoint,
    read_trainer_state,
    resume_checkpoint,
    rng_state,
    set_rng_state,
    step_of,
    write_step_checkpoint,
)
from xwam.train.data import KeyedClips, StepBatches, build_training_data, derive_seed
from xwam.train.options import TrainConfig, TrainingDiverged
from xwam.train.parallel import (
    DistContext,
    apply_lora,
    build_model,
    full_model_state,
    full_optimizer_state,
    merge_lora_state,
    place_model,
    resolve_model_config,
    setup_distributed,
)
from xwam.train.run_log import RunLog
from xwam.train.samples import validation_sample
from xwam.train.schedule import EMA, cosine_with_warmup

CODEC_FIT_FILE = "codec_fit.json"
SUMMARY_FILE = "train_summary.json"  # planned vs done steps, time, whether a time budget cut the run


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
        # deterministic gathers/scatters: identical runs give identical weights at any thread count
        torch.use_deterministic_algorithms(tc.deterministic, warn_only=True)
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
        if self.ctx.is_main:
            self._write_run_files()
        self.log = RunLog(self.run_dir, self.step, enabled=self.ctx.is_main, tensorboard=tc.tensorboard)
        self.ctx.barrier()

    # ---- setup --------------------------------------------------------------------------------
    def _find_resume(self, tc: TrainConfig) -> Path | None:
        if not tc.resume:
            return None
        if tc.resume == "latest":
            if self.ctx.is_main:  # tidies an interrupted save and re-points `latest` past damaged ones
                found = resume_checkpoint(tc.out, lambda text: print(f"xwam train: {text}", file=sys.stderr))
                if found is None and any((Path(tc.out) / CHECKPOINTS_DIR).glob("step-*")):
                    raise ValueError(f"--resume: no intact checkpoint in {Path(tc.out) / CHECKPOINTS_DIR} "
                                     "(every one is damaged, see above); start a new run with another --out")
                if found is None:
                    print(f"xwam train: no checkpoint in {tc.out} yet; starting a new run", file=sys.stderr)
            self.ctx.barrier()
            return latest_checkpoint(tc.out)
        path = Path(tc.resume)
        if not (path / TRAINER_STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume {path}: not a training checkpoint (no {TRAINER_STATE_FILE})")
        reason = intact(path)
        if reason is not None:
            raise CheckpointError(path, reason)
        return path

    def _build_data(self) -> None:
        data = build_training_data(self.tc, self.cfg, self.resume_from, verbose=self.ctx.is_main)
        self.sources, self.norm_stats, self.cfg = data.sources, data.norm_stats, data.cfg
        self.train_clips, self.val_clips, self.codec_fit = data.train_clips, data.val_clips, data.codec_fit
        self.with_depth = self.train_clips.with_depth and self.cfg.model.depth_layers > 0
        from xwam.processor import XWAMProcessor

        self.processor = XWAMProcessor.build(
            self.cfg.model, self.norm_stats, vae_path=self.tc.vae_path, text_path=self.tc.text_path,
            device=self.ctx.device, codec_state=data.codec_state,
        )
        self._latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

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
        self.model, self.mode = place_model(model, ctx, tc.parallel, tc.precision, self.with_depth)
        self.autocast = tc.precision == "bf16" and self.mode != "fsdp"

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
        # per-modality loss weights, applied to the per-rank loss sums every step
        self.loss_weights = loss_weight_tensor(self.cfg.diffusion).to(self.ctx.device)
        self.ema = EMA(self.trainable, self.trainable_names, tc.ema_decay) if tc.ema_decay > 0 else None

    def _build_loader(self) -> None:
        tc, ctx = self.tc, self.ctx
        self.batches = StepBatches(
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
            batch_sampler=self.batches,
            num_workers=tc.workers,
            generator=gen,
            persistent_workers=False,
            prefetch_factor=2 if tc.workers else None,
        )

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / TRAIN_CONFIG_FILE, replace(self.tc, extend=False).to_dict())
        atomic_write_text(self.run_dir / CONFIG_FILE, self.cfg.to_json() + "\n")
        atomic_write_json(self.run_dir / STATS_FILE, self.norm_stats.to_dict())
        if self.codec_fit is not None:
            atomic_write_json(self.run_dir / CODEC_FIT_FILE, self.codec_fit)

    # ---- inputs -------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> TrainingInputs:
        """Collated clips -> ``TrainingInputs`` (latents from the cache when enabled)."""
        if not self.tc.cache_latents:
            return self.processor.training_inputs(batch, with_depth=self.with_depth)
        ids = batch["clip_index"].tolist()
        missing = [i for i, c in enumerate(ids) if c not in self._latent_cache]
        if missing:
            sel = torch.tensor(missing)
            video = self.processor.encode_video(batch["images"][sel]).cpu()
            depth = self.processor.encode_batch_depth(batch, sel).cpu() if self.with_depth else None
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

    def _prepare(self, batch: dict[str, Any], inputs: TrainingInputs | None = None) -> tuple[TrainingInputs, Any]:
        """Clean inputs on the device and their noise, drawn from each clip's own sample seed."""
        inputs = inputs if inputs is not None else self._inputs(batch)
        dev = self.ctx.device
        inputs = TrainingInputs(**{k: (v.to(dev).float() if torch.is_tensor(v) else v) for k, v in vars(inputs).items()})
        seeds = [derive_seed("noise", int(s)) for s in batch["sample_seed"].tolist()]
        noise = draw_noise(seeds, inputs.video.shape[1:], inputs.actions.shape[1:], inputs.states.shape[1:],
                           self.cfg.diffusion)
        return inputs, noise

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
        # the objective's counts depend only on the data and the noise draws: known before any forward
        prepared = [self._prepare(b) for b in micro_batches]
        counts = torch.zeros(4, dtype=torch.float64)
        for inputs, noise in prepared:
            counts += loss_counts(inputs, noise)
        counts = ctx.all_reduce_sum(counts.to(ctx.device))
        total_sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)
        for i, (inputs, noise) in enumerate(prepared):
            last = i == len(prepared) - 1
            if self.mode == "fsdp":
                self.model.set_requires_gradient_sync(last)
            with self._no_sync(last), self._autocast():
                sums, _ = loss_sums(self.model, inputs, noise)
                # DDP/FSDP average gradients over ranks: times world gives the global-batch mean
                loss = weighted_loss(sums.float(), counts, self.loss_weights) * ctx.world
            loss.backward()
            total_sums += sums.detach().double()
        ctx.all_reduce_sum(total_sums)
        losses = mean_losses(total_sums.cpu(), counts.cpu())
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
            self.ema.update(self.step)
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
        return full_model_state(self.module, sharded=self.mode == "fsdp")

    def _export(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain xwam model weights (LoRA merged)."""
        if self.tc.lora_rank:
            state = merge_lora_state(state, float(self.tc.lora_alpha) / self.tc.lora_rank)
        return {k: v.detach().float().contiguous().cpu() for k, v in state.items()}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` (collective under FSDP: every rank gathers, rank 0 writes)."""
        raw = self._full_model_state()
        optim = full_optimizer_state(self.module, self.optimizer, sharded=self.mode == "fsdp")
        ema = self.ema.state_with_ema(self._full_model_state) if self.ema is not None else None
        ema_raw = self.ema.state_dict() if self.ema is not None else None
        target = self.run_dir / CHECKPOINTS_DIR / f"step-{self.step:08d}"
        if self.ctx.is_main:
            write_step_checkpoint(
                target,
                model_state=self._export(raw),
                config=self.cfg,
                stats=self.norm_stats.to_dict(),
                codec_state=self.processor.codec_state(),
                train_config=replace(self.tc, extend=False).to_dict(),  # extending is a one-off choice
                trainer_state={
                    "step": self.step,
                    "optimizer": optim,
                    "scheduler": self.scheduler.state_dict(),
                    "rng": rng_state(),
                    "sampler": {"seed": self.tc.seed, "next_step": self.step,
                                "global_batch": self.batches.global_batch},
                    "ema": ema_raw,
                    "schedule": {"steps": self.tc.steps, "warmup": self.tc.warmup, "lr": self.tc.lr,
                                 "min_lr_ratio": self.tc.min_lr_ratio},
                    "world_size": self.ctx.world,
                },
                trainable_state={n: raw[n].detach().float().contiguous() for n in self.trainable_names}
                if self.tc.lora_rank else None,
                ema_state=self._export(ema) if ema is not None else None,
                keep_last=self.tc.keep_last,
            )
        self.ctx.barrier()
        return target

    def _load_trainer_state(self, ckpt: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = read_trainer_state(ckpt)
        set_optimizer_state_dict(
            self.module, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self._check_schedule(ckpt, state)
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{ckpt}: the run now uses EMA but the checkpoint holds none")
            self.ema.load_state_dict(state["ema"])
        if self.step >= self.tc.steps and self.ctx.is_main:
            print(
                f"xwam train: {ckpt} is at step {self.step} >= steps={self.tc.steps}; nothing to do",
                file=sys.stderr,
            )

    def _check_schedule(self, ckpt: Path, state: dict[str, Any]) -> None:
        """``--resume`` continues the stored schedule exactly; a different ``steps`` needs ``--extend``."""
        planned = (state.get("schedule") or {}).get("steps")
        if planned is None:  # checkpoints written before the schedule was stored
            planned = json.loads((ckpt / TRAIN_CONFIG_FILE).read_text()).get("steps", self.tc.steps)
        if planned == self.tc.steps:
            return
        if not self.tc.extend:
            raise ValueError(
                f"{ckpt} belongs to a run scheduled for {planned} steps; --resume continues that schedule "
                f"exactly, so drop --steps {self.tc.steps} (or pass --steps {planned}). To train to "
                f"{self.tc.steps} steps instead pass --extend: the cosine learning-rate schedule is then "
                f"stretched over {self.tc.steps} steps, which is not the same as a run planned for "
                f"{self.tc.steps} steps from the start")
        factor = cosine_with_warmup(self.tc.warmup, self.tc.steps, self.tc.min_lr_ratio)
        if self.ctx.is_main:
            print(f"xwam train: --extend: the schedule of {planned} steps is stretched to {self.tc.steps}; at step "
                  f"{self.step} the learning rate moves from {self.scheduler.get_last_lr()[0]:.3g} to "
                  f"{self.tc.lr * factor(self.step):.3g}", file=sys.stderr)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor(self.step)

    # ---- logging and validation -------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Held-out losses on fixed clips with fixed noise (comparable across steps) + a PNG sample."""
        if self.val_clips is None:
            return None
        self.module.eval()
        tc, n = self.tc, len(self.val_clips)
        total = min(n, tc.val_batches * tc.batch_size)
        picks = np.linspace(0, n - 1, total).round().astype(int).tolist()
        keys = [(i, derive_seed("val", tc.seed, pos), pos) for pos, i in enumerate(picks)]
        sums = torch.zeros(4, dtype=torch.float64)
        counts = torch.zeros(4, dtype=torch.float64)
        first = None
        for start in range(0, total, tc.batch_size):
            batch = torch.utils.data.default_collate([KeyedClips(self.val_clips)[k] for k in keys[start:start + tc.batch_size]])
            inputs, noise = self._prepare(batch, self.processor.training_inputs(batch, with_depth=self.with_depth))
            with self._autocast():
                s, c = loss_sums(self.module, inputs, noise)
            sums += s.double().cpu()
            counts += c
            first = first if first is not None else batch
        losses = mean_losses(sums, counts)
        if tc.val_images and first is not None:
            grid = validation_sample(self.module, self.processor, self.cfg, first, depth=self.with_depth, seed=tc.seed)
            self.log.image("sample-0", self.step, grid)
        self.module.train()
        return losses

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
                window_samples += self.batches.global_batch
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
                        "s_per_step": elapsed / max(window_samples / self.batches.global_batch, 1),
                    }
                    self.log.log(record)
                    bar.set_postfix(loss=f"{losses['total']:.4f}", sps=f"{record['samples_per_s']:.2f}")
                    window_start, window_samples = time.perf_counter(), 0
                bar.update(1)
                if tc.val_every and self.step % tc.val_every == 0 and self.step < tc.steps:
                    self._validate_and_log()
                if self.step % tc.save_every == 0 and self.step < tc.steps:
                    last_saved = self.save_checkpoint()
        finally:
            bar.close()
        if last_saved is None or self.step != step_of(last_saved):
            last_saved = self.save_checkpoint()
        seconds = time.perf_counter() - fit_start
        summary = {"steps": tc.steps, "steps_done": self.step, "steps_this_session": self.step - first_step,
                   "seconds_this_session": round(seconds, 1), "cut_by_time": cut_by_time,
                   "max_minutes": tc.max_minutes, "checkpoint": str(last_saved)}
        if ctx.is_main:
            atomic_write_json(self.run_dir / SUMMARY_FILE, summary)
            print(f"xwam train: {self.step - first_step} steps in {seconds / 60:.1f} min "
                  f"({(self.step - first_step) / max(seconds, 1e-9):.2f} steps/s); now at step {self.step} of {tc.steps}"
                  + (" (CUT by the time budget)" if cut_by_time else ""), file=sys.stderr)
        if self.val_clips is not None:
            self._validate_and_log()
        self.log.close()
        return last_saved

    def _validate_and_log(self) -> None:
        losses = self.validate()
        if losses is not None:
            self.log.log({"step": self.step, "split": "val", **{f"val_{k}": v for k, v in losses.items()}})


def train(
    config: TrainConfig | None = None, model_config: XWAMConfig | None = None, **overrides: Any
) -> Path:
    """Train X-WAM and return the final checkpoint folder (an xwam checkpoint).

    ``train(TrainConfig(data=["data/lift"], out="runs/lift", max_minutes=5))`` or, equivalently,
    ``train(data=["data/lift"], out="runs/lift", max_minutes=5)``. Under ``torchrun`` every rank calls
    it; the process group is joined (and left) here unless the caller set one up.
    """
    tc = replace(config, **overrides) if config is not None else TrainConfig(**overrides)
    ctx = setup_distributed(tc.device)
    try:
        trainer = Trainer(tc, model_config, ctx)
        path = trainer.fit()
        return path
    finally:
        if ctx.owns_group and dist.is_initialized():
            dist.destroy_process_group()
