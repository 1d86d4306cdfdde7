import torch

from xwam.config import DiffusionConfig, get_preset
from xwam.diffusion.ans import NoiseLevels
from xwam.diffusion.objective import training_losses
from xwam.model.transformer import XWAMTransformer


class Spy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, {}

    def forward(self, video, text, t_video, t_action, actions, states, depth=False, action_prefix_len=None):
        self.seen = dict(video=video, actions=actions, states=states, prefix=action_prefix_len, text=text)
        return self.model(video, text, t_video, t_action, actions, states, depth=depth,
                          action_prefix_len=action_prefix_len)


def batch(cfg, n=4):
    g = torch.Generator().manual_seed(0)
    video = torch.randn(n, cfg.num_views, cfg.latent_channels, cfg.latent_frames, cfg.latent_height,
                        cfg.latent_width, generator=g)
    return (video, torch.randn(n, cfg.text_len, cfg.text_dim, generator=g),
            torch.randn(n, cfg.action_horizon, cfg.action_dim, generator=g),
            torch.randn(n, cfg.num_states, cfg.state_dim, generator=g))


def test_noising_keeps_the_observation_clean_and_applies_levels():
    cfg = get_preset("tiny").model
    spy = Spy(XWAMTransformer(cfg))
    video, text, actions, states = batch(cfg)
    levels = NoiseLevels(torch.tensor([1.0, 0.5, 0.2, 0.0]), torch.tensor([1.0, 0.5, 0.0, 0.0]),
                         torch.tensor([False, False, True, True]))
    losses = training_losses(spy, video, text, actions, states, cfg=DiffusionConfig(action_prefix_prob=0.0,
                                                                                  text_dropout=0.0),
                             levels=levels, generator=torch.Generator().manual_seed(1))
    seen = spy.seen
    assert torch.equal(seen["video"][:, :, :, 0], video[:, :, :, 0])
    assert torch.equal(seen["states"][:, 0], states[:, 0])
    assert torch.equal(seen["video"][3], video[3]) and torch.equal(seen["actions"][2:], actions[2:])
    assert not torch.allclose(seen["actions"][0], actions[0]) and seen["prefix"] is None
    assert set(losses) == {"video", "action", "state", "total"}


def test_action_prefixes_are_clean_inputs_and_excluded_from_the_loss():
    cfg = get_preset("tiny").model
    spy = Spy(XWAMTransformer(cfg))
    video, text, actions, states = batch(cfg)
    levels = NoiseLevels(torch.full((4,), 0.9), torch.tensor([0.8, 0.8, 0.8, 0.0]),
                         torch.tensor([False, False, False, True]))
    training_losses(spy, video, text, actions, states, cfg=DiffusionConfig(action_prefix_prob=1.0),
                    levels=levels, generator=torch.Generator().manual_seed(2))
    prefix = spy.seen["prefix"]
    assert prefix is not None and prefix[3] == 0  # clean-action samples need no prefix
    assert ((prefix[:3] >= 1) & (prefix[:3] <= cfg.action_horizon // 2)).all()
    for b in range(3):
        d = int(prefix[b])
        assert torch.equal(spy.seen["actions"][b, :d], actions[b, :d])
        assert not torch.allclose(spy.seen["actions"][b, d:], actions[b, d:])
    # committed actions get t = 0 in the model's per-token times
    model = spy.model
    ts = model.token_timesteps(cfg.token_grid, levels.t_video, levels.t_action, cfg.num_states,
                               cfg.action_horizon, action_prefix_len=prefix)
    acts = ts[:, -cfg.action_horizon:]
    for b in range(3):
        d = int(prefix[b])
        assert (acts[b, :d] == 0).all() and torch.allclose(acts[b, d:], torch.tensor(0.8))


def test_text_dropout_uses_the_empty_instruction():
    cfg = get_preset("tiny").model
    spy = Spy(XWAMTransformer(cfg))
    video, text, actions, states = batch(cfg, n=64)
    empty = torch.zeros(1, cfg.text_len, cfg.text_dim)
    training_losses(spy, video, text, actions, states, cfg=DiffusionConfig(text_dropout=0.5),
                    text_uncond=empty, generator=torch.Generator().manual_seed(3))
    dropped = (spy.seen["text"] == 0).flatten(1).all(1)
    assert 0.25 < dropped.float().mean().item() < 0.75
    assert torch.equal(spy.seen["text"][~dropped], text[~dropped])
