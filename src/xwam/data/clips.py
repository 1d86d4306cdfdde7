"""Training clips: V views x F frames (frame skip s), F states and K actions, with augmentations.

For every valid start frame ``t0`` of every episode a clip holds

- video frames ``t0 + j * s`` for ``j = 0 .. F-1`` (frame 0 is the current observation), and the
  states, depth and camera matrices at those same frames;
- actions ``t0 .. t0 + K - 1`` at the control rate: action ``i`` is the command applied at control
  step ``t0 + i`` (it moves state ``t0 + i`` to ``t0 + i + 1``).

Episode end: a start is valid when all F video frames exist, i.e. ``t0 <= T - 1 - (F - 1) s``.
Actions past the episode's last action are zero-padded and masked out in ``action_mask`` (K, A);
with ``ClipConfig.require_full_actions`` such starts are dropped instead. The last action is at
frame ``Episode.meta["action_steps"] - 1`` (default T - 1): release-format delta-mode episodes have
no action on their last frame (``final_frames_without_action`` = 1 on the dataset). With the release
clips (9 frames, skip 4, 32 actions) the starts are exactly the release loader's, 0 .. T - 33, and
every action of a clip is recorded. Dimensions that the
normalisation statistics mark invalid (padding, e.g. the right arm of single-arm data) are masked
too. Episodes shorter than one clip contribute nothing.

Sample dict (one clip; a DataLoader adds the batch dimension):

==================  =========================  ================================================
key                 shape / type               meaning
==================  =========================  ================================================
images              (V, F, 3, H, W) uint8      RGB (float32 in [-1, 1] with image_dtype="float")
depth               (V, F, H, W) float32       only when every source has depth
depth_kind          str                        with depth: "metric" (metres) or "codec_unit"
                                               ([-1, 1], the release's v / 127.5 - 1)
intrinsics          (V, F, 3, 3) float32       only when every source has camera matrices
extrinsics          (V, F, 4, 4) float32       camera-to-world, OpenCV axes
state               (F, S) float32             states at the video frames (raw units)
action              (K, A) float32             actions t0 .. t0+K-1 (raw units, zero padded)
action_mask         (K, A) bool                False for padding steps and invalid dimensions
state_norm          (F, S) float32             normalised state (only with norm_stats)
action_norm         (K, A) float32             normalised action (only with norm_stats)
frame_indices       (F,) int64                 episode frame index of each video frame
episode_index       int64 tensor               episode within its dataset
start               int64 tensor               t0
dataset_index       int64 tensor               which source dataset
instruction         str                        one instruction (sampled if the episode has several)
==================  =========================  ================================================

Augmentation (``ClipConfig.augment``; deterministic given ``seed`` and the index, or an explicit
generator): per view a random crop of ``crop_scale`` (95 %) of the image area with the image's
aspect ratio, the same for all frames of the view and for RGB and depth, resized back (bilinear for
RGB, nearest for depth so no depth is invented at edges) with intrinsics adjusted so unprojection
stays consistent; then colour jitter on RGB only, one draw per view applied in the order
brightness, contrast, saturation, hue.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from xwam.codecs.depth import check_depth_kind
from xwam.data.stats import NormStats


@dataclass(frozen=True)
class ClipConfig:
    num_frames: int = 9
    frame_skip: int = 4
    action_horizon: int = 32
    image_size: tuple[int, int] | None = None  # (H, W) every camera is resized to; None: the first camera's
    image_dtype: str = "uint8"  # "uint8" or "float" ([-1, 1])
    load_depth: bool | None = None  # None: depth when every source has it
    require_full_actions: bool = False
    augment: bool = False
    crop_scale: float = 0.95
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    # random shift (pad by N pixels with the border values, crop back at a random offset; one offset per
    # view for all its frames), the standard augmentation of image-based imitation; independent of augment
    shift_pixels: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.frame_skip < 1 or self.action_horizon < 1:
            raise ValueError("num_frames, frame_skip and action_horizon must be >= 1")
        if self.image_dtype not in ("uint8", "float"):
            raise ValueError(f"image_dtype must be 'uint8' or 'float', got {self.image_dtype!r}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must lie in (0, 1], got {self.crop_scale}")
        if self.shift_pixels < 0:
            raise ValueError(f"shift_pixels must be >= 0, got {self.shift_pixels}")

    @property
    def span(self) -> int:
        """Control steps covered by the video frames (first to last, inclusive)."""
        return (self.num_frames - 1) * self.frame_skip + 1

    @classmethod
    def release(cls, **overrides: Any) -> ClipConfig:
        """The release clips: 9 frames, skip 4 (5 fps from 20 Hz), 32 actions, augmentation on."""
        return cls(**{"num_frames": 9, "frame_skip": 4, "action_horizon": 32, "augment": True, **overrides})

    @classmethod
    def from_model(cls, model: Any, **overrides: Any) -> ClipConfig:
        """Clip layout of an ``xwam.config.ModelConfig`` (frames, skip, horizon, image size)."""
        return cls(
            **{
                "num_frames": model.num_frames,
                "frame_skip": model.frame_skip,
                "action_horizon": model.action_horizon,
                "image_size": (model.image_height, model.image_width),
                **overrides,
            }
        )


class ClipDataset(Dataset):
    """All valid clips of one or several datasets (``LeRobotV3Dataset``, ``ReleaseDataset``...).

    ``weights`` (one per source) set the mixture: under :meth:`sample_weights` source ``d`` is drawn
    with probability ``weights[d] / sum(weights)`` and a clip uniformly within it.
    """

    def __init__(
        self,
        sources: Any | Sequence[Any],
        config: ClipConfig | None = None,
        *,
        weights: Sequence[float] | None = None,
        norm_stats: NormStats | None = None,
    ) -> None:
        self.sources = list(sources) if isinstance(sources, list | tuple) else [sources]
        if not self.sources:
            raise ValueError("ClipDataset needs at least one dataset")
        self.config = config or ClipConfig()
        self.norm_stats = norm_stats
        self.weights = list(weights) if weights is not None else [1.0] * len(self.sources)
        if (
            len(self.weights) != len(self.sources)
            or any(w < 0 for w in self.weights)
            or sum(self.weights) <= 0
        ):
            raise ValueError(
                f"need one non-negative weight per dataset ({len(self.sources)}), got {self.weights}"
            )
        views = {len(s.camera_names) for s in self.sources}
        if len(views) != 1:
            raise ValueError(f"datasets have different numbers of cameras: {sorted(views)}")
        cfg = self.config
        all_depth = all(getattr(s, "has_depth", False) for s in self.sources)
        if cfg.load_depth and not all_depth:
            missing = [str(getattr(s, "root", s)) for s in self.sources if not getattr(s, "has_depth", False)]
            raise ValueError(f"load_depth=True but these datasets have no depth: {missing}")
        self.with_depth = all_depth if cfg.load_depth is None else bool(cfg.load_depth)
        self.with_cameras = all(
            getattr(s, "has_intrinsics", False) and getattr(s, "has_extrinsics", False) for s in self.sources
        )
        index: list[tuple[int, int, int]] = []
        self.source_counts: list[int] = []
        for d, src in enumerate(self.sources):
            before = len(index)
            for e in range(src.num_episodes):
                T = src.episode_length(e)
                last = T - cfg.span
                if cfg.require_full_actions:
                    last = min(last, T - getattr(src, "final_frames_without_action", 0) - cfg.action_horizon)
                index.extend((d, e, t0) for t0 in range(last + 1))
            self.source_counts.append(len(index) - before)
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
        if len(self.index) == 0:
            raise ValueError(
                f"no episode is long enough for one clip of {cfg.span} steps "
                f"({cfg.num_frames} frames, skip {cfg.frame_skip})"
            )

    def __len__(self) -> int:
        return len(self.index)

    def sample_weights(self) -> torch.Tensor:
        """Per-clip probabilities realising the dataset mixture (sums to 1)."""
        total = sum(w for w, n in zip(self.weights, self.source_counts) if n)
        per_source = [(w / total / n) if n else 0.0 for w, n in zip(self.weights, self.source_counts)]
        return torch.as_tensor(np.asarray(per_source)[self.index[:, 0]], dtype=torch.float64)

    def _generator(self, idx: int) -> torch.Generator:
        # the "/0/" was an epoch counter nothing changed; kept so the draws stay those of earlier runs
        digest = hashlib.sha256(f"{self.config.seed}/0/{idx}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.get(idx)

    def get(self, idx: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        if not 0 <= idx < len(self.index):
            raise IndexError(f"clip {idx} out of range [0, {len(self.index)})")
        cfg = self.config
        d, e, t0 = (int(x) for x in self.index[idx])
        gen = generator or self._generator(idx)
        src = self.sources[d]
        ep = src.episode(e, load_depth=self.with_depth)
        frames = t0 + cfg.frame_skip * np.arange(cfg.num_frames)
        cams = ep.camera_names
        # Cameras may differ in size (datasets written by lerobot often do): each view is resized on
        # its own, to the configured size or else the first camera's, before the views are stacked.
        size = tuple(cfg.image_size) if cfg.image_size is not None else tuple(ep.rgb[cams[0]].shape[1:3])
        views: list[torch.Tensor] = []
        depths: list[torch.Tensor] = []
        intrs: list[torch.Tensor] = []
        for c in cams:
            img = torch.from_numpy(ep.rgb[c][frames]).permute(0, 3, 1, 2)[None]
            dep = torch.from_numpy(ep.depth[c][frames].astype(np.float32))[None] if self.with_depth else None
            K = torch.from_numpy(ep.intrinsics[c][frames].astype(np.float32))[None] if self.with_cameras else None
            if tuple(img.shape[-2:]) != size:
                img, dep, K = resize_views(img, dep, K, size)
            views.append(img[0])
            if dep is not None:
                depths.append(dep[0])
            if K is not None:
                intrs.append(K[0])
        images, depth, intr = _stack_views(views, depths, intrs)
        images = images.contiguous()
        sample: dict[str, Any] = {}
        extr = None
        if self.with_cameras:
            extr = torch.from_numpy(np.stack([ep.extrinsics[c][frames] for c in cams]).astype(np.float32))
        if cfg.shift_pixels:
            images, depth, intr = random_shift_views(images, depth, intr, cfg.shift_pixels, gen)
        if cfg.augment:
            images, depth, intr = random_crop_views(images, depth, intr, cfg.crop_scale, gen)
            images = color_jitter_views(images, gen, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        if cfg.image_dtype == "float":
            images = images.float() / 127.5 - 1.0
        sample["images"] = images
        if depth is not None:
            sample["depth"] = depth
            # the processor encodes metres and codec units differently: the kind travels with the depth
            sample["depth_kind"] = check_depth_kind(
                ep.meta.get("depth_kind"), f"{getattr(src, 'root', src)} episode {e}")
        if intr is not None:
            sample["intrinsics"], sample["extrinsics"] = intr, extr
        K, T = cfg.action_horizon, ep.length
        A = ep.action.shape[1]
        action = np.zeros((K, A), np.float32)
        n = max(0, min(K, int(ep.meta.get("action_steps", T)) - t0))
        action[:n] = ep.action[t0 : t0 + n]
        mask = np.zeros((K, A), bool)
        mask[:n] = True
        if self.norm_stats is not None:
            mask &= self.norm_stats.action_valid[None, :]
        state = np.asarray(ep.state[frames], np.float32)
        sample["state"] = torch.from_numpy(state)
        sample["action"] = torch.from_numpy(action)
        sample["action_mask"] = torch.from_numpy(mask)
        if self.norm_stats is not None:
            sample["state_norm"] = torch.from_numpy(self.norm_stats.normalize_state(state).astype(np.float32))
            sample["action_norm"] = torch.from_numpy(
                np.where(mask, self.norm_stats.normalize_action(action), 0.0).astype(np.float32)
            )
        sample["frame_indices"] = torch.from_numpy(frames.astype(np.int64))
        sample["episode_index"] = torch.tensor(e, dtype=torch.int64)
        sample["start"] = torch.tensor(t0, dtype=torch.int64)
        sample["dataset_index"] = torch.tensor(d, dtype=torch.int64)
        instructions = ep.meta.get("instructions") or [ep.task]
        pick = int(torch.randint(len(instructions), (1,), generator=gen)) if len(instructions) > 1 else 0
        sample["instruction"] = str(instructions[pick])
        return sample


# ---------------------------------------------------------------------------------------------
# geometry-consistent resize / crop, colour jitter (torch only; torchvision is not available)
# ---------------------------------------------------------------------------------------------
def crop_resize_intrinsics(
    K: torch.Tensor, x0: float, y0: float, crop_w: float, crop_h: float, out_w: int, out_h: int
) -> torch.Tensor:
    """Intrinsics after cropping ``[x0, x0 + crop_w) x [y0, y0 + crop_h)`` and resizing to out size.

    Pixel centres sit at integer coordinates (OpenCV); a resize with ``align_corners=False`` maps
    input coordinate u to ``(u - x0 + 0.5) * sx - 0.5``, so ``fx' = fx sx`` and
    ``cx' = (cx - x0 + 0.5) sx - 0.5`` (likewise for y).
    """
    sx, sy = out_w / crop_w, out_h / crop_h
    K = K.clone()
    K[..., 0, 0] = K[..., 0, 0] * sx
    K[..., 0, 1] = K[..., 0, 1] * sx
    K[..., 0, 2] = (K[..., 0, 2] - x0 + 0.5) * sx - 0.5
    K[..., 1, 1] = K[..., 1, 1] * sy
    K[..., 1, 2] = (K[..., 1, 2] - y0 + 0.5) * sy - 0.5
    return K


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (N, C, H, W); uint8 input comes back as uint8."""
    dtype = x.dtype
    y = F.interpolate(
        x.float(), size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {})
    )
    if dtype == torch.uint8:
        y = y.round().clamp(0, 255).to(torch.uint8)
    return y


def resize_views(
    images: torch.Tensor, depth: torch.Tensor | None, intrinsics: torch.Tensor | None, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Resize (V, F, 3, H, W) images (and (V, F, H, W) depth) to ``size``; intrinsics follow."""
    V, Fr, C, H, W = images.shape
    out_h, out_w = size
    images = _resize(images.reshape(V * Fr, C, H, W), size, "bilinear").reshape(V, Fr, C, out_h, out_w)
    if depth is not None:
        depth = _resize(depth.reshape(V * Fr, 1, H, W), size, "nearest-exact").reshape(V, Fr, out_h, out_w)
    if intrinsics is not None:
        intrinsics = crop_resize_intrinsics(intrinsics, 0.0, 0.0, W, H, out_w, out_h)
    return images, depth, intrinsics


def _stack_views(
    images: list[torch.Tensor], depth: list[torch.Tensor], intrinsics: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-view results back into (V, ...) tensors; an empty list (no depth / cameras) gives None."""
    return (torch.stack(images), torch.stack(depth) if depth else None,
            torch.stack(intrinsics) if intrinsics else None)


def random_crop_views(
    images: torch.Tensor,
    depth: torch.Tensor | None,
    intrinsics: torch.Tensor | None,
    scale: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per view: crop ``scale`` of the area (same window for all frames, RGB and depth), resize back."""
    V, Fr, C, H, W = images.shape
    side = math.sqrt(scale)
    ch, cw = max(1, round(H * side)), max(1, round(W * side))
    out_images, out_depth, out_intr = [], [], []
    for v in range(V):
        y0 = int(torch.randint(H - ch + 1, (1,), generator=generator))
        x0 = int(torch.randint(W - cw + 1, (1,), generator=generator))
        out_images.append(_resize(images[v, :, :, y0 : y0 + ch, x0 : x0 + cw], (H, W), "bilinear"))
        if depth is not None:
            crop = depth[v, :, None, y0 : y0 + ch, x0 : x0 + cw]
            out_depth.append(_resize(crop, (H, W), "nearest-exact")[:, 0])
        if intrinsics is not None:
            out_intr.append(crop_resize_intrinsics(intrinsics[v], x0, y0, cw, ch, W, H))
    return _stack_views(out_images, out_depth, out_intr)


def random_shift_views(
    images: torch.Tensor,
    depth: torch.Tensor | None,
    intrinsics: torch.Tensor | None,
    pad: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per view: translate by up to ``pad`` pixels (border values fill in), same offset for every
    frame, RGB and depth; the principal point moves with the image."""
    V, Fr, C, H, W = images.shape
    out_images, out_depth, out_intr = [], [], []
    for v in range(V):
        dy, dx = (int(torch.randint(2 * pad + 1, (1,), generator=generator)) for _ in range(2))
        padded = F.pad(images[v].float(), (pad, pad, pad, pad), mode="replicate")[..., dy : dy + H, dx : dx + W]
        out_images.append(padded.to(images.dtype))
        if depth is not None:
            out_depth.append(F.pad(depth[v][:, None].float(), (pad, pad, pad, pad), mode="replicate")
                             [:, 0, dy : dy + H, dx : dx + W].to(depth.dtype))
        if intrinsics is not None:
            K = intrinsics[v].clone()
            K[..., 0, 2] += pad - dx
            K[..., 1, 2] += pad - dy
            out_intr.append(K)
    return _stack_views(out_images, out_depth, out_intr)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[..., 0, :, :] + 0.587 * x[..., 1, :, :] + 0.114 * x[..., 2, :, :]).unsqueeze(-3)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(-3)
    minc, _ = x.min(-3)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-8), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-8)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], -3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    g = torch.stack([t, v, v, q, p, p], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    b = torch.stack([p, p, t, v, v, q], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    return torch.stack([r, g, b], -3)


def color_jitter_views(
    images: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.05,
) -> torch.Tensor:
    """Colour jitter of (V, F, 3, H, W) images, one random draw per view (all its frames alike).

    Factors are uniform in ``[1 - x, 1 + x]`` (brightness, contrast, saturation) and the hue shift
    uniform in ``[-hue, hue]`` of a full turn, as in torchvision's ColorJitter (fixed order).
    """
    dtype = images.dtype
    x = images.float() / 255.0 if dtype == torch.uint8 else images.float()
    out = []
    for v in range(x.shape[0]):
        u = torch.rand(4, generator=generator, dtype=torch.float64)
        b = 1 + brightness * (2 * float(u[0]) - 1)
        c = 1 + contrast * (2 * float(u[1]) - 1)
        s = 1 + saturation * (2 * float(u[2]) - 1)
        h = hue * (2 * float(u[3]) - 1)
        y = (x[v] * b).clamp(0, 1)
        mean = _gray(y).mean(dim=(-3, -2, -1), keepdim=True)
        y = ((y - mean) * c + mean).clamp(0, 1)
        gray = _gray(y)
        y = ((y - gray) * s + gray).clamp(0, 1)
        if h != 0.0:
            hsv = _rgb_to_hsv(y)
            hsv = torch.stack([(hsv[..., 0, :, :] + h) % 1.0, hsv[..., 1, :, :], hsv[..., 2, :, :]], -3)
            y = _hsv_to_rgb(hsv).clamp(0, 1)
        out.append(y)
    result = torch.stack(out)
    return (result * 255.0).round().to(torch.uint8) if dtype == torch.uint8 else result
