"""The README's two pictures of one `xwam demo` run, cut from the videos the demo wrote.

    python benchmarks/demo_figures.py runs/demo [--docs docs]

docs/demo_rollout.png: frames of the first successful closed-loop rollout video (eval/<task>/videos),
time running down. docs/demo_imagination.png: the first and the last frame of the first eval-4d
clip's imagination.mp4 (observed frame above, the last imagined frame below; its columns are
labelled in the video itself). Both are scaled 2x with nearest-neighbour pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
from PIL import Image


def _frames(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _stack(frames: list[np.ndarray], gap: int) -> np.ndarray:
    white = np.full((gap, frames[0].shape[1], 3), 255, dtype=np.uint8)
    rows = [piece for frame in frames for piece in (frame, white)][:-1]
    return np.concatenate(rows, axis=0)


def _save(image: np.ndarray, path: Path, scale: int = 2) -> None:
    h, w = image.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST).save(path)
    print(f"wrote {path} ({w * scale}x{h * scale})")


def rollout_figure(demo: Path, out: Path, rows: int = 7) -> Path:
    videos = sorted(demo.glob("eval/*/videos/*_success.mp4")) or sorted(demo.glob("eval/*/videos/*.mp4"))
    if not videos:
        raise SystemExit(f"no rollout videos under {demo}/eval/*/videos (did the eval stage run with --videos?)")
    frames = _frames(videos[0])
    picks = np.linspace(0, len(frames) - 1, rows).round().astype(int)
    _save(_stack([frames[i] for i in picks], gap=0), out)
    return videos[0]


def imagination_figure(demo: Path, out: Path) -> Path:
    clips = sorted(demo.glob("eval4d/*/imagination.mp4"))
    if not clips:
        raise SystemExit(f"no eval-4d videos under {demo}/eval4d (did the eval-4d stage run?)")
    frames = _frames(clips[0])
    _save(_stack([frames[0], frames[-1]], gap=4), out)
    return clips[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="an `xwam demo` output folder (runs/demo)")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="where the PNGs go (default: docs)")
    args = parser.parse_args()
    print("rollout from", rollout_figure(args.demo, args.docs / "demo_rollout.png"))
    print("imagination from", imagination_figure(args.demo, args.docs / "demo_imagination.png"))


if __name__ == "__main__":
    main()
