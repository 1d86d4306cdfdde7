"""MP4 grids of multi-view clips (H.264 via PyAV) with text labels drawn by PIL.

A grid is a list of rows, each a list of clips ``(T, H, W, 3) uint8`` (or None for an empty cell), e.g.
one row per camera view and columns {predicted RGB, predicted depth (see
:func:`xwam.viz.colormap.colorize_depth`), ground-truth RGB, ground-truth depth}. Cells are centred in a
tile as large as the largest clip of their row and column; the canvas is padded to even dimensions as
yuv420p requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from xwam.atomic import atomic_path

GRID_GAP = 2  # pixels between tiles
LABEL_PADDING = 2


def _check_clip(clip: np.ndarray, where: str) -> np.ndarray:
    clip = np.asarray(clip)
    if clip.ndim == 3 and clip.dtype != np.uint8:
        raise ValueError(
            f"{where}: got a (T, H, W) {clip.dtype} array; colour-map depth first with colorize_depth()"
        )
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"{where}: clips must be (T, H, W, 3) uint8, got {clip.shape} {clip.dtype}")
    if clip.shape[0] == 0:
        raise ValueError(f"{where}: clip has no frames")
    return clip


def _label_overlay(text: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """White text on a translucent black box in the top-left corner: (H, W, 3) colour and (H, W, 1) alpha."""
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((LABEL_PADDING, LABEL_PADDING), text, font=font)
    draw.rectangle((0, 0, right + LABEL_PADDING, bottom + LABEL_PADDING), fill=(0, 0, 0, 160))
    draw.text((LABEL_PADDING, LABEL_PADDING), text, fill=(255, 255, 255, 255), font=font)
    rgba = np.asarray(overlay, dtype=np.float32)
    return rgba[..., :3], rgba[..., 3:] / 255.0


def tile_grid(
    rows: Sequence[Sequence[np.ndarray | None]],
    labels: Sequence[Sequence[str | None]] | None = None,
    *,
    gap: int = GRID_GAP,
) -> np.ndarray:
    """Tile a grid of clips into one ``(T, H, W, 3) uint8`` clip (even H and W) with optional labels.

    All clips must have the same number of frames T; ``labels[r][c]`` (None or "" for none) is drawn in
    the top-left corner of cell (r, c).
    """
    if not rows or not any(len(row) for row in rows):
        raise ValueError("video grid is empty")
    if labels is not None and (
        len(labels) != len(rows) or any(len(lr) != len(r) for lr, r in zip(labels, rows))
    ):
        raise ValueError("labels must have the same shape as rows (one label per cell)")
    clips: dict[tuple[int, int], np.ndarray] = {}
    for r, row in enumerate(rows):
        for c, clip in enumerate(row):
            if clip is not None:
                clips[(r, c)] = _check_clip(clip, f"grid cell (row {r}, column {c})")
    if not clips:
        raise ValueError("video grid has no clips (every cell is None)")
    lengths = {key: clip.shape[0] for key, clip in clips.items()}
    frames = max(lengths.values())
    for key, length in lengths.items():
        if length != frames:
            raise ValueError(
                f"grid cell (row {key[0]}, column {key[1]}) has {length} frames, others have {frames}"
            )

    num_cols = max(len(row) for row in rows)
    row_heights = [
        max((clips[(r, c)].shape[1] for c in range(len(row)) if (r, c) in clips), default=0)
        for r, row in enumerate(rows)
    ]
    col_widths = [
        max((clips[(r, c)].shape[2] for r in range(len(rows)) if (r, c) in clips), default=0)
        for c in range(num_cols)
    ]
    height = sum(row_heights) + gap * (len(rows) - 1)
    width = sum(col_widths) + gap * (num_cols - 1)
    height += height % 2
    width += width % 2
    canvas = np.zeros((frames, height, width, 3), dtype=np.uint8)

    y = 0
    for r in range(len(rows)):
        x = 0
        for c in range(num_cols):
            cell_h, cell_w = row_heights[r], col_widths[c]
            clip = clips.get((r, c))
            if clip is not None:
                top = y + (cell_h - clip.shape[1]) // 2
                left = x + (cell_w - clip.shape[2]) // 2
                region = canvas[:, top : top + clip.shape[1], left : left + clip.shape[2]]
                region[:] = clip
                text = labels[r][c] if labels is not None else None
                if text:
                    colour, alpha = _label_overlay(str(text), clip.shape[2], clip.shape[1])
                    covered = alpha[..., 0] > 0  # blend only the label box, the rest of the tile is untouched
                    blended = (
                        region[:, covered].astype(np.float32) * (1 - alpha[covered])
                        + colour[covered] * alpha[covered]
                    )
                    region[:, covered] = np.rint(blended).astype(np.uint8)
            x += cell_w + gap
        y += row_heights[r] + gap
    return canvas


def write_video(path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 20) -> Path:
    """Encode ``(T, H, W, 3) uint8`` frames (even H and W) to an H.264/yuv420p MP4, atomically.

    The ``moov`` index is placed at the front (``faststart``) so browsers can play the file while it
    loads, e.g. when embedded in an HTML report.
    """
    path = Path(path)
    frames = _check_clip(frames, str(path))
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 yuv420p needs an even width and height, got {width}x{height}")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    with atomic_path(path) as temp_name:
        with av.open(str(temp_name), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(video_frame.reformat(format="yuv420p")))
            container.mux(stream.encode(None))
    return path


def write_video_grid(
    path: str | Path,
    rows: Sequence[Sequence[np.ndarray | None]],
    fps: float,
    labels: Sequence[Sequence[str | None]] | None = None,
    *,
    crf: int = 20,
) -> Path:
    """Tile a grid of ``(T, H, W, 3) uint8`` clips (see :func:`tile_grid`) into one H.264 MP4 at ``path``."""
    return write_video(path, tile_grid(rows, labels), fps, crf=crf)


def read_video(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file to ``(T, H, W, 3) uint8`` RGB (for checks and tests)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames)
