"""Training options: latent cache, dataset mixtures, activation checkpointing, --init xwam, LoRA resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume import _interrupted_run
from train_testutils import losses, tiny_train_config

from xwam.train import Trainer, train


def test_latent_cache_and_checkpointing_give_the_same_losses(synthetic_dataset: Path, tmp_path: Path) -> None:
    plain = train(tiny_train_config(synthetic_dataset, tmp_path / "plain", steps=3))
    cached = train(tiny_train_config(synthetic_dataset, tmp_path / "cached", steps=3, cache_latents=True))
    ckpt = train(
        tiny_train_config(synthetic_dataset, tmp_path / "ckpt", steps=3, gradient_checkpointing=True)
    )
    assert losses(tmp_path / "cached") == losses(tmp_path / "plain")
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-6)
    for other in (cached, ckpt):
        a, b = load_file(str(plain / "model.safetensors")), load_file(str(other / "model.safetensors"))
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_dataset_mixture_with_weights(synthetic_dataset: Path, tmp_path: Path) -> None:
    tc = dataclasses.replace(tiny_train_config(synthetic_dataset, tmp_path / "mix", steps=2, weights=[0.7, 0.3]),
                             data=[str(synthetic_dataset)] * 2)
    trainer = Trainer(tc)
    weights = trainer.train_clips.sample_weights()
    half = len(weights) // 2
    assert weights[:half].sum().item() == pytest.approx(0.7) and weights[half:].sum().item() == pytest.approx(
        0.3
    )
    assert trainer.fit().name == "step-00000002"


def test_init_from_an_xwam_checkpoint(synthetic_dataset: Path, tmp_path: Path) -> None:
    first = train(tiny_train_config(synthetic_dataset, tmp_path / "first", steps=2))
    trainer = Trainer(
        tiny_train_config(synthetic_dataset, tmp_path / "second", steps=2, init=f"xwam:{first}")
    )
    saved = load_file(str(first / "model.safetensors"))
    state = trainer.module.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert trainer.tc.lr == 1e-5  # fine-tuning default
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(tiny_train_config(synthetic_dataset, tmp_path / "third", init=f"wan:{tmp_path / 'nope'}"))


def test_lora_resume_equals_uninterrupted(synthetic_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    changes = dict(lora_rank=4, lr=1e-2)
    full = train(tiny_train_config(synthetic_dataset, tmp_path / "full", **changes))
    _interrupted_run(tiny_train_config(synthetic_dataset, tmp_path / "res", **changes), 5, monkeypatch)
    resumed = train(tiny_train_config(synthetic_dataset, tmp_path / "res", resume="latest", **changes))
    assert losses(tmp_path / "res") == losses(tmp_path / "full")
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
