"""Trainer pieces: the global-batch objective, the step sampler, LoRA, the config round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_testutils import tiny_train_config

from xwam.config import get_preset
from xwam.diffusion.flow import add_noise, velocity_target
from xwam.diffusion.objective import LOSS_NAMES, TrainingInputs, draw_noise, loss_sums, mean_losses
from xwam.model.checkpoint import load_checkpoint
from xwam.model.transformer import XWAMTransformer
from xwam.train import TrainConfig, Trainer
from xwam.train.data import StepBatches
from xwam.train.parallel import merge_lora_state
from xwam.train.schedule import cosine_with_warmup, ema_decay_at


def _inputs(cfg, batch=3, seed=0) -> TrainingInputs:
    g = torch.Generator().manual_seed(seed)
    shape = (
        batch,
        cfg.num_views,
        cfg.latent_channels,
        cfg.latent_frames,
        cfg.latent_height,
        cfg.latent_width,
    )
    action_mask = torch.ones(batch, cfg.action_horizon, cfg.action_dim)
    action_mask[0, -2:] = 0  # episode-end padding
    state_mask = torch.ones(cfg.state_dim)
    state_mask[-1] = 0  # an invalid dimension
    return TrainingInputs(
        video=torch.randn(shape, generator=g),
        text=torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g),
        text_uncond=torch.zeros(1, cfg.text_len, cfg.text_dim),
        actions=torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=g),
        states=torch.randn(batch, cfg.num_states, cfg.state_dim, generator=g),
        action_mask=action_mask,
        state_mask=state_mask,
        depth=torch.randn(shape, generator=g),
    )


def _masked_mean(pred, target, mask=None):
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    mask = mask.expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def test_objective_sums_give_the_papers_masked_means() -> None:
    preset = get_preset("tiny")
    torch.manual_seed(0)
    model = XWAMTransformer(preset.model)
    inputs = _inputs(preset.model)
    cfg = dataclasses.replace(preset.diffusion, action_prefix_prob=0.0)
    noise = draw_noise([11, 12, 13], inputs.video.shape[1:], inputs.actions.shape[1:], inputs.states.shape[1:], cfg)
    sums, counts = loss_sums(model, inputs, noise)
    ours = mean_losses(sums, counts)

    # the same noise through the model, scored by hand: frame 0 and state 0 never count, clean-action
    # samples drop their action and state losses, padding and invalid dimensions are masked
    nv = add_noise(inputs.video, noise.e_video, noise.t_video)
    nv[:, :, :, :1] = inputs.video[:, :, :, :1]
    na = add_noise(inputs.actions, noise.e_actions, noise.t_action)
    ns = add_noise(inputs.states, noise.e_states, noise.t_action)
    ns[:, :1] = inputs.states[:, :1]
    text = torch.where(noise.text_dropped[:, None, None], inputs.text_uncond.expand_as(inputs.text), inputs.text)
    out = model(nv, text, noise.t_video, noise.t_action, na, ns, depth=True)
    keep = (~noise.actions_clean).float()[:, None, None]
    state_mask = (keep * inputs.state_mask).expand_as(inputs.states).clone()
    state_mask[:, 0] = 0
    ref = {
        "video": _masked_mean(out.video[:, :, :, 1:], velocity_target(inputs.video, noise.e_video)[:, :, :, 1:]),
        "action": _masked_mean(out.actions, velocity_target(inputs.actions, noise.e_actions), keep * inputs.action_mask),
        "state": _masked_mean(out.states, velocity_target(inputs.states, noise.e_states), state_mask),
        "depth": _masked_mean(out.depth, inputs.depth),
    }
    assert set(ours) == set(ref) | {"total"}
    for k in ref:
        assert ours[k] == pytest.approx(ref[k].item(), rel=1e-5), k


def test_noise_depends_on_the_sample_not_on_the_batch() -> None:
    preset = get_preset("tiny")
    inputs = _inputs(preset.model)
    shapes = (inputs.video.shape[1:], inputs.actions.shape[1:], inputs.states.shape[1:], preset.diffusion)
    whole = draw_noise([5, 6, 7], *shapes)
    part = draw_noise([6, 7], *shapes)
    for name in vars(whole):
        assert torch.equal(getattr(whole, name)[1:], getattr(part, name)), name
    other = draw_noise([5, 6, 8], *shapes)
    assert not torch.equal(whole.e_video[2], other.e_video[2])


def test_step_sampler_partitions_the_global_batch_and_follows_weights() -> None:
    weights = torch.tensor([0.7 / 2] * 2 + [0.3 / 3] * 3)  # two sources: 2 clips at 70 %, 3 clips at 30 %
    common = dict(batch_size=2, grad_accum=2, seed=1, start_step=0, total_steps=3)
    single = StepBatches(weights, world=1, rank=0, **{**common, "batch_size": 8, "grad_accum": 1})
    ranks = [StepBatches(weights, world=2, rank=r, **common) for r in range(2)]
    for step in range(3):
        parts = [ranks[r].micro_batch(step, m) for m in range(2) for r in range(2)]
        assert [k for p in parts for k in p] == single.micro_batch(step, 0)
    assert len(list(iter(ranks[0]))) == 6
    resumed = StepBatches(weights, world=2, rank=0, **{**common, "start_step": 2})
    assert list(iter(resumed)) == list(iter(ranks[0]))[4:]
    big = StepBatches(
        weights, world=1, rank=0, batch_size=4000, grad_accum=1, seed=0, start_step=0, total_steps=1
    )
    share = sum(1 for i, _, _ in big.step_keys(0) if i < 2) / 4000
    assert share == pytest.approx(0.7, abs=0.03)


def test_cosine_schedule_warms_up_then_decays() -> None:
    f = cosine_with_warmup(10, 110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


def test_lora_trains_only_adapters_and_new_modules(synthetic_dataset: Path, tmp_path: Path) -> None:
    tc = tiny_train_config(
        synthetic_dataset, tmp_path / "lora", steps=3, save_every=100, lora_rank=4, lr=1e-2, warmup=0
    )
    trainer = Trainer(tc)
    before = {k: v.detach().clone() for k, v in trainer.module.state_dict().items()}
    trainable = set(trainer.trainable_names)
    assert trainable and all(
        ".lora_" in n
        or n.split(".")[0]
        in (
            "view_embedding",
            "action_encoder",
            "action_decoder",
            "state_encoder",
            "state_decoder",
            "depth_branch",
        )
        for n in trainable
    )
    assert any("depth_branch" in n for n in trainable) and any(".lora_B." in n for n in trainable)
    final = trainer.fit()
    after = trainer.module.state_dict()
    for name, value in before.items():
        changed = not torch.equal(value, after[name])
        if name in trainable:
            assert changed or "bias" in name, f"trainable {name} did not change"
        else:
            assert not changed, f"frozen {name} changed"
    # the checkpoint holds merged weights under plain names, loadable by load_checkpoint
    merged = load_file(str(final / "model.safetensors"))
    assert not any(".lora_" in k or "base_layer" in k for k in merged)
    assert torch.allclose(
        merged_weight := merged["backbone.blocks.0.attn1.to_q.weight"],
        merge_lora_state(after, 1.0)["backbone.blocks.0.attn1.to_q.weight"],
    )
    assert not torch.equal(merged_weight, before["backbone.blocks.0.attn1.to_q.base_layer.weight"])
    model, _, _ = load_checkpoint(final)
    assert torch.equal(model.backbone.blocks[0].attn1.to_q.weight, merged_weight)
    raw = load_file(str(final / "trainable.safetensors"))
    assert set(raw) == trainable


def test_train_config_json_round_trip_and_validation(tmp_path: Path) -> None:
    tc = TrainConfig(data=["a", "b"], weights=[0.7, 0.3], out=str(tmp_path), steps=10)
    path = tmp_path / "tc.json"
    path.write_text(__import__("json").dumps(tc.to_dict()))
    assert TrainConfig.from_json(path) == tc
    assert tc.resolved().lr == 3e-4 and tc.resolved().warmup == 1
    assert TrainConfig(data=["a"], init="wan:/x").resolved().lr == 1e-5
    with pytest.raises(ValueError, match="2 mixture weights for 1 datasets"):
        TrainConfig(data=["a"], weights=[1, 2]).validate()
    with pytest.raises(ValueError, match="init must look like"):
        TrainConfig(data=["a"], init="foo").validate()


def test_trainer_keeps_every_episode_that_fits_decoded(synthetic_dataset: Path, tmp_path: Path) -> None:
    # Re-decoding an episode's videos per clip used to cost more than the training step itself.
    trainer = Trainer(tiny_train_config(synthetic_dataset, tmp_path / "cache", steps=4, save_every=100))
    src = trainer.sources[0]
    assert src.cache_size == len(src) and src._cache.max_bytes == 2048 * 2**20
    trainer.fit()
    assert 0 < len(src._cache) <= len(src)
    decoded = {k: src._cache.get(k) for k in list(src._cache._items)}  # later clips reuse these
    for (i, depth), ep in decoded.items():
        assert src.episode(i, load_depth=depth) is ep
    small = Trainer(tiny_train_config(synthetic_dataset, tmp_path / "none", steps=1, episode_cache_mb=0.0))
    small.fit()
    assert len(small.sources[0]._cache) == 0


def test_ema_decay_warms_up_to_the_configured_value() -> None:
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)  # the first average is mostly the new weights
    decays = [ema_decay_at(s, 0.999) for s in range(0, 20000, 50)]
    assert all(a <= b for a, b in zip(decays, decays[1:]))
    assert ema_decay_at(20000, 0.999) == 0.999 and ema_decay_at(50, 0.5) == 0.5
    # after 2600 steps the initial (random) weights weigh under 1e-3 in the average, not 7 %
    weight = 1.0
    for s in range(2600):
        weight *= ema_decay_at(s, 0.999)
    assert weight < 1e-3


def test_trainer_applies_the_configured_loss_weights(synthetic_dataset: Path, tmp_path: Path) -> None:
    # all weights 0: the losses are still reported, but no gradient reaches the model
    zero = [f"diffusion.{k}_loss_weight=0" for k in LOSS_NAMES]
    trainer = Trainer(tiny_train_config(synthetic_dataset, tmp_path / "w", steps=1, overrides=zero))
    assert trainer.loss_weights.tolist() == [0.0] * len(LOSS_NAMES)
    before = [p.detach().clone() for p in trainer.trainable]
    trainer.optimizer.param_groups[0]["weight_decay"] = 0.0
    batch = next(iter(trainer.loader))
    losses = trainer.train_step([batch])
    assert losses["video"] > 0 and losses["grad_norm"] == 0.0
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, trainer.trainable))


def test_state_dropout_zeroes_the_current_state_and_changes_no_other_draw():
    preset = get_preset("tiny")
    inputs = _inputs(preset.model)
    shapes = inputs.video.shape[1:], inputs.actions.shape[1:], inputs.states.shape[1:]
    off = draw_noise([11, 12, 13], *shapes, preset.diffusion)
    on = draw_noise([11, 12, 13], *shapes, dataclasses.replace(preset.diffusion, state_dropout=0.999))
    assert not off.state_dropped.any() and on.state_dropped.all()
    for name in ("t_video", "t_action", "actions_clean", "prefix_len", "text_dropped", "e_video", "e_states"):
        assert torch.equal(getattr(off, name), getattr(on, name)), name

    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, video, text, t_video, t_action, actions, states, **kw):
            seen.append(states[:, 0].clone())
            return self.model(video, text, t_video, t_action, actions, states, **kw)

    torch.manual_seed(0)
    spy = Spy(XWAMTransformer(preset.model))
    loss_sums(spy, inputs, off)
    loss_sums(spy, inputs, on)
    assert torch.equal(seen[0], inputs.states[:, 0].float()) and not torch.equal(seen[0], seen[1])
    assert torch.count_nonzero(seen[1]) == 0
    with pytest.raises(ValueError, match="state_dropout"):
        dataclasses.replace(preset.diffusion, state_dropout=1.0)
