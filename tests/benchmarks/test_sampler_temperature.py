"""The sampling-temperature benchmark copies a demo's checkpoint with each pair of sampler
temperatures and records, per pair, what the demo's own stages wrote for that copy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from xwam.model.checkpoint import load_checkpoint, save_checkpoint
from xwam.model.transformer import XWAMTransformer
from xwam.train.checkpoints import TRAINER_STATE_FILE, point_latest

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_testutils import load_benchmark, tiny_heldout  # noqa: E402


def _demo_folder(root: Path) -> Path:
    """A finished demo's layout: config, held-out data, a run whose latest step has EMA weights, the
    blind-replay result."""
    demo = root / "demo"
    data, preset, norm = tiny_heldout(demo)
    step = demo / "run" / "checkpoints" / "step-00000020"
    torch.manual_seed(0)
    save_checkpoint(step, XWAMTransformer(preset.model), preset, norm_stats=norm)
    torch.save({"step": 20}, step / TRAINER_STATE_FILE)
    torch.manual_seed(1)
    save_checkpoint(step / "ema", XWAMTransformer(preset.model), preset, norm_stats=norm)
    point_latest(step)
    (demo / "demo_config.json").write_text(json.dumps(
        {"task": "Lift", "eval_episodes": 50, "eval_seed": 10000, "eval_max_steps": 120, "seed": 0, "workers": 1}))
    (demo / "baseline").mkdir()
    (demo / "baseline" / "results.json").write_text(json.dumps(
        {"tasks": [{"task": "Lift", "episodes": 50, "success_rate": 0.2}]}))
    assert data == demo / "heldout"
    return demo


def test_each_pair_scores_a_copy_with_its_temperatures(tmp_path):
    demo = _demo_folder(tmp_path)
    work = tmp_path / "work"
    bench = load_benchmark("sampler_temperature")
    record = bench.run(demo, work, sweep=[(1.0, 1.0), (0.5, 0.0)], closed_loop=[])
    assert record["checkpoint"].endswith("step-00000020/ema")  # the averaged weights, as the demo acts
    assert record["blind_replay"] == {"rate": 0.2, "episodes": 50}
    assert [(r["video_temperature"], r["action_temperature"]) for r in record["rows"]] == [(1.0, 1.0), (0.5, 0.0)]
    ema_model, _, _ = load_checkpoint(demo / "run" / "checkpoints" / "step-00000020" / "ema")
    for row in record["rows"]:
        name = f"video{row['video_temperature']:g}_action{row['action_temperature']:g}"
        model, config, _ = load_checkpoint(work / name / "checkpoint")
        assert config.sampler.video_temperature == row["video_temperature"]
        assert config.sampler.action_temperature == row["action_temperature"]
        for key, value in ema_model.state_dict().items():  # the same weights, only the sampler differs
            assert torch.equal(model.state_dict()[key], value), key
        metrics = json.loads((work / name / "eval4d" / "metrics.json").read_text())
        vision = json.loads((work / name / "diagnose" / "diagnose.json").read_text())
        assert row["eval_4d"]["sample"]["all"]["psnr"] == metrics["summary"]["all"]["mean"]["psnr"]
        assert row["eval_4d"]["frozen_present"]["all"]["psnr"] == metrics["summary_baseline_frozen"]["all"]["mean"]["psnr"]
        assert row["vision_check"]["ratios"] == vision["ratios"]
        assert vision["num_clips"] == 3 * 4 and vision["seed"] == 0  # the demo's clips and seed
        assert "success" not in row  # not in closed_loop
    # a different sampler gives a different sample of the same model
    psnrs = [r["eval_4d"]["sample"]["all"]["psnr"] for r in record["rows"]]
    assert psnrs[0] != psnrs[1]
