import pytest
import torch

from xwam.config import DiffusionConfig, get_preset
from xwam.diffusion.ans import NoiseLevels
from xwam.diffusion.flow import velocity_target
from xwam.diffusion.objective import TrainingInputs, draw_noise, loss_sums, training_losses
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


class ZeroModel(torch.nn.Module):
    """Predicts zeros everywhere: the losses are then the targets' squares, known in closed form."""

    def forward(self, video, text, t_video, t_action, actions, states, depth=False, action_prefix_len=None):
        from xwam.model.transformer import XWAMOutput

        return XWAMOutput(video=torch.zeros_like(video), actions=torch.zeros_like(actions),
                          states=torch.zeros_like(states), depth=torch.zeros_like(video) if depth else None)


def test_masks_counts_and_weights():
    cfg = get_preset("tiny").model
    video, text, actions, states = batch(cfg, n=3)
    depth = torch.full_like(video, 3.0)
    inputs = TrainingInputs(video=video, text=text, actions=actions, states=states, depth=depth,
                            action_mask=torch.tensor([1.0] * (cfg.action_dim - 1) + [0.0]))
    diffusion = DiffusionConfig(action_prefix_prob=0.0, text_dropout=0.0)
    noise = draw_noise([1, 2, 3], video.shape[1:], actions.shape[1:], states.shape[1:], diffusion,
                       levels=NoiseLevels(torch.full((3,), 0.5), torch.full((3,), 0.3),
                                          torch.tensor([True, False, False])))
    noise.prefix_len = torch.tensor([0, 2, 0])
    sums, counts = loss_sums(ZeroModel(), inputs, noise)
    K, A, S, Ds = cfg.action_horizon, cfg.action_dim, cfg.num_states, cfg.state_dim
    # sample 0: clean actions, no action/state loss; sample 1: 2 committed actions; padding dimension masked;
    # state token 0 never counts; video frame 0 never counts; depth counts every frame
    assert counts.tolist() == [video[:, :, :, 1:].numel(), ((K - 2) + K) * (A - 1), 2 * (S - 1) * Ds, depth.numel()]
    target = velocity_target(actions, noise.e_actions)
    assert sums[1].item() == pytest.approx((target[1, 2:, :-1] ** 2).sum().item() + (target[2, :, :-1] ** 2).sum().item(),
                                           rel=1e-5)
    assert sums[3].item() == pytest.approx(9.0 * depth.numel())
    weighted = DiffusionConfig(action_prefix_prob=0.0, text_dropout=0.0, video_loss_weight=0.0, action_loss_weight=2.0)
    losses = training_losses(ZeroModel(), video, text, actions, states, cfg=weighted, depth=depth,
                             sample_seeds=[1, 2, 3], levels=NoiseLevels(torch.full((3,), 0.5), torch.full((3,), 0.3),
                                                                         torch.tensor([True, False, False])))
    assert losses["total"].item() == pytest.approx(2 * losses["action"].item() + losses["state"].item()
                                                   + losses["depth"].item(), rel=1e-6)


def test_an_all_clean_batch_has_no_action_loss_but_keeps_a_gradient_path():
    cfg = get_preset("tiny").model
    model = XWAMTransformer(cfg)
    video, text, actions, states = batch(cfg, n=2)
    losses = training_losses(model, video, text, actions, states, cfg=DiffusionConfig(text_dropout=0.0),
                             levels=NoiseLevels(torch.full((2,), 0.5), torch.zeros(2), torch.tensor([True, True])),
                             generator=torch.Generator().manual_seed(0))
    assert losses["action"].item() == 0.0
    losses["total"].backward()
    assert model.action_decoder[2].weight.grad is not None
