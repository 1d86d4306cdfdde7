import json
import re
from pathlib import Path

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


# ---- the release's real key set ------------------------------------------------------------------
RELEASE_KEYS_TSV = Path(__file__).parent / "data" / "release_state_dict_keys.tsv"


def release_keys() -> list[tuple[str, tuple[int, ...]]]:
    """(key, full-size shape) of every tensor in the release checkpoint's ``module`` dict, in order."""
    rows = [line.split("\t") for line in RELEASE_KEYS_TSV.read_text().splitlines() if line and line[0] != "#"]
    return [(key, tuple(int(x) for x in shape.split(",") if x)) for key, shape, _dtype in rows]


def release_layout_config():
    """The release's layout (30 blocks + 10 depth blocks, 3 views, 14-d actions, 16-d states) at tiny width."""
    from xwam.config import ModelConfig

    return ModelConfig(num_views=3, image_height=32, image_width=32, num_frames=3, frame_skip=2, action_horizon=4,
                       action_dim=14, state_dim=16, codec="pixel", latent_channels=48, spatial_compression=4,
                       temporal_compression=1, num_layers=30, num_heads=2, head_dim=12, ffn_dim=32, freq_dim=256,
                       rope_max_seq_len=32, depth_layers=10, text_encoder="none", text_dim=32, text_len=8)


def test_every_release_key_has_its_place_and_full_size_shape_in_the_5b_model():
    from xwam.config import get_preset
    from xwam.model.loading import release_key_to_xwam

    keys = release_keys()
    model_keys = [(k, s) for k, s in keys if k.startswith("model.")]
    assert len(keys) == 1555 and len(model_keys) == 1115
    with torch.device("meta"):
        model = XWAMTransformer(get_preset("wan22-ti2v-5b").model)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    placed = {}
    for key, shape in model_keys:
        ours = release_key_to_xwam(key)
        assert ours in own, f"{key} -> {ours}: no such parameter"
        assert own[ours] == shape, f"{key}: release {shape} vs ours {own[ours]}"
        assert ours not in placed, f"{key} and {placed.get(ours)} both map to {ours}"
        placed[ours] = key
    assert set(placed) == set(own)  # and every parameter of ours comes from the release


def _release_file(path, module):
    """A DeepSpeed/Lightning-style checkpoint: the ``module`` dict plus the bookkeeping entries they save."""
    from collections import OrderedDict

    shapes = OrderedDict((k, torch.Size(v.shape)) for k, v in module.items() if k.startswith("model."))
    frozen = OrderedDict((k, torch.Size(v.shape)) for k, v in module.items() if not k.startswith("model."))
    torch.save({
        "module": module, "buffer_names": ["vae.mean", "vae.std"], "optimizer": None, "param_shapes": [shapes],
        "frozen_param_shapes": frozen, "frozen_param_fragments": {}, "shared_params": {}, "lr_scheduler": None,
        "data_sampler": None, "random_ltd": None, "sparse_tensor_module_names": set(), "skipped_steps": 0,
        "global_steps": 20000, "global_samples": 640000, "dp_world_size": 8, "mp_world_size": 1,
        "ds_config": {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}, "ds_version": "0.16.4",
        "epoch": 3, "global_step": 20000, "pytorch-lightning_version": "2.5.1",
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": torch.tensor(0.25), "dirpath": "ckpts",
                                                         "best_model_path": "", "kth_value": None}},
        "lr_schedulers": [{"base_lrs": [1e-5], "last_epoch": 20000, "_step_count": 20001, "lr_lambdas": [{}]}],
    }, path)


def test_a_deepspeed_file_with_the_release_key_set_loads_weights_only_with_nothing_dropped(tmp_path, caplog):
    import logging

    from xwam.model.loading import release_key_to_xwam

    cfg = release_layout_config()
    source = random_model(cfg, seed=4)
    own = source.state_dict()
    module = {}
    for key, _shape in release_keys():  # the exact names, in the release's order; shapes scaled down
        module[key] = own[release_key_to_xwam(key)].to(torch.bfloat16) if key.startswith("model.") \
            else torch.zeros(2, dtype=torch.bfloat16)
    (tmp_path / "checkpoint").mkdir()
    _release_file(tmp_path / "checkpoint" / "mp_rank_00_model_states.pt", module)
    with caplog.at_level(logging.INFO, logger="xwam.loading"):
        model = load_release_checkpoint(tmp_path, cfg)
    assert "skipped the frozen 242 text_encoder.* (umT5) and 198 vae.* keys" in caplog.text
    for name, value in model.state_dict().items():
        assert torch.equal(value, own[name].to(torch.bfloat16).float()), name
    # nothing unknown is ever dropped silently, and shapes are checked
    _release_file(tmp_path / "extra.pt", {**module, "model.new_head.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"1 keys have no place .*model\.new_head\.weight"):
        load_release_checkpoint(tmp_path / "extra.pt", cfg)
    _release_file(tmp_path / "other.pt", {**module, "ema.model.blocks.0.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="ema.model.blocks.0.weight"):
        load_release_checkpoint(tmp_path / "other.pt", cfg)
    wrong = dict(module)
    wrong["model.view_embedding.weight"] = torch.zeros(2, cfg.hidden_dim, dtype=torch.bfloat16)
    _release_file(tmp_path / "wrong.pt", wrong)
    with pytest.raises(ValueError, match="shape mismatches .*view_embedding"):
        load_release_checkpoint(tmp_path / "wrong.pt", cfg)


# ---- the release's frozen umT5 ----------------------------------------------------------------------
# transformers' UMT5 names -> Wan's T5 names as the release stores them, written out independently of
# the loader (Wan's T5: norm1/attn/pos_embedding, then norm2 and a gated FFN gate.0 (GELU) * fc1).
TO_RELEASE_UMT5 = [
    (r"^shared\.weight$", "token_embedding.weight"), (r"^encoder\.final_layer_norm\.weight$", "norm.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.", r"blocks.\1.pos_embedding.embedding."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.", r"blocks.\1.attn."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2."),
]


def umt5_to_release(name: str) -> str:
    for pattern, repl in TO_RELEASE_UMT5:
        if re.search(pattern, name):
            return "text_encoder.model." + re.sub(pattern, repl, name)
    raise AssertionError(f"no release name for {name}")


def test_every_release_text_encoder_key_has_its_place_and_shape_in_umt5_xxl():
    from transformers import UMT5Config, UMT5EncoderModel

    from xwam.model.loading import release_umt5_key_to_hf

    text_keys = [(k, s) for k, s in release_keys() if k.startswith("text_encoder.")]
    assert len(text_keys) == 242
    xxl = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    with torch.device("meta"):
        model = UMT5EncoderModel(xxl)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    placed = set()
    for key, shape in text_keys:
        ours = release_umt5_key_to_hf(key)
        assert ours in own and own[ours] == shape, f"{key} -> {ours}: {own.get(ours)} vs release {shape}"
        placed.add(ours)
    assert placed == set(own) - {"encoder.embed_tokens.weight"}  # the shared embedding's second name


def test_convert_writes_the_release_umt5_that_encodes_exactly_like_the_original(tmp_path, capsys):
    from transformers import UMT5Config, UMT5EncoderModel

    from xwam.cli import main
    from xwam.model.loading import release_key_to_xwam

    torch.manual_seed(0)
    original = UMT5EncoderModel(UMT5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                           feed_forward_proj="gated-gelu", tie_word_embeddings=False)).eval()
    cfg = release_layout_config()
    own = random_model(cfg, seed=5).state_dict()
    module = {key: own[release_key_to_xwam(key)] for key, _ in release_keys() if key.startswith("model.")}
    module.update({umt5_to_release(k): v for k, v in original.state_dict().items() if k != "encoder.embed_tokens.weight"})
    module["vae.mean"] = torch.zeros(48)
    (tmp_path / "release" / "checkpoint").mkdir(parents=True)
    _release_file(tmp_path / "release" / "checkpoint" / "mp_rank_00_model_states.pt", module)
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text("{}")
    code = main(["convert", f"release:{tmp_path / 'release'}", "--out", str(tmp_path / "ckpt"),
                 "--set", f"model.num_layers={cfg.num_layers}", "--set", f"model.depth_layers={cfg.depth_layers}",
                 *[a for f, v in (("num_views", 3), ("image_height", 32), ("image_width", 32), ("num_frames", 3),
                                  ("frame_skip", 2), ("action_horizon", 4), ("codec", "pixel"),
                                  ("latent_channels", 48), ("spatial_compression", 4), ("temporal_compression", 1),
                                  ("num_heads", 2), ("head_dim", 12), ("ffn_dim", 32), ("rope_max_seq_len", 32),
                                  ("text_encoder", "none"), ("text_dim", 32), ("text_len", 8))
                   for a in ("--set", f"model.{f}={v}")],
                 "--text-encoder-out", str(tmp_path / "umt5"), "--tokenizer", str(tokenizer)])
    assert code == 0
    out = capsys.readouterr().out
    assert "wrote the release's umT5 to" in out
    written = UMT5EncoderModel.from_pretrained(str(tmp_path / "umt5" / "text_encoder")).eval()
    ids = torch.randint(0, 96, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        want = original(input_ids=ids, attention_mask=mask).last_hidden_state
        got = written(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (tmp_path / "umt5" / "tokenizer" / "tokenizer_config.json").is_file()
    # a text-encoder key the map does not know is an error, never dropped
    from xwam.model.loading import release_text_encoder

    with pytest.raises(ValueError, match=r"1 text-encoder keys have no place .*blocks\.0\.attn\.extra"):
        release_text_encoder({**module, "text_encoder.model.blocks.0.attn.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="no text_encoder.model"):
        release_text_encoder({k: v for k, v in module.items() if not k.startswith("text_encoder.")})
