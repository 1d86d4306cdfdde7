from dataclasses import replace

import pytest
import torch
from diffusers import WanTransformer3DModel

from xwam.config import ModelConfig
from xwam.model.transformer import TIME_SCALE, XWAMBlock, XWAMTransformer, wan_backbone_kwargs


def spec_tiny_model_config(**changes) -> ModelConfig:
    """The tiny Wan2.2-shaped DiT used by the tests: 2 heads x 12, in/out 48, text 32, ffn 32, 2 layers."""
    base = dict(
        num_views=1, image_height=32, image_width=32, num_frames=3, frame_skip=2, action_horizon=4,
        action_dim=7, state_dim=8, codec="pixel", latent_channels=48, spatial_compression=4,
        temporal_compression=1, num_layers=2, num_heads=2, head_dim=12, ffn_dim=32, freq_dim=256,
        rope_max_seq_len=32, depth_layers=1, text_encoder="none", text_dim=32, text_len=8,
    )
    base.update(changes)
    return ModelConfig(**base)


def inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, cfg.num_views, cfg.latent_channels, cfg.latent_frames, cfg.latent_height,
                        cfg.latent_width, generator=g)
    actions = torch.randn(batch, cfg.action_horizon, cfg.action_dim, generator=g)
    states = torch.randn(batch, cfg.num_states, cfg.state_dim, generator=g)
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    t_video = torch.rand(batch, generator=g)
    t_action = t_video * torch.rand(batch, generator=g)
    return video, text, t_video, t_action, actions, states


@pytest.mark.parametrize("dedup", [False, True])
def test_golden_single_view_video_only_equals_diffusers_forward(dedup):
    cfg = spec_tiny_model_config()
    torch.manual_seed(0)
    model = XWAMTransformer(cfg).eval()
    model.dedup_timesteps = dedup
    with torch.no_grad():
        model.view_embedding.weight.zero_()
    # diffusers' own model class and forward, with our weights
    stock = WanTransformer3DModel(**wan_backbone_kwargs(cfg)).eval()
    stock.load_state_dict(model.backbone.state_dict())
    assert type(stock.blocks[0]).forward is not type(model.backbone.blocks[0]).forward
    video, text, t_video, *_ = inputs(cfg)
    grid = (cfg.latent_frames, cfg.latent_height // 2, cfg.latent_width // 2)
    with torch.no_grad():
        per_token = model.token_timesteps(grid, t_video, None, 0, 0)  # frame 0 clean, as in Wan2.2-TI2V
        ref = stock(video[:, 0], per_token * TIME_SCALE, text, return_dict=False)[0]
        ours = model(video, text, t_video).video[:, 0]
        ref_global = stock(video[:, 0], t_video * TIME_SCALE, text, return_dict=False)[0]
        ours_global = model(video, text, t_video, condition_frames=0).video[:, 0]
    if dedup:  # distinct times embedded once: equal up to fp32 matmul rounding
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    else:
        assert torch.equal(ours, ref)
    torch.testing.assert_close(ours_global, ref_global, rtol=0, atol=1e-5)


def test_output_shapes_and_backbone_is_stock_diffusers(tiny_config):
    cfg = tiny_config.model
    model = XWAMTransformer(cfg)
    assert isinstance(model.backbone, WanTransformer3DModel)
    assert dict(model.backbone.config)["num_layers"] == wan_backbone_kwargs(cfg)["num_layers"]
    video, text, tv, ta, actions, states = inputs(cfg)
    out = model(video, text, tv, ta, actions, states, depth=True)
    assert out.video.shape == video.shape and out.depth.shape == video.shape
    assert out.actions.shape == actions.shape and out.states.shape == states.shape


def test_main_outputs_bitwise_identical_with_depth_branch_on_and_off(tiny_config):
    cfg = tiny_config.model
    torch.manual_seed(1)
    model = XWAMTransformer(cfg).eval()
    args = inputs(cfg)
    with torch.no_grad():
        off = model(*args, depth=False)
        on = model(*args, depth=True)
    assert off.depth is None and on.depth is not None
    assert torch.equal(off.video, on.video)
    assert torch.equal(off.actions, on.actions)
    assert torch.equal(off.states, on.states)


def test_depth_blocks_are_copies_of_their_source_blocks_after_init(tiny_config):
    cfg = replace(tiny_config.model, num_layers=4, depth_layers=2)
    model = XWAMTransformer(cfg)
    for i, depth_block in enumerate(model.depth_branch.blocks):
        source = model.backbone.blocks[cfg.num_layers - cfg.depth_layers + i]
        src_state = source.state_dict()
        for name, value in depth_block.state_dict().items():
            assert torch.equal(value, src_state[name]), name
        # copies, not shared storage: training the branch must not move the main blocks
        assert depth_block.attn1.to_q.weight.data_ptr() != source.attn1.to_q.weight.data_ptr()


def test_depth_loss_gradients_reach_shared_and_main_blocks_but_main_loss_never_reaches_depth(tiny_config):
    cfg = tiny_config.model
    model = XWAMTransformer(cfg)
    video, text, tv, ta, actions, states = inputs(cfg)
    out = model(video, text, tv, ta, actions, states, depth=True)
    out.depth.pow(2).mean().backward()
    shared = model.backbone.blocks[0].attn1.to_q.weight.grad
    main_last = model.backbone.blocks[-1].attn1.to_k.weight.grad  # its K/V feed the depth queries
    assert shared is not None and shared.abs().sum() > 0
    assert main_last is not None and main_last.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    out = model(video, text, tv, ta, actions, states, depth=True)
    (out.video.pow(2).mean() + out.actions.pow(2).mean()).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.depth_branch.parameters())


def test_views_are_told_apart_by_the_view_embedding(tiny_config):
    cfg = tiny_config.model
    torch.manual_seed(0)
    model = XWAMTransformer(cfg).eval()
    video, text, tv, ta, actions, states = inputs(cfg, batch=1)
    video = video[:, :1].expand(-1, cfg.num_views, -1, -1, -1, -1)  # identical content in every view
    with torch.no_grad():
        out = model(video, text, tv, ta, actions, states).video
        assert not torch.allclose(out[:, 0], out[:, 1])
        model.view_embedding.weight.zero_()
        out = model(video, text, tv, ta, actions, states).video
    torch.testing.assert_close(out[:, 0], out[:, 1])


def test_spatial_embedding_is_optional_learned_and_checked(tiny_config):
    cfg = tiny_config.model
    assert "spatial_embedding" not in XWAMTransformer(cfg).state_dict()  # Wan / release layouts unchanged
    cfg = replace(cfg, spatial_embedding=True)
    torch.manual_seed(0)
    model = XWAMTransformer(cfg)
    _, rows, cols = cfg.token_grid
    assert model.spatial_embedding.shape == (rows, cols, cfg.hidden_dim)
    video, text, tv, ta, actions, states = inputs(cfg, batch=1)
    out = model(video, text, tv, ta, actions, states)
    out.actions.pow(2).mean().backward()  # the action head learns where things are through it
    assert model.spatial_embedding.grad.abs().sum() > 0
    with torch.no_grad():
        model.spatial_embedding.zero_()
        assert not torch.allclose(model(video, text, tv, ta, actions, states).actions, out.actions)
        with pytest.raises(ValueError, match="does not match the spatial embedding"):
            model(video[..., :-1, :], text, tv, ta, actions, states)  # a smaller image than configured


def test_clean_tokens_get_time_zero(tiny_config):
    cfg = tiny_config.model
    model = XWAMTransformer(cfg)
    grid = cfg.token_grid
    ts = model.token_timesteps(grid, torch.tensor([0.7]), torch.tensor([0.2]), cfg.num_states, cfg.action_horizon)
    per_frame = cfg.num_views * grid[1] * grid[2]
    assert ts.shape == (1, cfg.num_tokens)
    assert (ts[0, :per_frame] == 0).all() and (ts[0, per_frame:cfg.num_video_tokens] == 0.7).all()
    states = ts[0, cfg.num_video_tokens:cfg.num_video_tokens + cfg.num_states]
    assert states[0] == 0 and torch.allclose(states[1:], torch.tensor(0.2))
    assert torch.allclose(ts[0, -cfg.action_horizon:], torch.tensor(0.2))


def test_blocks_are_called_as_modules_so_hooks_see_every_block(tiny_config):
    cfg = tiny_config.model
    model = XWAMTransformer(cfg)
    blocks = list(model.backbone.blocks) + list(model.depth_branch.blocks)
    assert all(isinstance(b, XWAMBlock) and "forward" not in vars(b) for b in blocks)
    calls = []
    for b in blocks:
        b.register_forward_hook(lambda module, args, out: calls.append(module))
    model(*inputs(cfg), depth=True)
    assert calls == list(model.backbone.blocks[: cfg.num_layers - cfg.depth_layers]) + [
        b for pair in zip(model.backbone.blocks[cfg.num_layers - cfg.depth_layers:], model.depth_branch.blocks)
        for b in pair]


def test_wan_blocks_become_xwam_blocks_sharing_their_weights():
    cfg = spec_tiny_model_config()
    stock = WanTransformer3DModel(**wan_backbone_kwargs(cfg))
    weight = stock.blocks[0].attn1.to_q.weight
    model = XWAMTransformer(cfg, backbone=stock)
    assert model.backbone.blocks[0].attn1.to_q.weight is weight
    assert set(model.backbone.state_dict()) == set(WanTransformer3DModel(**wan_backbone_kwargs(cfg)).state_dict())


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config):
    cfg = tiny_config.model
    torch.manual_seed(0)
    model = XWAMTransformer(cfg)
    args = inputs(cfg)
    model(*args, depth=True).video.pow(2).mean().backward()
    ref = [p.grad.clone() for p in model.backbone.blocks[0].parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(*args, depth=True).video.pow(2).mean().backward()
    for a, b in zip(ref, model.backbone.blocks[0].parameters()):
        torch.testing.assert_close(a, b.grad)
