"""The learning-curve benchmark runs the demo's eval-4d and vision check on each kept checkpoint and
records, per step, what those stages wrote (PSNR beside the frozen present, the vision ratio)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from xwam.model.checkpoint import save_checkpoint
from xwam.model.transformer import XWAMTransformer

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_testutils import load_benchmark, tiny_heldout  # noqa: E402


def _benchmark():
    return load_benchmark("learning_curve")


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """3 synthetic RGB-D episodes and a run folder with two tiny checkpoints (steps 10 and 20, one with EMA)."""
    data, preset, norm = tiny_heldout(tmp_path_factory.mktemp("data"))
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_checkpoint(run / "checkpoints" / "step-00000010", XWAMTransformer(preset.model), preset, norm_stats=norm)
    torch.manual_seed(1)
    save_checkpoint(run / "checkpoints" / "step-00000020" / "ema", XWAMTransformer(preset.model), preset,
                    norm_stats=norm)
    (run / "train_summary.json").write_text(json.dumps({"steps": 20, "steps_done": 20, "seconds_this_session": 1.5}))
    return run, data


def test_curve_records_each_checkpoints_stages(run_and_data, tmp_path, monkeypatch):
    run, data = run_and_data
    out = tmp_path / "curve"
    monkeypatch.setattr(sys, "argv", ["learning_curve.py", str(run), "--data-heldout", str(data), "--episodes", "0",
                                      "--note", "two tiny checkpoints", "--out", str(out)])
    _benchmark().main()
    curve = json.loads((out / "curve.json").read_text())
    assert curve["note"] == "two tiny checkpoints" and curve["training"]["steps_done"] == 20
    assert [p["step"] for p in curve["points"]] == [10, 20]
    for point in curve["points"]:
        stage = out / "work" / f"step-{point['step']}"
        metrics = json.loads((stage / "eval4d" / "metrics.json").read_text())
        vision = json.loads((stage / "diagnose" / "diagnose.json").read_text())
        assert point["psnr"] == metrics["summary"]["all"]["mean"]["psnr"]
        assert point["frozen_psnr"] == metrics["summary_baseline_frozen"]["all"]["mean"]["psnr"]
        assert point["vision_ratio"] == vision["ratios"]["other_images/true"]
        assert point["action_mae_true"] == vision["conditions"]["true"]["mae"]
        assert point["success_rate"] is None  # --episodes 0: no closed-loop evaluation
        assert vision["num_clips"] == 3 * 4  # the demo's 4 clips per held-out episode
        assert point["vision_ratio_first_chunk"] == vision["by_start"]["first"]["other_images/true"]
        assert point["action_mae_true_later_chunks"] == vision["by_start"]["later"]["mae"]["true"]
    # step 20's EMA weights were evaluated, not a missing raw folder
    assert json.loads((out / "work" / "step-20" / "diagnose" / "diagnose.json").read_text())["checkpoint"].endswith(
        "ema")
    assert curve["points"][0]["vision_ratio"] != curve["points"][1]["vision_ratio"]
    svg = (out / "curve.svg").read_text()
    assert "vision ratio" in svg and "PSNR" in svg and "Lift success" not in svg  # no success measured, no panel
    assert "first chunks" in svg and "later chunks" in svg


def test_a_missing_step_is_named(run_and_data, tmp_path, monkeypatch):
    run, data = run_and_data
    monkeypatch.setattr(sys, "argv", ["learning_curve.py", str(run), "--data-heldout", str(data), "--steps", "10,30",
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"no checkpoint for steps \[30\]; kept: \[10, 20\]"):
        _benchmark().main()
