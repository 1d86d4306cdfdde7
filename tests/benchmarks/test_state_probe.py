"""benchmarks/state_probe.py: a state-only probe under each quaternion normalisation, beside its baseline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "data"))
from xwam_dataset_testutils import make_episode  # noqa: E402

from xwam.data import write_episodes  # noqa: E402
from xwam.geometry.transforms import matrix_to_quat_wxyz  # noqa: E402


def _probe_module():
    spec = importlib.util.spec_from_file_location("state_probe", ROOT / "benchmarks" / "state_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tilting_episode(seed: int):
    """A hand pointing down that wobbles about vertical (its w >= 0 quaternion flips sign) and an
    expert whose rx command undoes the tilt: the state alone determines the action."""
    rng = np.random.default_rng(seed)
    ep = make_episode(40, seed=seed, cameras=["wrist"], height=8, width=8, depth=False, camera_matrices=False)
    tilt = 0.04 * np.sin(np.arange(40) / 4 + rng.uniform(0, 6))
    c, s = np.cos(tilt), np.sin(tilt)
    rot_x = np.zeros((40, 3, 3))
    rot_x[:, 0, 0] = 1
    rot_x[:, 1, 1], rot_x[:, 1, 2], rot_x[:, 2, 1], rot_x[:, 2, 2] = c, -s, s, c
    down = np.array([[0.6, 0.8, 0], [0.8, -0.6, 0], [0, 0, -1]])
    state = np.zeros((40, 8), np.float32)
    state[:, :3] = rng.normal(0, 0.05, (40, 3))
    state[:, 3:7] = matrix_to_quat_wxyz(rot_x @ down)
    state[:, 7] = rng.uniform(0, 1, 40)
    action = np.zeros((40, 7), np.float32)
    action[:, 0] = -3 * state[:, 0]
    action[:, 3] = -3 * tilt / 0.5
    action[:, 6] = np.where(state[:, 7] > 0.5, 1.0, -1.0)
    return dataclasses.replace(ep, state=state, action=action)


def test_probe_scores_both_normalisations_beside_the_mean_action(tmp_path: Path, capsys) -> None:
    write_episodes(tmp_path / "demo" / "data", [_tilting_episode(i) for i in range(8)])
    write_episodes(tmp_path / "demo" / "heldout", [_tilting_episode(100 + i) for i in range(2)])
    probe = _probe_module()
    sys.argv = ["state_probe.py", str(tmp_path / "demo"), "--out", str(tmp_path / "probe.json"), "--steps", "400"]
    probe.main()
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["train_frames"] == 320 and result["heldout_frames"] == 80
    rows = result["modes"]
    assert set(rows) == {"raw", "aligned"}
    for row in rows.values():
        base = np.mean(list(row["baseline_mean_action_mae"].values()))
        assert row["heldout_mae_mean"] < base  # the state tells the probe something
        assert set(row["heldout_mae"]) == {"dx", "dy", "dz", "rx", "ry", "rz", "gripper"}
    # the tilt the action undoes spans 0.02 in the raw w; aligned and normalised it spans [-1, 1]
    assert rows["aligned"]["heldout_mae"]["rx"] < rows["raw"]["heldout_mae"]["rx"]
    assert "mean action (baseline)" in capsys.readouterr().out
