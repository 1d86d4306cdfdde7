import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from xwam.model.rope import rope_axis_dims, rope_cos_sin, temporal_positions, video_positions


def test_axis_split_matches_wan_for_128():
    assert rope_axis_dims(128) == (44, 42, 42)


def test_integer_positions_equal_diffusers_rope_bitwise():
    head_dim, frames, h, w = 24, 3, 4, 5
    wan = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=32)
    ref_cos, ref_sin = wan(torch.zeros(1, 1, frames, h * 2, w * 2))
    cos, sin = rope_cos_sin(video_positions(frames, 1, h, w), head_dim)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_views_share_positions_and_fractional_temporal_positions():
    pos = video_positions(2, 3, 2, 2)
    per_view = pos.view(2, 3, 4, 3)
    assert torch.equal(per_view[:, 0], per_view[:, 1]) and torch.equal(per_view[:, 0], per_view[:, 2])
    actions = temporal_positions(32, 16)
    assert actions[16, 0] == 1.0 and actions[1, 0] == 1 / 16 and actions[:, 1:].abs().sum() == 0
    # an action at a whole latent frame gets the same rotation as the video tokens of that frame (row/col 0)
    cos_a, _ = rope_cos_sin(actions, 24)
    cos_v, _ = rope_cos_sin(video_positions(3, 1, 1, 1), 24)
    assert torch.allclose(cos_a[0, 16], cos_v[0, 1]) and torch.allclose(cos_a[0, 0], cos_v[0, 0])
