from pathlib import Path

import torch

from xwam.cli import main
from xwam.config import get_preset
from xwam.model.checkpoint import load_checkpoint
from xwam.model.transformer import XWAMTransformer


def test_convert_wan_diffusers_folder_to_an_xwam_checkpoint(tmp_path, capsys):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    source = XWAMTransformer(cfg.model)
    source.backbone.save_pretrained(tmp_path / "wan" / "transformer")
    assert main(["convert", f"wan:{tmp_path / 'wan'}", "--preset", "tiny", "--out", str(tmp_path / "ckpt")]) == 0
    model, config, stats = load_checkpoint(tmp_path / "ckpt")
    assert config.preset == "tiny" and stats is None
    for (name, a), b in zip(model.backbone.state_dict().items(), source.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    assert "norm-stats" in capsys.readouterr().out


def test_convert_rejects_unknown_sources(tmp_path, capsys):
    assert main(["convert", "pickle:/x", "--out", str(tmp_path / "o")]) == 2
    assert "release:PATH" in capsys.readouterr().err


def test_a_converted_release_checkpoint_acts_as_the_release_does(tmp_path, capsys, monkeypatch):
    import numpy as np

    import xwam.model.loading as loading
    from xwam.data.stats import NormStats
    from xwam.policy import XWAMPolicy

    monkeypatch.setattr(loading, "read_release_state", lambda path: ({}, Path(path)))
    monkeypatch.setattr(loading, "release_model", lambda raw, cfg, source: XWAMTransformer(cfg))
    rng = np.random.default_rng(0)
    cfg = get_preset("tiny").model
    NormStats.from_arrays(rng.normal(size=(50, cfg.state_dim)), rng.normal(size=(50, cfg.action_dim))).to_json(
        tmp_path / "stats.json")
    # the tiny chunk has 4 actions, so the release's re-planning every 32 is overridden; the rest stays
    assert main(["convert", f"release:{tmp_path}", "--preset", "tiny", "--out", str(tmp_path / "ckpt"),
                 "--norm-stats", str(tmp_path / "stats.json"), "--set", "policy.replan_every=4"]) == 0
    assert "release parity on: sampler.integer_timesteps=true, policy.center_crop=0.95" in capsys.readouterr().out
    _, config, _ = load_checkpoint(tmp_path / "ckpt")
    assert config.sampler.integer_timesteps and config.policy.center_crop == 0.95 and config.policy.replan_every == 4
    policy = XWAMPolicy.from_checkpoint(tmp_path / "ckpt")
    assert policy.processor.center_crop == 0.95 and policy.chunker.replan_every == 4
    assert policy.describe() == "4 action steps, re-plan every 4 of 4 actions, integer timesteps, centre crop 0.95"
    assert policy.metadata["replan_every"] == 4 and policy.metadata["integer_timesteps"]
