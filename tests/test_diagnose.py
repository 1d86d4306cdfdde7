import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xwam.cli import main
from xwam.config import get_preset
from xwam.model.checkpoint import save_checkpoint
from xwam.model.transformer import XWAMTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from xwam_dataset_testutils import make_episode  # noqa: E402

CAMERAS = ["agentview", "eye_in_hand"]  # the tiny preset has 2 views
LENGTHS = (8, 12, 16)  # the tiny preset's chunk is 4 actions


@pytest.fixture(scope="module")
def episodes():
    return [make_episode(n, seed=i, cameras=CAMERAS, height=16, width=16, depth=False, camera_matrices=False,
                         task=f"task {i}") for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def dataset(episodes, tmp_path_factory):
    from xwam.data import write_episodes
    from xwam.data.stats import write_dataset_stats

    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_episodes(root, episodes)
    write_dataset_stats(root, images=False)
    return root


def _checkpoint(root: Path, data: Path, blind: str | None = None, size: int = 16) -> Path:
    """A tiny random checkpoint; ``blind="images"`` or ``"state"`` zeroes the input layer that reads it,
    so the model's output cannot depend on that input."""
    from xwam.data.stats import load_dataset_norm_stats

    preset = get_preset("tiny")
    preset = dataclasses.replace(preset, model=dataclasses.replace(
        preset.model, camera_names=CAMERAS, image_height=size, image_width=size))
    torch.manual_seed(0)
    model = XWAMTransformer(preset.model)
    with torch.no_grad():
        if blind == "images":
            model.backbone.patch_embedding.weight.zero_()
        elif blind == "state":
            model.state_encoder[0].weight.zero_()
    path = root / f"tiny-{blind or 'plain'}-{size}"
    save_checkpoint(path, model, preset, norm_stats=load_dataset_norm_stats(data).to_dict())
    return path


@pytest.fixture(scope="module")
def checkpoints(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {name: _checkpoint(root, dataset, name) for name in (None, "images", "state")}


def _check(ckpt, data, **kwargs):
    from xwam.diagnose import vision_check

    return vision_check(ckpt, data, progress=False, **{"clips_per_episode": 2, **kwargs})


def test_conditions_share_clips_and_noise(checkpoints, dataset):
    from xwam.data.stats import NormStats
    from xwam.diagnose import chunk_errors
    from xwam.policy import XWAMPolicy

    a = _check(checkpoints[None], dataset, seed=3)
    b = _check(checkpoints[None], dataset, seed=3)
    assert a["conditions"] == b["conditions"] and a["clips"] == b["clips"]
    assert a["num_clips"] == 6 and a["episodes"] == [0, 1, 2] and a["pairs"] == [[0, 1], [1, 2], [2, 0]]
    # the noise matters (so equal numbers above are not an accident of a noise-free sampler)
    other_seed = _check(checkpoints[None], dataset, seed=4)
    assert other_seed["conditions"]["true"]["mae"] != a["conditions"]["true"]["mae"]
    # a random model reads its images and state: swapping them changes the chunk
    for cond in ("other_images", "other_state"):
        assert all(c["mae"][cond] != c["mae"]["true"] for c in a["clips"]), cond
    # clip i's `true` row is policy.infer on its own observation with the generator seeded seed + i
    policy = XWAMPolicy.from_checkpoint(checkpoints[None])
    from xwam.data import open_dataset

    ds = open_dataset(dataset)
    stats = NormStats.from_dict(json.loads((checkpoints[None] / "norm_stats.json").read_text()))
    clip = a["clips"][3]
    ep = ds.episode(clip["episode"])
    t = clip["start"]
    obs = {**{f"observation/images/{c}": ep.rgb[c][t] for c in CAMERAS}, "observation/state": ep.state[t],
           "prompt": ep.task}
    policy.generator.manual_seed(3 + 3)
    mae, mse, per_dim = chunk_errors(policy.infer(obs)["actions"], ep.action[t:t + 4], stats)
    assert mae == pytest.approx(clip["mae"]["true"], rel=1e-6) and mse == pytest.approx(clip["mse"]["true"], rel=1e-6)
    assert per_dim == pytest.approx(clip["mae_per_dimension"]["true"], rel=1e-6)


@pytest.mark.parametrize("blind, same, differs", [("images", "other_images", "other_state"),
                                                  ("state", "other_state", "other_images")])
def test_a_model_blind_to_an_input_scores_its_swap_like_true(checkpoints, dataset, blind, same, differs):
    r = _check(checkpoints[blind], dataset)
    for clip in r["clips"]:
        assert clip["mae"][same] == clip["mae"]["true"] and clip["mse"][same] == clip["mse"]["true"]
        assert clip["mae"][differs] != clip["mae"]["true"]
    ratio = r["ratios"][f"{same}/true"]
    assert ratio == 1.0
    if blind == "images":
        assert r["uses_vision"] is False


def test_blind_chunk_is_the_partner_episodes_recorded_chunk(checkpoints, dataset, episodes):
    from xwam.data.stats import load_dataset_norm_stats

    r = _check(checkpoints[None], dataset, clips_per_episode=3)
    # starts evenly spaced over 0..T-4; the partner (next episode, cyclically) at the same time,
    # clamped to its last full chunk (episode 0 has 8 steps: starts 0..4)
    plan = [(c["episode"], c["start"], c["other_episode"], c["other_start"]) for c in r["clips"]]
    assert plan == [(0, 0, 1, 0), (0, 2, 1, 2), (0, 4, 1, 4),
                    (1, 0, 2, 0), (1, 4, 2, 4), (1, 8, 2, 8),
                    (2, 0, 0, 0), (2, 6, 0, 4), (2, 12, 0, 4)]
    stats = load_dataset_norm_stats(dataset)
    scale = np.maximum(np.abs(stats.action.q01), np.abs(stats.action.q99))
    maes, mses, per_dims = [], [], []
    for e, t, o, u in plan:
        diff = (episodes[o].action[u:u + 4] - episodes[e].action[t:t + 4]) / scale
        maes.append(np.abs(diff).mean())
        mses.append((diff**2).mean())
        per_dims.append(np.abs(diff).mean(axis=0))
    blind_per_dim = [r["per_dimension"][name]["blind_chunk"] for name in stats.action_names]
    assert blind_per_dim == pytest.approx(np.mean(per_dims, axis=0).tolist(), rel=1e-5)
    # every dimension weighs alike in the overall MAE, so it is the mean of the per-dimension ones
    for cond in ("true", "other_images", "other_state", "blind_chunk"):
        per_dim = [r["per_dimension"][name][cond] for name in stats.action_names]
        assert np.mean(per_dim) == pytest.approx(r["conditions"][cond]["mae"], rel=1e-6)
    assert r["conditions"]["blind_chunk"]["mae"] == pytest.approx(np.mean(maes), rel=1e-5)
    assert r["conditions"]["blind_chunk"]["mse"] == pytest.approx(np.mean(mses), rel=1e-5)
    assert r["ratios"]["blind_chunk/true"] == pytest.approx(np.mean(maes) / r["conditions"]["true"]["mae"], rel=1e-5)


def test_cli_writes_json_and_table(checkpoints, dataset, tmp_path, capsys):
    out = tmp_path / "diag"
    code = main(["diagnose", "--checkpoint", str(checkpoints[None]), "--data", str(dataset), "--episodes", "1:",
                 "--clips-per-episode", "2", "--seed", "5", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "diagnose.json").read_text())
    assert result["episodes"] == [1, 2] and result["num_clips"] == 4 and result["seed"] == 5
    assert set(result["conditions"]) == {"true", "other_images", "other_state", "blind_chunk"}
    assert set(result["ratios"]) == {"other_images/true", "other_state/true", "blind_chunk/true"}
    assert result["ratios"]["other_images/true"] == pytest.approx(
        result["conditions"]["other_images"]["mae"] / result["conditions"]["true"]["mae"])
    table = (out / "diagnose.md").read_text()
    for cond in ("true", "other_images", "other_state", "blind_chunk"):
        assert f"| {cond} |" in table
    assert list(result["per_dimension"]) == json.loads((checkpoints[None] / "norm_stats.json").read_text())[
        "action_names"]
    for name, row in result["per_dimension"].items():
        assert f"| {name} |" in table
        assert result["per_dimension_other_images/true"][name] == pytest.approx(row["other_images"] / row["true"])
    # the clips split by start: episode starts and later ones, together every clip, weighted back to the total
    by_start = result["by_start"]
    assert by_start["first"]["clips"] == 2 and by_start["later"]["clips"] == 2  # 2 episodes x (start 0, a later one)
    for cond in ("true", "other_images", "other_state", "blind_chunk"):
        want = np.mean([c["mae"][cond] for c in result["clips"] if c["start"] == 0])
        assert by_start["first"]["mae"][cond] == pytest.approx(want)
        assert (by_start["first"]["mae"][cond] + by_start["later"]["mae"][cond]) / 2 == pytest.approx(
            result["conditions"][cond]["mae"])
    assert "| first chunk of the episode (start 0, from rest) | 2 |" in table
    assert "| later chunks (arm under way) | 2 |" in table
    assert not list(out.glob("*.tmp"))
    assert "other_images / true" in capsys.readouterr().out


def test_cli_errors_clearly(checkpoints, dataset, tmp_path, capsys):
    args = ["diagnose", "--checkpoint", str(checkpoints[None]), "--data", str(dataset), "--out", str(tmp_path)]
    assert main([*args, "--episodes", "1"]) == 2
    assert "at least 2 episodes" in capsys.readouterr().err
    assert main([*args, "--episodes", "0,7"]) == 2
    assert "out of range" in capsys.readouterr().err
    big = _checkpoint(tmp_path, dataset, size=32)
    assert main(["diagnose", "--checkpoint", str(big), "--data", str(dataset), "--out", str(tmp_path)]) == 2
    assert "resolution" in capsys.readouterr().err
    assert not (tmp_path / "diagnose.json").exists()


def test_help_explains_the_rows(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("other_images", "other_state", "blind_chunk", ">= 2"):
        assert word in out


@pytest.mark.parametrize("ratio, words", [(2.3, "met: the chunk depends"), (1.05, "NOT met: the chunk hardly"),
                                          (1.88, "NOT met: the cameras change the chunk")])
def test_the_table_states_the_verdict_for_its_ratio(ratio, words):
    from xwam.diagnose import CONDITIONS, markdown

    errors = {"true": 0.1, "other_images": 0.1 * ratio, "other_state": 0.12, "blind_chunk": 0.13}
    result = {"checkpoint": "ckpt", "data": "data", "num_clips": 4, "episodes": [0, 1], "action_horizon": 8,
              "seed": 0, "vision_target": 2.0,
              "conditions": {c: {"mae": errors[c], "mse": errors[c] ** 2} for c in CONDITIONS},
              "ratios": {f"{c}/true": errors[c] / errors["true"] for c in CONDITIONS if c != "true"}}
    line = next(x for x in markdown(result).splitlines() if x.startswith("other_images / true ="))
    assert f"= {ratio:.2f} (target >= 2, {words}" in line


def test_sampler_changes_reach_the_policy_and_are_recorded(checkpoints, dataset, tmp_path, capsys):
    args = ["diagnose", "--checkpoint", str(checkpoints[None]), "--data", str(dataset), "--episodes", "1:",
            "--clips-per-episode", "2"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    assert main([*args, "--sampler", "action_steps=1", "--sampler", "action_temperature=0",
                 "--out", str(tmp_path / "changed")]) == 0
    default, changed = (json.loads((tmp_path / name / "diagnose.json").read_text()) for name in ("default", "changed"))
    assert changed["sampler"]["action_steps"] == changed["action_steps"] == 1
    assert changed["sampler"]["action_temperature"] == 0
    assert changed["sampler_changes"] == ["action_steps=1", "action_temperature=0"] and default["sampler_changes"] == []
    assert default["sampler"]["action_steps"] != 1
    # one action step from zero noise gives other chunks than the checkpoint's sampler, on the same clips
    assert changed["conditions"]["true"]["mae"] != pytest.approx(default["conditions"]["true"]["mae"], rel=1e-6)
    assert "sampler changed: action_steps=1, action_temperature=0" in (tmp_path / "changed" / "diagnose.md").read_text()
    capsys.readouterr()
    assert main([*args, "--sampler", "action_stepz=3", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown field 'action_stepz'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
