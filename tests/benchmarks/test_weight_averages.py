"""The weight-averages benchmark writes each post-hoc average of a run's snapshots as a loadable
checkpoint with exactly the weighted mean of their raw weights, and scores it with the vision check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xwam.model.checkpoint import load_checkpoint, save_checkpoint
from xwam.model.transformer import XWAMTransformer

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_testutils import load_benchmark, tiny_heldout  # noqa: E402

STEPS = (10, 20, 30)


def _benchmark():
    return load_benchmark("weight_averages")


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """3 synthetic episodes and a run with raw snapshots at steps 10, 20, 30 (EMA weights at 30)."""
    data, preset, norm = tiny_heldout(tmp_path_factory.mktemp("data"))
    run = tmp_path_factory.mktemp("run")
    for i, step in enumerate(STEPS):
        torch.manual_seed(i)
        save_checkpoint(run / "checkpoints" / f"step-{step:08d}", XWAMTransformer(preset.model), preset, norm_stats=norm)
    torch.manual_seed(9)
    save_checkpoint(run / "checkpoints" / "step-00000030" / "ema", XWAMTransformer(preset.model), preset, norm_stats=norm)
    return run, data


def test_averages_are_the_weighted_means_and_get_scored(run_and_data, tmp_path):
    run, data = run_and_data
    bench = _benchmark()
    out = tmp_path / "avg"
    assert bench.main([str(run), "--data-heldout", str(data), "--average", "raw", "ema", "pow:1", "exp:2",
                       "--out", str(out)]) == 0
    snaps = {s: load_file(str(run / "checkpoints" / f"step-{s:08d}" / "model.safetensors")) for s in STEPS}
    averaged = {name: load_file(str(out / "checkpoints" / name / "model.safetensors")) for name in ("raw", "pow_1", "exp_2")}
    key = next(k for k, v in snaps[30].items() if v.is_floating_point() and v.numel() > 1)
    torch.testing.assert_close(averaged["raw"][key], snaps[30][key])
    # pow:1 weighs each snapshot by its step: 10, 20, 30 over 60
    want = sum(snaps[s][key].double() * s / 60 for s in STEPS).float()
    torch.testing.assert_close(averaged["pow_1"][key], want)
    # exp:2 halves the weight per step back: 30 -> 1, 20 -> 0.5**10, 10 -> 0.5**20, normalised
    w = {s: 0.5 ** (30 - s) for s in STEPS}
    want = sum(snaps[s][key].double() * w[s] / sum(w.values()) for s in STEPS).float()
    torch.testing.assert_close(averaged["exp_2"][key], want)
    load_checkpoint(out / "checkpoints" / "pow_1")  # a verified, loadable checkpoint
    result = json.loads((out / "weight_averages.json").read_text())
    assert result["at"] == 30 and result["snapshot_steps"] == list(STEPS)
    for name, folder in (("raw", "raw"), ("ema", "ema"), ("pow:1", "pow_1"), ("exp:2", "exp_2")):
        vision = json.loads((out / "diagnose" / folder / "diagnose.json").read_text())
        row = result["averages"][name]
        assert row["true_mae"] == vision["conditions"]["true"]["mae"] and row["ratio"] == vision["ratios"][
            "other_images/true"]
        assert vision["num_clips"] == 3 * 4
    assert json.loads((out / "diagnose" / "ema" / "diagnose.json").read_text())["checkpoint"].endswith("ema")
    assert result["averages"]["raw"]["true_mae"] != result["averages"]["pow:1"]["true_mae"]


def test_bad_requests_are_named(run_and_data, tmp_path):
    run, data = run_and_data
    bench = _benchmark()
    with pytest.raises(SystemExit, match=r"no snapshot at step 25"):
        bench.main([str(run), "--data-heldout", str(data), "--at", "25", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown average 'mean'"):
        bench.main([str(run), "--data-heldout", str(data), "--average", "mean", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="has no ema/ weights"):
        bench.main([str(run), "--data-heldout", str(data), "--at", "20", "--average", "ema", "--out", str(tmp_path)])
