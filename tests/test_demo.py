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
    assert json.loads((out / "run" / "codec_fit.json").read_text())["rgb_reconstruction_psnr_db"] > 10
    html = (out / "report.html").read_text()
    for section in ("Closed-loop success", "blind replay", "Training losses", "Latent codec", "4D quality",
                    "frozen present", "Imagined future", "Vision check", "action dimension", "Latency"):
        assert section in html, section
    assert "WARNING" not in html
    assert list((out / "eval").glob("*/videos/*.mp4"))
    assert "/ema" in html  # the EMA weights (on by default) act and imagine
    capsys.readouterr()
    # a second run skips every finished stage
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 6
