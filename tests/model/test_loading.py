import json
import re

import pytest
import torch
from safetensors.torch import save_file

from xwam.model import checkpoint as ckpt
from xwam.model.checkpoint import load_checkpoint, save_checkpoint
from xwam.model.loading import build_from_wan, load_release_checkpoint, load_wan_backbone
from xwam.model.transformer import XWAMTransformer

# Diffusers -> Wan-original names, written out independently of the loader (Wan2.2-TI2V-5B layout).
TO_ORIGINAL = [
    (r"attn1\.to_q\.", "self_attn.q."), (r"attn1\.to_k\.", "self_attn.k."), (r"attn1\.to_v\.", "self_attn.v."),
    (r"attn1\.to_out\.0\.", "self_attn.o."), (r"attn1\.norm_q\.", "self_attn.norm_q."),
    (r"attn1\.norm_k\.", "self_attn.norm_k."), (r"attn2\.to_q\.", "cross_attn.q."), (r"attn2\.to_k\.", "cross_attn.k."),
    (r"attn2\.to_v\.", "cross_attn.v."), (r"attn2\.to_out\.0\.", "cross_attn.o."),
    (r"attn2\.norm_q\.", "cross_attn.norm_q."), (r"attn2\.norm_k\.", "cross_attn.norm_k."),
    (r"ffn\.net\.0\.proj\.", "ffn.0."), (r"ffn\.net\.2\.", "ffn.2."), (r"\.norm2\.", ".norm3."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^proj_out\.", "head.head."), (r"^scale_shift_table$", "head.modulation"),
]


def to_original(key: str) -> str:
    for pattern, repl in TO_ORIGINAL:
        key = re.sub(pattern, repl, key)
    return key


def random_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = XWAMTransformer(cfg)
    with torch.no_grad():  # make every parameter distinctive so a wrong mapping cannot pass
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_load_wan_from_a_diffusers_folder_builds_the_depth_branch(tmp_path, tiny_config):
    cfg = tiny_config.model
    source = random_model(cfg)
    source.backbone.save_pretrained(tmp_path / "Wan2.2-TI2V-5B-Diffusers" / "transformer")
    model = build_from_wan(tmp_path / "Wan2.2-TI2V-5B-Diffusers", cfg)
    assert_same_parameters(model.backbone, source.backbone)
    src_last = source.backbone.blocks[-1].state_dict()
    for name, value in model.depth_branch.blocks[0].state_dict().items():
        assert torch.equal(value, src_last[name])


def test_load_wan_from_the_original_layout_renames_every_key(tmp_path, tiny_config):
    cfg = tiny_config.model
    source = random_model(cfg, seed=1)
    original = {"model.diffusion_model." + to_original(k): v.contiguous() for k, v in source.backbone.state_dict().items()}
    assert any(".norm3." in k for k in original) and not any(".attn1." in k for k in original)
    save_file(original, str(tmp_path / "wan_original.safetensors"))
    backbone = load_wan_backbone(tmp_path / "wan_original.safetensors", cfg)
    assert_same_parameters(backbone, source.backbone)


def test_backbone_shape_mismatch_is_a_clear_error(tmp_path, tiny_config):
    cfg = tiny_config.model
    random_model(cfg).backbone.save_pretrained(tmp_path / "transformer")
    from dataclasses import replace

    with pytest.raises(ValueError, match="num_layers"):
        load_wan_backbone(tmp_path, replace(cfg, num_layers=4))


def test_release_checkpoint_loads_with_frozen_weights_ignored(tmp_path, tiny_config):
    cfg = tiny_config.model
    source = random_model(cfg, seed=2)
    module = {}
    for key, value in source.state_dict().items():
        if key.startswith("backbone."):
            new = to_original(key.removeprefix("backbone."))
        elif key.startswith("depth_branch.blocks."):
            i, rest = re.match(r"depth_branch\.blocks\.(\d+)\.(.+)", key).groups()
            new = f"extra_blocks.0.{i}." + to_original("blocks.0." + rest).removeprefix("blocks.0.")
        elif key.startswith("depth_branch."):
            new = "extra_heads.0." + key.removeprefix("depth_branch.")
        else:
            new = key.replace("state_", "proprio_")
        module["model." + new] = value
    module["text_encoder.encoder.block.0.weight"] = torch.ones(3)  # frozen parts, ignored
    module["vae.decoder.conv.weight"] = torch.ones(3)
    (tmp_path / "checkpoint").mkdir()
    torch.save({"module": module, "global_steps": 7}, tmp_path / "checkpoint" / "mp_rank_00_model_states.pt")
    model = load_release_checkpoint(tmp_path, cfg)
    assert_same_parameters(model, source)
    del module["model.view_embedding.weight"]
    torch.save({"module": module}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="view_embedding"):
        load_release_checkpoint(tmp_path / "broken.pt", cfg)


def test_release_checkpoint_with_pickled_code_is_refused(tmp_path, tiny_config):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"module": {"x": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only"):
        load_release_checkpoint(tmp_path / "evil.pt", tiny_config.model)


def test_xwam_checkpoint_round_trip(tmp_path, tiny_config):
    model = random_model(tiny_config.model, seed=3)
    stats = {"action": {"q01": [0.0], "q99": [1.0]}}
    save_checkpoint(tmp_path / "ckpt", model, tiny_config, norm_stats=stats)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "manifest.json", "model.safetensors",
                                                                   "norm_stats.json"]
    loaded, config, loaded_stats = load_checkpoint(tmp_path / "ckpt")
    assert_same_parameters(loaded, model)
    assert config.to_dict() == tiny_config.to_dict() and loaded_stats == stats
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["preset"] == "tiny"


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    first = random_model(tiny_config.model, seed=4)
    save_checkpoint(tmp_path / "ckpt", first, tiny_config)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ckpt", random_model(tiny_config.model, seed=5), tiny_config)
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert_same_parameters(loaded, first)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_bad_checkpoints_give_clear_errors(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an xwam checkpoint"):
        load_checkpoint(tmp_path / "empty")
    save_checkpoint(tmp_path / "ckpt", random_model(tiny_config.model), tiny_config)
    (tmp_path / "ckpt" / "manifest.json").unlink()  # a checkpoint from before manifests: still read
    data = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(tmp_path / "ckpt")


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in (-4, -40, -400, -4000):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_config(path):
    path.write_text(path.read_text().replace('"action_steps": 4', '"action_steps": 3'))


DAMAGE = {
    "truncated weights": ("model.safetensors", _truncate, "model.safetensors has 100 bytes"),
    "empty weights": ("model.safetensors", lambda p: p.write_bytes(b""), "model.safetensors has 0 bytes"),
    "flipped bytes": ("model.safetensors", _flip_bytes, "model.safetensors does not match its checksum"),
    "hand-edited config": ("config.json", _edit_config, "config.json does not match its checksum"),
    "missing statistics": ("norm_stats.json", lambda p: p.unlink(), "norm_stats.json is missing"),
    "unreadable manifest": ("manifest.json", lambda p: p.write_text("{"), "unreadable manifest.json"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoints_are_refused_naming_the_folder_and_the_reason(tmp_path, tiny_config, kind):
    from xwam.model.checkpoint import CheckpointError

    file, damage, reason = DAMAGE[kind]
    save_checkpoint(tmp_path / "ckpt", random_model(tiny_config.model), tiny_config, norm_stats={"x": 1})
    damage(tmp_path / "ckpt" / file)
    with pytest.raises(CheckpointError, match=f"damaged checkpoint {tmp_path / 'ckpt'}: {reason}"):
        load_checkpoint(tmp_path / "ckpt")
