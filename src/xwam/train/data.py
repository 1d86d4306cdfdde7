"""What the trainer reads: episode splits, statistics, and the seeded global batch of every step."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from xwam.config import XWAMConfig
from xwam.model.checkpoint import STATS_FILE, load_codec_state
from xwam.processor import FITTED_CODECS
from xwam.train.options import TrainConfig


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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


def resolve_norm_stats(sources: Sequence[Any], roots: Sequence[str], path: str | None,
                       quaternions: str = "raw") -> Any:
    """Statistics from ``path`` (as they are: a resumed run keeps its own), else the dataset's own (one
    dataset), else computed over all datasets; ``quaternions="aligned"`` (``ModelConfig.quaternion_norm``)
    aligns the state's quaternions of the latter two (xwam.data.stats)."""
    from xwam.data.stats import (
        NormStats,
        compute_norm_stats,
        gather_state_action,
        load_dataset_norm_stats,
        with_quaternion_norm,
    )

    if path is not None:
        return NormStats.from_json(path)
    if len(sources) == 1:
        try:
            stats = load_dataset_norm_stats(roots[0])
        except FileNotFoundError:
            stats = compute_norm_stats(sources[0])
    else:
        states, actions = zip(*(gather_state_action(s) for s in sources))
        first = sources[0]
        stats = NormStats.from_arrays(
            np.concatenate(states),
            np.concatenate(actions),
            getattr(first, "state_names", None),
            getattr(first, "action_names", None),
        )
    return with_quaternion_norm(stats, quaternions, sources)


def _depth_kind(source: Any) -> str:
    """A dataset's depth kind: its own ``depth_kind`` (release layout) or metres (LeRobot, simulator)."""
    return getattr(source, "depth_kind", "metric")


def check_data_matches_model(
    sources: Sequence[Any], roots: Sequence[str], stats: Any, cfg: XWAMConfig
) -> XWAMConfig:
    """Raise on a mismatch between the data and the model; return the config with the data's camera
    order (a policy must know which image is which view) and depth kind (what the depth branch will
    predict: metres or the release's relative code) recorded."""
    m = cfg.model
    kinds = {str(root): _depth_kind(src) for src, root in zip(sources, roots) if getattr(src, "has_depth", False)}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"the datasets hold different kinds of depth ({kinds}); one depth branch predicts one "
                         "kind: train on one kind, or drop depth from the others")
    if kinds:
        m = dataclasses.replace(m, depth_kind=next(iter(kinds.values())))
        cfg = dataclasses.replace(cfg, model=m)
    # one-arm release (RoboCasa) data: the policy speaks the release's robot layout in the simulator
    if (all(getattr(src, "action_mode", None) == "raw" for src in sources) and stats.state_dim == 16
            and stats.action_dim == 14 and not stats.state_valid[8:].any()):
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, robot_io="release_single_arm"))
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
    if stats.state_dim != m.state_dim or stats.action_dim != m.action_dim:
        raise ValueError(
            f"the data has state dim {stats.state_dim} and action dim {stats.action_dim} but the model has "
            f"model.state_dim={m.state_dim}, model.action_dim={m.action_dim}; pass "
            f"--set model.state_dim={stats.state_dim} --set model.action_dim={stats.action_dim}"
        )
    if m.camera_names:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(m, camera_names=list(sources[0].camera_names)))


class KeyedClips(Dataset):
    """``ClipDataset`` indexed by (clip index, sample seed, global position) keys from :class:`StepBatches`."""

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


class StepBatches(Sampler):
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


@dataclass
class TrainingData:
    """What a run trains and validates on, and the model config as the data completes it."""

    cfg: XWAMConfig
    sources: list[Any]
    norm_stats: Any
    train_clips: Any
    val_clips: Any | None
    codec_state: dict[str, torch.Tensor] | None  # a fitted codec's parameters
    codec_fit: dict[str, Any] | None  # how the codec was fitted, when this run fitted it


def build_training_data(tc: TrainConfig, cfg: XWAMConfig, resume_from: Path | None,
                        verbose: bool = True) -> TrainingData:
    """Open the datasets, settle the statistics (a resumed run keeps its own), check them against the
    model, split off validation episodes, and get the fitted codec's parameters."""
    from xwam.data import ClipConfig, ClipDataset, open_dataset

    m = cfg.model
    sources = [open_dataset(root) for root in tc.data]
    budget = int(tc.episode_cache_mb * 2**20 / max(1, len(sources)))
    for src in sources:
        src.set_cache(max_episodes=len(src), max_bytes=budget)
    stats_path = tc.norm_stats
    if resume_from is not None and (resume_from / STATS_FILE).is_file():
        stats_path = str(resume_from / STATS_FILE)
    norm_stats = resolve_norm_stats(sources, tc.data, stats_path, cfg.model.quaternion_norm)
    cfg = check_data_matches_model(sources, tc.data, norm_stats, cfg)
    if tc.clips == "release":
        clip_cfg = ClipConfig.release(image_size=(m.image_height, m.image_width), augment=tc.augment, seed=tc.seed,
                                      shift_pixels=tc.shift_augment)
        layout = (clip_cfg.num_frames, clip_cfg.frame_skip, clip_cfg.action_horizon)
        if layout != (m.num_frames, m.frame_skip, m.action_horizon):
            raise ValueError(
                f"--clips release uses 9 frames, skip 4, 32 actions but the model has num_frames="
                f"{m.num_frames}, frame_skip={m.frame_skip}, action_horizon={m.action_horizon}"
            )
    else:
        clip_cfg = ClipConfig.from_model(m, augment=tc.augment, seed=tc.seed, shift_pixels=tc.shift_augment)
    splits = [split_episodes(s, tc.val_episodes) for s in sources]
    train_sources = [s for s, _ in splits]
    plain_cfg = dataclasses.replace(clip_cfg, augment=False, shift_pixels=0)
    train_clips = ClipDataset(train_sources, clip_cfg, weights=tc.weights, norm_stats=norm_stats)
    val_clips = ClipDataset([v for _, v in splits], plain_cfg, norm_stats=norm_stats) if tc.val_episodes else None
    codec_state, codec_fit = None, None
    if m.codec in FITTED_CODECS:
        init = Path(tc.init.split(":", 1)[1]) if tc.init and tc.init.startswith("xwam:") else None
        origin = resume_from or init
        if origin is not None:  # a resumed or fine-tuned run keeps the codec its weights were trained with
            codec_state = load_codec_state(origin)
            if codec_state is None:
                raise ValueError(f"{origin} has no codec.safetensors, which its {m.codec!r} codec needs")
        else:
            codec_state, codec_fit = fit_codec(cfg, ClipDataset(train_sources, plain_cfg, norm_stats=norm_stats),
                                               tc.codec_fit_clips, verbose)
    return TrainingData(cfg, sources, norm_stats, train_clips, val_clips, codec_state, codec_fit)


def fit_codec(cfg: XWAMConfig, clips: Any, max_clips: int, verbose: bool) -> tuple[dict[str, torch.Tensor],
                                                                                 dict[str, Any]]:
    """Fit the codec on evenly spaced un-augmented training clips (deterministic); its state and a report."""
    from xwam.processor import XWAMProcessor

    m = cfg.model
    started = time.perf_counter()
    picks = np.unique(np.linspace(0, len(clips) - 1, min(len(clips), max_clips)).round().astype(int))
    samples = [clips[int(i)] for i in picks]
    images = torch.stack([x["images"] for x in samples])
    depth = torch.stack([x["depth"] for x in samples]) if all("depth" in x for x in samples) else None
    kinds = [x["depth_kind"] for x in samples] if depth is not None else None
    state = XWAMProcessor.fit_codec_state(m, images, depth, kinds)
    report = {
        "codec": m.codec, "latent_channels": m.latent_channels, "clips": len(samples),
        "frames": int(images.shape[0] * images.shape[1] * images.shape[2]),
        "rgb_reconstruction_psnr_db": float(state["rgb.reconstruction_psnr"]),
        "depth_reconstruction_psnr_db": float(state["depth.reconstruction_psnr"]) if depth is not None else None,
        "depth_curve": m.depth_curve,
        "whitening": m.codec_whitening,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if verbose:
        depth_note = (f", {m.depth_curve} depth {report['depth_reconstruction_psnr_db']:.1f} dB" if depth is not None else "")
        print(f"xwam train: fitted the {m.codec} codec ({m.latent_channels} components per "
              f"{m.spatial_compression}x{m.spatial_compression} patch, whitening {m.codec_whitening:g}) on "
              f"{len(samples)} clips in "
              f"{report['seconds']:.1f} s: RGB reconstruction {report['rgb_reconstruction_psnr_db']:.1f} dB"
              f"{depth_note}", file=sys.stderr)
    return state, report
