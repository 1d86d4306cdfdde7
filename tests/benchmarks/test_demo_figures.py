"""The README's pictures are cut from the right frames of the demo's videos, at 2x, and a missing stage is named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xwam.evaluate import write_mp4

ROOT = Path(__file__).resolve().parents[2]


def _figures():
    spec = importlib.util.spec_from_file_location("demo_figures", ROOT / "benchmarks" / "demo_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _video(path: Path, levels: list[int], h: int = 16, w: int = 24) -> None:
    """Flat grey frames, one level each: a lossy codec keeps a flat frame's level within a few steps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, [np.full((h, w, 3), level, np.uint8) for level in levels], fps=10)


def test_figures_pick_the_documented_frames(tmp_path: Path) -> None:
    figures = _figures()
    demo = tmp_path / "demo"
    levels = [20 * i for i in range(13)]  # 13 frames: 7 rows pick 0, 2, 4, ..., 12
    _video(demo / "eval" / "Lift" / "videos" / "seed10000_failure.mp4", [250] * 13)
    _video(demo / "eval" / "Lift" / "videos" / "seed10001_success.mp4", levels)
    _video(demo / "eval4d" / "episode0_start0" / "imagination.mp4", [40, 90, 200])

    used = figures.rollout_figure(demo, tmp_path / "docs" / "rollout.png")
    assert used.name == "seed10001_success.mp4"  # a successful rollout before any other
    rollout = np.asarray(Image.open(tmp_path / "docs" / "rollout.png"))
    assert rollout.shape == (7 * 16 * 2, 24 * 2, 3)
    row_levels = rollout[16::32, 24, 0].astype(int)  # the middle of each 32-pixel row
    np.testing.assert_allclose(row_levels, levels[::2], atol=6)

    figures.imagination_figure(demo, tmp_path / "docs" / "imagination.png")
    imagination = np.asarray(Image.open(tmp_path / "docs" / "imagination.png"))
    assert imagination.shape == ((16 + 4 + 16) * 2, 24 * 2, 3)
    np.testing.assert_allclose(imagination[16, 24, 0], 40, atol=6)  # first frame, the observed one
    np.testing.assert_array_equal(imagination[34:40, 24], 255)  # the white gap
    np.testing.assert_allclose(imagination[-16, 24, 0], 200, atol=6)  # last imagined frame


def test_missing_stage_outputs_are_named(tmp_path: Path) -> None:
    figures = _figures()
    with pytest.raises(SystemExit, match="eval stage"):
        figures.rollout_figure(tmp_path, tmp_path / "r.png")
    with pytest.raises(SystemExit, match="eval-4d stage"):
        figures.imagination_figure(tmp_path, tmp_path / "i.png")
