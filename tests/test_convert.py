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


def test_convert_an_xwam_checkpoint_keeps_its_codec_and_applies_set(tmp_path, capsys):
    """A PCA checkpoint copied with new sampler defaults still loads as a policy: the fitted codec
    travels with the weights, and the copy samples at the new temperature."""
    from xwam.data.stats import NormStats
    from xwam.model.checkpoint import load_codec_state, save_checkpoint
    from xwam.policy import XWAMPolicy
    from xwam.processor import XWAMProcessor

    cfg = get_preset("tiny").override(["model.codec=pca", "model.latent_channels=6"])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, cfg.model.num_views, 3, 3, 16, 16), dtype=torch.uint8, generator=g)
    depth = 0.5 + torch.rand(4, cfg.model.num_views, 3, 16, 16, generator=g)
    codec = XWAMProcessor.fit_codec_state(cfg.model, images, depth, "metric")
    rng = __import__("numpy").random.default_rng(0)
    stats = NormStats.from_arrays(rng.normal(size=(50, cfg.model.state_dim)),
                                  rng.normal(size=(50, cfg.model.action_dim))).to_dict()
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "src", XWAMTransformer(cfg.model), cfg, norm_stats=stats, codec_state=codec)
    out = tmp_path / "cold"
    assert main(["convert", f"xwam:{tmp_path / 'src'}", "--out", str(out),
                 "--set", "sampler.video_temperature=0.5", "--set", "sampler.action_temperature=0"]) == 0
    model, config, copied_stats = load_checkpoint(out)
    assert config.sampler.video_temperature == 0.5 and config.sampler.action_temperature == 0.0
    assert config.model == cfg.model and copied_stats == stats
    copied_codec = load_codec_state(out)
    assert set(copied_codec) == set(codec) and all(torch.equal(copied_codec[k], codec[k]) for k in codec)
    assert XWAMPolicy.from_checkpoint(out).config.sampler.video_temperature == 0.5
    assert main(["convert", f"xwam:{tmp_path / 'src'}", "--out", str(tmp_path / "bad"),
                 "--set", "model.num_layers=1"]) == 2
    assert "fix its model section" in capsys.readouterr().err
