import dataclasses
import json

import pytest

from xwam.config import SamplerConfig, XWAMConfig, get_preset


def test_checkpoint_configs_with_the_old_cfg_scale_key_still_load(tmp_path):
    from xwam.model.checkpoint import load_checkpoint, save_checkpoint
    from xwam.model.transformer import XWAMTransformer

    config = get_preset("tiny")
    path = tmp_path / "tiny"
    save_checkpoint(path, XWAMTransformer(config.model), config)
    data = json.loads((path / "config.json").read_text())
    del data["sampler"]["guidance_scale"]
    data["sampler"]["cfg_scale"] = 2.5  # as written before the rename
    (path / "config.json").write_text(json.dumps(data))
    (path / "manifest.json").unlink()  # checkpoints of that time had no manifest
    _, loaded, _ = load_checkpoint(path)
    assert loaded.sampler.guidance_scale == 2.5
    assert XWAMConfig.from_dict(data).sampler == dataclasses.replace(config.sampler, guidance_scale=2.5)
    assert config.override(["sampler.cfg_scale=3"]).sampler.guidance_scale == 3.0
    with pytest.raises(ValueError, match="both cfg_scale and guidance_scale"):
        SamplerConfig.from_dict({"cfg_scale": 2.0, "guidance_scale": 2.0})


def test_sampler_config_changes_only_through_a_validated_copy():
    cfg = SamplerConfig(video_steps=8, action_steps=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.action_steps = 2  # type: ignore[misc]
    assert dataclasses.replace(cfg, action_steps=2).action_steps == 2 and cfg.action_steps == 4
    with pytest.raises(ValueError, match="cannot exceed"):
        dataclasses.replace(cfg, action_steps=9)


def test_quaternion_norm_is_validated_and_the_release_keeps_raw_quaternions():
    assert get_preset("wan22-ti2v-5b").model.quaternion_norm == "raw"  # the release's statistics
    with pytest.raises(ValueError, match="quaternion_norm='sign' must be 'raw' or 'aligned'"):
        dataclasses.replace(get_preset("tiny").model, quaternion_norm="sign")
