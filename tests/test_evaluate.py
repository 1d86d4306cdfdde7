import json

import numpy as np
import pytest
import torch

from xwam.cli import main
from xwam.config import get_preset
from xwam.data.stats import NormStats
from xwam.model.checkpoint import save_checkpoint
from xwam.model.transformer import XWAMTransformer


@pytest.fixture(scope="module")
def sim_checkpoint(tmp_path_factory):
    preset = get_preset("tiny")
    preset.model.camera_names = ["robot0_agentview_left", "robot0_eye_in_hand"]
    preset.model.image_height = preset.model.image_width = 32
    torch.manual_seed(0)
    model = XWAMTransformer(preset.model)
    rng = np.random.default_rng(0)
    stats = NormStats.from_arrays(rng.normal(size=(100, 8)), rng.uniform(-1, 1, size=(100, 7)))
    path = tmp_path_factory.mktemp("ckpt") / "sim"
    save_checkpoint(path, model, preset, norm_stats=stats.to_dict())
    return path


@pytest.mark.slow
def test_eval_runs_episodes_end_to_end_and_writes_its_table(sim_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(sim_checkpoint), "--task", "Lift", "--episodes", "2",
                 "--max-steps", "6", "--videos", "1", "--replan-every", "2", "--rtc-delay", "1", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    (task,) = results["tasks"]
    assert task["task"] == "Lift" and task["episodes"] == 2 and task["seeds"] == [10000, 10001]
    assert 0.0 <= task["success_rate"] <= 1.0 and task["mean_chunk_ms"] > 0
    eps = results["episodes"]["Lift"]
    assert [e["length"] for e in eps] == [6, 6] and all(e["chunks"] == 3 for e in eps)
    assert "| Lift | 2 |" in (out / "results.md").read_text()
    videos = list((out / "Lift" / "videos").glob("*.mp4"))
    assert len(videos) == 1
    import av

    with av.open(str(videos[0])) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 7 and frames[0].shape == (32, 64, 3)  # two views side by side
    assert "success rate" in capsys.readouterr().out
