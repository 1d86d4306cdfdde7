import dataclasses
import json

import numpy as np
import pytest
import torch

from xwam.cli import main
from xwam.config import get_preset
from xwam.model.checkpoint import save_checkpoint
from xwam.model.transformer import XWAMTransformer

CAMERAS = ["robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand"]


@pytest.fixture(scope="module")
def lift32(tmp_path_factory):
    """2 short real Lift episodes at 32x32 with the 3 RGB-D cameras, and a tiny checkpoint that fits them."""
    from xwam.data import write_episodes
    from xwam.data.stats import load_dataset_norm_stats, write_dataset_stats
    from xwam.sim.rollout import collect_expert_episodes

    root = tmp_path_factory.mktemp("data") / "lift32"
    write_episodes(root, collect_expert_episodes("Lift", range(2), height=32, width=32, max_steps=24))
    write_dataset_stats(root, images=False)
    preset = get_preset("tiny")
    preset = dataclasses.replace(preset, model=dataclasses.replace(
        preset.model, num_views=3, camera_names=CAMERAS, image_height=32, image_width=32))
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(ckpt, XWAMTransformer(preset.model), preset, norm_stats=load_dataset_norm_stats(root).to_dict())
    return root, ckpt


@pytest.mark.slow
def test_imagine_writes_every_output(lift32, tmp_path):
    data, ckpt = lift32
    out = tmp_path / "imagine"
    assert main(["imagine", "--checkpoint", str(ckpt), "--episode", f"{data}:1:2", "--out", str(out)]) == 0
    for name in ("imagination.mp4", "report.html", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    clouds = sorted((out / "clouds").glob("t*.ply"))
    assert len(clouds) == get_preset("tiny").model.num_frames
    from xwam.geometry.ply import read_ply

    points, colours = read_ply(clouds[0])[:2]
    assert len(points) > 100 and colours is not None and np.isfinite(points).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frame_indices"] == [2, 4, 6] and len(summary["predicted_actions"]) == 4
    assert summary["metrics"]["all"]["mean"]["psnr"] is not None
    html = (out / "report.html").read_text()
    assert "<video" in html and "scatter3d" in html.lower() and "<script src=\"http" not in html


def test_imagine_rejects_bad_episode_references(lift32, tmp_path, capsys):
    data, ckpt = lift32
    assert main(["imagine", "--checkpoint", str(ckpt), "--episode", f"{data}:7", "--out", str(tmp_path)]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["imagine", "--checkpoint", str(ckpt), "--episode", f"{data}:0:500", "--out", str(tmp_path)]) == 2
    assert "valid starts" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_4d_on_held_out_episodes_writes_tables(lift32, tmp_path):
    data, ckpt = lift32
    out = tmp_path / "eval4d"
    assert main(["eval-4d", "--checkpoint", str(ckpt), "--data", str(data), "--episodes", "0,1", "--starts", "2",
                 "--out", str(out), "--video-steps", "4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["clips"]) == 4
    mean = metrics["summary"]["all"]["mean"]
    assert mean["psnr"] > 0 and 0 <= mean["delta1"] <= 1 and mean["chamfer"] > 0
    assert "static" in metrics["summary"]  # the two agent views are static
    assert all(c["baseline_frozen"]["all"]["mean"]["psnr"] > 0 for c in metrics["clips"])
    assert set(metrics["summary_baseline_frozen"]) == set(metrics["summary"]) == set(metrics["summary_expected"])
    assert all(c["expected"]["all"]["mean"]["psnr"] > 0 for c in metrics["clips"])
    table = (out / "metrics.md").read_text()
    assert "| all |" in table and "| static |" in table and "| 2 |" in table
    assert "frozen present (all)" in table and "expected (all)" in table
    assert len(list(out.glob("episode*/report.html"))) == 1
    assert metrics["sampler"]["video_temperature"] == 1.0  # the tiny preset's
    # --temperature changes the sampled futures only: the expected future is read at unit noise
    cold = tmp_path / "cold"
    assert main(["eval-4d", "--checkpoint", str(ckpt), "--data", str(data), "--episodes", "0,1", "--starts", "2",
                 "--out", str(cold), "--video-steps", "4", "--temperature", "0", "--save-clips", "0"]) == 0
    cold_metrics = json.loads((cold / "metrics.json").read_text())
    assert cold_metrics["sampler"]["video_temperature"] == 0.0
    assert "video temperature 0" in (cold / "metrics.md").read_text()
    assert cold_metrics["summary"]["all"]["mean"]["psnr"] != mean["psnr"]
    assert cold_metrics["summary_expected"]["all"]["mean"]["psnr"] == pytest.approx(
        metrics["summary_expected"]["all"]["mean"]["psnr"], abs=1e-3)


def test_ground_truth_as_prediction_scores_perfectly(lift32):
    """The metric pipeline on a recorded clip passed as its own prediction: PSNR inf, AbsRel 0, Chamfer 0."""
    from xwam.data import open_dataset
    from xwam.geometry.metrics import evaluate_4d
    from xwam.imagine import clip_from_episode

    data, _ = lift32
    episode = open_dataset(data).episode(0)
    truth = clip_from_episode(episode, 0, 3, 2, 4, CAMERAS)
    m = evaluate_4d(truth.as_dict(), truth.as_dict())
    assert m["all"]["mean"]["psnr"] == float("inf") and m["all"]["mean"]["abs_rel"] == 0
    assert m["all"]["mean"]["chamfer"] == 0 and m["all"]["mean"]["delta1"] == 1


def test_frozen_present_repeats_frame_zero_and_is_perfect_there(lift32):
    from xwam.data import open_dataset
    from xwam.geometry.metrics import evaluate_4d
    from xwam.imagine import clip_from_episode, frozen_present

    data, _ = lift32
    truth = clip_from_episode(open_dataset(data).episode(0), 2, 3, 2, 4, CAMERAS)
    frozen = frozen_present(truth)
    assert set(frozen) == {"rgb", "depth", "intrinsics", "extrinsics"}
    for key, table in frozen.items():
        for cam in CAMERAS:
            first = getattr(truth, key)[cam][0]
            assert table[cam].shape == getattr(truth, key)[cam].shape and (table[cam] == first).all(), (key, cam)
    # the wrist camera moved with the hand, but the frozen present keeps its frame-0 pose
    wrist = "robot0_eye_in_hand"
    assert not np.allclose(truth.extrinsics[wrist][2], frozen["extrinsics"][wrist][2])
    m = evaluate_4d(frozen, truth.as_dict(), lpips=False)
    per_frame = m["all"]["per_frame"]
    assert per_frame["psnr"][0] == float("inf") and per_frame["abs_rel"][0] == 0 and per_frame["chamfer"][0] == 0
    assert np.isfinite(per_frame["psnr"][1:]).all()  # the scene moved: the present is not the future


def test_eval_4d_scores_the_frozen_present_beside_the_model(lift32, tmp_path, monkeypatch):
    """A model that samples exactly frame 0 scores what the frozen-present baseline does, one whose expected
    future is the true future scores a perfect depth, and all three are stored apart."""
    import xwam.commands.imagine as cmd
    from xwam.imagine import Imagination, clip_from_episode, frozen_present

    def predicts_the_present(policy, episode, start, seed, **_):
        m = policy.config.model
        truth = clip_from_episode(episode, start, m.num_frames, m.frame_skip, m.action_horizon, policy.camera_names)
        still = frozen_present(truth)
        imag = Imagination(camera_names=list(policy.camera_names), rgb=still["rgb"], depth=still["depth"],
                           intrinsics=still["intrinsics"], extrinsics=still["extrinsics"],
                           states=np.repeat(truth.states[:1], m.num_frames, 0), actions=np.zeros_like(truth.actions),
                           instruction=episode.task)
        imag.expected = Imagination(camera_names=list(policy.camera_names), rgb=truth.rgb, depth=truth.depth,
                                    intrinsics=truth.intrinsics, extrinsics=truth.extrinsics, states=truth.states,
                                    actions=truth.actions, instruction=episode.task)
        return imag, truth

    monkeypatch.setattr(cmd, "_imagine_from_episode", predicts_the_present)
    data, ckpt = lift32
    out = tmp_path / "eval4d"
    assert main(["eval-4d", "--checkpoint", str(ckpt), "--data", str(data), "--episodes", "0,1", "--starts", "2",
                 "--out", str(out), "--save-clips", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["clips"]) == 4
    for clip in metrics["clips"]:
        assert clip["baseline_frozen"] == clip["metrics"]
    assert metrics["summary_baseline_frozen"] == metrics["summary"]
    assert metrics["summary_baseline_frozen"]["all"]["mean"]["psnr"] > 0
    assert metrics["summary_expected"]["all"]["mean"]["abs_rel"] == 0  # the expected future was the truth
    table = (out / "metrics.md").read_text()
    assert ("| metric | better | sample (static) | expected (static) | frozen present (static) | sample (all) "
            "| expected (all) | frozen present (all) |") in table
    psnr_row = next(line for line in table.splitlines() if line.startswith("| psnr | higher |"))
    cells = [c.strip() for c in psnr_row.strip("|").split("|")]
    assert cells[2] == cells[4] and cells[5] == cells[7] and cells[5] != "n/a"
    abs_rel_row = next(line for line in table.splitlines() if line.startswith("| abs_rel | lower |"))
    assert [c.strip() for c in abs_rel_row.strip("|").split("|")][6] == "0"
