"""Benchmarks measured side by side in one run (random weights; the shapes are what matter).

- ``latency``: time-to-action in policy mode (ANS: k action steps, depth off) against the
  synchronous sampler that denoises video and actions together over the full N-step schedule;
- ``4d``: a full 4D generation with the depth branch evaluated only at the last call, at every
  call (as the release does), and without depth;
- ``forward``: our transformer forward against diffusers' stock ``WanTransformer3DModel.forward``
  on the same video tokens (overhead of our loop, view embedding and per-token modulation).

Each prints a table with ratios and returns a JSON-able dict.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import WanTransformer3DModel

from xwam.atomic import atomic_write_json
from xwam.codecs import NoTextEncoder, PatchPCACodec
from xwam.config import SamplerConfig, XWAMConfig, get_preset
from xwam.data.stats import NormStats
from xwam.diffusion.sampler import AsyncSampler, Conditioning
from xwam.model.transformer import TIME_SCALE, XWAMTransformer, wan_backbone_kwargs
from xwam.processor import XWAMProcessor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def build_random_model(preset: str, device: str, dtype: torch.dtype, overrides: list[str] | None = None):
    cfg = get_preset(preset)
    if overrides:
        cfg = cfg.override(overrides)
    with torch.device(device):
        model = XWAMTransformer(cfg.model)
    return cfg, model.to(dtype=dtype).eval()


def random_conditioning(cfg: XWAMConfig, device: str, batch: int = 1, seed: int = 0) -> Conditioning:
    """Conditioning from random observations, through the processor the policy uses. The codec is
    a random linear patch basis of the preset's latent shape and the text encoder gives zeros: cheap
    for every preset (no VAE or text weights) and the shapes, which are what a benchmark times, match."""
    m = cfg.model
    g = torch.Generator(device="cpu").manual_seed(seed)
    rng = np.random.default_rng(seed)
    patch = 3 * m.spatial_compression**2
    basis = torch.linalg.qr(torch.randn(patch, m.latent_channels, generator=g))[0].T  # orthonormal (C, 3*s*s)
    codec = PatchPCACodec(m.spatial_compression, torch.zeros(patch), basis, scale=1.0)
    stats = NormStats.from_arrays(rng.normal(size=(64, m.state_dim)), rng.normal(size=(64, m.action_dim)))
    processor = XWAMProcessor(m, codec, NoTextEncoder(m.text_dim, m.text_len), stats, device)
    images = rng.integers(0, 256, (batch, m.num_views, m.image_height, m.image_width, 3), dtype=np.uint8)
    states = rng.normal(size=(batch, m.state_dim)).astype(np.float32)
    return processor.conditioning(images, states, [""] * batch, unconditional_text=cfg.sampler.guidance_scale != 1.0)


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(times), "min_ms": min(times), "mean_ms": statistics.fmean(times)}


def bench_latency(preset: str = "small", device: str = "cpu", dtype: torch.dtype = torch.float32,
                  repeats: int = 3, video_steps: int = 50, action_steps: int = 10,
                  overrides: list[str] | None = None) -> dict[str, Any]:
    cfg, model = build_random_model(preset, device, dtype, overrides)
    cond = random_conditioning(cfg, device)
    dev = torch.device(device)
    results = {}
    for name, sampler_cfg in {
        "async (ANS policy mode)": SamplerConfig(video_steps=video_steps, action_steps=action_steps, solver="unipc"),
        "synchronous (full schedule)": SamplerConfig(video_steps=video_steps, action_steps=action_steps,
                                                     solver="unipc", synchronous=True),
    }.items():
        sampler = AsyncSampler(model, sampler_cfg)
        times = timeit(lambda s=sampler: s.sample(cond, mode="policy"), dev, repeats)
        results[name] = {**_stats(times), "calls": video_steps if sampler_cfg.synchronous else action_steps}
    a, s = results["async (ANS policy mode)"], results["synchronous (full schedule)"]
    return {"benchmark": "latency", "preset": preset, "device": _device_name(dev), "dtype": str(dtype),
            "tokens": cfg.model.num_tokens, "results": results, "speedup": s["median_ms"] / a["median_ms"]}


def bench_4d(preset: str = "small", device: str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 2,
             video_steps: int = 50, action_steps: int = 10, overrides: list[str] | None = None) -> dict[str, Any]:
    cfg, model = build_random_model(preset, device, dtype, overrides)
    cond = random_conditioning(cfg, device)
    dev = torch.device(device)
    sampler = AsyncSampler(model, SamplerConfig(video_steps=video_steps, action_steps=action_steps, solver="unipc"))
    variants = {
        "depth at the last call only": dict(depth=True),
        "depth at every call (release)": dict(depth=True, depth_every_call=True),
        "video without depth": dict(depth=False),
    }
    results = {name: _stats(timeit(lambda kw=kw: sampler.sample(cond, mode="4d", **kw), dev, repeats))
               for name, kw in variants.items()}
    base = results["depth at the last call only"]["median_ms"]
    for r in results.values():
        r["relative_to_last_call_only"] = r["median_ms"] / base
    return {"benchmark": "4d", "preset": preset, "device": _device_name(dev), "dtype": str(dtype),
            "calls": video_steps, "results": results}


def bench_forward(preset: str = "small", device: str = "cpu", dtype: torch.dtype = torch.float32,
                  repeats: int = 10, overrides: list[str] | None = None) -> dict[str, Any]:
    """Single-view video-only forward: ours vs diffusers' stock forward on the same tokens."""
    cfg, model = build_random_model(preset, device, dtype, (overrides or []) + ["model.num_views=1",
                                                                                 "model.camera_names=[]"])
    m = cfg.model
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, 1, m.latent_channels, m.latent_frames, m.latent_height, m.latent_width, generator=g)
    video = video.to(device=device, dtype=dtype)
    text = torch.randn(1, m.text_len, m.text_dim, generator=g).to(device=device, dtype=dtype)
    t = torch.tensor([0.7], device=device)
    per_token = model.token_timesteps(m.token_grid, t, None, 0, 0)
    # diffusers' own model class and forward, holding our backbone's weights
    stock_model = WanTransformer3DModel(**wan_backbone_kwargs(m)).to(device=device, dtype=dtype).eval()
    stock_model.load_state_dict(model.backbone.state_dict())
    model.view_embedding.weight.data.zero_()  # single view: no view offset, so both compute the same thing
    with torch.no_grad():
        ours = _stats(timeit(lambda: model(video, text, t), dev, repeats))
        stock = _stats(timeit(lambda: stock_model(video[:, 0], per_token * TIME_SCALE, text, return_dict=False),
                              dev, repeats))
        difference = (model(video, text, t).video[:, 0].float()
                      - stock_model(video[:, 0], per_token * TIME_SCALE, text, return_dict=False)[0].float())
    return {"benchmark": "forward", "preset": preset, "device": _device_name(dev), "dtype": str(dtype),
            "video_tokens": m.num_video_tokens,
            "results": {"xwam forward": ours, "diffusers WanTransformer3DModel.forward": stock},
            "overhead": ours["median_ms"] / stock["median_ms"],
            "max_abs_difference": float(difference.abs().max())}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def print_table(report: dict[str, Any]) -> None:
    print(f"\n== {report['benchmark']} | preset {report['preset']} | {report['device']} | {report['dtype']}")
    for name, r in report["results"].items():
        extra = "".join(f"  {k}={v:.2f}" for k, v in r.items() if k not in ("median_ms", "min_ms", "mean_ms"))
        print(f"  {name:40s} median {r['median_ms']:10.1f} ms  min {r['min_ms']:10.1f} ms{extra}")
    for key in ("speedup", "overhead"):
        if key in report:
            print(f"  {key}: {report[key]:.2f}x")
    if "max_abs_difference" in report:
        print(f"  max |ours - diffusers|: {report['max_abs_difference']:.2e}")


def write_json(path: str | Path, reports: list[dict[str, Any]]) -> None:
    atomic_write_json(path, reports)
