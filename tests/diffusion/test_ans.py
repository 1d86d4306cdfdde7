import math

import pytest
import torch

from xwam.diffusion.ans import ans_timesteps, sample_beta
from xwam.diffusion.flow import add_noise, predict_x0, shift_sigmas, sigma_grid, velocity_target

N = 200_000


def unshift(t: torch.Tensor, s: float = 5.0) -> torch.Tensor:
    return t / (s - (s - 1) * t)


def test_shift_is_monotone_and_inverted_by_unshift():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    s = shift_sigmas(t, 5.0)
    assert (s.diff() > 0).all() and s[0] == 0 and s[-1] == 1
    torch.testing.assert_close(unshift(s), t)


def test_ans_video_never_less_noisy_than_actions_and_half_the_actions_clean():
    g = torch.Generator().manual_seed(0)
    lv = ans_timesteps(N, "ans", generator=g)
    assert (lv.t_video >= lv.t_action).all()
    assert abs(lv.actions_clean.float().mean().item() - 0.5) < 0.01
    assert (lv.t_action[lv.actions_clean] == 0).all() and (lv.t_action[~lv.actions_clean] > 0).all()
    assert lv.t_video.min() >= 0 and lv.t_video.max() <= 1


def test_ans_marginals_match_their_formulas():
    g = torch.Generator().manual_seed(1)
    lv = ans_timesteps(N, "ans", generator=g)
    joint = ~lv.actions_clean
    ta, tv = unshift(lv.t_action[joint].double()), unshift(lv.t_video[joint].double())
    # t_action ~ U(0, 1) before the shift
    assert abs(ta.mean().item() - 0.5) < 0.01 and abs(ta.var().item() - 1 / 12) < 0.005
    # b = (t_v - t_a) / (1 - t_a) ~ Beta(1.5, 1): mean a/(a+b) = 0.6, CDF b^1.5
    b = (tv - ta) / (1 - ta)
    assert abs(b.mean().item() - 0.6) < 0.01
    for q in (0.25, 0.5, 0.75):
        assert abs((b <= q).double().mean().item() - q**1.5) < 0.01
    # E[t_v] = E[t_a] + E[b] E[1 - t_a] = 0.5 + 0.6 * 0.5 = 0.8 (independence of t_a and b)
    assert abs(tv.mean().item() - 0.8) < 0.01
    # clean-action samples: t_v ~ U(0, 1) before the shift
    free = unshift(lv.t_video[lv.actions_clean].double())
    assert abs(free.mean().item() - 0.5) < 0.01 and abs((free <= 0.3).double().mean().item() - 0.3) < 0.01


def test_synchronous_and_independent_modes():
    g = torch.Generator().manual_seed(2)
    sync = ans_timesteps(N, "synchronous", generator=g)
    assert torch.equal(sync.t_video, sync.t_action) and not sync.actions_clean.any()
    ind = ans_timesteps(N, "independent", generator=g)
    # independent draws put about half their mass where video is cleaner than actions
    assert abs((ind.t_video < ind.t_action).float().mean().item() - 0.5) < 0.01
    assert abs(torch.corrcoef(torch.stack([ind.t_video, ind.t_action]))[0, 1].item()) < 0.01
    with pytest.raises(ValueError, match="unknown timestep mode"):
        ans_timesteps(4, "bogus")


def test_seeded_draws_are_reproducible():
    a = ans_timesteps(64, generator=torch.Generator().manual_seed(5))
    b = ans_timesteps(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.t_video, b.t_video) and torch.equal(a.actions_clean, b.actions_clean)


def test_beta_sampler_general_case_mean():
    x = sample_beta(N, 2.0, 3.0, None)
    assert abs(x.mean().item() - 0.4) < 0.01


def test_flow_matching_identities():
    g = torch.Generator().manual_seed(0)
    x0, e = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = add_noise(x0, e, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], e[2])
    torch.testing.assert_close(predict_x0(xt, velocity_target(x0, e), t), x0)


def test_sigma_grid_is_the_release_grid():
    grid = sigma_grid(50, 5.0)
    assert grid.shape == (51,) and grid[-1] == 0 and (grid.diff() < 0).all()
    assert math.isclose(grid[0].item(), 5 * 0.999 / (1 + 4 * 0.999))
    # while actions are decoded (first 10 calls) the video stays very noisy
    assert grid[9].item() >= 0.95
