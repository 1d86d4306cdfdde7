"""Fixtures for the trainer tests: a synthetic dataset (instant) and a real simulator one (slow tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_testutils
from xwam_dataset_testutils import make_episode  # noqa: E402

TINY_CAMERAS = ["agentview", "eye_in_hand"]  # the tiny preset has 2 views


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic RGB-D episodes (16x16, 2 cameras, 8-d state, 7-d action) as a LeRobot v3 dataset."""
    from xwam.data import write_episodes
    from xwam.data.stats import write_dataset_stats

    root = tmp_path_factory.mktemp("data") / "synthetic"
    episodes = [make_episode(20 + 2 * i, seed=i, cameras=TINY_CAMERAS, height=16, width=16) for i in range(5)]
    write_episodes(root, episodes)
    write_dataset_stats(root, images=False)
    return root


@pytest.fixture(scope="session")
def lift_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 short real robosuite Lift episodes at 64x64 with the simulator's 3 RGB-D cameras (~15 s)."""
    pytest.importorskip("robosuite")
    from xwam.data import write_episodes
    from xwam.data.stats import write_dataset_stats
    from xwam.sim.rollout import collect_expert_episodes

    root = tmp_path_factory.mktemp("data") / "lift"
    write_episodes(root, collect_expert_episodes("Lift", range(3), height=64, width=64, max_steps=40))
    write_dataset_stats(root, images=False)
    return root
