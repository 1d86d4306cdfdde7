import json

import pytest

from xwam.cli import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "2"]) == 0
    for stage in ("collect", "train", "eval", "baseline", "imagine", "diagnose", "report"):
        assert (out / "stages" / f"{stage}.json").exists(), stage
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["tasks"][0]["episodes"] == 2
    baseline = json.loads((out / "baseline" / "results.json").read_text())
    assert baseline["tasks"][0]["seeds"] == results["tasks"][0]["seeds"]  # same seeds as the policy
    metrics = json.loads((out / "eval4d" / "metrics.json").read_text())
    assert metrics["summary"]["all"]["mean"]["chamfer"] is not None
    assert metrics["summary_baseline_frozen"]["all"]["mean"]["psnr"] is not None
    vision = json.loads((out / "diagnose" / "diagnose.json").read_text())
    assert vision["num_clips"] > 0 and set(vision["conditions"]) == {"true", "other_images", "other_state", "blind_chunk"}
    summary = json.loads((out / "run" / "train_summary.json").read_text())
    assert summary["steps_done"] == summary["steps"] and not summary["cut_by_time"]  # budgeted in steps
    assert json.loads((out / "run" / "train_config.json").read_text())["min_lr_ratio"] == 1.0  # constant rate + EMA
    assert json.loads((out / "run" / "codec_fit.json").read_text())["rgb_reconstruction_psnr_db"] > 10
    html = (out / "report.html").read_text()
    for section in ("Closed-loop success", "blind replay", "Training losses", "Latent codec", "4D quality",
                    "frozen present", "Imagined future", "Vision check", "action dimension", "first chunk of the episode (start 0, from rest)", "Latency"):
        assert section in html, section
    assert "WARNING" not in html
    assert list((out / "eval").glob("*/videos/*.mp4"))
    assert "/ema" in html  # the EMA weights (on by default) act and imagine
    capsys.readouterr()
    # a second run skips every finished stage
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 6


def test_schedule_options_reach_the_demo_config(tmp_path, monkeypatch):
    import xwam.demo

    seen = []
    monkeypatch.setattr(xwam.demo, "run_demo", seen.append)
    assert main(["demo", "--out", str(tmp_path / "a")]) == 0
    assert main(["demo", "--out", str(tmp_path / "b"), "--min-lr-ratio", "0", "--steps", "5200"]) == 0
    assert seen[0].min_lr_ratio == 1.0 and seen[0].steps == 2600  # the demo's defaults
    assert seen[1].min_lr_ratio == 0.0 and seen[1].steps == 5200  # the cosine schedule of runs A-T
