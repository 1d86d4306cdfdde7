import pytest
import torch

from xwam.config import SamplerConfig, get_preset
from xwam.diffusion.sampler import AsyncSampler, Conditioning
from xwam.model.transformer import XWAMTransformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return XWAMTransformer(get_preset("tiny").model).eval()


def conditioning(model, batch=2, seed=0):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    return Conditioning(
        video0=torch.randn(batch, cfg.num_views, cfg.latent_channels, 1, cfg.latent_height, cfg.latent_width, generator=g),
        state0=torch.randn(batch, cfg.state_dim, generator=g),
        text=torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g),
        text_uncond=torch.zeros(1, cfg.text_len, cfg.text_dim),
    )


class CountingModel(torch.nn.Module):
    """Wraps the model to record every call's times and depth flag."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.cfg, self.depth_branch, self.calls = model, model.cfg, model.depth_branch, []

    def forward(self, video, text, t_video, t_action, actions, states, depth=False):
        self.calls.append((t_video[0].item(), t_action[0].item(), depth))
        return self.inner(video, text, t_video, t_action, actions, states, depth=depth)


@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_policy_mode_stops_after_the_action_steps_without_depth(model, solver):
    counting = CountingModel(model)
    cfg = SamplerConfig(video_steps=8, action_steps=3, solver=solver)
    result = AsyncSampler(counting, cfg).sample(conditioning(model), mode="policy", generator=torch.Generator().manual_seed(0))
    assert result.calls == 3 and len(counting.calls) == 3
    assert all(not depth for *_, depth in counting.calls)
    assert result.video is None and result.depth is None
    assert result.actions.shape == (2, model.cfg.action_horizon, model.cfg.action_dim)
    assert torch.isfinite(result.actions).all()
    # video follows its own (50-step-like) grid: still very noisy while the actions finish
    t_video = [c[0] for c in counting.calls]
    t_action = [c[1] for c in counting.calls]
    assert all(tv >= ta for tv, ta in zip(t_video, t_action)) and t_video[-1] > 0.9


def test_actions_are_handed_out_before_the_video_finishes(model):
    counting = CountingModel(model)
    sampler = AsyncSampler(counting, SamplerConfig(video_steps=6, action_steps=2, solver="euler"))
    events = []
    for event in sampler.iterate(conditioning(model), mode="4d", generator=torch.Generator().manual_seed(0)):
        events.append((event.kind, event.call, len(counting.calls)))
        if event.kind == "actions":
            assert event.result.video is None  # the video is still being denoised
            actions_at_event = event.result.actions.clone()
    assert events == [("actions", 2, 2), ("done", 6, 6)]
    # after the action steps the actions are clean and frozen (t_action = 0)
    assert [c[1] for c in counting.calls[2:]] == [0.0] * 4
    seen = []
    final = sampler.sample(conditioning(model), mode="4d", generator=torch.Generator().manual_seed(0),
                           on_actions=lambda r: seen.append(len(counting.calls)))
    assert seen == [6 + 2]  # the callback fired right after the 2nd call of that run
    torch.testing.assert_close(final.actions, actions_at_event)


def test_conditioning_is_reimposed(model):
    cond = conditioning(model)
    result = AsyncSampler(model, SamplerConfig(video_steps=5, action_steps=2, solver="unipc")).sample(
        cond, mode="4d", generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.video[:, :, :, :1], cond.video0)
    assert torch.equal(result.states[:, 0], cond.state0)


@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_depth_only_at_the_last_call_equals_depth_at_every_call(model, solver):
    counting = CountingModel(model)
    sampler = AsyncSampler(counting, SamplerConfig(video_steps=5, action_steps=2, solver=solver))
    last = sampler.sample(conditioning(model), mode="4d", generator=torch.Generator().manual_seed(3))
    assert [c[2] for c in counting.calls] == [False] * 4 + [True]
    every = sampler.sample(conditioning(model), mode="4d", depth_every_call=True,
                           generator=torch.Generator().manual_seed(3))
    assert torch.equal(last.depth, every.depth)
    assert torch.equal(last.video, every.video) and torch.equal(last.actions, every.actions)


def test_synchronous_baseline_needs_the_full_video_schedule_for_actions(model):
    counting = CountingModel(model)
    sampler = AsyncSampler(counting, SamplerConfig(video_steps=6, action_steps=2, synchronous=True, solver="euler"))
    result = sampler.sample(conditioning(model), mode="policy", generator=torch.Generator().manual_seed(0))
    assert result.calls == 6
    assert all(tv == ta for tv, ta, _ in counting.calls)


def test_classifier_free_guidance_runs_and_needs_the_empty_text(model):
    cond = conditioning(model)
    sampler = AsyncSampler(model, SamplerConfig(video_steps=4, action_steps=2, guidance_scale=3.0, solver="euler"))
    guided = sampler.sample(cond, generator=torch.Generator().manual_seed(0))
    plain = AsyncSampler(model, SamplerConfig(video_steps=4, action_steps=2, solver="euler")).sample(
        cond, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(guided.actions).all() and not torch.allclose(guided.actions, plain.actions)
    cond.text_uncond = None
    with pytest.raises(ValueError, match="text_uncond"):
        sampler.sample(cond)


def test_sampler_config_validates():
    with pytest.raises(ValueError, match="cannot exceed"):
        SamplerConfig(video_steps=5, action_steps=10)


def test_each_sample_keeps_its_own_action_prefix_length(model):
    """Per-sample prefix lengths (0 = none) reach the model, and each chunk keeps exactly its own prefix."""
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.cfg, self.depth_branch = model, model.cfg, model.depth_branch

        def forward(self, *args, action_prefix_len=None, **kwargs):
            seen.append(None if action_prefix_len is None else action_prefix_len.tolist())
            return self.inner(*args, action_prefix_len=action_prefix_len, **kwargs)

    sampler = AsyncSampler(Spy(), SamplerConfig(video_steps=4, action_steps=2, solver="unipc"))
    prefix = torch.randn(3, 2, model.cfg.action_dim, generator=torch.Generator().manual_seed(1))

    def run(lengths):
        cond = conditioning(model, batch=3)
        cond.action_prefix = None if lengths == "none" else prefix
        cond.action_prefix_len = None if lengths in ("none", "all") else torch.tensor(lengths)
        return sampler.sample(cond, mode="policy", generator=torch.Generator().manual_seed(0)).actions

    mixed = run([2, 0, 1])
    assert seen == [[2, 0, 1]] * 2
    assert torch.equal(mixed[0, :2], prefix[0]) and torch.equal(mixed[2, :1], prefix[2, :1])
    assert not torch.allclose(mixed[2, 1], prefix[2, 1]) and not torch.allclose(mixed[1, 0], prefix[1, 0])
    # a sample's chunk depends on its own prefix only: length 0 is no prefix, and length 2 is the full one
    torch.testing.assert_close(mixed[1], run("none")[1])
    torch.testing.assert_close(mixed[0], run("all")[0])
    with pytest.raises(ValueError, match="action_prefix_len"):
        run([3, 0, 0])


def test_integer_timesteps_give_the_release_schedule(model):
    """The X-WAM release feeds int(1000 sigma): 999, 978, ... for its 10 action steps and 999, 995, ...
    for its 50 video steps; the solver itself keeps the float sigmas."""
    calls = {}
    for integer in (False, True):
        counting = CountingModel(model)
        cfg = SamplerConfig(video_steps=50, action_steps=10, integer_timesteps=integer)
        AsyncSampler(counting, cfg).sample(conditioning(model), mode="policy", generator=torch.Generator().manual_seed(0))
        calls[integer] = counting.calls
    video = [round(t * 1000, 3) for t, _, _ in calls[True]]
    action = [round(a * 1000, 3) for _, a, _ in calls[True]]
    assert action == [999, 978, 952, 920, 882, 833, 768, 681, 555, 356]
    assert video[:10] == [999, 995, 991, 987, 982, 978, 973, 968, 963, 957]
    assert any(abs(t * 1000 - round(t * 1000)) > 1e-3 for t, _, _ in calls[False])  # floats by default


def test_the_expected_future_is_the_first_calls_clean_estimate_and_leaves_the_sample_alone(model):
    cfg = model.cfg
    sampler = AsyncSampler(model, SamplerConfig(video_steps=4, action_steps=2))
    cond = conditioning(model)
    plain = sampler.sample(cond, mode="4d", generator=torch.Generator().manual_seed(5))
    result = sampler.sample(cond, mode="4d", generator=torch.Generator().manual_seed(5), expected=True)
    # the sample is untouched: the depth branch never feeds the main branch
    torch.testing.assert_close(result.video, plain.video, rtol=0, atol=0)
    torch.testing.assert_close(result.depth, plain.depth, rtol=0, atol=0)
    assert plain.expected_video is None and sampler.sample(cond, mode="policy", expected=True).expected_video is None
    # the first call by hand: the sampler's initial noise, x - sigma v at sigma_max
    g = torch.Generator().manual_seed(5)
    b = cond.video0.shape[0]
    x = torch.randn(b, cfg.num_views, cfg.latent_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width,
                    generator=g)
    x[:, :, :, :1] = cond.video0
    actions = torch.randn(b, cfg.action_horizon, cfg.action_dim, generator=g)
    states = torch.randn(b, cfg.num_states, cfg.state_dim, generator=g)
    states[:, 0] = cond.state0
    sigma = sampler._solver(4).sigmas[0]
    with torch.no_grad():
        out = model(x, cond.text, sigma.expand(b), sigma.expand(b), actions, states, depth=True)
    want = x - sigma * out.video
    want[:, :, :, :1] = cond.video0
    torch.testing.assert_close(result.expected_video, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.expected_depth, out.depth, rtol=1e-5, atol=1e-5)
    assert torch.equal(result.expected_states[:, 0], cond.state0)


def test_temperature_scales_each_stream_starting_noise(model):
    cond = conditioning(model)

    def sample(seed, **temps):
        cfg = SamplerConfig(video_steps=4, action_steps=2, solver="euler", **temps)
        return AsyncSampler(model, cfg).sample(cond, mode="4d", depth=False, generator=torch.Generator().manual_seed(seed))

    base = sample(0)
    same = sample(0, video_temperature=1.0, action_temperature=1.0)
    assert torch.equal(base.video, same.video) and torch.equal(base.actions, same.actions)
    # temperature 0: the deterministic flow from zero noise, whatever the seed
    a, b = sample(0, video_temperature=0.0, action_temperature=0.0), sample(1, video_temperature=0.0, action_temperature=0.0)
    assert torch.equal(a.video, b.video) and torch.equal(a.actions, b.actions) and torch.equal(a.states, b.states)
    # the streams are scaled independently: cold video, hot actions still depend on the seed
    c, d = sample(0, video_temperature=0.0), sample(1, video_temperature=0.0)
    assert not torch.equal(c.actions, d.actions)
    # a lower temperature draws samples closer together (less spread between seeds)
    spread = {t: (sample(0, video_temperature=t).video - sample(1, video_temperature=t).video).std().item()
              for t in (1.0, 0.5)}
    assert spread[0.5] < spread[1.0]
    with pytest.raises(ValueError, match="video_temperature"):
        SamplerConfig(video_temperature=-0.1)


def test_the_expected_future_does_not_depend_on_the_temperature(model):
    cond = conditioning(model)

    def sample(**temps):
        cfg = SamplerConfig(video_steps=4, action_steps=2, solver="euler", **temps)
        return AsyncSampler(model, cfg).sample(cond, mode="4d", expected=True,
                                               generator=torch.Generator().manual_seed(0))

    hot, cold = sample(), sample(video_temperature=0.5, action_temperature=0.5)
    assert not torch.allclose(hot.video, cold.video)
    for name in ("expected_video", "expected_states", "expected_depth"):
        assert torch.allclose(getattr(hot, name), getattr(cold, name), atol=1e-5), name
