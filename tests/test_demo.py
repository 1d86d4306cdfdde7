import json

import pytest

from xwam.cli import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "2"]) == 0
    for stage in ("collect", "train", "eval", "imagine", "report"):
        assert (out / "stages" / f"{stage}.json").exists(), stage
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["tasks"][0]["episodes"] == 2
    metrics = json.loads((out / "eval4d" / "metrics.json").read_text())
    assert metrics["summary"]["all"]["mean"]["chamfer"] is not None
    html = (out / "report.html").read_text()
    for section in ("Closed-loop success", "Training losses", "4D quality", "Imagined future", "Latency"):
        assert section in html, section
    assert list((out / "eval").glob("*/videos/*.mp4"))
    assert "/ema" in html  # the EMA weights (on by default) act and imagine
    capsys.readouterr()
    # a second run skips every finished stage
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 4
