"""`xwam train` teaches real-time chunking: with ``diffusion.action_prefix_prob > 0`` the model learns
to continue a committed action prefix.

The data make the prefix the only clue: every episode shows the same images and states, and half of
them move with constant actions +0.5, the other half with -0.5. Without a prefix the sign is a coin
flip; given the first actions of a chunk, a model trained on prefixes continues with their sign.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from train_testutils import tiny_train_config
from xwam_dataset_testutils import make_episode

from xwam.policy import XWAMPolicy
from xwam.train import train

LENGTH = 24
TINY_CAMERAS = ["agentview", "eye_in_hand"]  # the tiny preset has 2 views


@pytest.fixture(scope="module")
def two_sign_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xwam.data import write_episodes
    from xwam.data.stats import write_dataset_stats

    episodes = []
    for i in range(6):
        episode = make_episode(LENGTH, seed=0, cameras=TINY_CAMERAS, height=16, width=16)
        episode.action = np.full_like(episode.action, 0.5 if i % 2 == 0 else -0.5)
        episodes.append(episode)
    root = tmp_path_factory.mktemp("data") / "two_sign"
    write_episodes(root, episodes)
    write_dataset_stats(root, images=False)
    return root


def free_part_error(checkpoint: Path, prefix_len: int = 2, times: tuple[int, ...] = (2, 6, 10)) -> float:
    """Mean |error| of the actions after a committed prefix of ``prefix_len`` true actions, over both
    signs and a few time steps, through the policy a robot would call (robot units)."""
    episode = make_episode(LENGTH, seed=0, cameras=TINY_CAMERAS, height=16, width=16)
    policy = XWAMPolicy.from_checkpoint(checkpoint)
    errors = []
    for t in times:
        obs = {**{f"observation/images/{c}": episode.rgb[c][t] for c in TINY_CAMERAS},
               "observation/state": episode.state[t], "prompt": episode.task}
        for sign in (0.5, -0.5):
            true = np.full((policy.config.model.action_horizon, policy.config.model.action_dim), sign, np.float32)
            actions = policy.infer(obs, action_prefix=true[:prefix_len])["actions"]
            np.testing.assert_allclose(actions[:prefix_len], true[:prefix_len], atol=1e-5)  # kept as committed
            errors.append(np.abs(actions[prefix_len:] - true[prefix_len:]).mean())
    return float(np.mean(errors))


@pytest.mark.slow
def test_training_with_prefixes_learns_to_continue_them(two_sign_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(two_sign_dataset, tmp_path / "run", steps=240, batch_size=8, save_every=20,
                            keep_last=20, lr=2e-3, overrides=["diffusion.action_prefix_prob=0.5"])
    final = train(cfg)
    early = free_part_error(final.parent / "step-00000020")
    late = free_part_error(final)
    print(f"free-part error given the prefix: step 20 {early:.3f}, step 240 {late:.3f} (a coin flip: 0.5)")
    assert late < 0.15 < early
